"""Realised performance, label drift and concept drift on synthetic traffic with known truth.

Each scenario is generated from a seeded RNG, loaded into a real event store (both engines),
run through the Runner and read back from the metrics table; every value is checked against
scikit-learn on the same raw rows:
- binary, multiclass and regression models whose label function changes at a known day
  (the features do not change): concept_drift flags from that day on and the days before
  are a no-change scenario;
- a binary model whose inputs shift towards its decision boundary, concept unchanged:
  accuracy falls and `performance` says so, `concept_drift` stays silent;
- labels arriving days late, later windows later, high scores first: the runner picks them
  up run after run, and the metrics table keeps only the newest value of a window.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)

from driftline.detectors import registry
from driftline.detectors.base import DetectorConfig
from driftline.detectors.performance import (
    ConceptDriftConfig,
    LabelDriftConfig,
    PerformanceConfig,
)
from driftline.detectors.results import MetricsQuery
from driftline.detectors.summaries import REFERENCE_CHUNKS
from driftline.ingest.columns import RowErrors
from driftline.ingest.records import ArrowSource, build_labels
from driftline.storage.events import EventEngine, Kind
from tests.detectors import DAY, NOW, PROJECT, T0, Loaded, days

CLASSES = ["a", "b", "c"]
AUC_TOLERANCE = 0.005
DEFAULT_IDS = {
    "performance": PerformanceConfig().id,
    "label_drift": LabelDriftConfig().id,
    "concept_drift": ConceptDriftConfig().id,
}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-x)))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def draw_classes(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row, vectorised."""
    u = rng.random(len(probs))[:, None]
    return np.asarray(np.array(CLASSES)[(u > np.cumsum(probs, axis=1)).sum(axis=1).clip(0, 2)])


@dataclass
class Scenario:
    """Raw rows as generated: what every value read back is checked against."""

    task: str
    schema: dict[str, Any]
    ts: np.ndarray
    y: np.ndarray
    output: np.ndarray  # binary: score; multiclass: (n, 3) scores; regression: prediction
    labelled: np.ndarray
    received: np.ndarray
    ref_y: np.ndarray
    ref_output: np.ndarray
    columns: dict[str, Any]
    reference: dict[str, Any]
    n_days: int

    def window(self, i: int, upto: float = math.inf) -> np.ndarray:
        day = (self.ts - T0) // DAY
        return np.asarray((day == i) & self.labelled & (self.received <= upto))


