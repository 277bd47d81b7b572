"""Per-model typed tables: names, columns and DDL.

One column per feature (`f_<name>`) and per metadata field (`m_<name>`), so a
detector reads only what it needs and a new feature is one Nullable column more.
The DDL adapts to the server (LowCardinality from 19.x on); queries do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa

from driftline.schema import (
    MODEL_PATTERN,
    PROJECT_PATTERN,
    FeatureKind,
    FeatureSpec,
    MetadataField,
    ModelSchema,
    Task,
    check_name,
)
from driftline.storage.events.engine import EngineInfo

FEATURE_PREFIX = "f_"
META_PREFIX = "m_"


class Kind(StrEnum):
    PREDICTIONS = "predictions"
    LABELS = "labels"
    FEEDBACK = "feedback"
    REFERENCE = "reference"


@dataclass(frozen=True)
class Column:
    name: str
    ch_type: str
    arrow: pa.DataType
    low_cardinality: bool = False

    def ddl_type(self, info: EngineInfo) -> str:
        if self.low_cardinality and info.low_cardinality:
            return f"LowCardinality({self.ch_type})"
        return self.ch_type


def feature_column(spec: FeatureSpec | MetadataField, prefix: str) -> Column:
    name = prefix + spec.name
    if spec.kind is FeatureKind.NUMERIC:
        return Column(name, "Nullable(Float64)", pa.float64())
    if spec.kind is FeatureKind.BOOLEAN:
        return Column(name, "Nullable(UInt8)", pa.uint8())
    return Column(name, "Nullable(String)", pa.string(), low_cardinality=spec.pii is None)


def value_column(name: str, schema: ModelSchema) -> Column:
    """The type of prediction and label: a number for regression, else a class name."""
    if schema.task is Task.REGRESSION:
        return Column(name, "Nullable(Float64)", pa.float64())
    return Column(name, "Nullable(String)", pa.string(), low_cardinality=True)


def input_columns(schema: ModelSchema) -> list[Column]:
    cols = [feature_column(f, FEATURE_PREFIX) for f in schema.features if f.stored]
    cols += [feature_column(m, META_PREFIX) for m in schema.metadata if m.stored]
    return cols


def _prediction_body(schema: ModelSchema) -> list[Column]:
    return [
        value_column("prediction", schema),
        Column("score", "Nullable(Float64)", pa.float64()),
        Column("scores", "Array(Float64)", pa.list_(pa.float64())),
        Column("latency_ms", "Nullable(Float64)", pa.float64()),
        Column("status", "String", pa.string(), low_cardinality=True),
        Column("error", "Nullable(String)", pa.string()),
        Column("timing_stage", "Array(String)", pa.list_(pa.string())),
        Column("timing_ms", "Array(Float64)", pa.list_(pa.float64())),
        Column("dq", "Array(String)", pa.list_(pa.string())),
    ]


_TS = pa.timestamp("s", tz="UTC")


def columns(kind: Kind, schema: ModelSchema) -> list[Column]:
    """Every stored column of a kind of table, in DDL order."""
    if kind is Kind.PREDICTIONS:
        head = [
            Column("request_id", "String", pa.string()),
            Column("version", "String", pa.string(), low_cardinality=True),
            Column("ts", "DateTime('UTC')", _TS),
            Column("received", "DateTime('UTC')", _TS),
        ]
        return head + _prediction_body(schema) + input_columns(schema)
    if kind is Kind.REFERENCE:
        head = [
            Column("version", "String", pa.string()),
            Column("row", "UInt32", pa.uint32()),
            Column("request_id", "String", pa.string()),
            Column("ts", "DateTime('UTC')", _TS),
        ]
        return head + _prediction_body(schema) + [value_column("label", schema)] + input_columns(schema)
    if kind is Kind.LABELS:
        return [
            Column("request_id", "String", pa.string()),
            value_column("label", schema),
            Column("ts", "DateTime('UTC')", _TS),
            Column("received", "DateTime('UTC')", _TS),
        ]
    return [
        Column("request_id", "String", pa.string()),
        Column("ts", "DateTime('UTC')", _TS),
        Column("received", "DateTime('UTC')", _TS),
        Column("outcome", "String", pa.string(), low_cardinality=True),
        Column("reviewer", "String", pa.string()),
        value_column("label", schema),
        Column("comment", "Nullable(String)", pa.string()),
    ]


def arrow_schema(kind: Kind, schema: ModelSchema) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow) for c in columns(kind, schema)])


_ENGINES = {
    # rows of one hour and version lie together: summaries aggregate them in order, run by run
    Kind.PREDICTIONS: "MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (toStartOfHour(ts), version)",
    Kind.LABELS: "MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY request_id",
    Kind.FEEDBACK: "MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (request_id, reviewer)",
    Kind.REFERENCE: "MergeTree PARTITION BY version ORDER BY row",
}


@dataclass(frozen=True)
class TableNames:
    """Quoted, fully qualified table names of one model."""

    database: str
    project: str
    model: str

    def bare(self, kind: Kind) -> str:
        check_name(self.project, PROJECT_PATTERN, "project")
        check_name(self.model, MODEL_PATTERN, "model")
        return f"{kind.value}__{self.project}__{self.model}"

    def __call__(self, kind: Kind) -> str:
        return f"`{self.database}`.`{self.bare(kind)}`"

    def table(self, prefix: str) -> str:
        """Another per-model table (summaries, indexes), by its prefix."""
        check_name(self.project, PROJECT_PATTERN, "project")
        check_name(self.model, MODEL_PATTERN, "model")
        return f"`{self.database}`.`{prefix}__{self.project}__{self.model}`"

    def ids(self) -> str:
        return self.table("ids")


# rows of one request live on one shard, so a prediction, its label and its feedback meet there
SHARD_KEYS = {
    Kind.PREDICTIONS: "cityHash64(request_id)",
    Kind.LABELS: "cityHash64(request_id)",
    Kind.FEEDBACK: "cityHash64(request_id)",
    Kind.REFERENCE: "cityHash64(version, row)",
}
IDS_BODY = "request_id String, version String, ts DateTime('UTC')"
IDS_ENGINE = "MergeTree PARTITION BY toYYYYMM(ts) ORDER BY request_id"


def table_body(kind: Kind, schema: ModelSchema, info: EngineInfo) -> str:
    return ", ".join(column_ddl(columns(kind, schema), info))


def engine_clause(kind: Kind) -> str:
    return _ENGINES[kind]


def column_ddl(cols: list[Column], info: EngineInfo) -> list[str]:
    return [f"`{c.name}` {c.ddl_type(info)}" for c in cols]
