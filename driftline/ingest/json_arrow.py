"""JSON batches read straight into Arrow by Arrow's own JSON reader.

Parsing a batch into Python objects and then converting those to columns holds the
GIL for most of a request; Arrow's reader does both in C++ without it, so requests
are parsed on every core at once. The reader is told the exact type of every field
the model's schema allows and refuses anything else, so it only ever takes a body it
can type completely: stage timings are typed by the stages of the first record that
has them. Any doubt (an unexpected field, stage or type, NaN, a second object, bytes
that are not UTF-8, a model named after the records) and it declines:
the caller then parses with orjson and checks value by value, which reports exactly
what is wrong. Declining is the only answer to hostile nesting too, since the reader
stops at the first unexpected bracket instead of descending into it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from driftline.schema import FeatureKind, ModelSchema, Task
from driftline.storage.events import Kind

# Fields each kind of record may carry, besides features and metadata.
_PREDICTION_FIELDS = (
    "request_id",
    "version",
    "timestamp",
    "prediction",
    "score",
    "scores",
    "latency_ms",
    "timings",
    "status",
    "error",
)
FIELDS: dict[Kind, tuple[str, ...]] = {
    Kind.PREDICTIONS: _PREDICTION_FIELDS,
    Kind.LABELS: ("request_id", "label", "timestamp"),
    Kind.FEEDBACK: ("request_id", "outcome", "reviewer", "label", "comment", "timestamp"),
    # a reference row is a prediction of a known version, with its label
    Kind.REFERENCE: (*(f for f in _PREDICTION_FIELDS if f != "version"), "label"),
}
INPUT_TYPES = {
    FeatureKind.NUMERIC: pa.float64(),
    FeatureKind.CATEGORICAL: pa.string(),
    FeatureKind.BOOLEAN: pa.bool_(),
}
# Fields that may be text or number: typed from their first value in the body.
SNIFFED = ("timestamp", "prediction", "label")
# Types are read off the body's first bytes only: a search for a field that no record has
# would otherwise scan the whole body, and a field that shows up only later makes the
# reader refuse, so the guess never changes a result.
SNIFF_BYTES = 64 * 1024

_TIMINGS = re.compile(rb'"timings"\s*:\s*(?:null|\{([^{}"]*(?:"[A-Za-z0-9_ .:/-]{1,64}"[^{}"]*)*)\})')
_STAGE = re.compile(rb'"([A-Za-z0-9_ .:/-]{1,64})"\s*:')
_MODEL = re.compile(rb'\A\s*\{\s*"model"\s*:\s*"([A-Za-z][A-Za-z0-9_-]{0,63})"\s*,')
_NUMBER = re.compile(rb"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
_VALUE = re.compile(rb'\s*:\s*(["tfn0-9-])')


def leading_model(body: bytes) -> str | None:
    """The model named first in the body, as serving systems write it; None otherwise."""
    m = _MODEL.match(body)
    return m.group(1).decode() if m else None


def _sniff(body: bytes, name: str) -> pa.DataType | None:
    """The type of a field's first non-null value, read off the raw bytes.

    A wrong guess costs nothing but speed: the reader then refuses a value and the
    caller takes the checking path.
    """
    key = b'"' + name.encode() + b'"'
    start = 0
    for _ in range(64):
        at = body.find(key, start)
        if at < 0:
            break
        start = at + len(key)
        m = _VALUE.match(body, start)
        if m is None:
            continue  # the name as a value, not as a key
        first = m.group(1)
        if first == b'"':
            return pa.string()
        if first in (b"t", b"f"):
            return None if name == "timestamp" else pa.bool_()
        if first == b"n":
            continue
        number = _NUMBER.match(body, m.start(1))
        if number is None:
            break
        return pa.float64() if number.group(1) or number.group(2) else pa.int64()
    return pa.string()


def _stages(body: bytes) -> list[str] | None:
    """The stage names of the first timings in the body; records with other stages are refused."""
    for i, m in enumerate(_TIMINGS.finditer(body)):
        if m.group(1) is not None:
            names = [k.decode() for k in _STAGE.findall(m.group(1))]
            return names if len(set(names)) == len(names) else None
        if i >= 64:
            break
    return None


def struct_of(
    schema: ModelSchema, fields: tuple[str, ...], typed: Mapping[str, pa.DataType | None]
) -> pa.StructType | None:
    """The Arrow type of a record carrying `fields`.

    `typed` gives the types that depend on the batch: of the fields that may be text or
    number, and of timings (no member when absent). None when one of those is None,
    that is, when the batch rules Arrow's one-pass conversion out.
    """
    members: list[tuple[str, pa.DataType]] = [
        ("features", pa.struct([(f.name, INPUT_TYPES[f.kind]) for f in schema.features])),
        ("metadata", pa.struct([(m.name, INPUT_TYPES[m.kind]) for m in schema.metadata])),
    ]
    for name in fields:
        if name in SNIFFED or name == "timings":
            if name not in typed:
                continue
            typ = typed[name]
            if typ is None:
                return None
            if (
                name in ("prediction", "label")
                and schema.task is Task.REGRESSION
                and pa.types.is_integer(typ)
            ):
                typ = pa.float64()
            members.append((name, typ))
        elif name in ("score", "latency_ms"):
            members.append((name, pa.float64()))
        elif name == "scores":
            members.append((name, pa.struct([(c, pa.float64()) for c in schema.classes])))
        else:
            members.append((name, pa.string()))
    return pa.struct(members)


def record_type(body: bytes, schema: ModelSchema, kind: Kind) -> pa.StructType | None:
    """The type every record of the body must have, typed off its first bytes."""
    head, fields = body[:SNIFF_BYTES], FIELDS[kind]
    typed: dict[str, pa.DataType | None] = {name: _sniff(head, name) for name in SNIFFED if name in fields}
    if "timings" in fields and b'"timings"' in head:
        stages = _stages(head)
        if stages is None:
            typed["timings"] = None
        elif stages:  # a first `{}`: no member, so records that do have stages are refused
            typed["timings"] = pa.struct([(st, pa.float64()) for st in stages])
    return struct_of(schema, fields, typed)


def read_records(
    body: bytes, schema: ModelSchema, kind: Kind, model: str, max_rows: int
) -> pa.StructArray | None:
    """The body's records as one struct array, or None when the checking path must read it."""
    rec = record_type(body, schema, kind)
    if rec is None:
        return None
    read = _read([body], rec, model, max_rows, newlines=True)
    return None if read is None else read[0]


