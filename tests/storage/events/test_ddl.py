"""Scratch tables: dropped after their operation, and swept when a dead process left them."""

from __future__ import annotations

import time

from driftline.storage.events import EventEngine, EventStore, ddl


def _scratch(engine: EventEngine) -> set[str]:
    got = engine.query_columns(
        "SELECT name FROM system.tables WHERE database = %(db)s AND startsWith(name, '_')",
        {"db": engine.database},
    )
    return {str(n) for n in got["name"]}


def test_leftover_scratch_tables_are_swept_and_live_ones_kept(event_engine: EventEngine) -> None:
    store = EventStore(event_engine)
    db = event_engine.database
    event_engine.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
    before = _scratch(event_engine)
    with ddl.scratch_table(event_engine, db, "ledger", "n UInt64") as table:
        in_use = ddl.split(table)[1]
        assert in_use in _scratch(event_engine)
        # what a process killed two hours ago left: the same shape of name, an old time in it
        dead = f"_ledger_{int(time.time()) - 7200}_{'0' * 16}"
        event_engine.execute(f"CREATE TABLE `{db}`.`{dead}` (n UInt64) ENGINE = Memory")
        other = "_not_scratch"
        event_engine.execute(f"CREATE TABLE `{db}`.`{other}` (n UInt64) ENGINE = Memory")
        assert store.sweep_scratch() == [dead]
        assert {in_use, other} <= _scratch(event_engine) and dead not in _scratch(event_engine)
    event_engine.execute(f"DROP TABLE `{db}`.`{other}`")
    assert _scratch(event_engine) == before
