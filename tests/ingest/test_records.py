"""Both ways of reading JSON records (Arrow's one pass, the per-value path) agree."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from driftline.ingest.columns import PiiHasher, RowErrors, floats, strings, timestamps
from driftline.ingest.json_arrow import FIELDS as _FIELDS
from driftline.ingest.records import JsonSource, build_predictions, fast_json_source
from driftline.schema import ModelSchema
from driftline.storage.events import Kind
from tests.support.models import FRAUD, IRIS, fraud_records

HASH = PiiHasher(b"k")


def both(schema: ModelSchema, records: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    fast = fast_json_source(records, schema, _FIELDS[Kind.PREDICTIONS])
    assert fast is not None, "the fast path should take well-typed records"
    e1, e2 = RowErrors(), RowErrors()
    a = build_predictions(schema, ["v1"], fast, e1, now=1_790_000_000, max_future=86_400, hasher=HASH)
    b = build_predictions(
        schema, ["v1"], JsonSource(records, e2), e2, now=1_790_000_000, max_future=86_400, hasher=HASH
    )
    return a.table, b.table


def test_fast_and_checking_paths_agree_binary() -> None:
    schema = ModelSchema.model_validate(FRAUD)
    records = fraud_records(300, seed=4)
    for i, r in enumerate(records):
        r["timestamp"] = f"2026-05-0{1 + i % 9}T10:00:00Z"
        r["prediction"] = i % 2
        if i % 5 == 0:
            r["features"]["age"] = None
            r.pop("timings")
    fast, slow = both(schema, records)
    assert fast.equals(slow)


def test_fast_and_checking_paths_agree_multiclass() -> None:
    schema = ModelSchema.model_validate(IRIS)
    rng = np.random.default_rng(5)
    records = []
    for i in range(50):
        p = rng.dirichlet([1, 1, 1])
        records.append(
            {
                "request_id": f"i{i}",
                "version": "v1",
                "timestamp": 1_780_000_000 + i,
                "features": {"petal": float(rng.normal()), "sepal": float(rng.normal())},
                "scores": dict(zip(["setosa", "versicolor", "virginica"], map(float, p), strict=True)),
            }
        )
    fast, slow = both(schema, records)
    assert fast.equals(slow)
    assert fast.column("prediction").to_pylist()[0] in ("setosa", "versicolor", "virginica")


def test_wrong_types_fall_back_to_the_checking_path() -> None:
    schema = ModelSchema.model_validate(FRAUD)
    records = fraud_records(3)
    records[1]["features"]["amount"] = "a lot"
    assert fast_json_source(records, schema, _FIELDS[Kind.PREDICTIONS]) is None


def test_column_readers_against_python() -> None:
    values, bad = floats([1, 2.5, None, "3", "x", True, float("inf")])
    assert np.allclose(values[:2], [1, 2.5]) and np.isnan(values[2]) and values[3] == 3.0
    assert bad.tolist() == [False, False, False, False, True, True, True]
    arr, bad = strings(["a", 1, 2.0, True, None, {"x": 1}], canonical=True)
    assert arr.to_pylist() == ["a", "1", "2", "1", None, None]
    assert bad.tolist() == [False, False, False, False, False, True]
    epochs, isnull, bad = timestamps(
        ["2026-01-02T03:04:05Z", "2026-01-02 03:04:05", "2026-01-02T05:04:05+02:00", 1767323045, None, "nope"]
    )
    assert epochs[:4].tolist() == [1767323045] * 4
    assert isnull.tolist() == [False] * 4 + [True, False]
    assert bad.tolist() == [False] * 5 + [True]


@pytest.mark.parametrize("value", ["2026-01-02T03:04:05.123456Z", "2026-01-02"])
def test_iso_variants(value: str) -> None:
    epochs, _, bad = timestamps(pa.array([value]))
    assert not bad[0] and epochs[0] in (1767323045, 1767312000)
