"""Scheduled detection: one sweeper job over all models, a lease per model, a watermark per model.

Why one sweeper rather than one APScheduler job per model: models are registered by
any API replica, and monitors change at any time; a sweeper finds them in the metadata
store at every tick, so nothing has to keep a job per model in step with the registry,
and the persistent job store holds two jobs with fixed ids (sweep, retention) that any
number of workers can add without duplicating them. What must survive a restart is
data in our own tables, not pickled job state: per model, a watermark (every window
ending at or before it has its results written) and the last run time.

Each sweep, for every enabled model that is due (its schedule came round, or a window
closed since the watermark): take the model's lease, summarise closed buckets, run the
monitor's detectors over every window closed since the watermark (at most `lookback`
back), and advance the watermark after the results are written, in chunks, renewing
the lease as it goes. A worker that lost its lease stops without moving the watermark,
so each window is detected once; a crash redoes at most one chunk, whose results
replace the earlier ones in the metrics table.

APScheduler 3 does not coordinate schedulers across processes: two workers may both
fire the sweep; the leases decide who runs which model.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from driftline.detectors.base import DetectorConfig
from driftline.detectors.monitors import Monitor, iso, monitor_of, parse_time, parse_window
from driftline.detectors.runner import Runner, RunResult, align
from driftline.errors import DriftlineError, InvalidInput
from driftline.storage.events import EventStore
from driftline.storage.meta import MetaStore, ModelRef
from driftline.storage.meta.monitors import SCHEDULER_JOBS_TABLE
from driftline.storage.meta.records import ModelInfo

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)

SWEEP_JOB = "driftline-sweep"
RETENTION_JOB = "driftline-retention"
RETENTION_LEASE = "retention"
CHUNK_SECONDS = 7 * 86_400  # windows detected per chunk: a week's worth, or one window


def lease_name(model_id: int) -> str:
    return f"detect:{model_id}"


def default_owner() -> str:
    """Who holds a lease: host, process and instance, so two schedulers in one process differ."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Plan:
    """The windows one run of a model detects: [start, end) in steps, and what the lookback skipped."""

    start: int
    end: int
    step: int
    skipped: int

    @property
    def windows(self) -> int:
        return max(self.end - self.start, 0) // self.step


def plan(watermark: int | None, now: float, monitor: Monitor) -> Plan:
    """Windows closed (and past their delay) since the watermark, ending no earlier than `lookback` ago."""
    cfg = monitor.config
    step = cfg.window_seconds
    end = int(now - cfg.delay_seconds) // step * step
    # the first window start whose end is within the lookback: s + step >= now - lookback
    earliest = -(-int(now - cfg.lookback_seconds - step) // step) * step
    if watermark is None:
        return Plan(earliest, max(end, earliest), step, 0)
    done = watermark // step * step
    start = max(done, earliest)
    skipped = max(earliest - done, 0) // step
    return Plan(start, max(end, start), step, skipped)


@dataclass
class ModelRun:
    """What one run of one model did; `status` is done, idle, not_due, busy, disabled or failed."""

    project: str
    model: str
    status: str
    windows: int = 0
    start: int | None = None
    end: int | None = None
    skipped: int = 0
    restated: int = 0
    buckets_summarised: int = 0
    rows_written: int = 0
    alerts: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "model": self.model,
            "status": self.status,
            "windows": self.windows,
            "start": iso(self.start),
            "end": iso(self.end),
            "skipped": self.skipped,
            "restated": self.restated,
            "buckets_summarised": self.buckets_summarised,
            "rows_written": self.rows_written,
            "alerts": self.alerts,
            "errors": self.errors,
        }


class LeaseLost(DriftlineError):
    """Another worker took the model's lease (ours expired): stop without moving the watermark."""

    status_code = 409


class ConfigChanged(DriftlineError):
    """The monitor was reconfigured during a run: stop without moving the watermark."""

    status_code = 409


