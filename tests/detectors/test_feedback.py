"""Feedback end to end: predictions of a champion and its shadow on the same requests, reviews
arriving with revisions, several reviewers, reviews without labels and reviews of unknown
requests; the Runner; every value checked against NumPy on the raw rows. The champion
degrades for three days: reviewers override it more, and agree with it less."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from driftline.detectors import registry
from driftline.detectors.base import DetectorConfig
from driftline.detectors.feedback import FeedbackConfig, trailing
from driftline.detectors.results import MetricsQuery
from driftline.ingest.columns import RowErrors
from driftline.ingest.records import ArrowSource, build_feedback, build_predictions
from driftline.storage.events import EventEngine, Kind
from tests.detectors import DAY, HASHER, NOW, PROJECT, T0, Loaded

SCHEMA: dict[str, Any] = {"name": "fb", "task": "binary", "features": [{"name": "x", "kind": "numeric"}]}
DAYS = 10
PER_DAY = 1000
SURGE = {7, 8, 9}  # the champion is wrong far more often


def traffic(seed: int = 5) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(predictions of both versions, feedback rows) as raw columns."""
    rng = np.random.default_rng(seed)
    n = DAYS * PER_DAY
    ids = np.array([f"q{i}" for i in range(n)], dtype=object)
    day = np.repeat(np.arange(DAYS), PER_DAY)
    ts = T0 + day * DAY + rng.integers(0, DAY, n)
    y = rng.random(n) < 0.4
    wrong = rng.random(n) < np.where(np.isin(day, list(SURGE)), 0.4, 0.1)
    v1 = np.where(wrong, ~y, y)
    v2 = np.where(rng.random(n) < 0.12, ~y, y)
    preds = {
        "request_id": np.concatenate([ids, ids]),
        "version": np.repeat(np.array(["v1", "v2"], dtype=object), n),
        "timestamp": np.concatenate([ts, ts + rng.integers(0, 5, n)]),
        "x": rng.normal(size=2 * n),
        "score": np.concatenate([np.where(v1, 0.8, 0.2), np.where(v2, 0.7, 0.3)]),
    }
    # a fifth of the requests is reviewed once, some twice (another reviewer)
    first = np.flatnonzero(rng.random(n) < 0.2)
    second = first[rng.random(len(first)) < 0.3]
    req = np.concatenate([first, second])
    reviewer = np.concatenate(
        [np.full(len(first), "ana", dtype=object), np.full(len(second), "ben", dtype=object)]
    )
    truth = np.where(y[req], "1", "0").astype(object)
    served = np.where(v1[req], "1", "0")
    outcome = np.where(truth == served, "accepted", "overridden").astype(object)
    label: np.ndarray = truth.copy()
    # some reviews escalate without a label
    escalated = rng.random(len(req)) < 0.05
    outcome[escalated] = "escalated"
    label[escalated] = None
    received = ts[req] + DAY + rng.integers(0, 3600, len(req))
    # some reviewers first accepted, then revised: the revision (received later) stands
    revised = np.flatnonzero((outcome == "overridden") & (rng.random(len(req)) < 0.3))
    fb = {
        "request_id": np.concatenate(
            [ids[req], ids[req[revised]], np.array(["nope1", "nope2"], dtype=object)]
        ),
        "reviewer": np.concatenate([reviewer, reviewer[revised], np.array(["ana", "ana"], dtype=object)]),
        "outcome": np.concatenate(
            [
                outcome,
                np.full(len(revised), "accepted", dtype=object),
                np.array(["accepted"] * 2, dtype=object),
            ]
        ),
        "label": np.concatenate([label, served[revised].astype(object), np.array(["1", "0"], dtype=object)]),
        "received": np.concatenate([received, received[revised] - 600, np.array([T0, T0])]),
    }
    return preds, fb


