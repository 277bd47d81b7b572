"""Table DDL for one server or a cluster, behind one set of calls.

On one server (or chDB) a table is created as named. With DRIFTLINE_CLICKHOUSE_CLUSTER
set, every table is a local MergeTree on each node (`<name>_local`) behind a Distributed
table of the table's own name, created on every node, so that queries and inserts go to
any node unchanged. 18.16 has no ON CLUSTER without ZooKeeper, so the DDL visits each node
itself; ALTERs and partition drops go to the local tables, where the data lives.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from driftline.storage.events.engine import EventEngine


def split(table: str) -> tuple[str, str]:
    """`db`.`name` -> (db, name)."""
    db, _, name = table.partition(".")
    return db.strip("`"), name.strip("`")


def local(table: str) -> str:
    db, name = split(table)
    return f"`{db}`.`{name}_local`"


def nodes(engine: EventEngine) -> list[Any]:
    """The engines of every node of the cluster (the engine itself without a cluster)."""
    fan_out = getattr(engine, "nodes", None)
    return list(fan_out()) if callable(fan_out) and getattr(engine, "cluster", None) else [engine]


def clustered(engine: EventEngine) -> str | None:
    cluster = getattr(engine, "cluster", None)
    return str(cluster) if cluster else None


SCRATCH_MAX_AGE_SECONDS = 3600  # far beyond any one operation
_SCRATCH_NAME = re.compile(r"^_[a-z]+_(\d{10})_[0-9a-f]{16}$")


@contextmanager
def scratch_table(engine: EventEngine, database: str, prefix: str, body: str) -> Iterator[str]:
    """A Memory table for the length of one operation, dropped after it, on this node only
    (read it with GLOBAL IN on a cluster). Its name holds its creation time, so that one a
    dead process left behind can be told from one in use (see `drop_stale_scratch`)."""
    table = f"`{database}`.`_{prefix}_{int(time.time())}_{uuid.uuid4().hex[:16]}`"
    engine.execute(f"CREATE TABLE {table} ({body}) ENGINE = Memory")
    try:
        yield table
    finally:
        engine.execute(f"DROP TABLE IF EXISTS {table}")


def drop_stale_scratch(
    engine: EventEngine, database: str, *, now: float | None = None, max_age: float = SCRATCH_MAX_AGE_SECONDS
) -> list[str]:
    """Drop the scratch tables of this node older than `max_age`; returns their names.

    A process killed mid-operation leaves its scratch table behind, and a Memory table
    loses its rows on a restart, not its definition: they would pile up in the database.
    """
    now = time.time() if now is None else now
    got = engine.query_columns(
        "SELECT name FROM system.tables WHERE database = %(db)s AND startsWith(name, '_')", {"db": database}
    )
    dropped: list[str] = []
    for name in (str(n) for n in got["name"]):
        match = _SCRATCH_NAME.match(name)
        if match and int(match.group(1)) < now - max_age:
            engine.execute(f"DROP TABLE IF EXISTS `{database}`.`{name}`")
            dropped.append(name)
    return dropped


def create_table(
    engine: EventEngine, table: str, body: str, engine_clause: str, shard_key: str = "rand()"
) -> None:
    cluster = clustered(engine)
    if cluster is None:
        engine.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body}) ENGINE = {engine_clause}")
        return
    db, name = split(table)
    for node in nodes(engine):
        node.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        node.execute(f"CREATE TABLE IF NOT EXISTS {local(table)} ({body}) ENGINE = {engine_clause}")
        node.execute(
            f"CREATE TABLE IF NOT EXISTS {table} AS {local(table)} "
            f"ENGINE = Distributed({cluster}, {db}, {name}_local, {shard_key})"
        )


def columns(engine: EventEngine, table: str) -> set[str]:
    db, name = split(table)
    got = engine.query_columns(
        "SELECT name FROM system.columns WHERE database = %(db)s AND table = %(table)s",
        {"db": db, "table": name},
    )
    return {str(n) for n in got["name"]}


def add_columns(engine: EventEngine, table: str, definitions: Sequence[str]) -> None:
    """ADD COLUMN each `name Type` (18.16 has no IF NOT EXISTS here: callers add only missing ones)."""
    clause = ", ".join(f"ADD COLUMN {d}" for d in definitions)
    if clustered(engine) is None:
        engine.execute(f"ALTER TABLE {table} {clause}")
        return
    for node in nodes(engine):
        node.execute(f"ALTER TABLE {local(table)} {clause}")
        node.execute(f"ALTER TABLE {table} {clause}")


def drop_table(engine: EventEngine, table: str) -> None:
    if clustered(engine) is None:
        engine.execute(f"DROP TABLE IF EXISTS {table}")
        return
    for node in nodes(engine):
        node.execute(f"DROP TABLE IF EXISTS {table}")
        node.execute(f"DROP TABLE IF EXISTS {local(table)}")


def partitions(engine: EventEngine, table: str) -> list[str]:
    """Active partitions holding the table's data, on every node."""
    target = table if clustered(engine) is None else local(table)
    db, name = split(target)
    found: set[str] = set()
    for node in nodes(engine):
        got = node.query_columns(
            "SELECT DISTINCT partition FROM system.parts WHERE database = %(db)s AND table = %(table)s AND active",
            {"db": db, "table": name},
        )
        found |= {str(p).strip("'") for p in got["partition"]}
    return sorted(found)


def drop_partition(
    engine: EventEngine, table: str, partition: str, params: dict[str, Any] | None = None
) -> None:
    """ALTER ... DROP PARTITION `partition` (an SQL expression) where the data lives."""
    if clustered(engine) is None:
        engine.execute(f"ALTER TABLE {table} DROP PARTITION {partition}", params)
        return
    for node in nodes(engine):
        node.execute(f"ALTER TABLE {local(table)} DROP PARTITION {partition}", params)


def delete_where(
    engine: EventEngine, table: str, condition: str, params: dict[str, Any] | None = None
) -> None:
    """An asynchronous ALTER ... DELETE (a mutation) on the data's tables."""
    if clustered(engine) is None:
        engine.execute(f"ALTER TABLE {table} DELETE WHERE {condition}", params)
        return
    for node in nodes(engine):
        node.execute(f"ALTER TABLE {local(table)} DELETE WHERE {condition}", params)


def create_from_statement(engine: EventEngine, statement: str, shard_key: str = "rand()") -> None:
    """Run a `CREATE TABLE IF NOT EXISTS name (body) ENGINE = ...` through `create_table`."""
    head, _, rest = statement.partition(" (")
    table = head.removeprefix("CREATE TABLE IF NOT EXISTS ").strip()
    body, sep, clause = rest.rpartition(") ENGINE = ")
    if not sep or not table:
        raise ValueError(f"not a CREATE TABLE statement this module understands: {statement[:80]}")
    create_table(engine, table, body, clause, shard_key)
