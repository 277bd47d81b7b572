"""Drift families end to end: raw rows into a real store, the Runner, results read back.

Three data sets are run through Evidently 0.7's DataDriftPreset too, and every column
must get Evidently's method and verdict. Synthetic scenarios with known truth (seeded)
check that drift is flagged in the right windows and that steady data rarely is.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset
from pydantic import ValidationError

from driftline.detectors import registry
from driftline.detectors.feature_drift import (
    DatasetDriftConfig,
    FeatureDriftConfig,
    PredictionDriftConfig,
)
from driftline.storage.events import EventEngine
from tests.detectors import DAY, T0, Loaded, days

EVIDENTLY_METHODS = {
    "K-S p_value": "ks",
    "chi-square p_value": "chi2",
    "Z-test p_value": "z",
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensen_shannon",
}


# -- agreement with Evidently's DataDriftPreset --------------------------------------------


@dataclass(frozen=True)
class Case:
    numeric: dict[str, tuple[np.ndarray, np.ndarray]]
    categorical: dict[str, tuple[np.ndarray, np.ndarray]]


def _nulls(x: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    out = x.astype(object) if x.dtype.kind in "OUb" else x.astype(float)
    mask = rng.random(len(x)) < share
    out[mask] = None if out.dtype == object else np.nan
    return out


def _case(name: str) -> Case:
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "small":  # 800 reference rows: KS, chi-square and Z-tests
        r, c = 800, 600
        return Case(
            numeric={
                "x": (rng.normal(size=r), rng.normal(0.35, 1, c)),
                "y": (rng.normal(size=r), rng.normal(size=c)),
                "u": (_nulls(rng.uniform(0, 10, r), 0.1, rng), _nulls(rng.uniform(0, 10, c), 0.1, rng)),
                "k": (
                    rng.choice([0.0, 1.0, 2.0], r, p=[0.5, 0.3, 0.2]),
                    rng.choice([0.0, 1.0, 2.0], c, p=[0.3, 0.3, 0.4]),
                ),
                "b": (rng.choice([0.0, 1.0], r), rng.choice([0.0, 1.0], c)),
            },
            categorical={
                "c": (
                    rng.choice(list("abcd"), r, p=[0.4, 0.3, 0.2, 0.1]),
                    rng.choice(list("abcd"), c, p=[0.2, 0.3, 0.3, 0.2]),
                ),
                "d": (rng.choice(["yes", "no"], r), rng.choice(["yes", "no"], c)),
                "e": (rng.choice(list("pqr"), r), rng.choice(list("pqr"), c)),
            },
        )
    if name == "large":  # 4000 reference rows: Wasserstein and Jensen-Shannon
        r, c = 4000, 3000
        return Case(
            numeric={
                "x": (rng.normal(size=r), rng.normal(size=c)),
                "y": (rng.normal(size=r), rng.normal(0.3, 1, c)),
                "s": (rng.lognormal(0, 0.5, r), rng.lognormal(0, 0.5, c) * 1.3),
                "k": (
                    rng.choice([1.0, 2.0, 3.0, 4.0], r, p=[0.4, 0.3, 0.2, 0.1]),
                    rng.choice([1.0, 2.0, 3.0, 4.0], c, p=[0.1, 0.2, 0.3, 0.4]),
                ),
                "m": (rng.integers(0, 10, r).astype(float), rng.integers(0, 10, c).astype(float)),
                "g": (rng.integers(0, 15, r).astype(float), rng.integers(2, 17, c).astype(float)),
            },
            categorical={
                "c": (
                    rng.choice(["red", "green", "blue"], r),
                    rng.choice(["red", "green", "blue", "violet"], c, p=[0.25, 0.25, 0.25, 0.25]),
                ),
                "d": (rng.choice(list("vwxyz"), r), rng.choice(list("vwxyz"), c)),
            },
        )
    # "nulls": 1150 reference rows of which about 15% are null, so fewer than 1000 values: tests again
    r, c = 1150, 2500
    return Case(
        numeric={
            "x": (_nulls(rng.normal(size=r), 0.15, rng), _nulls(rng.normal(size=c), 0.15, rng)),
            "y": (_nulls(rng.normal(size=r), 0.15, rng), _nulls(rng.normal(0.3, 1, c), 0.15, rng)),
            "k": (
                _nulls(rng.integers(0, 5, r).astype(float), 0.15, rng),
                rng.integers(0, 5, c).astype(float),
            ),
            "w": (rng.gamma(2.0, 1.0, r), rng.gamma(2.0, 1.3, c)),
        },
        categorical={
            "c": (
                _nulls(rng.choice(list("abcdef"), r), 0.15, rng),
                rng.choice(list("abcde"), c),
            ),
            "f": (_nulls(rng.choice(["t", "f"], r), 0.15, rng), _nulls(rng.choice(["t", "f"], c), 0.3, rng)),
        },
    )


@functools.cache
def _evidently(name: str) -> tuple[dict[str, tuple[str, float, bool]], float]:
    """Per column (method, drift score, drifted) and the share of drifted columns, from Evidently."""
    case = _case(name)
    frames = []
    for side in (0, 1):
        cols: dict[str, Any] = {k: pd.Series(v[side], dtype=float) for k, v in case.numeric.items()}
        cols.update({k: pd.Series(v[side], dtype=object) for k, v in case.categorical.items()})
        frames.append(pd.DataFrame(cols))
    definition = DataDefinition(
        numerical_columns=list(case.numeric), categorical_columns=list(case.categorical)
    )
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        Dataset.from_pandas(frames[1], data_definition=definition),
        Dataset.from_pandas(frames[0], data_definition=definition),
    )
    out = snapshot.dict()
    scores = {}
    share = 0.0
    for m in out["metrics"]:
        config = m["config"]
        if config["type"].endswith("ValueDrift"):
            scores[config["column"]] = (EVIDENTLY_METHODS[config["method"]], float(m["value"]))
        elif config["type"].endswith("DriftedColumnsCount"):
            share = float(m["value"]["share"])
    verdicts = {}
    for t in out["tests"]:
        params = t["metric_config"]["params"]
        if params["type"].endswith("ValueDrift"):
            verdicts[params["column"]] = t["status"] == "FAIL"
    return {col: (*scores[col], verdicts[col]) for col in scores}, share


def _arrow(values: np.ndarray, numeric: bool) -> pa.Array:
    if numeric:
        arr = np.asarray(values, dtype=float)
        return pa.array(arr, mask=np.isnan(arr))
    return pa.array([None if v is None else str(v) for v in values], pa.string())


@pytest.mark.parametrize("name", ["small", "large", "nulls"])
def test_same_methods_and_verdicts_as_evidently(event_engine: EventEngine, name: str) -> None:
    case = _case(name)
    schema = {
        "name": f"ev{name}",
        "task": "binary",
        "features": [{"name": k, "kind": "numeric"} for k in case.numeric]
        + [{"name": k, "kind": "categorical"} for k in case.categorical],
    }
    m = Loaded(event_engine, schema)
    m.reference(
        {k: _arrow(v[0], True) for k, v in case.numeric.items()}
        | {k: _arrow(v[0], False) for k, v in case.categorical.items()}
    )
    n = len(next(iter(case.numeric.values()))[1])
    m.predictions(
        {"timestamp": days(n, 1)}
        | {k: _arrow(v[1], True) for k, v in case.numeric.items()}
        | {k: _arrow(v[1], False) for k, v in case.categorical.items()}
    )
    rows = m.run([FeatureDriftConfig(), DatasetDriftConfig()], T0, T0 + DAY)
    want, want_share = _evidently(name)
    got = {r["feature"]: r for r in rows if r["detector"] == "feature_drift" and r["slice"] == ""}
    assert set(got) == set(want)
    for column, (method, score, drifted) in want.items():
        row = got[column]
        assert row["status"] == "ok", row
        assert row["metric"] == method, (column, row["metric"], method)
        assert row["alert"] == drifted, (column, method, row["value"], row["details"], score)
        ours = row["details"]["p_value"] if "p_value" in row["details"] else row["value"]
        if method in ("chi2", "z"):  # value counts are exact in the summaries
            assert ours == pytest.approx(score, rel=1e-6, abs=1e-12), column
        elif method == "wasserstein":
            assert ours == pytest.approx(score, rel=0.02, abs=0.002), column
        elif method == "jensen_shannon":
            assert abs(ours - score) < 0.01, column
        else:  # KS p-values from t-digest quantiles: same verdict, same order of magnitude near 0.05
            assert (ours < 1e-6) == (score < 1e-6) or abs(np.log10(ours) - np.log10(score)) < 1.5, column
    share = [r for r in rows if r["detector"] == "dataset_drift"]
    assert len(share) == 1 and share[0]["value"] == pytest.approx(want_share)
    assert share[0]["alert"] == (want_share >= 0.5)
    for r in rows:
        json.dumps(r["details"], allow_nan=False)


# -- synthetic scenarios with known truth ---------------------------------------------------

N_DAYS = 10
PER_DAY = 2000
SCENARIO: dict[str, Any] = {
    "name": "scenario",
    "task": "binary",
    "features": [
        {"name": "sudden", "kind": "numeric"},
        {"name": "gradual", "kind": "numeric"},
        {"name": "color", "kind": "categorical"},
        {"name": "device", "kind": "categorical"},
        {"name": "steady_normal", "kind": "numeric"},
        {"name": "steady_skewed", "kind": "numeric"},
        {"name": "steady_uniform", "kind": "numeric"},
        {"name": "plan", "kind": "categorical"},
        {"name": "level", "kind": "numeric"},
        {"name": "vip", "kind": "boolean"},
    ],
    "metadata": [{"name": "channel"}],
}
SUDDEN_DAY, SLICE_DAY, NEW_CATEGORY_DAY, SCORE_DAY = 4, 3, 5, 6
STEADY = ["steady_normal", "steady_skewed", "steady_uniform", "plan", "level", "vip"]


def _scenario_rows(rng: np.random.Generator, n: int, day: np.ndarray | None) -> dict[str, Any]:
    """Rows of the scenario; `day` None makes the reference (day -1: before every change)."""
    d = np.full(n, -1) if day is None else day
    app = rng.random(n) < 0.05
    color = rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2])
    color[(d >= NEW_CATEGORY_DAY) & (rng.random(n) < 0.2)] = "violet"
    ios_share = np.where(app & (d >= SLICE_DAY), 0.9, 0.5)
    score = rng.beta(2, 5, n)
    score[d >= SCORE_DAY] = rng.beta(3, 3, int((d >= SCORE_DAY).sum()))
    return {
        "sudden": rng.normal(size=n) + 0.6 * (d >= SUDDEN_DAY),
        "gradual": rng.normal(size=n) + 0.06 * np.maximum(d, 0),
        "color": color,
        "device": np.where(rng.random(n) < ios_share, "ios", "android"),
        "steady_normal": rng.normal(5, 2, n),
        "steady_skewed": rng.lognormal(0, 0.8, n),
        "steady_uniform": rng.uniform(-1, 1, n),
        "plan": rng.choice(["free", "pro", "team", "enterprise"], n, p=[0.6, 0.25, 0.1, 0.05]),
        "level": rng.choice([1.0, 2.0, 3.0, 4.0], n),
        "vip": rng.random(n) < 0.1,
        "channel": np.where(app, "app", "web"),
        "score": score,
        "prediction": np.where(score > 0.5, "1", "0"),
    }


def _load_scenario(engine: EventEngine, features: list[str] | None = None) -> Loaded:
    """The scenario's model and rows, or only some of its features (a lighter load)."""
    rng = np.random.default_rng(2024)
    schema = dict(SCENARIO)
    if features is not None:
        schema["features"] = [f for f in SCENARIO["features"] if f["name"] in features]
    keep = {f["name"] for f in schema["features"]} | {"channel", "score", "prediction"}
    m = Loaded(engine, schema)
    m.reference({k: v for k, v in _scenario_rows(rng, 5000, None).items() if k in keep})
    ts = days(PER_DAY, N_DAYS)
    rows = _scenario_rows(rng, len(ts), (ts - T0) // DAY)
    m.predictions({"timestamp": ts, **{k: v for k, v in rows.items() if k in keep}})
    return m


def _series(
    rows: list[dict[str, Any]], detector: str, feature: str, slice_: str = ""
) -> list[dict[str, Any]]:
    out = [r for r in rows if r["detector"] == detector and r["feature"] == feature and r["slice"] == slice_]
    return sorted(out, key=lambda r: r["window_start"])


def _flagged_days(series: list[dict[str, Any]], key: str = "alert") -> list[int]:
    return [
        (r["window_start"] - T0) // DAY
        for r in series
        if (r[key] if key == "alert" else r["details"].get(key))
    ]


def test_scenarios_are_flagged_in_the_right_windows(event_engine: EventEngine) -> None:
    m = _load_scenario(event_engine)
    rows = m.run([FeatureDriftConfig(), PredictionDriftConfig(), DatasetDriftConfig()], T0, T0 + N_DAYS * DAY)
    for r in rows:
        json.dumps(r["details"], allow_nan=False)
    everything = list(range(N_DAYS))

    # sudden drift at a known day
    sudden = _series(rows, "feature_drift", "sudden")
    assert [r["metric"] for r in sudden] == ["wasserstein"] * N_DAYS
    assert _flagged_days(sudden) == everything[SUDDEN_DAY:]

    # gradual drift: the statistic climbs with the shift; early days quiet, late days flagged
    gradual = _series(rows, "feature_drift", "gradual")
    values = np.array([r["value"] for r in gradual])
    assert np.corrcoef(values, np.arange(N_DAYS))[0, 1] > 0.95
    flagged = _flagged_days(gradual)
    assert flagged == everything[flagged[0] :] and 2 <= flagged[0] <= 4, flagged

    # a new category: Jensen-Shannon flags exactly the days it is there
    color = _series(rows, "feature_drift", "color")
    assert {r["metric"] for r in color} == {"jensen_shannon"}
    assert _flagged_days(color) == everything[NEW_CATEGORY_DAY:]

    # drift inside one slice only: the app slice (5% of traffic), compared with the app slice of the
    # reference (about 250 rows: tests, so read with the adjusted verdict), flags; web and overall do not
    app = _series(rows, "feature_drift", "device", "channel=app")
    assert {r["details"]["reference_slice"] for r in app} == {"channel=app"}
    assert {r["metric"] for r in app} == {"z"}
    assert _flagged_days(app, "drift_adjusted") == everything[SLICE_DAY:]
    assert _flagged_days(_series(rows, "feature_drift", "device", "channel=web")) == []
    assert _flagged_days(_series(rows, "feature_drift", "device")) == []

    # the model's outputs
    assert _flagged_days(_series(rows, "prediction_drift", "@score")) == everything[SCORE_DAY:]
    assert {r["feature"] for r in rows if r["detector"] == "prediction_drift"} == {"@score", "@prediction"}

    # steady features: at most 5% of feature-windows flagged, overall and in each slice
    quiet = [
        r
        for r in rows
        if r["detector"] == "feature_drift"
        and (r["feature"] in STEADY or (r["feature"] == "device" and r["slice"] != "channel=app"))
    ]
    overall_web = [r for r in quiet if r["slice"] != "channel=app"]
    app_quiet = [r for r in quiet if r["slice"] == "channel=app"]
    assert len(overall_web) == 2 * N_DAYS * (len(STEADY) + 1)
    assert sum(r["alert"] for r in overall_web) <= 0.05 * len(overall_web)
    assert sum(r["details"]["drift_adjusted"] for r in app_quiet) <= 0.05 * len(app_quiet)

    # dataset drift: the share of drifted features, below one half on every day here
    share = _series(rows, "dataset_drift", "")
    assert [r["value"] for r in share] == [
        sum(
            r["alert"]
            for r in rows
            if r["detector"] == "feature_drift"
            and r["slice"] == ""
            and r["window_start"] == s["window_start"]
        )
        / len(SCENARIO["features"])
        for s in share
    ]
    assert not any(r["alert"] for r in share)
    assert share[-1]["details"]["drifted"] == ["sudden", "gradual", "color"]


def test_threshold_learned_from_reference_chunks(event_engine: EventEngine) -> None:
    m = _load_scenario(event_engine, ["sudden", "steady_normal", "color"])
    config = FeatureDriftConfig(strategy="reference_chunks")
    rows = m.run([config], T0, T0 + N_DAYS * DAY)
    sudden = _series(rows, "feature_drift", "sudden")
    assert _flagged_days(sudden) == list(range(SUDDEN_DAY, N_DAYS))
    d = sudden[0]["details"]
    assert d["strategy"] == "reference_chunks" and d["chunks"] == 10 and d["k"] == 3.0
    assert sudden[0]["threshold"] == pytest.approx(d["mean"] + 3 * d["sigma"])
    assert d["sigma"] > 0 and d["threshold_on"] == "statistic"
    assert _flagged_days(_series(rows, "feature_drift", "steady_normal")) == []
    assert {r["feature"] for r in rows} == {"sudden", "steady_normal", "color"}


def test_no_drift_with_a_small_reference_and_adjusted_p_values(event_engine: EventEngine) -> None:
    """With 600 reference rows every column gets a test at p < 0.05, so one window in twenty is
    flagged on steady data, more when every window shares one small reference (here 12 of 84,
    the same verdicts SciPy's exact KS gives); Benjamini-Hochberg keeps the adjusted verdicts quiet."""
    rng = np.random.default_rng(7)
    schema = {
        "name": "quiet",
        "task": "regression",
        "features": [{"name": f"n{i}", "kind": "numeric"} for i in range(5)]
        + [{"name": "lvl", "kind": "numeric"}, {"name": "cat", "kind": "categorical"}],
    }

    def rows(n: int) -> dict[str, Any]:
        out: dict[str, Any] = {f"n{i}": rng.normal(i, 1 + i, n) for i in range(5)}
        out["lvl"] = rng.choice([0.0, 1.0, 2.0], n)
        out["cat"] = rng.choice(list("abcd"), n)
        out["prediction"] = rng.normal(size=n)
        return out

    m = Loaded(event_engine, schema)
    m.reference(rows(600))
    ts = days(300, 12)
    m.predictions({"timestamp": ts, **rows(len(ts))})
    got = m.run([FeatureDriftConfig(), PredictionDriftConfig()], T0, T0 + 12 * DAY)
    features = [r for r in got if r["detector"] == "feature_drift"]
    assert len(features) == 7 * 12
    assert {r["metric"] for r in features} == {"ks", "chi2"}
    raw = sum(r["alert"] for r in features)
    adjusted = sum(r["details"]["drift_adjusted"] for r in features)
    assert adjusted <= 0.05 * len(features) < raw, (raw, adjusted)
    for r in features:
        d = r["details"]
        assert d["p_adjusted"] >= d["p_value"] and d["threshold_on"] == "p_value"
        assert d["reference_size"] == 600 and r["sample_size"] == 300
    assert {r["feature"] for r in got if r["detector"] == "prediction_drift"} == {"@prediction"}


def test_no_reference_and_small_windows_give_no_data_with_a_reason(event_engine: EventEngine) -> None:
    rng = np.random.default_rng(8)
    schema = {"name": "bare", "task": "binary", "features": [{"name": "x", "kind": "numeric"}]}
    m = Loaded(event_engine, schema)
    m.predictions({"timestamp": days(50, 2), "x": rng.normal(size=100), "score": rng.random(100)})
    rows = m.run([FeatureDriftConfig(), DatasetDriftConfig()], T0, T0 + 2 * DAY)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"no_data"}
    assert all(r["value"] is None and not r["alert"] for r in rows)
    assert all("no reference" in r["details"]["reason"] for r in rows if r["detector"] == "feature_drift")

    m.reference({"x": rng.normal(size=2000), "score": rng.random(2000)})
    config = FeatureDriftConfig(min_samples=60)
    rows = m.run([config], T0, T0 + 2 * DAY)
    x = [r for r in _series(rows, "feature_drift", "x") if r["detector_id"] == config.id]
    assert [r["status"] for r in x] == ["no_data", "no_data"]
    assert all("min_samples=60" in r["details"]["reason"] and r["sample_size"] == 50 for r in x)
    assert {r["metric"] for r in x} == {"wasserstein"}


