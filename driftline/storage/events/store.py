"""The event store: per-model tables, idempotent inserts, lookups and retention.

Inserts are idempotent by record key (a prediction's request_id, a label's
request_id and value, a feedback's request_id, reviewer and outcome): a block is
staged, then copied into its table minus the keys already there. Retried blocks,
replayed spools and re-sent batches therefore store each record once, and a block
interrupted by a server crash can simply be sent again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from driftline.errors import InvalidInput, StoreError
from driftline.schema import VERSION_PATTERN, FeatureKind, ModelSchema, check_name
from driftline.storage.events import ddl
from driftline.storage.events.engine import EventEngine, rows
from driftline.storage.events.tables import (
    FEATURE_PREFIX,
    IDS_BODY,
    IDS_ENGINE,
    META_PREFIX,
    SHARD_KEYS,
    Kind,
    TableNames,
    column_ddl,
    columns,
    engine_clause,
    table_body,
)

log = logging.getLogger(__name__)

_KEYS = {
    Kind.PREDICTIONS: ("request_id", "version"),  # a shadow or challenger scores the same request
    Kind.LABELS: ("request_id", "label"),
    Kind.FEEDBACK: ("request_id", "reviewer", "outcome"),
}


@dataclass(frozen=True)
class InsertResult:
    inserted: int
    duplicates: int


@dataclass(frozen=True)
class Counts:
    predictions: int
    labels: int
    feedback: int
    reference: dict[str, int] = field(default_factory=dict)


def _arrow(values: np.ndarray) -> pa.Array:
    if values.dtype == object:
        return pa.array(values.tolist())
    return pa.array(values, from_pandas=True)


def block_keys(kind: Kind, data: pa.Table) -> pa.Array:
    """One string per row that identifies the record (its request_id, plus label or reviewer)."""
    parts = [data.column(k).cast(pa.string()).fill_null("").combine_chunks() for k in _KEYS[kind]]
    return parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "\x00")


def dedup_block(kind: Kind, data: pa.Table) -> pa.Table:
    """Keep the first row of each record key within one block (Arrow hashing, no Python loop)."""
    if data.num_rows < 2:
        return data
    # distinct request ids make distinct keys: one hash of the ids settles the common case
    if len(pc.unique(data.column("request_id"))) == data.num_rows:
        return data
    key = block_keys(kind, data)
    if len(pc.unique(key)) == data.num_rows:
        return data
    firsts = (
        pa.table({"k": key, "i": pa.array(np.arange(data.num_rows, dtype=np.int64))})
        .group_by("k", use_threads=False)
        .aggregate([("i", "min")])
        .column("i_min")
    )
    return data.take(firsts.take(pc.sort_indices(firsts)))


class EventStore:
    """ClickHouse tables of every model, through one EventEngine."""

    def __init__(self, engine: EventEngine) -> None:
        self.engine = engine
        self._known: dict[tuple[str, str, Kind], set[str]] = {}
        self._lock = threading.Lock()
        self._insert_locks: dict[str, threading.Lock] = {}

    def names(self, project: str, model: str) -> TableNames:
        return TableNames(self.engine.database, project, model)

    def sweep_scratch(self) -> list[str]:
        """Drop the scratch tables dead processes left behind; at startup, when the store answers."""
        try:
            return ddl.drop_stale_scratch(self.engine, self.engine.database)
        except StoreError as exc:
            log.warning("could not look for leftover scratch tables: %s", exc)
            return []

    # -- schema ---------------------------------------------------------------------------

    def ensure_model(self, project: str, schema: ModelSchema) -> None:
        """Create the model's tables, or add the Nullable columns a grown schema needs."""
        names = self.names(project, schema.name)
        info = self.engine.info
        ddl.create_table(self.engine, names.ids(), IDS_BODY, IDS_ENGINE, "cityHash64(request_id)")
        for kind in Kind:
            ddl.create_table(
                self.engine,
                names(kind),
                table_body(kind, schema, info),
                engine_clause(kind),
                SHARD_KEYS[kind],
            )
            present = self._columns(names, kind)
            missing = [c for c in columns(kind, schema) if c.name not in present]
            if missing:
                try:
                    ddl.add_columns(self.engine, names(kind), column_ddl(missing, info))
                except StoreError:
                    # another process may have added them first (18.16 has no ADD COLUMN IF NOT EXISTS)
                    present = self._columns(names, kind)
                    if any(c.name not in present for c in missing):
                        raise
                present |= {c.name for c in missing}
            with self._lock:
                self._known[(project, schema.name, kind)] = present

    def _columns(self, names: TableNames, kind: Kind) -> set[str]:
        return ddl.columns(self.engine, names(kind))

    def _ready(self, project: str, schema: ModelSchema, kind: Kind, data: pa.Table) -> None:
        with self._lock:
            known = self._known.get((project, schema.name, kind))
        if known is None or not set(data.column_names) <= known:
            self.ensure_model(project, schema)

    # -- writes ---------------------------------------------------------------------------

    def insert(self, kind: Kind, project: str, schema: ModelSchema, data: pa.Table) -> InsertResult:
        """Insert rows whose keys are not stored yet; safe to repeat after any failure.

        The keys already stored are looked up first (see `_stored_keys`), then the rest is
        inserted in one block. A prediction's id goes into the id index before its row, so
        that a block that is new (the common case) is checked against the index alone.
        Within a process the check and the insert are one step; two processes (API
        replicas) inserting the same new key in the same instant could both pass the
        check, which the docs on deployment call out.
        """
        if kind is Kind.REFERENCE:
            raise ValueError("reference rows are replaced per version, see replace_reference")
        if data.num_rows == 0:
            return InsertResult(0, 0)
        self._ready(project, schema, kind, data)
        unique = dedup_block(kind, data)
        in_block = data.num_rows - unique.num_rows
        names = self.names(project, schema.name)
        target = names(kind)
        with self._lock:
            lock = self._insert_locks.setdefault(target, threading.Lock())
        with lock:  # check and insert as one step within this process
            stored = self._stored_keys(kind, names, unique)
            known = 0
            if len(stored):
                seen = pc.is_in(block_keys(kind, unique), value_set=stored)
                known = int(pc.sum(seen).as_py() or 0)
                unique = unique.filter(pc.invert(seen))
            if kind is Kind.PREDICTIONS and unique.num_rows:
                self.engine.insert_columns(names.ids(), unique.select(["request_id", "version", "ts"]))
            self.engine.insert_columns(target, unique)
        return InsertResult(inserted=unique.num_rows, duplicates=in_block + known)

    def _stored_keys(self, kind: Kind, names: TableNames, block: pa.Table) -> pa.Array:
        """Keys of `block` that the table holds already.

        Labels and feedback are ordered by request_id, so the lookup uses their primary
        key. Predictions are ordered by time: their ids are also kept in an index table
        ordered by request_id, written before the rows. A block none of whose ids is in
        the index (the common case) is therefore new, at the cost of one index lookup.
        Otherwise an id there may have lost its row to a crash between the two writes,
        so the rows themselves are searched, in the time range the index records for
        those ids (which also catches a resend with another timestamp).
        """
        target = names(kind)
        with ddl.scratch_table(self.engine, names.database, "staging", "request_id String") as staging:
            # a request id repeated under another version only repeats in the set, which
            # costs less than hashing every id here
            self.engine.insert_columns(staging, block.select(["request_id"]))
            # GLOBAL: on a cluster the staging table lives on this node only
            in_block = f"request_id GLOBAL IN (SELECT request_id FROM {staging})"
            if kind is Kind.PREDICTIONS:
                indexed = self._indexed_times(names, in_block)
                if indexed is None:
                    return pa.array([], pa.string())
                got = self.engine.query_columns(
                    f"SELECT request_id, version FROM {target} WHERE ts >= %(lo)s AND ts <= %(hi)s AND {in_block}",
                    indexed,
                )
            else:
                got = self.engine.query_columns(
                    f"SELECT {', '.join(_KEYS[kind])} FROM {target} WHERE {in_block}"
                )
        if not len(got["request_id"]):
            return pa.array([], pa.string())
        found = pa.table({k: _arrow(got[k]) for k in _KEYS[kind]})
        return pc.unique(block_keys(kind, found))

    def replace_reference(self, project: str, schema: ModelSchema, version: str, data: pa.Table) -> int:
        """Make `data` the reference of a version: the old rows go, the new ones come."""
        check_name(version, VERSION_PATTERN, "version")
        names = self.names(project, schema.name)
        self._ready(project, schema, Kind.REFERENCE, data)
        n = data.num_rows
        for name, values in (
            ("version", pa.array([version] * n, pa.string())),
            ("row", pa.array(np.arange(n, dtype=np.uint32))),
        ):
            if name in data.column_names:
                data = data.set_column(data.column_names.index(name), name, values)
            else:
                data = data.append_column(name, values)
        ddl.drop_partition(self.engine, names(Kind.REFERENCE), "%(v)s", {"v": version})
        return self.engine.insert_columns(names(Kind.REFERENCE), data)

    # -- reads ----------------------------------------------------------------------------

    def counts(self, project: str, model: str) -> Counts:
        names = self.names(project, model)
        pred = self.engine.query_columns(f"SELECT count() AS n FROM {names(Kind.PREDICTIONS)}")
        lab = self.engine.query_columns(f"SELECT uniqExact(request_id) AS n FROM {names(Kind.LABELS)}")
        fb = self.engine.query_columns(f"SELECT count() AS n FROM {names(Kind.FEEDBACK)}")
        ref = self.engine.query_columns(
            f"SELECT version, count() AS n FROM {names(Kind.REFERENCE)} GROUP BY version ORDER BY version"
        )
        return Counts(
            predictions=int(pred["n"][0]),
            labels=int(lab["n"][0]),
            feedback=int(fb["n"][0]),
            reference={str(v): int(n) for v, n in zip(ref["version"], ref["n"], strict=True)},
        )

    def get_prediction(
        self, project: str, schema: ModelSchema, request_id: str, version: str | None = None
    ) -> dict[str, Any] | None:
        """One prediction as stored, with its latest label and its feedback.

        A request scored by several versions (champion and shadow) has one row per version:
        `version` picks one, else the latest received; `versions` lists them all.
        """
        names = self.names(project, schema.name)
        anywhere = "request_id = %(rid)s"
        indexed = self._indexed_times(names, anywhere, {"rid": request_id})
        params: dict[str, Any] = {"rid": request_id, **(indexed or {})}
        # first where the id index puts it (rows are ordered by hour, not by id), then everywhere:
        # rows older than the index, or an id the index holds without rows (a write cut short)
        tries = [f"{anywhere} AND ts >= %(lo)s AND ts <= %(hi)s"] if indexed else []
        scored: list[dict[str, Any]] = []
        for where in [*tries, anywhere]:
            scored = rows(
                self.engine.query_columns(
                    f"SELECT version FROM {names(Kind.PREDICTIONS)} WHERE {where} ORDER BY received DESC",
                    params,
                )
            )
            if scored:
                break
        versions = [str(r["version"]) for r in scored]
        if not versions or (version is not None and version not in versions):
            return None
        got = rows(
            self.engine.query_columns(
                f"SELECT * FROM {names(Kind.PREDICTIONS)} WHERE {where} AND version = %(v)s LIMIT 1",
                {**params, "v": version or versions[0]},
            )
        )
        row = got[0]
        record: dict[str, Any] = {
            "request_id": row["request_id"],
            "version": row["version"],
            "timestamp": _iso(row["ts"]),
            "received": _iso(row["received"]),
            "features": {
                f.name: _typed(f.kind, row.get(FEATURE_PREFIX + f.name)) for f in schema.features if f.stored
            },
            "metadata": {
                m.name: _typed(m.kind, row.get(META_PREFIX + m.name)) for m in schema.metadata if m.stored
            },
            "prediction": row["prediction"],
            "score": row["score"],
            "scores": dict(zip(schema.classes, row["scores"], strict=False)) if row["scores"] else None,
            "latency_ms": row["latency_ms"],
            "timings": dict(zip(row["timing_stage"], row["timing_ms"], strict=True)) or None,
            "status": row["status"],
            "error": row["error"],
            "violations": row["dq"],
            "versions": versions,
        }
        labels = rows(
            self.engine.query_columns(
                f"SELECT label, ts, received FROM {names(Kind.LABELS)} WHERE request_id = %(rid)s "
                "ORDER BY received DESC LIMIT 1",
                {"rid": request_id},
            )
        )
        record["label"] = (
            {
                "value": labels[0]["label"],
                "timestamp": _iso(labels[0]["ts"]),
                "received": _iso(labels[0]["received"]),
            }
            if labels
            else None
        )
        feedback = rows(
            self.engine.query_columns(
                f"SELECT outcome, reviewer, label, comment, ts FROM {names(Kind.FEEDBACK)} "
                "WHERE request_id = %(rid)s ORDER BY ts",
                {"rid": request_id},
            )
        )
        record["feedback"] = [{**f, "timestamp": _iso(f["ts"])} for f in feedback]
        for f in record["feedback"]:
            f.pop("ts", None)
        return record

    def _indexed_times(
        self, names: TableNames, condition: str, params: dict[str, Any] | None = None
    ) -> dict[str, datetime] | None:
        """The time range (`lo`, `hi`) the id index records for the ids matching `condition`;
        None when it holds none of them."""
        got = self.engine.query_columns(
            f"SELECT count() AS n, min(ts) AS lo, max(ts) AS hi FROM {names.ids()} WHERE {condition}", params
        )
        if not int(got["n"][0]):
            return None
        return {k: datetime.fromtimestamp(int(got[k][0]), tz=UTC) for k in ("lo", "hi")}

    # -- retention ------------------------------------------------------------------------

    def partitions(self, project: str, model: str, kind: Kind) -> list[str]:
        return ddl.partitions(self.engine, self.names(project, model)(kind))

    def drop_before(self, project: str, model: str, day: date) -> int:
        """Drop daily partitions older than `day` from the event tables; returns how many."""
        names = self.names(project, model)
        cutoff = int(day.strftime("%Y%m%d"))
        dropped = 0
        for kind in (Kind.PREDICTIONS, Kind.LABELS, Kind.FEEDBACK):
            for part in self.partitions(project, model, kind):
                if part.isdigit() and int(part) < cutoff:
                    ddl.drop_partition(self.engine, names(kind), str(int(part)))
                    dropped += 1
        # the id index has monthly partitions: a month goes once all its days are gone
        month = int(day.strftime("%Y%m"))
        for part in ddl.partitions(self.engine, names.ids()):
            if part.isdigit() and int(part) < month:
                ddl.drop_partition(self.engine, names.ids(), str(int(part)))
        return dropped

    def drop_model(self, project: str, model: str) -> None:
        names = self.names(project, model)
        ddl.drop_table(self.engine, names.ids())
        for kind in Kind:
            ddl.drop_table(self.engine, names(kind))
        for prefix in ("numsum", "catsum", "ledger", "perfsum", "confsum", "regsum"):
            ddl.drop_table(self.engine, names.table(prefix))
        with self._lock:
            for kind in Kind:
                self._known.pop((project, model, kind), None)

    def drop_stale_staging(self) -> None:
        """Staging tables left by a crash are empty Memory tables; drop the old ones."""
        got = self.engine.query_columns(
            "SELECT name FROM system.tables WHERE database = %(db)s AND name LIKE '\\\\_staging\\\\_%%' "
            "AND metadata_modification_time < now() - 3600",
            {"db": self.engine.database},
        )
        for name in got["name"]:
            self.engine.execute(f"DROP TABLE IF EXISTS `{self.engine.database}`.`{name}`")

    def check_version(self, version: str) -> None:
        try:
            check_name(version, VERSION_PATTERN, "version")
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc


def _typed(kind: FeatureKind, value: Any) -> Any:
    if value is None or kind is not FeatureKind.BOOLEAN:
        return value
    return bool(value)


def _iso(epoch: Any) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(int(epoch), tz=UTC).isoformat().replace("+00:00", "Z")
