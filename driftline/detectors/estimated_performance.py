"""Classifier performance before its labels arrive, and while they trickle in.

`estimated_performance` is confidence-based performance estimation (NannyML's CBPE): the
scores are calibrated on the labelled reference (isotonic regression over the reference's
score bins, weighted by their counts), and the calibrated probabilities of every row of a
window, labelled or not, are summed into an expected confusion matrix and expected
positive/negative masses per score bin. From those come accuracy, precision, recall, F1
(macro over one-vs-rest classes for multiclass, each class with its own calibration) and
ROC AUC. A window is judged against the reference's realised level, with a band from the
spread of the metric over the reference chunks scaled to the window's size.

`blended_performance` is what a window's performance looks like while only part of its
labels are in: the labelled rows count exactly, the rest by their expected masses. The
labels that arrive first are not always a random sample (reviews of high-risk cases come
back first), so the family also reports `label_sample_bias`: how far the labelled rows'
score distribution is from the whole window's, with a two-sample KS test over the score bins.

Everything works on the binned summaries (window x score bin x predicted x labelled x label
cells); no raw row is read here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field
from scipy import stats
from sklearn.isotonic import IsotonicRegression

from driftline.detectors import base
from driftline.detectors.base import DetectorConfig, MetricRow, RunContext
from driftline.detectors.data_quality import json_safe
from driftline.detectors.perf_summaries import MAX, BinnedScores, PerfSummary
from driftline.detectors.summaries import REFERENCE_CHUNKS
from driftline.schema import Task

Metric = Literal["accuracy", "precision", "recall", "f1", "roc_auc"]
METRICS: tuple[Metric, ...] = ("accuracy", "precision", "recall", "f1", "roc_auc")
BIAS = "label_sample_bias"


# -- calibration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibrator:
    """A monotone score -> probability map, kept as its knots so that it is data, not a pickle."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def fit(cls, score_sum: np.ndarray, positives: np.ndarray, counts: np.ndarray) -> Calibrator:
        """Isotonic regression of the observed rate on the mean score, one point per bin, weighted by count."""
        use = counts > 0
        if not use.any():
            return cls(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(score_sum[use] / counts[use], positives[use] / counts[use], sample_weight=counts[use])
        return cls(
            np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64)
        )

    def __call__(self, score: np.ndarray) -> np.ndarray:
        return np.asarray(np.interp(score, self.x, self.y), dtype=np.float64)

    @classmethod
    def on(cls, bins: BinnedScores) -> Calibrator:
        """Fitted on the labelled rows of a one-window summary (the whole reference)."""
        lab = (slice(None), slice(None), slice(None), 1)
        return cls.fit(
            bins.s[lab].sum(axis=(0, 2, 3)),
            bins.n[lab][..., 1].sum(axis=(0, 2)),
            bins.n[lab].sum(axis=(0, 2, 3)),
        )


# -- masses: positives and negatives per (window, bin, predicted flag) -------------------------


@dataclass(frozen=True)
class Masses:
    """Positives and negatives, observed or expected, per (window, score bin, predicted flag)."""

    pos: np.ndarray  # (W, BINS, 2)
    neg: np.ndarray

    def __add__(self, other: Masses) -> Masses:
        return Masses(self.pos + other.pos, self.neg + other.neg)


def observed(bins: BinnedScores) -> Masses:
    """The labelled rows as they are."""
    return Masses(bins.n[:, :, :, 1, 1].copy(), bins.n[:, :, :, 1, 0].copy())


