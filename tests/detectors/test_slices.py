"""Slice performance end to end: raw rows, labels and a labelled reference, the Runner, the metrics table.

One data set holds two planted failures on steady overall accuracy: the `partner` channel
degrades in some windows, and one pair (`channel=app&country=DE`) degrades in others while
the rest of `app` and of `DE` improve just enough that neither single slice moves. A second
data set changes nothing over many slices and pairs: alerts must stay rare.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats
from pydantic import ValidationError
from sklearn.metrics import accuracy_score, f1_score, precision_score

from driftline.detectors import registry
from driftline.detectors.base import DetectorConfig
from driftline.detectors.results import MetricsQuery
from driftline.detectors.slices import (
    DISCOVERED,
    DISCOVERED_COUNT,
    Estimate,
    SlicePerformanceConfig,
    estimate,
    wilson,
    worse_p,
)
from driftline.ingest.columns import RowErrors
from driftline.ingest.records import ArrowSource, build_labels
from driftline.storage.events import EventEngine, Kind
from tests.detectors import NOW, PROJECT, T0, Loaded

HOUR = 3600
STEP = 6 * HOUR
BASE = 0.85

SCHEMA: dict[str, Any] = {
    "name": "sl",
    "task": "binary",
    "features": [{"name": "x", "kind": "numeric"}, {"name": "country", "kind": "categorical"}],
    "metadata": [{"name": "channel"}],
}
CHANNELS = np.array(["web", "app", "store", "partner"])
COUNTRIES = np.array(["FR", "DE", "US", "ES", "IT"])
SLICE_WINDOWS = {8, 9, 10}  # channel=partner degrades
PAIR_WINDOWS = {4, 5, 6}  # channel=app & country=DE degrades
WINDOWS = 14


def _rows(
    rng: np.random.Generator, ts: np.ndarray, fields: dict[str, np.ndarray], accuracy: np.ndarray
) -> dict[str, Any]:
    """Rows whose prediction is right with the given per-row probability; labels balanced."""
    n = len(ts)
    y = rng.random(n) < 0.4
    right = rng.random(n) < accuracy
    pred = np.where(right, y, ~y)
    u = rng.random(n)
    score = np.where(pred, 0.5 + 0.5 * u, 0.5 * u)
    return {
        "timestamp": ts,
        "x": rng.normal(size=n),
        "score": score,
        "label": np.where(y, "1", "0"),
        **fields,
    }


def planted(seed: int = 7, per_window: int = 2000) -> tuple[dict[str, Any], dict[str, Any]]:
    """(live rows, reference rows): accuracy 0.85 everywhere except the planted failures."""
    rng = np.random.default_rng(seed)
    n = per_window * WINDOWS
    window = np.repeat(np.arange(WINDOWS), per_window)
    ts = T0 + window * STEP + rng.integers(0, STEP, n)
    channel = rng.choice(CHANNELS, n, p=[0.4, 0.3, 0.2, 0.1])
    country = rng.choice(COUNTRIES, n)
    acc = np.full(n, BASE)
    # partner (10% of rows) drops to 0.6; the others rise so that the window holds at 0.85
    sliced = np.isin(window, list(SLICE_WINDOWS))
    acc[sliced & (channel == "partner")] = 0.6
    acc[sliced & (channel != "partner")] = (BASE - 0.1 * 0.6) / 0.9
    # app & DE drops to 0.5; the rest of app and of DE rise so that neither single slice moves
    paired = np.isin(window, list(PAIR_WINDOWS))
    app, de = channel == "app", country == "DE"
    acc[paired & app & de] = 0.5
    acc[paired & app & ~de] = (BASE - 0.2 * 0.5) / 0.8
    acc[paired & de & ~app] = (BASE - 0.3 * 0.5) / 0.7
    live = _rows(rng, ts, {"channel": channel, "country": country}, acc)
    m = 20_000
    ref = _rows(
        rng,
        T0 - 30 * 86_400 + np.arange(m),
        {"channel": rng.choice(CHANNELS, m, p=[0.4, 0.3, 0.2, 0.1]), "country": rng.choice(COUNTRIES, m)},
        np.full(m, BASE),
    )
    return live, ref


def load(engine: EventEngine, schema: dict[str, Any], live: dict[str, Any], ref: dict[str, Any]) -> Loaded:
    """Predictions, their labels (all of them) and a labelled reference in a real store."""
    data = Loaded(engine, schema)
    data.predictions({k: v for k, v in live.items() if k != "label"})
    n = len(live["timestamp"])
    raw = pa.table({"request_id": [f"r{i}" for i in range(n)], "label": live["label"]})
    labels = build_labels(data.schema, ArrowSource(raw), RowErrors(), now=NOW, max_future=0).table
    data.store.insert(Kind.LABELS, PROJECT, data.schema, labels)
    data.reference(ref)
    return data


def run(
    data: Loaded, configs: Sequence[DetectorConfig], start: int, end: int, step: int
) -> list[dict[str, Any]]:
    """Run the detectors through the Runner and read every row back from the metrics table."""
    result = data.runner.run(PROJECT, data.model, configs, start, end, step, now=NOW)
    assert not result.errors, result.errors
    return data.runner.metrics.read(MetricsQuery(project=PROJECT, model=data.schema.name))


def by(rows: list[dict[str, Any]], config: SlicePerformanceConfig) -> list[dict[str, Any]]:
    return [r for r in rows if r["detector_id"] == config.id]


def window_of(row: dict[str, Any]) -> int:
    return (int(row["window_start"]) - T0) // STEP


@pytest.fixture(scope="module")
def planted_data() -> tuple[dict[str, Any], dict[str, Any]]:
    return planted()


# -- pure helpers ----------------------------------------------------------------------------------


def test_wilson_matches_a_direct_computation_and_statsmodels() -> None:
    """Wilson's score interval: the textbook formula, and statsmodels' proportion_confint."""
    k = np.array([0.0, 1.0, 17.0, 45.0, 50.0, 812.0])
    n = np.array([10.0, 3.0, 40.0, 50.0, 50.0, 1000.0])
    z = float(scipy.stats.norm.ppf(0.975))
    lo, hi = wilson(k, n, z)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    np.testing.assert_allclose(lo, centre - half, atol=1e-12)
    np.testing.assert_allclose(hi, centre + half, atol=1e-12)
    smstats = pytest.importorskip("statsmodels.stats.proportion")
    want_lo, want_hi = smstats.proportion_confint(k, n, alpha=0.05, method="wilson")
    np.testing.assert_allclose(lo, want_lo, atol=1e-12)
    np.testing.assert_allclose(hi, want_hi, atol=1e-12)
    nan_lo, nan_hi = wilson(np.array([0.0]), np.array([0.0]), z)
    assert np.isnan(nan_lo).all() and np.isnan(nan_hi).all()


def test_fisher_p_value_is_scipys() -> None:
    """The one-sided test of a proportion against another is Fisher's exact test, vectorised."""
    k1, n1, k2, n2 = 30, 60, 400, 500
    cm = np.array([[[k1, n1 - k1], [0, 0]], [[k2, n2 - k2], [0, 0]]], dtype=np.float64)  # right: diagonal
    a, b = estimate("accuracy", cm[0]), estimate("accuracy", cm[1])
    got = float(worse_p(a, b))
    want = scipy.stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="less").pvalue
    assert got == pytest.approx(want, rel=1e-9)
    mae_a = Estimate("mae", np.array(2.0), np.array(0.1), np.array(100.0), np.array(100.0))
    mae_b = Estimate("mae", np.array(1.8), np.array(0.05), np.array(900.0), np.array(900.0))
    z = 0.2 / np.sqrt(0.1**2 + 0.05**2)
    assert float(worse_p(mae_a, mae_b)) == pytest.approx(scipy.stats.norm.sf(z))


