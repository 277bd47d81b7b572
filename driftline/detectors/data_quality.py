"""Data quality per feature, window and version: missing values, breaches, unseen values, outliers.

Everything comes from the window summaries, never from raw rows: nulls from the numeric
counts or the NULL value count, range and schema breaches from the `@dq` codes written at
ingest, unseen categories from value counts set against the reference's, outliers from the
window's t-digest CDF at the reference's 0.1 and 99.9 percentiles (exact value counts where
the feature is discrete). Each threshold sits above what the reference itself shows and is
widened by the binomial noise of the window's sample size, so that small windows do not flap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from driftline.detectors import base
from driftline.detectors.base import DetectorConfig, MetricRow, Reference, RunContext
from driftline.detectors.summaries import DQ, LEVELS, NULL, CategoricalBlock, NumericBlock, Summary
from driftline.schema import FeatureKind, FeatureSpec, MetadataField, Pii

OUTLIER_LEVELS = (0.001, 0.999)
EXPECTED_OUTLIERS = 0.002  # share of reference values outside its own 0.1-99.9 percentile range
MAX_EXAMPLES = 5  # unseen values listed per window
MAX_VALUE_CHARS = 100

# what this family writes; every one but schema_violations (a count of rows) is a share in [0, 1]
METRICS = ("missing_rate", "out_of_range_rate", "unseen_category_rate", "outlier_rate", "schema_violations")


class Thresholds(BaseModel):
    """Per-feature overrides of the detector-wide thresholds; unset fields keep the defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    missing_margin: float | None = Field(default=None, ge=0, le=1)
    out_of_range_margin: float | None = Field(default=None, ge=0, le=1)
    unseen_threshold: float | None = Field(default=None, ge=0, le=1)
    outlier_threshold: float | None = Field(default=None, ge=0, le=1)
    violation_margin: float | None = Field(default=None, ge=0, le=1)


class DataQualityConfig(DetectorConfig):
    """Rates are shares of the window's rows (or of its non-null values); margins add to the reference's rate.

    schema_violations is a count of rows, so its threshold is the allowed count: the
    reference's violation rate plus `violation_margin`, times the window's rows.
    """

    kind: ClassVar[str] = "data_quality"

    missing_margin: float = Field(default=0.05, ge=0, le=1)
    out_of_range_margin: float = Field(default=0.01, ge=0, le=1)
    unseen_threshold: float = Field(default=0.01, ge=0, le=1)
    outlier_threshold: float = Field(default=0.01, ge=0, le=1)
    violation_margin: float = Field(default=0.01, ge=0, le=1)
    z: float = Field(default=3.0, ge=0, description="sampling allowance, in binomial standard errors")
    features: dict[str, Thresholds] = Field(default_factory=dict)

    def threshold(self, feature: str, name: str) -> float:
        override = self.features.get(feature)
        value = getattr(override, name) if override is not None else None
        return float(getattr(self, name) if value is None else value)


# -- helpers shared with other families ------------------------------------------------------


def rate_threshold(base: np.ndarray | float, margin: float, n: np.ndarray, z: float) -> np.ndarray:
    """base + margin, widened by z binomial standard errors at the allowed rate and sample size n.

    The noise term is taken at the allowed rate rather than at the base rate, so a base of
    zero does not make a single stray value in a small window an alert.
    """
    allowed = np.clip(np.asarray(base, dtype=np.float64) + margin, 0.0, 1.0)
    size = np.maximum(np.asarray(n, dtype=np.float64), 1.0)
    noise = z * np.sqrt(allowed * (1.0 - allowed) / size)
    return np.asarray(np.minimum(allowed + noise, 1.0), dtype=np.float64)


def json_safe(value: Any) -> Any:
    """Details as plain JSON: numpy scalars unwrapped, NaN and infinities as null."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def level_index(p: float) -> int:
    """Position of a quantile level in the summaries' LEVELS."""
    hits = np.flatnonzero(np.isclose(LEVELS, p))
    if not len(hits):
        raise ValueError(f"quantile level {p} is not summarised")
    return int(hits[0])


