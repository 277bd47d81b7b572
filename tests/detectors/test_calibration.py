"""Calibration through the Runner on both engines: exact against NumPy and scikit-learn on the raw
rows, an overconfident model flagged in the right windows, and a steady one left alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.metrics import brier_score_loss

from driftline.detectors import registry
from driftline.detectors.calibration import CalibrationConfig
from driftline.storage.events import EventEngine
from tests.detectors.test_estimated_performance import (
    CLASSES,
    Model,
    Rows,
    binary_rows,
    binary_schema,
    multiclass_rows,
    multiclass_schema,
)


def numpy_ece(confidence: np.ndarray, hit: np.ndarray, bins: int) -> tuple[float, list[dict[str, float]]]:
    """ECE over the summaries' bins (100 equal bins on [0, 1], the last closed) merged `bins` at a time."""
    fine = np.minimum(np.floor(confidence * 100), 99).astype(int)
    coarse = fine // (100 // bins)
    n = np.bincount(coarse, minlength=bins).astype(float)
    s = np.bincount(coarse, weights=confidence, minlength=bins)
    pos = np.bincount(coarse, weights=hit.astype(float), minlength=bins)
    used = n > 0
    curve = [
        {"mean_score": s[b] / n[b], "observed_rate": pos[b] / n[b], "count": n[b]}
        for b in np.flatnonzero(used)
    ]
    return float(np.sum(n[used] * np.abs(s[used] / n[used] - pos[used] / n[used])) / n.sum()), curve


def confidence_of(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    if rows.multiclass:
        return rows.scores.max(axis=1), rows.labels == rows.predicted()
    return rows.scores, rows.labels == "1"


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_ece_and_brier_exact(event_engine: EventEngine, task: str) -> None:
    rng = np.random.default_rng(31 if task == "binary" else 32)
    make = binary_rows if task == "binary" else multiclass_rows
    m = Model(event_engine, (binary_schema if task == "binary" else multiclass_schema)(f"exact{task[0]}"))
    m.reference(make(rng, 5_000))
    m.day(*(make(rng, 6_000, 0.3 * d, sharpen) for d, sharpen in enumerate([1.0, 1.6])))
    which = {d: np.flatnonzero(rng.random(len(r.x)) < 0.6) for d, r in enumerate(m.days)}
    m.label(which)
    labelled = [m.days[d].take(idx) for d, idx in which.items()]
    config = CalibrationConfig(bins=20)
    got = m.run([config])
    for d, rows in enumerate(labelled):
        confidence, hit = confidence_of(rows)
        want_ece, want_curve = numpy_ece(confidence, hit, 20)
        ece = got[("calibration", "ece", d)]
        assert ece["sample_size"] == len(rows.x)
        assert ece["value"] == pytest.approx(want_ece, rel=1e-9, abs=1e-12)
        curve = ece["details"]["reliability"]
        assert len(curve) == len(want_curve)
        for ours, want in zip(curve, want_curve, strict=True):
            assert ours["count"] == want["count"]
            assert ours["mean_score"] == pytest.approx(want["mean_score"], rel=1e-9)
            assert ours["observed_rate"] == pytest.approx(want["observed_rate"], rel=1e-12)
        if rows.multiclass:
            want_brier = brier_score_loss(rows.labels, rows.scores, labels=CLASSES)
        else:
            want_brier = brier_score_loss(rows.labels == "1", rows.scores)
        assert got[("calibration", "brier", d)]["value"] == pytest.approx(want_brier, rel=1e-9, abs=1e-12)
        mce = got[("calibration", "mce", d)]
        big = [
            abs(c["mean_score"] - c["observed_rate"])
            for c in want_curve
            if c["count"] >= config.mce_min_count
        ]
        assert mce["value"] == pytest.approx(max(big), rel=1e-9)
        # the details are plain JSON: no NaN or infinity anywhere
        for r in got.values():
            json.dumps(r["details"], allow_nan=False)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_overconfident_model_flagged_in_its_windows(event_engine: EventEngine, task: str) -> None:
    """Calibrated on days 0 and 1; from day 2 the scores are pushed towards 0 and 1."""
    rng = np.random.default_rng(41 if task == "binary" else 42)
    make = binary_rows if task == "binary" else multiclass_rows
    m = Model(event_engine, (binary_schema if task == "binary" else multiclass_schema)(f"over{task[0]}"))
    m.reference(make(rng, 8_000))
    sharpen = [1.0, 1.0, 2.5, 2.5]
    m.day(*(make(rng, 4_000, 0.0, k) for k in sharpen))
    m.label({d: np.flatnonzero(rng.random(len(r.x)) < 0.5) for d, r in enumerate(m.days)})
    got = m.run([CalibrationConfig()])
    for metric in ("ece", "mce"):
        flags = [got[("calibration", metric, d)]["alert"] for d in range(4)]
        assert flags == [False, False, True, True], (
            metric,
            [got[("calibration", metric, d)] for d in range(4)],
        )
    # Brier mixes calibration with discrimination: it rises, but only as far as its noise allows a verdict
    brier = [got[("calibration", "brier", d)] for d in range(4)]
    assert max(b["value"] for b in brier[:2]) < min(b["value"] for b in brier[2:])
    assert not any(b["alert"] for b in brier[:2])
    ece = got[("calibration", "ece", 3)]
    assert ece["details"]["p_value"] < 1e-6 and ece["value"] > 0.05
    assert ece["details"]["reference"] < 0.03


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_calibrated_model_rarely_flagged(event_engine: EventEngine, task: str) -> None:
    rng = np.random.default_rng(51 if task == "binary" else 52)
    make = binary_rows if task == "binary" else multiclass_rows
    m = Model(event_engine, (binary_schema if task == "binary" else multiclass_schema)(f"calm{task[0]}"))
    m.reference(make(rng, 5_000))
    m.day(*(make(rng, int(rng.integers(800, 4_000)), rng.normal(0, 0.3)) for _ in range(8)))
    m.label({d: np.flatnonzero(rng.random(len(r.x)) < rng.uniform(0.2, 1.0)) for d, r in enumerate(m.days)})
    got = m.run([CalibrationConfig()])
    rows = [r for r in got.values() if r["status"] == "ok"]
    assert len(rows) == 8 * 3
    flagged = [(k, r["value"], r["threshold"]) for k, r in got.items() if r["alert"]]
    assert len(flagged) <= 0.05 * len(rows), flagged


def test_too_few_labels_and_settings(event_engine: EventEngine) -> None:
    rng = np.random.default_rng(3)
    m = Model(event_engine, binary_schema("few"))
    m.reference(binary_rows(rng, 2_000))
    m.day(binary_rows(rng, 1_000))
    m.label(0, np.arange(50))
    got = m.run([CalibrationConfig()])
    assert {k[1] for k in got} == {"ece", "mce", "brier"}
    for r in got.values():
        assert r["status"] == "no_data"
        assert r["value"] is None or math.isnan(r["value"])
        assert "fewer than 100" in r["details"]["reason"]
    assert registry.kinds()["calibration"] is CalibrationConfig
    with pytest.raises(ValidationError):
        CalibrationConfig(bins=7)
