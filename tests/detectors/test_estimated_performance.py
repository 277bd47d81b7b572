"""Estimated and blended performance on synthetic models with known truth, through the Runner.

The scores are the true probabilities of a fixed concept (a calibrated model); the feature
distribution shifts from window to window. Labels are withheld while the estimate is made,
then loaded, and the realised metrics computed from them with scikit-learn on the raw rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from driftline.detectors import registry
from driftline.detectors.base import DetectorConfig
from driftline.detectors.estimated_performance import (
    BIAS,
    BlendedPerformanceConfig,
    EstimatedPerformanceConfig,
)
from driftline.detectors.results import MetricsQuery
from driftline.ingest.columns import RowErrors
from driftline.ingest.records import ArrowSource, build_labels
from driftline.storage.events import EventEngine, Kind
from tests.detectors import DAY, NOW, PROJECT, T0, Loaded, days

CLASSES = ["a", "b", "c"]


def binary_schema(name: str) -> dict[str, Any]:
    return {"name": name, "task": "binary", "features": [{"name": "x", "kind": "numeric"}]}


def multiclass_schema(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "task": "multiclass",
        "features": [{"name": "x", "kind": "numeric"}, {"name": "w", "kind": "numeric"}],
        "label": {"classes": CLASSES},
    }


@dataclass
class Rows:
    """Raw rows as generated: features, scores (binary: P(positive); multiclass: one column per class), labels."""

    x: np.ndarray
    w: np.ndarray
    scores: np.ndarray  # (n,) binary or (n, K) multiclass
    labels: np.ndarray  # str

    @property
    def multiclass(self) -> bool:
        return self.scores.ndim == 2

    def predicted(self) -> np.ndarray:
        if self.multiclass:
            return np.asarray(np.array(CLASSES)[self.scores.argmax(axis=1)])
        return np.where(self.scores >= 0.5, "1", "0")

    def columns(self) -> dict[str, Any]:
        cols: dict[str, Any] = {"x": self.x}
        if self.multiclass:
            cols["w"] = self.w
            cols.update({f"score_{c}": self.scores[:, j] for j, c in enumerate(CLASSES)})
        else:
            cols["score"] = self.scores
        return cols

    def take(self, idx: np.ndarray) -> Rows:
        return Rows(self.x[idx], self.w[idx], self.scores[idx], self.labels[idx])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def binary_rows(rng: np.random.Generator, n: int, shift: float = 0.0, sharpen: float = 1.0) -> Rows:
    """P(y=1 | x) = sigmoid(1.6 x - 0.4); scores are that probability (sharpen > 1: overconfident)."""
    x = rng.normal(shift, 1.0, n)
    logit = 1.6 * x - 0.4
    y = rng.random(n) < _sigmoid(logit)
    return Rows(x, np.zeros(n), _sigmoid(sharpen * logit), np.where(y, "1", "0"))


def multiclass_rows(rng: np.random.Generator, n: int, shift: float = 0.0, sharpen: float = 1.0) -> Rows:
    x = rng.normal(shift, 1.0, n)
    w = rng.normal(-0.5 * shift, 1.0, n)
    logits = np.stack([np.zeros(n), 1.4 * x - 0.2, -1.0 * x + 1.2 * w], axis=1)

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True))

    p = softmax(logits)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return Rows(x, w, softmax(sharpen * logits), np.array(CLASSES)[np.minimum(y, len(CLASSES) - 1)])


class Model:
    """A model in a real store: reference, predictions per day, labels when they arrive."""

    def __init__(self, engine: EventEngine, schema: dict[str, Any]) -> None:
        self.loaded = Loaded(engine, schema)
        self.days: list[Rows] = []
        self.ids: list[np.ndarray] = []

    def reference(self, rows: Rows) -> None:
        self.loaded.reference({**rows.columns(), "label": pa.array(rows.labels.tolist(), pa.string())})

    def day(self, *rows: Rows) -> None:
        """The next days' predictions (one Rows per day), without labels, in one insert."""
        first = len(self.days)
        ids = [np.array([f"d{first + k}-{i}" for i in range(len(r.x))]) for k, r in enumerate(rows)]
        cols = [r.columns() for r in rows]
        self.loaded.predictions(
            {
                "request_id": pa.array(np.concatenate(ids).tolist()),
                "timestamp": np.concatenate(
                    [days(len(r.x), 1, T0 + (first + k) * DAY) for k, r in enumerate(rows)]
                ),
                **{name: np.concatenate([c[name] for c in cols]) for name in cols[0]},
            }
        )
        self.days.extend(rows)
        self.ids.extend(ids)

    def label(self, d: int | dict[int, np.ndarray], idx: np.ndarray | None = None) -> None:
        """Labels of some of a day's rows arrive (or of several days': {day: row indices}), in one insert."""
        which = d if isinstance(d, dict) else {d: idx if idx is not None else np.arange(len(self.days[d].x))}
        table = pa.table(
            {
                "request_id": np.concatenate([self.ids[k][i] for k, i in which.items()]).tolist(),
                "label": np.concatenate([self.days[k].labels[i] for k, i in which.items()]).tolist(),
            }
        )
        batch = build_labels(self.loaded.schema, ArrowSource(table), RowErrors(), now=NOW, max_future=DAY)
        self.loaded.store.insert(Kind.LABELS, PROJECT, self.loaded.schema, batch.table)

    def run(self, configs: list[DetectorConfig]) -> dict[tuple[str, str, int], dict[str, Any]]:
        """Rows by (detector, metric, day) read back from the metrics table."""
        m = self.loaded
        result = m.runner.run(PROJECT, m.model, configs, T0, T0 + len(self.days) * DAY, DAY, now=NOW)
        assert not result.errors, result.errors
        rows = m.runner.metrics.read(MetricsQuery(project=PROJECT, model=m.schema.name))
        return {(r["detector"], r["metric"], (r["window_start"] - T0) // DAY): r for r in rows}


def realised(rows: Rows) -> dict[str, float]:
    """What the labels say, from the raw rows, with scikit-learn."""
    pred = rows.predicted()
    if rows.multiclass:
        auc = roc_auc_score(rows.labels, rows.scores, multi_class="ovr", average="macro", labels=CLASSES)
        f1 = f1_score(rows.labels, pred, average="macro")
    else:
        auc = roc_auc_score(rows.labels == "1", rows.scores)
        f1 = f1_score(rows.labels, pred, pos_label="1")
    return {"accuracy": accuracy_score(rows.labels, pred), "roc_auc": float(auc), "f1": float(f1)}


SHIFTS = [0.0, 0.8, -0.8, 1.6]


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_estimate_follows_realised_under_covariate_shift(event_engine: EventEngine, task: str) -> None:
    rng = np.random.default_rng(11 if task == "binary" else 12)
    make = binary_rows if task == "binary" else multiclass_rows
    schema = binary_schema if task == "binary" else multiclass_schema
    m = Model(event_engine, schema(f"shift{task[0]}"))
    m.reference(make(rng, 20_000))
    m.day(*(make(rng, 20_000, shift) for shift in SHIFTS))
    before = m.run([EstimatedPerformanceConfig(), BlendedPerformanceConfig()])
    truth = [realised(r) for r in m.days]
    report = []
    for d, want in enumerate(truth):
        acc = before[("estimated_performance", "accuracy", d)]
        auc = before[("estimated_performance", "roc_auc", d)]
        report.append((d, acc["value"], want["accuracy"], auc["value"], want["roc_auc"]))
        assert acc["status"] == "ok" and acc["sample_size"] == 20_000
        assert abs(acc["value"] - want["accuracy"]) < 0.01, report
        assert abs(auc["value"] - want["roc_auc"]) < 0.02, report
        assert abs(before[("estimated_performance", "f1", d)]["value"] - want["f1"]) < 0.02, report
        assert acc["details"]["lower"] < acc["details"]["reference"] < acc["details"]["upper"]
        blended = before[("blended_performance", "accuracy", d)]
        assert blended["details"]["mode"] == "estimated"
        assert blended["value"] == pytest.approx(acc["value"], abs=1e-12)
        assert before[("blended_performance", BIAS, d)]["status"] == "no_data"
    print(f"\n{task} estimated vs realised (day, accuracy, realised, auc, realised):")
    for line in report:
        print("  ", "  ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in line))
    # the unchanged window stays inside the band; the shifted ones move with the truth
    assert not before[("estimated_performance", "accuracy", 0)]["alert"]

    m.label({d: np.arange(len(r.x)) for d, r in enumerate(m.days)})
    after = m.run([EstimatedPerformanceConfig(), BlendedPerformanceConfig()])
    for d, want in enumerate(truth):
        blended = after[("blended_performance", "accuracy", d)]
        assert blended["details"]["mode"] == "realised"
        assert blended["value"] == pytest.approx(want["accuracy"], abs=1e-9)
        assert after[("blended_performance", "roc_auc", d)]["value"] == pytest.approx(
            want["roc_auc"], abs=0.005
        )
        assert after[("blended_performance", "f1", d)]["value"] == pytest.approx(want["f1"], abs=1e-9)
        assert after[("estimated_performance", "accuracy", d)]["value"] == pytest.approx(
            before[("estimated_performance", "accuracy", d)]["value"], abs=1e-9
        )
        assert after[("blended_performance", BIAS, d)]["value"] == 0.0


def test_labels_in_biased_order(event_engine: EventEngine) -> None:
    """On days 1 and 2 the high-score rows are labelled first; on day 0 a random third is."""
    rng = np.random.default_rng(5)
    m = Model(event_engine, binary_schema("biased"))
    m.reference(binary_rows(rng, 20_000))
    m.day(*(binary_rows(rng, 10_000) for _ in range(3)))
    n = 10_000
    firsts = {0: rng.permutation(n)[: n // 3]}
    for d in (1, 2):
        # reviews come back first for the riskiest cases: most of the top scores, few others
        order = np.argsort(-(m.days[d].scores + rng.normal(0, 0.15, n)))
        firsts[d] = order[: n // 3]
    m.label(firsts)
    got = m.run([BlendedPerformanceConfig()])
    bias = [got[("blended_performance", BIAS, d)] for d in range(3)]
    assert [b["alert"] for b in bias] == [False, True, True], [(b["value"], b["details"]) for b in bias]
    assert bias[0]["details"]["p_value"] > 0.01
    assert all(b["details"]["p_value"] < 1e-6 and b["value"] > 0.1 for b in bias[1:])
    for d in (1, 2):
        full = realised(m.days[d])
        first = realised(m.days[d].take(firsts[d]))
        for metric in ("accuracy", "f1", "roc_auc"):
            blended = got[("blended_performance", metric, d)]
            on_labelled = blended["details"]["realised_on_labelled"][metric]
            assert blended["details"]["mode"] == "blended"
            assert blended["details"]["label_coverage"] == pytest.approx(1 / 3, abs=1e-3)
            if metric != "roc_auc":  # AUC on the labelled rows alone is binned, the rest exact
                assert on_labelled == pytest.approx(first[metric], abs=1e-9)
            # blended with the estimate for the rest, the window's performance is right
            assert abs(blended["value"] - full[metric]) < 0.015, (metric, blended["value"], full[metric])
        # while the labelled part alone misleads
        assert abs(first["f1"] - full["f1"]) > 0.1 and abs(first["roc_auc"] - full["roc_auc"]) > 0.05

    m.label({d: np.setdiff1d(np.arange(n), firsts[d]) for d in (1, 2)})
    later = m.run([BlendedPerformanceConfig()])
    assert not any(later[("blended_performance", BIAS, d)]["alert"] for d in (1, 2))


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_no_change_rarely_alerts(event_engine: EventEngine, task: str) -> None:
    rng = np.random.default_rng(21 if task == "binary" else 22)
    make = binary_rows if task == "binary" else multiclass_rows
    schema = binary_schema if task == "binary" else multiclass_schema
    m = Model(event_engine, schema(f"steady{task[0]}"))
    m.reference(make(rng, 10_000))
    m.day(*(make(rng, int(rng.integers(1_500, 4_000))) for _ in range(6)))
    m.label({d: np.flatnonzero(rng.random(len(r.x)) < rng.uniform(0.0, 0.9)) for d, r in enumerate(m.days)})
    got = m.run([EstimatedPerformanceConfig(), BlendedPerformanceConfig()])
    rows = [r for r in got.values() if r["status"] == "ok"]
    assert len(rows) == 6 * (5 + 5 + 1)
    flagged = [(k, r["value"]) for k, r in got.items() if r["alert"]]
    assert len(flagged) <= 0.05 * len(rows), flagged


def test_without_a_labelled_reference(event_engine: EventEngine) -> None:
    rng = np.random.default_rng(2)
    m = Model(event_engine, binary_schema("noref"))
    ref = binary_rows(rng, 2_000)
    m.loaded.reference(ref.columns())  # no labels
    m.day(binary_rows(rng, 1_000))
    got = m.run([EstimatedPerformanceConfig()])
    assert {k[1] for k in got} == {"accuracy", "precision", "recall", "f1", "roc_auc"}
    assert all(
        r["status"] == "no_data" and "labelled reference" in r["details"]["reason"] for r in got.values()
    )


def test_families_are_registered() -> None:
    kinds = registry.kinds()
    assert kinds["estimated_performance"] is EstimatedPerformanceConfig
    assert kinds["blended_performance"] is BlendedPerformanceConfig
    with pytest.raises(ValidationError):
        EstimatedPerformanceConfig.model_validate({"metrics": ["accuracy", "auc"]})
    assert EstimatedPerformanceConfig().id != EstimatedPerformanceConfig(z=2.0).id
