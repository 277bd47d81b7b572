"""Realised model quality once labels arrive: performance, label drift and concept drift.

The three families read the label-joined summaries (`perf_summaries`): per window, the
confusion counts of labelled rows, score-bin counts by predicted / labelled / label flag
with sums of score, score² and log loss, and regression error moments. Every statistic
below is a sum over those cells, so a window costs the same whatever its raw volume, and
a window whose labels arrive late is re-evaluated by running again: the summaries
re-summarise its buckets and the metrics table keeps the newest row per key.

- `performance`: the metrics scikit-learn computes on the labelled rows of a window (the
  binned ROC AUC counts pairs within one score bin as ties), label coverage and label delay,
  each set against the labelled reference's level and its sampling error.
- `label_drift`: the label distribution of a window against the reference's.
- `concept_drift`: whether the relation between the model's output and the outcome
  changed. A classifier's realised accuracy is set against the accuracy its own scores
  imply under the reference's score-to-outcome relation (per score bin), so that covariate
  drift, which moves accuracy only through the scores, is not reported as a concept change.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.stats
from numpy.typing import NDArray
from pydantic import Field, field_validator
from scipy.spatial import distance

from driftline.detectors import base
from driftline.detectors.base import DetectorConfig, MetricRow, RunContext
from driftline.detectors.perf_summaries import BINS, MAX, BinnedScores, PerfSummarizer, PerfSummary
from driftline.detectors.summaries import REFERENCE_CHUNKS
from driftline.schema import ModelSchema, Task
from driftline.storage.events import Kind

FloatArray = NDArray[np.float64]

CLASSIFICATION = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier")
REGRESSION = ("mae", "rmse", "mape", "r2")
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "mae", "rmse", "mape"})
MIN_CHUNKS = 3  # reference chunks with a value needed to estimate a metric's spread from them

# why a metric has no value although the window has enough labels
UNDEFINED = {
    "precision": "no predicted positives",
    "recall": "no positive labels",
    "f1": "no positive labels or predictions",
    "roc_auc": "labels of one class only",
    "log_loss": "no labelled rows with scores",
    "brier": "no labelled rows with scores",
    "mape": "every label is 0",
    "r2": "the labels are constant",
}


def _f(x: Any) -> float | None:
    """A finite float for details, else None: details are plain JSON."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _ratio(a: FloatArray, b: FloatArray) -> FloatArray:
    """a / b, NaN where b is 0: an undefined metric stays visibly undefined."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    out = np.full(a.shape, np.nan)
    np.divide(a, b, out=out, where=b > 0)
    return out


# -- configs ----------------------------------------------------------------------------------


class PerformanceConfig(DetectorConfig):
    """Realised metrics per window; alert when worse than the reference by z standard errors."""

    kind: ClassVar[str] = "performance"

    min_labels: int = Field(default=30, ge=1, description="labelled rows a window needs for a value")
    z: float = Field(
        default=3.0, gt=0, description="alert when worse than the reference by z standard errors"
    )
    level: float = Field(
        default=0.95, gt=0, lt=1, description="coverage of the reference interval in details"
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description='absolute limits replacing the reference-based ones: {"accuracy": 0.9, "mae": 12}',
    )
    min_label_coverage: float | None = Field(default=None, ge=0, le=1)
    max_label_delay_s: float | None = Field(default=None, gt=0, description="alert above, on label_delay_p90")

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(CLASSIFICATION) - set(REGRESSION))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {sorted({*CLASSIFICATION, *REGRESSION})}")
        return value


class LabelDriftConfig(DetectorConfig):
    """Alert when the label distribution moved both significantly and materially."""

    kind: ClassVar[str] = "label_drift"

    min_labels: int = Field(default=30, ge=1)
    min_distance: float = Field(
        default=0.1,
        gt=0,
        description="classes: Jensen-Shannon distance; regression: normal-approximation Wasserstein-2 over the reference std",
    )
    alpha: float = Field(
        default=0.01, gt=0, lt=1, description="significance of the two-sample test; every window is a test"
    )


class ConceptDriftConfig(DetectorConfig):
    """Alert on a change of the output-to-outcome relation: one window beyond z, or a CUSUM beyond h."""

    kind: ClassVar[str] = "concept_drift"

    min_labels: int = Field(default=30, ge=1)
    z: float = Field(default=3.0, gt=0, description="a single window's gap, in standard errors")
    cusum_k: float = Field(default=0.5, ge=0, description="CUSUM allowance per window, in standard errors")
    cusum_h: float = Field(default=5.0, gt=0, description="CUSUM decision level, in standard errors")
    reference_allowance: float = Field(
        default=2.0,
        ge=0,
        description="reference estimation error the CUSUM tolerates, in its standard errors: "
        "every window shares it, so it would otherwise accumulate",
    )
    prior_rows: float = Field(
        default=5.0,
        gt=0,
        description="pseudo-rows at the bin's mean score that steady the reference's outcome rate in sparse bins",
    )
    direction: Literal["both", "worse"] = "both"


# -- realised metrics from summaries ---------------------------------------------------------


@dataclass
class Realised:
    """Per window (or reference chunk): each metric, the rows its sampling error scales with."""

    labelled: FloatArray
    values: dict[str, FloatArray] = field(default_factory=dict)
    basis: dict[str, FloatArray] = field(default_factory=dict)
    positives: FloatArray | None = None  # binary: positive / negative labels among scored rows (AUC error)
    negatives: FloatArray | None = None
    abs_error_sd: FloatArray | None = None  # regression: per-row std of |error|
    error_mean: FloatArray | None = None
    error_var: FloatArray | None = None


def _labelled_cells(b: BinnedScores) -> FloatArray:
    """(W, BINS, predicted, label) counts of the labelled rows."""
    return np.asarray(b.n[:, :, :, 1, :], dtype=np.float64)


def binned_auc(b: BinnedScores) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ROC AUC per window from score-bin counts, pairs within a bin counted as ties; (auc, pos, neg)."""
    lab = _labelled_cells(b).sum(axis=2)
    neg, pos = lab[..., 0], lab[..., 1]
    below = np.cumsum(neg, axis=1) - neg
    p, n = pos.sum(axis=1), neg.sum(axis=1)
    return _ratio((pos * (below + 0.5 * neg)).sum(axis=1), p * n), p, n