def load(engine: EventEngine, preds: dict[str, np.ndarray], fb: dict[str, np.ndarray]) -> Loaded:
    data = Loaded(engine, SCHEMA, ["v1", "v2"])
    table = pa.table({k: pa.array(v.tolist()) if v.dtype == object else v for k, v in preds.items()})
    batch = build_predictions(
        data.schema, data.versions, ArrowSource(table), RowErrors(), now=NOW, max_future=DAY, hasher=HASHER
    )
    data.store.insert(Kind.PREDICTIONS, PROJECT, data.schema, batch.table)
    raw = pa.table(
        {
            "request_id": pa.array(fb["request_id"].tolist(), pa.string()),
            "reviewer": pa.array(fb["reviewer"].tolist(), pa.string()),
            "outcome": pa.array(fb["outcome"].tolist(), pa.string()),
            "label": pa.array(fb["label"].tolist(), pa.string()),
            "timestamp": fb["received"],
        }
    )
    table = build_feedback(data.schema, ArrowSource(raw), RowErrors(), now=NOW, max_future=DAY).table
    received = pa.array(fb["received"], pa.int64()).cast(pa.timestamp("s", tz="UTC"))
    table = table.set_column(table.column_names.index("received"), "received", received)
    data.store.insert(Kind.FEEDBACK, PROJECT, data.schema, table)
    return data


def run(
    data: Loaded, configs: Sequence[DetectorConfig], start: int, end: int, step: int
) -> list[dict[str, Any]]:
    """Run the detectors through the Runner and read every row back from the metrics table."""
    result = data.runner.run(PROJECT, data.model, configs, start, end, step, now=NOW)
    assert not result.errors, result.errors
    return data.runner.metrics.read(MetricsQuery(project=PROJECT, model=data.schema.name))


