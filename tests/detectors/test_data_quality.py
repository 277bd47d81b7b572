"""Data quality on synthetic data with known truth, through the real Runner, on both engines.

Fifteen six-hour windows of a seeded stream (and a sixteenth left empty) with one planted
fault each: out-of-range values, outliers, a feature going null, unseen and undeclared
categories, an outlying discrete value, an unknown field. Every alert must land on its
fault's window and nowhere else, and every value must match NumPy on the raw rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from driftline.detectors import registry
from driftline.detectors.data_quality import DataQualityConfig, Thresholds
from driftline.detectors.results import MetricsQuery, MetricsTable
from driftline.detectors.runner import Runner
from driftline.ingest.columns import PiiHasher, RowErrors
from driftline.ingest.records import ArrowSource, build_predictions, build_reference
from driftline.schema import ModelSchema
from driftline.storage.events import EventEngine, EventStore, Kind
from tests.detectors import PROJECT, model_info

HOUR = 3600
STEP = 6 * HOUR
WINDOWS = 16
PER_HOUR = 150
T0 = 1_780_000_000 // 86_400 * 86_400
NOW = T0 + 30 * 86_400
SCHEMA = ModelSchema.model_validate(
    {
        "name": "dq",
        "task": "binary",
        "features": [
            {"name": "x", "kind": "numeric", "range": [-5, 5]},
            {"name": "y", "kind": "numeric"},
            {"name": "z", "kind": "numeric"},
            {"name": "n", "kind": "numeric"},
            {"name": "c", "kind": "categorical", "categories": ["a", "b", "c"]},
            {"name": "k", "kind": "categorical"},
            {"name": "b", "kind": "boolean"},
        ],
        "metadata": [{"name": "ch"}],
    }
)
# (metric, feature) -> windows where the planted fault must alert
FAULTS = {
    ("out_of_range_rate", "x"): {3},
    ("outlier_rate", "x"): {3},
    ("schema_violations", "x"): {3},
    ("schema_violations", "extra"): {5},
    ("unseen_category_rate", "k"): {6, 7},
    ("outlier_rate", "y"): {8},
    ("missing_rate", "z"): set(range(10, 15)),
    ("unseen_category_rate", "c"): {12},
    ("schema_violations", "c"): {12},
    ("outlier_rate", "n"): {14},
}


@dataclass
class Stream:
    """The raw rows as generated: what the detector's values are checked against."""

    ts: np.ndarray
    cols: dict[str, np.ndarray]
    ref: dict[str, np.ndarray]

    def window(self, i: int) -> np.ndarray:
        lo = T0 + i * STEP
        return (self.ts >= lo) & (self.ts < lo + STEP)


