"""The one contract between driftline and ClickHouse, embedded or server.

Everything else speaks SQL in the dialect common to ClickHouse 18.16 and current
releases, hands rows over as Arrow tables and reads results as NumPy columns; only
the two engine modules import chdb or clickhouse_driver.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from driftline.config import Settings

Columns = dict[str, np.ndarray]

_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\0": "\\0",
    "\b": "\\b",
    "\f": "\\f",
}
_ESCAPE_RE = re.compile("[\\\\'\n\r\t\0\b\f]")


@dataclass(frozen=True)
class EngineInfo:
    """What the DDL needs to know to adapt to the server it talks to."""

    name: str
    version: tuple[int, int]

    @property
    def low_cardinality(self) -> bool:
        return self.version >= (19, 0)

    @property
    def aggregation_in_order(self) -> bool:
        """GROUP BY on a prefix of the sorting key can aggregate runs of rows at once (20.x on)."""
        return self.version >= (21, 0)

    @property
    def legacy(self) -> bool:
        """ClickHouse before 19: no LowCardinality by default, no query parameters."""
        return self.version < (19, 0)


def quote_literal(value: Any) -> str:
    """One SQL literal for a Python value; the only way values enter SQL."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return repr(f)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return "toDateTime('" + str(value.strftime("%Y-%m-%d %H:%M:%S")) + "', 'UTC')"
    if isinstance(value, date):
        return "toDate('" + value.isoformat() + "')"
    if isinstance(value, str):
        return "'" + _ESCAPE_RE.sub(lambda m: _ESCAPES[str(m.group(0))], value) + "'"
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        items = list(value)
        body = ", ".join(quote_literal(v) for v in items)
        if isinstance(value, tuple | set | frozenset):
            # a one-element tuple still needs to be a tuple for IN; 18.16 refuses `('a',)`
            return ("tuple(" if len(items) == 1 else "(") + body + ")" if items else "(NULL)"
        return "[" + body + "]"
    raise TypeError(f"cannot pass {type(value).__name__} as a SQL value")


def short_error(exc: BaseException) -> str:
    """A server error without its stack trace, fit for a log line or a 503 body."""
    text = str(exc).split("Stack trace:")[0].strip()
    text = " ".join(text.split())
    return text[:500]


def render(sql: str, params: Mapping[str, Any] | None) -> str:
    """Substitute %(name)s placeholders with quoted literals (DB-API style, %% for %)."""
    if not params:
        return sql
    return sql % {k: quote_literal(v) for k, v in params.items()}


@runtime_checkable
class EventEngine(Protocol):
    """ClickHouse, embedded (chDB) or server (native protocol)."""

    @property
    def info(self) -> EngineInfo:
        """The server's version, for DDL that adapts to it."""

    @property
    def database(self) -> str:
        """The database the model tables live in."""

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run a statement (DDL, INSERT ... SELECT, ALTER)."""

    def insert_columns(self, table: str, data: pa.Table) -> int:
        """Insert an Arrow table whose column names are the table's; returns rows inserted."""

    def query_columns(self, sql: str, params: Mapping[str, Any] | None = None) -> Columns:
        """Result as NumPy columns: numbers as float64/int64 (nullable numbers as float64 with NaN),
        DateTime as int64 epoch seconds, strings and arrays as object arrays (None for NULL)."""

    def ping(self) -> None:
        """Raise errors.StoreError unless the store answers."""

    def close(self) -> None: ...


def rows(columns: Columns) -> list[dict[str, Any]]:
    """Small results as records (for lookups, never for hot paths)."""
    names = list(columns)
    if not names:
        return []
    n = len(columns[names[0]])
    return [{name: _py(columns[name][i]) for name in names} for i in range(n)]


def _py(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.ndarray):
        return [_py(v) for v in value]
    if isinstance(value, list):
        return [_py(v) for v in value]
    return value


def normalise(values: Sequence[Any] | np.ndarray, ch_type: str) -> np.ndarray:
    """A column from the native driver, shaped as chDB's Arrow output comes out."""
    inner = ch_type
    nullable = False
    while True:
        if inner.startswith("LowCardinality("):
            inner = inner[len("LowCardinality(") : -1]
        elif inner.startswith("Nullable("):
            inner = inner[len("Nullable(") : -1]
            nullable = True
        else:
            break
    if inner.startswith("DateTime"):
        return np.array([-1 if v is None else int(v.timestamp()) for v in values], dtype=np.int64)
    if inner.startswith("Date"):
        return np.array([None if v is None else v.isoformat() for v in values], dtype=object)
    if inner.startswith(("Float", "Decimal")) or (nullable and inner.startswith(("Int", "UInt"))):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if inner.startswith("UInt64"):
        return np.asarray(values, dtype=np.uint64)
    if inner.startswith(("Int", "UInt")):
        return np.asarray(values, dtype=np.int64)
    out = np.empty(len(values), dtype=object)
    out[:] = [list(v) if isinstance(v, tuple) else v for v in values]
    return out


def make_engine(settings: Settings) -> EventEngine:
    """The engine the settings ask for: a server when a URL is set, else embedded chDB."""
    if settings.clickhouse_url:
        from driftline.storage.events.native_engine import NativeEngine

        return NativeEngine(settings.clickhouse_url, cluster=settings.clickhouse_cluster)
    from driftline.storage.events.chdb_engine import ChdbEngine

    return ChdbEngine(settings.chdb_path, settings.events_database)
