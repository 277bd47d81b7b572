"""The method registry: every method the defaults can choose is registered, the choice is
Evidently's, verdicts follow each method's threshold rule, and fitted state is plain data."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pandas as pd
import pytest
from evidently.legacy.calculations.stattests.registry import get_stattest
from evidently.legacy.core import ColumnType

from driftline.detectors import methods, stats
from driftline.detectors.methods import ColumnKind, Sample
from driftline.detectors.summaries import DISCRETE_MAX

EVIDENTLY_NAMES = {
    "ks": "ks",
    "chisquare": "chi2",
    "z": "z",
    "wasserstein": "wasserstein",
    "jensenshannon": "jensen_shannon",
}
ALL = {"psi", "ks", "wasserstein", "jensen_shannon", "chi2", "hellinger", "z"}


def raw_sample(values: np.ndarray, kind: ColumnKind, *, reference: np.ndarray | None = None) -> Sample:
    """A sample as the summaries would give it, built exactly from raw values (nulls dropped).

    Numeric columns are counted by value when the reference (or the sample itself, for a
    reference) has at most DISCRETE_MAX values, as the summaries do.
    """
    if kind is ColumnKind.CATEGORICAL:
        kept = values[pd.notna(values)].astype(str)
        keys, counts = np.unique(kept, return_counts=True)
        return Sample(int(counts.sum()), keys=keys, counts=counts.astype(np.int64))
    kept = values[~np.isnan(values)].astype(np.float64)
    v, c = np.unique(kept, return_counts=True)
    numeric = stats.Numeric.from_counts(v, c)
    basis = reference if reference is not None else values
    if len(np.unique(basis[~np.isnan(basis)])) <= DISCRETE_MAX:
        return Sample(len(kept), numeric, v.astype(str), c.astype(np.int64))
    return Sample(len(kept), numeric)


def test_every_method_the_defaults_can_choose_is_registered() -> None:
    registered = methods.registered()
    chosen: set[tuple[str, ColumnKind]] = set()
    for kind, n_ref, values, counted in itertools.product(
        ColumnKind, [5, 1000, 1001, 50_000], [1, 2, 3, 5, 6, 20, 200], [True, False]
    ):
        if kind is ColumnKind.CATEGORICAL and not counted:
            continue
        keys = np.array([f"{i}" for i in range(values)])
        counts = np.full(values, max(n_ref // values, 1), dtype=np.int64)
        numeric = stats.Numeric.from_counts(keys.astype(float), counts)
        ref = Sample(int(counts.sum()), numeric, keys if counted else None, counts if counted else None)
        cur = Sample(int(counts.sum()), numeric, keys if counted else None, counts if counted else None)
        chosen.add((methods.default_method(kind, ref, cur), kind))
    missing = chosen - set(registered)
    assert not missing, f"the defaults choose unregistered methods: {missing}"
    assert {name for name, _ in registered} == ALL
    assert {"ks", "chi2", "z", "wasserstein", "jensen_shannon"} <= {name for name, _ in chosen}


def test_every_registered_method_fits_and_scores_its_kind() -> None:
    rng = np.random.default_rng(0)
    samples = {
        ColumnKind.NUMERIC: (raw_sample(rng.integers(0, 4, 500).astype(float), ColumnKind.NUMERIC),) * 2,
        ColumnKind.CATEGORICAL: (
            raw_sample(rng.choice(["a", "b"], 500), ColumnKind.CATEGORICAL),
            raw_sample(rng.choice(["a", "b"], 400), ColumnKind.CATEGORICAL),
        ),
    }
    for (name, kind), method in methods.registered().items():
        ref, cur = samples[kind]
        score = method.score(method.fit(ref), cur)
        assert score.method == name and np.isfinite(score.statistic)
        assert (score.p_value is not None) == method.test


def test_unknown_method_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known"):
        methods.get("ks", ColumnKind.CATEGORICAL)


def _evidently_choice(ref: np.ndarray, cur: np.ndarray, kind: ColumnKind) -> str:
    ctype = ColumnType.Numerical if kind is ColumnKind.NUMERIC else ColumnType.Categorical
    r, c = pd.Series(ref).dropna(), pd.Series(cur).dropna()  # what get_one_column_drift passes on
    return EVIDENTLY_NAMES[get_stattest(r, c, ctype, None).name]


@pytest.mark.parametrize("n_ref", [300, 1000, 1001, 1150, 4000])
def test_default_method_is_evidentlys(n_ref: int) -> None:
    """Numeric and categorical, 1 to 40 values, with nulls that Evidently drops before choosing."""
    rng = np.random.default_rng(n_ref)
    checked = 0
    for n_values, new_in_current in itertools.product([1, 2, 3, 5, 6, 12, 40], [False, True]):
        ref = rng.integers(0, n_values, n_ref).astype(float)
        cur = rng.integers(0, n_values + int(new_in_current), 700).astype(float)
        ref[rng.random(n_ref) < 0.1] = np.nan  # 1150 rows with 10% nulls leave fewer than 1000 values
        for kind in ColumnKind:
            if kind is ColumnKind.CATEGORICAL:
                r = np.char.add("k", np.nan_to_num(ref).astype(int).astype(str)).astype(object)
                r[np.isnan(ref)] = None
                c = np.char.add("k", cur.astype(int).astype(str)).astype(object)
            else:
                r, c = ref, cur
            want = _evidently_choice(r, c, kind)
            got = methods.default_method(kind, raw_sample(r, kind), raw_sample(c, kind, reference=r))
            assert got == want, (kind, n_ref, n_values, new_in_current)
            checked += 1
    assert checked == 28


def test_verdict_rules_follow_evidently() -> None:
    ks, chi2 = methods.get("ks", ColumnKind.NUMERIC), methods.get("chi2", ColumnKind.CATEGORICAL)
    js = methods.get("jensen_shannon", ColumnKind.CATEGORICAL)
    assert ks.verdict(0.3, 0.05, 0.05)  # KS: p <= threshold
    assert not chi2.verdict(9.0, 0.05, 0.05)  # chi-square and Z: p < threshold
    assert js.verdict(0.1, None, 0.1)  # distances: statistic >= threshold
    assert not js.verdict(0.0999, None, 0.1)


def test_threshold_override_and_score_fields() -> None:
    rng = np.random.default_rng(1)
    ref = raw_sample(rng.normal(size=3000), ColumnKind.NUMERIC)
    cur = raw_sample(rng.normal(0.1, 1, 2000), ColumnKind.NUMERIC)
    w = methods.get("wasserstein", ColumnKind.NUMERIC)
    fitted = w.fit(ref)
    default = w.score(fitted, cur)
    strict = w.score(fitted, cur, threshold=0.05)
    assert default.threshold == 0.1 and strict.threshold == 0.05
    assert 0.05 < default.statistic < 0.1
    assert not default.drift and strict.drift
    assert (default.n_reference, default.n_current, default.p_value) == (3000, 2000, None)


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biufU"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all(_plain(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def test_fitted_state_is_plain_data_and_the_band_is_the_chunks_mean_and_sigma() -> None:
    rng = np.random.default_rng(2)
    whole = rng.normal(size=5000)
    ref = raw_sample(whole, ColumnKind.NUMERIC)
    chunks = [raw_sample(part, ColumnKind.NUMERIC) for part in np.array_split(whole, 10)]
    for name in ("wasserstein", "ks", "psi", "jensen_shannon", "hellinger"):
        method = methods.get(name, ColumnKind.NUMERIC)
        fitted = method.learn(method.fit(ref), chunks, k=3.0)
        assert _plain(fitted), name
        per_chunk = np.array([method.statistic(method.fit(ref), c)[0] for c in chunks])
        assert fitted.band is not None
        assert fitted.band.mean == pytest.approx(per_chunk.mean())
        assert fitted.band.sigma == pytest.approx(per_chunk.std())
        assert fitted.band.upper == pytest.approx(per_chunk.mean() + 3 * per_chunk.std())
        drifted = raw_sample(rng.normal(0.5, 1, 2000), ColumnKind.NUMERIC)
        score = method.score(fitted, drifted)
        assert score.drift and score.threshold == fitted.band.upper and score.band == fitted.band


def test_counting_methods_refuse_a_numeric_column_not_counted_by_value() -> None:
    rng = np.random.default_rng(3)
    ref = raw_sample(rng.normal(size=500), ColumnKind.NUMERIC)
    with pytest.raises(ValueError, match="counted by value"):
        methods.get("chi2", ColumnKind.NUMERIC).fit(ref)
