"""Schema migrations, applied in code at every start.

The alembic configuration is built here, pointing at the revisions shipped inside
the package, so an installed driftline needs no alembic.ini. Concurrent starts
are safe: on PostgreSQL an advisory lock serialises upgrades across processes, on
SQLite the immediate transaction does, and within one process a lock keeps
alembic's module-global context to one thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, Connection

from driftline.errors import StoreError
from driftline.storage.meta.db import is_sqlite, make_engine, translate_errors

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant bigint, the same in every process: the key of pg_advisory_xact_lock.
PG_MIGRATION_LOCK_ID = 0x64_72_69_66_74_6C_6D  # b"driftlm"

_local_lock = threading.Lock()


def alembic_config(connection: Connection | None = None, url: str | URL | None = None) -> Config:
    """An alembic Config for the packaged revisions.

    Pass `connection` to run commands inside a transaction the caller holds, or `url`
    for commands that connect on their own (e.g. `command.revision(cfg, autogenerate=True)`).
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("file_template", "v%%(rev)s_%%(slug)s")
    if url is not None:
        rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision shipped with this code."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise StoreError("no metadata-store migrations found")
    return head


def current_revision(target: str | URL | Engine) -> str | None:
    """The revision the database is at; None for an empty database."""
    engine, owned = _engine(target)
    try:
        with translate_errors(), engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        if owned:
            engine.dispose()


def migrate(target: str | URL | Engine) -> None:
    """Upgrade the database to the newest revision; a no-op when it is already there."""
    engine, owned = _engine(target)
    try:
        with _local_lock, translate_errors(), engine.connect() as conn:
            _upgrade(conn)
    finally:
        if owned:
            engine.dispose()


def _engine(target: str | URL | Engine) -> tuple[Engine, bool]:
    if isinstance(target, Engine):
        return target, False
    return make_engine(target), True


def _upgrade(conn: Connection) -> None:
    sqlite = is_sqlite(conn)
    if sqlite:
        # SQLite rebuilds a table to alter it; with foreign keys on, dropping the old copy
        # would cascade-delete its children. The pragma is ignored inside a transaction,
        # so it is set on the raw connection before BEGIN and checked before COMMIT.
        _sqlite_pragma(conn, "PRAGMA foreign_keys = OFF")
    try:
        with conn.begin():
            if not sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": PG_MIGRATION_LOCK_ID})
            command.upgrade(alembic_config(conn), "head")
            if sqlite:
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise StoreError(f"migration left dangling foreign keys: {broken[:5]}")
    finally:
        if sqlite:
            _sqlite_pragma(conn, "PRAGMA foreign_keys = ON")


def _sqlite_pragma(conn: Connection, statement: str) -> None:
    cursor = conn.connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()
