"""Operational health per version and window: traffic, latency, failures, volume and freshness.

Expectations are learned from history, not configured: each window is set against the
comparable windows before it (the same time of day on previous days for sub-daily windows,
else the previous windows), read from the summaries over a lookback. The lookback is also
how a version that went silent is still reported: it had traffic there and has none now.
Freshness is the age of the newest prediction (per version) and of the newest label
received (per model) at the end of each window, or at run time for the window in progress;
it comes from the summaries' ledger and a max over the time column of the raw tables,
restricted to the hour in progress (predictions) or to recent partitions (labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from driftline.detectors import base
from driftline.detectors.base import DetectorConfig, MetricRow, RunContext
from driftline.detectors.data_quality import json_safe, level_index, rate_threshold
from driftline.detectors.summaries import (
    BUCKET_SECONDS,
    ERROR,
    LATENCY,
    STATUS,
    TIMING,
    Summary,
)
from driftline.storage.events import Kind

DAY = 86_400
WEEK = 7 * DAY
PERCENTILES = {"latency_p50": 0.5, "latency_p95": 0.95, "latency_p99": 0.99}
LEVEL_INDEX = {p: level_index(p) for p in PERCENTILES.values()}
# what this family writes: rows per second, milliseconds, shares in [0, 1], rows, seconds
METRICS = (
    "throughput",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "error_rate",
    "timeout_rate",
    "error_rate_by_cause",
    "volume",
    "freshness",
)
MODEL_WIDE = ""  # the version under which model-wide results (label freshness) are stored


class OperationsConfig(DetectorConfig):
    """Thresholds relative to history unless an absolute ceiling is given."""

    kind: ClassVar[str] = "operations"

    seasonality: Literal["auto", "none", "day", "week"] = Field(
        default="auto",
        description="which earlier windows are comparable: auto = the same time of day for sub-daily windows",
    )
    history: int = Field(
        default=7, ge=1, le=60, description="comparable earlier windows the expectation uses"
    )
    min_history: int = Field(
        default=3,
        ge=1,
        description="fewer comparable earlier windows (since the version first served): no verdict",
    )
    volume_drop: float = Field(default=0.5, gt=0, le=1, description="alert below (1 - drop) x expected rows")
    volume_spike: float = Field(default=3.0, gt=1, description="alert above spike x expected rows")
    error_margin: float = Field(default=0.02, ge=0, le=1)
    timeout_margin: float = Field(default=0.02, ge=0, le=1)
    cause_margin: float = Field(default=0.02, ge=0, le=1)
    max_causes: int = Field(default=20, ge=1, description="failing stages/dependencies reported per version")
    latency_ratio: float = Field(
        default=1.5, gt=1, description="alert above ratio x the percentile's history"
    )
    latency_min_delta_ms: float = Field(default=1.0, ge=0)
    latency_slo_ms: dict[str, float] = Field(
        default_factory=dict,
        description='fixed ceilings replacing the learned ones: {"latency_p99": 800, "latency_p95:inference": 40}',
    )
    min_tail_count: int = Field(default=5, ge=1, description="values above a percentile needed to judge it")
    prediction_max_age_s: float | None = Field(
        default=None, gt=0, description="default: one seasonal period plus one window"
    )
    label_max_age_s: float | None = Field(default=3 * DAY, gt=0, description="None: report without a verdict")
    label_lookback_s: int = Field(
        default=30 * DAY, gt=0, description="label partitions searched, by label time"
    )
    z: float = Field(default=3.0, ge=0, description="sampling allowance, in standard errors")


def period_of(seasonality: str, step: int) -> int:
    """Seconds between comparable windows: a multiple of the window length."""
    if seasonality == "auto":
        seasonality = "day" if step < DAY and DAY % step == 0 else "none"
    if seasonality == "day" and DAY % step == 0:
        return DAY
    if seasonality == "week" and WEEK % step == 0:
        return WEEK
    return step


@dataclass(frozen=True)
class Grid:
    """The run's windows preceded by the lookback, all of one length; run window j is grid index j + lead."""

    start: int
    step: int
    lead: int
    period: int
    history: int
    min_history: int

    @property
    def every(self) -> int:
        return self.period // self.step

    def past(self, g: int, first: int) -> np.ndarray:
        """Grid indices of the comparable earlier windows of g, from the version's first traffic on."""
        idx = g - self.every * np.arange(1, self.history + 1)
        return idx[idx >= first]

    def baseline(self, values: np.ndarray, usable: np.ndarray, first: int) -> np.ndarray:
        """Per window, the median of its comparable earlier values; NaN with fewer than min_history."""
        idx = np.arange(len(values))[:, None] - self.every * np.arange(1, self.history + 1)[None, :]
        safe = np.clip(idx, 0, None)
        past = np.where((idx >= first) & usable[safe], values[safe], np.nan)
        enough = np.isfinite(past).sum(axis=1) >= self.min_history
        out = np.full(len(values), np.nan)
        if enough.any():
            out[enough] = np.nanmedian(past[enough], axis=1)
        return out


