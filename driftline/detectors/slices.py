"""Performance per slice: where the model fails, not only how much on average.

A slice is a value of one categorical metadata field or categorical feature
(`field=value`); slice discovery also searches pairs of fields (`a=x&b=y`). Everything
comes from the label-joined summaries (`perf_summaries`): confusion counts per slice and
window for classifiers, error moments per single slice for regressors.

Per window and version, each slice with enough labelled rows gets its metric, sample size
and interval (Wilson for proportions, normal otherwise) and two one-sided tests: worse than
the rest of the window (the slice against its complement, so the two samples are
independent) and worse than the same slice in the labelled reference. Proportions use
Fisher's exact test, which keeps its level on the small slices that z-tests over-flag;
other metrics a z-test on their standard errors. The p-values of a window form one family,
corrected by Benjamini-Hochberg, so that many slices do not mean many false alerts.

Discovery tests every single and pair slice of a window against its complement, corrects
the family the same way and reports the worst significant ones (metric `discovered`).
Important slices carry their own thresholds and are reported whatever their support.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.stats
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from driftline.detectors import base
from driftline.detectors.base import DetectorConfig, MetricRow, RunContext
from driftline.detectors.data_quality import json_safe
from driftline.detectors.perf_summaries import PerfSummary, perf_slice_fields
from driftline.detectors.stats import bh_adjust
from driftline.detectors.summaries import REFERENCE_CHUNKS
from driftline.schema import ModelSchema, Task

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

CLASSIFICATION = ("accuracy", "precision", "recall", "f1")
REGRESSION = ("mae", "rmse")
PROPORTIONS = frozenset({"accuracy", "precision", "recall"})
HIGHER_IS_BETTER = frozenset({"accuracy", "precision", "recall", "f1"})
DISCOVERED = "discovered"
DISCOVERED_COUNT = "discovered_count"
PAIR = "&"

MetricName = Literal["auto", "accuracy", "precision", "recall", "f1", "mae", "rmse"]


class ImportantSlice(BaseModel):
    """A slice someone cares about: its own floor, ceiling or allowed drop from the reference."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slice: str = Field(pattern=r"^[^=&]+=[^&]*(&[^=&]+=[^&]*)?$", description="field=value or a=x&b=y")
    min: float | None = Field(default=None, description="alert below this value")
    max: float | None = Field(default=None, description="alert above this value (error metrics)")
    max_drop: float | None = Field(
        default=None, ge=0, description="alert when worse than the same slice in the reference by more"
    )

    @model_validator(mode="after")
    def _some_threshold(self) -> ImportantSlice:
        if self.min is None and self.max is None and self.max_drop is None:
            raise ValueError(f"important slice {self.slice!r} needs min, max or max_drop")
        return self


class SlicePerformanceConfig(DetectorConfig):
    """Which metric, how much support a slice needs, and how strict the correction is.

    `alpha` is the false discovery rate of each window's family of tests. Windows are many,
    so the default is 0.01: at 0.05 unchanged traffic would still raise a slice alert in
    about one window in twenty.
    """

    kind: ClassVar[str] = "slice_performance"

    metric: MetricName = Field(
        default="auto", description="auto: accuracy for classifiers, mae for regressors"
    )
    min_support: int = Field(default=50, ge=1, description="rows behind a slice's metric needed to test it")
    alpha: float = Field(default=0.01, gt=0, lt=1, description="Benjamini-Hochberg FDR per window")
    min_effect: float = Field(
        default=0.0, ge=0, description="and worse by at least this much, in the metric's units"
    )
    confidence: float = Field(default=0.95, gt=0, lt=1, description="level of the reported intervals")
    compare_reference: bool = Field(default=True, description="also test against the slice in the reference")
    important: list[ImportantSlice] = Field(default_factory=list)
    important_min_support: int = Field(
        default=30, ge=1, description="rows an important slice needs before its thresholds alert"
    )
    discovery: bool = Field(default=True, description="search single and pair slices for the worst ones")
    discovery_min_support: int = Field(default=50, ge=1)
    top_k: int = Field(default=5, ge=1, le=100, description="discovered slices reported per window")


