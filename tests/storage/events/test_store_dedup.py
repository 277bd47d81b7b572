"""Duplicates within one block: the first row of each record survives, in arrival order."""

from __future__ import annotations

import pyarrow as pa

from driftline.storage.events import Kind
from driftline.storage.events.store import dedup_block


def test_dedup_block_keeps_first_occurrence_in_order() -> None:
    data = pa.table(
        {
            "request_id": ["c", "a", "c", "b", "a", "d"],
            "version": ["v1"] * 6,
            "x": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    kept = dedup_block(Kind.PREDICTIONS, data)
    assert kept.column("request_id").to_pylist() == ["c", "a", "b", "d"]
    assert kept.column("x").to_pylist() == [0.0, 1.0, 3.0, 5.0]


def test_dedup_block_labels_key_on_request_and_label() -> None:
    data = pa.table({"request_id": ["r", "r", "r"], "label": ["1", "0", "1"], "x": [1, 2, 3]})
    kept = dedup_block(Kind.LABELS, data)
    assert kept.column("x").to_pylist() == [1, 2]
