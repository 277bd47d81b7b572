"""Scheduled detection on real stores: catch-up from the watermark, lookback, leases, workers, retention.

The clock is injected (`now=`); the stores are real: chDB + SQLite and the ClickHouse
server + PostgreSQL. `test_rows`, a small detector registered here, counts rows per
window from the summaries and logs each window it is asked to detect, so the tests can
tell how often every window was detected.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest
from typer.testing import CliRunner

from driftline.config import Settings, get_settings
from driftline.detectors import base
from driftline.detectors.base import DetectorConfig, MetricRow, RunContext
from driftline.detectors.runner import Runner
from driftline.detectors.scheduler import (
    DetectionJobs,
    DetectionScheduler,
    lease_name,
    plan,
)
from driftline.ingest.app import create_app
from driftline.ingest.state import AppState
from driftline.storage.events import EventStore, make_engine
from driftline.storage.meta import MetaStore
from tests.conftest import Api
from tests.support.models import FRAUD, fraud_records

DAY = 86_400
HOUR = 3_600
T0 = 1_780_000_000 // DAY * DAY  # a UTC midnight, in the past
KIND = "test_rows"

# -- a small real detector ----------------------------------------------------------------

CALLS: list[tuple[str, int, int]] = []  # (model, window start, window end) per window detected
_calls_lock = threading.Lock()


class RowsConfig(DetectorConfig):
    """Rows per window and version, from the summaries; `sleep` widens race windows in tests."""

    kind: ClassVar[str] = KIND
    default: ClassVar[bool] = False
    alert_above: float = 1e12
    sleep: float = 0.0
    fail: bool = False


class RowsDetector:
    def __init__(self, config: RowsConfig) -> None:
        self.config = config

    def run(self, ctx: RunContext) -> list[MetricRow]:
        if self.config.sleep:
            time.sleep(self.config.sleep)
        if self.config.fail:
            raise RuntimeError("asked to fail")
        windows = (ctx.end - ctx.start) // ctx.step
        with _calls_lock:
            CALLS.extend((ctx.model.name, *ctx.window_bounds(i)) for i in range(windows))
        token = uuid.uuid4().hex
        rows = []
        for version in ctx.versions:
            summary = ctx.live[version]
            for i in range(summary.windows):
                lo, hi = ctx.window_bounds(i)
                n = int(summary.rows[i])
                common: dict[str, Any] = {
                    "version": version,
                    "detector": KIND,
                    "detector_id": self.config.id,
                    "window_start": lo,
                    "window_end": hi,
                    "threshold": self.config.alert_above,
                    "details": {"run": token},
                }
                rows.append(
                    MetricRow(
                        metric="rows",
                        value=float(n),
                        alert=n > self.config.alert_above,
                        sample_size=n,
                        **common,
                    )
                )
                scores = summary.numeric.get("@score")
                scored = int(scores.n[i]) if scores is not None else 0
                rows.append(
                    MetricRow(
                        metric="scored", feature="@score", value=float(scored), sample_size=scored, **common
                    )
                )
        return rows


if KIND not in base.kinds():
    base.register(RowsConfig)(RowsDetector)


@pytest.fixture(autouse=True)
def _clear_calls() -> Iterator[None]:
    with _calls_lock:
        CALLS.clear()
    yield
    with _calls_lock:
        CALLS.clear()


def detected(model: str = "fraud") -> Counter[int]:
    """How often each window (by start) was detected."""
    with _calls_lock:
        return Counter(lo for m, lo, _ in CALLS if m == model)


# -- helpers ------------------------------------------------------------------------------


def quiet(settings: Settings, **extra: Any) -> Settings:
    """The stack's settings with no scheduler in the API (tests drive the jobs themselves)."""
    return settings.model_copy(update={"scheduler_enabled": False, **extra})


def register(api: Api, monitor: dict[str, Any] | None = None, versions: tuple[str, ...] = ("v1",)) -> None:
    assert api.post("/v1/models", json=FRAUD).status_code == 201
    for v in versions:
        r = api.post("/v1/models/fraud/versions", json={"version": v, "role": "champion"})
        assert r.status_code == 201, r.text
    if monitor is not None:
        r = api.put("/v1/models/fraud/monitors", json=monitor)
        assert r.status_code == 200, r.text


