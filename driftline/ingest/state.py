"""What one API process holds: settings, both stores, the spool and its flusher, the detection runner,
and alerting (rule evaluation after every detector run, the outbox sender).

Built in the app's lifespan (never at import), closed at shutdown; tests build one
per app against temp dirs. On the embedded event store only this process may touch
the data, so it also runs the detection scheduler; with a ClickHouse server that is
`driftline worker`'s job unless `scheduler_in_api` says otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from driftline.alerts import AlertMetrics, AlertService
from driftline.config import Settings, secret_key
from driftline.detectors.runner import Runner
from driftline.ingest.api_models import IngestResult
from driftline.ingest.batching import Coalescer
from driftline.ingest.columns import PiiHasher
from driftline.ingest.flusher import Flusher
from driftline.ingest.recent import RecentKeys
from driftline.ingest.records import Rows
from driftline.ingest.registry import ModelCache
from driftline.ingest.spool import Spool
from driftline.ingest.telemetry import Metrics
from driftline.schema import ModelSchema
from driftline.storage.events import EventStore, make_engine
from driftline.storage.meta import MetaStore
from driftline.storage.meta.models import KeyRole

if TYPE_CHECKING:
    from driftline.detectors.scheduler import DetectionScheduler

log = logging.getLogger(__name__)

BODY_GROUP_BYTES = 8 * 1024 * 1024  # JSON bodies read in one pass at most


@dataclass
class AppState:
    settings: Settings
    meta: MetaStore
    events: EventStore
    spool: Spool
    flusher: Flusher
    models: ModelCache
    hasher: PiiHasher
    metrics: Metrics
    runner: Runner
    alerts: AlertService
    batches: Coalescer[Rows, IngestResult]
    bodies: Coalescer[bytes, IngestResult | None]
    recent: RecentKeys = field(default_factory=RecentKeys)
    scheduler: DetectionScheduler | None = None

    @classmethod
    def open(cls, settings: Settings, *, metrics: Metrics | None = None) -> AppState:
        settings.home.mkdir(parents=True, exist_ok=True)
        metrics = metrics or Metrics()
        meta = MetaStore.from_settings(settings)
        meta.migrate()
        if settings.bootstrap_key is not None:
            with meta.repos() as repos:
                repos.keys.ensure_key(
                    "default", settings.bootstrap_key.get_secret_value(), KeyRole.ADMIN, "bootstrap"
                )
        engine = make_engine(settings)
        events = EventStore(engine)
        events.sweep_scratch()
        spool = Spool(
            settings.resolved_spool_dir,
            max_bytes=settings.spool_max_bytes,
            min_free_bytes=settings.spool_min_free_bytes,
        )
        models = ModelCache(meta)

        def schema_of(project: str, model: str) -> ModelSchema:
            return models.get(project, model, allow_stale=True).schema

        flusher = Flusher(
            spool,
            events,
            schema_of,
            metrics,
            interval=settings.flush_interval_seconds,
            max_rows=settings.flush_max_rows,
        )
        metrics.spool_bytes.set_function(lambda: spool.pending_bytes)
        runner = Runner(events)
        alerts = AlertService(settings, meta, runner.metrics, AlertMetrics(metrics.registry, meta))
        return cls(
            settings=settings,
            meta=meta,
            events=events,
            spool=spool,
            flusher=flusher,
            models=models,
            hasher=PiiHasher(secret_key(settings)),
            metrics=metrics,
            runner=runner,
            alerts=alerts,
            # a group stays below the direct-insert size, so it is always spooled
            batches=Coalescer(max_size=settings.direct_insert_min_rows - 1),
            # JSON bodies read in one pass, sized in bytes (rows are known once read)
            bodies=Coalescer(max_size=BODY_GROUP_BYTES),
        )

    @property
    def runs_scheduler(self) -> bool:
        """Whether this API process should run the scheduler (see the module docstring)."""
        embedded = self.settings.clickhouse_url is None
        return self.settings.scheduler_enabled and (embedded or self.settings.scheduler_in_api)

    def start(self) -> None:
        self.flusher.start()
        self.alerts.start()
        if self.runs_scheduler:
            from driftline.detectors.scheduler import DetectionJobs, DetectionScheduler

            spool, timeout = self.spool, self.settings.detect_spool_timeout_seconds
            jobs = DetectionJobs(
                self.meta,
                self.events,
                self.runner,
                lease_seconds=self.settings.scheduler_lease_seconds,
                retention_days=self.settings.retention_days,
                # rows acknowledged before a sweep are in the store when it reads them
                before_run=lambda: spool.wait_flushed(timeout),
                after_run=self.alerts.after_run,
            )
            self.scheduler = DetectionScheduler(jobs, tick_seconds=self.settings.scheduler_tick_seconds)
            self.scheduler.start()

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None
        self.alerts.close()
        self.flusher.stop(timeout=10.0)
        self.spool.close()
        self.events.engine.close()
        self.meta.dispose()
