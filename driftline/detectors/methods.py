"""Drift methods, keyed by (name, column kind): fitted on a reference summary, scored on a window.

A method's fitted state is data (the reference's quantile knots or value counts and,
for the learned threshold, the mean and sigma of its statistic over reference chunks),
never a pickled object. The default method and thresholds are Evidently 0.7's
DataDriftPreset defaults, chosen per column from the reference size and the number of
values, so that a drift run gives the verdicts an Evidently user expects.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from driftline.detectors import stats
from driftline.detectors.summaries import LEVELS, NULL, Summary

Strategy = Literal["fixed", "reference_chunks"]
SMALL_REFERENCE = 1000  # Evidently: up to this many reference values, statistical tests; above, distances
FEW_VALUES = 5  # Evidently: numeric columns with at most this many values are treated like categories


class ColumnKind(StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class Sample:
    """One column of one window (or of a reference) as methods see it; nulls are left out, as Evidently does.

    `numeric` is the t-digest view of a numeric column; `keys`/`counts` are its exact value
    counts (categorical columns, and numeric ones with few values) when every value was counted.
    """

    n: int
    numeric: stats.Numeric | None = None
    keys: NDArray[np.str_] | None = None
    counts: NDArray[np.int64] | None = None

    @property
    def counted(self) -> bool:
        return self.keys is not None and self.counts is not None

    def exact(self) -> stats.Numeric | None:
        """The exact distribution of a numeric column counted by value, else None."""
        if self.keys is None or self.counts is None or not len(self.keys):
            return None
        try:
            values = self.keys.astype(np.float64)
        except ValueError:
            return None
        return stats.Numeric.from_counts(values, self.counts)


def _counts_row(
    summary: Summary, column: str, window: int
) -> tuple[NDArray[np.str_], NDArray[np.int64]] | None:
    block = summary.categorical.get(column)
    if block is None:
        return None
    row = block.counts[window]
    # compared one by one: numpy would turn NULL into a fixed-width string and strip its NUL
    keep = (row > 0) & np.array([v != NULL for v in block.values], dtype=bool)
    keys = block.values[keep].astype(str)
    order = np.argsort(keys)
    return keys[order], row[keep][order].astype(np.int64)


def sample(summary: Summary, window: int, column: str, kind: ColumnKind) -> Sample:
    """The non-null values of `column` in window `window` of a summary."""
    counted = _counts_row(summary, column, window)
    if kind is ColumnKind.CATEGORICAL:
        if counted is None:
            return Sample(0)
        keys, counts = counted
        return Sample(int(counts.sum()), keys=keys, counts=counts)
    block = summary.numeric.get(column)
    if block is None or block.n[window] <= 0:
        return Sample(0)
    w = block.window(window)
    numeric = stats.Numeric.from_quantiles(w.n, w.sum, w.sum2, w.min, w.max, w.q, LEVELS)
    if counted is not None and int(counted[1].sum()) == numeric.n:
        return Sample(numeric.n, numeric, counted[0], counted[1])
    return Sample(numeric.n, numeric)


def aligned(
    reference: Sample, current: Sample
) -> tuple[NDArray[np.str_], NDArray[np.float64], NDArray[np.float64]]:
    """Counts of both samples over the union of their values, keys sorted."""
    if reference.keys is None or reference.counts is None or current.keys is None or current.counts is None:
        raise ValueError("both samples must be counted by value")
    keys = np.union1d(reference.keys, current.keys)
    ref = np.zeros(len(keys))
    cur = np.zeros(len(keys))
    ref[np.searchsorted(keys, reference.keys)] = reference.counts
    cur[np.searchsorted(keys, current.keys)] = current.counts
    return keys, ref, cur


def distributions(reference: Sample, current: Sample) -> tuple[stats.Numeric, stats.Numeric]:
    """Both numeric distributions: exact when both were counted by value, else their t-digests."""
    if reference.counted and current.counted:
        r, c = reference.exact(), current.exact()
        if r is not None and c is not None:
            return r, c
    if reference.numeric is None or current.numeric is None:
        raise ValueError("numeric methods need numeric samples")
    return reference.numeric, current.numeric


def binned(
    reference: Sample, current: Sample, kind: ColumnKind
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Bin shares as Evidently's get_binned_data makes them (before zero-filling).

    Numeric columns with more than 20 values in the reference: Sturges' equal-width bins
    over the combined range of both samples; otherwise one bin per value. A window of a
    numeric column with few values that was summarised before its reference (so not
    counted by value) is binned like a continuous one rather than refused.
    """
    if kind is ColumnKind.CATEGORICAL or (reference.counted and current.counted):
        _, ref, cur = aligned(reference, current)
        return ref / reference.n, cur / current.n
    r, c = distributions(reference, current)
    edges = stats.sturges_edges(min(r.min, c.min), max(r.max, c.max), r.n + c.n)
    return r.counts_in(edges) / r.n, c.counts_in(edges) / c.n