def test_f1_and_its_error() -> None:
    """F1 from confusion counts is scikit-learn's; its delta-method error matches resampling."""
    rng = np.random.default_rng(2)
    y = rng.random(3000) < 0.3
    pred = np.where(rng.random(3000) < 0.8, y, ~y)
    cm = np.zeros((2, 2))
    np.add.at(cm, (pred.astype(int), y.astype(int)), 1)
    got = estimate("f1", cm, positive=1)
    assert float(got.value) == pytest.approx(f1_score(y, pred), abs=1e-12)
    cells = rng.multinomial(3000, (cm / cm.sum()).ravel(), size=4000).reshape(-1, 2, 2).astype(np.float64)
    spread = float(np.std(estimate("f1", cells, positive=1).value))
    assert float(got.se) == pytest.approx(spread, rel=0.08)


def test_config_is_registered_and_validated() -> None:
    assert registry.kinds()["slice_performance"] is SlicePerformanceConfig
    with pytest.raises(ValidationError):
        SlicePerformanceConfig.model_validate({"important": [{"slice": "channel=web"}]})
    with pytest.raises(ValidationError):
        SlicePerformanceConfig.model_validate({"important": [{"slice": "nonsense", "min": 0.5}]})
    cfg = SlicePerformanceConfig.model_validate({"important": [{"slice": "a=x&b=y", "max_drop": 0.1}]})
    assert cfg.important[0].max_drop == 0.1