# -- metrics from sufficient statistics ---------------------------------------------------------
#
# Classification statistics are confusion counts (..., K predicted, K label); regression
# statistics are the labelled rows' moments (..., 4): n, Σe, Σe², Σ|e|. Both subtract, so
# the rest of a window is the window minus the slice.


@dataclass(frozen=True)
class Estimate:
    """A metric over any leading shape: value (NaN where undefined), standard error, its rows.

    `n` is what the value is a share of (labelled rows; predicted positives for precision;
    positive labels for recall) and `k` the successes, for proportions only.
    """

    metric: str
    value: FloatArray
    se: FloatArray
    n: FloatArray
    labelled: FloatArray
    k: FloatArray | None = None

    def take(self, index: Any) -> Estimate:
        """The same metric over a subset of the leading axes."""
        return Estimate(
            self.metric,
            self.value[index],
            self.se[index],
            self.n[index],
            self.labelled[index],
            None if self.k is None else self.k[index],
        )

    def interval(self, z: float) -> tuple[FloatArray, FloatArray]:
        """Wilson for proportions, value ± z·se otherwise; NaN where undefined."""
        if self.k is not None:
            return wilson(self.k, self.n, z)
        lo, hi = self.value - z * self.se, self.value + z * self.se
        if self.metric in HIGHER_IS_BETTER:
            return np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
        return np.clip(lo, 0.0, None), hi


def _div(a: FloatArray, b: FloatArray) -> FloatArray:
    out = np.full(np.broadcast(a, b).shape, np.nan)
    np.divide(a, b, out=out, where=b > 0)
    return out


