"""Load: concurrent clients post predictions and labels over loopback while detection runs.

The API runs in its own process (uvicorn; the embedded chDB store by default, or a
ClickHouse server with `--clickhouse-url`, or `--start-clickhouse` for the installed
clickhouse-server in a temp dir). `--replicas N` starts N API processes on a ClickHouse
server, as a deployment runs replicas: each with its own spool, sharing the metadata
database, the secret and the keys, the clients spread over them (uvicorn's `--workers`
would not do: its workers share one home, and a spool belongs to one process; and chDB
lets only one process open its store). Load generators
run in `--procs` other processes, each an asyncio loop holding its share of
`--clients` keep-alive connections. A client posts 100-row prediction batches and,
for batches already acknowledged, their labels (one label batch per two prediction
batches by default), as JSON or as Arrow IPC (`--format arrow`). Bodies are built
before the run from templates whose request ids and timestamps are substituted per
request, so a generator spends its CPU on HTTP, not on making data; the HTTP client
is a minimal HTTP/1.1 one for the same reason (the machine has 2 cores and the
generators share them with the server).

Detection runs throughout: prediction event times are spread over the last two hours
(late logs), so closed hourly buckets keep getting rows; a thread of this process calls
POST /v1/models/{model}/detect over those two hours in a loop, each run summarising
the buckets that got rows since the last one and running every detector family, and
the API's own scheduler runs with a short tick and a one-minute schedule.

The run is bounded by `--seconds` and/or `--requests`. Printed: per route, requests,
req/s, rows/s, p50/p95/p99 latency and errors by status; the ingest totals against the
target (2,000 req/s of 100-row batches, p99 under 100 ms, no errors) as ratios; the
detector runs completed during the load; CPU used by the server and the generators
and the load average (the machine may be shared); and, after POST /v1/flush, whether
the stored prediction and label counts equal the rows the API acknowledged.

Latency is measured from the moment a request is written until its response is read.
Clients are closed-loop by default (each sends its next request when the last one is
answered); `--rate R` paces them to R req/s in all instead, and latency then counts
from the time each request was due, so a stalled server is not hidden by clients that
slowed down with it.

    python -m bench.load [--seconds 20] [--requests N] [--clients 32] [--procs 2]
                         [--rows 100] [--format json|arrow] [--rate R]
                         [--clickhouse-url URL | --start-clickhouse] [--replicas N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import multiprocessing as mp
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
from pyarrow import ipc

from bench._server import Server

MODEL = "load"
SCHEMA: dict[str, Any] = {
    "name": MODEL,
    "task": "binary",
    "features": [
        {"name": "amount", "kind": "numeric", "range": [0, 100000]},
        {"name": "income", "kind": "numeric"},
        {"name": "age", "kind": "numeric", "range": [18, 100]},
        {"name": "tenure", "kind": "numeric"},
        {"name": "utilisation", "kind": "numeric"},
        {"name": "country", "kind": "categorical", "categories": ["FR", "DE", "ES", "IT", "US"]},
        {"name": "device", "kind": "categorical"},
        {"name": "plan", "kind": "categorical"},
        {"name": "has_card", "kind": "boolean"},
    ],
    "metadata": [{"name": "channel"}],
    "label": {"positive": 1},
}
TARGET_RPS = 2000.0
TARGET_P99_MS = 100.0
TEMPLATES = 16  # distinct bodies per generator; request ids make every request unique
TAG = b"@@@@@@@@@@@@"  # 12 bytes, replaced by <generator:2><sequence:10> in request ids
STAMP = b'"@TS@"'  # replaced by the event time in JSON bodies (epoch seconds)
ISO_STAMP = b"%" * 19  # replaced by the event time in Arrow bodies (ISO 8601, same width)
SPREAD = 7200  # event times spread over the last two hours: late rows land in closed hourly buckets
ROUTES = ("POST /v1/predictions", "POST /v1/labels")
DETECT = "POST /v1/models/{model}/detect"


# -- data ------------------------------------------------------------------------------------


def columns(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Feature, metadata, score and label columns of `n` loan-like applications."""
    amount = np.round(rng.lognormal(np.log(4000), 0.6, n), 2)
    income = np.round(rng.lognormal(np.log(38000), 0.45, n), 0)
    age = np.clip(rng.normal(41, 12, n), 18, 95).round()
    utilisation = rng.beta(2, 5, n)
    logit = -2.0 + 0.0002 * amount - 0.00002 * income + 2.5 * utilisation
    score = 1 / (1 + np.exp(-logit))
    return {
        "amount": amount,
        "income": income,
        "age": age,
        "tenure": np.round(rng.exponential(30, n)),
        "utilisation": np.round(utilisation, 4),
        "country": rng.choice(["FR", "DE", "ES", "IT", "US"], n, p=[0.3, 0.25, 0.15, 0.15, 0.15]),
        "device": rng.choice(["ios", "android", "web"], n),
        "plan": rng.choice(["basic", "plus", "pro", "max"], n),
        "has_card": rng.random(n) < 0.6,
        "channel": rng.choice(["web", "app", "partner"], n, p=[0.5, 0.35, 0.15]),
        "score": np.round(score, 5),
        "label": (rng.random(n) < score).astype(np.int64),
    }