# -- the methods ---------------------------------------------------------------------------

Compute = Callable[[Sample, Sample, ColumnKind], tuple[float, float | None]]


def _ks(reference: Sample, current: Sample, kind: ColumnKind) -> tuple[float, float | None]:
    """SciPy's test on exact counts; on summarised CDFs at a capped size (see `stats.ks_sizes`)."""
    r, c = distributions(reference, current)
    d = stats.ks_statistic(r, c)
    n1, n2 = (r.n, c.n) if r.step and c.step else stats.ks_sizes(r.n, c.n)
    return d, stats.ks_pvalue(d, n1, n2)


def _wasserstein(reference: Sample, current: Sample, kind: ColumnKind) -> tuple[float, float | None]:
    r, c = distributions(reference, current)
    return stats.wasserstein_normed(r, c), None


def _psi(reference: Sample, current: Sample, kind: ColumnKind) -> tuple[float, float | None]:
    ref, cur = binned(reference, current, kind)
    return stats.psi(stats.fill_zeros(ref), stats.fill_zeros(cur)), None


def _jensen_shannon(reference: Sample, current: Sample, kind: ColumnKind) -> tuple[float, float | None]:
    ref, cur = binned(reference, current, kind)
    return stats.jensen_shannon(ref, cur), None


def _hellinger(reference: Sample, current: Sample, kind: ColumnKind) -> tuple[float, float | None]:
    """Evidently bins numeric columns by Sturges over the distinct values of both samples.

    Their number is known when both were counted by value; otherwise each value is taken
    to be distinct (continuous data), which moves the bin count by at most one or two.
    """
    if kind is ColumnKind.CATEGORICAL:
        _, ref, cur = aligned(reference, current)
        return stats.hellinger(ref / reference.n, cur / current.n), None
    r, c = distributions(reference, current)
    both = reference.counted and current.counted
    distinct = len(aligned(reference, current)[0]) if both else r.n + c.n
    edges = stats.sturges_edges(min(r.min, c.min), max(r.max, c.max), distinct)
    return stats.hellinger(r.counts_in(edges) / r.n, c.counts_in(edges) / c.n), None


def _chi2(reference: Sample, current: Sample, kind: ColumnKind) -> tuple[float, float | None]:
    _, ref, cur = aligned(reference, current)
    return stats.chi2_test(ref, cur)


def _z(reference: Sample, current: Sample, kind: ColumnKind) -> tuple[float, float | None]:
    keys, ref, cur = aligned(reference, current)
    if kind is ColumnKind.NUMERIC and reference.counted:
        try:
            order = np.argsort(keys.astype(np.float64), kind="stable")
            ref, cur = ref[order], cur[order]
        except ValueError:
            pass
    return stats.z_test(ref, cur)


@dataclass(frozen=True)
class Method:
    """A drift method for one column kind.

    `test` methods give a p-value and call drift below their threshold (at or below it
    for KS, as Evidently does); the others call drift when the statistic reaches it.
    `counts` methods need the column counted by value (categories, or few numeric values).
    """

    name: str
    kind: ColumnKind
    default_threshold: float
    compute: Compute
    test: bool = False
    inclusive: bool = False
    counts: bool = False

    def fit(self, reference: Sample) -> Fitted:
        if reference.n <= 0:
            raise ValueError(f"{self.name}: the reference has no values")
        if self.counts and not reference.counted:
            raise ValueError(f"{self.name}: needs a column counted by value, and the reference was not")
        if self.kind is ColumnKind.NUMERIC and reference.numeric is None and not reference.counted:
            raise ValueError(f"{self.name}: needs a numeric reference")
        return Fitted(self.name, self.kind, reference)

    def statistic(self, fitted: Fitted, current: Sample) -> tuple[float, float | None]:
        """(statistic, p-value or None) of a window against the fitted reference."""
        if current.n <= 0:
            raise ValueError(f"{self.name}: the window has no values")
        stat, p = self.compute(fitted.reference, current, self.kind)
        return stat, p

    def verdict(self, statistic: float, p_value: float | None, threshold: float) -> bool:
        if self.test:
            if p_value is None:
                raise ValueError(f"{self.name}: a test needs its p-value")
            return p_value <= threshold if self.inclusive else p_value < threshold
        return statistic >= threshold

    def learn(self, fitted: Fitted, chunks: list[Sample], k: float) -> Fitted:
        """NannyML's threshold: the statistic of each reference chunk against the whole, mean ± k·sigma."""
        values = [self.statistic(fitted, c)[0] for c in chunks if c.n > 0]
        if len(values) < 2:
            raise ValueError(f"{self.name}: fewer than two reference chunks have values")
        arr = np.asarray(values)
        band = Band(float(arr.mean()), float(arr.std()), k, len(values))
        return Fitted(fitted.method, fitted.kind, fitted.reference, band)

    def score(self, fitted: Fitted, current: Sample, threshold: float | None = None) -> Score:
        """The window's statistic and verdict: on the fixed threshold, or on the learned band if fitted with one."""
        stat, p = self.statistic(fitted, current)
        if not math.isfinite(stat):
            raise ValueError(f"{self.name}: non-finite statistic {stat!r}")
        if fitted.band is not None:
            upper = fitted.band.upper
            return Score(self.name, stat, p, upper, stat > upper, fitted.reference.n, current.n, fitted.band)
        limit = self.default_threshold if threshold is None else threshold
        return Score(self.name, stat, p, limit, self.verdict(stat, p, limit), fitted.reference.n, current.n)


