"""Batches in storage shape, from JSON records or from flat Arrow tables.

One builder per kind of record (predictions, labels, feedback, reference rows); each
reads its input through a Source, so JSON batches and bulk Parquet/Arrow/CSV bodies
are checked by the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from driftline.ingest.columns import (
    MAX_STRING,
    PiiHasher,
    Raw,
    RowErrors,
    Violations,
    booleans,
    check_time_range,
    describe,
    epoch_to_arrow,
    floats,
    list_array,
    nulls,
    strings,
    timestamps,
)
from driftline.ingest.json_arrow import SNIFFED, struct_of
from driftline.schema import (
    RESERVED_FIELDS,
    SCORE_PREFIX,
    TIMING_PREFIX,
    FeatureKind,
    FeatureSpec,
    MetadataField,
    ModelSchema,
    Pii,
    Task,
)
from driftline.storage.events.tables import FEATURE_PREFIX, META_PREFIX, Kind, arrow_schema

MAX_ID = 256
STATUSES = ("ok", "error", "timeout")
MAX_EPOCH = 4_294_967_295  # DateTime's last second (2106)


# A batch's records: parsed JSON objects, records Arrow already typed, or a flat bulk table.
Rows = list[Any] | pa.StructArray | pa.Table


@dataclass
class Batch:
    """Rows ready for the spool and the store, with what the response reports."""

    kind: Kind
    table: pa.Table
    violations: int = 0
    violations_by_field: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)


class Source(Protocol):
    n: int

    def get(self, name: str) -> Raw | None: ...
    def feature(self, name: str) -> Raw | None: ...
    def meta(self, name: str) -> Raw | None: ...
    def unknown_features(self, known: Collection[str]) -> dict[str, np.ndarray]: ...
    def class_scores(self, classes: list[str]) -> list[Raw] | None: ...
    def timings(self) -> tuple[np.ndarray, list[Any], list[Any]]: ...


class JsonSource:
    """Records as parsed from a JSON body: a list of objects with nested features and metadata."""

    def __init__(self, records: list[Any], errors: RowErrors) -> None:
        self.n = len(records)
        self.records: list[dict[str, Any]] = []
        for i, r in enumerate(records):
            if type(r) is dict:
                self.records.append(r)
            else:
                errors.add(i, "record", f"must be an object, not {type(r).__name__}")
                self.records.append({})
        self._features = self._nested("features", errors)
        self._meta = self._nested("metadata", errors)

    def _nested(self, key: str, errors: RowErrors) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, r in enumerate(self.records):
            value = r.get(key)
            if value is None:
                out.append({})
            elif type(value) is dict:
                out.append(value)
            else:
                errors.add(i, key, f"must be an object, not {type(value).__name__}")
                out.append({})
        return out

    def get(self, name: str) -> Raw | None:
        values = [r.get(name) for r in self.records]
        return values if any(v is not None for v in values) else None

    def feature(self, name: str) -> Raw | None:
        return [d.get(name) for d in self._features]

    def meta(self, name: str) -> Raw | None:
        return [d.get(name) for d in self._meta]

    def unknown_features(self, known: Collection[str]) -> dict[str, np.ndarray]:
        names = set().union(*self._features, *self._meta) - set(known)
        return {
            n: np.array([n in f or n in m for f, m in zip(self._features, self._meta, strict=True)])
            for n in sorted(names, key=str)
        }

    def class_scores(self, classes: list[str]) -> list[Raw] | None:
        raw = [r.get("scores") for r in self.records]
        if all(v is None for v in raw):
            return None
        dicts = [v if type(v) is dict else {} for v in raw]
        return [[d.get(c) for d in dicts] for c in classes]

    def scores_malformed(self) -> list[int]:
        return [
            i
            for i, r in enumerate(self.records)
            if r.get("scores") is not None and type(r["scores"]) is not dict
        ]

    def timings(self) -> tuple[np.ndarray, list[Any], list[Any]]:
        rows: list[int] = []
        stages: list[Any] = []
        values: list[Any] = []
        for i, r in enumerate(self.records):
            t = r.get("timings")
            if t is None:
                continue
            if type(t) is not dict:
                rows.append(i)
                stages.append(None)
                values.append(t)
                continue
            for k, v in t.items():
                rows.append(i)
                stages.append(k)
                values.append(v)
        return np.array(rows, dtype=np.int64), stages, values


def _sniff(records: list[Any], key: str) -> pa.DataType:
    """The Arrow type of a field that may be text or number, from its first value."""
    for r in records[:64]:
        v = r.get(key) if type(r) is dict else None
        if v is None:
            continue
        if isinstance(v, bool):
            return pa.bool_()
        if isinstance(v, int):
            return pa.int64()
        if isinstance(v, float):
            return pa.float64()
        return pa.string()
    return pa.string()


def fast_json_source(records: list[Any], schema: ModelSchema, fields: tuple[str, ...]) -> StructSource | None:
    """Records converted by Arrow in one pass against the types the schema expects.

    Any value of another type makes Arrow refuse the whole batch; the caller then takes
    the slower per-value path, which reports exactly what is wrong.
    """
    if not records:
        return None
    typed = {name: _sniff(records, name) for name in SNIFFED if name in fields}
    typed["timings"] = pa.map_(pa.string(), pa.float64())
    record = struct_of(schema, fields, typed)
    if record is None:
        return None
    try:
        arr = pa.array(records, type=record)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return None
    if arr.null_count:
        return None
    return StructSource(arr, records)


class StructSource:
    """JSON records already converted by Arrow (see fast_json_source)."""

    def __init__(self, arr: pa.StructArray, records: list[dict[str, Any]] | None) -> None:
        """`records` names unknown features; None when the reader refused any (see json_arrow)."""
        self.n = len(arr)
        self.arr = arr
        self.records = records
        names = {arr.type.field(i).name for i in range(arr.type.num_fields)}
        self._fields = {name: arr.field(name) for name in names}
        self._features = arr.field("features")
        self._meta = arr.field("metadata")

    def get(self, name: str) -> Raw | None:
        col = self._fields.get(name)
        if col is None or col.null_count == self.n:
            return None
        return col

    def _member(self, struct: pa.StructArray, name: str) -> Raw | None:
        try:
            return struct.field(name)
        except KeyError:
            return None

    def feature(self, name: str) -> Raw | None:
        return self._member(self._features, name)

    def meta(self, name: str) -> Raw | None:
        return self._member(self._meta, name)

    def unknown_features(self, known: Collection[str]) -> dict[str, np.ndarray]:
        if self.records is None:
            return {}
        feats = [r.get("features") or {} for r in self.records]
        metas = [r.get("metadata") or {} for r in self.records]
        names = set().union(*feats, *metas) - set(known)
        return {
            n: np.array([n in f or n in m for f, m in zip(feats, metas, strict=True)]) for n in sorted(names)
        }

    def class_scores(self, classes: list[str]) -> list[Raw] | None:
        col = self._fields.get("scores")
        if col is None or col.null_count == self.n:
            return None
        return [col.field(c) for c in classes]

    def scores_malformed(self) -> list[int]:
        return []

    def timings(self) -> tuple[np.ndarray, list[Any], list[Any]]:
        col = self._fields.get("timings")
        if col is None or col.null_count == self.n:
            return np.zeros(0, dtype=np.int64), [], []
        if pa.types.is_struct(col.type):
            # typed by the stages of the first record that had timings (see json_arrow)
            return _stage_columns((col.type.field(i).name, col.field(i)) for i in range(col.type.num_fields))
        offsets = np.asarray(col.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        counts = np.diff(offsets)
        rows = np.repeat(np.arange(self.n, dtype=np.int64), counts)
        start, end = int(offsets[0]), int(offsets[-1])
        return (
            rows,
            col.keys.slice(start, end - start).to_pylist(),
            col.items.slice(start, end - start).to_pylist(),
        )


class ArrowSource:
    """A flat table: one row per record, fields and features as columns of their own name."""

    def __init__(self, table: pa.Table) -> None:
        self.n = table.num_rows
        self.table = table
        self.names = set(table.column_names)

    def get(self, name: str) -> Raw | None:
        return self.table.column(name) if name in self.names else None

    feature = get
    meta = get

    def unknown_features(self, known: Collection[str]) -> dict[str, np.ndarray]:
        out = {}
        for name in self.table.column_names:
            if name in known or name in RESERVED_FIELDS or name.startswith((SCORE_PREFIX, TIMING_PREFIX)):
                continue
            out[name] = ~nulls(self.table.column(name))
        return out

    def class_scores(self, classes: list[str]) -> list[Raw] | None:
        cols = [self.get(SCORE_PREFIX + c) for c in classes]
        if all(c is None for c in cols):
            return None
        return [c if c is not None else [None] * self.n for c in cols]

    def scores_malformed(self) -> list[int]:
        return []

    def timings(self) -> tuple[np.ndarray, list[Any], list[Any]]:
        return _stage_columns(
            (name[len(TIMING_PREFIX) :], self.table.column(name))
            for name in self.table.column_names
            if name.startswith(TIMING_PREFIX)
        )


def _stage_columns(
    columns: Iterable[tuple[str, pa.Array | pa.ChunkedArray]],
) -> tuple[np.ndarray, list[Any], list[Any]]:
    """(row, stage, ms) of every value of columns that each hold one stage's times."""
    rows: list[np.ndarray] = []
    stages: list[Any] = []
    values: list[Any] = []
    for stage, col in columns:
        present = np.flatnonzero(~nulls(col))
        rows.append(present)
        stages.extend([stage] * len(present))
        values.extend(col.drop_null().to_pylist())
    return (np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)), stages, values