_FEATURES = [f["name"] for f in SCHEMA["features"]]


def _records(cols: dict[str, np.ndarray], ids: list[str], *, reference: bool) -> list[dict[str, Any]]:
    out = []
    for i, rid in enumerate(ids):
        rec: dict[str, Any] = {
            "request_id": rid,
            "version": "v1",
            "features": {name: cols[name][i].item() for name in _FEATURES},
            "metadata": {"channel": str(cols["channel"][i])},
            "score": float(cols["score"][i]),
            "prediction": int(cols["score"][i] >= 0.5),
            "latency_ms": 3.5,
        }
        if reference:
            rec["label"] = int(cols["label"][i])
        else:
            rec["timestamp"] = "@TS@"
        out.append(rec)
    return out


def reference_body(rows: int) -> bytes:
    cols = columns(np.random.default_rng(1), rows)
    return orjson.dumps({"records": _records(cols, [f"ref{i}" for i in range(rows)], reference=True)})


@dataclass(frozen=True)
class Bodies:
    """Prediction and label bodies with placeholders, one pair per template."""

    predictions: list[bytes]
    labels: list[bytes]
    content_type: bytes
    query: bytes


def _arrow(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def make_bodies(seed: int, rows: int, fmt: str) -> Bodies:
    rng = np.random.default_rng(seed)
    ids = [TAG.decode() + f"-{i:05d}" for i in range(rows)]
    preds, labels = [], []
    for _ in range(TEMPLATES):
        cols = columns(rng, rows)
        if fmt == "json":
            preds.append(orjson.dumps({"model": MODEL, "records": _records(cols, ids, reference=False)}))
            recs = [{"request_id": rid, "label": int(y)} for rid, y in zip(ids, cols["label"], strict=True)]
            labels.append(orjson.dumps({"model": MODEL, "records": recs}))
        else:
            table = pa.table(
                {
                    "request_id": ids,
                    "version": ["v1"] * rows,
                    "timestamp": [ISO_STAMP.decode()] * rows,
                    **{name: cols[name] for name in _FEATURES},
                    "channel": cols["channel"],
                    "score": cols["score"],
                    "prediction": (cols["score"] >= 0.5).astype(np.int64).astype(str),
                    "latency_ms": np.full(rows, 3.5),
                }
            )
            preds.append(_arrow(table))
            labels.append(_arrow(pa.table({"request_id": ids, "label": cols["label"].astype(str)})))
    if fmt == "json":
        return Bodies(preds, labels, b"application/json", b"")
    # the tag sits in the uncompressed string buffer, so a same-length substitution stays valid Arrow
    check = ipc.open_stream(pa.py_buffer(preds[0].replace(TAG, b"000000000000"))).read_all()
    assert check.column("request_id")[0].as_py() == "000000000000-00000"
    return Bodies(preds, labels, b"application/vnd.apache.arrow.stream", b"?model=" + MODEL.encode())


# -- the HTTP client -------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection, as cheap on the client side as asyncio allows."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.fixed = f"Host: {host}:{port}\r\nAuthorization: Bearer {key}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: bytes, body: bytes, content_type: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = b"POST %s HTTP/1.1\r\n%sContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
            path,
            self.fixed,
            content_type,
            len(body),
        )
        self.writer.writelines((head, body))
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length, chunked, close = -1, False, False
        for line in raw[:-4].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            data = b"".join(p[:-2] for p in parts)
        else:
            data = await self.reader.readexactly(length) if length >= 0 else await self.reader.read()
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# -- generators ------------------------------------------------------------------------------


