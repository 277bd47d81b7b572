"""The SDK against the real API in a child process: delivery, outages, refusals, bulk paths.

No mocks: every request crosses a socket to uvicorn on 127.0.0.1, and the outage test
SIGKILLs that process and starts it again on the same home and port.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from driftline.client import Driftline, DriftlineAPIError
from tests.support.live_server import LiveServer, free_port

REPO = Path(__file__).resolve().parents[2]
CATEGORIES = ["a", "b", "c"]
REGIONS = ["eu", "us", "apac"]


def binary_schema(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "task": "binary",
        "features": [
            {"name": "amount", "kind": "numeric", "range": [0, 1000]},
            {"name": "channel", "kind": "categorical", "categories": CATEGORIES},
            {"name": "returning", "kind": "boolean"},
        ],
        "metadata": [{"name": "region"}],
        "label": {"positive": 1},
    }


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def row(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "features": {
            "amount": float(np.round(rng.uniform(0, 1000), 3)),
            "channel": str(rng.choice(CATEGORIES)),
            "returning": bool(rng.random() < 0.3),
        },
        "metadata": {"region": str(rng.choice(REGIONS))},
        "score": float(np.round(rng.random(), 6)),
        "latency_ms": float(np.round(rng.gamma(2.0, 5.0), 3)),
    }


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with LiveServer() as live:
        yield live


@pytest.fixture
def admin(server: LiveServer) -> Iterator[Driftline]:
    with Driftline(server.url, server.admin_key) as client:
        yield client


def fast_client(url: str, key: str, **options: Any) -> Driftline:
    """A client with test-sized intervals (seconds, not the production defaults)."""
    settings: dict[str, Any] = {
        "flush_interval": 0.1,
        "backoff_base": 0.05,
        "max_backoff": 0.5,
        "min_probe_interval": 0.2,
    }
    settings.update(options)
    return Driftline(url, key, **settings)


def register(admin: Driftline, name: str, version: str = "v1") -> None:
    admin.register_model(binary_schema(name))
    admin.register_version(name, version, role="champion", data_version="2024-06", eval_report_uri="s3://r/1")


def stored_counts(admin: Driftline, name: str) -> dict[str, Any]:
    assert admin.server_flush(30.0), "the server's spool did not drain"
    counts: dict[str, Any] = admin.get_model(name)["counts"]
    return counts


# -- delivery -------------------------------------------------------------------------------


def test_predictions_from_many_threads_are_stored_exactly(server: LiveServer, admin: Driftline) -> None:
    name = unique("fraud")
    register(admin, name)
    threads, per_thread = 4, 750
    sent: dict[str, dict[str, Any]] = {}
    results: list[bool] = []
    lock = threading.Lock()

    def serve(t: int) -> None:
        rng = np.random.default_rng(100 + t)
        mine = {}
        oks = []
        for i in range(per_thread):
            rid = f"req-{t}-{i}"
            values = row(rng)
            values["timestamp"] = 1_717_200_000 + t * per_thread + i
            mine[rid] = values
            oks.append(dl.log_prediction(rid, **values, timings={"features": 1.5, "model": 3.0}))
        with lock:
            sent.update(mine)
            results.extend(oks)

    with fast_client(server.url, server.admin_key, model=name, version="v1", batch_size=200) as dl:
        workers = [threading.Thread(target=serve, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert all(results) and len(results) == threads * per_thread
        assert dl.flush(30.0)
        stats = dl.stats()
    assert stats["sent"] == threads * per_thread
    assert stats["queued"] == 0 and stats["dropped"] == {}

    counts = stored_counts(admin, name)
    assert counts["predictions"] == threads * per_thread

    model = admin.get_model(name)
    assert [v["version"] for v in model["versions"]] == ["v1"]
    assert model["versions"][0]["data_version"] == "2024-06"

    rid = "req-2-17"
    stored = admin.get_prediction(name, rid)["record"]
    want = sent[rid]
    assert stored["request_id"] == rid and stored["version"] == "v1"
    assert stored["features"]["amount"] == pytest.approx(want["features"]["amount"])
    assert stored["features"]["channel"] == want["features"]["channel"]
    assert bool(stored["features"]["returning"]) is want["features"]["returning"]
    assert stored["metadata"] == want["metadata"]
    assert stored["score"] == pytest.approx(want["score"])
    assert stored["latency_ms"] == pytest.approx(want["latency_ms"])
    assert stored["timings"] == {"features": 1.5, "model": 3.0}
    assert stored["status"] == "ok"
    assert stored["prediction"] == ("1" if want["score"] >= 0.5 else "0")
    assert stored["timestamp"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(want["timestamp"]))


def test_labels_arrive_before_and_after_their_predictions(server: LiveServer, admin: Driftline) -> None:
    name = unique("churn")
    register(admin, name)
    rng = np.random.default_rng(7)
    labels = {f"u{i}": int(rng.integers(0, 2)) for i in range(300)}
    with fast_client(server.url, server.admin_key, model=name, version="v1") as dl:
        early = [f"u{i}" for i in range(100)]
        for rid in early:  # the truth is known before the prediction is logged
            assert dl.log_label(rid, labels[rid])
        assert dl.flush(10.0)
        for i in range(300):
            assert dl.log_prediction(f"u{i}", **row(rng))
        assert dl.flush(10.0)
        late = [(f"u{i}", labels[f"u{i}"]) for i in range(100, 150)]
        assert dl.log_labels(late) == 50
        as_dicts = [{"request_id": f"u{i}", "label": labels[f"u{i}"]} for i in range(150, 200)]
        assert dl.log_labels(as_dicts) == 50
        assert dl.log_label("u0", labels["u0"])  # a repeated label is stored once
        assert dl.log_feedback(
            "u1", "overridden", reviewer="ana", label=1 - labels["u1"], comment="chargeback"
        )
        assert dl.log_feedback("u2", "accepted", reviewer="ana")
        assert dl.flush(10.0)
        stats = dl.stats()
    assert stats["dropped"] == {}
    assert stats["sent"] == 100 + 300 + 100 + 1 + 2

    counts = stored_counts(admin, name)
    assert counts["predictions"] == 300
    assert counts["labels"] == 200
    assert counts["feedback"] == 2

    early_one = admin.get_prediction(name, "u5")["record"]
    assert early_one["label"]["value"] == str(labels["u5"])
    late_one = admin.get_prediction(name, "u160")["record"]
    assert late_one["label"]["value"] == str(labels["u160"])
    assert admin.get_prediction(name, "u250")["record"]["label"] is None
    feedback = admin.get_prediction(name, "u1")["record"]["feedback"]
    assert [f["outcome"] for f in feedback] == ["overridden"]


# -- outages and refusals ---------------------------------------------------------------------


def test_rows_survive_a_server_crash_and_are_stored_once() -> None:
    with LiveServer() as live:
        with Driftline(live.url, live.admin_key) as admin:
            register(admin, "outage")
        rng = np.random.default_rng(3)
        durations: list[float] = []
        returned: list[bool] = []
        logged = 0
        stop = threading.Event()

        def serve() -> None:
            nonlocal logged
            while not stop.is_set() and logged < 20_000:
                values = row(rng)
                start = time.perf_counter()
                ok = dl.log_prediction(f"o-{logged}", **values)
                durations.append(time.perf_counter() - start)
                returned.append(ok)
                logged += 1
                time.sleep(0.0005)

        dl = fast_client(
            live.url, live.admin_key, model="outage", version="v1", max_queue=20_000, batch_size=100
        )
        with dl:
            worker = threading.Thread(target=serve)
            worker.start()
            try:
                time.sleep(0.5)
                live.kill()
                before_restart = logged
                time.sleep(2.0)
                assert logged > before_restart + 200, "logging stalled while the server was down"
                live.restart()
                time.sleep(0.5)
            finally:
                stop.set()
                worker.join()
            assert dl.flush(30.0)
            stats = dl.stats()
        assert all(returned), stats
        assert max(durations) < 0.05, f"slowest log_prediction took {max(durations) * 1000:.1f} ms"
        assert stats["dropped"] == {} and stats["queued"] == 0
        assert stats["sent"] == logged
        assert stats["retries"] > 0 and "cannot reach" in (stats["last_error"] or "")

        with Driftline(live.url, live.admin_key) as admin:
            counts = stored_counts(admin, "outage")
            assert counts["predictions"] == logged, (counts, stats)
            assert admin.get_prediction("outage", f"o-{logged - 1}")["record"]["version"] == "v1"


def test_a_full_queue_refuses_rows_without_raising() -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the server is down
    dl = fast_client(dead, "k" * 32, model="m", version="v1", max_queue=10)
    try:
        returned = []
        for i in range(50):
            start = time.perf_counter()
            returned.append(dl.log_prediction(f"q{i}", features={"amount": i}))
            assert time.perf_counter() - start < 0.05
        assert returned == [True] * 10 + [False] * 40
        stats = dl.stats()
        assert stats["dropped"] == {"queue_full": 40}
        assert stats["queued"] == 10 and stats["sent"] == 0
        assert not dl.flush(0.3)  # nothing can be delivered
    finally:
        dl.close(timeout=0.3)
    deadline = time.monotonic() + 5.0  # a probe in flight at close() is counted when it ends
    while dl.stats()["queued"] and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = dl.stats()
    assert stats["dropped"] == {"queue_full": 40, "shutdown": 10}
    assert stats["queued"] == 0 and stats["retries"] > 0


def test_bad_arguments_are_counted_never_raised() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with fast_client(dead, "k" * 32, version="v1") as dl:
        assert not dl.log_prediction("r1", features={"amount": 1})  # no model anywhere
        assert not dl.log_prediction("r1", model="m", features="amount=1")  # type: ignore[arg-type]
        assert not dl.log_prediction("r1", model="m", features={"amount": object()})
        assert not dl.log_prediction(None, model="m")  # type: ignore[arg-type]
        assert not dl.log_prediction("", model="m")
        assert not dl.log_prediction("r1", model="m", status="crashed")
        assert not dl.log_prediction("r1", model="m", timestamp=float("nan"))
        assert not dl.log_label("r1", None, model="m")
        assert dl.log_labels([("r1",), 42, {"request_id": "r2"}], model="m") == 0  # type: ignore[list-item]
        assert not dl.log_feedback("r1", "", model="m")
        # numpy values and mappings other than dict are fine
        ok = dl.log_prediction(
            "r2", model="m", features={"amount": np.float32(1.5), "n": np.int64(3)}, score=np.float64(0.2)
        )
        assert ok
        assert dl.stats()["dropped"] == {"invalid": 12}
        dl.close(timeout=0.1)
    assert not dl.log_prediction("r3", model="m")
    assert dl.stats()["dropped"]["closed"] == 1


def test_refused_rows_are_dropped_as_rejected_not_retried(server: LiveServer, admin: Driftline) -> None:
    name = unique("refusals")
    register(admin, name)
    rng = np.random.default_rng(11)
    with fast_client(server.url, server.admin_key, model=name, version="v1", flush_interval=5.0) as dl:
        for i in range(5):
            assert dl.log_prediction(f"x{i}", model="no_such_model", **row(rng))
        for i in range(20):
            values = row(rng)
            if i == 7:
                values["score"] = 3.0  # malformed: the server refuses the row
            version = "v404" if i == 12 else "v1"  # an unknown version: refused too
            assert dl.log_prediction(f"r{i}", version=version, **values)
        start = time.monotonic()
        assert dl.flush(10.0)
        assert time.monotonic() - start < 5.0
        stats = dl.stats()
    assert stats["dropped"] == {"rejected": 5 + 2}
    assert stats["retries"] == 0
    assert stats["sent"] == 18
    assert stats["last_error"] is not None and "HTTP 422" in stats["last_error"]
    assert stored_counts(admin, name)["predictions"] == 18
    with pytest.raises(DriftlineAPIError) as refused:
        admin.get_prediction(name, "r7")
    assert refused.value.status == 404


# -- bulk and admin helpers -----------------------------------------------------------------


def test_reference_from_pandas_and_predictions_from_arrow(server: LiveServer, admin: Driftline) -> None:
    name = unique("bulk")
    register(admin, name)
    rng = np.random.default_rng(21)
    n_ref = 1000
    reference = pd.DataFrame(
        {
            "amount": rng.uniform(0, 1000, n_ref),
            "channel": rng.choice(CATEGORIES, n_ref),
            "returning": rng.random(n_ref) < 0.3,
            "region": rng.choice(REGIONS, n_ref),
            "score": rng.random(n_ref),
            "label": rng.integers(0, 2, n_ref).astype(str),
        }
    )
    result = admin.upload_reference(name, "v1", reference)
    assert result["rows"] == n_ref and result["violations"] == 0

    n = 2000
    now = int(time.time())
    table = pa.table(
        {
            "request_id": [f"b{i}" for i in range(n)],
            "version": ["v1"] * n,
            "timestamp": pa.array(np.arange(now - n, now, dtype=np.int64)),
            "amount": rng.uniform(0, 1000, n),
            "channel": rng.choice(CATEGORIES, n),
            "returning": rng.random(n) < 0.3,
            "region": rng.choice(REGIONS, n),
            "score": rng.random(n),
        }
    )
    got = admin.ingest_table(name, table, chunk_rows=750)
    assert got["accepted"] == n and got["duplicates"] == 0
    again = admin.ingest_table(name, table)  # a retried upload is stored once
    assert again["accepted"] + again["duplicates"] == n and again["duplicates"] > 0

    counts = stored_counts(admin, name)
    assert counts["predictions"] == n
    assert counts["reference"] == {"v1": n_ref}
    assert admin.get_model(name)["versions"][0]["reference_rows"] == n_ref

    # nested columns are flattened into the server's layout; the upload replaces the old rows
    nested = pd.DataFrame(
        {
            "features": [{"amount": 1.0, "channel": "a", "returning": True}] * 10,
            "metadata": [{"region": "eu"}] * 10,
            "label": ["1"] * 10,
        }
    )
    assert admin.upload_reference(name, "v1", nested)["rows"] == 10
    assert admin.get_model(name)["counts"]["reference"] == {"v1": 10}

    with pytest.raises(DriftlineAPIError) as missing:
        admin.upload_reference(name, "v9", reference)
    assert missing.value.status == 404 and "v9" in missing.value.detail
    with pytest.raises(DriftlineAPIError) as invalid:
        admin.register_model({"name": "bad name", "task": "binary", "features": []})
    assert invalid.value.status == 422


# -- lifecycle ------------------------------------------------------------------------------


def test_close_is_idempotent(server: LiveServer, admin: Driftline) -> None:
    name = unique("closing")
    register(admin, name)
    dl = fast_client(server.url, server.admin_key, model=name, version="v1", flush_interval=30.0)
    for i in range(25):
        assert dl.log_prediction(f"c{i}", features={"amount": i})
    dl.close(timeout=10.0)  # flushes the partial batch at once, despite the 30 s interval
    dl.close()
    with dl:
        pass
    assert dl.stats()["sent"] == 25
    assert not dl.log_prediction("late", features={"amount": 1})
    assert stored_counts(admin, name)["predictions"] == 25


def test_rows_are_flushed_at_interpreter_exit(server: LiveServer, admin: Driftline) -> None:
    name = unique("atexit")
    register(admin, name)
    script = textwrap.dedent(
        f"""
        from driftline.client import Driftline
        dl = Driftline({server.url!r}, {server.admin_key!r}, model={name!r}, version="v1",
                       flush_interval=60.0, batch_size=1000)
        for i in range(300):
            assert dl.log_prediction(f"e{{i}}", features={{"amount": i}}, score=0.5)
        # no close(), no flush(): the atexit hook must deliver the rows
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert stored_counts(admin, name)["predictions"] == 300


def test_a_version_is_promoted_and_approved_through_the_client(server: LiveServer, admin: Driftline) -> None:
    register(admin, "promote", "v1")
    admin.register_version("promote", "v2", role="challenger")
    got = admin.update_version("promote", "v2", role="champion", approval="approved")
    assert got["role"] == "champion" and got["approval"] == "approved"
    admin.update_version("promote", "v1", role="shadow")
    versions = {v["version"]: v for v in admin.get_model("promote")["versions"]}
    assert versions["v1"]["role"] == "shadow" and versions["v1"]["eval_report_uri"] == "s3://r/1"
    with pytest.raises(DriftlineAPIError) as info:
        admin.update_version("promote", "v9", approval="approved")
    assert info.value.status == 404
