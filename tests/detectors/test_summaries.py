"""Summaries against the raw rows they summarise, on both engines."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as sps

from driftline.detectors import summaries
from driftline.detectors.summaries import LEVELS, REFERENCE_CHUNKS, TDIGEST_ROWS, Summarizer, sample_modulus
from driftline.ingest.columns import PiiHasher, RowErrors
from driftline.ingest.records import ArrowSource, build_predictions, build_reference
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
        ["v1", "v2", "v3"],
        ArrowSource(raw),
        RowErrors(),
        now=T0 + 10 * HOUR,
        max_future=0,
        hasher=PiiHasher(b"k"),
    ).table


def _rows(n: int, prefix: str, start: int, seed: int, version: str = "v1") -> pa.Table:
    rng = np.random.default_rng(seed)
    return _built(
        pa.table(
            {
                "request_id": [f"{prefix}{i}" for i in range(n)],
                "version": [version] * n,
                "timestamp": start + rng.integers(0, HOUR, n),
                "x": rng.normal(0, 1, n),
                "c": rng.choice(["a", "b"], n),
                "score": rng.random(n),
            }
        )
    )


def _landing_once(
    monkeypatch: pytest.MonkeyPatch, store: EventStore, rows: pa.Table, *, after: Callable[[str], bool]
) -> list[int]:
    """Insert `rows` once, right after the first statement that `after` picks: rows arriving
    in the middle of a summary pass. Returns the list the inserted count lands in."""
    real = store.engine.execute
    landed: list[int] = []

    def execute(sql: str, params: dict[str, object] | None = None) -> None:
        real(sql, params)
        if after(sql) and not landed:
            landed.append(store.insert(Kind.PREDICTIONS, "default", SCHEMA, rows).inserted)

    monkeypatch.setattr(store.engine, "execute", execute)
    return landed


def test_rows_arriving_during_a_summary_pass_are_summarised_later(
    event_engine: EventEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger vouches for the rows counted before the summaries were written: late rows that
    land while they are written make the bucket stale, so the next pass takes them in."""
    store = EventStore(event_engine)
    store.ensure_model("default", SCHEMA)
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, _rows(300, "a", T0, 1))
    summarizer = Summarizer(store)
    landed = _landing_once(
        monkeypatch,
        store,
        _rows(40, "late", T0, 2),
        after=lambda sql: "INSERT INTO" in sql and "numsum" in sql,
    )
    assert summarizer.summarize_buckets("default", SCHEMA, T0, T0 + HOUR, now=T0 + 10 * HOUR) == [T0]
    monkeypatch.undo()
    assert landed == [40]
    # the late rows made the bucket stale: summarised again, all 340 rows in it
    assert summarizer.summarize_buckets("default", SCHEMA, T0, T0 + HOUR, now=T0 + 10 * HOUR) == [T0]
    got = summarizer.read("default", SCHEMA, kind="p", start=T0, end=T0 + HOUR, step=HOUR)["v1"]
    assert int(got.rows[0]) == 340 and got.numeric["x"].window(0).n == 340
    assert sum(got.categorical["c"].window(0).values()) == 340
    assert summarizer.summarize_buckets("default", SCHEMA, T0, T0 + HOUR, now=T0 + 10 * HOUR) == []


def test_versions_sharing_buckets_are_summarised_apart(event_engine: EventEngine) -> None:
    """Rows are grouped by version and bucket packed in one number: each version's hours come
    back with its own counts, sums and values, whatever the other versions hold."""
    store = EventStore(event_engine)
    store.ensure_model("default", SCHEMA)
    tables = {
        (v, h): _rows(50 + 30 * i + 7 * h, f"{v}-{h}-", T0 + h * HOUR, 10 * i + h, v)
        for i, v in enumerate(["v1", "v2", "v3"])
        for h in range(3)
    }
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, pa.concat_tables(list(tables.values())))
    summarizer = Summarizer(store)
    assert summarizer.summarize("default", SCHEMA, T0, T0 + 3 * HOUR, now=T0 + 10 * HOUR) == 3
    got = summarizer.read("default", SCHEMA, kind="p", start=T0, end=T0 + 3 * HOUR, step=HOUR)
    assert sorted(got) == ["v1", "v2", "v3"]
    for (v, h), table in tables.items():
        x = table.column("f_x").to_numpy()
        window = got[v].numeric["x"].window(h)
        assert int(got[v].rows[h]) == table.num_rows and window.n == len(x)
        assert window.sum == pytest.approx(x.sum(), abs=1e-9)
        assert (window.min, window.max) == (x.min(), x.max())
        values, counts = np.unique(table.column("f_c").to_numpy(zero_copy_only=False), return_counts=True)
        assert got[v].categorical["c"].window(h) == dict(zip(values.tolist(), counts.tolist(), strict=True))