def read_lines(
    bodies: Sequence[bytes], rec: pa.StructType, model: str, max_rows: int
) -> tuple[pa.StructArray, list[int]] | None:
    """The records of several bodies in one pass, and how many each body has; None when any declines.

    One read of many bodies costs a fraction of one read each (the reader's fixed cost
    is most of a small body's). Only bodies on one line each, and not blank, are taken:
    the reader then parses line by line, a line can only hold whole objects and each
    line holds at least one, so as many rows as bodies means row i is body i, and no
    body can reach into the next.
    """
    if any(b"\n" in body or b"\r" in body or not body.strip() for body in bodies):
        return None
    return _read(bodies, rec, model, max_rows, newlines=False)


def _read(
    bodies: Sequence[bytes], rec: pa.StructType, model: str, max_rows: int, *, newlines: bool
) -> tuple[pa.StructArray, list[int]] | None:
    data = bodies[0] if len(bodies) == 1 else b"\n".join(bodies)
    explicit = pa.schema([("model", pa.string()), ("records", pa.list_(rec))])
    try:
        table = pajson.read_json(
            pa.BufferReader(data),
            read_options=pajson.ReadOptions(use_threads=False, block_size=len(data) + 1),
            parse_options=pajson.ParseOptions(
                explicit_schema=explicit, unexpected_field_behavior="error", newlines_in_values=newlines
            ),
        )
    except pa.ArrowException:
        return None  # whatever the reader cannot do, the checking path does or explains
    if table.num_rows != len(bodies):
        return None
    models = table.column("model")
    if models.null_count or not pc.all(pc.equal(models, model)).as_py():
        return None
    lists = table.column("records").combine_chunks()
    if lists.null_count:
        return None
    sizes = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    if not ((sizes > 0) & (sizes <= max_rows)).all():
        return None
    records = lists.flatten()
    if records.null_count:
        return None
    if not (data.isascii() or _valid_utf8(records)):
        return None
    if not all_finite(records):
        return None  # NaN or Infinity: not JSON, the checking path says so
    return records, [int(n) for n in sizes]


def _valid_utf8(arr: pa.Array) -> bool:
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def all_finite(arr: pa.Array) -> bool:
    """No NaN or infinity among the non-null floats: the JSON reader takes them, JSON does not."""
    if pa.types.is_struct(arr.type):
        return all(all_finite(arr.field(i)) for i in range(arr.type.num_fields))
    values = arr.buffers()[1] if pa.types.is_float64(arr.type) else None
    if values is not None:
        # the value buffer as is: a fraction of a compute call's cost, and a slot under a null
        # that happens not to be finite only sends the check to the exact path below
        raw = np.frombuffer(values, dtype=np.float64)[arr.offset : arr.offset + len(arr)]
        if np.isfinite(raw).all():
            return True
    if pa.types.is_floating(arr.type):
        return bool(pc.all(pc.is_finite(arr)).as_py() is not False)
    return True
