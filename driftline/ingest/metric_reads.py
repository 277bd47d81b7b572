"""Reads of the metrics table sized for pages: several values per filter, one window length, no details.

A model watched for 90 days in hourly windows has hundreds of thousands of result rows,
and a dashboard page needs a narrow slice of them at once. So only the columns asked for
are read; the rows are deduplicated with FINAL, as `MetricsTable.read` does, so a re-run
still replaces; and details, the widest column, stay the JSON text they were stored as
and are spliced into the response without being parsed and encoded again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from driftline.detectors.results import MetricsTable

# the order of `MetricsTable.read`, so either reader pages the same way
ORDER = "window_start, version, detector, metric, feature, slice"
_FIELDS = (
    "ws",
    "we",
    "version",
    "detector",
    "detector_id",
    "metric",
    "feature",
    "slice",
    "value",
    "threshold",
    "alert",
    "sample_size",
    "status",
)


@dataclass(frozen=True)
class MetricsSelect:
    """Filters of a read; an empty tuple means any value, `window` is a window length in seconds."""

    project: str
    model: str
    detectors: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    versions: tuple[str, ...] = ()
    slice: str | None = None
    status: str | None = None
    start: int | None = None
    end: int | None = None
    window: int | None = None
    details: bool = True
    limit: int = 10_000


def split_values(value: str | None) -> tuple[str, ...]:
    """`a,b` as ('a', 'b'); None or '' as no filter. Names of detectors, metrics, features and
    versions never hold a comma, so a single value reads as it always did."""
    if value is None or value == "":
        return ()
    return tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))


def _in(column: str, values: tuple[str, ...], params: dict[str, Any], where: list[str]) -> None:
    if not values:
        return
    if len(values) == 1:
        where.append(f"{column} = %({column})s")
        params[column] = values[0]
    else:
        where.append(f"{column} IN %({column})s")
        params[column] = values


def _iso(epoch: int, cache: dict[int, str]) -> str:
    text = cache.get(epoch)
    if text is None:
        text = datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
        cache[epoch] = text
    return text


def read_items(table: MetricsTable, q: MetricsSelect) -> tuple[list[dict[str, Any]], bool]:
    """Items shaped as GET /metrics answers them, and whether more than `limit` matched.

    With details, each item's `details` is an `orjson.Fragment` of the stored JSON: encode
    the items with orjson.
    """
    table.ensure()
    where = ["project = %(project)s", "model = %(model)s"]
    params: dict[str, Any] = {"project": q.project, "model": q.model, "limit": q.limit + 1}
    _in("detector", q.detectors, params, where)
    _in("metric", q.metrics, params, where)
    _in("feature", q.features, params, where)
    _in("version", q.versions, params, where)
    for name in ("slice", "status"):
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
    if q.window is not None:
        where.append("toUInt32(window_end) - toUInt32(window_start) = %(window)s")
        params["window"] = q.window
    # computed_ns: FINAL through a Distributed table needs the version column among those read
    columns = (
        "toUInt32(window_start) AS ws, toUInt32(window_end) AS we, version, detector, detector_id, "
        "metric, feature, slice, value, threshold, alert, sample_size, status, computed_ns"
    )
    if q.details:
        columns += ", details"
    got = table.engine.query_columns(
        f"SELECT {columns} FROM {table.table} FINAL WHERE {' AND '.join(where)} "
        f"ORDER BY {ORDER} LIMIT %(limit)s",
        params,
    )
    n = len(got["ws"])
    truncated = n > q.limit
    n = min(n, q.limit)
    fields = [got[name][:n].tolist() for name in _FIELDS]
    details = got["details"][:n].tolist() if q.details else [None] * n
    times: dict[int, str] = {}
    items: list[dict[str, Any]] = []
    for row, text in zip(zip(*fields, strict=True), details, strict=True):
        (
            ws,
            we,
            version,
            detector,
            detector_id,
            metric,
            feature,
            slice_,
            value,
            threshold,
            alert,
            size,
            status,
        ) = row
        item: dict[str, Any] = {
            "window_start": times.get(ws) or _iso(int(ws), times),
            "window_end": times.get(we) or _iso(int(we), times),
            "version": version,
            "detector": detector,
            "detector_id": detector_id,
            "metric": metric,
            "feature": feature,
            "slice": slice_,
            "value": value if math.isfinite(value) else None,
            "threshold": threshold if math.isfinite(threshold) else None,
            "alert": bool(alert),
            "sample_size": int(size),
            "status": status,
        }
        if q.details:
            item["details"] = orjson.Fragment(text or "{}")
        items.append(item)
    return items, truncated


def encode(items: list[dict[str, Any]], truncated: bool) -> bytes:
    """The body of GET /metrics."""
    return orjson.dumps({"items": items, "truncated": truncated})