@dataclass
class RouteStats:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    rows: int = 0  # accepted by the API
    duplicates: int = 0
    first: float = float("inf")
    last: float = 0.0
    samples: list[str] = field(default_factory=list)

    def merge(self, other: RouteStats) -> None:
        self.latencies.extend(other.latencies)
        self.statuses.update(other.statuses)
        self.rows += other.rows
        self.duplicates += other.duplicates
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)
        self.samples.extend(other.samples[: max(0, 5 - len(self.samples))])

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s not in ("200", "202"))


@dataclass(frozen=True)
class Job:
    """What one generator process does."""

    index: int
    ports: list[int]
    key: str
    clients: int
    rows: int
    fmt: str
    seconds: float
    requests: int | None
    rate: float | None  # req/s per client, or closed loop
    labels_per_batch: float


@dataclass
class JobResult:
    routes: dict[str, RouteStats]
    warmup_rows: dict[str, int]
    cpu_seconds: float


def _tagged(job: Job, seq: int) -> bytes:
    return b"%02d%010d" % (job.index, seq)


async def _generate(job: Job, ready: Any, go: EventType, start_at: Any) -> JobResult:
    bodies = make_bodies(1000 + job.index, job.rows, job.fmt)
    paths = {
        ROUTES[0]: b"/v1/predictions" + bodies.query,
        ROUTES[1]: b"/v1/labels" + bodies.query,
    }
    routes = {r: RouteStats() for r in ROUTES}
    warmup = dict.fromkeys(ROUTES, 0)
    seq = 0
    budget = [job.requests]

    def next_seq() -> int:
        nonlocal seq
        seq += 1
        return seq

    async def send(conn: Connection, route: str, s: int) -> tuple[int, bytes]:
        tpl = s % TEMPLATES
        if route == ROUTES[0]:
            body = bodies.predictions[tpl].replace(TAG, _tagged(job, s))
            when = int(time.time()) - (s * 37) % SPREAD
            if job.fmt == "json":
                body = body.replace(STAMP, b"%d" % when)
            else:
                body = body.replace(ISO_STAMP, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)).encode())
        else:
            body = bodies.labels[tpl].replace(TAG, _tagged(job, s))
        return await conn.post(paths[route], body, bodies.content_type)

    def note(stats: RouteStats | None, route: str, status: int, data: bytes) -> None:
        ok = status in (200, 202)
        accepted, dups = 0, 0
        if ok:
            result = orjson.loads(data)
            accepted, dups = int(result["accepted"]), int(result["duplicates"])
        if stats is None:
            warmup[route] += accepted
            return
        stats.statuses[str(status)] += 1
        stats.rows += accepted
        stats.duplicates += dups
        if not ok and len(stats.samples) < 5:
            stats.samples.append(f"{status} {data[:200]!r}")

    conns = [
        Connection("127.0.0.1", job.ports[(job.index + i) % len(job.ports)], job.key)
        for i in range(job.clients)
    ]
    # warm-up: every connection opens and posts one batch (counted for the store check, not timed)
    for conn in conns:
        s = next_seq()
        status, data = await send(conn, ROUTES[0], s)
        note(None, ROUTES[0], status, data)
    ready.release()
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    t0 = float(start_at.value)
    deadline = t0 + job.seconds
    await asyncio.sleep(max(t0 - time.time(), 0))
    cpu0 = time.process_time()

    async def client(conn: Connection, offset: float) -> None:
        acked: deque[int] = deque()
        credit = 0.0
        due = time.perf_counter() + offset
        interval = 1 / job.rate if job.rate else 0.0
        while time.time() < deadline:
            if budget[0] is not None:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            if credit >= 1 and acked:
                route, s = ROUTES[1], acked.popleft()
                credit -= 1
            else:
                route, s = ROUTES[0], next_seq()
            if interval:
                due += interval
                await asyncio.sleep(max(due - time.perf_counter(), 0))
                began = due
            else:
                began = time.perf_counter()
            try:
                status, data = await send(conn, route, s)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                conn.close()
                status, data = 0, repr(exc).encode()
            done = time.perf_counter()
            stats = routes[route]
            stats.latencies.append(done - began)
            now = time.time()
            stats.first = min(stats.first, now - (done - began))
            stats.last = max(stats.last, now)
            note(stats, route, status, data)
            if route == ROUTES[0] and status == 202:
                acked.append(s)
                credit += job.labels_per_batch

    spread = 1 / job.rate / job.clients if job.rate else 0.0
    await asyncio.gather(*(client(c, i * spread) for i, c in enumerate(conns)))
    cpu = time.process_time() - cpu0
    for c in conns:
        c.close()
    for stats in routes.values():
        if not stats.latencies:
            stats.first = stats.last = t0
    return JobResult(routes, warmup, cpu)


