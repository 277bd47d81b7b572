"""End-to-end ingest throughput: HTTP into the embedded store, JSON batches and Parquet.

The API runs in its own process (uvicorn, chDB under a temp dir); this process is the
client. A run counts rows from the first request until `POST /v1/flush` says every
accepted row is in the store; JSON and Parquet each run on a fresh server and store.
The peer is the store itself: the same rows inserted straight into chDB in-process,
with no HTTP, no checks and no spool, measured in the same run, so the ratio says what
the ingest path costs on top of the store.

    python -m bench.ingest [--json-batches 300] [--parquet-rows 2000000]
"""

from __future__ import annotations

import argparse
import http.client
import io
import tempfile
import threading
import time
from queue import Queue

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from bench._server import Server

N_NUMERIC, N_CATEGORICAL = 16, 4
SCHEMA = {
    "name": "bench",
    "task": "binary",
    "features": [{"name": f"x{i}", "kind": "numeric"} for i in range(N_NUMERIC)]
    + [{"name": f"c{i}", "kind": "categorical"} for i in range(N_CATEGORICAL)],
    "metadata": [{"name": "channel"}],
}
START = 1_780_000_000


def json_bodies(batches: int, rows: int, rng: np.random.Generator) -> list[bytes]:
    out = []
    for b in range(batches):
        x = rng.normal(size=(rows, N_NUMERIC))
        c = rng.integers(0, 12, size=(rows, N_CATEGORICAL))
        score = rng.random(rows)
        records = [
            {
                "request_id": f"j{b}-{i}",
                "version": "v1",
                "timestamp": START + b * rows + i,
                "features": {
                    **{f"x{j}": float(x[i, j]) for j in range(N_NUMERIC)},
                    **{f"c{j}": f"k{c[i, j]}" for j in range(N_CATEGORICAL)},
                },
                "metadata": {"channel": "web"},
                "score": float(score[i]),
                "latency_ms": 4.2,
            }
            for i in range(rows)
        ]
        out.append(orjson.dumps({"model": "bench", "records": records}))
    return out


def parquet_table(rows: int, rng: np.random.Generator, prefix: str) -> pa.Table:
    cols: dict[str, object] = {
        "request_id": pa.array([f"{prefix}{i}" for i in range(rows)]),
        "version": pa.array(["v1"] * rows),
        "timestamp": pa.array(START + np.arange(rows, dtype=np.int64)).cast(pa.timestamp("s")),
        "score": rng.random(rows),
        "latency_ms": np.full(rows, 4.2),
        "channel": pa.array(["batch"] * rows),
    }
    for j in range(N_NUMERIC):
        cols[f"x{j}"] = rng.normal(size=rows)
    for j in range(N_CATEGORICAL):
        cols[f"c{j}"] = pa.array(np.char.add("k", rng.integers(0, 12, rows).astype(str)))
    return pa.table(cols)