def ingest_days(
    api: Api, days: range, per_hour: int = 1, version: str = "v1", prefix: str = "r", base: int = T0
) -> int:
    """`per_hour` predictions in every hour of the given days after `base` (a midnight)."""
    records = fraud_records(len(days) * 24 * per_hour, version=version, prefix=prefix)
    i = 0
    for d in days:
        for h in range(24):
            for k in range(per_hour):
                records[i]["timestamp"] = base + d * DAY + h * HOUR + 60 * k + 7
                i += 1
    r = api.post(
        "/v1/predictions",
        content=orjson.dumps({"model": "fraud", "records": records}),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 202, r.text
    return len(records)


def state_of(api: Api) -> AppState:
    state: AppState = api.app.state.driftline  # type: ignore[attr-defined]
    return state


def jobs_for(api: Api, **kwargs: Any) -> DetectionJobs:
    state = state_of(api)
    return DetectionJobs(state.meta, state.events, state.runner, **kwargs)


def metrics(api: Api, **params: Any) -> list[dict[str, Any]]:
    r = api.get("/v1/models/fraud/metrics", params={"detector": KIND, "metric": "rows", **params})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def watermark(api: Api) -> str | None:
    r = api.get("/v1/models/fraud/monitors")
    assert r.status_code == 200, r.text
    value: str | None = r.json()["state"]["watermark"]
    return value


def iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def iso_day(d: int, base: int = T0) -> str:
    return iso(base + d * DAY)


MONITOR = {"window": "1d", "lookback": "2d", "delay": "0m", "detectors": [{"kind": KIND}]}


# -- catch-up from the watermark, bounded by the lookback -----------------------------------


def test_catch_up_detects_each_window_once(stack: Settings) -> None:
    with Api(create_app(quiet(stack))) as api:
        register(api, MONITOR)
        ingest_days(api, range(6))
        api.flush()
        jobs = jobs_for(api)

        # day 3: days 1 and 2 closed within the lookback; day 0 ended more than 2 days ago
        (run,) = jobs.sweep(now=T0 + 3 * DAY + 1800)
        assert (run.status, run.windows, run.errors) == ("done", 2, [])
        assert run.buckets_summarised >= 48
        assert detected() == {T0 + DAY: 1, T0 + 2 * DAY: 1}
        got = metrics(api)
        assert [(m["window_start"], m["value"]) for m in got] == [(iso_day(1), 24.0), (iso_day(2), 24.0)]
        assert watermark(api) == iso_day(3)

        # the same moment again: nothing is due, nothing is redone
        assert jobs.sweep(now=T0 + 3 * DAY + 1900)[0].status == "not_due"
        # the hourly schedule came round: the open day's buckets are summarised, no window is redone
        run = jobs.sweep(now=T0 + 3 * DAY + 2 * HOUR + 60)[0]
        assert (run.status, run.windows) == ("idle", 0)
        assert run.buckets_summarised >= 1
        assert detected() == {T0 + DAY: 1, T0 + 2 * DAY: 1}

        # day 5: days 3 and 4, once each; the earlier ones are not redone
        (run,) = jobs.sweep(now=T0 + 5 * DAY + 1800)
        assert (run.status, run.windows) == ("done", 2)
        assert detected() == {T0 + d * DAY: 1 for d in (1, 2, 3, 4)}
        assert [m["window_start"] for m in metrics(api)] == [iso_day(d) for d in (1, 2, 3, 4)]
        assert watermark(api) == iso_day(5)

        # down for a week: only the windows that ended within the lookback are caught up
        (run,) = jobs.sweep(now=T0 + 12 * DAY + 1800)
        assert (run.status, run.windows, run.skipped) == ("done", 2, 5)
        assert detected() == {T0 + d * DAY: 1 for d in (1, 2, 3, 4, 10, 11)}
        assert [m["window_start"] for m in metrics(api)] == [iso_day(d) for d in (1, 2, 3, 4)]
        assert watermark(api) == iso_day(12)


def test_a_new_window_length_detects_every_new_window(stack: Settings) -> None:
    """A watermark counts in the windows it was made with: daily windows done up to midnight
    say nothing of the hourly windows before it, quiet hours included."""
    with Api(create_app(quiet(stack))) as api:
        register(api, MONITOR)
        ingest_days(api, range(2, 3), base=T0 - 5 * HOUR)  # the last five hours of day 2 are quiet
        api.flush()
        jobs = jobs_for(api)
        (run,) = jobs.sweep(now=T0 + 3 * DAY + 1800)  # just after midnight, daily windows
        assert run.status == "done" and watermark(api) == iso_day(3)
        hourly = {**MONITOR, "window": "1h", "schedule": "1h", "lookback": "1d"}
        r = api.put("/v1/models/fraud/monitors", json=hourly)
        assert r.status_code == 200, r.text
        assert r.json()["state"]["watermark"] is None
        with _calls_lock:
            CALLS.clear()
        (run,) = jobs.sweep(now=T0 + 3 * DAY + 1800)
        assert (run.status, run.errors) == ("done", [])
        hours = range(T0 + 2 * DAY, T0 + 3 * DAY, HOUR)  # the lookback: the day before
        assert detected() == {h: 1 for h in hours}
        # the same length again (another threshold): the state is kept, nothing is redone
        r = api.put("/v1/models/fraud/monitors", json={**hourly, "delay": "1m"})
        assert r.status_code == 200 and r.json()["state"]["watermark"] == iso_day(3)
        assert jobs.sweep(now=T0 + 3 * DAY + 1900)[0].windows == 0
        assert detected() == {h: 1 for h in hours}


def test_a_monitor_changed_during_a_run_keeps_the_watermark(stack: Settings) -> None:
    """Results written under the old config do not count as the new one's: the windows are detected again."""
    slow = {**MONITOR, "detectors": [{"kind": KIND, "sleep": 1.0}]}
    with Api(create_app(quiet(stack))) as api:
        register(api, slow)
        ingest_days(api, range(3))
        api.flush()
        jobs = jobs_for(api)
        runs: list[Any] = []
        sweep = threading.Thread(target=lambda: runs.extend(jobs.sweep(now=T0 + 3 * DAY + 1800)))
        sweep.start()
        state = state_of(api)
        with state.meta.repos(readonly=True) as repos:
            (ref,) = repos.monitors.models()

        def leased() -> bool:
            with state.meta.repos(readonly=True) as repos:
                lease = repos.leases.get(lease_name(ref.model_id))
            return lease is not None and lease.owner is not None

        deadline = time.monotonic() + 30
        while not leased() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # past the run's own read of the monitor, inside the detector's second
        r = api.put("/v1/models/fraud/monitors", json={**MONITOR, "delay": "1m"})
        assert r.status_code == 200, r.text
        sweep.join(60)
        (run,) = runs
        assert run.status == "busy" and "changed during the run" in run.errors[0]
        assert watermark(api) is None
        (run,) = jobs.sweep(now=T0 + 3 * DAY + 1900)
        assert (run.status, run.windows) == ("done", 2) and watermark(api) == iso_day(3)
        assert detected() == {T0 + DAY: 2, T0 + 2 * DAY: 2}


def test_late_rows_and_labels_restate_their_window_only(stack: Settings) -> None:
    with Api(create_app(quiet(stack))) as api:
        register(api, MONITOR)
        ingest_days(api, range(4))
        api.flush()
        jobs = jobs_for(api)
        jobs.sweep(now=T0 + 3 * DAY + 1800)
        assert detected() == {T0 + DAY: 1, T0 + 2 * DAY: 1}
        # five late predictions land in day 2, already detected
        ingest_days(api, range(2, 3), prefix="late-", base=T0 + 1800)
        api.flush()
        run = jobs.sweep(now=T0 + 3 * DAY + 2 * HOUR + 60)[0]
        assert run.restated == 1 and run.windows == 1
        assert detected() == {T0 + DAY: 1, T0 + 2 * DAY: 2}
        assert [(m["window_start"], m["value"]) for m in metrics(api)] == [
            (iso_day(1), 24.0),
            (iso_day(2), 48.0),
        ]
        # labels for day 1 arrive: its label-joined summaries change, so day 1 is detected again
        labels = [{"request_id": f"r{i}", "label": 1} for i in range(24, 34)]
        assert api.post("/v1/labels", json={"model": "fraud", "records": labels}).status_code == 202
        api.flush()
        run = jobs.sweep(now=T0 + 3 * DAY + 4 * HOUR + 60)[0]
        assert run.restated == 1
        assert detected()[T0 + DAY] == 2 and detected()[T0 + 2 * DAY] == 2
        # nothing new: nothing restated
        assert jobs.sweep(now=T0 + 3 * DAY + 6 * HOUR + 60)[0].restated == 0


def test_new_model_is_scheduled_with_the_defaults(stack: Settings) -> None:
    """No monitor was PUT: the model runs with every registered family's defaults."""
    with Api(create_app(quiet(stack))) as api:
        register(api)
        ingest_days(api, range(3))
        api.flush()
        assert api.get("/v1/models/fraud/monitors").json()["source"] == "default"
        (run,) = jobs_for(api).sweep(now=T0 + 3 * DAY + HOUR)
        assert run.status in ("done", "failed"), run
        # default monitor: daily windows, 7 days back, 5 minutes of delay
        assert (run.windows, run.start, run.end) == (7, T0 - 4 * DAY, T0 + 3 * DAY)
        assert KIND not in {d["kind"] for d in api.get("/v1/models/fraud/monitors").json()["detectors"]}
        assert watermark(api) == iso_day(3) or run.status == "failed"


def test_disabled_monitor_and_plan(stack: Settings) -> None:
    with Api(create_app(quiet(stack))) as api:
        register(api, {**MONITOR, "enabled": False})
        (run,) = jobs_for(api).sweep(now=T0 + 3 * DAY)
        assert run.status == "disabled" and not detected()
        monitor_json = api.get("/v1/models/fraud/monitors").json()
        assert monitor_json["state"]["watermark"] is None
    # the plan alone: hourly windows with a delay; a watermark mid-window redoes that window
    from driftline.detectors.monitors import Monitor, MonitorConfig
    from driftline.storage.meta import MonitorRecord

    record = MonitorRecord(1, "default", "m", None, None, None, None, None)
    hourly = Monitor(MonitorConfig(window="1h", delay="10m", lookback="1d"), stored=True, record=record)
    now = T0 + 5 * HOUR + 5 * 60
    p = plan(T0 + 2 * HOUR, now, hourly)
    assert (p.start, p.end, p.windows) == (T0 + 2 * HOUR, T0 + 4 * HOUR, 2)  # 04:00-05:00 waits for its delay
    assert plan(T0 + 2 * HOUR + 60, now, hourly).start == T0 + 2 * HOUR
    p = plan(None, now, hourly)
    assert (p.start, p.windows) == (T0 + 5 * HOUR - DAY, 23)


def test_lease_held_elsewhere_blocks_then_expires(stack: Settings) -> None:
    with Api(create_app(quiet(stack))) as api:
        register(api, MONITOR)
        ingest_days(api, range(3))
        api.flush()
        state = state_of(api)
        with state.meta.repos(readonly=True) as repos:
            (ref,) = repos.monitors.models()
        with state.meta.repos() as repos:
            assert repos.leases.acquire(lease_name(ref.model_id), "someone-else", 1.0)
        jobs = jobs_for(api)
        assert jobs.sweep(now=T0 + 3 * DAY + 60)[0].status == "busy"
        assert not detected() and watermark(api) is None
        time.sleep(1.1)  # the other holder stopped renewing: its lease runs out
        assert jobs.sweep(now=T0 + 3 * DAY + 60)[0].status == "done"
        assert detected() == {T0 + DAY: 1, T0 + 2 * DAY: 1}
        with state.meta.repos(readonly=True) as repos:
            lease = repos.leases.get(lease_name(ref.model_id))
        assert lease is not None and lease.owner is None  # released after the run


def test_failing_detector_leaves_an_error_and_moves_on(stack: Settings) -> None:
    monitor = {**MONITOR, "detectors": [{"kind": KIND, "fail": True}, {"kind": KIND}]}
    with Api(create_app(quiet(stack))) as api:
        register(api, monitor)
        ingest_days(api, range(3))
        api.flush()
        (run,) = jobs_for(api).sweep(now=T0 + 3 * DAY + 60)
        assert run.status == "done" and len(run.errors) == 1 and "asked to fail" in run.errors[0]
        errors = api.get("/v1/models/fraud/metrics", params={"status": "error"}).json()["items"]
        assert {e["window_start"] for e in errors} == {iso_day(1), iso_day(2)}
        assert all("asked to fail" in e["details"]["error"] for e in errors)
        state = api.get("/v1/models/fraud/monitors").json()["state"]
        assert "asked to fail" in state["last_error"] and state["watermark"] == iso_day(3)


def test_retention_drops_old_days_once(stack: Settings) -> None:
    with Api(create_app(quiet(stack))) as api:
        register(api, MONITOR)
        ingest_days(api, range(5))
        api.flush()
        assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == 120
        jobs = jobs_for(api, retention_days=10)
        # 10 days before T0 + 13 days: the days before T0 + 3 go
        assert jobs.retention(now=T0 + 13 * DAY + HOUR) == 3
        assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == 48
        # a second worker firing the same daily job finds it taken
        other = jobs_for(api, retention_days=1)
        assert other.retention(now=T0 + 13 * DAY + HOUR) == 0
        assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == 48


# -- several workers: each window once ------------------------------------------------------

SERVER_STACK = pytest.mark.parametrize(
    "stack", [("clickhouse", "postgresql")], indirect=True, ids=["clickhouse-postgresql"]
)


def worker_jobs(settings: Settings, **kwargs: Any) -> DetectionJobs:
    """A worker of its own: its own connections to PostgreSQL and the ClickHouse server."""
    meta = MetaStore.from_settings(settings)
    events = EventStore(make_engine(settings))
    return DetectionJobs(meta, events, Runner(events), **kwargs)


def close(jobs: DetectionJobs) -> None:
    jobs.events.engine.close()
    jobs.meta.dispose()


def race(workers: list[DetectionJobs], now: float) -> list[str]:
    """Every worker sweeps at the same instant, each in a thread; the statuses of their runs."""
    barrier = threading.Barrier(len(workers))
    statuses: list[str] = []

    def sweep(jobs: DetectionJobs) -> None:
        barrier.wait()
        statuses.extend(r.status for r in jobs.sweep(now=now))

    threads = [threading.Thread(target=sweep, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return statuses


@SERVER_STACK
def test_two_workers_racing_detect_each_window_once(stack: Settings) -> None:
    monitor = {**MONITOR, "lookback": "4d", "detectors": [{"kind": KIND, "sleep": 0.3}]}
    with Api(create_app(quiet(stack))) as api:
        register(api, monitor)
        ingest_days(api, range(7))
        api.flush()
        workers = [worker_jobs(stack), worker_jobs(stack)]
        try:
            for now in (T0 + 3 * DAY + 60, T0 + 4 * DAY + 60, T0 + 6 * DAY + 60):
                statuses = race(workers, now)
                assert statuses.count("done") == 1, statuses
                assert set(statuses) <= {"done", "busy", "idle", "not_due"}, statuses
        finally:
            for w in workers:
                close(w)
        # at day 3 the lookback reaches the window of day -1 (it ends 3 days and 23:59 before)
        assert detected() == {T0 + d * DAY: 1 for d in range(-1, 6)}
        got = metrics(api)
        assert [m["window_start"] for m in got] == [iso_day(d) for d in range(-1, 6)]
        assert [m["value"] for m in got] == [0.0] + [24.0] * 6  # day -1: no traffic, in a run with traffic
        assert watermark(api) == iso_day(6)


@SERVER_STACK
def test_two_schedulers_on_one_job_store(stack: Settings) -> None:
    """Two APScheduler instances on the same PostgreSQL job store and ClickHouse server."""
    monitor = {**MONITOR, "lookback": "10d", "detectors": [{"kind": KIND, "sleep": 0.2}]}
    now = T0 + 8 * DAY + 60
    with Api(create_app(quiet(stack))) as api:
        register(api, monitor)
        ingest_days(api, range(8))
        api.flush()
        fired: Counter[str] = Counter()
        schedulers = []
        for name in ("a", "b"):
            jobs = worker_jobs(stack, owner=f"worker-{name}", clock=lambda: now)
            jobs.before_run = functools.partial(fired.update, [name])
            schedulers.append(DetectionScheduler(jobs, tick_seconds=0.2))
        try:
            for s in schedulers:
                s.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (watermark(api) != iso_day(8) or len(fired) < 2):
                time.sleep(0.2)
            time.sleep(1.0)  # more sweeps by both: nothing is due any more
        finally:
            for s in schedulers:
                s.shutdown(wait=True)
                close(s.jobs)
        assert set(fired) == {"a", "b"}, fired
        assert detected() == {T0 + d * DAY: 1 for d in range(-2, 8)}
        got = metrics(api)
        assert [m["window_start"] for m in got] == [iso_day(d) for d in range(-2, 8)]
        assert [m["value"] for m in got] == [0.0, 0.0] + [24.0] * 8
        # both found the jobs in the one store: two jobs, not four
        with state_of(api).meta.engine.connect() as conn:
            from sqlalchemy import text

            ids = sorted(r[0] for r in conn.execute(text("SELECT id FROM scheduler_jobs")))
        assert ids == ["driftline-retention", "driftline-sweep"]
    assert not [t for t in threading.enumerate() if t.name.startswith("driftline-scheduler")]


# -- the scheduler in the API process -------------------------------------------------------


def test_api_runs_the_scheduler_on_the_embedded_store(stack: Settings) -> None:
    embedded = stack.clickhouse_url is None
    settings = stack.model_copy(update={"scheduler_tick_seconds": 0.2, "scheduler_enabled": True})
    with Api(create_app(settings)) as api:
        scheduler = state_of(api).scheduler
        assert (scheduler is not None) == embedded
        if embedded:
            assert scheduler is not None and scheduler.running
            today = int(time.time()) // DAY * DAY
            register(api, {**MONITOR, "lookback": "1d"})
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and watermark(api) is None:
                time.sleep(0.1)
            # a real clock: yesterday's window was detected by the API's own scheduler
            # (the run may cross midnight UTC, and then the day that just ended counts)
            assert watermark(api) in (iso(today), iso(int(time.time()) // DAY * DAY))
    if embedded:
        assert scheduler is not None and not scheduler.running
    assert not [t for t in threading.enumerate() if t.name.startswith("driftline-scheduler")]


@SERVER_STACK
def test_api_runs_the_scheduler_with_a_server_only_when_told(stack: Settings) -> None:
    with Api(
        create_app(stack.model_copy(update={"scheduler_in_api": True, "scheduler_enabled": True}))
    ) as api:
        scheduler = state_of(api).scheduler
        assert scheduler is not None and scheduler.running
    assert not scheduler.running


# -- `driftline worker` -----------------------------------------------------------------------


@pytest.fixture
def cli_env(stack: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The stack's settings as DRIFTLINE_* variables, for the CLI in this process and in children."""
    env = {
        "DRIFTLINE_HOME": str(stack.home),
        "DRIFTLINE_DATABASE_URL": stack.resolved_database_url,
        "DRIFTLINE_LOG_JSON": "false",
    }
    if stack.clickhouse_url:
        env["DRIFTLINE_CLICKHOUSE_URL"] = stack.clickhouse_url
    else:
        env["DRIFTLINE_EVENTS_DIR"] = str(stack.chdb_path)
        env["DRIFTLINE_EVENTS_DATABASE"] = stack.events_database
    for name in [k for k in os.environ if k.startswith("DRIFTLINE_")]:
        monkeypatch.delenv(name)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


@SERVER_STACK
def test_worker_once_runs_a_sweep(stack: Settings, cli_env: dict[str, str]) -> None:
    """The worker runs on the real clock: rows of the last two days."""
    from driftline.cli import app

    base = int(time.time()) // DAY * DAY - 2 * DAY
    with Api(create_app(quiet(stack))) as api:
        register(api, {**MONITOR, "lookback": "3d"})
        ingest_days(api, range(2), base=base)
        api.flush()
        result = CliRunner().invoke(app, ["worker", "--once"])
        assert result.exit_code == 0, result.output
        assert "default/fraud: done" in result.output
        with_rows = [m["window_start"] for m in metrics(api) if m["value"]]
        assert with_rows == [iso_day(0, base), iso_day(1, base)]


@pytest.mark.parametrize("stack", [("chdb", "sqlite")], indirect=True, ids=["chdb-sqlite"])
def test_worker_refuses_the_embedded_store(stack: Settings, cli_env: dict[str, str]) -> None:
    from driftline.cli import app

    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 2
    assert "needs a ClickHouse server" in result.output


@SERVER_STACK
def test_worker_process_stops_cleanly_on_sigterm(stack: Settings, cli_env: dict[str, str]) -> None:
    with Api(create_app(quiet(stack))) as api:
        register(api, MONITOR)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env.update(cli_env)
    env["DRIFTLINE_SCHEDULER_TICK_SECONDS"] = "0.5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftline", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "started" in line:
                break
        assert any("started" in line for line in lines), "".join(lines)
        time.sleep(1.5)  # a few sweeps
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(lines) + out
        assert "worker stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    with Api(create_app(quiet(stack))) as api:
        state = api.get("/v1/models/fraud/monitors").json()["state"]
        assert state["last_run_at"] is not None  # the worker ran the model with the real clock
