"""Operations on synthetic traffic with known truth, through the real Runner, on both engines.

Eleven days of traffic for three versions, judged in six-hour windows from day 3 on; the
detector learns what is normal from the same slot on up to seven days before:
- v1 serves all day; one stage slows down in one window, a dependency fails in another, the
  model server times out in a third, and a steady 1% of errors is normal;
- v2 is a daily batch at 02:00 that stops after day 8;
- v3 served until day 5 and has been silent since;
- labels stop arriving after day 6.
Alerts must land exactly on those windows, and the values must match NumPy on the raw rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from driftline.detectors import registry
from driftline.detectors.operations import OperationsConfig
from driftline.detectors.results import MetricsQuery, MetricsTable
from driftline.detectors.runner import Runner
from driftline.ingest.columns import PiiHasher, RowErrors
from driftline.ingest.records import ArrowSource, build_labels, build_predictions
from driftline.schema import ModelSchema
from driftline.storage.events import EventEngine, EventStore, Kind
from tests.detectors import PROJECT, model_info

HOUR = 3600
DAY = 86_400
T0 = 1_780_000_000 // DAY * DAY
DAYS = 11
STEP = 6 * HOUR
START, END = T0 + 3 * DAY, T0 + DAYS * DAY  # the first three days are history only
NOW = END + 1800
SCHEMA = ModelSchema.model_validate(
    {"name": "ops", "task": "binary", "features": [{"name": "x", "kind": "numeric"}]}
)
VERSIONS = ["v1", "v2", "v3"]
SLOW = {T0 + 8 * DAY + 12 * HOUR}  # stage `inference` five times slower
FAILING = {T0 + 9 * DAY + 12 * HOUR}  # 30% errors from `feature_store`
TIMEOUTS = {T0 + 10 * DAY + 6 * HOUR}  # 20% timeouts at `model_server`
BATCH_DAYS = 9  # v2 runs at 02:00 on days 0..8
LABELS_UNTIL = T0 + 7 * DAY  # labels received every hour before this


@dataclass
class Traffic:
    """The raw rows as generated, per version: what the detector's values are checked against."""

    cols: dict[str, np.ndarray]
    label_times: np.ndarray

    def select(self, version: str, lo: int, hi: int) -> np.ndarray:
        ts = self.cols["timestamp"]
        return np.asarray((self.cols["version"] == version) & (ts >= lo) & (ts < hi), dtype=bool)


def make_traffic(seed: int = 3) -> Traffic:
    rng = np.random.default_rng(seed)
    parts: list[tuple[str, np.ndarray]] = []
    hours = T0 + HOUR * np.arange(DAYS * 24)
    diurnal = 1 + 0.3 * np.sin(2 * np.pi * (hours % DAY) / DAY)
    v1 = np.repeat(hours, rng.poisson(150 * diurnal))
    parts.append(("v1", v1))
    batch = T0 + DAY * np.arange(BATCH_DAYS) + 2 * HOUR
    parts.append(("v2", np.repeat(batch, 500)))
    parts.append(("v3", np.repeat(hours[hours < T0 + 6 * DAY], 20)))
    version = np.concatenate([np.full(len(h), v, dtype=object) for v, h in parts])
    hour = np.concatenate([h for _, h in parts])
    ts = hour + rng.integers(0, HOUR, len(hour))
    m = len(ts)
    pre = rng.gamma(4, 0.5, m)
    inference = rng.gamma(4, 2.5, m)
    window = hour // STEP * STEP
    inference[np.isin(window, list(SLOW)) & (version == "v1")] *= 5
    status = np.full(m, "ok", dtype=object)
    error = np.full(m, None, dtype=object)
    u = rng.random(m)
    steady = u < 0.01
    status[steady], error[steady] = "error", "db"
    failing = np.isin(window, list(FAILING)) & (version == "v1") & (u > 0.7)
    status[failing], error[failing] = "error", "feature_store"
    timeouts = np.isin(window, list(TIMEOUTS)) & (version == "v1") & (u > 0.8)
    status[timeouts], error[timeouts] = "timeout", "model_server"
    cols = {
        "version": version,
        "timestamp": ts,
        "x": rng.normal(size=m),
        "score": rng.random(m),
        "timing_preprocess": pre,
        "timing_inference": inference,
        "latency_ms": pre + inference + rng.gamma(2, 0.5, m),
        "status": status,
        "error": error,
    }
    label_times = np.repeat(np.arange(T0, LABELS_UNTIL, HOUR) + 1800, 20)
    return Traffic(cols=cols, label_times=label_times)