def test_a_version_first_seen_during_a_summary_pass_is_summarised_later(
    event_engine: EventEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version the ledger did not count is left out of that pass's states (nothing is
    written for it that the ledger does not vouch for); the next pass takes it in."""
    store = EventStore(event_engine)
    store.ensure_model("default", SCHEMA)
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, _rows(200, "a", T0, 1))
    summarizer = Summarizer(store)
    landed = _landing_once(
        monkeypatch,
        store,
        _rows(30, "new", T0, 2, "v2"),
        after=lambda sql: sql.startswith("INSERT INTO") and "_ledger_" in sql.split("SELECT", maxsplit=1)[0],
    )
    assert summarizer.summarize_buckets("default", SCHEMA, T0, T0 + HOUR, now=T0 + 10 * HOUR) == [T0]
    monkeypatch.undo()
    assert landed == [30]
    first = summarizer.read("default", SCHEMA, kind="p", start=T0, end=T0 + HOUR, step=HOUR)
    assert sorted(first) == ["v1"] and first["v1"].numeric["x"].window(0).n == 200
    names = store.names("default", SCHEMA.name)
    for table in ("numsum", "catsum"):
        written = event_engine.query_columns(f"SELECT DISTINCT version FROM {names.table(table)}")
        assert written["version"].tolist() == ["v1"]
    assert summarizer.summarize_buckets("default", SCHEMA, T0, T0 + HOUR, now=T0 + 10 * HOUR) == [T0]
    again = summarizer.read("default", SCHEMA, kind="p", start=T0, end=T0 + HOUR, step=HOUR)
    assert int(again["v2"].rows[0]) == 30 and again["v2"].numeric["x"].window(0).n == 30
    assert sum(again["v2"].categorical["c"].window(0).values()) == 30


def test_reads_take_each_buckets_newest_generation_listed_or_by_subquery(
    event_engine: EventEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket summarised twice keeps both generations; a read sees only the newest, whether
    it lists the live generations inline or, past MAX_LISTED_GENS, finds them by subquery."""
    store = EventStore(event_engine)
    store.ensure_model("default", SCHEMA)
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, _rows(120, "a", T0, 1))
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, _rows(80, "b", T0 + HOUR, 2, "v2"))
    summarizer = Summarizer(store)
    assert summarizer.summarize("default", SCHEMA, T0, T0 + 2 * HOUR, now=T0 + 10 * HOUR) == 2
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, _rows(30, "late", T0, 3))
    assert summarizer.summarize_buckets("default", SCHEMA, T0, T0 + 2 * HOUR, now=T0 + 10 * HOUR) == [T0]
    ledger = store.names("default", SCHEMA.name).table("ledger")
    assert event_engine.query_columns(f"SELECT count() AS n FROM {ledger}")["n"][0] == 3

    def both_hours() -> dict[str, tuple[list[int], list[int]]]:
        got = summarizer.read("default", SCHEMA, kind="p", start=T0, end=T0 + 2 * HOUR, step=HOUR)
        return {v: (s.rows.tolist(), s.numeric["x"].n.tolist()) for v, s in got.items()}

    listed = both_hours()
    assert listed == {"v1": ([150, 0], [150, 0]), "v2": ([0, 80], [0, 80])}
    monkeypatch.setattr(summaries, "MAX_LISTED_GENS", 0)
    assert both_hours() == listed


def test_a_reference_feature_without_any_value_is_summarised_and_not_counted_by_value(
    event_engine: EventEngine,
) -> None:
    """A numeric feature the reference never fills (a column left out of the upload) has no
    distinct value to count: not discrete, and no failure (18.16 counts it as NULL)."""
    store = EventStore(event_engine)
    store.ensure_model("default", SCHEMA)
    n = 50
    table = build_reference(
        SCHEMA,
        "v1",
        ArrowSource(pa.table({"c": ["a", "b"] * (n // 2)})),
        RowErrors(),
        now=T0,
        hasher=PiiHasher(b"k"),
    ).table
    store.replace_reference("default", SCHEMA, "v1", table)
    summarizer = Summarizer(store)
    assert summarizer.summarize_reference("default", SCHEMA, "v1", force=True)
    assert summarizer.discrete_features("default", SCHEMA) == set()
    got = summarizer.read("default", SCHEMA, kind="r", start=0, end=REFERENCE_CHUNKS, step=REFERENCE_CHUNKS)[
        "v1"
    ]
    assert int(got.rows[0]) == n and got.numeric["x"].window(0).n == 0
    assert got.categorical["c"].window(0) == {"a": n // 2, "b": n // 2}


def test_a_feature_is_counted_by_value_while_its_newest_reference_shows_few_values(
    event_engine: EventEngine,
) -> None:
    """Discreteness follows each version's newest reference summary: a corrected upload in
    which a feature takes many values stops its live rows being counted by value."""
    store = EventStore(event_engine)
    store.ensure_model("default", SCHEMA)
    summarizer = Summarizer(store)
    rng = np.random.default_rng(4)
    for x, discrete in ((rng.integers(0, 5, 200).astype(float), {"x"}), (rng.normal(size=200), set())):
        table = build_reference(
            SCHEMA,
            "v1",
            ArrowSource(pa.table({"x": x, "c": ["a"] * 200})),
            RowErrors(),
            now=T0,
            hasher=PiiHasher(b"k"),
        ).table
        store.replace_reference("default", SCHEMA, "v1", table)
        assert summarizer.summarize_reference("default", SCHEMA, "v1", force=True)
        assert summarizer.discrete_features("default", SCHEMA) == discrete