# -- shared pieces ------------------------------------------------------------------------


def _required_strings(src: Source, name: str, errors: RowErrors, *, max_len: int = MAX_ID) -> pa.Array:
    raw = src.get(name)
    if raw is None:
        errors.add(0, name, "is required")
        return pa.nulls(src.n, pa.string())
    arr, bad = strings(raw, canonical=True)
    errors.add_rows(np.flatnonzero(bad), name, lambda i: "must be a string")
    missing = nulls(arr) & ~bad
    errors.add_rows(np.flatnonzero(missing), name, lambda i: "is required")
    lengths = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
    lengths = np.nan_to_num(np.asarray(lengths, dtype=np.float64), nan=1.0)
    errors.add_rows(np.flatnonzero(lengths == 0), name, lambda i: "must not be empty")
    errors.add_rows(np.flatnonzero(lengths > max_len), name, lambda i: f"is longer than {max_len} characters")
    return arr


def _event_times(
    src: Source, errors: RowErrors, now: float, max_future: int | None, *, fld: str = "timestamp"
) -> pa.Array:
    raw = src.get(fld)
    if raw is None:
        return epoch_to_arrow(np.full(src.n, int(now), dtype=np.int64))
    epochs, isnull, bad = timestamps(raw)
    errors.add_rows(
        np.flatnonzero(bad), fld, lambda i: "must be ISO 8601 or epoch seconds, got " + describe(_at(raw, i))
    )
    epochs = np.where(isnull, int(now), epochs)
    valid = ~bad
    if max_future is not None:
        check_time_range(epochs, valid, now, max_future, fld, errors)
    else:
        errors.add_rows(
            np.flatnonzero(valid & ((epochs < 0) | (epochs > MAX_EPOCH))), fld, lambda i: "out of range"
        )
    return epoch_to_arrow(np.where(bad, 0, epochs))


