"""Alembic environment: runs on the connection `migrate()` hands over.

Without one (the alembic command line, with `-x url=...` or `sqlalchemy.url`), it
builds its own engine through the store's factory, so pragmas and drivers match.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from driftline.storage.meta.db import make_engine
from driftline.storage.meta.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass -x url=... or set sqlalchemy.url")
    return url


def _run(connection: Connection) -> None:
    # Batch mode lets later revisions alter tables on SQLite, which has little ALTER TABLE.
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=True, compare_type=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