def expected(bins: BinnedScores, cal: Calibrator, labelled: Literal["all", "unlabelled"]) -> Masses:
    """Rows counted by their calibrated probability, taken at each cell's mean score."""
    n = bins.n.sum(axis=4)  # (W, BINS, pred, labelled)
    s = bins.s.sum(axis=4)
    mean = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
    pos = n * cal(mean)
    neg = n - pos
    if labelled == "unlabelled":
        return Masses(pos[..., 0], neg[..., 0])
    return Masses(pos.sum(axis=3), neg.sum(axis=3))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def binned_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC AUC per window from positive/negative masses per score bin (pairs within a bin count half)."""
    below = np.cumsum(neg, axis=1) - neg
    won = (pos * (below + 0.5 * neg)).sum(axis=1)
    return _ratio(won, pos.sum(axis=1) * neg.sum(axis=1))


@dataclass
class Scores:
    """Metric values per window; per class as well for multiclass."""

    overall: dict[str, np.ndarray]
    per_class: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _one_vs_rest(m: Masses) -> dict[str, np.ndarray]:
    tp, fp = m.pos[..., 1].sum(axis=1), m.neg[..., 1].sum(axis=1)
    fn, tn = m.pos[..., 0].sum(axis=1), m.neg[..., 0].sum(axis=1)
    return {
        "tp": tp,
        "tn": tn,
        "n": tp + fp + fn + tn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": binned_auc(m.pos.sum(axis=2), m.neg.sum(axis=2)),
        "present": (tp + fp + fn) > 0,
    }


def score(masses: Mapping[str, Masses], task: Task) -> Scores:
    """Accuracy, precision, recall, F1 and ROC AUC per window; multiclass as scikit-learn's macro averages.

    A macro average runs over the classes seen in the window (as label or prediction), with
    0 for a class's undefined precision or recall, like scikit-learn's zero_division=0;
    the AUC averages the classes with both positives and negatives.
    """
    if task is Task.BINARY:
        one = _one_vs_rest(masses[""])
        acc = _ratio(one["tp"] + one["tn"], one["n"])
        overall = {"accuracy": acc, **{k: one[k] for k in ("precision", "recall", "f1", "roc_auc")}}
        return Scores(overall, rows=one["n"])
    per = {c: _one_vs_rest(m) for c, m in masses.items()}
    present = np.stack([p["present"] for p in per.values()])  # (K, W)
    rows = next(iter(per.values()))["n"]
    overall = {"accuracy": _ratio(sum((p["tp"] for p in per.values()), np.zeros_like(rows)), rows)}
    for metric in ("precision", "recall", "f1"):
        vals = np.stack([np.nan_to_num(p[metric], nan=0.0) for p in per.values()])
        overall[metric] = _ratio((vals * present).sum(axis=0), present.sum(axis=0).astype(np.float64))
    aucs = np.stack([p["roc_auc"] for p in per.values()])
    ok = np.isfinite(aucs)
    overall["roc_auc"] = _ratio(np.where(ok, aucs, 0.0).sum(axis=0), ok.sum(axis=0).astype(np.float64))
    per_class = {m: {c: p[m] for c, p in per.items()} for m in ("precision", "recall", "f1", "roc_auc")}
    return Scores(overall, per_class, rows)


# -- the labelled reference -------------------------------------------------------------------


def targets(ctx: RunContext) -> list[str]:
    """The binned targets metrics are computed from: '' for binary, each class for multiclass."""
    return [""] if ctx.schema.task is Task.BINARY else list(ctx.schema.classes)


def binned(summary: PerfSummary | None, target: str, windows: int) -> BinnedScores:
    if summary is None or target not in summary.binned:
        return BinnedScores.empty(windows)
    return summary.binned[target]


@dataclass(frozen=True)
class Baseline:
    """A labelled reference: the whole of it (one window) and its chunks, with the calibration maps."""

    version: str
    whole: PerfSummary | None
    chunks: PerfSummary | None
    calibrators: dict[str, Calibrator]

    def scores(self, ctx: RunContext) -> tuple[Scores, Scores]:
        """Realised metrics of the whole reference and of each chunk."""
        ts = targets(ctx)
        whole = score({t: observed(binned(self.whole, t, 1)) for t in ts}, ctx.schema.task)
        chunks = score({t: observed(binned(self.chunks, t, REFERENCE_CHUNKS)) for t in ts}, ctx.schema.task)
        return whole, chunks


def labelled_reference(ctx: RunContext, version: str) -> str | None:
    """The version's own labelled reference, else the champion's, else the newest labelled one."""
    if version in ctx.labelled_references:
        return version
    versions = ctx.model.versions
    champions = [v.version for v in versions if v.role.value == "champion"]
    for v in [*reversed(champions), *reversed([v.version for v in versions])]:
        if v in ctx.labelled_references:
            return v
    return None


def load_baseline(ctx: RunContext, version: str, cache: dict[str, Baseline]) -> Baseline | None:
    ref = labelled_reference(ctx, version)
    if ref is None or ctx.perf is None:
        return None
    if ref not in cache:
        whole, chunks = (
            ctx.perf.read(
                ctx.project, ctx.schema, kind="q", start=0, end=REFERENCE_CHUNKS, step=step, versions=[ref]
            ).get((ref, ""))
            for step in (REFERENCE_CHUNKS, 1)
        )
        cals = {t: Calibrator.on(binned(whole, t, 1)) for t in targets(ctx)}
        cache[ref] = Baseline(ref, whole, chunks, cals)
    return cache[ref]


# -- judging a window -------------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    """The reference level of a metric and its sampling spread at a chunk's size."""

    level: float
    chunk_std: float
    chunk_rows: float

    @classmethod
    def of(cls, metric: str, whole: Scores, chunks: Scores) -> Band:
        level = float(whole.overall[metric][0])
        vals = chunks.overall[metric]
        ok = np.isfinite(vals) & (chunks.rows > 0)
        std = float(np.std(vals[ok], ddof=1)) if ok.sum() >= 2 else math.nan
        rows = float(chunks.rows[ok].mean()) if ok.any() else math.nan
        return cls(level, std, rows)

    def sigma(self, rows: np.ndarray) -> np.ndarray:
        """Sampling error at a window's size: the chunks' std x sqrt(chunk rows / window rows),
        never below the binomial error at the reference level (a steady reference would give 0)."""
        size = np.maximum(rows, 1.0)
        floor = (
            self.level * (1.0 - self.level) / size
            if math.isfinite(self.level)
            else np.full(size.shape, np.nan)
        )
        spread = self.chunk_std**2 * self.chunk_rows / size if math.isfinite(self.chunk_std) else 0.0
        return np.asarray(np.sqrt(np.maximum(floor, spread)), dtype=np.float64)


