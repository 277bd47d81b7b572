"""Tables for the bulk endpoints: the flat layout the server reads, as Parquet bytes.

pyarrow (and pandas) are imported here, lazily, so a serving process that only logs
predictions never pays for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

# nested columns a caller may pass, and the prefix their keys take as flat columns
_NESTED = {"features": "", "metadata": "", "scores": "score_", "timings": "timing_"}


def to_arrow(data: Any) -> pa.Table:
    """A pyarrow Table from a Table, RecordBatch, pandas DataFrame or list of flat dicts."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        table = data
    elif isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    elif type(data).__module__.startswith("pandas") and hasattr(data, "columns"):
        table = pa.Table.from_pandas(data, preserve_index=False)
    elif isinstance(data, list):
        table = pa.Table.from_pylist(data)
    else:
        raise TypeError(
            f"expected a pyarrow Table, a pandas DataFrame or a list of dicts, not {type(data).__name__}"
        )
    return flatten(table)


def flatten(table: pa.Table) -> pa.Table:
    """Struct columns `features`, `metadata`, `scores` and `timings` become flat columns."""
    import pyarrow as pa

    names: list[str] = []
    columns: list[Any] = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        prefix = _NESTED.get(name)
        if prefix is None or not pa.types.is_struct(column.type):
            names.append(name)
            columns.append(column)
            continue
        for i, child in enumerate(column.flatten()):  # flatten() keeps the struct's own nulls
            names.append(prefix + column.type.field(i).name)
            columns.append(child)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"column {name!r} appears twice after flattening nested columns")
        seen.add(name)
    return pa.Table.from_arrays(columns, names=names)


def to_parquet(table: pa.Table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())
