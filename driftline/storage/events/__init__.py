"""Event store: predictions, labels, feedback and reference rows in ClickHouse."""

from driftline.storage.events.engine import EngineInfo, EventEngine, make_engine, quote_literal, render
from driftline.storage.events.store import Counts, EventStore, InsertResult
from driftline.storage.events.tables import Kind, TableNames, arrow_schema

__all__ = [
    "Counts",
    "EngineInfo",
    "EventEngine",
    "EventStore",
    "InsertResult",
    "Kind",
    "TableNames",
    "arrow_schema",
    "make_engine",
    "quote_literal",
    "render",
]
