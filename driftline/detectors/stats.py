"""Phase two of detection: drift statistics in NumPy/SciPy, from summaries, never from raw rows.

A numeric column reaches this module as its summary describes it: exact count, moments
and range, plus t-digest quantiles at fixed levels (a piecewise-linear quantile function,
hence a piecewise-linear CDF) or, for columns with few values, exact value counts (a step
CDF). Both shapes are exact between their knots, so every distance below is computed
exactly *for the summary*: the only approximation is the t-digest itself.

Each statistic follows the definition Evidently 0.7 and SciPy use, so that the numbers
and verdicts of a drift run agree with theirs on the same raw data: Wasserstein-1 normed
by the reference's population std, the two-sample Kolmogorov-Smirnov test with SciPy's
choice of exact or asymptotic p-value, PSI / Jensen-Shannon / Hellinger on Evidently's
bins, chi-square and the two-proportion Z-test on value counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.stats
from numpy.typing import NDArray
from scipy.spatial import distance

Side = Literal["left", "right"]
FloatArray = NDArray[np.float64]

KS_EXACT_MAX_N = 10_000  # scipy.stats.ks_2samp(method="auto") computes exact p-values up to this size
# the largest effective size (n·m/(n+m)) a KS p-value from summarised CDFs is computed at (see ks_sizes)
KS_SUMMARY_MAX_N = 10_000
STD_FLOOR = 0.001  # Evidently's floor on the reference std that normalises the Wasserstein distance


@dataclass(frozen=True)
class Numeric:
    """The distribution of one numeric sample, as plain arrays.

    `values`/`probs` are the knots of the CDF: piecewise linear between knots when
    `step` is False (quantiles of a t-digest, with min at 0 and max at 1), a right-continuous
    step function when `step` is True (exact value counts, `probs` cumulative).
    """

    n: int
    mean: float
    std: float
    min: float
    max: float
    values: FloatArray
    probs: FloatArray
    step: bool

    @classmethod
    def from_quantiles(
        cls, n: float, total: float, total2: float, lo: float, hi: float, q: FloatArray, levels: FloatArray
    ) -> Numeric:
        """From exact n, sum, sum of squares, min and max and approximate quantiles at `levels`."""
        count = round(n)
        mean = total / n if n else math.nan
        var = max(total2 / n - mean * mean, 0.0) if n else math.nan
        inner = np.clip(np.nan_to_num(np.asarray(q, dtype=np.float64), nan=lo), lo, hi)
        values = np.maximum.accumulate(np.concatenate([[lo], inner, [hi]]))
        probs = np.concatenate([[0.0], np.asarray(levels, dtype=np.float64), [1.0]])
        if n and var < 1e-6 * mean * mean:
            # sum of squares minus n·mean² cancels when the spread is tiny next to the mean
            var = _knot_variance(values, probs)
        return cls(count, mean, math.sqrt(var), lo, hi, values, probs, step=False)

    @classmethod
    def from_counts(cls, values: FloatArray, counts: NDArray[np.int64] | FloatArray) -> Numeric:
        """From exact value counts (any order, no NaN)."""
        order = np.argsort(values, kind="stable")
        v = np.asarray(values, dtype=np.float64)[order]
        c = np.asarray(counts, dtype=np.float64)[order]
        keep = c > 0
        v, c = v[keep], c[keep]
        total = float(c.sum())
        if total == 0:
            raise ValueError("a sample needs at least one value")
        mean = float((v * c).sum() / total)
        var = float((c * (v - mean) ** 2).sum() / total)
        return cls(
            round(total), mean, math.sqrt(var), float(v[0]), float(v[-1]), v, np.cumsum(c) / total, True
        )

    def cdf(self, x: FloatArray, side: Side = "right") -> FloatArray:
        """P(X <= x) (side 'right') or P(X < x) (side 'left'), vectorised."""
        x = np.asarray(x, dtype=np.float64)
        v, p = self.values, self.probs
        i = np.searchsorted(v, x, side=side)
        if self.step:
            return np.concatenate([[0.0], p])[i]
        out = np.where(i >= len(v), 1.0, 0.0)
        inside = (i > 0) & (i < len(v))
        j = i[inside]
        x0, x1, p0, p1 = v[j - 1], v[j], p[j - 1], p[j]
        out[inside] = p0 + (p1 - p0) * (x[inside] - x0) / (x1 - x0)
        return out

    def mass(self, edges: FloatArray) -> FloatArray:
        """Share of the sample in each bin [e_i, e_i+1), the last bin closed, as numpy.histogram counts."""
        inner = self.cdf(edges[1:-1], side="left")
        upper = 1.0 if edges[-1] >= self.max else float(self.cdf(np.array([edges[-1]]), side="right")[0])
        lower = 0.0 if edges[0] <= self.min else float(self.cdf(np.array([edges[0]]), side="left")[0])
        return np.diff(np.concatenate([[lower], inner, [upper]]))

    def counts_in(self, edges: FloatArray) -> FloatArray:
        """Whole-number bin counts: a summary's share of a bin rounded to the rows it stands for."""
        if self.step:
            return self.mass(edges) * self.n
        return np.round(np.clip(self.mass(edges), 0.0, None) * self.n)