def _at(raw: Raw, i: int) -> Any:
    if isinstance(raw, (pa.Array, pa.ChunkedArray)):
        return raw[i].as_py()
    return raw[i]


def _strict_floats(
    src: Source, name: str, errors: RowErrors, *, lo: float | None = None, hi: float | None = None
) -> np.ndarray:
    raw = src.get(name)
    if raw is None:
        return np.full(src.n, np.nan)
    values, bad = floats(raw)
    errors.add_rows(
        np.flatnonzero(bad), name, lambda i: "must be a finite number, got " + describe(_at(raw, i))
    )
    if lo is not None:
        errors.add_rows(
            np.flatnonzero(values < lo), name, lambda i: f"must be at least {lo}, got {values[i]}"
        )
    if hi is not None:
        errors.add_rows(np.flatnonzero(values > hi), name, lambda i: f"must be at most {hi}, got {values[i]}")
    return values


def _float_arrow(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.float64(), mask=np.isnan(values))


def _typed_values(
    src: Source, name: str, schema: ModelSchema, errors: RowErrors, *, required: bool
) -> pa.Array:
    """Prediction or label values: numbers for regression, declared classes otherwise."""
    raw = src.get(name)
    if raw is None:
        if required:
            errors.add(0, name, "is required")
        return pa.nulls(src.n, pa.float64() if schema.task is Task.REGRESSION else pa.string())
    if schema.task is Task.REGRESSION:
        values, bad = floats(raw)
        errors.add_rows(np.flatnonzero(bad), name, lambda i: "must be a number, got " + describe(_at(raw, i)))
        arr = _float_arrow(values)
    else:
        arr, bad = strings(raw, canonical=True)
        errors.add_rows(
            np.flatnonzero(bad), name, lambda i: "must be a class name, got " + describe(_at(raw, i))
        )
        declared = schema.label.classes
        if declared:
            unknown = ~np.asarray(pc.is_in(arr, value_set=pa.array(declared)).to_numpy(zero_copy_only=False))
            unknown &= ~nulls(arr)
            errors.add_rows(
                np.flatnonzero(unknown),
                name,
                lambda i: f"{arr[i].as_py()!r} is not one of the classes {declared}",
            )
    if required:
        errors.add_rows(np.flatnonzero(nulls(arr)), name, lambda i: "is required")
    return arr