def _brier_sum(b: BinnedScores) -> FloatArray:
    """Σ (score - y)² over labelled rows: Σs² - 2Σs·y + Σy."""
    s2 = b.s2[:, :, :, 1, :].sum(axis=(1, 2, 3))
    s_pos = b.s[:, :, :, 1, 1].sum(axis=(1, 2))
    n_pos = b.n[:, :, :, 1, 1].sum(axis=(1, 2))
    return np.asarray(s2 - 2 * s_pos + n_pos, dtype=np.float64)


def _confusion(s: PerfSummary | None, w: int) -> tuple[FloatArray, list[str]]:
    if s is None or s.confusion is None:
        return np.zeros((w, 0, 0)), []
    return np.asarray(s.confusion, dtype=np.float64), list(s.classes)


def classification(s: PerfSummary | None, schema: ModelSchema, w: int) -> Realised:
    """Accuracy, precision, recall, F1 (binary: positive class; multiclass: macro), ROC AUC, log loss, Brier."""
    conf, classes = _confusion(s, w)
    n = conf.sum(axis=(1, 2))
    tp = np.diagonal(conf, axis1=1, axis2=2)
    predicted, actual = conf.sum(axis=2), conf.sum(axis=1)
    out = Realised(labelled=n)
    out.values["accuracy"], out.basis["accuracy"] = _ratio(tp.sum(axis=1), n), n
    binned = s.binned if s is not None else {}
    if schema.task is Task.BINARY:
        k = classes.index(schema.positive_class) if schema.positive_class in classes else -1
        zero = np.zeros(w)
        tpk = tp[:, k] if k >= 0 else zero
        pk = predicted[:, k] if k >= 0 else zero
        ak = actual[:, k] if k >= 0 else zero
        out.values["precision"], out.basis["precision"] = _ratio(tpk, pk), pk
        out.values["recall"], out.basis["recall"] = _ratio(tpk, ak), ak
        out.values["f1"], out.basis["f1"] = _ratio(2 * tpk, pk + ak), n
        b = binned.get("") or BinnedScores.empty(w)
        auc, pos, neg = binned_auc(b)
        scored = pos + neg
        out.values["roc_auc"], out.basis["roc_auc"] = auc, scored
        out.positives, out.negatives = pos, neg
        out.values["log_loss"] = _ratio(b.ll[:, :, :, 1, :].sum(axis=(1, 2, 3)), scored)
        out.values["brier"] = _ratio(_brier_sum(b), scored)
        out.basis["log_loss"] = out.basis["brier"] = scored
        return out
    # multiclass: macro averages over the classes present among labels or predictions (scikit-learn's labels=None)
    present = (predicted + actual) > 0
    m = present.sum(axis=1).astype(np.float64)
    per_p = np.where(predicted > 0, _ratio(tp, predicted), 0.0)
    per_r = np.where(actual > 0, _ratio(tp, actual), 0.0)
    per_f = np.where(present, _ratio(2 * tp, predicted + actual), 0.0)
    for name, per in (("precision", per_p), ("recall", per_r), ("f1", per_f)):
        out.values[name], out.basis[name] = _ratio((per * present).sum(axis=1), m), n
    targets = [binned[c] for c in schema.classes if c in binned]
    aucs = [binned_auc(b) for b in targets]
    if aucs:
        auc = np.stack([a for a, _, _ in aucs])
        ok = np.stack([(p > 0) & (q > 0) for _, p, q in aucs])
        out.values["roc_auc"] = _ratio(np.where(ok, auc, 0.0).sum(axis=0), ok.sum(axis=0))
    else:
        out.values["roc_auc"] = np.full(w, np.nan)
    top = binned.get(MAX) or BinnedScores.empty(w)
    scored = _labelled_cells(top).sum(axis=(1, 2, 3))
    known = sum((b.n[:, :, :, 1, 1].sum(axis=(1, 2)) for b in targets), np.zeros(w))
    lost = sum((b.ll[:, :, :, 1, 1].sum(axis=(1, 2)) for b in targets), np.zeros(w))
    out.values["log_loss"] = _ratio(lost, known)
    out.values["brier"] = _ratio(sum((_brier_sum(b) for b in targets), np.zeros(w)), scored)
    out.basis["roc_auc"] = out.basis["brier"] = scored
    out.basis["log_loss"] = known
    return out


def regression(s: PerfSummary | None, w: int) -> Realised:
    """MAE, RMSE, MAPE (over labels ≠ 0), R² from the labelled rows' error moments."""
    r = s.regression if s is not None else None
    if r is None:
        n = np.zeros(w)
        nan = np.full(w, np.nan)
        out = Realised(labelled=n, abs_error_sd=nan, error_mean=nan, error_var=nan)
        for name in REGRESSION:
            out.values[name], out.basis[name] = nan, n
        return out
    n = np.asarray(r.n[:, 1], dtype=np.float64)
    mae = _ratio(r.sae[:, 1], n)
    mse = _ratio(r.se2[:, 1], n)
    mean = _ratio(r.se[:, 1], n)
    sst = r.sy2[:, 1] - _ratio(r.sy[:, 1] ** 2, n)
    # a constant label gives a sum of squares of rounding size only
    sst = np.where(sst > 1e-12 * np.maximum(r.sy2[:, 1], 1e-300), sst, 0.0)
    out = Realised(
        labelled=n,
        abs_error_sd=np.sqrt(np.clip(mse - mae**2, 0.0, None)),
        error_mean=mean,
        error_var=np.clip(mse - mean**2, 0.0, None),
    )
    out.values["mae"], out.values["rmse"] = mae, np.sqrt(mse)
    out.values["mape"] = _ratio(r.sape[:, 1], r.nape[:, 1])
    out.values["r2"] = 1.0 - _ratio(r.se2[:, 1], sst)
    for name in REGRESSION:
        out.basis[name] = np.asarray(r.nape[:, 1], dtype=np.float64) if name == "mape" else n
    return out


def realised(s: PerfSummary | None, schema: ModelSchema, w: int) -> Realised:
    return regression(s, w) if schema.task is Task.REGRESSION else classification(s, schema, w)


# -- reference levels and sampling errors -------------------------------------------------------