def outside_share(block: NumericBlock, lo: float, hi: float) -> np.ndarray:
    """Share of each window's values strictly below lo or strictly above hi, from its t-digest.

    The quantile function is interpolated between the exact min, the t-digest quantiles at
    LEVELS and the exact max. Below lo takes the left limit and above hi the right limit of
    the CDF, so that the mass of a repeated value sitting on a bound counts as inside.
    """
    out = np.full(len(block.n), np.nan)
    grid = np.concatenate([[0.0], LEVELS, [1.0]])
    for w in np.flatnonzero(block.n > 0):
        points = np.concatenate([[block.min[w]], block.q[w], [block.max[w]]])
        if not np.all(np.isfinite(points)):
            continue
        points = np.maximum.accumulate(points)
        at_or_above_lo = float(np.interp(-lo, -points[::-1], 1.0 - grid[::-1]))
        at_or_below_hi = float(np.interp(hi, points, grid))
        out[w] = (1.0 - at_or_above_lo) + (1.0 - at_or_below_hi)
    return out


def dq_counts(summary: Summary, code: str) -> np.ndarray:
    """Per window, how many rows carry one data-quality code (`feature:reason`)."""
    block = summary.categorical.get(DQ)
    if block is None:
        return np.zeros(summary.windows, dtype=np.int64)
    hit = block.values == code
    return np.asarray(block.counts[:, hit].sum(axis=1), dtype=np.int64)


def _null_index(block: CategoricalBlock) -> np.ndarray:
    return np.asarray(block.values == NULL)


# -- results of one feature over the windows -------------------------------------------------


@dataclass
class Series:
    """One metric of one feature over W windows; NaN values are windows with nothing to measure."""

    metric: str
    feature: str
    value: np.ndarray
    threshold: np.ndarray
    n: np.ndarray
    judged: np.ndarray | None = None  # windows where a verdict is allowed (default: all measured)
    details: list[dict[str, Any]] = field(default_factory=list)
    common: dict[str, Any] = field(default_factory=dict)

    def row(self, i: int, version: str, detector: tuple[str, str], bounds: tuple[int, int]) -> MetricRow:
        detail = {**self.common, **(self.details[i] if self.details else {})}
        value = float(self.value[i])
        if not math.isfinite(value):
            return MetricRow(
                version=version,
                detector=detector[0],
                detector_id=detector[1],
                metric=self.metric,
                feature=self.feature,
                window_start=bounds[0],
                window_end=bounds[1],
                value=None,
                sample_size=int(self.n[i]),
                status="no_data",
                details=json_safe(detail),
            )
        threshold = float(self.threshold[i])
        judged = bool(self.judged[i]) if self.judged is not None else True
        ok = math.isfinite(threshold)
        return MetricRow(
            version=version,
            detector=detector[0],
            detector_id=detector[1],
            metric=self.metric,
            feature=self.feature,
            window_start=bounds[0],
            window_end=bounds[1],
            value=value,
            threshold=threshold if ok else None,
            alert=bool(judged and ok and value > threshold),
            sample_size=int(self.n[i]),
            details=json_safe(detail),
        )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _parse_floats(values: np.ndarray) -> np.ndarray | None:
    """Value-count keys of a discrete numeric column back as numbers (NULL as NaN)."""
    try:
        return np.array([np.nan if v == NULL else float(v) for v in values], dtype=np.float64)
    except ValueError:
        return None