def wilson(k: FloatArray, n: FloatArray, z: float) -> tuple[FloatArray, FloatArray]:
    """Wilson score interval of k successes in n trials (NaN where n = 0)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    p = _div(k, n)
    safe = np.where(n > 0, n, 1.0)
    denom = 1.0 + z * z / safe
    centre = (p + z * z / (2 * safe)) / denom
    half = z * np.sqrt(np.clip(p * (1 - p), 0.0, None) / safe + z * z / (4 * safe * safe)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def estimate(metric: str, stats: FloatArray, positive: int = -1) -> Estimate:
    """The metric, its standard error and sample from confusion counts or error moments."""
    if metric in REGRESSION:
        n, s, s2, sa = (stats[..., i] for i in range(4))
        mean_sq = _div(s2, n)
        if metric == "mae":
            value = _div(sa, n)
            sd = np.sqrt(np.clip(mean_sq - value**2, 0.0, None))
            return Estimate(metric, value, _div(sd, np.sqrt(n)), n, n)
        # RMSE: the variance of e² needs a fourth moment the summaries do not keep, so it is
        # taken as for normal errors, 2σ⁴ + 4μ²σ², and carried to the root by the delta method
        mu = _div(s, n)
        var = np.clip(mean_sq - mu**2, 0.0, None)
        se_mse = np.sqrt(_div(2 * var**2 + 4 * mu**2 * var, n))
        value = np.sqrt(mean_sq)
        return Estimate(metric, value, _div(se_mse, 2 * value), n, n)
    labelled = stats.sum(axis=(-2, -1))
    tp_all = np.diagonal(stats, axis1=-2, axis2=-1)
    if metric == "accuracy":
        k, n = tp_all.sum(axis=-1), labelled
    else:
        if positive < 0:
            raise ValueError(f"{metric} needs a binary model with its positive class among the classes")
        tp = tp_all[..., positive]
        predicted = stats[..., positive, :].sum(axis=-1)
        actual = stats[..., :, positive].sum(axis=-1)
        if metric == "precision":
            k, n = tp, predicted
        elif metric == "recall":
            k, n = tp, actual
        else:
            # F1 = 2a / (2a + m) in shares of the N labelled rows (a true positives, m false
            # positives and negatives); the delta method on the multinomial gives
            # Var = 4·a·m·(a + m) / ((2a + m)⁴·N)
            misses = predicted + actual - 2 * tp
            pa, pm = _div(tp, labelled), _div(misses, labelled)
            d = 2 * pa + pm
            var = _div(4 * pa * pm * (pa + pm), d**4 * labelled)
            value = _div(2 * tp, 2 * tp + misses)
            return Estimate(metric, value, np.sqrt(var), labelled, labelled)
    value = _div(k, n)
    se = np.sqrt(_div(np.clip(value * (1 - value), 0.0, None), n))
    return Estimate(metric, value, se, n, labelled, k)


def worse_p(a: Estimate, b: Estimate) -> FloatArray:
    """One-sided p-value that `a` is worse than `b` (independent samples); NaN where untestable.

    Proportions: Fisher's exact test on the 2x2 table (successes and failures of each),
    i.e. the hypergeometric lower tail of a's successes. Otherwise a z-test on the difference.
    """
    shape = np.broadcast(a.value, b.value).shape
    out = np.full(shape, np.nan)
    if a.k is not None and b.k is not None:
        ka, na = (np.broadcast_to(np.rint(x), shape) for x in (a.k, a.n))
        kb, nb = (np.broadcast_to(np.rint(x), shape) for x in (b.k, b.n))
        ok = (na > 0) & (nb > 0)
        out[ok] = scipy.stats.hypergeom.cdf(ka[ok], na[ok] + nb[ok], ka[ok] + kb[ok], na[ok])
        return np.asarray(np.clip(out, 0.0, 1.0), dtype=np.float64)
    gap = worse_by(a, b)
    total = np.sqrt(a.se**2 + b.se**2)
    ok = np.isfinite(gap) & np.isfinite(total)
    positive_se = ok & (total > 0)
    out[positive_se] = scipy.stats.norm.sf(np.broadcast_to(gap, shape)[positive_se] / total[positive_se])
    flat = ok & (total == 0)
    out[flat] = np.where(np.broadcast_to(gap, shape)[flat] > 0, 0.0, 1.0)
    return out


def worse_by(a: Estimate, b: Estimate) -> FloatArray:
    """How much worse a is than b, in the metric's units (negative: better)."""
    gap = b.value - a.value if a.metric in HIGHER_IS_BETTER else a.value - b.value
    return np.asarray(gap, dtype=np.float64)


def bh_by_window(p_values: list[FloatArray]) -> list[FloatArray]:
    """Benjamini-Hochberg q-values, one family per window (last axis) across every array given.

    Each array is (S, W) with NaN where nothing was tested; the q-values keep that shape.
    """
    out = [np.full(p.shape, np.nan) for p in p_values]
    if not p_values:
        return out
    for w in range(p_values[0].shape[-1]):
        column = [p[:, w] for p in p_values]
        tested = [np.isfinite(c) for c in column]
        pooled = np.concatenate([c[t] for c, t in zip(column, tested, strict=True)])
        if not len(pooled):
            continue
        adjusted = bh_adjust(pooled)
        at = 0
        for q, t in zip(out, tested, strict=True):
            m = int(t.sum())
            q[t, w] = adjusted[at : at + m]
            at += m
    return out


# -- reading the summaries ----------------------------------------------------------------------


def labelled_reference(ctx: RunContext, version: str) -> str | None:
    """The version's own labelled reference, else the champion's, else the newest labelled one."""
    labelled = ctx.labelled_references
    if version in labelled:
        return version
    known = [v.version for v in ctx.model.versions]
    champions = [v.version for v in ctx.model.versions if v.role.value == "champion"]
    for v in [*reversed(champions), *reversed(known)]:
        if v in labelled:
            return v
    return None


def class_list(schema: ModelSchema, summaries: Iterable[PerfSummary]) -> list[str]:
    """The declared classes, then any other class seen in predictions or labels, sorted."""
    declared = list(schema.classes)
    seen = {c for s in summaries for c in s.classes} - set(declared)
    return declared + sorted(seen)