def hanley_se(auc: float, pos: FloatArray | float, neg: FloatArray | float) -> FloatArray:
    """Hanley & McNeil's standard error of an AUC with `pos` positive and `neg` negative labels."""
    p = np.asarray(pos, dtype=np.float64)
    q = np.asarray(neg, dtype=np.float64)
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = _ratio(auc * (1 - auc) + (p - 1) * (q1 - auc * auc) + (q - 1) * (q2 - auc * auc), p * q)
    return np.sqrt(np.clip(var, 0.0, None))


@dataclass(frozen=True)
class Level:
    """A metric's reference level, its interval, and how its sampling error scales to a window.

    method: `wilson` (a proportion: error sqrt(p(1-p)/n)), `hanley` (binary ROC AUC),
    `moments` (MAE: per-row std of |error| from the reference), `chunks` (the spread of the
    metric over the reference's chunks, scaled by sqrt(chunk rows / window rows), with
    Student's t for the few chunks), or `none` (too few chunks: a level without an error).
    """

    value: float
    lower: float | None
    upper: float | None
    method: str
    n: float
    spread: float  # per-row std: a window of n rows has standard error spread / sqrt(n)
    df: int | None = None
    pos: float = 0.0
    neg: float = 0.0

    def se(self, n: FloatArray, pos: FloatArray | None = None, neg: FloatArray | None = None) -> FloatArray:
        """Standard error of the metric in windows of n rows (AUC: pos and neg labels)."""
        if self.method == "hanley" and pos is not None and neg is not None:
            return hanley_se(self.value, pos, neg)
        return self.spread * np.sqrt(_ratio(np.ones_like(n, dtype=np.float64), n))

    @property
    def se_reference(self) -> float:
        if self.method == "hanley":
            return float(hanley_se(self.value, self.pos, self.neg))
        return self.spread / math.sqrt(self.n) if self.n > 0 else math.nan

    def critical(self, z: float) -> float:
        """z, or its Student's t equivalent when the spread comes from a few chunks."""
        if self.df is None:
            return z
        return float(scipy.stats.t.ppf(scipy.stats.norm.cdf(z), self.df))

    def details(self, version: str, level: float) -> dict[str, Any]:
        return {
            "version": version,
            "value": _f(self.value),
            "lower": _f(self.lower),
            "upper": _f(self.upper),
            "level": level,
            "method": self.method,
            "n": _f(self.n),
        }


def wilson(p: float, n: float, z: float) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def _method(metric: str, task: Task) -> str:
    if metric == "accuracy" or (task is Task.BINARY and metric in ("precision", "recall")):
        return "wilson"
    if metric == "roc_auc" and task is Task.BINARY:
        return "hanley"
    if metric == "mae":
        return "moments"
    return "chunks"


def reference_level(metric: str, task: Task, whole: Realised, chunks: Realised, level: float) -> Level | None:
    """The reference's value of a metric with its interval at `level` (two-sided)."""
    value = float(whole.values[metric][0])
    n = float(whole.basis[metric][0])
    if not math.isfinite(value) or n <= 0:
        return None
    zq = float(scipy.stats.norm.ppf(0.5 + level / 2))
    method = _method(metric, task)
    if method == "wilson":
        lo, hi = wilson(value, n, zq)
        shrunk = (value * n + 2) / (n + 4)  # Agresti-Coull: a perfect reference still has an error
        return Level(value, lo, hi, method, n, math.sqrt(shrunk * (1 - shrunk)))
    if method == "hanley" and whole.positives is not None and whole.negatives is not None:
        pos, neg = float(whole.positives[0]), float(whole.negatives[0])
        se = float(hanley_se(value, pos, neg))
        return Level(
            value, max(value - zq * se, 0.0), min(value + zq * se, 1.0), method, n, 0.0, pos=pos, neg=neg
        )
    if method == "moments" and whole.abs_error_sd is not None:
        spread = float(whole.abs_error_sd[0])
        se = spread / math.sqrt(n)
        return Level(value, value - zq * se, value + zq * se, method, n, spread)
    vals, rows = chunks.values[metric], chunks.basis[metric]
    ok = np.isfinite(vals) & (rows > 0)
    k = int(ok.sum())
    if k < MIN_CHUNKS:
        return Level(value, None, None, "none", n, math.nan)
    spread = float(np.std(vals[ok], ddof=1) * math.sqrt(rows[ok].mean()))
    df = k - 1
    se = spread / math.sqrt(n)
    tq = float(scipy.stats.t.ppf(0.5 + level / 2, df))
    return Level(value, value - tq * se, value + tq * se, "chunks", n, spread, df=df)


# -- what a run reads, once for the three families ----------------------------------------------


@dataclass
class ReferenceSummaries:
    version: str
    whole: PerfSummary | None
    chunks: PerfSummary | None


@dataclass
class Inputs:
    windows: int
    live: dict[str, PerfSummary]
    references: dict[str, ReferenceSummaries]  # by reference version
    reference_of: dict[str, str]  # live version -> the version whose labelled reference it is judged by
    _realised: dict[tuple[str, str], Realised] = field(default_factory=dict)

    def realised_live(self, version: str, schema: ModelSchema) -> Realised:
        key = ("l", version)
        if key not in self._realised:
            self._realised[key] = realised(self.live.get(version), schema, self.windows)
        return self._realised[key]

    def realised_reference(self, version: str, schema: ModelSchema) -> tuple[Realised, Realised] | None:
        ref = self.references.get(self.reference_of.get(version, ""))
        if ref is None or ref.whole is None:
            return None
        for part, s, w in (("q", ref.whole, 1), ("c", ref.chunks, REFERENCE_CHUNKS)):
            key = (part, ref.version)
            if key not in self._realised:
                self._realised[key] = realised(s, schema, w)
        return self._realised[("q", ref.version)], self._realised[("c", ref.version)]


_CACHE: dict[int, tuple[weakref.ref[RunContext], Inputs]] = {}
_CACHE_LOCK = threading.Lock()


def _reference_version(ctx: RunContext, version: str, labelled: set[str]) -> str | None:
    """The version's own labelled reference, else the champion's, else the newest labelled one."""
    if version in labelled:
        return version
    known = [v.version for v in ctx.model.versions]
    champions = [v.version for v in ctx.model.versions if v.role.value == "champion"]
    for v in [*reversed(champions), *reversed(known)]:
        if v in labelled:
            return v
    return None


