"""Arrow's JSON reader takes only bodies it types completely, and then stores what the checking path would."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from driftline.ingest.columns import PiiHasher, RowErrors
from driftline.ingest.json_arrow import all_finite, leading_model, read_lines, read_records, record_type
from driftline.ingest.records import (
    JsonSource,
    StructSource,
    build_feedback,
    build_labels,
    build_predictions,
)
from driftline.schema import ModelSchema
from driftline.storage.events import Kind
from tests.support.models import FRAUD, HOUSES, IRIS, fraud_records

HASH = PiiHasher(b"k")
NOW = 1_790_000_000
FRAUD_SCHEMA = ModelSchema.model_validate(FRAUD)


def body_of(model: str, records: list[Any]) -> bytes:
    return orjson.dumps({"model": model, "records": records})


def stored(schema: ModelSchema, kind: Kind, body: bytes) -> tuple[pa.Table, pa.Table]:
    """The table built from the reader's records and from orjson's, for the same body."""
    typed = read_records(body, schema, kind, schema.name, 100_000)
    assert typed is not None, "the reader should take this body"
    records = orjson.loads(body)["records"]
    tables = []
    for src in (StructSource(typed, None), JsonSource(records, RowErrors())):
        errors = RowErrors()
        if kind is Kind.PREDICTIONS:
            batch = build_predictions(schema, ["v1"], src, errors, now=NOW, max_future=86_400, hasher=HASH)
        elif kind is Kind.LABELS:
            batch = build_labels(schema, src, errors, now=NOW, max_future=86_400)
        else:
            batch = build_feedback(schema, src, errors, now=NOW, max_future=86_400)
        tables.append(batch.table)
    return tables[0], tables[1]


def test_binary_with_timings_pii_and_nulls_matches_the_checking_path() -> None:
    records = fraud_records(400, seed=3)
    for i, r in enumerate(records):
        r["timestamp"] = f"2026-09-0{1 + i % 9}T10:00:{i % 60:02d}+02:00"
        if i % 5 == 0:
            r["features"]["age"] = None
            r["features"]["amount"] = 50_000.0  # out of range: a violation, stored
            r["features"]["country"] = "ZZ"  # unseen category
            r.pop("timings")
        if i % 7 == 3:
            r["timings"] = {"inference": 2.0}  # fewer stages than the first record
            r["status"] = "error"
            r["error"] = "feature-store"
        r["prediction"] = i % 2
    fast, slow = stored(FRAUD_SCHEMA, Kind.PREDICTIONS, body_of("fraud", records))
    assert fast.equals(slow)
    assert fast.column("timing_stage")[0].as_py() == []
    assert fast.column("timing_stage")[1].as_py() == ["preprocess", "inference"]
    assert fast.column("timing_stage")[3].as_py() == ["inference"]
    assert "f_ssn" not in fast.column_names


def test_multiclass_scores_and_regression_numbers_match() -> None:
    rng = np.random.default_rng(8)
    iris = ModelSchema.model_validate(IRIS)
    records = [
        {
            "request_id": f"i{i}",
            "version": "v1",
            "timestamp": 1_789_000_000.5 + i,
            "features": {"petal": float(rng.normal()), "sepal": int(rng.integers(0, 9))},
            "scores": dict(
                zip(["setosa", "versicolor", "virginica"], map(float, rng.dirichlet([1, 1, 1])), strict=True)
            ),
        }
        for i in range(60)
    ]
    fast, slow = stored(iris, Kind.PREDICTIONS, body_of("iris", records))
    assert fast.equals(slow)
    houses = ModelSchema.model_validate(HOUSES)
    records = [
        {
            "request_id": f"h{i}",
            "version": "v1",
            "features": {"rooms": i, "city": "x"},
            "prediction": i * 1000,
        }
        for i in range(1, 30)
    ]
    fast, slow = stored(houses, Kind.PREDICTIONS, body_of("houses", records))
    assert fast.equals(slow)


def test_labels_and_feedback_match() -> None:
    labels = [{"request_id": f"r{i}", "label": i % 2, "timestamp": NOW - 60 + i} for i in range(50)]
    fast, slow = stored(FRAUD_SCHEMA, Kind.LABELS, body_of("fraud", labels))
    assert fast.equals(slow)
    feedback = [
        {"request_id": f"r{i}", "outcome": "confirmed", "reviewer": "ann", "label": 1, "comment": "ok"}
        for i in range(20)
    ]
    fast, slow = stored(FRAUD_SCHEMA, Kind.FEEDBACK, body_of("fraud", feedback))
    assert fast.equals(slow)


def _with(change: Any) -> bytes:
    records = fraud_records(5)
    change(records)
    return body_of("fraud", records)


def _set(i: int, path: tuple[str, ...], value: Any) -> Any:
    def change(records: list[dict[str, Any]]) -> None:
        target = records[i]
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value

    return change


DECLINED = {
    "string in a numeric feature": _with(_set(2, ("features", "amount"), "a lot")),
    "number as a category": _with(_set(1, ("features", "country"), 7)),
    "unknown feature": _with(_set(3, ("features", "colour"), "red")),
    "unknown field": _with(_set(0, ("extra",), 1)),
    "new stage": _with(_set(4, ("timings", "postprocess"), 1.0)),
    "timings not an object": _with(_set(0, ("timings",), "fast")),
    "request id as number": _with(_set(1, ("request_id",), 17)),
    "float among int timestamps": _with(_set(3, ("timestamp",), 1_780_000_000.5)),
    "boolean timestamp": _with(_set(0, ("timestamp",), True)),
    "record not an object": _with(lambda r: r.append(1)),
    "null record": _with(lambda r: r.append(None)),
    "no records": body_of("fraud", []),
    "NaN": _with(_set(0, ("features", "amount"), 1.0)).replace(b'"amount":1.0', b'"amount":NaN'),
    "Infinity": _with(_set(0, ("score",), 0.5)).replace(b'"score":0.5', b'"score":Infinity'),
    "duplicate key": _with(lambda r: None).replace(
        b'"request_id":"r0"', b'"request_id":"r0","request_id":"x"'
    ),
    "second object": _with(lambda r: None) + b'\n{"model":"fraud","records":[]}',
    "not UTF-8": _with(_set(0, ("metadata", "region"), "eu")).replace(b'"eu"', b'"\xff"', 1),
    "other model": body_of("iris", fraud_records(3)),
    "records not a list": b'{"model":"fraud","records":{"a":1}}',
}


@pytest.mark.parametrize("case", sorted(DECLINED))
def test_declines_what_it_cannot_type(case: str) -> None:
    assert read_records(DECLINED[case], FRAUD_SCHEMA, Kind.PREDICTIONS, "fraud", 100_000) is None


def _lines(bodies: list[bytes], max_rows: int = 100_000) -> tuple[pa.StructArray, list[int]] | None:
    rec = record_type(bodies[0], FRAUD_SCHEMA, Kind.PREDICTIONS)
    assert rec is not None
    return read_lines(bodies, rec, "fraud", max_rows)


def test_bodies_read_together_give_each_body_its_own_rows() -> None:
    bodies = [body_of("fraud", fraud_records(n, prefix=f"b{n}-")) for n in (3, 1, 5)]
    read = _lines(bodies)
    assert read is not None
    records, sizes = read
    assert sizes == [3, 1, 5]
    alone = [read_records(b, FRAUD_SCHEMA, Kind.PREDICTIONS, "fraud", 100_000) for b in bodies]
    assert records.equals(pa.concat_arrays(alone))  # type: ignore[arg-type]


@pytest.mark.parametrize("case", sorted(DECLINED))
def test_a_body_the_reader_declines_alone_declines_its_group(case: str) -> None:
    good = body_of("fraud", fraud_records(2, prefix="g"))
    assert _lines([good, DECLINED[case], good]) is None


@pytest.mark.parametrize(
    "bodies",
    [
        # the first body is not one object: cut short, its rest is another body
        [b'{"model":"fraud","records":[' + orjson.dumps(fraud_records(1)[0]), b"]}"],
        # two objects on one line, and as many objects as bodies in all
        [body_of("fraud", fraud_records(1)) * 2, b""],
        [body_of("fraud", fraud_records(1)) * 2, b" \t "],
        # an open string that would take in the next body's first bytes
        [b'{"model":"fraud","records":[{"request_id":"', b'x"}]}'],
    ],
    ids=["cut", "two-in-one", "two-in-one-blank", "open-string"],
)
def test_no_body_reaches_into_the_next(bodies: list[bytes]) -> None:
    assert _lines(bodies) is None


def test_bodies_on_several_lines_are_read_one_by_one() -> None:
    body = orjson.dumps({"model": "fraud", "records": fraud_records(2)}, option=orjson.OPT_INDENT_2)
    assert _lines([body]) is None
    assert _lines([body_of("fraud", fraud_records(1)).replace(b",", b",\r", 1)]) is None
    assert read_records(body, FRAUD_SCHEMA, Kind.PREDICTIONS, "fraud", 100_000) is not None


def test_a_group_holds_each_body_to_the_row_limit() -> None:
    bodies = [body_of("fraud", fraud_records(n, prefix=f"b{n}-")) for n in (3, 4)]
    assert _lines(bodies, max_rows=3) is None
    assert _lines(bodies, max_rows=4) is not None


def test_more_rows_than_allowed_are_declined() -> None:
    body = body_of("fraud", fraud_records(20))
    assert read_records(body, FRAUD_SCHEMA, Kind.PREDICTIONS, "fraud", 19) is None
    assert read_records(body, FRAUD_SCHEMA, Kind.PREDICTIONS, "fraud", 20) is not None


@pytest.mark.parametrize("where", ["features", "record", "top"])
def test_hostile_nesting_is_declined_without_descending(where: str) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    if where == "features":
        body = b'{"model":"fraud","records":[{"request_id":"a","features":{"amount":' + deep + b"}}]}"
    elif where == "record":
        body = b'{"model":"fraud","records":[{"request_id":"a","x":' + deep + b"}]}"
    else:
        body = b'{"model":"fraud","x":' + deep + b',"records":[]}'
    assert read_records(body, FRAUD_SCHEMA, Kind.PREDICTIONS, "fraud", 100_000) is None


def test_leading_model() -> None:
    assert leading_model(b' {\n "model" : "fraud-v2", "records": []}') == "fraud-v2"
    assert leading_model(b'{"records": [], "model": "fraud"}') is None
    assert leading_model(b'{"model": "fr\\u0061ud", "records": []}') is None
    assert leading_model(b'{"model": "fraud"}') is None


def test_field_types_come_from_the_first_non_null_value() -> None:
    def typ(body: bytes, name: str) -> pa.DataType:
        rec = record_type(body, FRAUD_SCHEMA, Kind.PREDICTIONS)
        assert rec is not None
        return rec.field(name).type

    assert typ(b'[{"timestamp": null}, {"timestamp" : 17}]', "timestamp") == pa.int64()
    assert typ(b'[{"timestamp": -1.5e3}]', "timestamp") == pa.float64()
    assert typ(b'[{"c": "timestamp"}, {"timestamp": "2026-01-01"}]', "timestamp") == pa.string()
    assert typ(b'[{"prediction": true}]', "prediction") == pa.bool_()
    assert typ(b'[{"timings": {"a b": 1, "c": 2}}]', "timings") == pa.struct(
        [("a b", pa.float64()), ("c", pa.float64())]
    )
    houses = ModelSchema.model_validate(HOUSES)
    rec = record_type(b'[{"prediction": 3}]', houses, Kind.PREDICTIONS)
    assert rec is not None and rec.field("prediction").type == pa.float64()


def test_fields_first_seen_past_the_sniffed_bytes_are_declined() -> None:
    records = fraud_records(600)
    for r in records:
        r.pop("timings")
    late = [dict(r) for r in records]
    late[-1]["timings"] = {"inference": 1.0}
    assert len(body_of("fraud", late)) > 64 * 1024
    assert read_records(body_of("fraud", late), FRAUD_SCHEMA, Kind.PREDICTIONS, "fraud", 100_000) is None
    late = [dict(r) for r in records]
    late[-1]["prediction"] = 1
    assert read_records(body_of("fraud", late), FRAUD_SCHEMA, Kind.PREDICTIONS, "fraud", 100_000) is None
    assert (
        read_records(body_of("fraud", records), FRAUD_SCHEMA, Kind.PREDICTIONS, "fraud", 100_000) is not None
    )


def test_the_finiteness_check_reads_only_the_slice_and_skips_nulls() -> None:
    """The check reads the value buffer as is: a sliced array's values outside the slice, and
    the slots under nulls, do not count; a NaN or an infinity inside the slice does."""
    values = pa.array([np.nan, 1.0, None, 2.5, np.inf], type=pa.float64())
    assert all_finite(pa.StructArray.from_arrays([values.slice(1, 3)], ["x"]))
    assert not all_finite(pa.StructArray.from_arrays([values.slice(0, 2)], ["x"]))
    assert not all_finite(pa.StructArray.from_arrays([values.slice(3, 2)], ["x"]))
    under_null = pa.Array.from_buffers(
        pa.float64(),
        2,
        [pa.array([True, False]).buffers()[1], pa.py_buffer(np.array([1.0, np.nan]).tobytes())],
    )
    assert under_null.null_count == 1
    assert all_finite(pa.StructArray.from_arrays([under_null], ["x"]))
