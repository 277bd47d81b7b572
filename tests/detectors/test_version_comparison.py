"""Version comparison end to end: a champion, a better shadow on the same requests and a worse canary
on its own share of traffic; labels for the first days only. Agreement is checked exactly against
the raw rows, the differences and their intervals against a direct computation and scikit-learn."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats
from sklearn.metrics import accuracy_score, roc_auc_score

from driftline.detectors import registry
from driftline.detectors.base import DetectorConfig
from driftline.detectors.results import MetricsQuery
from driftline.detectors.version_comparison import VersionComparisonConfig
from driftline.ingest.columns import RowErrors
from driftline.ingest.records import ArrowSource, build_labels, build_predictions
from driftline.schema import Role
from driftline.storage.events import EventEngine, Kind
from tests.detectors import DAY, HASHER, NOW, PROJECT, T0, Loaded

SCHEMA: dict[str, Any] = {"name": "vc", "task": "binary", "features": [{"name": "x", "kind": "numeric"}]}
ROLES = {"v1": Role.CHAMPION, "v2": Role.SHADOW, "v3": Role.CANARY}
DAYS = 6
LABELLED_DAYS = 4  # labels exist for the first days only
PER_DAY = 2000
CANARY_PER_DAY = 600


def _scores(rng: np.random.Generator, y: np.ndarray, noise: float) -> np.ndarray:
    """Scores of a model whose quality falls as `noise` grows."""
    logit = np.where(y, 1.0, -1.0) + rng.normal(0, noise, len(y))
    return np.asarray(1 / (1 + np.exp(-logit)), dtype=np.float64)


def traffic(seed: int = 3) -> dict[str, dict[str, np.ndarray]]:
    """Raw columns per version, and the labels of every request."""
    rng = np.random.default_rng(seed)
    n, m = DAYS * PER_DAY, DAYS * CANARY_PER_DAY
    ts = T0 + np.repeat(np.arange(DAYS), PER_DAY) * DAY + rng.integers(0, DAY, n)
    y = rng.random(n) < 0.4
    ids = np.array([f"q{i}" for i in range(n)], dtype=object)
    shadowed = rng.random(n) < 0.8  # the shadow scores most requests, a little later
    canary_ts = T0 + np.repeat(np.arange(DAYS), CANARY_PER_DAY) * DAY + rng.integers(0, DAY, m)
    canary_y = rng.random(m) < 0.4
    out = {
        "v1": {"request_id": ids, "timestamp": ts, "score": _scores(rng, y, 1.6), "y": y},
        "v2": {
            "request_id": ids[shadowed],
            "timestamp": ts[shadowed] + rng.integers(0, 120, int(shadowed.sum())),
            "score": _scores(rng, y[shadowed], 0.9),
            "y": y[shadowed],
        },
        "v3": {
            "request_id": np.array([f"c{i}" for i in range(m)], dtype=object),
            "timestamp": canary_ts,
            "score": _scores(rng, canary_y, 3.5),
            "y": canary_y,
        },
    }
    for cols in out.values():
        cols["x"] = rng.normal(size=len(cols["timestamp"]))
    return out


def load(engine: EventEngine, data_in: dict[str, dict[str, np.ndarray]]) -> Loaded:
    data = Loaded(engine, SCHEMA, list(ROLES))
    data.model = replace(
        data.model, versions=[replace(v, role=ROLES[v.version]) for v in data.model.versions]
    )
    for version, cols in data_in.items():
        k = len(cols["timestamp"])
        table = pa.table(
            {
                "request_id": pa.array(cols["request_id"].tolist(), pa.string()),
                "version": [version] * k,
                "timestamp": cols["timestamp"],
                "x": cols["x"],
                "score": cols["score"],
            }
        )
        batch = build_predictions(
            data.schema,
            data.versions,
            ArrowSource(table),
            RowErrors(),
            now=NOW,
            max_future=DAY,
            hasher=HASHER,
        )
        data.store.insert(Kind.PREDICTIONS, PROJECT, data.schema, batch.table)
        if version == "v2":
            continue  # labels are per request: the champion's cover the shadow's too
        early = cols["timestamp"] < T0 + LABELLED_DAYS * DAY
        raw = pa.table(
            {
                "request_id": pa.array(cols["request_id"][early].tolist(), pa.string()),
                "label": np.where(cols["y"][early], "1", "0"),
            }
        )
        labels = build_labels(data.schema, ArrowSource(raw), RowErrors(), now=NOW, max_future=0).table
        data.store.insert(Kind.LABELS, PROJECT, data.schema, labels)
    return data


def run(data: Loaded, configs: Sequence[DetectorConfig]) -> list[dict[str, Any]]:
    result = data.runner.run(PROJECT, data.model, configs, T0, T0 + DAYS * DAY, DAY, now=NOW)
    assert not result.errors, result.errors
    return data.runner.metrics.read(MetricsQuery(project=PROJECT, model=data.schema.name))


def test_shadow_better_canary_worse(event_engine: EventEngine) -> None:
    assert registry.kinds()["version_comparison"] is VersionComparisonConfig
    raw = traffic()
    data = load(event_engine, raw)
    cfg = VersionComparisonConfig()
    strict = VersionComparisonConfig(min_agreement=0.95, score_method="ks")
    rows = run(data, [cfg, strict])
    mine = [r for r in rows if r["detector_id"] == cfg.id]
    for r in rows:
        json.dumps(r["details"], allow_nan=False)
    assert {r["version"] for r in mine} == {"v2", "v3"}  # the champion is the baseline, not a row
    z = float(scipy.stats.norm.ppf(0.975))

    def select(version: str, day: int) -> dict[str, np.ndarray]:
        cols = raw[version]
        keep = (cols["timestamp"] >= T0 + day * DAY) & (cols["timestamp"] < T0 + (day + 1) * DAY)
        return {k: v[keep] for k, v in cols.items()}

    def at(version: str, metric: str, day: int, config: VersionComparisonConfig = cfg) -> dict[str, Any]:
        hits = [
            r
            for r in rows
            if r["detector_id"] == config.id
            and r["version"] == version
            and r["metric"] == metric
            and int(r["window_start"]) == T0 + day * DAY
        ]
        assert len(hits) == 1, (version, metric, day, hits)
        return hits[0]

    for day in range(DAYS):
        champion = select("v1", day)
        # prediction agreement: exact, over the requests both scored (the champion's time decides the day)
        shadow = raw["v2"]
        both = np.isin(shadow["request_id"], champion["request_id"])
        mine_pred = dict(zip(champion["request_id"], champion["score"] >= 0.5, strict=True))
        agree = np.array([mine_pred[r] for r in shadow["request_id"][both]]) == (shadow["score"][both] >= 0.5)
        r = at("v2", "prediction_agreement", day)
        assert r["sample_size"] == int(both.sum())
        assert r["value"] == pytest.approx(agree.mean(), abs=1e-12)
        assert r["details"]["agreed"] == int(agree.sum())
        assert r["details"]["champion_rows"] == len(champion["request_id"])
        assert not r["alert"] and r["threshold"] is None
        assert at("v2", "prediction_agreement", day, strict)["alert"]  # below 0.95
        canary = at("v3", "prediction_agreement", day)
        assert canary["status"] == "no_data" and canary["details"]["shared"] == 0

        # score drift between the two versions' score distributions, from their summaries
        drift = at("v2", "score_drift", day)
        sv = select("v2", day)
        assert drift["feature"] == "@score" and drift["details"]["method"] == "wasserstein"
        want = scipy.stats.wasserstein_distance(champion["score"], sv["score"]) / np.std(champion["score"])
        assert drift["value"] == pytest.approx(want, rel=0.05)
        ks = at("v2", "score_drift", day, strict)
        assert ks["details"]["method"] == "ks"
        assert ks["value"] == pytest.approx(
            scipy.stats.ks_2samp(champion["score"], sv["score"]).statistic, abs=0.02
        )

        for version, expect in (("v2", "better"), ("v3", "worse")):
            acc = at(version, "accuracy_diff", day)
            auc = at(version, "roc_auc_diff", day)
            if day >= LABELLED_DAYS:
                assert acc["status"] == "no_data" and not acc["alert"]
                assert acc["details"]["verdict"] == "no_data"
                continue
            # the challenger's rows with labels: the shadow's are the champion's requests
            other = select(version, day) if version == "v3" else select("v2", day)
            y1, y2 = champion["y"], other["y"]
            a1 = accuracy_score(y1, champion["score"] >= 0.5)
            a2 = accuracy_score(y2, other["score"] >= 0.5)
            n1, n2 = len(y1), len(y2)
            assert acc["value"] == pytest.approx(a2 - a1, abs=1e-12)
            se = np.sqrt(a1 * (1 - a1) / n1 + a2 * (1 - a2) / n2)
            assert acc["details"]["interval"] == pytest.approx(
                [a2 - a1 - z * se, a2 - a1 + z * se], abs=1e-12
            )
            assert acc["details"]["verdict"] == expect
            assert acc["alert"] == (expect == "worse")
            assert acc["threshold"] == 0.0
            assert acc["sample_size"] == min(n1, n2)
            want_auc = roc_auc_score(y2, other["score"]) - roc_auc_score(y1, champion["score"])
            assert auc["value"] == pytest.approx(want_auc, abs=0.01)
            assert auc["details"]["champion_value"] == pytest.approx(
                roc_auc_score(y1, champion["score"]), abs=0.005
            )
            assert auc["details"]["verdict"] == expect
            lo, hi = auc["details"]["interval"]
            assert lo < auc["value"] < hi


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_other_tasks(event_engine: EventEngine, task: str) -> None:
    """Multiclass: agreement on the class, drift of the predicted classes; regression: within a tolerance, MAE."""
    rng = np.random.default_rng(8)
    schema: dict[str, Any] = {
        "name": f"vc_{task[:3]}",
        "task": task,
        "features": [{"name": "x", "kind": "numeric"}],
    }
    if task == "multiclass":
        schema["label"] = {"classes": ["a", "b", "c"]}
    data = Loaded(event_engine, schema, ["v1", "v2"])
    data.model = replace(
        data.model,
        versions=[
            replace(v, role=Role.CHAMPION if v.version == "v1" else Role.SHADOW) for v in data.model.versions
        ],
    )
    n = 1500
    ids = [f"q{i}" for i in range(n)]
    ts = T0 + rng.integers(0, DAY, n)
    outputs: dict[str, np.ndarray] = {}
    for version in ("v1", "v2"):
        cols: dict[str, Any] = {
            "request_id": ids,
            "version": [version] * n,
            "timestamp": ts,
            "x": rng.normal(size=n),
        }
        if task == "regression":
            cols["prediction"] = outputs[version] = np.round(rng.normal(10, 2, n), 1)
        else:
            s = rng.dirichlet([1, 1, 1] if version == "v1" else [3, 1, 1], n)
            for k, c in enumerate("abc"):
                cols[f"score_{c}"] = s[:, k]
            outputs[version] = np.array(list("abc"))[s.argmax(axis=1)]
        batch = build_predictions(
            data.schema,
            data.versions,
            ArrowSource(pa.table(cols)),
            RowErrors(),
            now=NOW,
            max_future=DAY,
            hasher=HASHER,
        )
        data.store.insert(Kind.PREDICTIONS, PROJECT, data.schema, batch.table)
    truth = np.round(rng.normal(10, 2, n), 1) if task == "regression" else rng.choice(list("abc"), n)
    raw = pa.table({"request_id": ids, "label": truth})
    data.store.insert(
        Kind.LABELS,
        PROJECT,
        data.schema,
        build_labels(data.schema, ArrowSource(raw), RowErrors(), now=NOW, max_future=0).table,
    )
    cfg = VersionComparisonConfig(agreement_tolerance=0.5)
    result = data.runner.run(PROJECT, data.model, [cfg], T0, T0 + DAY, DAY, now=NOW)
    assert not result.errors, result.errors
    rows = {
        r["metric"]: r
        for r in data.runner.metrics.read(MetricsQuery(project=PROJECT, model=data.schema.name))
    }
    a, b = outputs["v1"], outputs["v2"]
    if task == "regression":
        agree = np.abs(a - b) <= 0.5
        assert rows["mae_diff"]["value"] == pytest.approx(
            np.abs(b - truth).mean() - np.abs(a - truth).mean(), abs=1e-9
        )
        assert rows["score_drift"]["feature"] == "@prediction"
    else:
        agree = a == b
        assert rows["accuracy_diff"]["value"] == pytest.approx(
            (b == truth).mean() - (a == truth).mean(), abs=1e-12
        )
        drift = rows["score_drift"]
        assert drift["feature"] == "@prediction" and drift["details"]["method"] == "jensen_shannon"
        assert drift["alert"]  # the shadow favours class a
    assert rows["prediction_agreement"]["value"] == pytest.approx(agree.mean(), abs=1e-12)
    assert rows["prediction_agreement"]["sample_size"] == n
