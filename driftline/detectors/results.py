"""The one metrics table: every detector's results, keyed so that a re-run replaces.

Key: (project, model, version, detector id, metric, feature, slice, window). Rows are
versioned by the time they were computed (ReplacingMergeTree), and reads use FINAL, so
a re-run's rows replace the previous ones and are never counted twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from driftline.detectors.base import MetricRow
from driftline.storage.events import EventEngine, ddl
from driftline.storage.events.engine import rows as as_rows

TS = pa.timestamp("s", tz="UTC")


@dataclass(frozen=True)
class MetricsQuery:
    project: str
    model: str
    detector: str | None = None
    metric: str | None = None
    feature: str | None = None
    slice: str | None = None
    version: str | None = None
    start: int | None = None
    end: int | None = None
    status: str | None = None
    limit: int = 100_000


class MetricsTable:
    def __init__(self, engine: EventEngine) -> None:
        self.engine = engine
        self.table = f"`{engine.database}`.`metrics`"
        self._ready = False

    def ensure(self) -> None:
        if self._ready:
            return
        ddl.create_table(
            self.engine,
            self.table,
            "project String, model String, version String, detector String, detector_id String, metric String, "
            "feature String, slice String, window_start DateTime('UTC'), window_end DateTime('UTC'), "
            "value Nullable(Float64), threshold Nullable(Float64), alert UInt8, sample_size UInt64, status String, "
            "details String, computed DateTime('UTC'), computed_ns UInt64",
            "ReplacingMergeTree(computed_ns) PARTITION BY toYYYYMM(window_start) "
            "ORDER BY (project, model, version, detector, detector_id, metric, feature, slice, window_start, window_end)",
            # a row and its re-run must meet on one shard for FINAL to keep only the newest
            "cityHash64(project, model, version, detector, detector_id, metric, feature, slice, "
            "toUInt32(window_start), toUInt32(window_end))",
        )
        self._ready = True

    def write(self, project: str, model: str, rows: Sequence[MetricRow]) -> int:
        if not rows:
            return 0
        self.ensure()
        now = time.time_ns()
        n = len(rows)
        table = pa.table(
            {
                "project": pa.array([project] * n),
                "model": pa.array([model] * n),
                "version": pa.array([r.version for r in rows]),
                "detector": pa.array([r.detector for r in rows]),
                "detector_id": pa.array([r.detector_id for r in rows]),
                "metric": pa.array([r.metric for r in rows]),
                "feature": pa.array([r.feature for r in rows]),
                "slice": pa.array([r.slice for r in rows]),
                "window_start": pa.array([r.window_start for r in rows], pa.int64()).cast(TS),
                "window_end": pa.array([r.window_end for r in rows], pa.int64()).cast(TS),
                "value": pa.array([r.value for r in rows], pa.float64()),
                "threshold": pa.array([r.threshold for r in rows], pa.float64()),
                "alert": pa.array([int(r.alert) for r in rows], pa.uint8()),
                "sample_size": pa.array([int(r.sample_size) for r in rows], pa.uint64()),
                "status": pa.array([r.status for r in rows]),
                "details": pa.array(
                    [json.dumps(r.details, default=_json_default, allow_nan=False) for r in rows]
                ),
                "computed": pa.array([now // 1_000_000_000] * n, pa.int64()).cast(TS),
                "computed_ns": pa.array([now] * n, pa.uint64()),
            }
        )
        return self.engine.insert_columns(self.table, table)

    def read(self, q: MetricsQuery) -> list[dict[str, Any]]:
        self.ensure()
        where = ["project = %(project)s", "model = %(model)s"]
        params: dict[str, Any] = {"project": q.project, "model": q.model, "limit": q.limit}
        for name in ("detector", "metric", "feature", "slice", "version", "status"):
            value = getattr(q, name)
            if value is not None:
                where.append(f"{name} = %({name})s")
                params[name] = value
        if q.start is not None:
            where.append("window_start >= toDateTime(%(start)s, 'UTC')")
            params["start"] = q.start
        if q.end is not None:
            where.append("window_end <= toDateTime(%(end)s, 'UTC')")
            params["end"] = q.end
        got = self.engine.query_columns(
            "SELECT toUInt32(window_start) AS window_start, toUInt32(window_end) AS window_end, version, detector, "
            "detector_id, metric, feature, slice, value, threshold, alert, sample_size, status, details, computed_ns "
            f"FROM {self.table} FINAL WHERE {' AND '.join(where)} "
            "ORDER BY window_start, version, detector, metric, feature, slice LIMIT %(limit)s",
            params,
        )
        out = as_rows(got)
        for r in out:
            r["details"] = json.loads(r["details"]) if r["details"] else {}
            r["alert"] = bool(r["alert"])
            r.pop("computed_ns", None)  # selected only because FINAL through a Distributed table needs it
        return out

    def delete_model(self, project: str, model: str) -> None:
        self.ensure()
        ddl.delete_where(
            self.engine, self.table, "project = %(p)s AND model = %(m)s", {"p": project, "m": model}
        )


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