def _typed_fast(
    spec: FeatureSpec | MetadataField, raw: Raw, dq: Violations
) -> pa.Array | pa.ChunkedArray | None:
    """The column as it came when Arrow already typed it right: no per-value work, and the
    chunks of a bulk table are kept as they are (no copy)."""
    if not isinstance(raw, (pa.Array, pa.ChunkedArray)):
        return None
    arr = raw
    nullable = getattr(spec, "nullable", True)
    if spec.kind is FeatureKind.NUMERIC and (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type)):
        arr = arr.cast(pa.float64())
        if pc.sum(pc.invert(pc.is_finite(arr))).as_py():
            return None  # NaN or inf among the values: the checking path reports them
        if not nullable and arr.null_count:
            dq.add(nulls(arr), spec.name, "missing")
        rng = getattr(spec, "range", None)
        if rng is not None:
            outside = pc.or_(pc.less(arr, rng[0]), pc.greater(arr, rng[1])).fill_null(False)
            dq.add(np.asarray(outside.to_numpy(zero_copy_only=False), dtype=bool), spec.name, "range")
        return arr
    if spec.kind is FeatureKind.BOOLEAN and pa.types.is_boolean(arr.type):
        if not nullable and arr.null_count:
            dq.add(nulls(arr), spec.name, "missing")
        return arr.cast(pa.uint8())
    if (
        spec.kind is FeatureKind.CATEGORICAL
        and pa.types.is_string(arr.type)
        and all(
            len(c.buffers()[2] or b"") <= MAX_STRING
            for c in (arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr])
        )
    ):
        if not nullable and arr.null_count:
            dq.add(nulls(arr), spec.name, "missing")
        return arr
    return None