@dataclass(frozen=True)
class Band:
    """The statistic over reference chunks: mean and population sigma; drift above mean + k·sigma.

    Every statistic here grows with the difference between the distributions, so only the
    upper edge signals drift: a window closer to the reference than the chunks are is not drift.
    """

    mean: float
    sigma: float
    k: float
    chunks: int

    @property
    def upper(self) -> float:
        return self.mean + self.k * self.sigma

    @property
    def lower(self) -> float:
        return max(self.mean - self.k * self.sigma, 0.0)


@dataclass(frozen=True)
class Fitted:
    """A method's state: the reference sample (arrays) and, for the learned threshold, its band."""

    method: str
    kind: ColumnKind
    reference: Sample
    band: Band | None = None


@dataclass(frozen=True)
class Score:
    method: str
    statistic: float
    p_value: float | None
    threshold: float
    drift: bool
    n_reference: int
    n_current: int
    band: Band | None = None


# -- the registry --------------------------------------------------------------------------

_METHODS: dict[tuple[str, ColumnKind], Method] = {}


def register(method: Method) -> Method:
    key = (method.name, method.kind)
    if key in _METHODS:
        raise ValueError(f"method {method.name!r} for {method.kind.value} columns is registered twice")
    _METHODS[key] = method
    return method


def get(name: str, kind: ColumnKind) -> Method:
    try:
        return _METHODS[(name, kind)]
    except KeyError:
        known = sorted(n for n, k in _METHODS if k is kind)
        raise KeyError(f"no method {name!r} for {kind.value} columns; known: {known}") from None


def registered() -> dict[tuple[str, ColumnKind], Method]:
    return dict(_METHODS)


def names() -> set[str]:
    return {name for name, _ in _METHODS}


for _kind in ColumnKind:
    register(Method("psi", _kind, 0.1, _psi, counts=_kind is ColumnKind.CATEGORICAL))
    register(Method("jensen_shannon", _kind, 0.1, _jensen_shannon, counts=_kind is ColumnKind.CATEGORICAL))
    register(Method("hellinger", _kind, 0.1, _hellinger, counts=_kind is ColumnKind.CATEGORICAL))
    register(Method("chi2", _kind, 0.05, _chi2, test=True, counts=True))
    register(Method("z", _kind, 0.05, _z, test=True, counts=True))
register(Method("ks", ColumnKind.NUMERIC, 0.05, _ks, test=True, inclusive=True))
register(Method("wasserstein", ColumnKind.NUMERIC, 0.1, _wasserstein))


def value_count(reference: Sample, current: Sample) -> int | None:
    """Distinct values of both samples together, when both were counted by value."""
    if not (reference.counted and current.counted):
        return None
    return len(aligned(reference, current)[0])


def default_method(kind: ColumnKind, reference: Sample, current: Sample, *, small: bool = False) -> str:
    """Evidently 0.7's choice (`_get_default_stattest`), from reference size and number of values.

    Reference of at most 1000 values: KS for numeric columns with more than 5 values, else
    chi-square (more than 2 values) or the Z-test. Larger reference: Wasserstein for numeric
    columns with more than 5 values, else Jensen-Shannon. A numeric column not counted by
    value has more than 20 values in its reference, so more than 5. `small` asks for the
    small-sample choice whatever the reference's size (tests, whose p-values know n).
    """
    values = value_count(reference, current)
    small = small or reference.n <= SMALL_REFERENCE
    if kind is ColumnKind.NUMERIC:
        few = values is not None and values <= FEW_VALUES
        if small:
            if not few:
                return "ks"
            return "chi2" if values is not None and values > 2 else "z"
        return "jensen_shannon" if few else "wasserstein"
    if small:
        return "chi2" if values is None or values > 2 else "z"
    return "jensen_shannon"
