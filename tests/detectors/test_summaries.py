"""Summaries against the raw rows they summarise, on both engines."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as sps

from driftline.detectors.summaries import LEVELS, TDIGEST_ROWS, Summarizer, sample_modulus
from driftline.ingest.columns import PiiHasher, RowErrors
from driftline.ingest.records import ArrowSource, build_predictions
from driftline.schema import ModelSchema
from driftline.storage.events import EventEngine, EventStore, Kind

SCHEMA = ModelSchema.model_validate(
    {
        "name": "big",
        "task": "binary",
        "features": [{"name": "x", "kind": "numeric"}, {"name": "c", "kind": "categorical"}],
    }
)
HOUR = 3600
T0 = 1_780_000_000 // HOUR * HOUR


def test_sampling_modulus() -> None:
    assert sample_modulus(TDIGEST_ROWS) == 1
    assert sample_modulus(TDIGEST_ROWS + 1) == 2
    assert sample_modulus(100 * TDIGEST_ROWS) == 128


def test_a_busy_hour_keeps_exact_moments_and_accurate_quantiles(event_engine: EventEngine) -> None:
    """An hour with 150,000 rows: its t-digest samples 1 in 16 with weights, moments see every row."""
    rng = np.random.default_rng(21)
    n = 150_000
    x = rng.lognormal(0, 0.7, n)
    x[rng.random(n) < 0.02] = np.nan
    raw = pa.table(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "version": ["v1"] * n,
            "timestamp": T0 + rng.integers(0, HOUR, n),
            "x": pa.array(x, mask=np.isnan(x)),
            "c": rng.choice(["a", "b", "c"], n),
            "score": rng.random(n),
        }
    )
    store = EventStore(event_engine)
    store.ensure_model("default", SCHEMA)
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, _built(raw))
    summarizer = Summarizer(store)
    assert summarizer.summarize("default", SCHEMA, T0, T0 + HOUR, now=T0 + 10 * HOUR) == 1
    got = summarizer.read("default", SCHEMA, kind="p", start=T0, end=T0 + HOUR, step=HOUR)["v1"]
    window = got.numeric["x"].window(0)
    values = x[~np.isnan(x)]
    assert window.n == len(values)
    assert window.sum == np.float64(values.sum()) or abs(window.sum - values.sum()) < 1e-6 * values.sum()
    assert window.min == values.min() and window.max == values.max()
    exact = np.quantile(values, LEVELS)
    middle = (LEVELS >= 0.01) & (LEVELS <= 0.99)
    # rank error of the sampled sketch stays well inside what drift statistics tolerate
    ranks = np.searchsorted(np.sort(values), window.q[middle]) / len(values)
    assert np.max(np.abs(ranks - LEVELS[middle])) < 0.01
    # Wasserstein between the sketch's quantile function and the data, against the data's spread
    w1 = float(np.trapezoid(np.abs(window.q[middle] - exact[middle]), LEVELS[middle]))
    assert w1 / values.std() < 0.01
    assert sps.ks_2samp(values, np.interp(rng.random(20_000), LEVELS, window.q)).statistic < 0.02
    counts = got.categorical["c"].window(0)
    assert sum(counts.values()) == n


def _built(raw: pa.Table) -> pa.Table:
    """Raw columns as ingest stores them."""
    return build_predictions(
        SCHEMA,
        ["v1"],
        ArrowSource(raw),
        RowErrors(),
        now=T0 + 10 * HOUR,
        max_future=0,
        hasher=PiiHasher(b"k"),
    ).table


def _rows(n: int, prefix: str, start: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return _built(
        pa.table(
            {
                "request_id": [f"{prefix}{i}" for i in range(n)],
                "version": ["v1"] * n,
                "timestamp": start + rng.integers(0, HOUR, n),
                "x": rng.normal(0, 1, n),
                "c": rng.choice(["a", "b"], n),
                "score": rng.random(n),
            }
        )
    )


def test_rows_arriving_during_a_summary_pass_are_summarised_later(
    event_engine: EventEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger vouches for the rows counted before the summaries were written: late rows that
    land while they are written make the bucket stale, so the next pass takes them in."""
    store = EventStore(event_engine)
    store.ensure_model("default", SCHEMA)
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, _rows(300, "a", T0, 1))
    summarizer = Summarizer(store)
    real = event_engine.execute
    landed: list[int] = []

    def late_rows_after_numeric_states(sql: str, params: dict[str, object] | None = None) -> None:
        real(sql, params)
        if "INSERT INTO" in sql and "numsum" in sql and not landed:
            landed.append(
                store.insert(Kind.PREDICTIONS, "default", SCHEMA, _rows(40, "late", T0, 2)).inserted
            )

    monkeypatch.setattr(event_engine, "execute", late_rows_after_numeric_states)
    assert summarizer.summarize_buckets("default", SCHEMA, T0, T0 + HOUR, now=T0 + 10 * HOUR) == [T0]
    monkeypatch.undo()
    assert landed == [40]
    # the late rows made the bucket stale: summarised again, all 340 rows in it
    assert summarizer.summarize_buckets("default", SCHEMA, T0, T0 + HOUR, now=T0 + 10 * HOUR) == [T0]
    got = summarizer.read("default", SCHEMA, kind="p", start=T0, end=T0 + HOUR, step=HOUR)["v1"]
    assert int(got.rows[0]) == 340 and got.numeric["x"].window(0).n == 340
    assert sum(got.categorical["c"].window(0).values()) == 340
    assert summarizer.summarize_buckets("default", SCHEMA, T0, T0 + HOUR, now=T0 + 10 * HOUR) == []