def _run_job(job: Job, ready: Any, go: EventType, start_at: Any, out: Any) -> None:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    out.put(runner(_generate(job, ready, go, start_at)))


# -- detection during the load ---------------------------------------------------------------


@dataclass
class DetectStats:
    route: RouteStats = field(default_factory=RouteStats)
    runs_in_load: int = 0
    run_seconds: list[float] = field(default_factory=list)
    buckets: int = 0
    rows_written: int = 0


def detect_loop(
    url: str, headers: dict[str, str], stop: threading.Event, load_end: list[float]
) -> DetectStats:
    """Detect over the current and the previous hour, again and again, until `stop`."""
    out = DetectStats()
    with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
        while not stop.is_set():
            hour = int(time.time()) // 3600 * 3600
            began = time.perf_counter()
            t = time.time()
            r = client.post(
                f"/v1/models/{MODEL}/detect", json={"start": hour - SPREAD, "end": hour, "window": "1h"}
            )
            out.route.latencies.append(time.perf_counter() - began)
            out.route.statuses[str(r.status_code)] += 1
            out.route.first = min(out.route.first, t)
            out.route.last = time.time()
            if r.status_code == 200:
                body = r.json()
                out.run_seconds.append(float(body["seconds"]))
                out.buckets += int(body["buckets_summarised"])
                out.rows_written += int(body["rows_written"])
                if not load_end or time.time() <= load_end[0]:
                    out.runs_in_load += 1
            elif len(out.route.samples) < 5:
                out.route.samples.append(f"{r.status_code} {r.text[:200]}")
            stop.wait(0.5)
    return out


# -- the run ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def api_servers(args: argparse.Namespace) -> Iterator[list[Server]]:
    env = {
        "DRIFTLINE_SCHEDULER_TICK_SECONDS": "5",
        "DRIFTLINE_SECRET_KEY": "load-bench-secret-" + "x" * 16,
        **({"DRIFTLINE_CLICKHOUSE_URL": args.clickhouse_url} if args.clickhouse_url else {}),
    }
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(Server({**env, "DRIFTLINE_SCHEDULER_IN_API": "true"}))
        servers = [first]
        for _ in range(args.replicas - 1):
            # replicas share the metadata database, the event store, the secret and the key
            replica = Server(
                {
                    **env,
                    "DRIFTLINE_SCHEDULER_ENABLED": "false",
                    "DRIFTLINE_DATABASE_URL": f"sqlite:///{first.home / 'meta.db'}",
                    "DRIFTLINE_BOOTSTRAP_KEY": first.key,
                }
            )
            replica.key = first.key
            servers.append(stack.enter_context(replica))
        yield servers