def stack(summaries: list[PerfSummary | None], windows: int, task: Task, classes: list[str]) -> FloatArray:
    """Sufficient statistics of several summaries on one grid: (S, W, K, K) or (S, W, 4)."""
    if task is Task.REGRESSION:
        out = np.zeros((len(summaries), windows, 4))
        for i, s in enumerate(summaries):
            r = s.regression if s is not None else None
            if r is not None:
                out[i] = np.stack([r.n[:, 1], r.se[:, 1], r.se2[:, 1], r.sae[:, 1]], axis=-1)
        return out
    k = len(classes)
    cm = np.zeros((len(summaries), windows, k, k))
    pos = {c: i for i, c in enumerate(classes)}
    for i, s in enumerate(summaries):
        if s is None or s.confusion is None:
            continue
        ix = np.array([pos[c] for c in s.classes], dtype=np.int64)
        cm[i][:, ix[:, None], ix[None, :]] = s.confusion
    return cm


def resolve_metric(metric: str, schema: ModelSchema) -> str:
    if metric == "auto":
        return "mae" if schema.task is Task.REGRESSION else "accuracy"
    allowed = {
        Task.REGRESSION: REGRESSION,
        Task.BINARY: CLASSIFICATION,
        Task.MULTICLASS: ("accuracy",),
    }[schema.task]
    if metric not in allowed:
        raise ValueError(
            f"metric {metric!r} does not apply to a {schema.task.value} model; use one of {allowed}"
        )
    return metric


def positive_index(schema: ModelSchema, classes: list[str]) -> int:
    if schema.task is Task.BINARY and schema.positive_class in classes:
        return classes.index(schema.positive_class)
    return -1