def _input_column(
    spec: FeatureSpec | MetadataField, raw: Raw | None, n: int, dq: Violations, hasher: PiiHasher
) -> pa.Array | pa.ChunkedArray:
    name = spec.name
    nullable = getattr(spec, "nullable", True)
    if raw is None:
        raw = pa.nulls(n)
    if spec.kind is not FeatureKind.CATEGORICAL:
        fast = _typed_fast(spec, raw, dq)
        if fast is not None:
            return fast
    if spec.kind is FeatureKind.NUMERIC:
        values, bad = floats(raw)
        dq.add(bad, name, "type")
        isnull = np.isnan(values) & ~bad
        if not nullable:
            dq.add(isnull, name, "missing")
        rng = getattr(spec, "range", None)
        if rng is not None:
            with np.errstate(invalid="ignore"):
                dq.add((values < rng[0]) | (values > rng[1]), name, "range")
        return _float_arrow(values)
    if spec.kind is FeatureKind.BOOLEAN:
        ints, isnull, bad = booleans(raw)
        dq.add(bad, name, "type")
        if not nullable:
            dq.add(isnull & ~bad, name, "missing")
        return pa.array(ints, pa.uint8(), mask=isnull)
    arr = _typed_fast(spec, raw, dq)
    if arr is None:
        arr, bad = strings(raw, canonical=True)
        dq.add(bad, name, "type")
        if not nullable:
            dq.add(nulls(arr) & ~bad, name, "missing")
    categories = getattr(spec, "categories", None)
    if categories:
        seen = np.asarray(
            pc.is_in(arr, value_set=pa.array(categories)).to_numpy(zero_copy_only=False), dtype=bool
        )
        dq.add(~seen & ~nulls(arr), name, "category")
    if spec.pii is Pii.HASH:
        arr = hasher(arr)
    return arr


def _inputs(
    schema: ModelSchema, src: Source, dq: Violations, hasher: PiiHasher
) -> dict[str, pa.Array | pa.ChunkedArray]:
    out: dict[str, pa.Array | pa.ChunkedArray] = {}
    for f in schema.features:
        if f.stored:
            out[FEATURE_PREFIX + f.name] = _input_column(f, src.feature(f.name), src.n, dq, hasher)
    for m in schema.metadata:
        if m.stored:
            out[META_PREFIX + m.name] = _input_column(m, src.meta(m.name), src.n, dq, hasher)
    known = [f.name for f in schema.features] + [m.name for m in schema.metadata]
    for name, mask in src.unknown_features(known).items():
        dq.add(mask, str(name)[:64], "unknown")
    return out