def post_all(
    server: Server, bodies: list[bytes], concurrency: int, path: str, headers: dict[str, str]
) -> float:
    """Post every body from `concurrency` keep-alive connections, then wait for the flush.

    The client is the standard library's: on this 2-core machine the load generator shares
    the cores with the API, and httpx spent about 1.3 CPU-seconds sending 316 MB of Parquet
    that http.client sends in 0.1.
    """
    queue: Queue[bytes | None] = Queue()
    for b in bodies:
        queue.put(b)
    errors: list[str] = []

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        try:
            while True:
                body = queue.get()
                if body is None:
                    return
                conn.request("POST", path, body=body, headers={**server.headers, **headers})
                r = conn.getresponse()
                text = r.read()
                if r.status != 202:
                    errors.append(f"{r.status} {text[:200]!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        queue.put(None)
        t.start()
    for t in threads:
        t.join()
    r = httpx.post(server.url + "/v1/flush", headers=server.headers, params={"timeout": 600}, timeout=700)
    elapsed = time.perf_counter() - start
    if errors or not r.json()["drained"]:
        raise RuntimeError(f"ingest failed: {errors[:3]} {r.text}")
    return elapsed


def register(server: Server) -> None:
    httpx.post(server.url + "/v1/models", json=SCHEMA, headers=server.headers).raise_for_status()
    httpx.post(
        server.url + "/v1/models/bench/versions", json={"version": "v1"}, headers=server.headers
    ).raise_for_status()


def count(server: Server) -> int:
    r = httpx.get(server.url + "/v1/models/bench", headers=server.headers, timeout=60)
    return int(r.json()["counts"]["predictions"])


def raw_chdb_insert(table: pa.Table) -> float:
    """The peer: the same rows straight into chDB, no HTTP, no checks, no spool."""
    from driftline.config import Settings
    from driftline.ingest.columns import PiiHasher, RowErrors
    from driftline.ingest.records import ArrowSource, build_predictions
    from driftline.schema import ModelSchema
    from driftline.storage.events import EventStore, Kind
    from driftline.storage.events.chdb_engine import ChdbEngine

    schema = ModelSchema.model_validate(SCHEMA)
    errors = RowErrors()
    batch = build_predictions(
        schema, ["v1"], ArrowSource(table), errors, now=time.time(), max_future=86400, hasher=PiiHasher(b"k")
    )
    home = tempfile.mkdtemp()
    engine = ChdbEngine(Settings(home=home).chdb_path)
    store = EventStore(engine)
    store.ensure_model("default", schema)
    target = store.names("default", "bench")(Kind.PREDICTIONS)
    start = time.perf_counter()
    engine.insert_columns(target, batch.table)
    elapsed = time.perf_counter() - start
    engine.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json-batches", type=int, default=300)
    parser.add_argument("--batch-rows", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--parquet-rows", type=int, default=2_000_000)
    parser.add_argument("--parquet-files", type=int, default=4)
    args = parser.parse_args()
    rng = np.random.default_rng(42)
    print(f"generating {args.json_batches} JSON batches of {args.batch_rows} rows x 20 features ...")
    bodies = json_bodies(args.json_batches, args.batch_rows, rng)
    per_file = args.parquet_rows // args.parquet_files
    tables = [parquet_table(per_file, rng, f"p{f}-") for f in range(args.parquet_files)]
    parquet = []
    for t in tables:
        buf = io.BytesIO()
        pq.write_table(t, buf)
        parquet.append(buf.getvalue())

    # each path on a server and store of its own: neither pays the other's background merges
    json_rows = args.json_batches * args.batch_rows
    with Server() as server:
        register(server)
        t_json = post_all(
            server, bodies, args.concurrency, "/v1/predictions", {"Content-Type": "application/json"}
        )
        after_json = count(server)
    with Server() as server:
        register(server)
        t_pq = post_all(
            server,
            parquet,
            2,
            "/v1/predictions?model=bench",
            {"Content-Type": "application/vnd.apache.parquet"},
        )
        after_pq = count(server)
    assert after_json == json_rows, (after_json, json_rows)
    assert after_pq == per_file * args.parquet_files, after_pq
    t_raw = raw_chdb_insert(pa.concat_tables(tables))
    pq_rows = per_file * args.parquet_files
    raw_rate = pq_rows / t_raw
    print()
    print(f"{'path':<44}{'rows':>11}{'seconds':>10}{'rows/s':>12}{'target':>10}")
    print(
        f"{'JSON, 1,000-row batches, HTTP -> store':<44}{json_rows:>11,}{t_json:>10.2f}{json_rows / t_json:>12,.0f}"
        f"{'50,000':>10}"
    )
    print(
        f"{'Parquet bodies, HTTP -> store':<44}{pq_rows:>11,}{t_pq:>10.2f}{pq_rows / t_pq:>12,.0f}{'500,000':>10}"
    )
    print(f"{'peer: raw chDB insert, in-process':<44}{pq_rows:>11,}{t_raw:>10.2f}{raw_rate:>12,.0f}")
    print()
    print(
        f"JSON ingest runs at {json_rows / t_json / raw_rate:.2f}x and Parquet ingest at "
        f"{pq_rows / t_pq / raw_rate:.2f}x the raw store insert (counts verified exactly)."
    )


if __name__ == "__main__":
    main()
