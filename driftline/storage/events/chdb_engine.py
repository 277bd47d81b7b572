"""The embedded default: ClickHouse in-process through chDB.

chDB runs one embedded server per process and locks its data dir against other
processes, so engines on the same path share one session (reference-counted) and
a second path in the same process is refused with a clear error.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from driftline.errors import StoreError
from driftline.storage.events.engine import Columns, EngineInfo, render, short_error

_lock = threading.Lock()
_shared: dict[str, tuple[Any, int]] = {}
# chDB resolves Python(frame) by name at query time: two threads inserting at once may each read
# the other's table, so inserts from Python objects go one at a time in a process
_insert_lock = threading.Lock()


def _open(path: str) -> Any:
    from chdb import session as chdb_session

    with _lock:
        if path in _shared:
            sess, refs = _shared[path]
            _shared[path] = (sess, refs + 1)
            return sess
        if _shared:
            other = next(iter(_shared))
            raise StoreError(
                f"this process already holds the embedded store at {other}; one path per process"
            )
        Path(path).mkdir(parents=True, exist_ok=True)
        try:
            sess = chdb_session.Session(path)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise StoreError(f"cannot open the embedded store at {path}: {exc}") from exc
        _shared[path] = (sess, 1)
        return sess


def _release(path: str) -> None:
    with _lock:
        if path not in _shared:
            return
        sess, refs = _shared[path]
        if refs > 1:
            _shared[path] = (sess, refs - 1)
            return
        del _shared[path]
        sess.close()


def arrow_to_columns(table: pa.Table) -> Columns:
    """Arrow result columns as the engine contract promises them."""
    out: Columns = {}
    for fld, col in zip(table.schema, table.columns, strict=True):
        name = fld.name
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        typ = arr.type
        if pa.types.is_integer(typ):
            if fld.nullable or arr.null_count:
                out[name] = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
            elif typ == pa.uint64():
                out[name] = arr.to_numpy(zero_copy_only=False)
            else:
                out[name] = arr.to_numpy(zero_copy_only=False).astype(np.int64)
        elif pa.types.is_floating(typ) or pa.types.is_decimal(typ):
            out[name] = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
        elif pa.types.is_boolean(typ):
            out[name] = arr.cast(pa.int64()).to_numpy(zero_copy_only=False)
        elif pa.types.is_timestamp(typ):
            out[name] = arr.cast(pa.timestamp("s")).cast(pa.int64()).to_numpy(zero_copy_only=False)
        elif pa.types.is_dictionary(typ):
            out[name] = np.asarray(arr.dictionary_decode().to_pylist(), dtype=object)
        else:
            values = arr.to_pylist()
            obj = np.empty(len(values), dtype=object)
            obj[:] = values
            out[name] = obj
    return out


PARALLEL_INSERT_ROWS = 262_144
MAX_PART_ROWS = 1_048_576


def _parallel(rows: int) -> str:
    """A big block is written as two parts at once (one part is written by one thread): twice
    the writers, and no more parts for the merges to fold than a big block makes anyway."""
    if rows < PARALLEL_INSERT_ROWS:
        return ""
    part = min(-(-rows // 2), MAX_PART_ROWS)
    return (
        f" SETTINGS max_insert_threads = 2, max_block_size = {min(part, 65_536)}, "
        f"max_insert_block_size = {part}, min_insert_block_size_rows = 0, min_insert_block_size_bytes = 0"
    )


class ChdbEngine:
    """ClickHouse embedded in this process; data under `path`, tables in `database`."""

    def __init__(self, path: Path | str, database: str = "driftline") -> None:
        self.path = str(Path(path).expanduser().resolve())
        self.database = database
        self._session = _open(self.path)
        self._closed = False
        version = self._scalar("SELECT version()")
        major, minor = (int(x) for x in str(version).split(".")[:2])
        self.info = EngineInfo(name="chdb", version=(major, minor))
        self._session.query(f"CREATE DATABASE IF NOT EXISTS `{database}`")

    def _run(self, sql: str, fmt: str) -> Any:
        if self._closed:
            raise StoreError("the embedded store is closed")
        try:
            return self._session.query(sql, fmt)
        except Exception as exc:
            raise StoreError(f"embedded ClickHouse: {short_error(exc)}") from exc

    def _scalar(self, sql: str) -> Any:
        table = self._run(sql, "ArrowTable")
        return table.column(0)[0].as_py()

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._run(render(sql, params), "CSV")

    def insert_columns(self, table: str, data: pa.Table) -> int:
        if data.num_rows == 0:
            return 0
        names = ", ".join(f"`{n}`" for n in data.column_names)
        # chDB's Python() table function reads the local variable named here
        frame = data  # noqa: F841
        with _insert_lock:
            self._run(
                f"INSERT INTO {table} ({names}) SELECT {names} FROM Python(frame){_parallel(data.num_rows)}",
                "CSV",
            )
        return int(data.num_rows)

    def query_columns(self, sql: str, params: Mapping[str, Any] | None = None) -> Columns:
        return arrow_to_columns(self._run(render(sql, params), "ArrowTable"))

    def ping(self) -> None:
        self._scalar("SELECT 1")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release(self.path)