def inputs(ctx: RunContext) -> Inputs:
    """The label-joined summaries of a run, read once and shared by the families of this module."""
    with _CACHE_LOCK:
        hit = _CACHE.get(id(ctx))
        if hit is not None and hit[0]() is ctx:
            return hit[1]
    schema = ctx.schema
    perf = ctx.perf
    labelled = set(ctx.labelled_references)
    if perf is None:  # a context built without the runner: bring the summaries up to date here
        perf = PerfSummarizer(ctx.events)
        perf.summarize(ctx.project, schema, ctx.start, ctx.end, now=ctx.now)
        labelled = {
            v.version for v in ctx.model.versions if perf.summarize_reference(ctx.project, schema, v.version)
        }
    windows = max(-(-(ctx.end - ctx.start) // ctx.step), 0)
    live = perf.read(ctx.project, schema, kind="l", start=ctx.start, end=ctx.end, step=ctx.step)
    reference_of = {v: r for v in ctx.versions if (r := _reference_version(ctx, v, labelled)) is not None}
    references: dict[str, ReferenceSummaries] = {}
    for rv in sorted(set(reference_of.values())):
        read = [
            perf.read(ctx.project, schema, kind="q", start=0, end=REFERENCE_CHUNKS, step=step, versions=[rv])
            for step in (REFERENCE_CHUNKS, 1)
        ]
        references[rv] = ReferenceSummaries(rv, read[0].get((rv, "")), read[1].get((rv, "")))
    got = Inputs(windows, {v: s for (v, sl), s in live.items() if sl == ""}, references, reference_of)
    with _CACHE_LOCK:
        for key in [k for k, (ref, _) in _CACHE.items() if ref() is None]:
            del _CACHE[key]
        _CACHE[id(ctx)] = (weakref.ref(ctx), got)
    return got


def label_delays(ctx: RunContext, windows: int) -> dict[str, tuple[FloatArray, FloatArray, FloatArray]]:
    """Per version: labelled predictions, p50 and p90 of seconds from prediction to its first label.

    One aggregate in ClickHouse: the window's predictions (time-ordered table, three narrow
    columns) joined to the first arrival of each of their labels; a label received before its
    prediction counts as no delay. Quantiles are exact (the element at floor(q·n)).
    """
    names = ctx.events.names(ctx.project, ctx.schema.name)
    preds, labels = names(Kind.PREDICTIONS), names(Kind.LABELS)
    rng = "ts >= toDateTime(%(lo)s, 'UTC') AND ts < toDateTime(%(hi)s, 'UTC')"
    got = ctx.events.engine.query_columns(
        "SELECT version, w, n, qs[1] AS p50, qs[2] AS p90 FROM (SELECT version, "
        "intDiv(toUInt32(ts) - %(lo)s, %(step)s) AS w, count() AS n, quantilesExact(0.5, 0.9)("
        "greatest(toInt64(toUInt32(first)) - toInt64(toUInt32(ts)), toInt64(0))) AS qs "
        f"FROM {preds} GLOBAL ANY INNER JOIN (SELECT request_id, min(received) AS first FROM {labels} "
        f"WHERE request_id GLOBAL IN (SELECT request_id FROM {preds} WHERE {rng}) GROUP BY request_id) AS l "
        f"USING request_id WHERE {rng} GROUP BY version, w)",
        {"lo": ctx.start, "hi": ctx.end, "step": ctx.step},
    )
    out: dict[str, tuple[FloatArray, FloatArray, FloatArray]] = {}
    for i in range(len(got["version"])):
        v, w = str(got["version"][i]), int(got["w"][i])
        if not 0 <= w < windows:
            continue
        if v not in out:
            out[v] = (np.zeros(windows), np.full(windows, np.nan), np.full(windows, np.nan))
        n, p50, p90 = out[v]
        n[w], p50[w], p90[w] = float(got["n"][i]), float(got["p50"][i]), float(got["p90"][i])
    return out


# -- rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    """Builds the rows of one detector: ok and no_data share every key field."""

    config: DetectorConfig
    ctx: RunContext

    def ok(
        self,
        version: str,
        i: int,
        metric: str,
        value: float,
        *,
        threshold: float | None = None,
        alert: bool = False,
        n: float = 0,
        details: Mapping[str, Any] | None = None,
    ) -> MetricRow:
        lo, hi = self.ctx.window_bounds(i)
        return MetricRow(
            version=version,
            detector=self.config.kind,
            detector_id=self.config.id,
            metric=metric,
            window_start=lo,
            window_end=hi,
            value=float(value),
            threshold=_f(threshold),
            alert=bool(alert),
            sample_size=int(n),
            details=dict(details or {}),
        )

    def none(self, version: str, i: int, metric: str, reason: str, n: float = 0, **extra: Any) -> MetricRow:
        lo, hi = self.ctx.window_bounds(i)
        return MetricRow(
            version=version,
            detector=self.config.kind,
            detector_id=self.config.id,
            metric=metric,
            window_start=lo,
            window_end=hi,
            value=None,
            sample_size=int(n),
            status="no_data",
            details={"reason": reason, **extra},
        )


def _too_few(n: float, minimum: int) -> str:
    return f"{int(n)} labelled rows, fewer than min_labels={minimum}"


# -- performance ----------------------------------------------------------------------------


@base.register(PerformanceConfig)
class Performance:
    """Realised metrics, label coverage and label delay per version and window."""

    def __init__(self, config: PerformanceConfig) -> None:
        self.config: DetectorConfig = config
        self.settings = config

    def run(self, ctx: RunContext) -> list[MetricRow]:
        cfg = self.settings
        data = inputs(ctx)
        w = data.windows
        schema = ctx.schema
        metrics = REGRESSION if schema.task is Task.REGRESSION else CLASSIFICATION
        delays = label_delays(ctx, w)
        make = _Rows(self.config, ctx)
        rows: list[MetricRow] = []
        for version in ctx.versions:
            real = data.realised_live(version, schema)
            ref = data.realised_reference(version, schema)
            rv = data.reference_of.get(version)
            levels = {
                m: reference_level(m, schema.task, ref[0], ref[1], cfg.level) if ref else None
                for m in metrics
            }
            bounds = {m: self._bounds(m, real, levels[m]) for m in metrics}
            traffic = ctx.live[version].rows if version in ctx.live else np.zeros(w)
            n_delay, p50, p90 = delays.get(version, (np.zeros(w), np.full(w, np.nan), np.full(w, np.nan)))
            for i in range(w):
                labelled = float(real.labelled[i])
                coverage = _f(labelled / traffic[i]) if traffic[i] > 0 else None
                for m in metrics:
                    rows.append(self._metric(make, version, i, m, real, levels[m], bounds[m], rv, coverage))
                rows.extend(
                    self._labels(make, version, i, float(traffic[i]), labelled, n_delay[i], p50[i], p90[i])
                )
        return rows

    def _bounds(self, metric: str, real: Realised, level: Level | None) -> tuple[FloatArray, FloatArray]:
        """Per window: the limit a value must not cross, and the standard error of the difference."""
        w = len(real.labelled)
        if metric in self.settings.thresholds:
            return np.full(w, self.settings.thresholds[metric]), np.full(w, np.nan)
        if level is None or level.method == "none":
            return np.full(w, np.nan), np.full(w, np.nan)
        se_w = level.se(real.basis[metric], real.positives, real.negatives)
        se = np.sqrt(se_w**2 + level.se_reference**2)
        step = level.critical(self.settings.z) * se
        limit = level.value + step if metric in LOWER_IS_BETTER else level.value - step
        return limit, se

    def _metric(
        self,
        make: _Rows,
        version: str,
        i: int,
        metric: str,
        real: Realised,
        level: Level | None,
        bounds: tuple[FloatArray, FloatArray],
        reference_version: str | None,
        coverage: float | None,
    ) -> MetricRow:
        cfg = self.settings
        labelled = float(real.labelled[i])
        if labelled < cfg.min_labels:
            return make.none(version, i, metric, _too_few(labelled, cfg.min_labels), labelled)
        value = float(real.values[metric][i])
        basis = float(real.basis[metric][i])
        if not math.isfinite(value):
            return make.none(version, i, metric, UNDEFINED.get(metric, "undefined"), labelled)
        limit, se = float(bounds[0][i]), float(bounds[1][i])
        lower_better = metric in LOWER_IS_BETTER
        alert = math.isfinite(limit) and (value > limit if lower_better else value < limit)
        details: dict[str, Any] = {
            "labelled": int(labelled),
            "label_coverage": coverage,  # a value from a small share of the labels is provisional
            "basis": int(basis),
            "direction": "lower_is_better" if lower_better else "higher_is_better",
            "threshold_from": "config"
            if metric in cfg.thresholds
            else ("reference" if math.isfinite(limit) else None),
            "reference": level.details(reference_version or "", cfg.level) if level else None,
        }
        if level is not None and math.isfinite(se) and se > 0:
            details["se"] = _f(se)
            details["z"] = _f((value - level.value) / se)
        return make.ok(version, i, metric, value, threshold=limit, alert=alert, n=labelled, details=details)

    def _labels(
        self,
        make: _Rows,
        version: str,
        i: int,
        traffic: float,
        labelled: float,
        n_delay: float,
        p50: float,
        p90: float,
    ) -> list[MetricRow]:
        cfg = self.settings
        out: list[MetricRow] = []
        if traffic > 0:
            coverage = min(labelled / traffic, 1.0)
            floor = cfg.min_label_coverage
            out.append(
                make.ok(
                    version,
                    i,
                    "label_coverage",
                    coverage,
                    threshold=floor,
                    alert=floor is not None and coverage < floor,
                    n=labelled,
                    details={"labelled": int(labelled), "rows": int(traffic)},
                )
            )
        else:
            out.append(make.none(version, i, "label_coverage", "no predictions in the window"))
        for metric, value in (("label_delay_p50", p50), ("label_delay_p90", p90)):
            if n_delay <= 0 or not math.isfinite(value):
                out.append(make.none(version, i, metric, "no labelled predictions in the window"))
                continue
            ceiling = cfg.max_label_delay_s if metric == "label_delay_p90" else None
            out.append(
                make.ok(
                    version,
                    i,
                    metric,
                    value,
                    threshold=ceiling,
                    alert=ceiling is not None and value > ceiling,
                    n=n_delay,
                    details={"unit": "seconds", "labelled": int(n_delay)},
                )
            )
        return out


# -- label drift ----------------------------------------------------------------------------


def label_counts(s: PerfSummary | None, w: int) -> tuple[FloatArray, list[str]]:
    """(W, K) labelled rows per label class, from the confusion counts."""
    conf, classes = _confusion(s, w)
    return conf.sum(axis=1), classes


def homogeneity(ref: FloatArray, cur: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Chi-square test that windows (W, K) and the reference (K,) share one label distribution.

    A two-sample test (2 x K contingency table per window): the reference is a sample
    too, so its own noise widens what counts as a change. Returns (statistic, p-value).
    """
    col = ref[None, :] + cur
    used = col > 0
    r_tot, c_tot = ref.sum(), cur.sum(axis=1, keepdims=True)
    total = r_tot + c_tot
    e_ref = _ratio(r_tot * col, total)
    e_cur = _ratio(c_tot * col, total)
    terms = np.where(
        used, _ratio((ref[None, :] - e_ref) ** 2, e_ref) + _ratio((cur - e_cur) ** 2, e_cur), 0.0
    )
    stat = np.nan_to_num(terms).sum(axis=1)
    dof = used.sum(axis=1) - 1
    p = np.where(dof > 0, scipy.stats.chi2.sf(stat, np.maximum(dof, 1)), 1.0)
    return stat, p


@base.register(LabelDriftConfig)
class LabelDrift:
    """Label distribution per window against the labelled reference's.

    Classes: Jensen-Shannon distance of the class shares (Evidently's measure for large
    samples) with a chi-square homogeneity test. Regression: the summaries hold the labels'
    count, sum and sum of squares only, so the value is the Wasserstein-2 distance between
    normal distributions with the two means and standard deviations, over the reference's
    std: sqrt(Δmean² + Δstd²) / std_ref. It is exact for normal labels and a lower bound of
    the normed W2 distance for any labels, so a change it reports is real; a change of shape
    with equal mean and spread is beyond moments. Its test is Welch's z on the means and a
    z on the log variance ratio, Bonferroni-combined. An alert needs both: a distance of at
    least min_distance and a p-value below alpha, so neither tiny windows nor huge ones
    raise immaterial alerts.
    """

    def __init__(self, config: LabelDriftConfig) -> None:
        self.config: DetectorConfig = config
        self.settings = config

    def run(self, ctx: RunContext) -> list[MetricRow]:
        data = inputs(ctx)
        make = _Rows(self.config, ctx)
        rows: list[MetricRow] = []
        for version in ctx.versions:
            rv = data.reference_of.get(version)
            ref = data.references.get(rv or "")
            if ctx.schema.task is Task.REGRESSION:
                rows.extend(self._regression(make, data, version, ref))
            else:
                rows.extend(self._classes(make, data, version, ref))
        return rows

    def _no_reference(self, make: _Rows, version: str, n: FloatArray) -> list[MetricRow]:
        return [make.none(version, i, "label_drift", "no labelled reference", n[i]) for i in range(len(n))]

    def _classes(
        self, make: _Rows, data: Inputs, version: str, ref: ReferenceSummaries | None
    ) -> list[MetricRow]:
        cfg = self.settings
        cur, classes = label_counts(data.live.get(version), data.windows)
        n = cur.sum(axis=1)
        if ref is None or ref.whole is None:
            return self._no_reference(make, version, n)
        ref_counts, ref_classes = label_counts(ref.whole, 1)
        names = list(dict.fromkeys([*ref_classes, *classes]))
        r = np.zeros(len(names))
        r[[names.index(c) for c in ref_classes]] = ref_counts[0]
        c = np.zeros((data.windows, len(names)))
        if classes:
            c[:, [names.index(x) for x in classes]] = cur
        if r.sum() <= 0:
            return self._no_reference(make, version, n)
        stat, p = homogeneity(r, c)
        shares = _ratio(c, n[:, None])
        ref_shares = r / r.sum()
        js = np.full(data.windows, np.nan)
        seen = n > 0
        if seen.any():
            js[seen] = distance.jensenshannon(
                np.broadcast_to(ref_shares, c[seen].shape), shares[seen], axis=1
            )
        out: list[MetricRow] = []
        for i in range(data.windows):
            if n[i] < cfg.min_labels:
                out.append(make.none(version, i, "label_drift", _too_few(n[i], cfg.min_labels), n[i]))
                continue
            value = float(js[i])
            details = {
                "method": "jensenshannon",
                "test": "chi-square homogeneity",
                "statistic": _f(stat[i]),
                "p_value": _f(p[i]),
                "alpha": cfg.alpha,
                "classes": names,
                "shares": [_f(x) for x in shares[i]],
                "reference_shares": [_f(x) for x in ref_shares],
                "reference": {"version": ref.version, "n": int(r.sum())},
            }
            alert = value >= cfg.min_distance and float(p[i]) < cfg.alpha
            out.append(
                make.ok(
                    version,
                    i,
                    "label_drift",
                    value,
                    threshold=cfg.min_distance,
                    alert=alert,
                    n=n[i],
                    details=details,
                )
            )
        return out

    def _regression(
        self, make: _Rows, data: Inputs, version: str, ref: ReferenceSummaries | None
    ) -> list[MetricRow]:
        cfg = self.settings
        s = data.live.get(version)
        w = data.windows
        moments = s.regression if s is not None else None
        n = np.asarray(moments.n[:, 1], dtype=np.float64) if moments is not None else np.zeros(w)
        rm = ref.whole.regression if ref is not None and ref.whole is not None else None
        if ref is None or moments is None or rm is None or rm.n[0, 1] <= 1:
            return self._no_reference(make, version, n)
        nr = float(rm.n[0, 1])
        mean_r = float(rm.sy[0, 1]) / nr
        var_r = max(float(rm.sy2[0, 1]) / nr - mean_r**2, 0.0)
        mean = _ratio(moments.sy[:, 1], n)
        var = np.clip(_ratio(moments.sy2[:, 1], n) - mean**2, 0.0, None)
        sd_r = math.sqrt(var_r)
        value = _ratio(np.sqrt((mean - mean_r) ** 2 + (np.sqrt(var) - sd_r) ** 2), np.full(w, sd_r))
        z_mean = _ratio(mean - mean_r, np.sqrt(_ratio(var, n) + var_r / nr))
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratio = np.log(_ratio(var, np.full(w, var_r)))
        z_var = _ratio(
            np.where(np.isfinite(log_ratio), log_ratio, np.nan),
            np.sqrt(2 / np.maximum(n - 1, 1) + 2 / (nr - 1)),
        )
        p_mean = 2 * scipy.stats.norm.sf(np.abs(z_mean))
        p_var = 2 * scipy.stats.norm.sf(np.abs(z_var))
        p = np.minimum(2 * np.fmin(p_mean, p_var), 1.0)
        out: list[MetricRow] = []
        for i in range(w):
            if n[i] < cfg.min_labels:
                out.append(make.none(version, i, "label_drift", _too_few(n[i], cfg.min_labels), n[i]))
                continue
            if not math.isfinite(float(value[i])):
                out.append(make.none(version, i, "label_drift", "the reference labels are constant", n[i]))
                continue
            details = {
                "method": "normal-approximation Wasserstein-2 over the reference std",
                "test": "Welch z on the mean and z on the log variance ratio, Bonferroni",
                "mean": _f(mean[i]),
                "std": _f(math.sqrt(var[i])),
                "z_mean": _f(z_mean[i]),
                "z_log_variance": _f(z_var[i]),
                "p_value": _f(p[i]),
                "alpha": cfg.alpha,
                "reference": {"version": ref.version, "n": int(nr), "mean": _f(mean_r), "std": _f(sd_r)},
            }
            alert = float(value[i]) >= cfg.min_distance and float(p[i]) < cfg.alpha
            out.append(
                make.ok(
                    version,
                    i,
                    "label_drift",
                    float(value[i]),
                    threshold=cfg.min_distance,
                    alert=alert,
                    n=n[i],
                    details=details,
                )
            )
        return out


# -- concept drift --------------------------------------------------------------------------


@dataclass(frozen=True)
class Conditional:
    """Realised and expected outcomes of the labelled rows of each window (W,), and variances.

    Expected under the reference's outcome rate per score bin: `correct` is the accuracy
    (binary: the prediction matches the label; '@max': the top class is right), `positive`
    the share of positive labels. var_w is the windows' own sampling variance, var_r the
    part that comes from estimating the reference's rates (shared by every window).
    """

    n: FloatArray
    correct: FloatArray
    expected_correct: FloatArray
    var_w_correct: FloatArray
    var_r_correct: FloatArray
    positive: FloatArray
    expected_positive: FloatArray
    var_w_positive: FloatArray
    var_r_positive: FloatArray


def conditional(window: BinnedScores, reference: BinnedScores, prior_rows: float) -> Conditional:
    """Outcomes of each window's labelled rows against the reference's outcome rate in their score bins."""
    rn = _labelled_cells(reference)[0]  # (BINS, predicted, label)
    rows = rn.sum(axis=(1, 2))
    scores = reference.s[0, :, :, 1, :].sum(axis=(1, 2))
    centre = (np.arange(BINS) + 0.5) / BINS
    prior = np.where(rows > 0, _ratio(scores, rows), centre)
    rate = (rn[:, :, 1].sum(axis=1) + prior_rows * prior) / (rows + prior_rows)  # P(label | bin)
    rate_var = rate * (1 - rate) / (rows + prior_rows)
    cells = _labelled_cells(window)  # (W, BINS, predicted, label)
    count = cells.sum(axis=3)  # (W, BINS, predicted)
    n = count.sum(axis=(1, 2))
    right = np.stack([1 - rate, rate], axis=1)  # P(correct | bin, predicted)
    correct = cells[:, :, 0, 0].sum(axis=1) + cells[:, :, 1, 1].sum(axis=1)
    per_bin = count.sum(axis=2)
    lever = count[:, :, 1] - count[:, :, 0]
    n2 = n * n
    return Conditional(
        n=n,
        correct=_ratio(correct, n),
        expected_correct=_ratio((count * right).sum(axis=(1, 2)), n),
        var_w_correct=_ratio((count * right * (1 - right)).sum(axis=(1, 2)), n2),
        var_r_correct=_ratio((lever**2 * rate_var).sum(axis=1), n2),
        positive=_ratio(cells[..., 1].sum(axis=(1, 2)), n),
        expected_positive=_ratio((per_bin * rate).sum(axis=1), n),
        var_w_positive=_ratio((per_bin * rate * (1 - rate)).sum(axis=1), n2),
        var_r_positive=_ratio((per_bin**2 * rate_var).sum(axis=1), n2),
    )


@dataclass
class Gap:
    """Per window: the measured gap (realised - expected), its variances, labelled rows, evidence."""

    value: FloatArray
    var_w: FloatArray
    var_r: FloatArray
    n: FloatArray
    worse_sign: float  # +1: a positive gap is worse (errors), -1: a negative gap is worse (accuracy)
    evidence: list[dict[str, Any]]
    measure: str


def cusum(x: FloatArray, allowance: FloatArray, usable: NDArray[np.bool_]) -> tuple[FloatArray, FloatArray]:
    """Two one-sided CUSUMs of standardised gaps (positive x = worse); windows without data carry the sums."""
    up, down = np.zeros(len(x)), np.zeros(len(x))
    s_up = s_down = 0.0
    for i in range(len(x)):
        if usable[i]:
            s_up = max(0.0, s_up + float(x[i]) - float(allowance[i]))
            s_down = max(0.0, s_down - float(x[i]) - float(allowance[i]))
        up[i], down[i] = s_up, s_down
    return up, down


@base.register(ConceptDriftConfig)
class ConceptDrift:
    """A change of the output-to-outcome relation in the realised series, apart from covariate drift.

    Classifiers: per window, realised accuracy minus the accuracy expected from the window's
    own labelled scores under the reference's outcome rate per score bin (binary: the score's
    bin; multiclass: the top score's bin). A shift of the inputs moves both together, a
    changed concept only the realised one; labels that arrive first for some scores do not
    bias it either. Regression has no scores to condition on: its gap is the window's MAE
    minus the reference's, with the mean error and the mean prediction's shift as evidence of
    which it is. A window is flagged when its gap passes z standard errors, or when a
    two-sided CUSUM of the standardised gaps (allowance k plus the reference's own error,
    which every window shares) passes h: a small persistent change is caught as well.

    Conditioning on the score separates the two kinds of drift as far as the score carries
    what the inputs say about the outcome (a calibrated model, or any model whose errors do
    not depend on the inputs beyond its score); where it does not, a covariate shift within
    one score level can still show here, and feature drift tells the two apart.
    """

    def __init__(self, config: ConceptDriftConfig) -> None:
        self.config: DetectorConfig = config
        self.settings = config

    def run(self, ctx: RunContext) -> list[MetricRow]:
        data = inputs(ctx)
        make = _Rows(self.config, ctx)
        rows: list[MetricRow] = []
        for version in ctx.versions:
            rv = data.reference_of.get(version)
            ref = data.references.get(rv or "")
            gap = (
                self._regression_gap(ctx.schema, data, version, ref)
                if ctx.schema.task is Task.REGRESSION
                else self._classification_gap(ctx.schema, data, version, ref)
            )
            if gap is None:
                real = data.realised_live(version, ctx.schema)
                rows.extend(
                    make.none(version, i, "concept_drift", "no labelled reference", real.labelled[i])
                    for i in range(data.windows)
                )
                continue
            rows.extend(self._rows(make, version, gap, ref.version if ref else ""))
        return rows

    def _classification_gap(
        self, schema: ModelSchema, data: Inputs, version: str, ref: ReferenceSummaries | None
    ) -> Gap | None:
        if ref is None or ref.whole is None:
            return None
        target = "" if schema.task is Task.BINARY else MAX
        reference = ref.whole.binned.get(target)
        if reference is None or _labelled_cells(reference).sum() <= 0:
            return None
        live = data.live.get(version)
        w = data.windows
        binned = live.binned if live is not None else {}
        main = conditional(binned.get(target) or BinnedScores.empty(w), reference, self.settings.prior_rows)
        cells = _labelled_cells(reference)
        ref_n = float(cells.sum())
        ref_accuracy = float(cells[..., 0, 0].sum() + cells[..., 1, 1].sum()) / ref_n
        if schema.task is Task.BINARY:
            per_class = {schema.positive_class: main}
        else:
            per_class = {
                c: conditional(
                    binned.get(c) or BinnedScores.empty(w), ref.whole.binned[c], self.settings.prior_rows
                )
                for c in schema.classes
                if c in ref.whole.binned
            }
        evidence: list[dict[str, Any]] = []
        for i in range(w):
            rates = {
                c: {
                    "realised": _f(g.positive[i]),
                    "expected": _f(g.expected_positive[i]),
                    "z": _f(
                        (g.positive[i] - g.expected_positive[i])
                        / math.sqrt(g.var_w_positive[i] + g.var_r_positive[i])
                    )
                    if g.var_w_positive[i] + g.var_r_positive[i] > 0
                    else None,
                }
                for c, g in per_class.items()
            }
            se_plain = math.sqrt(ref_accuracy * (1 - ref_accuracy) * (1 / max(main.n[i], 1) + 1 / ref_n))
            evidence.append(
                {
                    "measure": "accuracy",
                    "realised": _f(main.correct[i]),
                    "expected": _f(main.expected_correct[i]),
                    "reference": _f(ref_accuracy),
                    "explained_by_scores": _f(main.expected_correct[i] - ref_accuracy),
                    "z_against_reference": _f((main.correct[i] - ref_accuracy) / se_plain)
                    if se_plain > 0
                    else None,
                    "outcome_rates": rates,
                }
            )
        return Gap(
            value=main.correct - main.expected_correct,
            var_w=main.var_w_correct,
            var_r=main.var_r_correct,
            n=main.n,
            worse_sign=-1.0,
            evidence=evidence,
            measure="accuracy - expected accuracy",
        )

    def _regression_gap(
        self, schema: ModelSchema, data: Inputs, version: str, ref: ReferenceSummaries | None
    ) -> Gap | None:
        if ref is None or ref.whole is None or ref.whole.regression is None:
            return None
        whole = regression(ref.whole, 1)
        n_ref = float(whole.labelled[0])
        mae_ref = float(whole.values["mae"][0])
        if n_ref <= 1 or not math.isfinite(mae_ref):
            return None
        spread = float(whole.abs_error_sd[0]) if whole.abs_error_sd is not None else math.nan
        bias_ref = float(whole.error_mean[0]) if whole.error_mean is not None else math.nan
        evar_ref = float(whole.error_var[0]) if whole.error_var is not None else math.nan
        real = data.realised_live(version, schema)
        n = real.labelled
        rm = ref.whole.regression
        pn = float(rm.n[0].sum())
        p_mean_ref = float(rm.sp[0].sum()) / pn if pn else math.nan
        p_var_ref = max(float(rm.sp2[0].sum()) / pn - p_mean_ref**2, 0.0) if pn else math.nan
        s = data.live.get(version)
        lm = s.regression if s is not None else None
        evidence: list[dict[str, Any]] = []
        for i in range(data.windows):
            bias = float(real.error_mean[i]) if real.error_mean is not None else math.nan
            se_bias = math.sqrt(evar_ref / n[i] + evar_ref / n_ref) if n[i] > 0 else math.nan
            shift_z = None
            if lm is not None and lm.n[i].sum() > 0 and p_var_ref > 0:
                m = float(lm.n[i].sum())
                shift_z = _f(
                    (float(lm.sp[i].sum()) / m - p_mean_ref) / math.sqrt(p_var_ref / m + p_var_ref / pn)
                )
            evidence.append(
                {
                    "measure": "mae",
                    "realised": _f(real.values["mae"][i]),
                    "expected": _f(mae_ref),
                    "reference": _f(mae_ref),
                    "mean_error": _f(bias),
                    "reference_mean_error": _f(bias_ref),
                    "z_mean_error": _f((bias - bias_ref) / se_bias) if se_bias and se_bias > 0 else None,
                    "prediction_shift_z": shift_z,
                }
            )
        return Gap(
            value=real.values["mae"] - mae_ref,
            var_w=_ratio(np.full(data.windows, spread**2), n),
            var_r=np.full(data.windows, spread**2 / n_ref),
            n=n,
            worse_sign=1.0,
            evidence=evidence,
            measure="mae - reference mae",
        )

    def _rows(self, make: _Rows, version: str, gap: Gap, reference_version: str) -> list[MetricRow]:
        cfg = self.settings
        se = np.sqrt(gap.var_w + gap.var_r)
        usable = (gap.n >= cfg.min_labels) & np.isfinite(gap.value) & (se > 0)
        worse = gap.worse_sign * _ratio(gap.value, np.sqrt(gap.var_w))  # standardised, positive = worse
        allowance = cfg.cusum_k + cfg.reference_allowance * np.sqrt(_ratio(gap.var_r, gap.var_w))
        up, down = cusum(np.nan_to_num(worse), np.nan_to_num(allowance), usable)
        z = _ratio(gap.value, se) * gap.worse_sign
        out: list[MetricRow] = []
        for i in range(len(gap.n)):
            if gap.n[i] < cfg.min_labels:
                out.append(
                    make.none(version, i, "concept_drift", _too_few(gap.n[i], cfg.min_labels), gap.n[i])
                )
                continue
            if not usable[i]:
                out.append(
                    make.none(version, i, "concept_drift", "no expected value for the window", gap.n[i])
                )
                continue
            window_hit = z[i] > cfg.z if cfg.direction == "worse" else abs(z[i]) > cfg.z
            cusum_hit = up[i] > cfg.cusum_h or (cfg.direction == "both" and down[i] > cfg.cusum_h)
            triggers = [t for t, hit in (("window", window_hit), ("cusum", cusum_hit)) if hit]
            details = {
                **gap.evidence[i],
                "gap": gap.measure,
                "se": _f(se[i]),
                "z_worse": _f(z[i]),
                "z_limit": cfg.z,
                "cusum_worse": _f(up[i]),
                "cusum_better": _f(down[i]),
                "cusum_h": cfg.cusum_h,
                "triggers": triggers,
                "direction": cfg.direction,
                "reference_version": reference_version,
            }
            out.append(
                make.ok(
                    version,
                    i,
                    "concept_drift",
                    float(gap.value[i]),
                    threshold=cfg.z * float(se[i]),
                    alert=bool(triggers),
                    n=gap.n[i],
                    details=details,
                )
            )
        return out


__all__ = [
    "ConceptDrift",
    "ConceptDriftConfig",
    "LabelDrift",
    "LabelDriftConfig",
    "Performance",
    "PerformanceConfig",
    "binned_auc",
    "classification",
    "conditional",
    "regression",
]
