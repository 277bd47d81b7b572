"""Moves accepted batches from the spool into the event store, in large blocks.

Inserting each small batch on its own costs a fixed overhead per insert, so the
flusher gathers what the spool holds and inserts it per model and kind. A store
outage stops nothing but the flusher, which backs off and tries again; the spool
keeps every acknowledged row meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from itertools import groupby

import pyarrow as pa

from driftline.errors import NotFound, StoreError
from driftline.ingest.spool import Spool, SpoolRecord
from driftline.ingest.telemetry import Metrics
from driftline.schema import ModelSchema
from driftline.storage.events import EventStore, Kind

log = logging.getLogger(__name__)

SchemaLookup = Callable[[str, str], ModelSchema]
MAX_BACKOFF = 30.0
GIVE_UP_AFTER = 20  # failures of one block while the store answers: the block, not the store, is at fault


class Flusher:
    def __init__(
        self,
        spool: Spool,
        events: EventStore,
        schemas: SchemaLookup,
        metrics: Metrics,
        *,
        interval: float,
        max_rows: int,
    ) -> None:
        self.spool = spool
        self.events = events
        self.schemas = schemas
        self.metrics = metrics
        self.interval = interval
        self.max_rows = max_rows
        self.batch_bytes = 32 * 1024 * 1024
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one flush at a time (thread or explicit)
        self._failures = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="driftline-flusher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Flush what can be flushed within `timeout`, then stop; the rest stays spooled."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), 0.1))
        while time.monotonic() < deadline and self.spool.pending_bytes > 0:
            try:
                if self.flush_once() == 0:
                    break
            except StoreError:
                break

    def _run(self) -> None:
        backoff = self.interval
        while not self._stop.is_set():
            # gather for an interval (large blocks make cheap inserts), or less when much is waiting
            self.spool.wait_for_data(self.interval, min_bytes=self.batch_bytes)
            if self._stop.is_set():
                return
            try:
                self.flush_once()
                backoff = self.interval
            except StoreError as exc:
                self._note_failure(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception as exc:
                log.exception("flush failed")
                self._note_failure(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _note_failure(self, exc: BaseException) -> None:
        self.metrics.flush_errors.inc()
        self.metrics.store_up.set(0)
        self.last_error = str(exc)
        log.warning("flush to the event store failed, retrying: %s", exc)

    def flush_once(self) -> int:
        """Insert one block of spooled records; returns rows flushed (0 when empty)."""
        with self._lock:
            records = self.spool.records(self.max_rows)
            if not records:
                return 0
            rows = 0
            for (project, model, kind), group in groupby(records, key=lambda r: (r.project, r.model, r.kind)):
                rows += self._insert(project, model, Kind(kind), list(group))
            self.spool.commit(records[-1].end, sum(r.size for r in records))
            self.metrics.flushed.inc(rows)
            self.metrics.store_up.set(1)
            self.metrics.spool_bytes.set(self.spool.pending_bytes)
            self._failures = 0
            self.last_error = None
            return rows

    def _insert(self, project: str, model: str, kind: Kind, group: list[SpoolRecord]) -> int:
        try:
            schema = self.schemas(project, model)
            table = pa.concat_tables([r.table for r in group], promote_options="default")
        except NotFound as exc:
            self._quarantine(group, f"model {project}/{model} no longer exists: {exc}")
            return 0
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            self._quarantine(group, f"batches do not combine: {exc}")
            return 0
        try:
            self.events.insert(kind, project, schema, table)
        except StoreError:
            self._failures += 1
            if self._failures >= GIVE_UP_AFTER and self._store_answers():
                self._quarantine(group, f"the store refused this block {self._failures} times")
                return 0
            raise
        return int(table.num_rows)

    def _store_answers(self) -> bool:
        try:
            self.events.engine.ping()
        except StoreError:
            return False
        return True

    def _quarantine(self, group: list[SpoolRecord], reason: str) -> None:
        for record in group:
            path = self.spool.quarantine(record, reason)
            self.metrics.quarantined.inc()
            log.error("spool record quarantined at %s: %s", path, reason)