def _knot_variance(values: FloatArray, probs: FloatArray) -> float:
    """Variance of the piecewise-linear quantile function, centred first so nothing cancels."""
    v = values - values[len(values) // 2]
    dp = np.diff(probs)
    v0, v1 = v[:-1], v[1:]
    m1 = float(np.sum(dp * (v0 + v1) / 2))
    m2 = float(np.sum(dp * (v0 * v0 + v0 * v1 + v1 * v1) / 3))
    return max(m2 - m1 * m1, 0.0)


def _breakpoints(a: Numeric, b: Numeric) -> FloatArray:
    return np.unique(np.concatenate([a.values, b.values]))


def wasserstein(a: Numeric, b: Numeric) -> float:
    """Wasserstein-1 distance: the area between the two CDFs, exact for their shapes."""
    x = _breakpoints(a, b)
    if len(x) < 2:
        return 0.0
    d0 = a.cdf(x[:-1], "right") - b.cdf(x[:-1], "right")
    d1 = a.cdf(x[1:], "left") - b.cdf(x[1:], "left")
    w = np.diff(x)
    same = d0 * d1 >= 0
    a0, a1 = np.abs(d0), np.abs(d1)
    span = a0 + a1
    crossing = np.divide(d0 * d0 + d1 * d1, 2 * span, out=np.zeros_like(span), where=span > 0)
    return float(np.sum(w * np.where(same, span / 2, crossing)))


def wasserstein_normed(reference: Numeric, current: Numeric) -> float:
    """Evidently's `wasserstein`: Wasserstein-1 over the reference's population std (floored at 0.001)."""
    return wasserstein(reference, current) / max(reference.std, STD_FLOOR)


def ks_statistic(a: Numeric, b: Numeric) -> float:
    """The largest gap between the two CDFs, taking both one-sided limits at every knot."""
    x = _breakpoints(a, b)
    right = np.abs(a.cdf(x, "right") - b.cdf(x, "right"))
    left = np.abs(a.cdf(x, "left") - b.cdf(x, "left"))
    return float(min(max(right.max(initial=0.0), left.max(initial=0.0)), 1.0))


def ks_pvalue(d: float, n1: int, n2: int) -> float:
    """Two-sided p-value as scipy.stats.ks_2samp(method='auto') computes it from D, n and m.

    Exact (D rounded to the lattice of lcm(n, m)) when both sizes are at most 10,000,
    else Smirnov's asymptotic distribution with the effective size rounded, as SciPy does.
    """
    if n1 <= 0 or n2 <= 0:
        raise ValueError("the KS test needs two non-empty samples")
    if max(n1, n2) <= KS_EXACT_MAX_N:
        exact = getattr(scipy.stats._stats_py, "_attempt_exact_2kssamp", None)
        if exact is not None:
            with np.errstate(all="ignore"):
                ok, _, prob = exact(n1, n2, math.gcd(n1, n2), d, "two-sided")
            if ok and 0.0 <= prob <= 1.0:
                return float(prob)
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    return float(np.clip(scipy.stats.kstwo.sf(d, np.round(en)), 0.0, 1.0))


def ks_sizes(n1: int, n2: int) -> tuple[int, int]:
    """The sizes a KS p-value is computed at when a CDF comes from a summary (t-digest knots).

    Such a CDF is known to within 0.01 of the raw rows' (the sketch's rank error, the sample
    a busy bucket's sketch sees, interpolation between knots; tested against SciPy), while
    at a million rows a side the test calls a gap of 0.002 significant: its p-value would
    judge the summary, not the data, and flag windows that do not drift. Both sizes are
    scaled down, keeping their ratio, until the effective size is at most KS_SUMMARY_MAX_N,
    where the smallest gap called significant at p 0.05 (about 0.014) is beyond that error:
    still a shift of a few hundredths of a standard deviation.
    """
    effective = n1 * n2 / (n1 + n2) if n1 + n2 else 0.0
    if effective <= KS_SUMMARY_MAX_N:
        return n1, n2
    scale = KS_SUMMARY_MAX_N / effective
    return max(round(n1 * scale), 1), max(round(n2 * scale), 1)


def sturges_edges(lo: float, hi: float, size: int) -> FloatArray:
    """numpy.histogram_bin_edges(x, 'sturges') for a float sample of `size` values in [lo, hi]."""
    if hi == lo:
        return np.array([lo - 0.5, hi + 0.5])
    width = (hi - lo) / (np.log2(size) + 1.0)
    bins = int(np.ceil((hi - lo) / width)) if width else 1
    return np.linspace(lo, hi, bins + 1)


def fill_zeros(p: FloatArray) -> FloatArray:
    """Evidently's zero-filling before PSI: empty bins get a small share so that logarithms stay finite."""
    out = np.array(p, dtype=np.float64)
    nonzero = out[out != 0]
    if nonzero.size == 0:
        return out
    smallest = float(nonzero.min())
    out[out == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return out


def psi(reference: FloatArray, current: FloatArray) -> float:
    """Population stability index of two vectors of bin shares (zero-filled by the caller)."""
    return float(np.sum((reference - current) * np.log(reference / current)))


def jensen_shannon(reference: FloatArray, current: FloatArray) -> float:
    """Jensen-Shannon distance, natural log (scipy.spatial.distance.jensenshannon)."""
    return float(distance.jensenshannon(reference, current))


def hellinger(reference: FloatArray, current: FloatArray) -> float:
    """Hellinger distance of two vectors of bin shares, as Evidently computes it (clipped to [0, 1])."""
    bc = float(np.clip(np.sum(np.sqrt(reference * current)), 0.0, 1.0))
    return math.sqrt(1.0 - bc)


def chi2_test(reference: FloatArray, current: FloatArray) -> tuple[float, float]:
    """Evidently's chi-square test: current counts against reference counts scaled to the current size.

    Returns (statistic, p-value). A value the reference never saw makes the statistic
    infinite and the p-value 0 (scipy.stats.chisquare does the same); the statistic
    returned then counts such a value as if the reference had held it once.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if len(ref) < 2:
        return 0.0, 1.0
    expected = ref * (cur.sum() / ref.sum())
    unseen = (expected == 0) & (cur > 0)
    if unseen.any():
        floor = cur.sum() / ref.sum()
        stat = float(
            np.sum((cur - np.where(unseen, floor, expected)) ** 2 / np.where(unseen, floor, expected))
        )
        return stat, 0.0
    stat = float(np.sum((cur - expected) ** 2 / expected))
    return stat, float(scipy.stats.chi2.sf(stat, len(ref) - 1))


def z_test(reference: FloatArray, current: FloatArray) -> tuple[float, float]:
    """Evidently's two-proportion Z-test on aligned counts (first key against the rest).

    Returns (|z|, two-sided p-value); two samples of one and the same value give (0, 1).
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    n1, n2 = ref.sum(), cur.sum()
    if (ref > 0).sum() == 1 and (cur > 0).sum() == 1 and np.argmax(ref) == np.argmax(cur):
        return 0.0, 1.0
    p1 = (n1 - ref[0]) / n1
    p2 = (n2 - cur[0]) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = abs(p1 - p2) / se
    return float(z), float(2 * scipy.stats.norm.sf(z))


def bh_adjust(p_values: FloatArray) -> FloatArray:
    """Benjamini-Hochberg adjusted p-values (scipy.stats.false_discovery_control)."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return p
    return np.asarray(scipy.stats.false_discovery_control(p, method="bh"), dtype=np.float64)