@dataclass
class Series:
    """One metric of one version over the grid: values, thresholds, verdicts and per-window details."""

    metric: str
    feature: str
    value: np.ndarray
    threshold: np.ndarray
    alert: np.ndarray
    n: np.ndarray
    details: dict[str, np.ndarray] = field(default_factory=dict)
    common: dict[str, Any] = field(default_factory=dict)

    def at(self, g: int) -> dict[str, Any]:
        return {**self.common, **{k: v[g] for k, v in self.details.items()}}


def _share(counts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.full(len(rows), np.nan)
    np.divide(counts, rows, out=out, where=rows > 0)
    return out


@base.register(OperationsConfig)
class Operations:
    """Throughput, latency percentiles, failure rates, volume and freshness per version and window."""

    def __init__(self, config: OperationsConfig) -> None:
        self.config: DetectorConfig = config
        self.settings = config
        self._id = config.id

    def run(self, ctx: RunContext) -> list[MetricRow]:
        cfg = self.settings
        period = period_of(cfg.seasonality, ctx.step)
        lead = min(cfg.history * (period // ctx.step), ctx.start // ctx.step)
        grid = Grid(ctx.start - lead * ctx.step, ctx.step, lead, period, cfg.history, cfg.min_history)
        if lead:
            ctx.summarizer.summarize(ctx.project, ctx.schema, grid.start, ctx.start, now=ctx.now)
        summaries = ctx.summarizer.read(
            ctx.project, ctx.schema, kind="p", start=grid.start, end=ctx.end, step=ctx.step
        )
        known = [v.version for v in ctx.model.versions]
        versions = [v for v in known if v in summaries] + sorted(v for v in summaries if v not in known)
        newest_open = self._open_hour_newest(ctx)
        rows: list[MetricRow] = []
        for version in versions:
            rows.extend(self._version(ctx, grid, summaries[version], newest_open.get(version, 0)))
        rows.extend(self._label_freshness(ctx))
        return rows

    # -- shared pieces ------------------------------------------------------------------------

    def _row(
        self,
        version: str,
        metric: str,
        bounds: tuple[int, int],
        value: float | None,
        *,
        feature: str = "",
        threshold: float | None = None,
        alert: bool = False,
        n: int = 0,
        details: dict[str, Any] | None = None,
    ) -> MetricRow:
        finite = value is not None and math.isfinite(value)
        limit = float(threshold) if threshold is not None and math.isfinite(threshold) else None
        return MetricRow(
            version=version,
            detector=self.config.kind,
            detector_id=self._id,
            metric=metric,
            feature=feature,
            window_start=bounds[0],
            window_end=bounds[1],
            value=float(value) if finite and value is not None else None,
            threshold=limit,
            alert=bool(alert and finite and limit is not None),
            sample_size=int(n),
            status="ok" if finite else "no_data",
            details=json_safe(details or {}),
        )

    def _open_hour_newest(self, ctx: RunContext) -> dict[str, int]:
        """Newest prediction per version in the hour in progress, which no summary covers yet."""
        hour = int(ctx.now) // BUCKET_SECONDS * BUCKET_SECONDS
        if not ctx.start <= hour < ctx.end:
            return {}
        table = ctx.events.names(ctx.project, ctx.schema.name)(Kind.PREDICTIONS)
        got = ctx.events.engine.query_columns(
            f"SELECT version, toUInt32(max(ts)) AS t FROM {table} WHERE ts >= toDateTime(%(lo)s, 'UTC') "
            "AND ts <= toDateTime(%(now)s, 'UTC') GROUP BY version",
            {"lo": hour, "now": int(ctx.now)},
        )
        return {str(v): int(t) for v, t in zip(got["version"], got["t"], strict=True)}

    # -- per version --------------------------------------------------------------------------

    def _version(self, ctx: RunContext, grid: Grid, s: Summary, newest_open: int) -> list[MetricRow]:
        traffic = np.flatnonzero(s.rows > 0)
        if not len(traffic):
            return []
        first = int(traffic[0])
        version = s.version
        series = self._failures(s, grid, first) + self._latencies(s, grid, first)
        hour = int(ctx.now) // BUCKET_SECONDS * BUCKET_SECONDS
        newest = np.maximum.accumulate(s.last_ts.astype(np.int64))
        max_age = self.settings.prediction_max_age_s or float(grid.period + grid.step)
        out: list[MetricRow] = []
        for j in range(s.windows - grid.lead):
            g = j + grid.lead
            lo, hi = ctx.window_bounds(j)
            if lo >= ctx.now:
                break
            if g < first:
                continue  # the version had not served yet
            bounds = (lo, hi)
            n = int(s.rows[g])
            covered = min(hi, hour) - lo  # summaries hold closed hours only
            out.append(self._volume(version, bounds, s.rows, grid.past(g, first), g, covered < hi - lo))
            out.append(
                self._row(
                    version,
                    "throughput",
                    bounds,
                    n / covered if covered > 0 else None,
                    n=n,
                    details={"rows": n, "seconds": max(covered, 0)},
                )
            )
            for x in series:
                out.append(
                    self._row(
                        version,
                        x.metric,
                        bounds,
                        float(x.value[g]),
                        feature=x.feature,
                        threshold=float(x.threshold[g]),
                        alert=bool(x.alert[g]),
                        n=int(x.n[g]),
                        details=x.at(g),
                    )
                )
            moment = min(hi, int(ctx.now))
            latest = int(newest[g])
            if lo <= hour < hi and newest_open:
                latest = max(latest, newest_open)
            age = float(max(moment - latest, 0)) if latest else None
            out.append(
                self._row(
                    version,
                    "freshness",
                    bounds,
                    age,
                    feature="predictions",
                    threshold=max_age,
                    alert=age is not None and age > max_age,
                    n=n,
                    details={"newest": latest or None, "at": moment},
                )
            )
        return out

    def _volume(
        self,
        version: str,
        bounds: tuple[int, int],
        counts: np.ndarray,
        past: np.ndarray,
        g: int,
        partial: bool,
    ) -> MetricRow:
        """Rows against the median of comparable earlier windows; a silent window where rows were due is the finding."""
        cfg = self.settings
        value = float(counts[g])
        history = counts[past].astype(np.float64)
        details: dict[str, Any] = {"history": history.tolist(), "partial": partial}
        if partial or len(history) < cfg.min_history:
            details["reason"] = "window in progress" if partial else "too little history"
            return self._row(version, "volume", bounds, value, n=int(value), details=details)
        expected = float(np.median(history))
        noise = cfg.z * math.sqrt(max(expected, 1.0))
        low = max(expected * (1.0 - cfg.volume_drop) - noise, 0.0)
        high = expected * cfg.volume_spike + noise
        direction = (
            "silent" if value == 0 and low > 0 else "drop" if value < low else "spike" if value > high else ""
        )
        details.update({"expected": expected, "low": low, "high": high, "direction": direction or None})
        details["ratio"] = value / expected if expected else None
        return self._row(
            version,
            "volume",
            bounds,
            value,
            threshold=low if value < expected else high,
            alert=bool(direction),
            n=int(value),
            details=details,
        )

    def _failures(self, s: Summary, grid: Grid, first: int) -> list[Series]:
        """Error and timeout shares, and the share failing at each stage or dependency.

        Each is set against its median over comparable windows (zero without history) plus a
        margin, widened by the binomial noise of the window's row count.
        """
        cfg = self.settings
        rows = s.rows.astype(np.float64)
        status = s.categorical.get(STATUS)
        counted: list[tuple[str, str, np.ndarray, float]] = []
        for metric, value, margin in (
            ("error_rate", "error", cfg.error_margin),
            ("timeout_rate", "timeout", cfg.timeout_margin),
        ):
            counts = (
                np.zeros(s.windows)
                if status is None
                else status.counts[:, status.values == value].sum(axis=1)
            )
            counted.append((metric, "", counts.astype(np.float64), margin))
        causes = s.categorical.get(ERROR)
        if causes is not None:
            totals = causes.counts.sum(axis=0)
            for k in np.argsort(-totals, kind="stable")[: cfg.max_causes]:
                if totals[k] > 0:
                    counted.append(
                        (
                            "error_rate_by_cause",
                            str(causes.values[k]),
                            causes.counts[:, k].astype(np.float64),
                            cfg.cause_margin,
                        )
                    )
        out: list[Series] = []
        for metric, feature, counts, margin in counted:
            rate = _share(counts, rows)
            base = grid.baseline(rate, rows > 0, first)
            base = np.where(np.isfinite(base), base, 0.0)
            threshold = rate_threshold(base, margin, rows, cfg.z)
            out.append(
                Series(
                    metric=metric,
                    feature=feature,
                    value=rate,
                    threshold=threshold,
                    alert=np.nan_to_num(rate) > threshold,
                    n=rows,
                    details={"count": counts.astype(np.int64), "baseline": base},
                    common={"margin": margin},
                )
            )
        return out

    def _latencies(self, s: Summary, grid: Grid, first: int) -> list[Series]:
        """p50/p95/p99 overall and per stage, against ratio x their median over comparable windows or a ceiling.

        A percentile is judged only where enough values lie above it (`min_tail_count`): the
        p99 of fifty requests is their maximum, not a percentile.
        """
        cfg = self.settings
        out: list[Series] = []
        for name, block in sorted(s.numeric.items()):
            if name == LATENCY:
                stage = ""
            elif name.startswith(TIMING):
                stage = name[len(TIMING) :]
            else:
                continue
            if not block.n[first:].any():
                continue
            for metric, p in PERCENTILES.items():
                values = block.q[:, LEVEL_INDEX[p]]
                judged = block.n * (1.0 - p) >= cfg.min_tail_count
                baseline = grid.baseline(values, judged, first)
                slo = cfg.latency_slo_ms.get(f"{metric}:{stage}" if stage else metric)
                if slo is not None:
                    threshold = np.full(s.windows, float(slo))
                else:
                    threshold = np.maximum(baseline * cfg.latency_ratio, baseline + cfg.latency_min_delta_ms)
                alert = judged & (np.nan_to_num(values, nan=-np.inf) > np.nan_to_num(threshold, nan=np.inf))
                out.append(
                    Series(
                        metric=metric,
                        feature=stage,
                        value=np.where(block.n > 0, values, np.nan),
                        threshold=threshold,
                        alert=alert,
                        n=block.n,
                        details={"baseline_ms": baseline, "judged": judged},
                        common={"slo_ms": slo},
                    )
                )
        return out

    # -- labels (model-wide) ------------------------------------------------------------------

    def _label_freshness(self, ctx: RunContext) -> list[MetricRow]:
        """Age of the newest label received at each window's end (labels carry no version)."""
        cfg = self.settings
        table = ctx.events.names(ctx.project, ctx.schema.name)(Kind.LABELS)
        stop = min(ctx.end, int(ctx.now))
        got = ctx.events.engine.query_columns(
            "SELECT toInt64(if(received < toDateTime(%(lo)s, 'UTC'), -1, "
            "intDiv(toUInt32(received) - %(lo)s, %(step)s))) AS w, toUInt32(max(received)) AS t, count() AS n "
            f"FROM {table} WHERE ts >= toDateTime(%(since)s, 'UTC') AND received <= toDateTime(%(stop)s, 'UTC') "
            "GROUP BY w",
            {
                "lo": ctx.start,
                "step": ctx.step,
                "since": max(ctx.start - cfg.label_lookback_s, 0),
                "stop": stop,
            },
        )
        if not len(got["w"]):
            return []
        windows = (ctx.end - ctx.start) // ctx.step
        latest = np.zeros(windows + 1, dtype=np.int64)  # slot 0: before the run
        received = np.zeros(windows + 1, dtype=np.int64)
        slots = got["w"].astype(np.int64) + 1
        np.maximum.at(latest, slots, got["t"].astype(np.int64))
        np.add.at(received, slots, got["n"].astype(np.int64))
        newest = np.maximum.accumulate(latest)
        out: list[MetricRow] = []
        for j in range(windows):
            lo, hi = ctx.window_bounds(j)
            if lo >= ctx.now:
                break
            t = int(newest[j + 1])
            if not t:
                continue
            moment = min(hi, int(ctx.now))
            age = float(max(moment - t, 0))
            out.append(
                self._row(
                    MODEL_WIDE,
                    "freshness",
                    (lo, hi),
                    age,
                    feature="labels",
                    threshold=cfg.label_max_age_s,
                    alert=cfg.label_max_age_s is not None and age > cfg.label_max_age_s,
                    n=int(received[j + 1]),
                    details={"newest": t, "at": moment, "lookback_s": cfg.label_lookback_s},
                )
            )
        return out