def load(engine: EventEngine, traffic: Traffic) -> EventStore:
    store = EventStore(engine)
    store.ensure_model(PROJECT, SCHEMA)
    c = traffic.cols
    m = len(c["timestamp"])
    table = pa.table(
        {
            "request_id": [f"r{i}" for i in range(m)],
            **{k: pa.array(v.tolist(), pa.string()) if v.dtype == object else v for k, v in c.items()},
        }
    )
    batch = build_predictions(
        SCHEMA, VERSIONS, ArrowSource(table), RowErrors(), now=NOW, max_future=0, hasher=PiiHasher(b"k")
    )
    store.insert(Kind.PREDICTIONS, PROJECT, SCHEMA, batch.table)
    k = len(traffic.label_times)
    raw = pa.table(
        {"request_id": [f"r{i}" for i in range(k)], "label": ["1"] * k, "timestamp": traffic.label_times}
    )
    labels = build_labels(SCHEMA, ArrowSource(raw), RowErrors(), now=NOW, max_future=0).table
    received = pa.array(traffic.label_times, pa.int64()).cast(pa.timestamp("s", tz="UTC"))
    labels = labels.set_column(labels.column_names.index("received"), "received", received)
    store.insert(Kind.LABELS, PROJECT, SCHEMA, labels)
    return store


def run(
    engine: EventEngine,
    traffic: Traffic,
    configs: list[OperationsConfig],
    *,
    start: int = START,
    now: int = NOW,
) -> dict[str, list[dict[str, Any]]]:
    """Load the traffic, run the detectors once, read back each detector's rows by its id."""
    store = load(engine, traffic)
    result = Runner(store).run(PROJECT, model_info(SCHEMA, VERSIONS), configs, start, END, STEP, now=now)
    assert result.errors == []
    rows = MetricsTable(engine).read(MetricsQuery(project=PROJECT, model=SCHEMA.name, detector="operations"))
    return {c.id: [r for r in rows if r["detector_id"] == c.id] for c in configs}


def alerts(rows: list[dict[str, Any]], version: str) -> dict[tuple[str, str], set[int]]:
    out: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        if r["alert"] and r["version"] == version:
            out.setdefault((r["metric"], r["feature"]), set()).add(int(r["window_start"]))
    return out


def age_at(times: np.ndarray, moment: int) -> float | None:
    before = times[times <= moment]
    return float(moment - before.max()) if len(before) else None


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return make_traffic()