class EstimateConfig(DetectorConfig):
    """Shared settings: which metrics, how wide the band, which way an alert points."""

    metrics: tuple[Metric, ...] = Field(default=METRICS)
    z: float = Field(default=3.0, gt=0, description="band half-width, in sampling errors")
    direction: Literal["both", "lower"] = Field(
        default="both", description="alert on any departure from the reference, or only on a drop"
    )
    min_rows: int = Field(default=100, ge=1, description="fewer rows in a window: no estimate")


class EstimatedPerformanceConfig(EstimateConfig):
    kind: ClassVar[str] = "estimated_performance"


class BlendedPerformanceConfig(EstimateConfig):
    kind: ClassVar[str] = "blended_performance"

    bias_alpha: float = Field(
        default=0.01, gt=0, lt=1, description="KS p-value below which the labelled rows are a biased sample"
    )
    bias_min_distance: float = Field(
        default=0.02, ge=0, le=1, description="and their score CDF is at least this far from the window's"
    )


class _Family:
    """Per version and window, one row per metric; windows without a labelled reference get no_data."""

    def __init__(self, config: EstimateConfig) -> None:
        self.config: DetectorConfig = config
        self.settings = config

    def run(self, ctx: RunContext) -> list[MetricRow]:
        if ctx.schema.task is Task.REGRESSION or ctx.perf is None:
            return []
        live = ctx.perf.read(ctx.project, ctx.schema, kind="l", start=ctx.start, end=ctx.end, step=ctx.step)
        cache: dict[str, Baseline] = {}
        rows: list[MetricRow] = []
        windows = max((ctx.end - ctx.start) // ctx.step, 0)
        for version in ctx.versions:
            baseline = load_baseline(ctx, version, cache)
            rows.extend(self.version(ctx, version, live.get((version, "")), baseline, windows))
        return rows

    def version(
        self,
        ctx: RunContext,
        version: str,
        summary: PerfSummary | None,
        baseline: Baseline | None,
        windows: int,
    ) -> list[MetricRow]:
        raise NotImplementedError

    def row(
        self,
        ctx: RunContext,
        version: str,
        i: int,
        metric: str,
        value: float,
        size: int,
        *,
        threshold: float | None = None,
        alert: bool = False,
        details: dict[str, Any] | None = None,
    ) -> MetricRow:
        lo, hi = ctx.window_bounds(i)
        ok = math.isfinite(value)
        return MetricRow(
            version=version,
            detector=self.config.kind,
            detector_id=self.config.id,
            metric=metric,
            window_start=lo,
            window_end=hi,
            value=value if ok else None,
            threshold=threshold if ok and threshold is not None and math.isfinite(threshold) else None,
            alert=alert and ok,
            sample_size=size,
            status="ok" if ok else "no_data",
            details=json_safe(details or {}),
        )

    def judged(
        self,
        ctx: RunContext,
        version: str,
        scores: Scores,
        baseline: Baseline,
        extra: list[dict[str, Any]],
    ) -> list[MetricRow]:
        """Rows of every metric and window, each set against the reference level ± z sampling errors."""
        whole, chunks = baseline.scores(ctx)
        z = self.settings.z
        out: list[MetricRow] = []
        for metric in self.settings.metrics:
            band = Band.of(metric, whole, chunks)
            values = scores.overall[metric]
            sigma = band.sigma(scores.rows)
            for i in self.windows(ctx, len(values)):
                value, s, size = float(values[i]), float(sigma[i]), round(float(scores.rows[i]))
                if size < self.settings.min_rows:
                    value = math.nan
                lower, upper = band.level - z * s, band.level + z * s
                alert = value < lower or (self.settings.direction == "both" and value > upper)
                details: dict[str, Any] = {
                    "reference": band.level,
                    "reference_version": baseline.version,
                    "sampling_error": s,
                    "lower": lower,
                    "upper": upper,
                    "interval": [value - z * s, value + z * s],
                    **extra[i],
                }
                if metric in scores.per_class:
                    details["per_class"] = {c: v[i] for c, v in scores.per_class[metric].items()}
                if size < self.settings.min_rows:
                    details["reason"] = f"{size} rows, fewer than {self.settings.min_rows}"
                out.append(
                    self.row(
                        ctx, version, i, metric, value, size, threshold=lower, alert=alert, details=details
                    )
                )
        return out

    def windows(self, ctx: RunContext, count: int) -> list[int]:
        """The run's windows that have begun."""
        return [i for i in range(count) if ctx.window_bounds(i)[0] < ctx.now]

    def no_reference(
        self, ctx: RunContext, version: str, windows: int, metrics: tuple[str, ...]
    ) -> list[MetricRow]:
        reason = {"reason": "no labelled reference to calibrate on"}
        return [
            self.row(ctx, version, i, m, math.nan, 0, details=reason)
            for m in metrics
            for i in self.windows(ctx, windows)
        ]


@base.register(EstimatedPerformanceConfig)
class EstimatedPerformance(_Family):
    """Expected performance from calibrated scores, over every row of each window."""

    def version(
        self,
        ctx: RunContext,
        version: str,
        summary: PerfSummary | None,
        baseline: Baseline | None,
        windows: int,
    ) -> list[MetricRow]:
        if baseline is None:
            return self.no_reference(ctx, version, windows, self.settings.metrics)
        masses = {
            t: expected(binned(summary, t, windows), baseline.calibrators[t], "all") for t in targets(ctx)
        }
        scores = score(masses, ctx.schema.task)
        labelled = binned(summary, targets(ctx)[0], windows).n[:, :, :, 1].sum(axis=(1, 2, 3))
        extra = [{"rows": scores.rows[i], "labelled": labelled[i]} for i in range(windows)]
        return self.judged(ctx, version, scores, baseline, extra)


def sample_bias(bins: BinnedScores) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per window: KS distance between the labelled rows' and the whole window's binned score CDFs,
    the distance between labelled and unlabelled rows, its asymptotic two-sample p-value, and the coverage.

    With labelled share c the window's CDF is c·F_labelled + (1 - c)·F_unlabelled, so the first
    distance is (1 - c) times the second; the test compares labelled with unlabelled rows, the
    two independent samples. On binned scores the distance can only shrink, so the test is
    conservative.
    """
    per_bin = bins.n.sum(axis=(2, 4))  # (W, BINS, labelled)
    lab, unl = per_bin[..., 1], per_bin[..., 0]
    n_l, n_u = lab.sum(axis=1), unl.sum(axis=1)
    both = (n_l > 0) & (n_u > 0)
    f_l = np.cumsum(lab, axis=1) / np.maximum(n_l, 1.0)[:, None]
    f_u = np.cumsum(unl, axis=1) / np.maximum(n_u, 1.0)[:, None]
    d_lu = np.where(both, np.abs(f_l - f_u).max(axis=1), 0.0)
    coverage = _ratio(n_l, n_l + n_u)
    d_lw = np.where(n_l > 0, (1.0 - np.nan_to_num(coverage)) * d_lu, np.nan)
    n_eff = np.round(np.where(both, n_l * n_u / np.maximum(n_l + n_u, 1.0), 1.0))
    p = np.where(both, stats.kstwo.sf(d_lu, np.maximum(n_eff, 1.0)), 1.0)
    return d_lw, d_lu, np.where(n_l > 0, p, np.nan), coverage


@base.register(BlendedPerformanceConfig)
class BlendedPerformance(_Family):
    """Realised performance on the labelled rows, the estimate on the rest, and whether the labelled
    rows are a fair sample of the window."""

    def __init__(self, config: BlendedPerformanceConfig) -> None:
        super().__init__(config)
        self.blend = config

    def version(
        self,
        ctx: RunContext,
        version: str,
        summary: PerfSummary | None,
        baseline: Baseline | None,
        windows: int,
    ) -> list[MetricRow]:
        bias = self.bias(ctx, version, summary, windows)
        if baseline is None:
            return self.no_reference(ctx, version, windows, self.settings.metrics) + bias
        parts = {t: binned(summary, t, windows) for t in targets(ctx)}
        masses = {
            t: observed(b) + expected(b, baseline.calibrators[t], "unlabelled") for t, b in parts.items()
        }
        scores = score(masses, ctx.schema.task)
        labelled = parts[targets(ctx)[0]].n[:, :, :, 1].sum(axis=(1, 2, 3))
        coverage = _ratio(labelled, scores.rows)
        realised = score({t: observed(b) for t, b in parts.items()}, ctx.schema.task)
        extra = []
        for i in range(windows):
            c = float(coverage[i])
            mode = "estimated" if not c > 0 else "realised" if c >= 1 else "blended"
            extra.append(
                {
                    "rows": scores.rows[i],
                    "labelled": labelled[i],
                    "label_coverage": c,
                    "mode": mode,
                    "realised_on_labelled": {m: realised.overall[m][i] for m in self.settings.metrics},
                }
            )
        return self.judged(ctx, version, scores, baseline, extra) + bias

    def bias(
        self, ctx: RunContext, version: str, summary: PerfSummary | None, windows: int
    ) -> list[MetricRow]:
        target = "" if ctx.schema.task is Task.BINARY else MAX
        bins = binned(summary, target, windows)
        d_lw, d_lu, p, coverage = sample_bias(bins)
        rows = bins.n.sum(axis=(1, 2, 3, 4))
        cfg = self.blend
        out = []
        for i in self.windows(ctx, windows):
            size = round(float(rows[i]))
            details: dict[str, Any] = {
                "p_value": p[i],
                "distance_labelled_vs_unlabelled": d_lu[i],
                "label_coverage": coverage[i],
                "score": "top class score" if target == MAX else "score",
                "alpha": cfg.bias_alpha,
            }
            if not math.isfinite(float(d_lw[i])):
                details["reason"] = "no labels in the window yet"
            alert = bool(p[i] < cfg.bias_alpha and d_lw[i] >= cfg.bias_min_distance)
            out.append(
                self.row(
                    ctx,
                    version,
                    i,
                    BIAS,
                    float(d_lw[i]),
                    size,
                    threshold=cfg.bias_min_distance,
                    alert=alert,
                    details=details,
                )
            )
        return out