def make_stream(*, faults: bool, seed: int = 7) -> Stream:
    rng = np.random.default_rng(seed)
    hours = np.repeat(np.arange((WINDOWS - 1) * STEP // HOUR), PER_HOUR)  # the last window stays empty
    ts = T0 + hours * HOUR + rng.integers(0, HOUR, len(hours))
    m = len(ts)

    def draw(size: int) -> dict[str, np.ndarray]:
        z = rng.normal(size=size)
        z[rng.random(size) < 0.05] = np.nan
        return {
            "x": rng.normal(size=size),
            "y": rng.normal(10, 2, size),
            "z": z,
            "n": rng.integers(0, 5, size).astype(np.float64),
            "c": rng.choice(np.array(["a", "b", "c"], dtype=object), size),
            "k": rng.choice(np.array(["p", "q", "r"], dtype=object), size),
            "b": rng.random(size) < 0.3,
            "ch": rng.choice(np.array(["web", "app"], dtype=object), size),
        }

    cols = draw(m)
    cols["extra"] = np.full(m, np.nan)
    ref = draw(5000)
    if faults:

        def pick(window: int, share: float) -> np.ndarray:
            lo = T0 + window * STEP
            idx = np.flatnonzero((ts >= lo) & (ts < lo + STEP))
            return rng.choice(idx, int(share * len(idx)), replace=False)

        cols["x"][pick(3, 0.08)] = 50.0
        cols["extra"][pick(5, 0.04)] = 1.0
        cols["k"][np.concatenate([pick(6, 0.10), pick(7, 0.10)])] = "new"
        cols["y"][pick(8, 0.05)] = 10 + 2 * 8
        cols["z"][ts >= T0 + 10 * STEP] = np.nan
        cols["c"][pick(12, 0.05)] = "zz"
        cols["n"][pick(14, 0.05)] = 9.0
    return Stream(ts=ts, cols=cols, ref=ref)


def _arrow(values: np.ndarray) -> pa.Array:
    if values.dtype == object:
        return pa.array(values.tolist(), pa.string())
    if values.dtype == bool:
        return pa.array(values)
    return pa.array(values, pa.float64(), mask=np.isnan(values))


def load(engine: EventEngine, stream: Stream) -> EventStore:
    store = EventStore(engine)
    store.ensure_model(PROJECT, SCHEMA)
    m = len(stream.ts)
    rng = np.random.default_rng(1)
    live = {
        "request_id": pa.array([f"r{i}" for i in range(m)]),
        "version": pa.array(["v1"] * m),
        "timestamp": pa.array(stream.ts, pa.int64()),
        "score": pa.array(rng.random(m)),
        **{name: _arrow(values) for name, values in stream.cols.items()},
    }
    hasher = PiiHasher(b"k")
    batch = build_predictions(
        SCHEMA, ["v1"], ArrowSource(pa.table(live)), RowErrors(), now=NOW, max_future=0, hasher=hasher
    )
    store.insert(Kind.PREDICTIONS, PROJECT, SCHEMA, batch.table)
    ref = pa.table({name: _arrow(values) for name, values in stream.ref.items()})
    reference = build_reference(SCHEMA, "v1", ArrowSource(ref), RowErrors(), now=T0, hasher=hasher)
    store.replace_reference(PROJECT, SCHEMA, "v1", reference.table)
    return store


def run(
    engine: EventEngine, stream: Stream, configs: list[DataQualityConfig], times: int = 1
) -> dict[str, list[dict[str, Any]]]:
    """Load the stream, run the detectors `times` over, read back each detector's rows by its id."""
    store = load(engine, stream)
    for _ in range(times):
        result = Runner(store).run(
            PROJECT, model_info(SCHEMA, ["v1"]), configs, T0, T0 + WINDOWS * STEP, STEP, now=NOW
        )
        assert result.errors == []
    rows = MetricsTable(engine).read(
        MetricsQuery(project=PROJECT, model=SCHEMA.name, detector="data_quality")
    )
    return {c.id: [r for r in rows if r["detector_id"] == c.id] for c in configs}


def window_of(row: dict[str, Any]) -> int:
    return (int(row["window_start"]) - T0) // STEP


def by_key(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["metric"], r["feature"], window_of(r)): r for r in rows}


def test_planted_faults_alert_in_their_windows_only(event_engine: EventEngine) -> None:
    """Default thresholds flag every fault where it was planted; per-feature ones silence two of them."""
    lenient = DataQualityConfig(
        features={"z": Thresholds(missing_margin=1.0), "k": Thresholds(unseen_threshold=0.5)}
    )
    default = DataQualityConfig()
    assert lenient.id != default.id
    got_by = run(event_engine, make_stream(faults=True), [default, lenient])
    rows = got_by[default.id]
    got: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        if r["alert"]:
            got.setdefault((r["metric"], r["feature"]), set()).add(window_of(r))
    assert got == FAULTS
    for r in rows:
        json.dumps(r["details"], allow_nan=False)  # plain JSON: no NaN or infinity anywhere
    assert {r["status"] for r in rows if window_of(r) == WINDOWS - 1} == {"no_data"}
    assert all(r["status"] == "ok" for r in rows if window_of(r) < WINDOWS - 1 and r["feature"] != "z")
    metrics = {(r["metric"], r["feature"]) for r in rows}
    assert ("out_of_range_rate", "y") not in metrics  # no declared range, nothing to breach
    assert ("unseen_category_rate", "b") in metrics and ("unseen_category_rate", "ch") in metrics

    loose = got_by[lenient.id]
    alerted = {(r["metric"], r["feature"]) for r in loose if r["alert"]}
    assert alerted == set(FAULTS) - {("missing_rate", "z"), ("unseen_category_rate", "k")}
    z = [r for r in loose if (r["metric"], r["feature"]) == ("missing_rate", "z") and r["status"] == "ok"]
    assert z and all(r["threshold"] == 1.0 for r in z)
    assert DataQualityConfig in {type(c) for c in registry.default_configs()}  # on without configuration


def test_values_match_numpy_on_the_raw_rows(event_engine: EventEngine) -> None:
    """Run twice: the second run replaces the first, and by then `n` is counted by value (exact)."""
    stream = make_stream(faults=True)
    config = DataQualityConfig()
    rows = run(event_engine, stream, [config], times=2)[config.id]
    got = by_key(rows)
    assert len(got) == len(rows)  # nothing doubled by the re-run
    c = stream.cols
    ref_y = stream.ref["y"]
    for i in range(WINDOWS - 1):
        w = stream.window(i)
        rows_in = int(w.sum())
        z = got[("missing_rate", "z", i)]
        assert z["value"] == pytest.approx(np.isnan(c["z"][w]).mean(), abs=1e-12)
        assert z["sample_size"] == rows_in
        assert got[("missing_rate", "x", i)]["value"] == 0.0
        assert got[("out_of_range_rate", "x", i)]["value"] == pytest.approx((np.abs(c["x"][w]) > 5).mean())
        assert got[("unseen_category_rate", "k", i)]["value"] == pytest.approx(
            (~np.isin(c["k"][w], ["p", "q", "r"])).mean()
        )
        assert got[("unseen_category_rate", "c", i)]["value"] == pytest.approx((c["c"][w] == "zz").mean())
        n = got[("outlier_rate", "n", i)]
        assert n["details"]["method"] == "counts"
        assert n["value"] == pytest.approx((c["n"][w] > 4).mean(), abs=1e-12)
        assert got[("schema_violations", "x", i)]["value"] == (np.abs(c["x"][w]) > 5).sum()
        assert got[("schema_violations", "c", i)]["value"] == (c["c"][w] == "zz").sum()
        assert got[("schema_violations", "extra", i)]["value"] == (~np.isnan(c["extra"][w])).sum()
        y = got[("outlier_rate", "y", i)]
        assert y["details"]["method"] == "tdigest"
        lo, hi = y["details"]["low"], y["details"]["high"]
        truth = ((c["y"][w] < lo) | (c["y"][w] > hi)).mean()
        assert y["value"] == pytest.approx(truth, abs=0.004), i
        assert y["sample_size"] == rows_in
    y = got[("outlier_rate", "y", 0)]["details"]
    assert y["low"] == pytest.approx(np.quantile(ref_y, 0.001), abs=0.25)
    assert y["high"] == pytest.approx(np.quantile(ref_y, 0.999), abs=0.25)
    assert got[("outlier_rate", "y", 8)]["value"] == pytest.approx(0.05, abs=0.006)
    k = got[("unseen_category_rate", "k", 6)]
    assert set(k["details"]["examples"]) == {"new"}
    assert k["details"]["examples"]["new"] == (c["k"][stream.window(6)] == "new").sum()
    assert got[("schema_violations", "x", 3)]["details"]["by_reason"] == {"range": int(0.08 * 900)}
    assert got[("schema_violations", "extra", 5)]["details"]["by_reason"] == {"unknown": int(0.04 * 900)}
    base = np.isnan(stream.ref["z"]).mean()
    assert got[("missing_rate", "z", 0)]["details"]["reference_rate"] == pytest.approx(base)
    assert got[("missing_rate", "z", 0)]["threshold"] > base + 0.05


def test_clean_stream_raises_almost_no_alerts(event_engine: EventEngine) -> None:
    config = DataQualityConfig()
    rows = run(event_engine, make_stream(faults=False, seed=11), [config])[config.id]
    judged = [r for r in rows if r["status"] == "ok"]
    assert len(judged) == 15 * 25  # every window, every series
    assert sum(r["alert"] for r in judged) <= 0.05 * len(judged)
