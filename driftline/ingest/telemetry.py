"""Prometheus metrics and structured JSON logs of the API process.

Metrics live in a registry per app, so tests (and several apps in one process) never
share counters; logs carry the request id, model and version of what they are about.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "driftline_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "driftline_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.rows = Counter("driftline_ingest_rows", "Rows accepted by kind", ["kind"], registry=r)
        self.duplicates = Counter("driftline_ingest_duplicates", "Duplicate rows seen", ["kind"], registry=r)
        self.violations = Counter("driftline_ingest_violations", "Data-quality violations stored", registry=r)
        self.rejected = Counter(
            "driftline_ingest_rejected", "Requests refused by reason", ["reason"], registry=r
        )
        self.spool_bytes = Gauge(
            "driftline_spool_pending_bytes", "Accepted bytes not yet in the store", registry=r
        )
        self.flushed = Counter(
            "driftline_flush_rows", "Rows flushed from the spool into the store", registry=r
        )
        self.flush_errors = Counter("driftline_flush_errors", "Failed flush attempts", registry=r)
        self.quarantined = Counter(
            "driftline_spool_quarantined", "Spool records the store refused for good", registry=r
        )
        self.store_up = Gauge(
            "driftline_event_store_up", "1 when the event store answered the last flush", registry=r
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request context when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        for key in ("model", "version", "project", "kind", "rows", "status", "route", "duration_ms"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", *, as_json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if as_json else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger("driftline")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
