"""A scheduled detection catch-up SIGKILLed part-way and restarted: afterwards every window has
its complete results once, the same as a clean run over the same data.

Why this can go wrong: the scheduler catches up many windows in chunks, moving a watermark after
each; a crash leaves the dead process's lease in the metadata store, a chunk half done and its
summaries half written. The restarted process must wait the lease out, redo exactly the chunks
after the watermark, and its results must replace (never add to) what the dead one wrote.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from tests.reliability.harness import DAY
from tests.support.live_server import LiveServer
from tests.support.models import FRAUD

pytestmark = pytest.mark.slow

WINDOWS = 21  # daily windows caught up: three chunks of a week
ROWS_PER_DAY = 600
LEASE = 12  # seconds a dead process's lease blocks the restarted one
CHUNK = 7 * DAY  # the scheduler's chunk of daily windows
CLOCK = {"freshness", "delay"}  # metrics measured against the wall clock of each run


def records(now: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Predictions spread over the windows the catch-up covers, and labels for half of them."""
    rng = np.random.default_rng(seed)
    start = (now // DAY - WINDOWS - 1) * DAY
    n = (WINDOWS + 2) * ROWS_PER_DAY
    times = np.sort(rng.integers(start, now - 60, n))
    drift = np.clip((times - start) / ((WINDOWS + 1) * DAY), 0, 1)  # amounts creep upwards
    amounts = rng.gamma(2.0, 100.0, n) * (1 + drift)
    scores = rng.random(n)
    preds = [
        {
            "request_id": f"d{i}",
            "version": "v1",
            "timestamp": int(times[i]),
            "features": {
                "amount": float(amounts[i]),
                "age": int(rng.integers(18, 90)),
                "country": str(rng.choice(["FR", "DE", "US"])),
                "vip": bool(i % 7 == 0),
            },
            "metadata": {"channel": "web" if i % 2 else "app", "region": "eu"},
            "score": float(scores[i]),
            "latency_ms": float(5 + i % 20),
        }
        for i in range(n)
    ]
    labels = [{"request_id": f"d{i}", "label": int(scores[i] > 0.6 or i % 11 == 0)} for i in range(0, n, 2)]
    return preds, labels


def key(m: dict[str, Any]) -> tuple[str, ...]:
    return (m["window_start"], m["version"], m["detector_id"], m["metric"], m["feature"], m["slice"])


def results(client: httpx.Client) -> list[dict[str, Any]]:
    r = client.get("/v1/models/fraud/metrics", params={"limit": 100_000, "details": "false", "window": "1d"})
    assert r.status_code == 200, r.text
    assert not r.json()["truncated"]
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def monitor_state(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/v1/models/fraud/monitors")
    assert r.status_code == 200, r.text
    state: dict[str, Any] = r.json()["state"]
    return state


def epoch(iso: str | None) -> int | None:
    from driftline.detectors.monitors import parse_time

    return None if iso is None else parse_time(iso)


def test_detection_killed_mid_catch_up_completes_once_after_restart() -> None:
    began = time.monotonic()
    now = int(time.time())
    server = LiveServer(
        {
            "DRIFTLINE_SCHEDULER_ENABLED": "false",
            "DRIFTLINE_FLUSH_INTERVAL_SECONDS": "0.1",
            "DRIFTLINE_LOG_LEVEL": "WARNING",
        }
    )
    try:
        server.start()
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=120.0) as client:
            assert client.post("/v1/models", json=FRAUD).status_code == 201
            assert client.post("/v1/models/fraud/versions", json={"version": "v1"}).status_code == 201
            reference, _ = records(now - 60 * DAY, seed=8)
            ref = [{**r, "label": int(r["score"] > 0.6)} for r in reference[:3000]]
            for r in ref:
                r.pop("version")
            assert (
                client.put("/v1/models/fraud/versions/v1/reference", json={"records": ref}).status_code == 200
            )
            monitor = {"window": "1d", "lookback": f"{WINDOWS}d", "delay": "0s", "schedule": "1h"}
            assert client.put("/v1/models/fraud/monitors", json=monitor).status_code == 200
            preds, labels = records(now, seed=9)
            for i in range(0, len(preds), 5000):
                body = orjson.dumps({"model": "fraud", "records": preds[i : i + 5000]})
                r = client.post("/v1/predictions", content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == 202, r.text
            assert client.post("/v1/labels", json={"model": "fraud", "records": labels}).status_code == 202
            assert client.post("/v1/flush").json()["drained"]
        loaded = time.monotonic()

        # the same process, now running the scheduler: its first sweep catches up every window
        server.extra_env.update(
            {
                "DRIFTLINE_SCHEDULER_ENABLED": "true",
                "DRIFTLINE_SCHEDULER_TICK_SECONDS": "0.5",
                "DRIFTLINE_SCHEDULER_LEASE_SECONDS": str(LEASE),
            }
        )
        server.restart()
        end = int(time.time()) // DAY * DAY
        first = end - WINDOWS * DAY
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=120.0) as client:
            deadline = time.monotonic() + 120
            while True:
                mark = epoch(monitor_state(client)["watermark"])
                if mark is not None:
                    break
                assert time.monotonic() < deadline, "the catch-up never finished a chunk"
                time.sleep(0.05)
            assert mark < end, "the catch-up finished before it could be killed"
        server.kill()
        killed_at = time.monotonic()
        server.start()
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=120.0) as client:
            deadline = time.monotonic() + 150
            while True:
                state = monitor_state(client)
                if (epoch(state["watermark"]) or 0) >= end and state["last_run_at"] is not None:
                    break
                assert time.monotonic() < deadline, (
                    f"the catch-up did not complete after the restart: {state}"
                )
                time.sleep(0.2)
            recovered = time.monotonic()
            assert state["last_error"] is None, state["last_error"]
            after_crash = results(client)

            # a clean run: the scheduler's chunks again, on demand, replacing those results (a chunk
            # is one run, and a CUSUM starts afresh with each run)
            for lo in range(first, end, CHUNK):
                span = {"start": lo, "end": min(lo + CHUNK, end), "window": "1d"}
                r = client.post("/v1/models/fraud/detect", json=span)
                assert r.status_code == 200, r.text
                assert not r.json()["errors"], r.json()["errors"]
            clean = results(client)
    finally:
        server.stop()

    in_range = [m for m in after_crash if first <= (epoch(m["window_start"]) or 0) < end]
    keys = [key(m) for m in in_range]
    assert len(keys) == len(set(keys)), "a window's result is there twice"
    windows = {epoch(m["window_start"]) for m in in_range}
    assert windows == set(range(first, end, DAY)), "a window has no results"
    clean_by_key = {key(m): m for m in clean if first <= (epoch(m["window_start"]) or 0) < end}
    assert set(clean_by_key) == set(keys), (
        f"{len(set(clean_by_key) - set(keys))} results missing after the crash, "
        f"{len(set(keys) - set(clean_by_key))} not in a clean run"
    )
    for m in in_range:
        c = clean_by_key[key(m)]
        assert (m["status"], m["sample_size"], m["alert"]) == (c["status"], c["sample_size"], c["alert"]), (
            key(m)
        )
        if m["metric"] in CLOCK or m["value"] is None or c["value"] is None:
            assert (m["value"] is None) == (c["value"] is None) or m["metric"] in CLOCK, key(m)
            continue
        assert m["value"] == pytest.approx(c["value"], rel=1e-9, abs=1e-12), key(m)
    print(
        f"\n{len(preds)} predictions over {WINDOWS} daily windows; killed {killed_at - loaded:.1f}s into the "
        f"catch-up with the watermark at window {(mark - first) // DAY} of {WINDOWS}; complete "
        f"{recovered - killed_at:.1f}s later (lease {LEASE}s); {len(in_range)} results, one per key, equal "
        f"to a clean run's; {time.monotonic() - began:.1f}s"
    )
