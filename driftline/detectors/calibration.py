"""Calibration of a classifier's scores on the labelled rows of each window.

A score is only useful as a probability if, among the rows scored about p, a share p turns
out positive. Over equal-width score bins (a coarsening of the summaries' bins, so that the
numbers are exact on the same bins):
- `ece`: expected calibration error, sum over bins of |mean score - observed rate| weighted
  by the bin's share of rows;
- `mce`: maximum calibration error, the worst bin among bins with enough rows;
- `brier`: mean squared error of the scores, exact from the sums of score and score² per
  label (multiclass: summed over the classes, scikit-learn's unscaled multiclass Brier);
- the reliability curve (per bin: mean score, observed rate, count) in the ECE's details.
Binary models use the positive class's score; multiclass models the top score against
whether the predicted class was right (confidence calibration), with per-class ECE in details.

ECE of a perfectly calibrated model is not zero in a finite window, so a window is flagged
only when the miscalibration is large (above a threshold), worse than the reference's by a
margin, and significant (Hosmer-Lemeshow test over the same bins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator
from scipy import stats

from driftline.detectors import base
from driftline.detectors.base import DetectorConfig, MetricRow, RunContext
from driftline.detectors.data_quality import json_safe
from driftline.detectors.estimated_performance import binned, labelled_reference
from driftline.detectors.perf_summaries import BINS, MAX, BinnedScores, PerfSummary
from driftline.detectors.summaries import REFERENCE_CHUNKS
from driftline.schema import Task

METRICS = ("ece", "mce", "brier")


class CalibrationConfig(DetectorConfig):
    """Absolute thresholds, margins over the reference, and the test that makes a finding significant."""

    kind: ClassVar[str] = "calibration"

    bins: int = Field(default=10, ge=1, le=BINS, description=f"equal-width score bins; must divide {BINS}")
    ece_threshold: float = Field(default=0.05, ge=0, le=1)
    mce_threshold: float = Field(default=0.15, ge=0, le=1)
    margin: float = Field(default=0.02, ge=0, le=1, description="ECE/MCE must exceed the reference's by this")
    brier_margin: float = Field(
        default=0.02, ge=0, le=2, description="Brier must exceed the reference's by this"
    )
    alpha: float = Field(default=0.01, gt=0, lt=1, description="Hosmer-Lemeshow p-value for an ECE finding")
    z: float = Field(default=3.0, gt=0, description="standard errors for MCE and Brier findings")
    min_labels: int = Field(default=100, ge=1, description="fewer labelled rows in a window: no verdict")
    mce_min_count: int = Field(
        default=30, ge=1, description="bins with fewer labelled rows are left out of MCE"
    )

    @model_validator(mode="after")
    def _divides(self) -> CalibrationConfig:
        if BINS % self.bins:
            raise ValueError(f"bins must divide {BINS}, got {self.bins}")
        return self


@dataclass(frozen=True)
class Reliability:
    """Labelled rows per (window, coarse bin): count, positives and sum of scores."""

    n: np.ndarray  # (W, G)
    pos: np.ndarray
    s: np.ndarray

    @classmethod
    def of(cls, bins: BinnedScores, groups: int) -> Reliability:
        lab = (slice(None), slice(None), slice(None), 1)
        w = bins.n.shape[0]

        def coarse(a: np.ndarray) -> np.ndarray:
            return np.asarray(a.reshape(w, groups, BINS // groups).sum(axis=2), dtype=np.float64)

        return cls(
            coarse(bins.n[lab].sum(axis=(2, 3))),
            coarse(bins.n[lab][..., 1].sum(axis=2)),
            coarse(bins.s[lab].sum(axis=(2, 3))),
        )

    @property
    def rows(self) -> np.ndarray:
        return np.asarray(self.n.sum(axis=1), dtype=np.float64)

    def ece(self) -> np.ndarray:
        """sum_b n_b/N |s_b/n_b - pos_b/n_b| = sum_b |s_b - pos_b| / N."""
        return _ratio(np.abs(self.s - self.pos).sum(axis=1), self.rows)

    def mce(self, min_count: int) -> tuple[np.ndarray, np.ndarray]:
        """The worst bin's |mean score - observed rate| among bins with min_count rows, and that bin."""
        gap = np.where(self.n >= min_count, np.abs(self.s - self.pos) / np.maximum(self.n, 1.0), -1.0)
        worst = gap.argmax(axis=1)
        value = gap[np.arange(len(gap)), worst]
        return np.where(value >= 0, value, np.nan), worst

    def z_of(self, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Binomial z-score of the observed positives of bin b against its scores, per window."""
        n, s, pos = self.n[w, b], self.s[w, b], self.pos[w, b]
        var = s * (1.0 - s / np.maximum(n, 1.0))
        return _ratio(np.abs(pos - s), np.sqrt(var))

    def hosmer_lemeshow(self) -> tuple[np.ndarray, np.ndarray]:
        """Statistic and p-value per window; the scores are not fitted on the window, so df = bins used."""
        use = (self.n > 0) & (self.s > 0) & (self.s < self.n)
        var = np.where(use, self.s * (1.0 - self.s / np.maximum(self.n, 1.0)), 1.0)
        stat = np.where(use, (self.pos - self.s) ** 2 / var, 0.0).sum(axis=1)
        df = use.sum(axis=1)
        p = np.where(df > 0, stats.chi2.sf(stat, np.maximum(df, 1)), np.nan)
        return stat, p

    def curve(self, w: int) -> list[dict[str, float]]:
        g = self.n.shape[1]
        return [
            {
                "lo": b / g,
                "hi": (b + 1) / g,
                "mean_score": float(self.s[w, b] / self.n[w, b]),
                "observed_rate": float(self.pos[w, b] / self.n[w, b]),
                "count": float(self.n[w, b]),
            }
            for b in range(g)
            if self.n[w, b] > 0
        ]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def squared_error(bins: BinnedScores) -> tuple[np.ndarray, np.ndarray]:
    """Per window, over labelled rows: the sum of (score - y)², exact as s2 - 2 s + n on the y = 1
    cells and s2 on the others, and the standard deviation of a row's (score - y)², with each
    cell's rows taken at the cell's mean (the cells are 1/100 wide, so this is close)."""
    lab = (slice(None), slice(None), slice(None), 1)
    n = bins.n[lab]  # (W, BINS, pred, y)
    sq = bins.s2[lab].copy()
    sq[..., 1] += n[..., 1] - 2 * bins.s[lab][..., 1]
    sq = np.maximum(sq, 0.0)
    total = np.asarray(sq.sum(axis=(1, 2, 3)), dtype=np.float64)
    rows = n.sum(axis=(1, 2, 3))
    fourth = np.divide(sq**2, n, out=np.zeros_like(sq), where=n > 0).sum(axis=(1, 2, 3))
    mean = _ratio(total, rows)
    var = np.maximum(_ratio(fourth, rows) - mean**2, 0.0)
    return total, np.sqrt(var)


@dataclass(frozen=True)
class Measures:
    """ECE, MCE and Brier per window with what their verdicts need."""

    rel: Reliability
    ece: np.ndarray
    mce: np.ndarray
    worst: np.ndarray
    brier: np.ndarray
    brier_sd: np.ndarray  # of a row's squared error
    hl_stat: np.ndarray
    hl_p: np.ndarray
    classwise: dict[str, np.ndarray]

    @classmethod
    def of(
        cls, summary: PerfSummary | None, task: Task, classes: list[str], windows: int, cfg: CalibrationConfig
    ) -> Measures:
        confidence = "" if task is Task.BINARY else MAX
        rel = Reliability.of(binned(summary, confidence, windows), cfg.bins)
        mce, worst = rel.mce(cfg.mce_min_count)
        stat, p = rel.hosmer_lemeshow()
        classwise: dict[str, np.ndarray] = {}
        if task is Task.BINARY:
            total, sd = squared_error(binned(summary, "", windows))
        else:
            # summed over classes; the sum's sd is bounded by the sum of the classes' sds
            parts = [squared_error(binned(summary, c, windows)) for c in classes]
            total = np.sum([p[0] for p in parts], axis=0)
            sd = np.sum([p[1] for p in parts], axis=0)
            classwise = {c: Reliability.of(binned(summary, c, windows), cfg.bins).ece() for c in classes}
        return cls(rel, rel.ece(), mce, worst, _ratio(total, rel.rows), sd, stat, p, classwise)


@base.register(CalibrationConfig)
class Calibration:
    """ECE, MCE and Brier per version and window, with the reliability curve."""

    def __init__(self, config: CalibrationConfig) -> None:
        self.config: DetectorConfig = config
        self.settings = config

    def run(self, ctx: RunContext) -> list[MetricRow]:
        if ctx.schema.task is Task.REGRESSION or ctx.perf is None:
            return []
        live = ctx.perf.read(ctx.project, ctx.schema, kind="l", start=ctx.start, end=ctx.end, step=ctx.step)
        windows = max((ctx.end - ctx.start) // ctx.step, 0)
        refs: dict[str, Measures] = {}
        out: list[MetricRow] = []
        for version in ctx.versions:
            ref_version = labelled_reference(ctx, version)
            if ref_version is not None and ref_version not in refs:
                whole = ctx.perf.read(
                    ctx.project,
                    ctx.schema,
                    kind="q",
                    start=0,
                    end=REFERENCE_CHUNKS,
                    step=REFERENCE_CHUNKS,
                    versions=[ref_version],
                ).get((ref_version, ""))
                refs[ref_version] = Measures.of(whole, ctx.schema.task, ctx.schema.classes, 1, self.settings)
            ref = refs.get(ref_version) if ref_version is not None else None
            now = Measures.of(
                live.get((version, "")), ctx.schema.task, ctx.schema.classes, windows, self.settings
            )
            out.extend(self._rows(ctx, version, now, ref, ref_version))
        return out

    def _rows(
        self, ctx: RunContext, version: str, m: Measures, ref: Measures | None, ref_version: str | None
    ) -> list[MetricRow]:
        cfg = self.settings
        windows = len(m.ece)
        idx = np.arange(windows)
        worst_z = m.rel.z_of(idx, m.worst)
        rows = m.rel.rows
        brier_se = np.nan_to_num(m.brier_sd) / np.sqrt(np.maximum(rows, 1.0))
        ref_of = {k: (float(getattr(ref, k)[0]) if ref is not None else math.nan) for k in METRICS}
        ece_bar = max(cfg.ece_threshold, ref_of["ece"] + cfg.margin) if ref is not None else cfg.ece_threshold
        mce_bar = cfg.mce_threshold
        if ref is not None and math.isfinite(ref_of["mce"]):
            mce_bar = max(cfg.mce_threshold, ref_of["mce"] + cfg.margin)
        brier_bar = ref_of["brier"] + cfg.brier_margin + cfg.z * brier_se
        out: list[MetricRow] = []
        for i in range(windows):
            lo, hi = ctx.window_bounds(i)
            if lo >= ctx.now:
                break
            size = round(float(rows[i]))
            enough = size >= cfg.min_labels
            base_details: dict[str, Any] = {
                "reference_version": ref_version,
                "bins": cfg.bins,
                "labelled": size,
            }
            if not enough:
                base_details["reason"] = f"{size} labelled rows, fewer than {cfg.min_labels}"
            ece_details = {
                **base_details,
                "reference": ref_of["ece"],
                "hosmer_lemeshow": m.hl_stat[i],
                "p_value": m.hl_p[i],
                "reliability": m.rel.curve(i),
            }
            if m.classwise:
                ece_details["per_class"] = {c: v[i] for c, v in m.classwise.items()}
            worst = int(m.worst[i])
            mce_details = {
                **base_details,
                "reference": ref_of["mce"],
                "min_count": cfg.mce_min_count,
                "worst_bin": {"lo": worst / cfg.bins, "hi": (worst + 1) / cfg.bins, "z": worst_z[i]},
            }
            if enough and not math.isfinite(float(m.mce[i])):
                mce_details["reason"] = f"no bin with {cfg.mce_min_count} labelled rows"
            brier_details = {**base_details, "reference": ref_of["brier"], "standard_error": brier_se[i]}
            ece, mce, brier = float(m.ece[i]), float(m.mce[i]), float(m.brier[i])
            verdicts = {
                "ece": (ece_bar, ece > ece_bar and bool(m.hl_p[i] < cfg.alpha), ece_details),
                "mce": (mce_bar, mce > mce_bar and bool(worst_z[i] >= cfg.z), mce_details),
                "brier": (float(brier_bar[i]), brier > brier_bar[i], brier_details),
            }
            for metric, value in (("ece", ece), ("mce", mce), ("brier", brier)):
                bar, alert, details = verdicts[metric]
                ok = enough and math.isfinite(value)
                out.append(
                    MetricRow(
                        version=version,
                        detector=cfg.kind,
                        detector_id=cfg.id,
                        metric=metric,
                        window_start=lo,
                        window_end=hi,
                        value=value if ok else None,
                        threshold=bar if ok and math.isfinite(bar) else None,
                        alert=bool(ok and alert),
                        sample_size=size,
                        status="ok" if ok else "no_data",
                        details=json_safe(details),
                    )
                )
        return out