def expected(
    preds: dict[str, np.ndarray], fb: dict[str, np.ndarray]
) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (version, day): the numbers straight from the raw rows."""
    order = np.argsort(fb["received"], kind="stable")
    latest: dict[tuple[str, str], int] = {}
    for i in order:  # the last review of each (request, reviewer) by time received
        latest[(str(fb["request_id"][i]), str(fb["reviewer"][i]))] = int(i)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for version in ("v1", "v2"):
        mine = preds["version"] == version
        ids = preds["request_id"][mine]
        day = (preds["timestamp"][mine] - T0) // DAY
        prediction = np.where(preds["score"][mine] >= 0.5, "1", "0")
        where = {str(r): (int(d), str(p)) for r, d, p in zip(ids, day, prediction, strict=True)}
        for d in range(DAYS):
            out[(version, d)] = {
                "predictions": int((day == d).sum()),
                "reviewed": set(),
                "outcomes": {},
                "labelled": 0,
                "agreed": 0,
            }
        for (rid, _), i in latest.items():
            if rid not in where:
                continue
            d, p = where[rid]
            cell = out[(version, d)]
            cell["reviewed"].add(rid)
            o = str(fb["outcome"][i])
            cell["outcomes"][o] = cell["outcomes"].get(o, 0) + 1
            if fb["label"][i] is not None:
                cell["labelled"] += 1
                cell["agreed"] += int(fb["label"][i] == p)
    return out


def test_trailing_sums() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(trailing(x, 2), [0.0, 1.0, 3.0, 5.0, 7.0])


def test_feedback_values_and_alerts(event_engine: EventEngine) -> None:
    assert registry.kinds()["feedback"] is FeedbackConfig
    preds, fb = traffic()
    data = load(event_engine, preds, fb)
    cfg = FeedbackConfig()
    fixed = FeedbackConfig(max_share={"overridden": 0.25}, min_agreement=0.8, min_rate=0.5)
    rows = run(data, [cfg, fixed], T0, T0 + DAYS * DAY, DAY)
    mine = [r for r in rows if r["detector_id"] == cfg.id]
    for r in rows:
        json.dumps(r["details"], allow_nan=False)
    want = expected(preds, fb)
    seen = 0
    for r in mine:
        d = (int(r["window_start"]) - T0) // DAY
        cell = want[(r["version"], d)]
        reviews = sum(cell["outcomes"].values())
        if r["metric"] == "feedback_rate":
            assert r["value"] == pytest.approx(len(cell["reviewed"]) / cell["predictions"], abs=1e-12)
            assert r["sample_size"] == cell["predictions"]
            assert r["details"]["outcomes"] == cell["outcomes"]
            assert r["details"]["reviews"] == reviews
            seen += 1
        elif r["metric"] == "outcome_share":
            assert r["value"] == pytest.approx(cell["outcomes"].get(r["feature"], 0) / reviews, abs=1e-12)
            assert r["sample_size"] == reviews
        elif r["metric"] == "agreement":
            assert r["value"] == pytest.approx(cell["agreed"] / cell["labelled"], abs=1e-12)
            assert r["sample_size"] == cell["labelled"]
    assert seen == 2 * DAYS
    assert {r["feature"] for r in mine if r["metric"] == "outcome_share"} == {
        "accepted",
        "overridden",
        "escalated",
    }

    def alerts(config: FeedbackConfig, metric: str, version: str) -> set[int]:
        return {
            (int(r["window_start"]) - T0) // DAY
            for r in rows
            if r["detector_id"] == config.id
            and r["metric"] == metric
            and r["version"] == version
            and r["alert"]
        }

    # the surge of overrides is in the reviews of the requests both versions scored
    assert alerts(cfg, "outcome_share", "v1") == SURGE
    assert alerts(cfg, "outcome_share", "v2") == SURGE
    # reviewers disagree with the champion, not with its shadow
    assert alerts(cfg, "agreement", "v1") == SURGE
    assert alerts(cfg, "agreement", "v2") == set()
    assert alerts(cfg, "feedback_rate", "v1") == set()
    # only the judged outcome alerts
    assert all(
        not r["alert"] for r in mine if r["metric"] == "outcome_share" and r["feature"] != "overridden"
    )
    # fixed limits replace the trailing level
    assert alerts(fixed, "outcome_share", "v1") == SURGE
    assert alerts(fixed, "agreement", "v1") == SURGE
    assert alerts(fixed, "feedback_rate", "v1") == set(range(DAYS))  # about a fifth are reviewed
    limits = {r["threshold"] for r in rows if r["detector_id"] == fixed.id and r["feature"] == "overridden"}
    assert limits == {0.25}


def test_regression_agreement_within_tolerance(event_engine: EventEngine) -> None:
    """A reviewer's number agrees with a regressor's prediction when within the tolerance."""
    rng = np.random.default_rng(9)
    data = Loaded(
        event_engine, {"name": "fbr", "task": "regression", "features": [{"name": "x", "kind": "numeric"}]}
    )
    n, k = 800, 300
    prediction = np.round(rng.normal(10, 2, n), 2)
    data.predictions(
        {"timestamp": T0 + rng.integers(0, DAY, n), "x": rng.normal(size=n), "prediction": prediction}
    )
    label = prediction[:k] + rng.normal(0, 1, k)
    raw = pa.table(
        {
            "request_id": [f"r{i}" for i in range(k)],
            "outcome": ["corrected"] * k,
            "reviewer": ["a"] * k,
            "label": label,
        }
    )
    table = build_feedback(data.schema, ArrowSource(raw), RowErrors(), now=NOW, max_future=DAY).table
    data.store.insert(Kind.FEEDBACK, PROJECT, data.schema, table)
    cfg = FeedbackConfig(agreement_tolerance=0.5)
    rows = {r["metric"]: r for r in run(data, [cfg], T0, T0 + DAY, DAY)}
    assert rows["agreement"]["value"] == pytest.approx(
        (np.abs(label - prediction[:k]) <= 0.5).mean(), abs=1e-12
    )
    assert rows["feedback_rate"]["value"] == pytest.approx(k / n)