class DetectionJobs:
    """The scheduled work itself, free of APScheduler so tests call it with their own clock."""

    def __init__(
        self,
        meta: MetaStore,
        events: EventStore,
        runner: Runner | None = None,
        *,
        owner: str | None = None,
        lease_seconds: float = 600.0,
        retention_days: int = 400,
        before_run: Callable[[], object] | None = None,
        after_run: Callable[[str, str, RunResult], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta = meta
        self.events = events
        self.runner = runner or Runner(events)
        self.owner = owner or default_owner()
        self.lease_seconds = lease_seconds
        self.retention_days = retention_days
        self.before_run = before_run
        # called with (project, model, result) once a chunk's results are written, before the
        # watermark moves: alert evaluation, redone with the chunk if it fails
        self.after_run = after_run
        self.clock = clock
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Ask a running sweep to stop after its current chunk (the watermark stays consistent)."""
        self.stopping.set()

    # -- the sweep -------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> list[ModelRun]:
        """Run every model that is due; one failing model does not stop the others."""
        now = self.clock() if now is None else now
        if self.before_run is not None:
            self.before_run()
        with self.meta.repos(readonly=True) as repos:
            models = repos.monitors.models()
        runs = []
        for ref in models:
            if self.stopping.is_set():
                break
            try:
                runs.append(self.run_model(ref, now=now))
            except Exception as exc:  # the store may be down: the next tick retries
                log.exception(
                    "scheduled detection failed", extra={"project": ref.project, "model": ref.model}
                )
                runs.append(
                    ModelRun(ref.project, ref.model, "failed", errors=[f"{type(exc).__name__}: {exc}"])
                )
        return runs

    def _due(self, monitor: Monitor, now: float) -> bool:
        """Due when the schedule came round since the last run, or a window closed since the watermark."""
        record = monitor.record
        if record.last_run_at is None:
            return True
        every = monitor.config.schedule_seconds
        if int(now) // every > int(record.last_run_at.timestamp()) // every:
            return True
        return plan(record.watermark, now, monitor).windows > 0

    def run_model(self, ref: ModelRef, *, now: float | None = None, force: bool = False) -> ModelRun:
        """One scheduled run of one model, under its lease."""
        now = self.clock() if now is None else now
        with self.meta.repos(readonly=True) as repos:
            record = repos.monitors.state(ref.model_id)
        if record is None:
            return ModelRun(ref.project, ref.model, "idle")
        try:
            monitor = monitor_of(record)
        except DriftlineError as exc:
            with self.meta.repos() as repos:
                repos.monitors.record_run(ref.model_id, now, exc.message)
            return ModelRun(ref.project, ref.model, "failed", errors=[exc.message])
        if not monitor.config.enabled:
            return ModelRun(ref.project, ref.model, "disabled")
        if not force and not self._due(monitor, now):
            return ModelRun(ref.project, ref.model, "not_due")
        name = lease_name(ref.model_id)
        with self.meta.repos() as repos:
            if not repos.leases.acquire(name, self.owner, self.lease_seconds):
                return ModelRun(ref.project, ref.model, "busy")
        try:
            return self._run_leased(ref, now)
        finally:
            with self.meta.repos() as repos:
                repos.leases.release(name, self.owner)

    def _run_leased(self, ref: ModelRef, now: float) -> ModelRun:
        # read again under the lease: another worker may have advanced the watermark meanwhile
        with self.meta.repos(readonly=True) as repos:
            record = repos.monitors.state(ref.model_id)
            info = repos.models.get(ref.project, ref.model)
        if record is None or info is None or info.id != ref.model_id:
            return ModelRun(ref.project, ref.model, "idle")
        monitor = monitor_of(record)
        if not monitor.config.enabled:
            return ModelRun(ref.project, ref.model, "disabled")
        todo = plan(record.watermark, now, monitor)
        run = ModelRun(ref.project, ref.model, "done" if todo.windows else "idle", skipped=todo.skipped)
        if todo.skipped:
            log.warning(
                "%d windows ended beyond the lookback (%s) and are not caught up",
                todo.skipped,
                monitor.config.lookback,
                extra={"project": ref.project, "model": ref.model},
            )
        error: str | None = None
        try:
            configs = monitor.config.configs()
            if record.watermark is not None:
                self._restate(ref, info, configs, monitor, record.watermark, todo, now, run)
            per_chunk = max(CHUNK_SECONDS // todo.step, 1) * todo.step
            lo = todo.start
            while lo < todo.end and not self.stopping.is_set():
                hi = min(lo + per_chunk, todo.end)
                with self.meta.repos() as repos:
                    if not repos.leases.renew(lease_name(ref.model_id), self.owner, self.lease_seconds):
                        raise LeaseLost(f"the lease on model {ref.model!r} passed to another worker")
                result = self.runner.run(ref.project, info, configs, lo, hi, todo.step, now=now)
                _add(run, result)
                if self.after_run is not None:
                    self.after_run(ref.project, ref.model, result)
                # fenced: the watermark moves only while we still hold the lease (the renew locks its row)
                with self.meta.repos() as repos:
                    if not repos.leases.renew(lease_name(ref.model_id), self.owner, self.lease_seconds):
                        raise LeaseLost(f"the lease on model {ref.model!r} passed to another worker")
                    if not repos.monitors.advance(ref.model_id, hi, record.config):
                        raise ConfigChanged(
                            f"the monitor of model {ref.model!r} changed during the run; "
                            "its windows are detected again under the new one"
                        )
                lo = hi
            # keep the summaries of the still-open window current, so each closed bucket is summarised once
            if todo.end < now and not self.stopping.is_set():
                lo = max(todo.end, todo.start)
                run.buckets_summarised += self.runner.summarizer.summarize(
                    ref.project, info.schema, lo, int(now), now=now
                )
                run.buckets_summarised += self.runner.perf.summarize(
                    ref.project, info.schema, lo, int(now), now=now
                )
        except (LeaseLost, ConfigChanged) as exc:
            log.warning("%s", exc.message, extra={"project": ref.project, "model": ref.model})
            run.status = "busy"
            run.errors.append(exc.message)
            return run
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            run.status = "failed"
            run.errors.append(error)
            log.exception("detection run failed", extra={"project": ref.project, "model": ref.model})
        if run.errors and error is None:
            error = "; ".join(run.errors)
        with self.meta.repos() as repos:
            repos.monitors.record_run(ref.model_id, now, error)
        if run.windows:
            log.info(
                "detected %d windows (%s to %s), %d rows",
                run.windows,
                iso(run.start),
                iso(run.end),
                run.rows_written,
                extra={"project": ref.project, "model": ref.model},
            )
        return run

    def _restate(
        self,
        ref: ModelRef,
        info: ModelInfo,
        configs: list[DetectorConfig],
        monitor: Monitor,
        watermark: int,
        todo: Plan,
        now: float,
        run: ModelRun,
    ) -> None:
        """Detect again the windows already done whose buckets late rows or late labels changed.

        Each summariser re-summarises a bucket whose raw rows or labelled count moved; the
        windows holding such buckets, within the lookback, are run again and their results
        replace the earlier ones (so a late label revises that window's performance).
        """
        step = todo.step
        lo = max(-(-int(now - monitor.config.lookback_seconds - step) // step) * step, 0)
        hi = min(watermark // step * step, todo.start)
        if hi <= lo:
            return
        changed = set(self.runner.summarizer.summarize_buckets(ref.project, info.schema, lo, hi, now=now))
        changed |= set(self.runner.perf.summarize_buckets(ref.project, info.schema, lo, hi, now=now))
        windows = sorted({b // step * step for b in changed if lo <= b < hi})
        for start in windows:
            result = self.runner.run(ref.project, info, configs, start, start + step, step, now=now)
            _add(run, result)
            run.restated += 1
        if windows:
            log.info(
                "detected %d windows again after late data",
                len(windows),
                extra={"project": ref.project, "model": ref.model},
            )

    # -- retention -------------------------------------------------------------------------

    def retention(self, now: float | None = None) -> int:
        """Drop event partitions older than retention_days; returns partitions dropped.

        The lease is left to expire rather than released, so a second worker firing the
        same daily job within the hour finds it taken and skips it.
        """
        now = self.clock() if now is None else now
        with self.meta.repos() as repos:
            if not repos.leases.acquire(RETENTION_LEASE, self.owner, 3600.0):
                return 0
            models = repos.monitors.models()
        cutoff = (datetime.fromtimestamp(now, UTC) - timedelta(days=self.retention_days)).date()
        dropped = 0
        for ref in models:
            try:
                dropped += self.events.drop_before(ref.project, ref.model, cutoff)
            except Exception:
                log.exception("retention failed", extra={"project": ref.project, "model": ref.model})
        if dropped:
            log.info("retention dropped %d daily partitions older than %s", dropped, cutoff)
        return dropped


def _add(run: ModelRun, result: RunResult) -> None:
    run.windows += result.windows
    run.start = result.start if run.start is None else run.start
    run.end = result.end
    run.buckets_summarised += result.buckets_summarised
    run.rows_written += result.rows_written
    run.alerts += result.alerts
    run.errors.extend(result.errors)


# -- APScheduler --------------------------------------------------------------------------

_bound = threading.local()


def _bind(owner: DetectionScheduler) -> None:
    """Executor thread initializer: the jobs a scheduler's threads run belong to that scheduler."""
    _bound.owner = owner


def _owner() -> DetectionScheduler | None:
    owner: DetectionScheduler | None = getattr(_bound, "owner", None)
    return owner


def scheduled_sweep() -> None:
    """The sweep job's entry point (stored in the job store by reference)."""
    owner = _owner()
    if owner is None:
        log.warning("sweep fired outside a driftline scheduler thread; ignored")
        return
    owner.jobs.sweep()


def scheduled_retention() -> None:
    """The retention job's entry point (stored in the job store by reference)."""
    owner = _owner()
    if owner is None:
        log.warning("retention fired outside a driftline scheduler thread; ignored")
        return
    owner.jobs.retention()


class DetectionScheduler:
    """A BackgroundScheduler on the metadata database's job store, running the sweep and retention."""

    def __init__(self, jobs: DetectionJobs, *, tick_seconds: float = 60.0, retention_hour: int = 0) -> None:
        self.jobs = jobs
        self.tick_seconds = tick_seconds
        self.retention_hour = retention_hour
        self._scheduler: BackgroundScheduler | None = None

    @property
    def running(self) -> bool:
        return self._scheduler is not None and self._scheduler.running

    def start(self) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        if self._scheduler is not None:
            return
        self.jobs.stopping.clear()
        scheduler = BackgroundScheduler(
            jobstores={
                "default": SQLAlchemyJobStore(engine=self.jobs.meta.engine, tablename=SCHEDULER_JOBS_TABLE)
            },
            executors={
                "default": ThreadPoolExecutor(
                    2,
                    pool_kwargs={
                        "initializer": _bind,
                        "initargs": (self,),
                        "thread_name_prefix": "driftline-scheduler",
                    },
                )
            },
            # a sweep missed while down runs once, at once: the watermarks say what to catch up
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        scheduler.start(paused=True)
        self._scheduler = scheduler
        self._ensure(SWEEP_JOB, scheduled_sweep, IntervalTrigger(seconds=self.tick_seconds, timezone=UTC))
        self._ensure(
            RETENTION_JOB, scheduled_retention, CronTrigger(hour=self.retention_hour, minute=15, timezone=UTC)
        )
        scheduler.resume()
        log.info("scheduler started (owner %s, sweep every %ss)", self.jobs.owner, self.tick_seconds)

    def _ensure(self, job_id: str, func: Callable[[], None], trigger: Any) -> None:
        """Add the job unless the store holds it with the same trigger (its next run time is kept)."""
        assert self._scheduler is not None
        ref = f"{func.__module__}:{func.__name__}"
        job = self._scheduler.get_job(job_id)
        if job is not None and str(job.trigger) == str(trigger) and job.func_ref == ref:
            return
        self._scheduler.add_job(ref, trigger=trigger, id=job_id, name=job_id, replace_existing=True)

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop firing jobs; with `wait`, let a running sweep finish (it releases its leases)."""
        scheduler, self._scheduler = self._scheduler, None
        self.jobs.stop()
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=wait)
            log.info("scheduler stopped (owner %s)", self.jobs.owner)


# -- on demand ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectRange:
    """A requested detection range, aligned to whole windows."""

    start: int
    end: int
    step: int
    window: str

    @property
    def windows(self) -> int:
        return (self.end - self.start) // self.step


def detect_range(start: Any, end: Any, window: str, *, max_windows: int) -> DetectRange:
    """Parse and bound a detect request's range (InvalidInput says which part is wrong)."""
    try:
        lo = parse_time(start, "start")
        hi = parse_time(end, "end")
        step = parse_window(window)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if hi <= lo:
        raise InvalidInput(f"end ({iso(hi)}) must be after start ({iso(lo)})")
    lo, hi = align(lo, hi, step)
    rng = DetectRange(lo, hi, step, window)
    if rng.windows > max_windows:
        raise InvalidInput(
            f"{iso(lo)} to {iso(hi)} holds {rng.windows} windows of {window}; at most {max_windows} "
            "per request: narrow the range or widen the window"
        )
    return rng


def detect(
    meta: MetaStore, runner: Runner, project: str, model: str, rng: DetectRange, *, now: float | None = None
) -> tuple[RunResult, list[DetectorConfig]]:
    """Run the model's monitor over a range now (a backfill): results replace earlier ones, the watermark stays."""
    with meta.repos(readonly=True) as repos:
        info = repos.models.require(project, model)
        record = repos.monitors.get(project, model)
    configs = monitor_of(record).config.configs()
    return runner.run(project, info, configs, rng.start, rng.end, rng.step, now=now), configs