def setup(server: Server, reference_rows: int) -> str:
    """Register the model, its version, reference and monitor; return an ingest key."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=300) as c:
        c.post("/v1/models", json=SCHEMA).raise_for_status()
        c.post(f"/v1/models/{MODEL}/versions", json={"version": "v1"}).raise_for_status()
        c.put(
            f"/v1/models/{MODEL}/versions/v1/reference",
            content=reference_body(reference_rows),
            headers={"Content-Type": "application/json"},
        ).raise_for_status()
        c.put(f"/v1/models/{MODEL}/monitors", json={"window": "1h", "schedule": "1m"}).raise_for_status()
        r = c.post("/v1/keys", json={"role": "ingest", "name": "load"})
        r.raise_for_status()
        return str(r.json()["key"])


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if len(values) else float("nan")


def report_route(name: str, s: RouteStats, rows_per_request: int | None) -> None:
    lat = np.asarray(s.latencies)
    span = max(s.last - s.first, 1e-9)
    rps = s.count / span
    rows = f"{s.rows / span:>11,.0f}" if rows_per_request else f"{'-':>11}"
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(s.statuses.items()) if k not in ("200", "202"))
    rate = s.errors / s.count if s.count else 0.0
    print(
        f"{name:<32}{s.count:>9,}{rps:>9,.1f}{rows}{pct(lat, 50):>8.1f}{pct(lat, 95):>8.1f}{pct(lat, 99):>8.1f}"
        f"{s.errors:>7}{rate:>8.2%}  {errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the load (default 20)")
    parser.add_argument("--requests", type=int, default=None, help="stop after this many ingest requests")
    parser.add_argument("--clients", type=int, default=32, help="concurrent connections in all")
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--rows", type=int, default=100, help="rows per batch")
    parser.add_argument("--format", choices=("json", "arrow"), default="json")
    parser.add_argument(
        "--labels-per-batch", type=float, default=0.5, help="label batches per prediction batch"
    )
    parser.add_argument("--rate", type=float, default=None, help="open loop: ingest req/s in all")
    parser.add_argument("--no-detect", action="store_true", help="no detect loop (the scheduler still runs)")
    parser.add_argument("--reference-rows", type=int, default=5000)
    parser.add_argument("--clickhouse-url", default=None, help="a ClickHouse server (native protocol)")
    parser.add_argument(
        "--start-clickhouse", action="store_true", help="start the installed clickhouse-server for the run"
    )
    parser.add_argument("--replicas", type=int, default=1, help="API processes (ClickHouse server only)")
    args = parser.parse_args()
    if args.seconds <= 0 and args.requests is None:
        parser.error("bound the run: --seconds > 0 or --requests N")
    args.bound = " or ".join(
        ([f"{args.seconds:g} s"] if args.seconds > 0 else [])
        + ([f"{args.requests} requests"] if args.requests is not None else [])
    )
    if args.seconds <= 0:
        args.seconds = 3600.0
    with contextlib.ExitStack() as stack:
        if args.start_clickhouse:
            from tests.support.clickhouse_server import ClickHouseServer

            ch = stack.enter_context(ClickHouseServer())
            args.clickhouse_url = ch.url
            args.clickhouse_pid = ch.pid
        if args.replicas > 1 and not args.clickhouse_url:
            parser.error("--replicas needs a ClickHouse server: chDB lets one process own its store")
        run(args, stack.enter_context(api_servers(args)))


def run(args: argparse.Namespace, servers: list[Server]) -> None:
    server = servers[0]
    store = "ClickHouse server" if args.clickhouse_url else "embedded chDB"
    load_before = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
        f"store: {store}; API processes: {len(servers)} (pid {', '.join(str(s.server_pid()) for s in servers)})"
    )
    key = setup(server, args.reference_rows)
    ctx = mp.get_context("spawn")
    per = [
        args.clients // args.procs + (1 if i < args.clients % args.procs else 0) for i in range(args.procs)
    ]
    req_per = (
        [
            args.requests // args.procs + (1 if i < args.requests % args.procs else 0)
            for i in range(args.procs)
        ]
        if args.requests is not None
        else [None] * args.procs
    )
    ready, go, start_at, out = ctx.Semaphore(0), ctx.Event(), ctx.Value("d", 0.0), ctx.Queue()
    jobs = [
        Job(
            index=i,
            ports=[s.port for s in servers],
            key=key,
            clients=per[i],
            rows=args.rows,
            fmt=args.format,
            seconds=args.seconds,
            requests=req_per[i],
            rate=args.rate / args.clients if args.rate else None,
            labels_per_batch=args.labels_per_batch,
        )
        for i in range(args.procs)
        if per[i] > 0
    ]
    procs = [ctx.Process(target=_run_job, args=(job, ready, go, start_at, out)) for job in jobs]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise RuntimeError("a load generator did not get ready")
    print(
        f"load: {args.clients} clients in {len(jobs)} processes, {args.rows}-row {args.format} batches, "
        f"{args.labels_per_batch:g} label batches per prediction batch, "
        + (f"{args.rate:g} req/s open loop" if args.rate else "closed loop")
        + f", {args.bound}"
    )
    server_pids = [s.server_pid() for s in servers]
    ch_pid: int | None = getattr(args, "clickhouse_pid", None)
    cpu0 = sum(cpu_seconds(p) for p in server_pids)
    ch0 = cpu_seconds(ch_pid) if ch_pid else 0.0
    start_at.value = time.time() + 0.2
    go.set()
    stop, load_end, detected = threading.Event(), [], []
    if not args.no_detect:
        worker = threading.Thread(
            target=lambda: detected.append(detect_loop(server.url, server.headers, stop, load_end)),
            daemon=True,
        )
        worker.start()
    results: list[JobResult] = [out.get(timeout=args.seconds + 600) for _ in procs]
    load_end.append(time.time())
    wall = load_end[0] - float(start_at.value)
    server_cpu = sum(cpu_seconds(p) for p in server_pids) - cpu0
    ch_cpu = cpu_seconds(ch_pid) - ch0 if ch_pid else None
    load_after = os.getloadavg()
    stop.set()
    for p in procs:
        p.join(30)
    if not args.no_detect:
        worker.join(600)

    routes = {r: RouteStats() for r in ROUTES}
    warm = dict.fromkeys(ROUTES, 0)
    for res in results:
        for r in ROUTES:
            routes[r].merge(res.routes[r])
            warm[r] += res.warmup_rows[r]
    gen_cpu = sum(res.cpu_seconds for res in results)

    drained = True
    for s in servers:  # every replica's spool
        r = httpx.post(s.url + "/v1/flush", headers=s.headers, params={"timeout": 600}, timeout=700)
        drained &= bool(r.json()["drained"])
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=700) as c:
        counts = c.get(f"/v1/models/{MODEL}").json()["counts"]
        monitor = c.get(f"/v1/models/{MODEL}/monitors").json()

    print()
    print(
        f"{'route':<32}{'requests':>9}{'req/s':>9}{'rows/s':>11}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
        f"{'errors':>7}{'rate':>8}"
    )
    for r in ROUTES:
        report_route(r, routes[r], args.rows)
    total = RouteStats()
    for r in ROUTES:
        total.merge(routes[r])
    report_route("ingest, all", total, args.rows)
    det = detected[0] if detected else None
    if det is not None:
        report_route(DETECT.format(model=MODEL), det.route, None)
    for s in (*routes.values(), *([det.route] if det else [])):
        for sample in s.samples:
            print(f"  e.g. {sample}")

    lat = np.asarray(total.latencies)
    span = max(total.last - total.first, 1e-9)
    rps, p99 = total.count / span, pct(lat, 99)
    print()
    print(
        f"target: {TARGET_RPS:,.0f} req/s of 100-row batches, p99 < {TARGET_P99_MS:.0f} ms, no errors"
        + ("" if args.rows == 100 else f" (this run: {args.rows}-row batches)")
    )
    print(
        f"  throughput {rps:,.0f} req/s = {rps / TARGET_RPS:.2f}x target ({'met' if rps >= TARGET_RPS else 'missed'})"
    )
    print(
        f"  p99 {p99:.1f} ms = {p99 / TARGET_P99_MS:.2f}x the budget ({'met' if p99 < TARGET_P99_MS else 'missed'})"
    )
    print(f"  errors {total.errors} of {total.count} ({'met' if total.errors == 0 else 'missed'})")
    print(f"  all met: {'yes' if rps >= TARGET_RPS and p99 < TARGET_P99_MS and total.errors == 0 else 'no'}")
    print()
    if det is not None:
        secs = np.asarray(det.run_seconds)
        print(
            f"detection during the load: {det.runs_in_load} detect runs completed "
            f"(each {np.median(secs) if len(secs) else float('nan'):.2f} s median in the server, "
            f"{det.buckets} hourly buckets summarised, {det.rows_written} metric rows written)"
        )
    print(
        f"scheduler: tick 5 s, schedule 1m; last scheduled run {monitor['state']['last_run_at']}, "
        f"error {monitor['state']['last_error']}"
    )
    print(
        f"CPU during the load: API {server_cpu / wall:.2f} cores, "
        + (f"ClickHouse server {ch_cpu / wall:.2f} cores, " if ch_cpu is not None else "")
        + f"generators {gen_cpu / wall:.2f} cores "
        f"(of {os.cpu_count()}); load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
    )
    acked_pred = routes[ROUTES[0]].rows + warm[ROUTES[0]]
    acked_lab = routes[ROUTES[1]].rows + warm[ROUTES[1]]
    print(
        f"after POST /v1/flush (drained: {drained}): stored predictions {counts['predictions']:,} "
        f"vs acknowledged {acked_pred:,} -> {'equal' if counts['predictions'] == acked_pred else 'DIFFERENT'}; "
        f"labels {counts['labels']:,} vs {acked_lab:,} -> {'equal' if counts['labels'] == acked_lab else 'DIFFERENT'}"
    )


if __name__ == "__main__":
    main()