def _prediction_body(schema: ModelSchema, src: Source, errors: RowErrors) -> dict[str, pa.Array]:
    n = src.n
    out: dict[str, pa.Array] = {}
    prediction = _typed_values(src, "prediction", schema, errors, required=False)
    score = np.full(n, np.nan)
    if schema.task is not Task.REGRESSION:
        score = _strict_floats(src, "score", errors, lo=0.0, hi=1.0)
    scores = list_array(np.zeros(0, dtype=np.int64), [], n, pa.float64())
    if schema.task is Task.MULTICLASS:
        classes = schema.classes
        if isinstance(src, JsonSource):
            for i in src.scores_malformed():
                errors.add(i, "scores", "must be an object of class -> probability")
        per_class = src.class_scores(classes)
        if per_class is not None:
            matrix = np.full((n, len(classes)), np.nan)
            for j, raw in enumerate(per_class):
                vals, bad = floats(raw)
                errors.add_rows(np.flatnonzero(bad), f"scores.{classes[j]}", lambda i: "must be a number")
                errors.add_rows(
                    np.flatnonzero((vals < 0) | (vals > 1)),
                    f"scores.{classes[j]}",
                    lambda i: "must be in [0, 1]",
                )
                matrix[:, j] = vals
            has = ~np.all(np.isnan(matrix), axis=1)
            rows = np.repeat(np.flatnonzero(has), len(classes))
            scores = list_array(rows, matrix[has].ravel().tolist(), n, pa.float64())
            missing_pred = nulls(prediction) & has
            if missing_pred.any():
                best = np.nanargmax(np.where(np.isnan(matrix), -1.0, matrix), axis=1)
                derived = np.array(classes, dtype=object)[best]
                values = np.asarray(prediction.to_pylist(), dtype=object)
                values[missing_pred] = derived[missing_pred]
                prediction = pa.array(values.tolist(), pa.string())
    elif schema.task is Task.BINARY and len(schema.classes) == 2:
        missing_pred = nulls(prediction) & ~np.isnan(score)
        if missing_pred.any():
            negative = next(c for c in schema.classes if c != schema.positive_class)
            derived = pa.array([negative, schema.positive_class], pa.string()).take(
                pa.array(score >= 0.5, pa.bool_()).cast(pa.int8())
            )
            prediction = pc.if_else(pa.array(missing_pred), derived, prediction.cast(pa.string()))
    out["prediction"] = prediction
    out["score"] = _float_arrow(score)
    out["scores"] = scores
    out["latency_ms"] = _float_arrow(_strict_floats(src, "latency_ms", errors, lo=0.0))
    raw_status = src.get("status")
    if raw_status is None:
        status = pa.repeat(pa.scalar("ok", pa.string()), n)
    else:
        status, bad = strings(raw_status)
        status = pc.fill_null(status, "ok")
        valid = np.asarray(pc.is_in(status, value_set=pa.array(STATUSES)).to_numpy(zero_copy_only=False))
        errors.add_rows(
            np.flatnonzero(~valid | bad),
            "status",
            lambda i: f"must be one of {list(STATUSES)}, got " + describe(_at(raw_status, i)),
        )
    out["status"] = status
    raw_error = src.get("error")
    if raw_error is None:
        out["error"] = pa.nulls(n, pa.string())
    else:
        err, bad = strings(raw_error)
        errors.add_rows(np.flatnonzero(bad), "error", lambda i: "must be a string")
        out["error"] = err
    rows, stages, stage_ms = src.timings()
    if len(rows):
        stage_arr, bad_stage = strings(stages)
        stage_len = np.nan_to_num(
            np.asarray(pc.utf8_length(stage_arr).to_numpy(zero_copy_only=False), dtype=np.float64), nan=0
        )
        bad_stage |= nulls(stage_arr) | (stage_len == 0) | (stage_len > 64)
        errors.add_rows(
            rows[bad_stage], "timings", lambda i: "must map stage names (1-64 chars) to milliseconds"
        )
        ms, bad_ms = floats(stage_ms)
        bad_ms |= np.isnan(ms) | (ms < 0)
        errors.add_rows(rows[bad_ms & ~bad_stage], "timings", lambda i: "stage times must be numbers >= 0")
        out["timing_stage"] = list_array(rows, stage_arr.to_pylist(), n, pa.string())
        out["timing_ms"] = list_array(rows, np.nan_to_num(ms).tolist(), n, pa.float64())
    else:
        out["timing_stage"] = list_array(rows, [], n, pa.string())
        out["timing_ms"] = list_array(rows, [], n, pa.float64())
    return out


def _table(kind: Kind, schema: ModelSchema, cols: dict[str, pa.Array]) -> pa.Table:
    target = arrow_schema(kind, schema)
    return pa.table([cols[f.name].cast(f.type) for f in target], schema=target)


# -- builders ------------------------------------------------------------------------------