# -- planted failures ------------------------------------------------------------------------------


def test_planted_slice_and_pair(
    event_engine: EventEngine, planted_data: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    live, ref = planted_data
    data = load(event_engine, SCHEMA, live, ref)
    default = SlicePerformanceConfig()
    important = SlicePerformanceConfig(
        important=[
            {"slice": "channel=partner", "min": 0.75},
            {"slice": "country=XX", "min": 0.5},  # never seen: reported with no data
            {"slice": "channel=app&country=DE", "max_drop": 0.2},
        ],
        discovery=False,
    )
    precision = SlicePerformanceConfig(metric="precision", discovery=False)
    rows = run(data, [default, important, precision], T0, T0 + WINDOWS * STEP, STEP)
    mine = by(rows, default)
    assert mine and {r["status"] for r in mine} == {"ok"}
    for r in rows:
        json.dumps(r["details"], allow_nan=False)

    ts = live["timestamp"]
    truth = live["label"]
    pred = np.where(live["score"] >= 0.5, "1", "0")
    z = float(scipy.stats.norm.ppf(0.975))

    # values and Wilson intervals against the raw rows, slice by slice
    checked = 0
    for r in mine:
        if r["metric"] != "accuracy" or not r["slice"]:
            continue
        field, _, value = r["slice"].partition("=")
        lo = int(r["window_start"])
        sel = (ts >= lo) & (ts < lo + STEP) & (live[field] == value)
        assert r["sample_size"] == int(sel.sum())
        assert r["value"] == pytest.approx(accuracy_score(truth[sel], pred[sel]), abs=1e-12)
        k = float((truth[sel] == pred[sel]).sum())
        want_lo, want_hi = wilson(np.array(k), np.array(float(sel.sum())), z)
        assert r["details"]["interval"] == pytest.approx([float(want_lo), float(want_hi)], abs=1e-12)
        checked += 1
    assert checked == WINDOWS * (len(CHANNELS) + len(COUNTRIES))
    for r in by(rows, precision):
        if r["slice"] == "channel=web" and window_of(r) == 3:
            lo = int(r["window_start"])
            sel = (ts >= lo) & (ts < lo + STEP) & (live["channel"] == "web")
            assert r["metric"] == "precision"
            assert r["value"] == pytest.approx(
                precision_score(truth[sel], pred[sel], pos_label="1"), abs=1e-12
            )
            assert r["sample_size"] == int((pred[sel] == "1").sum())

    # the degrading single slice is flagged in its windows only, and nothing else is
    flagged = {(r["slice"], window_of(r)) for r in mine if r["metric"] == "accuracy" and r["alert"]}
    assert flagged == {("channel=partner", w) for w in SLICE_WINDOWS}, flagged
    for r in mine:
        if r["metric"] == "accuracy" and r["slice"] == "channel=partner" and window_of(r) in SLICE_WINDOWS:
            assert "overall" in r["details"]["worse_than"] and "reference" in r["details"]["worse_than"]
            assert r["details"]["q_overall"] <= default.alpha

    # discovery: the pair surfaces first in its windows, the partner channel in its own, nothing elsewhere
    discovered = [r for r in mine if r["metric"] == DISCOVERED]
    top = {window_of(r): r["slice"] for r in discovered if r["details"]["rank"] == 1}
    assert {w: s for w, s in top.items() if w in PAIR_WINDOWS} == dict.fromkeys(
        PAIR_WINDOWS, "channel=app&country=DE"
    )
    assert {w: s for w, s in top.items() if w in SLICE_WINDOWS} == dict.fromkeys(
        SLICE_WINDOWS, "channel=partner"
    )
    quiet = set(range(WINDOWS)) - PAIR_WINDOWS - SLICE_WINDOWS
    assert not [r for r in discovered if window_of(r) in quiet]
    counts = {window_of(r): r for r in mine if r["metric"] == DISCOVERED_COUNT}
    assert len(counts) == WINDOWS and all(counts[w]["value"] == 0 for w in quiet)
    for r in discovered:
        if r["slice"] == "channel=app&country=DE":
            lo = int(r["window_start"])
            sel = (ts >= lo) & (ts < lo + STEP) & (live["channel"] == "app") & (live["country"] == "DE")
            assert r["value"] == pytest.approx(accuracy_score(truth[sel], pred[sel]), abs=1e-12)
            assert r["sample_size"] == int(sel.sum())
            a, b = r["details"]["interval"]
            assert a < r["value"] < b and r["threshold"] > b  # the rest of the window lies above
            ranks = [d["details"]["rank"] for d in discovered if window_of(d) == window_of(r)]
            assert ranks == sorted(ranks)
    # neither single slice of the pair is worse than the others in the pair's windows
    for r in mine:
        if r["slice"] in ("channel=app", "country=DE") and window_of(r) in PAIR_WINDOWS:
            assert not r["alert"], r

    # important slices: own thresholds, always reported
    imp = by(rows, important)
    partner = {window_of(r): r for r in imp if r["slice"] == "channel=partner"}
    assert len(partner) == WINDOWS
    assert {w for w, r in partner.items() if r["alert"]} == SLICE_WINDOWS
    assert all(r["threshold"] == 0.75 for r in partner.values())
    missing = [r for r in imp if r["slice"] == "country=XX"]
    assert len(missing) == WINDOWS and all(r["status"] == "no_data" and not r["alert"] for r in missing)
    pair = {window_of(r): r for r in imp if r["slice"] == "channel=app&country=DE"}
    assert len(pair) == WINDOWS
    assert {w for w, r in pair.items() if r["alert"]} == PAIR_WINDOWS
    ref_pair = (ref["channel"] == "app") & (ref["country"] == "DE")
    ref_score = np.where(ref["score"] >= 0.5, "1", "0")
    ref_acc = accuracy_score(ref["label"][ref_pair], ref_score[ref_pair])
    assert all(r["threshold"] == pytest.approx(ref_acc - 0.2) for r in pair.values())


# -- no change, many slices --------------------------------------------------------------------------


NOISE_SCHEMA: dict[str, Any] = {
    "name": "quiet",
    "task": "binary",
    "features": [
        {"name": "x", "kind": "numeric"},
        {"name": "country", "kind": "categorical"},
        {"name": "plan", "kind": "categorical"},
    ],
    "metadata": [{"name": "channel"}, {"name": "region"}, {"name": "device"}],
}
NOISE_FIELDS = {
    "channel": ["web", "app", "store", "partner"],
    "region": ["n", "s", "e", "w", "c"],
    "device": ["ios", "android", "desktop"],
    "country": ["FR", "DE", "US", "ES", "IT"],
    "plan": ["free", "pro", "team"],
}
NOISE_WINDOWS = 40


def test_no_change_rarely_alerts(event_engine: EventEngine) -> None:
    """20 single slices and 158 pairs over 40 windows of steady traffic: alerts in at most 5% of windows."""
    rng = np.random.default_rng(11)
    per_window = 1500
    n = per_window * NOISE_WINDOWS
    ts = T0 + np.repeat(np.arange(NOISE_WINDOWS), per_window) * STEP + rng.integers(0, STEP, n)
    fields = {k: rng.choice(v, n) for k, v in NOISE_FIELDS.items()}
    live = _rows(rng, ts, fields, np.full(n, BASE))
    m = 15_000
    ref = _rows(
        rng,
        T0 - 30 * 86_400 + np.arange(m),
        {k: rng.choice(v, m) for k, v in NOISE_FIELDS.items()},
        np.full(m, BASE),
    )
    data = load(event_engine, NOISE_SCHEMA, live, ref)
    cfg = SlicePerformanceConfig()
    rows = by(run(data, [cfg], T0, T0 + NOISE_WINDOWS * STEP, STEP), cfg)
    counts = [r for r in rows if r["metric"] == DISCOVERED_COUNT]
    assert len(counts) == NOISE_WINDOWS
    assert min(r["details"]["tested"] for r in counts) > 150  # the pairs were searched
    alerted = {window_of(r) for r in rows if r["alert"]}
    assert len(alerted) <= 0.05 * NOISE_WINDOWS, sorted(alerted)


# -- regression ----------------------------------------------------------------------------------


def test_regression_slice_mae(event_engine: EventEngine) -> None:
    """MAE per slice with a normal interval from the error moments; the slice whose errors grow is flagged."""
    rng = np.random.default_rng(21)
    schema: dict[str, Any] = {
        "name": "rg",
        "task": "regression",
        "features": [{"name": "x", "kind": "numeric"}],
        "metadata": [{"name": "city"}],
    }
    windows, per_window = 4, 1500
    n = windows * per_window
    window = np.repeat(np.arange(windows), per_window)
    city = rng.choice(["paris", "lyon", "lille"], n)
    y = rng.normal(100, 20, n)
    noise = np.where((window == 3) & (city == "lille"), 12.0, 5.0)
    live = {
        "timestamp": T0 + window * STEP + rng.integers(0, STEP, n),
        "x": rng.normal(size=n),
        "prediction": y + rng.normal(0, noise),
        "label": y,
        "city": city,
    }
    m = 6000
    ry = rng.normal(100, 20, m)
    ref = {
        "timestamp": T0 - 30 * 86_400 + np.arange(m),
        "x": rng.normal(size=m),
        "prediction": ry + rng.normal(0, 5.0, m),
        "label": ry,
        "city": rng.choice(["paris", "lyon", "lille"], m),
    }
    data = Loaded(event_engine, schema)
    data.predictions({k: v for k, v in live.items() if k != "label"})
    raw = pa.table({"request_id": [f"r{i}" for i in range(n)], "label": y})
    labels = build_labels(data.schema, ArrowSource(raw), RowErrors(), now=NOW, max_future=0).table
    data.store.insert(Kind.LABELS, PROJECT, data.schema, labels)
    data.reference(ref)
    cfg = SlicePerformanceConfig()
    rmse = SlicePerformanceConfig(metric="rmse")
    rows = run(data, [cfg, rmse], T0, T0 + windows * STEP, STEP)
    z = float(scipy.stats.norm.ppf(0.975))
    mine = by(rows, cfg)
    assert {r["metric"] for r in mine} == {"mae", DISCOVERED, DISCOVERED_COUNT}
    # regressors have error moments per single slice only: discovery ranks those
    found = [r for r in mine if r["metric"] == DISCOVERED]
    assert {(r["slice"], window_of(r)) for r in found} == {("city=lille", 3)}
    assert not any(r["details"]["pairs"] for r in mine if r["metric"] == DISCOVERED_COUNT)
    err = np.abs(live["prediction"] - y)
    for r in mine:
        if not r["slice"] or r["metric"] != "mae":
            continue
        lo = int(r["window_start"])
        sel = (live["timestamp"] >= lo) & (live["timestamp"] < lo + STEP) & (city == r["slice"].split("=")[1])
        e = err[sel]
        assert r["value"] == pytest.approx(e.mean(), rel=1e-9)
        half = z * e.std() / np.sqrt(len(e))
        assert r["details"]["interval"] == pytest.approx([e.mean() - half, e.mean() + half], rel=1e-9)
    assert {(r["slice"], window_of(r)) for r in mine if r["alert"] and r["metric"] == "mae"} == {
        ("city=lille", 3)
    }
    got = [r for r in by(rows, rmse) if r["slice"] == "city=paris" and window_of(r) == 0]
    sel = (window == 0) & (city == "paris")
    assert got[0]["value"] == pytest.approx(np.sqrt(np.mean(err[sel] ** 2)), rel=1e-9)
    assert {(r["slice"], window_of(r)) for r in by(rows, rmse) if r["alert"] and r["metric"] == "rmse"} == {
        ("city=lille", 3)
    }
