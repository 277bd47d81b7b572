"""Statistics from summaries against SciPy and Evidently on the same raw data.

The pure functions are checked first on exact inputs (value counts, exact quantiles),
where they must match to rounding; then raw rows go through a real event store and its
summaries (t-digest quantiles) on both engines, where the issue's tolerances apply:
Wasserstein within 2% relative, KS, PSI and Jensen-Shannon within 0.01 absolute.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from evidently.legacy.calculations.stattests import (
    chi_stat_test,
    hellinger_stat_test,
    jensenshannon_stat_test,
    psi_stat_test,
    z_stat_test,
)
from evidently.legacy.core import ColumnType

from driftline.detectors import methods, stats
from driftline.detectors.methods import ColumnKind, Sample
from driftline.detectors.summaries import LEVELS
from driftline.storage.events import EventEngine
from tests.detectors import DAY, PROJECT, T0, Loaded, days

NUM = ColumnType.Numerical
CAT = ColumnType.Categorical


def exact(values: np.ndarray) -> stats.Numeric:
    v, c = np.unique(values, return_counts=True)
    return stats.Numeric.from_counts(v.astype(np.float64), c)


def from_exact_quantiles(values: np.ndarray) -> stats.Numeric:
    return stats.Numeric.from_quantiles(
        len(values),
        float(values.sum()),
        float((values**2).sum()),
        float(values.min()),
        float(values.max()),
        np.quantile(values, LEVELS),
        LEVELS,
    )


def counted(values: np.ndarray) -> Sample:
    keys, counts = np.unique(values.astype(str), return_counts=True)
    return Sample(int(counts.sum()), keys=keys, counts=counts.astype(np.int64))


# -- pure functions on exact inputs --------------------------------------------------------


def test_value_counts_give_scipy_wasserstein_and_ks_exactly() -> None:
    rng = np.random.default_rng(1)
    for a, b in [
        (rng.integers(0, 12, 700), rng.integers(2, 15, 500)),  # ties
        (rng.normal(size=300), rng.normal(0.4, 1.3, 450)),  # continuous
        (np.array([1.0]), np.array([3.0])),
    ]:
        ra, rb = exact(a.astype(float)), exact(b.astype(float))
        assert stats.wasserstein(ra, rb) == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-12)
        assert stats.ks_statistic(ra, rb) == pytest.approx(scipy.stats.ks_2samp(a, b).statistic, abs=1e-12)
        assert ra.std == pytest.approx(np.std(a), rel=1e-12)


def test_cdf_is_right_continuous_at_jumps_and_linear_between_knots() -> None:
    step = exact(np.array([1.0, 1.0, 2.0, 4.0]))
    assert step.cdf(np.array([0.0, 1.0, 1.5, 2.0, 4.0, 9.0])).tolist() == [0, 0.5, 0.5, 0.75, 1, 1]
    assert step.cdf(np.array([1.0, 2.0]), side="left").tolist() == [0, 0.5]
    lin = stats.Numeric.from_quantiles(
        4, 10.0, 30.0, 0.0, 4.0, np.array([1.0, 1.0, 3.0]), np.array([0.25, 0.5, 0.75])
    )
    assert lin.cdf(np.array([-1.0, 0.5, 1.0, 2.0, 3.5, 4.0])).tolist() == pytest.approx(
        [0, 0.125, 0.5, 0.625, 0.875, 1]
    )
    assert lin.cdf(np.array([1.0]), side="left").tolist() == [0.25]


def test_exact_quantiles_give_wasserstein_and_ks_close_to_scipy() -> None:
    rng = np.random.default_rng(2)
    for a, b in [
        (rng.normal(size=50_000), rng.normal(0.3, 1.1, 40_000)),
        (rng.lognormal(0, 0.6, 50_000), rng.lognormal(0.1, 0.6, 40_000)),
        (rng.uniform(size=30_000), rng.beta(2, 2, 30_000)),
    ]:
        ra, rb = from_exact_quantiles(a), from_exact_quantiles(b)
        want = scipy.stats.wasserstein_distance(a, b) / np.std(a)
        assert stats.wasserstein_normed(ra, rb) == pytest.approx(want, rel=0.01)
        assert abs(stats.ks_statistic(ra, rb) - scipy.stats.ks_2samp(a, b).statistic) < 0.005


def test_std_survives_a_large_offset() -> None:
    """Sum of squares minus n·mean² cancels for values like epoch seconds; the knots do not."""
    rng = np.random.default_rng(6)
    x = 1.7e9 + rng.normal(0, 50, 100_000)
    assert from_exact_quantiles(x).std == pytest.approx(np.std(x), rel=0.01)


@pytest.mark.parametrize(
    ("n1", "n2"), [(300, 300), (800, 650), (1000, 9000), (12_000, 3000), (20_000, 25_000)]
)
def test_ks_pvalue_is_scipys_for_the_same_statistic(n1: int, n2: int) -> None:
    """Exact up to 10,000 values per side, asymptotic above, exactly as ks_2samp chooses."""
    rng = np.random.default_rng(n1 + n2)
    a, b = rng.normal(size=n1), rng.normal(0.05, 1, n2)
    want = scipy.stats.ks_2samp(a, b)
    d = stats.ks_statistic(exact(a), exact(b))
    assert d == pytest.approx(want.statistic, abs=1e-12)
    assert stats.ks_pvalue(d, n1, n2) == pytest.approx(want.pvalue, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("size", [2, 21, 1000, 1024, 2_000_000])
def test_sturges_edges_are_numpys(size: int) -> None:
    rng = np.random.default_rng(size)
    x = rng.normal(size=min(size, 5000))
    lo, hi = float(x.min()), float(x.max())
    probe = np.concatenate([[lo, hi], rng.uniform(lo, hi, size - 2)]) if size <= 5000 else None
    if probe is not None:
        np.testing.assert_array_equal(
            stats.sturges_edges(lo, hi, size), np.histogram_bin_edges(probe, "sturges")
        )
    else:
        bins = int(np.ceil(np.log2(size) + 1))
        assert len(stats.sturges_edges(lo, hi, size)) == bins + 1
    assert stats.sturges_edges(3.0, 3.0, 10).tolist() == [2.5, 3.5]


def test_categorical_statistics_match_evidently_exactly() -> None:
    rng = np.random.default_rng(3)
    ref = rng.choice(["a", "b", "c", "d"], 2000, p=[0.4, 0.3, 0.2, 0.1])
    cases = {
        "same": rng.choice(["a", "b", "c", "d"], 1500, p=[0.4, 0.3, 0.2, 0.1]),
        "shifted": rng.choice(["a", "b", "c", "d"], 1500, p=[0.25, 0.25, 0.25, 0.25]),
        "new and missing": rng.choice(["a", "b", "e"], 1500, p=[0.5, 0.3, 0.2]),
    }
    for cur in cases.values():
        r, c = counted(ref), counted(cur)
        rs, cs = pd.Series(ref), pd.Series(cur)
        for name, test in [("psi", psi_stat_test), ("jensen_shannon", jensenshannon_stat_test)]:
            got = methods.get(name, ColumnKind.CATEGORICAL).statistic(
                methods.get(name, ColumnKind.CATEGORICAL).fit(r), c
            )
            assert got[0] == pytest.approx(test(rs, cs, CAT, None).drift_score, rel=1e-9, abs=1e-12)
        m = methods.get("hellinger", ColumnKind.CATEGORICAL)
        assert m.statistic(m.fit(r), c)[0] == pytest.approx(
            hellinger_stat_test(rs.copy(), cs.copy(), CAT, None).drift_score, rel=1e-9, abs=1e-12
        )
        m = methods.get("chi2", ColumnKind.CATEGORICAL)
        p = m.statistic(m.fit(r), c)[1]
        assert p == pytest.approx(chi_stat_test(rs, cs, CAT, None).drift_score, rel=1e-9, abs=1e-300)


def test_chi2_on_a_new_category_is_certain_drift_with_a_finite_statistic() -> None:
    stat, p = stats.chi2_test(np.array([50.0, 50.0, 0.0]), np.array([45.0, 50.0, 5.0]))
    assert p == 0.0
    assert np.isfinite(stat) and stat > 0


@pytest.mark.parametrize(("ref_p", "cur_p"), [(0.3, 0.3), (0.3, 0.36), (0.5, 0.2), (0.0, 0.0), (1.0, 0.0)])
def test_z_test_matches_evidently(ref_p: float, cur_p: float) -> None:
    rng = np.random.default_rng(4)
    ref = np.where(rng.random(900) < ref_p, "yes", "no")
    cur = np.where(rng.random(700) < cur_p, "yes", "no")
    m = methods.get("z", ColumnKind.CATEGORICAL)
    p = m.statistic(m.fit(counted(ref)), counted(cur))[1]
    assert p == pytest.approx(
        z_stat_test(pd.Series(ref), pd.Series(cur), CAT, None).drift_score, rel=1e-9, abs=1e-15
    )


def test_fill_zeros_and_psi_follow_evidently() -> None:
    assert stats.fill_zeros(np.array([0.5, 0.5, 0.0])).tolist() == [0.5, 0.5, 0.0001]
    assert stats.fill_zeros(np.array([0.99995, 0.00005, 0.0])).tolist() == [0.99995, 0.00005, 0.00005 / 10**6]
    assert stats.psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0


def test_benjamini_hochberg() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.2])
    # sorted: 0.01, 0.03, 0.04, 0.2 -> 0.04, 0.0533, 0.0533, 0.2
    np.testing.assert_allclose(stats.bh_adjust(p), [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    assert stats.bh_adjust(np.array([])).size == 0


# -- through the real summaries, on both engines -------------------------------------------

N_RAW = 4000
SCHEMA = {
    "name": "acc",
    "task": "binary",
    "features": [
        {"name": "normal", "kind": "numeric"},
        {"name": "skewed", "kind": "numeric"},
        {"name": "bimodal", "kind": "numeric"},
        {"name": "steady", "kind": "numeric"},
        {"name": "grade", "kind": "numeric"},
        {"name": "color", "kind": "categorical"},
        {"name": "flag", "kind": "boolean"},
    ],
}


def _raw(rng: np.random.Generator, n: int, drift: bool) -> dict[str, np.ndarray]:
    s = 1.0 if drift else 0.0
    bimodal = np.where(rng.random(n) < 0.5 + 0.2 * s, rng.normal(-2, 0.5, n), rng.normal(2, 0.5, n))
    return {
        "normal": rng.normal(0.35 * s, 1 + 0.15 * s, n),
        "skewed": rng.lognormal(0.2 * s, 0.7, n),
        "bimodal": bimodal,
        "steady": rng.uniform(0, 10, n),
        "grade": rng.choice(
            [1.0, 2.0, 3.0, 4.0], n, p=[0.4, 0.3, 0.2, 0.1] if not drift else [0.3, 0.3, 0.2, 0.2]
        ),
        "color": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2] if not drift else [0.4, 0.3, 0.3]),
        "flag": rng.random(n) < (0.3 + 0.08 * s),
    }


def test_statistics_from_summaries_agree_with_scipy_and_evidently(event_engine: EventEngine) -> None:
    rng = np.random.default_rng(5)
    ref, cur = _raw(rng, N_RAW, False), _raw(rng, N_RAW, True)
    m = Loaded(event_engine, SCHEMA)
    m.reference(ref)
    m.predictions({"timestamp": days(N_RAW, 1), **cur})
    ctx, _ = m.runner.context(PROJECT, m.model, T0, T0 + DAY, DAY, now=T0 + 400 * DAY)
    live, whole = ctx.live["v1"], ctx.references["v1"].whole

    worst: dict[str, float] = {}
    for name in ("normal", "skewed", "bimodal", "steady"):
        a, b = ref[name], cur[name]
        r = methods.sample(whole, 0, name, ColumnKind.NUMERIC)
        c = methods.sample(live, 0, name, ColumnKind.NUMERIC)
        assert (r.n, c.n) == (N_RAW, N_RAW)

        def stat(method: str, rs: Sample = r, cs: Sample = c) -> float:
            mth = methods.get(method, ColumnKind.NUMERIC)
            return mth.statistic(mth.fit(rs), cs)[0]

        want_w = scipy.stats.wasserstein_distance(a, b) / np.std(a)
        rel = abs(stat("wasserstein") - want_w) / want_w
        assert rel < 0.02, (name, stat("wasserstein"), want_w)
        ks = scipy.stats.ks_2samp(a, b)
        assert abs(stat("ks") - ks.statistic) < 0.01, name
        sa, sb = pd.Series(a), pd.Series(b)
        for method, test in [("psi", psi_stat_test), ("jensen_shannon", jensenshannon_stat_test)]:
            want = float(test(sa, sb, NUM, None).drift_score)
            assert abs(stat(method) - want) < 0.01, (name, method, stat(method), want)
            worst[method] = max(worst.get(method, 0.0), abs(stat(method) - want))
        want_h = float(hellinger_stat_test(sa.copy(), sb.copy(), NUM, None).drift_score)
        assert abs(stat("hellinger") - want_h) < 0.02, (name, stat("hellinger"), want_h)
        worst["hellinger"] = max(worst.get("hellinger", 0.0), abs(stat("hellinger") - want_h))
        worst["wasserstein_rel"] = max(worst.get("wasserstein_rel", 0.0), rel)
        worst["ks"] = max(worst.get("ks", 0.0), abs(stat("ks") - ks.statistic))
    print("worst deviations from SciPy/Evidently:", worst)

    # few values: counted exactly in the summaries, so equal to Evidently to rounding
    for name, kind, ctype in [
        ("grade", ColumnKind.NUMERIC, NUM),
        ("color", ColumnKind.CATEGORICAL, CAT),
        ("flag", ColumnKind.CATEGORICAL, CAT),
    ]:
        r = methods.sample(whole, 0, name, kind)
        c = methods.sample(live, 0, name, kind)
        assert r.counted and c.counted, name
        sa = pd.Series(ref[name].astype(str) if kind is ColumnKind.CATEGORICAL else ref[name])
        sb = pd.Series(cur[name].astype(str) if kind is ColumnKind.CATEGORICAL else cur[name])
        for method, test in [
            ("psi", psi_stat_test),
            ("jensen_shannon", jensenshannon_stat_test),
            ("chi2", chi_stat_test),
            ("z", z_stat_test),
        ]:
            mth = methods.get(method, kind)
            got, p = mth.statistic(mth.fit(r), c)
            want = float(test(sa, sb, ctype, None).drift_score)
            assert (p if mth.test else got) == pytest.approx(want, rel=1e-6, abs=1e-12), (name, method)


def test_ks_sizes_cap_the_effective_size_and_keep_the_ratio() -> None:
    assert stats.ks_sizes(800, 1200) == (800, 1200)  # effective 480: as SciPy
    n1, n2 = stats.ks_sizes(1_000_000, 250_000)
    assert n1 * n2 / (n1 + n2) == pytest.approx(stats.KS_SUMMARY_MAX_N, rel=1e-3)
    assert n1 / n2 == pytest.approx(4.0, rel=1e-3)


N_LARGE = 300_000
LARGE = {
    "name": "large",
    "task": "binary",
    "features": [
        {"name": name, "kind": "numeric"} for name in ("normal", "skewed", "bimodal", "uniform", "shifted")
    ],
}


def _large(rng: np.random.Generator, n: int, current: bool) -> dict[str, np.ndarray]:
    return {
        "normal": rng.normal(0, 1, n),
        "skewed": rng.lognormal(0, 0.7, n),
        "bimodal": np.where(rng.random(n) < 0.5, rng.normal(-2, 0.5, n), rng.normal(2, 0.5, n)),
        "uniform": rng.uniform(0, 10, n),
        "shifted": rng.normal(0.1 if current else 0.0, 1, n),
    }


def test_ks_on_large_summarised_windows_judges_the_data_not_the_summary(event_engine: EventEngine) -> None:
    """300,000 rows a side: at full size, a p-value would judge the summaries' own error and flag columns that do not drift."""
    rng = np.random.default_rng(11)
    ref, cur = _large(rng, N_LARGE, False), _large(rng, N_LARGE, True)
    m = Loaded(event_engine, LARGE)
    m.reference(ref)
    # four busy hours: beyond TDIGEST_ROWS an hour's t-digest sees a sample of its rows
    m.predictions({"timestamp": T0 + np.arange(N_LARGE, dtype=np.int64) * 4 * 3600 // N_LARGE, **cur})
    ctx, _ = m.runner.context(PROJECT, m.model, T0, T0 + DAY, DAY, now=T0 + 400 * DAY)
    live, whole = ctx.live["v1"], ctx.references["v1"].whole
    ks = methods.get("ks", ColumnKind.NUMERIC)
    for name in LARGE["features"]:
        feature = name["name"]
        r = methods.sample(whole, 0, feature, ColumnKind.NUMERIC)
        c = methods.sample(live, 0, feature, ColumnKind.NUMERIC)
        assert (r.n, c.n) == (N_LARGE, N_LARGE)
        score = ks.score(ks.fit(r), c)
        want = scipy.stats.ks_2samp(ref[feature], cur[feature])
        assert abs(score.statistic - want.statistic) < 0.01, feature
        assert score.p_value is not None
        if feature == "shifted":  # a tenth of a standard deviation: D about 0.04
            assert score.drift and score.p_value < 1e-9 and want.pvalue < 1e-9, (feature, score)
        else:
            assert not score.drift and score.p_value > 0.2, (feature, score, want.pvalue)