def _binary(
    rng: np.random.Generator, n: int, changed: np.ndarray, x1_sd: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    x1, x2 = rng.normal(size=n) * x1_sd, rng.normal(size=n)
    score = sigmoid(1.5 * x1 + 0.8 * x2)
    truth = np.where(changed, sigmoid(1.5 * x1 - 0.8 * x2), score)
    return {"x1": x1, "x2": x2, "score": score}, (rng.random(n) < truth).astype(int)


def _multiclass(rng: np.random.Generator, n: int, changed: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    x = rng.normal(size=(n, 2))
    weights = np.array([[1.6, 0.0, -1.6], [0.0, 1.2, -0.6]])
    after = np.array([[1.6, 0.0, -1.6], [0.0, -0.6, 1.2]])  # x2 now points to class c, not b
    scores = softmax(x @ weights)
    truth = np.where(changed[:, None], softmax(x @ after), scores)
    cols = {"x1": x[:, 0], "x2": x[:, 1], **{f"score_{c}": scores[:, j] for j, c in enumerate(CLASSES)}}
    return cols, draw_classes(rng, truth)


def _regression(rng: np.random.Generator, n: int, changed: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    prediction = 20 + 2 * x1 + x2  # labels far from 0, where MAPE means something
    y = np.where(changed, 20 + 2 * x1 + 1.8 * x2, prediction) + rng.normal(size=n)
    return {"x1": x1, "x2": x2, "prediction": prediction}, y


def make_scenario(
    task: str,
    *,
    seed: int,
    n_days: int,
    per_day: int = 1000,
    change_day: int | None = None,
    shift_day: int | None = None,
    reference_rows: int = 6000,
    coverage: float = 0.85,
) -> Scenario:
    rng = np.random.default_rng(seed)
    schema: dict[str, Any] = {
        "name": f"perf_{task}",
        "task": task,
        "features": [{"name": "x1", "kind": "numeric"}, {"name": "x2", "kind": "numeric"}],
    }
    if task == "multiclass":
        schema["label"] = {"classes": CLASSES}
    ts = days(per_day, n_days)
    n = len(ts)
    day = (ts - T0) // DAY
    changed = day >= (change_day if change_day is not None else n_days)
    no_change = np.zeros(reference_rows, dtype=bool)
    if task == "binary":
        x1_sd = np.where(day >= (shift_day if shift_day is not None else n_days), 0.3, 1.0)
        cols, y = _binary(rng, n, changed, x1_sd)
        ref_cols, ref_y = _binary(rng, reference_rows, no_change, np.ones(reference_rows))
        output, ref_output = cols["score"], ref_cols["score"]
    elif task == "multiclass":
        cols, y = _multiclass(rng, n, changed)
        ref_cols, ref_y = _multiclass(rng, reference_rows, no_change)
        output = np.stack([cols[f"score_{c}"] for c in CLASSES], axis=1)
        ref_output = np.stack([ref_cols[f"score_{c}"] for c in CLASSES], axis=1)
    else:
        cols, y = _regression(rng, n, changed)
        ref_cols, ref_y = _regression(rng, reference_rows, no_change)
        output, ref_output = cols["prediction"], ref_cols["prediction"]
    return Scenario(
        task=task,
        schema=schema,
        ts=ts,
        y=y,
        output=output,
        labelled=rng.random(n) < coverage,
        received=ts + DAY + rng.integers(0, 6 * 3600, n),
        ref_y=ref_y,
        ref_output=ref_output,
        columns={"timestamp": ts, **cols},
        reference={**ref_cols, "label": ref_y.astype(str) if task != "regression" else ref_y},
        n_days=n_days,
    )


def load(engine: EventEngine, sc: Scenario, *, upto: float = math.inf) -> Loaded:
    m = Loaded(engine, sc.schema)
    m.reference(sc.reference)
    m.predictions(sc.columns)
    add_labels(m, sc, np.zeros(len(sc.ts), dtype=bool), upto)
    return m


def add_labels(m: Loaded, sc: Scenario, already: np.ndarray, upto: float, offset: int = 0) -> np.ndarray:
    """Store the labels received by `upto` that are not stored yet; returns what is stored now.

    Row i of the scenario is request `r{offset + i}` (the order in which Loaded numbers them)."""
    now = sc.labelled & (sc.received <= upto)
    new = np.flatnonzero(now & ~already)
    if len(new):
        label = sc.y[new].astype(str) if sc.task != "regression" else sc.y[new]
        raw = pa.table({"request_id": [f"r{offset + i}" for i in new], "label": label})
        table = build_labels(m.schema, ArrowSource(raw), RowErrors(), now=NOW, max_future=DAY).table
        received = pa.array(sc.received[new], pa.int64()).cast(pa.timestamp("s", tz="UTC"))
        table = table.set_column(table.column_names.index("received"), "received", received)
        m.store.insert(Kind.LABELS, PROJECT, m.schema, table)
    return now


def run(m: Loaded, configs: list[DetectorConfig], n_days: int, *, now: float = NOW) -> list[dict[str, Any]]:
    result = m.runner.run(PROJECT, m.model, configs, T0, T0 + n_days * DAY, DAY, now=now)
    assert not result.errors, result.errors
    return m.runner.metrics.read(MetricsQuery(project=PROJECT, model=m.schema.name))


def series(
    got: list[dict[str, Any]], detector: str, metric: str, detector_id: str | None = None
) -> dict[int, dict[str, Any]]:
    """Rows of one metric by window index (the default config's unless told); exactly one per window."""
    wanted = detector_id or DEFAULT_IDS[detector]
    rows = [r for r in got if r["detector_id"] == wanted and r["metric"] == metric]
    out = {(int(r["window_start"]) - T0) // DAY: r for r in rows}
    assert len(out) == len(rows), f"{detector}/{metric}: more than one row per window"
    return out


def sklearn_metrics(sc: Scenario, mask: np.ndarray) -> dict[str, float]:
    """What scikit-learn says about the labelled rows selected by mask."""
    return sklearn_on(sc.task, sc.y[mask], sc.output[mask])


def sklearn_on(task: str, y: np.ndarray, out: np.ndarray) -> dict[str, float]:
    if task == "binary":
        pred = (out >= 0.5).astype(int)
        return {
            "accuracy": accuracy_score(y, pred),
            "precision": precision_score(y, pred),
            "recall": recall_score(y, pred),
            "f1": f1_score(y, pred),
            "roc_auc": roc_auc_score(y, out),
            "log_loss": log_loss(y, out),
            "brier": brier_score_loss(y, out),
        }
    if task == "multiclass":
        pred = np.array(CLASSES)[out.argmax(axis=1)]
        return {
            "accuracy": accuracy_score(y, pred),
            "precision": precision_score(y, pred, average="macro"),
            "recall": recall_score(y, pred, average="macro"),
            "f1": f1_score(y, pred, average="macro"),
            "roc_auc": roc_auc_score(y, out, multi_class="ovr", labels=CLASSES),
            "log_loss": log_loss(y, out, labels=CLASSES),
            "brier": brier_score_loss(y, out, labels=CLASSES),
        }
    return {
        "mae": mean_absolute_error(y, out),
        "rmse": root_mean_squared_error(y, out),
        "mape": mean_absolute_percentage_error(y, out),
        "r2": r2_score(y, out),
    }


def check_against_sklearn(
    got: list[dict[str, Any]], sc: Scenario, windows: list[int], upto: float = math.inf
) -> dict[str, float]:
    """Every metric of every window equals scikit-learn's; returns the largest difference per metric."""
    worst: dict[str, float] = {}
    for i in windows:
        mask = sc.window(i, upto)
        for metric, expected in sklearn_metrics(sc, mask).items():
            row = series(got, "performance", metric)[i]
            assert row["status"] == "ok" and row["sample_size"] == mask.sum(), (metric, i, row)
            worst[metric] = max(worst.get(metric, 0.0), abs(row["value"] - expected))
            if metric == "roc_auc":
                assert row["value"] == pytest.approx(expected, abs=AUC_TOLERANCE), (i, metric)
            else:
                assert row["value"] == pytest.approx(expected, rel=1e-9, abs=1e-12), (i, metric)
    return worst


def check_label_delays(
    got: list[dict[str, Any]], sc: Scenario, windows: list[int], upto: float = math.inf
) -> None:
    """Coverage and exact delay quantiles (ClickHouse's exact quantile: the element at floor(q·n))."""
    for i in windows:
        mask = sc.window(i, upto)
        rows = ((sc.ts - T0) // DAY == i).sum()
        coverage = series(got, "performance", "label_coverage")[i]
        assert coverage["value"] == pytest.approx(mask.sum() / rows, rel=1e-12)
        delay = np.sort(np.maximum(sc.received[mask] - sc.ts[mask], 0))
        for metric, q in (("label_delay_p50", 0.5), ("label_delay_p90", 0.9)):
            row = series(got, "performance", metric)[i]
            if not len(delay):
                assert row["status"] == "no_data"
                continue
            assert (row["value"], row["sample_size"]) == (delay[int(q * len(delay))], len(delay)), (i, metric)


def flagged_share(got: list[dict[str, Any]], windows: set[int]) -> tuple[int, int]:
    """(flagged, total) ok metric-windows of the three families (default settings) within `windows`."""
    rows = [
        r
        for r in got
        if r["detector_id"] in DEFAULT_IDS.values()
        and r["status"] == "ok"
        and (int(r["window_start"]) - T0) // DAY in windows
    ]
    return sum(r["alert"] for r in rows), len(rows)


def concept_alerts(got: list[dict[str, Any]]) -> set[int]:
    return {i for i, r in series(got, "concept_drift", "concept_drift").items() if r["alert"]}


def assert_json_safe(got: list[dict[str, Any]]) -> None:
    for r in got:
        json.dumps(r["details"], allow_nan=False)
        assert r["status"] in ("ok", "no_data"), r
        if r["status"] == "ok":
            assert math.isfinite(r["value"])


# -- scenarios with a concept change at a known day -------------------------------------------

DAYS = 12
CHANGE = 8
SCENARIOS = {
    "binary": make_scenario("binary", seed=11, n_days=DAYS, change_day=CHANGE),
    "multiclass": make_scenario("multiclass", seed=12, n_days=DAYS, change_day=CHANGE),
    "regression": make_scenario("regression", seed=13, n_days=DAYS, change_day=CHANGE),
}


@pytest.mark.parametrize("task", list(SCENARIOS))
def test_metrics_match_sklearn_and_concept_change_is_flagged(event_engine: EventEngine, task: str) -> None:
    """Values equal scikit-learn's; concept_drift flags from the change on; before it, ≤ 5% of metric-windows flag."""
    sc = SCENARIOS[task]
    m = load(event_engine, sc)
    strict = PerformanceConfig(thresholds={"accuracy": 0.99} if task != "regression" else {"mae": 0.1})
    configs: list[DetectorConfig] = [PerformanceConfig(), LabelDriftConfig(), ConceptDriftConfig(), strict]
    got = run(m, configs, DAYS)
    assert_json_safe(got)
    worst = check_against_sklearn(got, sc, list(range(DAYS)))
    print(task, "largest |value - scikit-learn|:", {k: f"{v:.1e}" for k, v in worst.items()})
    check_label_delays(got, sc, list(range(DAYS)))

    assert concept_alerts(got) == set(range(CHANGE, DAYS))
    flagged, total = flagged_share(got, set(range(CHANGE)))
    assert total >= 8 * CHANGE and flagged <= 0.05 * total, (flagged, total)

    # the reference level: the labelled reference's value with its interval, where a window's value is judged
    main = "accuracy" if task != "regression" else "mae"
    first = series(got, "performance", main)[0]
    reference = first["details"]["reference"]
    ref_all = sklearn_on(task, sc.ref_y, sc.ref_output)
    assert reference["value"] == pytest.approx(ref_all[main], rel=1e-9)
    assert reference["lower"] < reference["value"] < reference["upper"]
    assert reference["method"] == ("wilson" if task != "regression" else "moments")
    # an absolute threshold replaces the reference-based one
    fixed = series(got, "performance", main, strict.id)
    assert all(r["threshold"] == strict.thresholds[main] and r["alert"] for r in fixed.values())

    evidence = series(got, "concept_drift", "concept_drift")
    assert all(
        "cusum_worse" in r["details"] and r["details"]["reference_version"] == "v1" for r in evidence.values()
    )


# -- covariate drift with an unchanged concept ----------------------------------------------


def test_covariate_drift_is_not_concept_drift(event_engine: EventEngine) -> None:
    """Inputs move towards the decision boundary: accuracy falls and performance alerts, concept_drift does not."""
    n_days, shift = 10, 5
    sc = make_scenario("binary", seed=21, n_days=n_days, shift_day=shift)
    m = load(event_engine, sc)
    got = run(m, [PerformanceConfig(), LabelDriftConfig(), ConceptDriftConfig()], n_days)
    assert_json_safe(got)
    check_against_sklearn(got, sc, [0, shift])
    accuracy = series(got, "performance", "accuracy")
    assert {i for i, r in accuracy.items() if r["alert"]} == set(range(shift, n_days))
    assert concept_alerts(got) == set()
    concept = series(got, "concept_drift", "concept_drift")
    for i in range(shift, n_days):  # the drop is what the scores predict
        d = concept[i]["details"]
        assert d["explained_by_scores"] < -0.05 and abs(d["realised"] - d["expected"]) < 0.03
    flagged, total = flagged_share(got, set(range(shift)))
    assert flagged <= 0.05 * total


# -- late labels, in a biased order --------------------------------------------------------


def test_late_labels_are_picked_up_and_replace_earlier_values(event_engine: EventEngine) -> None:
    """Later windows get labels later, high scores first; each run sees what has arrived and rewrites its windows."""
    n_days = 8
    sc = make_scenario("binary", seed=31, n_days=n_days, coverage=0.9)
    rng = np.random.default_rng(32)
    day = (sc.ts - T0) // DAY
    delay = (1 + 0.5 * day + 2 * (1 - sc.output)) * DAY + rng.integers(0, 3600, len(sc.ts))
    sc.received = (sc.ts + delay).astype(np.int64)
    m = Loaded(event_engine, sc.schema)
    m.reference(sc.reference)
    m.predictions(sc.columns)
    configs: list[DetectorConfig] = [PerformanceConfig(), LabelDriftConfig(), ConceptDriftConfig()]

    early = T0 + 9 * DAY
    stored = add_labels(m, sc, np.zeros(len(sc.ts), dtype=bool), early)
    got = run(m, configs, n_days, now=early)
    assert_json_safe(got)
    counts = [int(sc.window(i, early).sum()) for i in range(n_days)]
    complete = [i for i in range(n_days) if counts[i] == sc.window(i).sum()]
    partial = [i for i in range(n_days) if 30 <= counts[i] < sc.window(i).sum()]
    missing = [i for i in range(n_days) if counts[i] < 30]
    assert complete and partial and missing, counts
    check_against_sklearn(got, sc, complete + partial, early)
    check_label_delays(got, sc, list(range(n_days)), early)
    for i in missing:
        row = series(got, "performance", "accuracy")[i]
        assert row["status"] == "no_data" and "min_labels=30" in row["details"]["reason"]
        assert series(got, "concept_drift", "concept_drift")[i]["status"] == "no_data"
    for i in partial:  # labels came first for high scores: a biased sample, marked provisional
        coverage = series(got, "performance", "label_coverage")[i]["value"]
        assert (
            coverage < 0.85
            and series(got, "performance", "accuracy")[i]["details"]["label_coverage"] == coverage
        )
    before = {i: series(got, "performance", "accuracy")[i]["value"] for i in partial}
    # selection on the score does not bias the comparison with what the scores imply
    assert concept_alerts(got) == set()

    add_labels(m, sc, stored, NOW)
    got = run(m, configs, n_days)
    assert_json_safe(got)
    check_against_sklearn(got, sc, list(range(n_days)))
    check_label_delays(got, sc, list(range(n_days)))
    after = series(got, "performance", "accuracy")
    for i in partial:
        assert after[i]["value"] != pytest.approx(before[i], abs=1e-6)
    assert concept_alerts(got) == set()
    delays = [series(got, "performance", "label_delay_p50")[i]["value"] for i in range(n_days)]
    assert delays == sorted(delays) and delays[-1] > delays[0] + 3 * DAY


# -- references -----------------------------------------------------------------------------


def test_reference_choice_and_missing_labels(event_engine: EventEngine) -> None:
    """A challenger without a reference is judged by the champion's; an unlabelled reference gives no_data."""
    sc = make_scenario("binary", seed=41, n_days=2, per_day=400, reference_rows=2000)
    m = Loaded(event_engine, sc.schema, versions=["v1", "v2"])
    m.reference(sc.reference)
    m.predictions(sc.columns)
    m.predictions(sc.columns, version="v2")  # the same traffic, as requests r{n}... of its own
    none = np.zeros(len(sc.ts), dtype=bool)
    add_labels(m, sc, none, NOW)
    add_labels(m, sc, none, NOW, offset=len(sc.ts))
    configs: list[DetectorConfig] = [PerformanceConfig(), LabelDriftConfig(), ConceptDriftConfig()]
    got = run(m, configs, 2)
    assert_json_safe(got)
    v2 = [r for r in got if r["version"] == "v2" and r["detector_id"] in DEFAULT_IDS.values()]
    assert {(r["status"], r["alert"]) for r in v2} == {("ok", False)}
    assert {r["details"]["reference"]["version"] for r in v2 if r["metric"] == "accuracy"} == {"v1"}
    assert {r["details"]["reference_version"] for r in v2 if r["metric"] == "concept_drift"} == {"v1"}
    v1 = {(r["metric"], r["window_start"]): r["value"] for r in got if r["version"] == "v1"}
    assert all(v1[(r["metric"], r["window_start"])] == r["value"] for r in v2)  # same traffic, same values

    bare = Loaded(event_engine, {**sc.schema, "name": "perf_bare"})
    bare.reference({k: v for k, v in sc.reference.items() if k != "label"})
    bare.predictions(sc.columns)
    add_labels(bare, sc, np.zeros(len(sc.ts), dtype=bool), NOW)
    got = run(bare, configs, 2)
    assert_json_safe(got)
    accuracy = series(got, "performance", "accuracy")
    assert all(
        r["status"] == "ok" and r["details"]["reference"] is None and not r["alert"]
        for r in accuracy.values()
    )
    for detector in ("label_drift", "concept_drift"):
        rows = series(got, detector, detector)
        assert {r["details"]["reason"] for r in rows.values()} == {"no labelled reference"}


# -- configuration --------------------------------------------------------------------------


def test_families_are_registered_with_defaults_and_validate_settings() -> None:
    kinds = registry.kinds()
    assert {"performance", "label_drift", "concept_drift"} <= set(kinds)
    defaults = {c.kind for c in registry.default_configs()}
    assert {"performance", "label_drift", "concept_drift"} <= defaults
    assert PerformanceConfig().id == PerformanceConfig().id != PerformanceConfig(min_labels=50).id
    with pytest.raises(ValidationError, match="unknown metrics"):
        PerformanceConfig(thresholds={"magic": 1.0})
    with pytest.raises(ValidationError):
        ConceptDriftConfig.model_validate({"direction": "sideways"})
    with pytest.raises(ValidationError):
        LabelDriftConfig(alpha=2)


def test_an_uploads_forced_reference_summary_sees_labels_changed_under_the_same_counts(
    event_engine: EventEngine,
) -> None:
    """The performance reference is recognised by its row and label counts; an upload forces a
    new summary, so labels corrected under the same counts are the ones judged against."""
    m = Loaded(
        event_engine, {"name": "relabel", "task": "binary", "features": [{"name": "x", "kind": "numeric"}]}
    )
    rng = np.random.default_rng(17)
    n = 400
    score = rng.random(n)
    labels = (rng.random(n) < score).astype(int)
    columns = {"x": rng.normal(size=n), "score": score}
    perf = m.runner.perf

    def positives() -> int:
        got = perf.read(PROJECT, m.schema, kind="q", start=0, end=REFERENCE_CHUNKS, step=REFERENCE_CHUNKS)
        return int(got[("v1", "")].binned[""].n[0, :, :, 1, 1].sum())

    m.reference({**columns, "label": labels.astype(str).tolist()})
    assert perf.summarize_reference(PROJECT, m.schema, "v1")
    first = positives()
    assert 0 < first < n
    m.reference({**columns, "label": (1 - labels).astype(str).tolist()})
    assert perf.summarize_reference(PROJECT, m.schema, "v1") and positives() == first  # the counts match
    assert perf.summarize_reference(PROJECT, m.schema, "v1", force=True) and positives() == n - first