def test_incidents_alert_in_their_windows_only(event_engine: EventEngine, traffic: Traffic) -> None:
    """Default thresholds flag every incident where it happened and nothing else; fixed ceilings override."""
    default = OperationsConfig()
    ceilings = OperationsConfig(latency_slo_ms={"latency_p50:preprocess": 1.0}, label_max_age_s=None)
    assert ceilings.id != default.id
    got = run(event_engine, traffic, [default, ceilings])
    rows = got[default.id]
    assert {r["status"] for r in rows} <= {"ok", "no_data"}
    for r in rows:
        json.dumps(r["details"], allow_nan=False)  # plain JSON: no NaN or infinity anywhere
    latency = {(m, s): SLOW for m in ("latency_p50", "latency_p95", "latency_p99") for s in ("", "inference")}
    planted = {
        **latency,
        ("error_rate", ""): FAILING,
        ("error_rate_by_cause", "feature_store"): FAILING,
        ("timeout_rate", ""): TIMEOUTS,
        ("error_rate_by_cause", "model_server"): TIMEOUTS,
    }
    assert alerts(rows, "v1") == planted
    clean = [
        r
        for r in rows
        if r["version"] == "v1"
        and r["status"] == "ok"
        and int(r["window_start"]) not in SLOW | FAILING | TIMEOUTS
    ]
    assert len(clean) > 400 and sum(r["alert"] for r in clean) <= 0.05 * len(clean)  # in fact none

    ts = traffic.cols["timestamp"]
    windows = START + STEP * np.arange((END - START) // STEP)
    limit = DAY + STEP  # default: one seasonal period (a day for sub-daily windows) plus one window
    for version, silent in (
        ("v2", {T0 + d * DAY for d in (9, 10)}),  # the batch was due and never came
        (
            "v3",
            set(windows[(windows >= T0 + 6 * DAY) & (windows < T0 + 10 * DAY)].tolist()),
        ),  # until history fades
    ):
        by_metric = alerts(rows, version)
        assert by_metric.pop(("volume", "")) == silent, version
        mine = ts[traffic.cols["version"] == version]
        stale = {int(w) for w in windows if (age_at(mine, int(w) + STEP) or 0) > limit}
        assert by_metric.pop(("freshness", "predictions")) == stale
        assert by_metric == {}, version
        assert min(stale) < T0 + 10 * DAY
    v2_volume = [r for r in rows if r["version"] == "v2" and r["metric"] == "volume" and r["alert"]]
    assert {r["details"]["direction"] for r in v2_volume} == {"silent"}
    assert all(r["details"]["expected"] == 500 and r["value"] == 0 for r in v2_volume)
    stale_labels = {int(w) for w in windows if (age_at(traffic.label_times, int(w) + STEP) or 0) > 3 * DAY}
    assert alerts(rows, "") == {("freshness", "labels"): stale_labels}
    assert min(stale_labels) == LABELS_UNTIL + 3 * DAY - STEP  # the first window ending 3 days after the last

    fixed = got[ceilings.id]
    pre = [
        r
        for r in fixed
        if r["version"] == "v1" and (r["metric"], r["feature"]) == ("latency_p50", "preprocess")
    ]
    assert pre and all(r["alert"] and r["threshold"] == 1.0 for r in pre)  # its median is about 1.8 ms
    assert alerts(fixed, "v1") == {**planted, ("latency_p50", "preprocess"): set(windows.tolist())}
    assert alerts(fixed, "") == {}  # label freshness reported without a verdict
    assert OperationsConfig in {type(c) for c in registry.default_configs()}  # on without configuration


def test_values_match_numpy_on_the_raw_rows(event_engine: EventEngine, traffic: Traffic) -> None:
    """From day 7 on, where v3 has no row at all: it is still reported, from the lookback."""
    config = OperationsConfig()
    start = T0 + 7 * DAY
    rows = run(event_engine, traffic, [config], start=start)[config.id]
    got = {(r["version"], r["metric"], r["feature"], int(r["window_start"])): r for r in rows}
    c = traffic.cols
    assert not traffic.select("v3", start, END).any()
    v3 = [r for r in rows if r["version"] == "v3" and r["metric"] == "volume"]
    assert len(v3) == (END - start) // STEP and all(r["value"] == 0 for r in v3)
    assert {int(r["window_start"]) for r in v3 if r["alert"]} == set(range(start, T0 + 10 * DAY, STEP))
    worst = {"latency_p50": 0.0, "latency_p95": 0.0, "latency_p99": 0.0}
    for lo in range(start, END, STEP):
        w = traffic.select("v1", lo, lo + STEP)
        n = int(w.sum())
        assert got[("v1", "volume", "", lo)]["value"] == n
        assert got[("v1", "throughput", "", lo)]["value"] == pytest.approx(n / STEP)
        status = c["status"][w]
        assert got[("v1", "error_rate", "", lo)]["value"] == pytest.approx((status == "error").mean())
        assert got[("v1", "timeout_rate", "", lo)]["value"] == pytest.approx((status == "timeout").mean())
        for cause in ("db", "feature_store", "model_server"):
            share = (c["error"][w] == cause).mean()
            assert got[("v1", "error_rate_by_cause", cause, lo)]["value"] == pytest.approx(share)
        newest = c["timestamp"][traffic.select("v1", 0, lo + STEP)].max()
        assert got[("v1", "freshness", "predictions", lo)]["value"] == lo + STEP - newest
        for column, stage in (
            ("latency_ms", ""),
            ("timing_inference", "inference"),
            ("timing_preprocess", "preprocess"),
        ):
            values = c[column][w]
            for metric, p in (("latency_p50", 0.5), ("latency_p95", 0.95), ("latency_p99", 0.99)):
                row = got[("v1", metric, stage, lo)]
                assert row["sample_size"] == n
                worst[metric] = max(worst[metric], abs(row["value"] / np.quantile(values, p) - 1))
    assert worst["latency_p50"] < 0.03 and worst["latency_p95"] < 0.05 and worst["latency_p99"] < 0.12, worst
    for lo in range(start, END, STEP):
        age = age_at(traffic.label_times, lo + STEP)
        assert got[("", "freshness", "labels", lo)]["value"] == age


def test_window_in_progress_is_measured_but_not_judged(event_engine: EventEngine, traffic: Traffic) -> None:
    """A run before the range is over: the hour in progress is read raw, later windows are not reported."""
    now = T0 + 10 * DAY + 12 * HOUR + 1200
    config = OperationsConfig()
    rows = run(event_engine, traffic, [config], start=T0 + 10 * DAY, now=now)[config.id]
    current_start = now // STEP * STEP
    assert max(int(r["window_start"]) for r in rows) == current_start
    current = {
        (r["version"], r["metric"], r["feature"]): r for r in rows if int(r["window_start"]) == current_start
    }
    volume = current[("v1", "volume", "")]
    assert volume["details"]["partial"] and not volume["alert"] and volume["threshold"] is None
    assert current[("v1", "throughput", "")]["status"] == "no_data"  # no closed hour in this window yet
    ts = traffic.cols["timestamp"][traffic.cols["version"] == "v1"]
    assert current[("v1", "freshness", "predictions")]["value"] == age_at(ts, now)
    assert current[("v1", "freshness", "predictions")]["value"] < 1200