def build_predictions(
    schema: ModelSchema,
    versions: Collection[str],
    src: Source,
    errors: RowErrors,
    *,
    now: float,
    max_future: int,
    hasher: PiiHasher,
) -> Batch:
    n = src.n
    cols: dict[str, pa.Array] = {"request_id": _required_strings(src, "request_id", errors)}
    version = _required_strings(src, "version", errors, max_len=64)
    known = np.asarray(
        pc.is_in(version, value_set=pa.array(sorted(versions), pa.string())).to_numpy(zero_copy_only=False),
        dtype=bool,
    )
    errors.add_rows(
        np.flatnonzero(~known & ~nulls(version)),
        "version",
        lambda i: (
            f"unknown version {version[i].as_py()!r} of model {schema.name!r} (registered: {sorted(versions)})"
        ),
    )
    cols["version"] = version
    cols["ts"] = _event_times(src, errors, now, max_future)
    cols["received"] = epoch_to_arrow(np.full(n, int(now), dtype=np.int64))
    cols.update(_prediction_body(schema, src, errors))
    dq = Violations()
    cols.update(_inputs(schema, src, dq, hasher))
    errors.raise_if_any()
    cols["dq"] = dq.column(n)
    return Batch(Kind.PREDICTIONS, _table(Kind.PREDICTIONS, schema, cols), dq.total, dq.by_field)


def build_reference(
    schema: ModelSchema, version: str, src: Source, errors: RowErrors, *, now: float, hasher: PiiHasher
) -> Batch:
    n = src.n
    raw_ids = src.get("request_id")
    if raw_ids is None:
        ids = pa.array([f"ref-{i}" for i in range(n)], pa.string())
    else:
        ids, bad = strings(raw_ids, canonical=True)
        errors.add_rows(np.flatnonzero(bad), "request_id", lambda i: "must be a string")
        ids = pc.fill_null(ids, "")
    cols: dict[str, pa.Array] = {
        "version": pa.array([version] * n, pa.string()),
        "row": pa.array(np.arange(n, dtype=np.uint32)),
        "request_id": ids,
        "ts": _event_times(src, errors, now, None),
    }
    cols.update(_prediction_body(schema, src, errors))
    cols["label"] = _typed_values(src, "label", schema, errors, required=False)
    dq = Violations()
    cols.update(_inputs(schema, src, dq, hasher))
    errors.raise_if_any()
    cols["dq"] = dq.column(n)
    return Batch(Kind.REFERENCE, _table(Kind.REFERENCE, schema, cols), dq.total, dq.by_field)


def build_labels(
    schema: ModelSchema, src: Source, errors: RowErrors, *, now: float, max_future: int
) -> Batch:
    n = src.n
    cols = {
        "request_id": _required_strings(src, "request_id", errors),
        "label": _typed_values(src, "label", schema, errors, required=True),
        "ts": _event_times(src, errors, now, max_future),
        "received": epoch_to_arrow(np.full(n, int(now), dtype=np.int64)),
    }
    errors.raise_if_any()
    return Batch(Kind.LABELS, _table(Kind.LABELS, schema, cols))


def build_feedback(
    schema: ModelSchema, src: Source, errors: RowErrors, *, now: float, max_future: int
) -> Batch:
    n = src.n
    reviewer_raw = src.get("reviewer")
    if reviewer_raw is None:
        reviewer = pa.array([""] * n, pa.string())
    else:
        reviewer, bad = strings(reviewer_raw, canonical=True)
        errors.add_rows(np.flatnonzero(bad), "reviewer", lambda i: "must be a string")
        reviewer = pc.fill_null(reviewer, "")
    comment_raw = src.get("comment")
    comment = pa.nulls(n, pa.string())
    if comment_raw is not None:
        comment, bad = strings(comment_raw)
        errors.add_rows(np.flatnonzero(bad), "comment", lambda i: "must be a string")
    cols = {
        "request_id": _required_strings(src, "request_id", errors),
        "ts": _event_times(src, errors, now, max_future),
        "received": epoch_to_arrow(np.full(n, int(now), dtype=np.int64)),
        "outcome": _required_strings(src, "outcome", errors, max_len=64),
        "reviewer": reviewer,
        "label": _typed_values(src, "label", schema, errors, required=False),
        "comment": comment,
    }
    errors.raise_if_any()
    return Batch(Kind.FEEDBACK, _table(Kind.FEEDBACK, schema, cols))


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
