"""The event store on both engines: DDL, idempotent inserts, lookups, retention."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pytest

from driftline.errors import StoreError
from driftline.schema import FeatureSpec, ModelSchema
from driftline.storage.events import EventEngine, EventStore, Kind, arrow_schema
from driftline.storage.events.engine import render
from tests.support.models import FRAUD

SCHEMA = ModelSchema.model_validate(FRAUD)
TS = pa.timestamp("s", tz="UTC")


def predictions(ids: list[str], day_offsets: list[int] | None = None) -> pa.Table:
    n = len(ids)
    offsets = np.array(day_offsets or [0] * n, dtype=np.int64)
    target = arrow_schema(Kind.PREDICTIONS, SCHEMA)
    rng = np.random.default_rng(0)
    cols = {
        "request_id": pa.array(ids),
        "version": pa.array(["v1"] * n),
        "ts": pa.array(1_780_000_000 + offsets * 86_400, pa.int64()).cast(TS),
        "received": pa.array([1_780_000_000] * n, pa.int64()).cast(TS),
        "prediction": pa.array(["1"] * n),
        "score": pa.array(rng.random(n)),
        "scores": pa.array([[]] * n, pa.list_(pa.float64())),
        "latency_ms": pa.array([1.0] * n),
        "status": pa.array(["ok"] * n),
        "error": pa.nulls(n, pa.string()),
        "timing_stage": pa.array([[]] * n, pa.list_(pa.string())),
        "timing_ms": pa.array([[]] * n, pa.list_(pa.float64())),
        "dq": pa.array([[]] * n, pa.list_(pa.string())),
    }
    for f in target:
        if f.name not in cols:
            cols[f.name] = pa.nulls(n, f.type)
    return pa.table([cols[f.name] for f in target], schema=target)


def labels(pairs: list[tuple[str, str]]) -> pa.Table:
    n = len(pairs)
    return pa.table(
        {
            "request_id": [p[0] for p in pairs],
            "label": [p[1] for p in pairs],
            "ts": pa.array([1_780_000_000] * n, pa.int64()).cast(TS),
            "received": pa.array([1_780_000_100] * n, pa.int64()).cast(TS),
        }
    )


@pytest.fixture
def store(event_engine: EventEngine) -> EventStore:
    s = EventStore(event_engine)
    s.ensure_model("default", SCHEMA)
    return s


def test_tables_have_one_typed_column_per_feature(store: EventStore) -> None:
    cols = store.engine.query_columns(
        "SELECT name, type FROM system.columns WHERE database = %(db)s AND table = %(t)s",
        {"db": store.engine.database, "t": store.names("default", "fraud").bare(Kind.PREDICTIONS)},
    )
    types = dict(zip(cols["name"], cols["type"], strict=True))
    assert types["f_amount"] == "Nullable(Float64)"
    assert types["f_vip"] == "Nullable(UInt8)"
    assert "String" in types["f_country"] and "String" in types["f_email"]
    assert "f_ssn" not in types  # pii: drop
    assert types["ts"] == "DateTime('UTC')"


def test_insert_is_idempotent(store: EventStore) -> None:
    first = store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions([f"r{i}" for i in range(100)]))
    assert (first.inserted, first.duplicates) == (100, 0)
    again = store.insert(
        Kind.PREDICTIONS, "default", SCHEMA, predictions([f"r{i}" for i in range(50, 150)] + ["x", "x"])
    )
    assert (again.inserted, again.duplicates) == (51, 51)
    assert store.counts("default", "fraud").predictions == 151
    lab = store.insert(Kind.LABELS, "default", SCHEMA, labels([("r1", "1"), ("r1", "1"), ("r2", "0")]))
    assert (lab.inserted, lab.duplicates) == (2, 1)
    # a corrected label is a new fact; the newest wins on read
    store.insert(Kind.LABELS, "default", SCHEMA, labels([("r2", "1")]))
    assert store.counts("default", "fraud").labels == 2


def test_schema_growth_adds_nullable_columns(store: EventStore) -> None:
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions(["a"]))
    grown = SCHEMA.with_features([FeatureSpec(name="device", kind="categorical")])
    store.ensure_model("default", grown)
    store.ensure_model("default", grown)  # again: nothing to add
    row = store.get_prediction("default", grown, "a")
    assert row is not None and row["features"]["device"] is None


def test_retention_drops_old_days_only(store: EventStore) -> None:
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions(["a", "b", "c"], [0, 1, 5]))
    parts = store.partitions("default", "fraud", Kind.PREDICTIONS)
    assert len(parts) == 3
    cutoff = date.fromtimestamp(1_780_000_000 + 2 * 86_400)
    assert store.drop_before("default", "fraud", cutoff) == 2
    assert store.counts("default", "fraud").predictions == 1


def test_reference_is_replaced_per_version(store: EventStore) -> None:
    ref = predictions([f"q{i}" for i in range(10)])
    target = arrow_schema(Kind.REFERENCE, SCHEMA)
    table = pa.table(
        [ref.column(f.name) if f.name in ref.column_names else pa.nulls(10, f.type) for f in target],
        schema=target,
    )
    assert store.replace_reference("default", SCHEMA, "v1", table) == 10
    assert store.replace_reference("default", SCHEMA, "v1", table.slice(0, 4)) == 4
    assert store.replace_reference("default", SCHEMA, "v2", table) == 10
    assert store.counts("default", "fraud").reference == {"v1": 4, "v2": 10}


@pytest.mark.parametrize(
    "value",
    ["x' OR 1=1 --", "a\\' ; DROP TABLE t; --", "\\", "'", "multi\nline\ttab\0nul", "é€😀", "%(x)s", "%s"],
)
def test_hostile_values_are_data(store: EventStore, value: str) -> None:
    got = store.engine.query_columns("SELECT %(v)s AS v, length(%(v)s) AS n", {"v": value})
    assert got["v"][0] == value
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions([value]))
    row = store.get_prediction("default", SCHEMA, value)
    assert row is not None and row["request_id"] == value


def test_render_quotes_every_type() -> None:
    sql = render(
        "SELECT %(s)s, %(i)s, %(f)s, %(n)s, %(t)s, %(l)s, %(b)s",
        {"s": "a'b", "i": 3, "f": 1.5, "n": None, "t": ("x", "y"), "l": [1, 2], "b": True},
    )
    assert sql == "SELECT 'a\\'b', 3, 1.5, NULL, ('x', 'y'), [1, 2], 1"
    with pytest.raises(TypeError):
        render("SELECT %(x)s", {"x": object()})


def test_unsafe_identifiers_never_reach_sql(store: EventStore) -> None:
    with pytest.raises(ValueError, match="invalid model"):
        store.names("default", "fraud`; DROP TABLE x; --")(Kind.PREDICTIONS)
    with pytest.raises(ValueError, match="invalid project"):
        store.names("Bad Project", "fraud")(Kind.PREDICTIONS)


def test_resend_with_another_timestamp_is_still_a_duplicate(store: EventStore) -> None:
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions(["same", "other"], [0, 0]))
    later = store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions(["same", "new"], [3, 3]))
    assert (later.inserted, later.duplicates) == (1, 1)
    assert store.counts("default", "fraud").predictions == 3


def test_the_same_request_scored_by_two_versions_is_two_rows(store: EventStore) -> None:
    champion = predictions(["req-1", "req-2"])
    shadow = champion.set_column(champion.column_names.index("version"), "version", pa.array(["v2", "v2"]))
    assert store.insert(Kind.PREDICTIONS, "default", SCHEMA, champion).inserted == 2
    assert store.insert(Kind.PREDICTIONS, "default", SCHEMA, shadow).inserted == 2
    assert store.insert(Kind.PREDICTIONS, "default", SCHEMA, shadow).duplicates == 2
    row = store.get_prediction("default", SCHEMA, "req-1", "v1")
    assert row is not None and row["version"] == "v1" and sorted(row["versions"]) == ["v1", "v2"]


def test_a_big_block_is_written_in_parallel_parts_each_row_once(store: EventStore) -> None:
    """A block of a few hundred thousand rows is written as two parts at once on chDB."""
    n = 300_000
    ids = [f"big-{i}" for i in range(n)]
    first = store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions(ids, [i % 3 for i in range(n)]))
    assert (first.inserted, first.duplicates) == (n, 0)
    again = store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions([*ids[-1000:], "big-new"]))
    assert (again.inserted, again.duplicates) == (1, 1000)
    assert store.counts("default", "fraud").predictions == n + 1
    got = store.engine.query_columns(
        f"SELECT uniqExact(request_id) AS u FROM {store.names('default', 'fraud')(Kind.PREDICTIONS)}"
    )
    assert int(got["u"][0]) == n + 1


def test_a_prediction_is_found_through_the_id_index_and_without_it(store: EventStore) -> None:
    """Rows are ordered by hour, not by id: the index gives their time. Rows the index does not
    know (older than it) and ids the index holds without rows (a write cut short, then sent
    again at another time) are still found."""
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions(["indexed", "x"], [0, 2]))
    names = store.names("default", "fraud")
    store.engine.insert_columns(names(Kind.PREDICTIONS), predictions(["unindexed"], [1]))
    orphan = predictions(["moved"], [5])
    store.engine.insert_columns(names.ids(), orphan.select(["request_id", "version", "ts"]))
    store.engine.insert_columns(names(Kind.PREDICTIONS), predictions(["moved"], [9]))
    for rid, day in (("indexed", 0), ("unindexed", 1), ("moved", 9)):
        row = store.get_prediction("default", SCHEMA, rid)
        assert row is not None and row["request_id"] == rid, rid
        assert row["timestamp"].startswith(_day(day)), (rid, row["timestamp"])
    assert store.get_prediction("default", SCHEMA, "nowhere") is None
    assert store.get_prediction("default", SCHEMA, "indexed", "v9") is None


def _day(offset: int) -> str:
    return datetime.fromtimestamp(1_780_000_000 + offset * 86_400, tz=UTC).date().isoformat()


def test_a_block_cut_off_between_index_and_rows_is_stored_once_on_retry(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id index is written first: ids left without rows must not turn a retry away."""
    store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions(["old"]))
    target = store.names("default", "fraud")(Kind.PREDICTIONS)
    real = store.engine.insert_columns

    def fail_on_rows(table: str, data: pa.Table) -> int:
        if table == target:
            raise StoreError("lost the connection")
        return real(table, data)

    monkeypatch.setattr(store.engine, "insert_columns", fail_on_rows)
    with pytest.raises(StoreError):
        store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions(["a", "b"], [1, 1]))
    monkeypatch.undo()
    retry = store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions(["a", "b", "old"], [2, 2, 2]))
    assert (retry.inserted, retry.duplicates) == (2, 1)
    again = store.insert(Kind.PREDICTIONS, "default", SCHEMA, predictions(["a", "b"], [1, 1]))
    assert (again.inserted, again.duplicates) == (0, 2)
    assert store.counts("default", "fraud").predictions == 3


def test_concurrent_inserts_of_overlapping_blocks_store_each_key_once(store: EventStore) -> None:
    """Retries race with their originals: each request id is checked and stored as one step."""
    blocks = [predictions([f"c{i}" for i in range(k * 50, k * 50 + 100)]) for k in range(6)]
    results: list[int] = []

    def run(block: pa.Table) -> None:
        results.append(store.insert(Kind.PREDICTIONS, "default", SCHEMA, block).inserted)

    threads = [threading.Thread(target=run, args=(b,)) for b in blocks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 350
    assert store.counts("default", "fraud").predictions == 350