def _exact_range(values: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """The reference's 0.1 and 99.9 percentiles of a discrete column, from its value counts."""
    order = np.argsort(values)
    v, c = values[order], counts[order].astype(np.float64)
    cum = np.cumsum(c) / c.sum()
    lo = v[min(int(np.searchsorted(cum, OUTLIER_LEVELS[0], side="right")), len(v) - 1)]
    hi = v[min(int(np.searchsorted(cum, OUTLIER_LEVELS[1], side="left")), len(v) - 1)]
    return float(lo), float(hi)


# -- the detector -----------------------------------------------------------------------------


@base.register(DataQualityConfig)
class DataQuality:
    """Missing, out-of-range, unseen and outlying values and schema breaches per feature and window."""

    def __init__(self, config: DataQualityConfig) -> None:
        self.config: DetectorConfig = config
        self.settings = config
        self._key = (config.kind, config.id)

    def run(self, ctx: RunContext) -> list[MetricRow]:
        rows: list[MetricRow] = []
        for version in ctx.versions:
            rows.extend(self._version(ctx, version))
        return rows

    def _fields(self, ctx: RunContext, version: str) -> list[FeatureSpec | MetadataField]:
        """The version's own features (a feature added later is no missing value of an older version)."""
        info = ctx.model.version(version)
        features = info.features if info is not None and info.features else ctx.schema.features
        out: list[FeatureSpec | MetadataField] = [f for f in features if f.stored]
        out += [m for m in ctx.schema.metadata if m.stored]
        return out

    def _version(self, ctx: RunContext, version: str) -> list[MetricRow]:
        live = ctx.live[version]
        ref = ctx.reference_for(version)
        specs = self._fields(ctx, version)
        series: list[Series] = []
        for spec in specs:
            series.extend(self._feature(live, ref, spec))
        series.extend(self._violations(live, ref, specs))
        out: list[MetricRow] = []
        for i in range(live.windows):
            bounds = ctx.window_bounds(i)
            if bounds[0] >= ctx.now:
                break
            empty = live.rows[i] == 0
            for s in series:
                if empty:
                    out.append(self._no_data(version, s, bounds))
                else:
                    out.append(s.row(i, version, self._key, bounds))
        return out

    def _no_data(self, version: str, s: Series, bounds: tuple[int, int]) -> MetricRow:
        return MetricRow(
            version=version,
            detector=self._key[0],
            detector_id=self._key[1],
            metric=s.metric,
            feature=s.feature,
            window_start=bounds[0],
            window_end=bounds[1],
            value=None,
            status="no_data",
            details={"reason": "no rows in the window"},
        )

    def _feature(
        self, live: Summary, ref: Reference | None, spec: FeatureSpec | MetadataField
    ) -> list[Series]:
        out: list[Series] = []
        missing = self._missing(live, ref, spec)
        if missing is not None:
            out.append(missing)
        if spec.kind is FeatureKind.NUMERIC:
            if isinstance(spec, FeatureSpec) and spec.range is not None:
                out.append(self._out_of_range(live, ref, spec))
            outliers = self._outliers(live, ref, spec.name)
            if outliers is not None:
                out.append(outliers)
        else:
            unseen = self._unseen(live, ref, spec)
            if unseen is not None:
                out.append(unseen)
        return out

    # -- missing values ---------------------------------------------------------------------

    @staticmethod
    def _nulls(summary: Summary, spec: FeatureSpec | MetadataField) -> np.ndarray | None:
        """Nulls per window; None when the column was not summarised."""
        if spec.kind is FeatureKind.NUMERIC:
            block = summary.numeric.get(spec.name)
            if block is None:
                return None
            return np.asarray(summary.rows - block.n, dtype=np.float64)
        cat = summary.categorical.get(spec.name)
        if cat is None:
            return None
        return np.asarray(cat.counts[:, _null_index(cat)].sum(axis=1), dtype=np.float64)

    def _missing(
        self, live: Summary, ref: Reference | None, spec: FeatureSpec | MetadataField
    ) -> Series | None:
        nulls = self._nulls(live, spec)
        if nulls is None:
            return None
        rows = live.rows.astype(np.float64)
        base = 0.0
        if ref is not None and ref.whole.rows[0] > 0:
            ref_nulls = self._nulls(ref.whole, spec)
            if ref_nulls is not None:
                base = float(ref_nulls[0] / ref.whole.rows[0])
        margin = self.settings.threshold(spec.name, "missing_margin")
        return Series(
            metric="missing_rate",
            feature=spec.name,
            value=_ratio(nulls, rows),
            threshold=rate_threshold(base, margin, rows, self.settings.z),
            n=rows,
            details=[{"nulls": int(k)} for k in nulls],
            common={"reference_rate": base, "margin": margin},
        )

    # -- declared range --------------------------------------------------------------------

    def _out_of_range(self, live: Summary, ref: Reference | None, spec: FeatureSpec) -> Series:
        code = f"{spec.name}:range"
        hits = dq_counts(live, code)
        rows = live.rows.astype(np.float64)
        base = 0.0
        if ref is not None and ref.whole.rows[0] > 0:
            base = float(dq_counts(ref.whole, code)[0] / ref.whole.rows[0])
        margin = self.settings.threshold(spec.name, "out_of_range_margin")
        return Series(
            metric="out_of_range_rate",
            feature=spec.name,
            value=_ratio(hits, rows),
            threshold=rate_threshold(base, margin, rows, self.settings.z),
            n=rows,
            details=[{"count": int(k)} for k in hits],
            common={"range": list(spec.range or ()), "reference_rate": base, "margin": margin},
        )

    # -- unseen categories -----------------------------------------------------------------

    def _unseen(
        self, live: Summary, ref: Reference | None, spec: FeatureSpec | MetadataField
    ) -> Series | None:
        """Share of non-null values the reference never showed, or that the schema's categories forbid."""
        block = live.categorical.get(spec.name)
        if block is None:
            return None
        values, counts = block.values, block.counts
        present = values != NULL
        unseen = np.zeros(len(values), dtype=bool)
        known = False
        truncated = False
        ref_block = ref.whole.categorical.get(spec.name) if ref is not None else None
        if ref is not None and ref_block is not None:
            seen = ref_block.values[(ref_block.counts[0] > 0) & (ref_block.values != NULL)]
            unseen |= present & ~np.isin(values, seen)
            known = True
            chunks = ref.chunks.categorical.get(spec.name)
            if chunks is not None:
                truncated = bool(np.any(chunks.counts.sum(axis=1) < ref.chunks.rows))
        categories = spec.categories if isinstance(spec, FeatureSpec) else None
        hashed = isinstance(spec, FeatureSpec) and spec.pii is Pii.HASH
        extra = np.zeros(live.windows, dtype=np.float64)
        if categories:
            if not hashed:
                unseen |= present & ~np.isin(values, np.array(categories, dtype=object))
                known = True
            elif not known:  # hashed values cannot be set against the declared names: use the ingest codes
                extra = dq_counts(live, f"{spec.name}:category").astype(np.float64)
                known = True
        if not known:
            return None
        n = counts[:, present].sum(axis=1).astype(np.float64)
        hits = counts[:, unseen].sum(axis=1).astype(np.float64) + extra
        limit = self.settings.threshold(spec.name, "unseen_threshold")
        details: list[dict[str, Any]] = []
        names = values[unseen]
        sub = counts[:, unseen]
        for w in range(live.windows):
            top = np.argsort(-sub[w], kind="stable")[:MAX_EXAMPLES]
            examples = {str(names[j])[:MAX_VALUE_CHARS]: int(sub[w, j]) for j in top if sub[w, j] > 0}
            uncounted = int(live.rows[w] - counts[w].sum())
            details.append({"count": int(hits[w]), "examples": examples, "uncounted": max(uncounted, 0)})
        return Series(
            metric="unseen_category_rate",
            feature=spec.name,
            value=_ratio(hits, n),
            threshold=rate_threshold(0.0, limit, n, self.settings.z),
            n=n,
            judged=np.full(live.windows, not truncated),
            details=details,
            common={
                "threshold_rate": limit,
                "reference_values": len(ref_block.values) if ref_block is not None else 0,
                "reference_truncated": truncated,
            },
        )

    # -- outliers ---------------------------------------------------------------------------

    def _outliers(self, live: Summary, ref: Reference | None, name: str) -> Series | None:
        """Share of values outside the reference's 0.1-99.9 percentile range."""
        block = live.numeric.get(name)
        ref_num = ref.whole.numeric.get(name) if ref is not None else None
        if block is None or ref is None or ref_num is None or ref_num.n[0] <= 0:
            return None
        n = block.n.astype(np.float64)
        lo = float(ref_num.q[0][level_index(OUTLIER_LEVELS[0])])
        hi = float(ref_num.q[0][level_index(OUTLIER_LEVELS[1])])
        expected = EXPECTED_OUTLIERS
        ref_cat = ref.whole.categorical.get(name)
        ref_values = _parse_floats(ref_cat.values) if ref_cat is not None else None
        if ref_cat is not None and ref_values is not None:  # a discrete feature: exact percentiles
            ok = np.isfinite(ref_values)
            ref_counts = ref_cat.counts[0]
            if ok.any() and ref_counts[ok].sum() > 0:
                lo, hi = _exact_range(ref_values[ok], ref_counts[ok])
                far = ok & ((ref_values < lo) | (ref_values > hi))
                expected = float(ref_counts[far].sum() / ref_counts[ok].sum())
        value = outside_share(block, lo, hi)
        method = np.full(live.windows, "tdigest", dtype=object)
        live_cat = live.categorical.get(name)
        live_values = _parse_floats(live_cat.values) if live_cat is not None else None
        if live_cat is not None and live_values is not None:
            finite = np.isfinite(live_values)
            counted = live_cat.counts[:, finite].sum(axis=1).astype(np.float64)
            exact = (counted == n) & (n > 0)  # every value counted by value: the share is exact
            far = finite & ((live_values < lo) | (live_values > hi))
            value = np.where(exact, _ratio(live_cat.counts[:, far].sum(axis=1), counted), value)
            method[exact] = "counts"
        value = np.where(n > 0, np.clip(value, 0.0, 1.0), np.nan)
        limit = self.settings.threshold(name, "outlier_threshold")
        return Series(
            metric="outlier_rate",
            feature=name,
            value=value,
            threshold=rate_threshold(0.0, limit, n, self.settings.z),
            n=n,
            details=[{"method": str(m)} for m in method],
            common={"low": lo, "high": hi, "expected": expected, "threshold_rate": limit},
        )

    # -- schema violations -------------------------------------------------------------------

    def _violations(
        self, live: Summary, ref: Reference | None, specs: Iterable[FeatureSpec | MetadataField]
    ) -> list[Series]:
        """Violation codes per field (`field:reason`), counted per window, reasons in the details."""
        names = [s.name for s in specs]
        block = live.categorical.get(DQ)
        fields: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
        if block is not None:
            for j, code in enumerate(block.values):
                fld, _, reason = str(code).rpartition(":")
                if fld and block.counts[:, j].any():
                    fields.setdefault(fld, {})[reason] = block.counts[:, j]
        ref_rates: dict[str, float] = {}
        if ref is not None and ref.whole.rows[0] > 0:
            ref_block = ref.whole.categorical.get(DQ)
            if ref_block is not None:
                for j, code in enumerate(ref_block.values):
                    fld = str(code).rpartition(":")[0]
                    ref_rates[fld] = ref_rates.get(fld, 0.0) + float(ref_block.counts[0, j])
                ref_rates = {k: v / float(ref.whole.rows[0]) for k, v in ref_rates.items()}
        rows = live.rows.astype(np.float64)
        out: list[Series] = []
        for fld, reasons in fields.items():
            total = np.zeros(live.windows, dtype=np.float64)
            for counts in reasons.values():
                total += counts
            base = ref_rates.get(fld, 0.0)
            margin = self.settings.threshold(fld, "violation_margin")
            allowed = rate_threshold(base, margin, rows, self.settings.z) * rows
            details = [
                {
                    "by_reason": {r: int(c[w]) for r, c in sorted(reasons.items()) if c[w]},
                    "rate": float(total[w] / rows[w]) if rows[w] else None,
                }
                for w in range(live.windows)
            ]
            out.append(
                Series(
                    metric="schema_violations",
                    feature=fld,
                    value=np.where(rows > 0, total, np.nan),
                    threshold=allowed,
                    n=rows,
                    details=details,
                    common={"reference_rate": base, "margin": margin, "declared": fld in names},
                )
            )
        return out
