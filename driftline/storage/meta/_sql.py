"""Small SQL helpers shared by the repositories."""

from __future__ import annotations

from typing import TypeVar, cast

from sqlalchemy import Executable, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from driftline.errors import InvalidInput
from driftline.storage.meta.models import Base


def insert(session: Session, entity: type[Base]) -> sqlite.Insert | postgresql.Insert:
    """An INSERT that takes ON CONFLICT clauses on either backend.

    Inserting with ON CONFLICT, then reading back, lets two writers racing on the
    same unique key both succeed without savepoints or retries.
    """
    # The table, not the mapped class: values are keyed by column name, as in SQL.
    table = cast(Table, entity.__table__)
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


_S = TypeVar("_S", bound=Executable)


def fresh(stmt: _S) -> _S:
    """Load rows as the database has them now, over what the session loaded earlier.

    Without it a session that read a row before returns its old attributes, so a key
    revoked by another process would still look active to a long transaction.
    """
    return stmt.execution_options(populate_existing=True)


def check_text(value: str | None, what: str, max_length: int) -> str | None:
    """Refuse text the column cannot hold, with a message rather than a driver error."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, not {type(value).__name__}")
    if len(value) > max_length:
        raise InvalidInput(f"{what} is longer than {max_length} characters")
    return value