def test_overrides_multiclass_outputs_and_config_validation(event_engine: EventEngine) -> None:
    rng = np.random.default_rng(9)
    schema = {
        "name": "multi",
        "task": "multiclass",
        "features": [{"name": "x", "kind": "numeric"}, {"name": "c", "kind": "categorical"}],
        "label": {"classes": ["a", "b", "c"]},
    }
    m = Loaded(event_engine, schema)

    def rows(n: int, shift: float) -> dict[str, Any]:
        probs = rng.dirichlet([2, 2, 2 + 4 * shift], n)
        return {
            "x": rng.normal(shift, 1, n),
            "c": rng.choice(["u", "v"], n),
            "prediction": np.array(["a", "b", "c"])[probs.argmax(axis=1)],
            "score_a": probs[:, 0],
            "score_b": probs[:, 1],
            "score_c": probs[:, 2],
        }

    m.reference(rows(3000, 0.0))
    m.predictions({"timestamp": days(1500, 1), **rows(1500, 1.0)})
    config = FeatureDriftConfig(methods={"x": "psi", "c": "hellinger"}, thresholds={"psi": 0.2})
    got = m.run([config, PredictionDriftConfig()], T0, T0 + DAY)
    x = _series(got, "feature_drift", "x")[0]
    assert (x["metric"], x["threshold"], x["alert"]) == ("psi", 0.2, True)
    assert _series(got, "feature_drift", "c")[0]["metric"] == "hellinger"
    outputs = {r["feature"]: r for r in got if r["detector"] == "prediction_drift"}
    assert set(outputs) == {"@prediction", "@score:a", "@score:b", "@score:c"}
    assert outputs["@score:c"]["alert"] and outputs["@prediction"]["alert"]

    with pytest.raises(ValidationError, match="unknown method"):
        FeatureDriftConfig(methods={"x": "magic"})
    with pytest.raises(ValidationError):
        FeatureDriftConfig(k=0)
    assert FeatureDriftConfig().id == FeatureDriftConfig().id != FeatureDriftConfig(k=2).id
    assert {"feature_drift", "prediction_drift", "dataset_drift"} <= set(registry.kinds())
