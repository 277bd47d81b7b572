"""Drift families: each feature, the model's outputs, and the share of drifted features.

Every column of every window (and of every slice of a categorical metadata field) is
compared with the version's reference, from summaries only. The method and threshold
default to what Evidently's DataDriftPreset would choose for that column; a monitor can
override the method per column and the threshold per method, or learn the threshold
from the reference itself (its chunks against the whole, mean + k·sigma, as NannyML).
Testing many features in many windows makes some false alarm certain, so p-value tests
also carry Benjamini-Hochberg adjusted p-values across the features of a window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from driftline.detectors import base
from driftline.detectors.base import DetectorConfig, MetricRow, RunContext
from driftline.detectors.methods import (
    ColumnKind,
    Fitted,
    Method,
    Sample,
    Score,
    Strategy,
    default_method,
    get,
    names,
    sample,
)
from driftline.detectors.stats import bh_adjust
from driftline.detectors.summaries import (
    CLASS_SCORE,
    PREDICTION,
    REFERENCE_CHUNKS,
    SCORE,
    Summary,
    slice_fields,
)
from driftline.schema import FeatureKind, ModelSchema, Task

UNKNOWN_METHOD = "drift"  # metric of rows written before a method could be chosen (no reference)


class DriftConfig(DetectorConfig):
    """Settings shared by the drift families.

    methods: column -> method name, overriding the default choice.
    thresholds: method name -> threshold (a p-value for tests, a distance otherwise).
    strategy: 'fixed' thresholds, or 'reference_chunks' (mean + k·sigma over the reference's chunks).
    features: the columns to watch (all when None).
    slices: also compare every slice of each categorical metadata field.
    min_samples: a window with fewer non-null values gets no verdict (status no_data).
    slice_min_samples: the same for slices.
    small_window: a slice window with at most this many values is judged by a test (KS,
        chi-square, z) rather than a distance, as Evidently judges small references: a
        distance over a few hundred rows is mostly sampling noise (the normed Wasserstein of
        two samples of 120 rows from one distribution is about 0.1), while a test's p-value
        accounts for n and Benjamini-Hochberg for the many slices.
    max_categories: a categorical column whose reference holds more distinct values is an
        identifier (a hashed e-mail, an id) rather than a distribution; it gets no verdict.
    """

    methods: dict[str, str] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(default_factory=dict)
    strategy: Strategy = "fixed"
    k: float = Field(default=3.0, gt=0)
    features: list[str] | None = None
    slices: bool = True
    min_samples: int = Field(default=30, ge=1)
    slice_min_samples: int = Field(default=30, ge=1)
    small_window: int = Field(default=1000, ge=0)
    max_categories: int = Field(default=200, ge=2)

    @model_validator(mode="after")
    def _known_methods(self) -> DriftConfig:
        known = names()
        for column, method in self.methods.items():
            if method not in known:
                raise ValueError(f"column {column!r}: unknown method {method!r}; known: {sorted(known)}")
        for method, value in self.thresholds.items():
            if method not in known:
                raise ValueError(f"threshold for unknown method {method!r}; known: {sorted(known)}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"threshold for {method!r} must be a finite, non-negative number")
        return self


class FeatureDriftConfig(DriftConfig):
    kind: ClassVar[str] = "feature_drift"


class PredictionDriftConfig(DriftConfig):
    kind: ClassVar[str] = "prediction_drift"


class DatasetDriftConfig(DriftConfig):
    """Share of drifted features per window; drift when it reaches `drift_share` (Evidently's 0.5)."""

    kind: ClassVar[str] = "dataset_drift"
    drift_share: float = Field(default=0.5, gt=0, le=1)
    slices: bool = False


@dataclass(frozen=True)
class Column:
    name: str
    kind: ColumnKind


def feature_columns(schema: ModelSchema, only: list[str] | None = None) -> list[Column]:
    """Every stored feature; numeric features are numeric columns, the rest categorical."""
    out = [
        Column(f.name, ColumnKind.NUMERIC if f.kind is FeatureKind.NUMERIC else ColumnKind.CATEGORICAL)
        for f in schema.features
        if f.stored
    ]
    return [c for c in out if only is None or c.name in only]


def prediction_columns(schema: ModelSchema, only: list[str] | None = None) -> list[Column]:
    """What the model emits: score and class (binary), class and each class score (multiclass), value."""
    if schema.task is Task.REGRESSION:
        out = [Column(PREDICTION, ColumnKind.NUMERIC)]
    elif schema.task is Task.BINARY:
        out = [Column(SCORE, ColumnKind.NUMERIC), Column(PREDICTION, ColumnKind.CATEGORICAL)]
    else:
        out = [Column(PREDICTION, ColumnKind.CATEGORICAL)]
        out += [Column(CLASS_SCORE + c, ColumnKind.NUMERIC) for c in schema.classes]
    return [c for c in out if only is None or c.name in only]


@dataclass
class Cell:
    """One column of one window of one (version, slice): a score, or why there is none."""

    version: str
    slice: str
    window: int
    column: Column
    n: int
    method: str
    status: str  # ok | no_data | error
    score: Score | None = None
    reason: str = ""
    reference_version: str = ""
    reference_slice: str = ""
    p_adjusted: float | None = None
    drift_adjusted: bool | None = None


@dataclass(frozen=True)
class _Reference:
    version: str
    slice: str
    whole: Summary
    chunks: Summary | None


class DriftEvaluation:
    """Scores the columns of every window of a run, caching each method fitted on each reference."""

    def __init__(self, config: DriftConfig, ctx: RunContext, columns: list[Column], *, slices: bool) -> None:
        self.config = config
        self.ctx = ctx
        self.columns = columns
        self.names = [c.name for c in columns]
        self.slices = slices and bool(slice_fields(ctx.schema)) and bool(columns)
        self._fitted: dict[tuple[str, str, str, str], Fitted] = {}
        self._ref_slices: dict[
            str, tuple[dict[tuple[str, str], Summary], dict[tuple[str, str], Summary]]
        ] = {}

    # -- references ------------------------------------------------------------------------

    def _reference_slices(
        self, version: str
    ) -> tuple[dict[tuple[str, str], Summary], dict[tuple[str, str], Summary]]:
        if version not in self._ref_slices:
            s, ctx = self.ctx.summarizer, self.ctx
            whole = s.read_slices(
                ctx.project,
                ctx.schema,
                kind="r",
                start=0,
                end=REFERENCE_CHUNKS,
                step=REFERENCE_CHUNKS,
                versions=[version],
                features=self.names,
            )
            chunks: dict[tuple[str, str], Summary] = {}
            if self.config.strategy == "reference_chunks":
                chunks = s.read_slices(
                    ctx.project,
                    ctx.schema,
                    kind="r",
                    start=0,
                    end=REFERENCE_CHUNKS,
                    step=1,
                    versions=[version],
                    features=self.names,
                )
            self._ref_slices[version] = (whole, chunks)
        return self._ref_slices[version]

    def reference(self, version: str, slice_: str) -> _Reference | None:
        """The version's reference; for a slice, the same slice of it when it has one, else the whole."""
        ref = self.ctx.reference_for(version)
        if ref is None:
            return None
        if slice_:
            whole, chunks = self._reference_slices(ref.version)
            key = (ref.version, slice_)
            if key in whole and int(whole[key].rows[0]) > 0:
                return _Reference(ref.version, slice_, whole[key], chunks.get(key))
        return _Reference(ref.version, "", ref.whole, ref.chunks)

    def fitted(self, ref: _Reference, column: Column, method: Method, reference: Sample) -> Fitted:
        key = (ref.version, ref.slice, column.name, method.name)
        if key not in self._fitted:
            fitted = method.fit(reference)
            if self.config.strategy == "reference_chunks":
                if ref.chunks is None:
                    raise ValueError("the reference has no chunks to learn a threshold from")
                parts = [sample(ref.chunks, i, column.name, column.kind) for i in range(ref.chunks.windows)]
                fitted = method.learn(fitted, parts, self.config.k)
            self._fitted[key] = fitted
        return self._fitted[key]

    # -- scoring ---------------------------------------------------------------------------

    def groups(self) -> list[tuple[str, str, Summary]]:
        """(version, slice, live summary) of everything this run compares."""
        ctx = self.ctx
        out = [(v, "", ctx.live[v]) for v in ctx.versions]
        if self.slices and ctx.versions:
            live = ctx.summarizer.read_slices(
                ctx.project,
                ctx.schema,
                kind="p",
                start=ctx.start,
                end=ctx.end,
                step=ctx.step,
                versions=ctx.versions,
                features=self.names,
            )
            order = {v: i for i, v in enumerate(ctx.versions)}
            for v, sl in sorted(live, key=lambda k: (order.get(k[0], len(order)), k[1])):
                out.append((v, sl, live[(v, sl)]))
        return out

    def cells(self) -> list[Cell]:
        out: list[Cell] = []
        for version, slice_, live in self.groups():
            ref = self.reference(version, slice_)
            for i in range(live.windows):
                if slice_ and int(live.rows[i]) == 0:
                    continue  # a slice absent from a window has nothing to say there
                group = [self.cell(version, slice_, i, live, ref, column) for column in self.columns]
                _adjust(group, self.config)
                out.extend(group)
        return out

    def cell(
        self, version: str, slice_: str, i: int, live: Summary, ref: _Reference | None, column: Column
    ) -> Cell:
        current = sample(live, i, column.name, column.kind)
        override = self.config.methods.get(column.name)
        if ref is None:
            return Cell(
                version,
                slice_,
                i,
                column,
                current.n,
                override or UNKNOWN_METHOD,
                "no_data",
                reason=f"no reference data for version {version!r}, nor for a champion or any other version",
            )
        reference = sample(ref.whole, 0, column.name, column.kind)
        cell = Cell(
            version,
            slice_,
            i,
            column,
            current.n,
            override or UNKNOWN_METHOD,
            "no_data",
            reference_version=ref.version,
            reference_slice=ref.slice,
        )
        if reference.n == 0:
            cell.reason = f"the reference of version {ref.version!r} has no values of {column.name!r}"
            return cell
        if (
            override is None
            and reference.keys is not None
            and not reference.exact()
            and len(reference.keys) > self.config.max_categories
        ):
            cell.reason = (
                f"{len(reference.keys)} distinct values in the reference: an identifier rather than a distribution "
                f"(set max_categories above it, or a method for {column.name!r}, to compare it anyway)"
            )
            return cell
        small = bool(slice_) and current.n <= self.config.small_window
        cell.method = override or default_method(column.kind, reference, current, small=small)
        floor = max(self.config.min_samples, self.config.slice_min_samples if slice_ else 0)
        if current.n < floor:
            setting = "slice_min_samples" if slice_ and floor > self.config.min_samples else "min_samples"
            cell.reason = f"{current.n} non-null values in the window, fewer than {setting}={floor}"
            return cell
        try:
            method = get(cell.method, column.kind)
            fitted = self.fitted(ref, column, method, reference)
            cell.score = method.score(fitted, current, self.config.thresholds.get(method.name))
        except (KeyError, ValueError, ArithmeticError) as exc:
            cell.status = "error"
            cell.reason = f"{type(exc).__name__}: {exc}"[:1000]
            return cell
        cell.status = "ok"
        return cell


def _adjust(group: list[Cell], config: DriftConfig) -> None:
    """Benjamini-Hochberg across the p-value tests of one window, version and slice."""
    tested = [c for c in group if c.score is not None and c.score.p_value is not None]
    adjusted = bh_adjust(np.array([c.score.p_value for c in tested if c.score is not None], dtype=np.float64))
    for cell, p in zip(tested, adjusted, strict=True):
        assert cell.score is not None
        method = get(cell.method, cell.column.kind)
        alpha = config.thresholds.get(method.name, method.default_threshold)
        cell.p_adjusted = float(p)
        cell.drift_adjusted = method.verdict(cell.score.statistic, float(p), alpha)
    for cell in group:
        if cell.score is not None and cell.drift_adjusted is None:
            cell.drift_adjusted = cell.score.drift


def _num(value: float | None) -> float | None:
    """JSON-safe number: non-finite values become null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def cell_row(cell: Cell, config: DriftConfig, ctx: RunContext) -> MetricRow:
    lo, hi = ctx.window_bounds(cell.window)
    details: dict[str, Any] = {"method": cell.method, "strategy": config.strategy}
    if cell.reference_version:
        details["reference_version"] = cell.reference_version
        details["reference_slice"] = cell.reference_slice
    score = cell.score
    if score is None:
        details["reason"] = cell.reason
        if cell.status == "error":
            details["error"] = cell.reason
        return MetricRow(
            version=cell.version,
            detector=config.kind,
            detector_id=config.id,
            metric=cell.method,
            window_start=lo,
            window_end=hi,
            value=None,
            feature=cell.column.name,
            slice=cell.slice,
            sample_size=cell.n,
            status=cell.status,
            details=details,
        )
    method = get(score.method, cell.column.kind)
    details.update(
        {
            "statistic": _num(score.statistic),
            "reference_size": score.n_reference,
            "current_size": score.n_current,
            "threshold_on": "p_value" if method.test and score.band is None else "statistic",
            "drift_adjusted": bool(cell.drift_adjusted),
        }
    )
    if score.p_value is not None:
        details["p_value"] = _num(score.p_value)
        details["p_adjusted"] = _num(cell.p_adjusted)
    if score.band is not None:
        details.update(
            {
                "mean": _num(score.band.mean),
                "sigma": _num(score.band.sigma),
                "k": score.band.k,
                "lower": _num(score.band.lower),
                "upper": _num(score.band.upper),
                "chunks": score.band.chunks,
            }
        )
    return MetricRow(
        version=cell.version,
        detector=config.kind,
        detector_id=config.id,
        metric=score.method,
        window_start=lo,
        window_end=hi,
        value=score.statistic,
        feature=cell.column.name,
        slice=cell.slice,
        threshold=score.threshold,
        alert=score.drift,
        sample_size=score.n_current,
        details=details,
    )


class ColumnDrift:
    """feature_drift and prediction_drift: one row per column, window, version and slice."""

    def __init__(self, config: DriftConfig, predictions: bool) -> None:
        self.config: DetectorConfig = config
        self.settings = config
        self.predictions = predictions

    def run(self, ctx: RunContext) -> list[MetricRow]:
        pick = prediction_columns if self.predictions else feature_columns
        columns = pick(ctx.schema, self.settings.features)
        evaluation = DriftEvaluation(self.settings, ctx, columns, slices=self.settings.slices)
        return [cell_row(c, self.settings, ctx) for c in evaluation.cells()]


class DatasetDrift:
    """dataset_drift: the share of features that drifted in each window (Evidently's DatasetDriftMetric)."""

    def __init__(self, config: DatasetDriftConfig) -> None:
        self.config: DetectorConfig = config
        self.settings = config

    def run(self, ctx: RunContext) -> list[MetricRow]:
        config = self.settings
        columns = feature_columns(ctx.schema, config.features)
        cells = DriftEvaluation(config, ctx, columns, slices=config.slices).cells()
        groups: dict[tuple[str, str, int], list[Cell]] = {}
        for c in cells:
            groups.setdefault((c.version, c.slice, c.window), []).append(c)
        rows: list[MetricRow] = []
        for (version, slice_, window), group in groups.items():
            lo, hi = ctx.window_bounds(window)
            scored = [c for c in group if c.score is not None]
            if not scored:
                reasons = sorted({c.reason for c in group if c.reason})
                rows.append(
                    self._row(
                        version,
                        slice_,
                        lo,
                        hi,
                        None,
                        0,
                        {"reason": "no feature could be compared", "reasons": reasons[:10]},
                    )
                )
                continue
            drifted = [c.column.name for c in scored if c.score is not None and c.score.drift]
            adjusted = [c.column.name for c in scored if c.drift_adjusted]
            methods: dict[str, int] = {}
            for c in scored:
                methods[c.method] = methods.get(c.method, 0) + 1
            details = {
                "features": len(scored),
                "drifted": drifted,
                "share_adjusted": len(adjusted) / len(scored),
                "drift_adjusted": len(adjusted) / len(scored) >= config.drift_share,
                "drifted_adjusted": adjusted,
                "skipped": sorted(c.column.name for c in group if c.score is None),
                "methods": methods,
                "strategy": config.strategy,
            }
            share = len(drifted) / len(scored)
            rows.append(self._row(version, slice_, lo, hi, share, max(c.n for c in scored), details))
        return rows

    def _row(
        self,
        version: str,
        slice_: str,
        lo: int,
        hi: int,
        share: float | None,
        n: int,
        details: dict[str, Any],
    ) -> MetricRow:
        config = self.settings
        return MetricRow(
            version=version,
            detector=config.kind,
            detector_id=config.id,
            metric="drift_share",
            window_start=lo,
            window_end=hi,
            value=share,
            slice=slice_,
            threshold=config.drift_share,
            alert=share is not None and share >= config.drift_share,
            sample_size=n,
            status="ok" if share is not None else "no_data",
            details=details,
        )


@base.register(FeatureDriftConfig)
def _feature_drift(config: FeatureDriftConfig) -> ColumnDrift:
    return ColumnDrift(config, predictions=False)


@base.register(PredictionDriftConfig)
def _prediction_drift(config: PredictionDriftConfig) -> ColumnDrift:
    return ColumnDrift(config, predictions=True)


@base.register(DatasetDriftConfig)
def _dataset_drift(config: DatasetDriftConfig) -> DatasetDrift:
    return DatasetDrift(config)