def _num(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


# -- the detector -------------------------------------------------------------------------------


@dataclass
class _Family:
    """Slices of one version tested together: names, estimates, p- and q-values (S, W)."""

    names: list[str]
    stats: FloatArray
    est: Estimate
    rest: Estimate
    p_rest: FloatArray
    q_rest: FloatArray
    ref: Estimate | None = None
    p_ref: FloatArray | None = None
    q_ref: FloatArray | None = None
    p_parent: FloatArray | None = None  # (S, W, 2): a pair worse than the rest of each of its fields' slices

    def row(self, name: str) -> int:
        return self.names.index(name)


@base.register(SlicePerformanceConfig)
class SlicePerformance:
    """Per slice: the metric with its interval, flags against the rest and the reference, discovery."""

    def __init__(self, config: SlicePerformanceConfig) -> None:
        self.config: DetectorConfig = config
        self.settings = config
        self._id = config.id

    def run(self, ctx: RunContext) -> list[MetricRow]:
        cfg = self.settings
        if ctx.perf is None:
            raise RuntimeError("slice_performance needs the label-joined summaries (RunContext.perf)")
        schema = ctx.schema
        metric = resolve_metric(cfg.metric, schema)
        if not perf_slice_fields(schema) and not cfg.important:
            return []  # nothing to slice by
        pairs = (
            cfg.discovery or any(PAIR in s.slice for s in cfg.important)
        ) and schema.task is not Task.REGRESSION
        scope = "all" if pairs else "single"
        versions = ctx.versions
        live = ctx.perf.read(
            ctx.project,
            schema,
            kind="l",
            start=ctx.start,
            end=ctx.end,
            step=ctx.step,
            versions=versions,
            slices=scope,
        )
        if scope == "single":
            live.update(
                ctx.perf.read(
                    ctx.project,
                    schema,
                    kind="l",
                    start=ctx.start,
                    end=ctx.end,
                    step=ctx.step,
                    versions=versions,
                )
            )
        references: dict[str, dict[tuple[str, str], PerfSummary]] = {}
        rows: list[MetricRow] = []
        for version in versions:
            rv = labelled_reference(ctx, version) if cfg.compare_reference or cfg.important else None
            if rv is not None and rv not in references:
                references[rv] = ctx.perf.read(
                    ctx.project,
                    schema,
                    kind="q",
                    start=0,
                    end=REFERENCE_CHUNKS,
                    step=REFERENCE_CHUNKS,
                    versions=[rv],
                    slices="all",
                )
            ref = {sl: s for (v, sl), s in references.get(rv or "", {}).items() if v == rv}
            mine = {sl: s for (v, sl), s in live.items() if v == version}
            rows.extend(self._version(ctx, version, metric, mine, ref, rv))
        return rows

    # -- one version --------------------------------------------------------------------------

    def _version(
        self,
        ctx: RunContext,
        version: str,
        metric: str,
        live: dict[str, PerfSummary],
        ref: dict[str, PerfSummary],
        ref_version: str | None,
    ) -> list[MetricRow]:
        cfg = self.settings
        schema = ctx.schema
        windows = max(-(-(ctx.end - ctx.start) // ctx.step), 0)
        classes = class_list(schema, [*live.values(), *ref.values()])
        pos = positive_index(schema, classes)
        singles = sorted(s for s in live if s and PAIR not in s)
        pairs = sorted(s for s in live if PAIR in s)
        task = schema.task
        overall_stats = stack([live.get("")], windows, task, classes)[0]
        overall = estimate(metric, overall_stats, pos)
        ref_overall = estimate(metric, stack([ref.get("")], 1, task, classes)[0], pos) if ref else None

        def family(names: list[str], minimum: int, with_reference: bool) -> _Family:
            st = stack([live[n] for n in names], windows, task, classes)
            est = estimate(metric, st, pos)
            rest = estimate(metric, np.clip(overall_stats[None] - st, 0.0, None), pos)
            enough = est.n >= minimum
            p_rest = np.where(enough, worse_p(est, rest), np.nan)
            fam = _Family(names, st, est, rest, p_rest, np.full(p_rest.shape, np.nan))
            if with_reference and ref:
                rs = estimate(metric, stack([ref.get(n) for n in names], 1, task, classes), pos)
                fam.ref = rs
                fam.p_ref = np.where(enough & (rs.n >= minimum), worse_p(est, rs), np.nan)
            return fam

        single = family(singles, cfg.min_support, cfg.compare_reference)
        tests = [single.p_rest] + ([single.p_ref] if single.p_ref is not None else [])
        qs = bh_by_window(tests)
        single.q_rest = qs[0]
        if single.p_ref is not None:
            single.q_ref = qs[1]
        found: _Family | None = None
        if cfg.discovery:
            found = family(singles + pairs, cfg.discovery_min_support, False)
            found.q_rest = bh_by_window([found.p_rest])[0]
            found.p_parent = self._within_parents(found, metric, pos)
        important = {s.slice: s for s in cfg.important}
        pair_est = {
            name: found.est.take(found.row(name))
            if found is not None and name in found.names
            else estimate(metric, stack([live[name]], windows, task, classes)[0], pos)
            for name in important
            if PAIR in name and name in live
        }

        ref_values = {
            name: _num(estimate(metric, stack([ref[name]], 1, task, classes)[0], pos).value[0])
            if name in ref
            else None
            for name in important
        }

        traffic = ctx.live[version].rows if version in ctx.live else np.zeros(windows)
        z = float(scipy.stats.norm.ppf(0.5 + cfg.confidence / 2))
        rows: list[MetricRow] = []
        for w in range(windows):
            bounds = ctx.window_bounds(w)
            if overall.labelled[w] <= 0:
                # no labels yet: only the slices someone asked for are reported, as such
                if traffic[w] > 0:
                    rows.extend(
                        self._important_only(
                            version, metric, bounds, name, spec, None, w, z, ref_values[name]
                        )
                        for name, spec in important.items()
                    )
                continue
            rows.append(self._overall(version, metric, bounds, overall, w, z, ref_overall, ref_version))
            reported: set[str] = set()
            for i, name in enumerate(singles):
                spec = important.get(name)
                if single.est.n[i, w] < cfg.min_support and spec is None:
                    continue
                rows.append(
                    self._slice(
                        version,
                        metric,
                        bounds,
                        single,
                        i,
                        w,
                        overall,
                        z,
                        spec,
                        ref_values.get(name),
                        ref_version,
                    )
                )
                reported.add(name)
            for name, spec in important.items():
                if name in reported:
                    continue
                rows.append(
                    self._important_only(
                        version, metric, bounds, name, spec, pair_est.get(name), w, z, ref_values[name]
                    )
                )
            if found is not None:
                rows.extend(self._discovered(version, metric, bounds, found, w, overall, z))
        return rows

    @staticmethod
    def _within_parents(fam: _Family, metric: str, positive: int) -> FloatArray:
        """For each pair, the p-value that it is worse than the rest of each parent single slice.

        A pair inside a degraded single slice is worse than the window only because its parent
        is: when the parent is itself discovered and the pair is no worse than its siblings,
        the pair adds nothing and discovery leaves it out.
        """
        where = {name: i for i, name in enumerate(fam.names)}
        out = np.full((*fam.p_rest.shape, 2), np.nan)
        parents = np.full((len(fam.names), 2), -1, dtype=np.int64)
        for i, name in enumerate(fam.names):
            if PAIR in name:
                a, _, b = name.partition(PAIR)
                parents[i] = [where.get(a, -1), where.get(b, -1)]
        for side in (0, 1):
            child = np.flatnonzero(parents[:, side] >= 0)
            if not len(child):
                continue
            parent = parents[child, side]
            siblings = estimate(metric, np.clip(fam.stats[parent] - fam.stats[child], 0.0, None), positive)
            out[child, :, side] = worse_p(fam.est.take(child), siblings)
        return out

    # -- rows ---------------------------------------------------------------------------------

    def _row(
        self,
        version: str,
        metric: str,
        bounds: tuple[int, int],
        value: float | None,
        *,
        feature: str = "",
        slice_: str = "",
        threshold: float | None = None,
        alert: bool = False,
        n: float = 0,
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
            slice=slice_,
            window_start=bounds[0],
            window_end=bounds[1],
            value=float(value) if finite and value is not None else None,
            threshold=limit,
            alert=bool(alert and finite),
            sample_size=int(n) if math.isfinite(n) else 0,
            status="ok" if finite else "no_data",
            details=json_safe(details or {}),
        )

    @staticmethod
    def _at(e: Estimate, idx: tuple[int, ...], z: float) -> dict[str, Any]:
        lo, hi = e.interval(z)
        return {
            "value": _num(e.value[idx]),
            "n": int(e.n[idx]),
            "labelled": int(e.labelled[idx]),
            "interval": [_num(lo[idx]), _num(hi[idx])],
            "interval_method": "wilson" if e.k is not None else "normal",
        }

    def _overall(
        self,
        version: str,
        metric: str,
        bounds: tuple[int, int],
        overall: Estimate,
        w: int,
        z: float,
        ref: Estimate | None,
        ref_version: str | None,
    ) -> MetricRow:
        """The whole window, the line every slice is read against; not judged here (see `performance`)."""
        at = self._at(overall, (w,), z)
        details: dict[str, Any] = {
            "interval": at["interval"],
            "interval_method": at["interval_method"],
            "labelled": at["labelled"],
            "reference": None if ref is None else _num(ref.value[0]),
            "reference_version": ref_version,
        }
        return self._row(version, metric, bounds, at["value"], n=overall.n[w], details=details)

    def _thresholds(
        self, metric: str, spec: ImportantSlice, reference: float | None
    ) -> tuple[float | None, float | None]:
        """(floor, ceiling) of an important slice: its own bounds and the allowed drop from the reference."""
        floor, ceiling = spec.min, spec.max
        if spec.max_drop is not None and reference is not None and math.isfinite(reference):
            if metric in HIGHER_IS_BETTER:
                floor = reference - spec.max_drop if floor is None else max(floor, reference - spec.max_drop)
            else:
                ceiling = (
                    reference + spec.max_drop if ceiling is None else min(ceiling, reference + spec.max_drop)
                )
        return floor, ceiling

    def _judge_important(
        self, metric: str, spec: ImportantSlice, value: float | None, n: float, reference: float | None
    ) -> tuple[float | None, bool, dict[str, Any]]:
        floor, ceiling = self._thresholds(metric, spec, reference)
        threshold = floor if metric in HIGHER_IS_BETTER and floor is not None else ceiling
        if threshold is None:
            threshold = floor
        details: dict[str, Any] = {
            "min": spec.min,
            "max": spec.max,
            "max_drop": spec.max_drop,
            "floor": floor,
            "ceiling": ceiling,
            "reference": reference,
        }
        if spec.max_drop is not None and reference is None:
            details["reason"] = "max_drop needs this slice in a labelled reference"
        if value is None or not math.isfinite(value):
            return threshold, False, details
        if n < self.settings.important_min_support:
            details["reason"] = (
                f"{int(n)} rows, fewer than important_min_support={self.settings.important_min_support}"
            )
            return threshold, False, details
        breached = (floor is not None and value < floor) or (ceiling is not None and value > ceiling)
        details["breached"] = bool(breached)
        return threshold, bool(breached), details

    def _slice(
        self,
        version: str,
        metric: str,
        bounds: tuple[int, int],
        fam: _Family,
        i: int,
        w: int,
        overall: Estimate,
        z: float,
        spec: ImportantSlice | None,
        spec_reference: float | None,
        ref_version: str | None,
    ) -> MetricRow:
        cfg = self.settings
        name = fam.names[i]
        field, _, value_name = name.partition("=")
        at = self._at(fam.est, (i, w), z)
        gap_rest = float(worse_by(fam.est, fam.rest)[i, w])
        reasons: list[str] = []
        q_rest = float(fam.q_rest[i, w])
        if q_rest <= cfg.alpha and gap_rest >= cfg.min_effect:
            reasons.append("overall")
        details: dict[str, Any] = {
            "field": field,
            "field_value": value_name,
            "labelled": at["labelled"],
            "interval": at["interval"],
            "interval_method": at["interval_method"],
            "overall": _num(overall.value[w]),
            "rest": _num(fam.rest.value[i, w]),
            "rest_n": int(fam.rest.n[i, w]),
            "p_overall": _num(fam.p_rest[i, w]),
            "q_overall": _num(q_rest),
            "alpha": cfg.alpha,
            "test": "fisher_exact" if fam.est.k is not None else "z",
        }
        if fam.ref is not None and fam.p_ref is not None and fam.q_ref is not None:
            q_ref = float(fam.q_ref[i, w])
            gap_ref = float(worse_by(fam.est, fam.ref)[i, w])
            if q_ref <= cfg.alpha and gap_ref >= cfg.min_effect:
                reasons.append("reference")
            details.update(
                {
                    "reference": _num(fam.ref.value[i, 0]),
                    "reference_n": int(fam.ref.n[i, 0]),
                    "reference_version": ref_version,
                    "p_reference": _num(fam.p_ref[i, w]),
                    "q_reference": _num(q_ref),
                }
            )
        n = float(fam.est.n[i, w])
        if n < cfg.min_support:
            details["reason"] = f"{int(n)} rows, fewer than min_support={cfg.min_support}: not tested"
        details["worse_than"] = reasons
        threshold = _num(overall.value[w])
        alert = bool(reasons)
        if spec is not None:
            threshold, breached, extra = self._judge_important(metric, spec, at["value"], n, spec_reference)
            details["important"] = extra
            alert = alert or breached
        return self._row(
            version,
            metric,
            bounds,
            at["value"],
            feature=field,
            slice_=name,
            threshold=threshold,
            alert=alert,
            n=n,
            details=details,
        )

    def _important_only(
        self,
        version: str,
        metric: str,
        bounds: tuple[int, int],
        name: str,
        spec: ImportantSlice,
        est: Estimate | None,
        w: int,
        z: float,
        reference: float | None,
    ) -> MetricRow:
        """An important slice that is not among the window's single slices: a pair, or one with no rows."""
        fields = "&".join(part.partition("=")[0] for part in name.split(PAIR))
        details: dict[str, Any] = {}
        value: float | None = None
        n = 0.0
        if est is not None:
            at = self._at(est, (w,), z)
            value, n = at["value"], float(est.n[w])
            details.update({k: at[k] for k in ("labelled", "interval", "interval_method")})
        else:
            details["reason"] = "no labelled rows"
        threshold, alert, extra = self._judge_important(metric, spec, value, n, reference)
        details["important"] = extra
        return self._row(
            version,
            metric,
            bounds,
            value,
            feature=fields,
            slice_=name,
            threshold=threshold,
            alert=alert,
            n=n,
            details=details,
        )

    def _discovered(
        self,
        version: str,
        metric: str,
        bounds: tuple[int, int],
        fam: _Family,
        w: int,
        overall: Estimate,
        z: float,
    ) -> list[MetricRow]:
        """The worst slices whose gap to the rest of the window survives the correction, worst first."""
        cfg = self.settings
        q = fam.q_rest[:, w]
        gap = worse_by(fam.est, fam.rest)[:, w]
        tested = np.isfinite(q)
        hit = tested & (q <= cfg.alpha) & (gap >= cfg.min_effect)
        redundant = np.zeros(len(hit), dtype=bool)
        if fam.p_parent is not None:
            where = {name: i for i, name in enumerate(fam.names)}
            for i in np.flatnonzero(hit):
                if PAIR not in fam.names[i]:
                    continue
                for side, parent in enumerate(fam.names[i].split(PAIR, 1)):
                    j = where.get(parent)
                    p = fam.p_parent[i, w, side]
                    if j is not None and hit[j] and not p <= cfg.alpha:
                        redundant[i] = True
        hits = np.flatnonzero(hit & ~redundant)
        values = fam.est.value[hits, w]
        ranked = hits[np.lexsort((q[hits], values if metric in HIGHER_IS_BETTER else -values))]
        rows = [
            self._row(
                version,
                DISCOVERED_COUNT,
                bounds,
                float(len(hits)) if tested.any() else None,
                threshold=0.0,
                alert=len(hits) > 0,
                n=float(tested.sum()),
                details={
                    "metric": metric,
                    "tested": int(tested.sum()),
                    "significant": int(hit.sum()),
                    "redundant": int(redundant.sum()),
                    "alpha": cfg.alpha,
                    "min_support": cfg.discovery_min_support,
                    "pairs": any(PAIR in name for name in fam.names),
                    "worst": [fam.names[i] for i in ranked[: cfg.top_k]],
                    **({} if tested.any() else {"reason": "no slice has the support to be tested"}),
                },
            )
        ]
        for rank, i in enumerate(ranked[: cfg.top_k], start=1):
            name = fam.names[i]
            at = self._at(fam.est, (int(i), w), z)
            rows.append(
                self._row(
                    version,
                    DISCOVERED,
                    bounds,
                    at["value"],
                    feature="&".join(part.partition("=")[0] for part in name.split(PAIR)),
                    slice_=name,
                    threshold=_num(fam.rest.value[i, w]),
                    alert=True,
                    n=float(fam.est.n[i, w]),
                    details={
                        "metric": metric,
                        "rank": rank,
                        "labelled": at["labelled"],
                        "interval": at["interval"],
                        "interval_method": at["interval_method"],
                        "overall": _num(overall.value[w]),
                        "rest": _num(fam.rest.value[i, w]),
                        "rest_n": int(fam.rest.n[i, w]),
                        "worse_by": _num(gap[i]),
                        "p": _num(fam.p_rest[i, w]),
                        "q": _num(q[i]),
                        "tested": int(tested.sum()),
                    },
                )
            )
        return rows
