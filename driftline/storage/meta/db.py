"""Engines and transactions of the metadata store.

SQLite is the embedded default and PostgreSQL the production store; both are
driven through one engine factory so that the rest of the code never branches on
the backend. Nothing connects until the first transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from driftline.errors import Conflict, InvalidInput, StoreError
from driftline.storage.meta.alert_rules import AlertRepository, ChannelRepository, RuleRepository
from driftline.storage.meta.keys import ACTIVE_KEY, KeyCache, KeyRepository
from driftline.storage.meta.monitors import LeaseRepository, MonitorRepository
from driftline.storage.meta.outbox import OutboxRepository
from driftline.storage.meta.projects import ProjectRepository
from driftline.storage.meta.records import KeyInfo
from driftline.storage.meta.registry import ModelRepository, ReferenceRepository, VersionRepository
from driftline.storage.meta.retraining import PolicyRepository, TriggerRepository

if TYPE_CHECKING:
    from driftline.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
KEY_CHECK_POOL_SIZE = 4  # connections of the per-request key check (see MetaStore.key_checks)
KEY_CHECK_TIMEOUT_S = 5.0
PG_CONNECT_TIMEOUT_S = 10
_READONLY = "driftline_readonly"


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; plain `postgresql://` means psycopg 3, the driver installed."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInput(f"invalid database URL: {exc}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InvalidInput(
            f"unsupported database {parsed.get_backend_name()!r}: the metadata store runs on "
            "sqlite or postgresql"
        )
    return parsed


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine configured for the store: WAL and foreign keys on SQLite, pre-ping on PostgreSQL.

    Extra keyword arguments go to `sqlalchemy.create_engine` (pool sizes, echo).
    """
    parsed = normalize_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed, **kwargs)
        connect_args = {"connect_timeout": PG_CONNECT_TIMEOUT_S, **kwargs.pop("connect_args", {})}
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **kwargs)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise InvalidInput(f"cannot build an engine for {parsed.render_as_string()}: {exc}") from exc


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        # The data dir may not exist on a first start.
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, **kwargs.pop("connect_args", {})}
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling starts transactions late and breaks
        # savepoints; SQLAlchemy emits BEGIN itself (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _set_wal(cursor)
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writing transaction takes the write lock up front: a deferred transaction that
        # reads, then writes, fails at once with SQLITE_BUSY when another writer committed in
        # between, where an immediate one waits for busy_timeout.
        options = conn.get_execution_options()
        conn.exec_driver_sql("BEGIN" if options.get(_READONLY, False) else "BEGIN IMMEDIATE")

    return engine


def _set_wal(cursor: Any, attempts: int = 50) -> None:
    """Switch a file to WAL. The switch needs the file to itself, and SQLite answers "locked"
    without waiting out busy_timeout when processes open a new file at once: retry a while."""
    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


@dataclass(frozen=True)
class Repositories:
    """Every repository bound to one transaction's session."""

    session: Session
    projects: ProjectRepository
    keys: KeyRepository
    models: ModelRepository
    versions: VersionRepository
    references: ReferenceRepository
    monitors: MonitorRepository
    leases: LeaseRepository
    channels: ChannelRepository
    rules: RuleRepository
    alerts: AlertRepository
    outbox: OutboxRepository
    policies: PolicyRepository
    triggers: TriggerRepository


class MetaStore:
    """The metadata store: one engine, and a transaction per `session()`.

    Repositories never commit; the transaction boundary belongs to the caller, so a
    request that touches several repositories commits or fails as a whole.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self._readonly_engine = engine.execution_options(**{_READONLY: True})
        self._readonly_sessions = sessionmaker(bind=self._readonly_engine, expire_on_commit=False)
        self.key_checks = _key_check_engine(engine)
        self._active_key = ACTIVE_KEY.compile(dialect=self.key_checks.dialect)
        self._keys = KeyCache()

    @classmethod
    def from_url(cls, url: str | URL, **engine_kwargs: Any) -> MetaStore:
        return cls(make_engine(url, **engine_kwargs))

    @classmethod
    def from_settings(cls, settings: Settings) -> MetaStore:
        return cls.from_url(settings.resolved_database_url)

    @property
    def url(self) -> URL:
        return self.engine.url

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back when it raises.

        `readonly` lets SQLite readers run without taking the write lock; it is a hint,
        not a guard, and changes nothing on PostgreSQL. Do not write in a readonly
        transaction: on SQLite it fails at once, not after busy_timeout, when another
        writer committed since its first read.
        """
        factory = self._readonly_sessions if readonly else self._sessions
        with translate_errors(), factory.begin() as session:
            yield session

    @contextmanager
    def repos(self, *, readonly: bool = False) -> Iterator[Repositories]:
        """The repositories on one transaction (see `session`)."""
        with self.session(readonly=readonly) as session:
            yield Repositories(
                session=session,
                projects=ProjectRepository(session),
                keys=KeyRepository(session),
                models=ModelRepository(session),
                versions=VersionRepository(session),
                references=ReferenceRepository(session),
                monitors=MonitorRepository(session),
                leases=LeaseRepository(session),
                channels=ChannelRepository(session),
                rules=RuleRepository(session),
                alerts=AlertRepository(session),
                outbox=OutboxRepository(session),
                policies=PolicyRepository(session),
                triggers=TriggerRepository(session),
            )

    def verify_key(self, plaintext: str) -> KeyInfo | None:
        """The active key matching the plaintext, or None; for the API's per-request check.

        Same answer as `repos().keys.verify`, cheaper when the key was seen before: see KeyCache.
        """

        def lookup(token: str) -> KeyInfo | None:
            with self.repos(readonly=True) as repos:
                return repos.keys.verify(token)

        return self._keys.verify(plaintext, lookup, self._key_active)

    def known_key(self, plaintext: str) -> KeyInfo | None:
        """Who a key this process has verified before is, without I/O; `confirm_key` before use.

        Lets a route refuse an unknown key before reading its body and still make the
        active check in the same worker-thread trip as the rest of its work.
        """
        return self._keys.known(plaintext)

    def confirm_key(self, plaintext: str, info: KeyInfo) -> bool:
        """Whether a key from `known_key` is still active (revocation holds from the next request)."""
        return self._keys.confirm(plaintext, info, self._key_active)

    def _key_active(self, key_id: int, digest: str) -> bool:
        """ACTIVE_KEY on a pooled driver connection, as one statement on its own.

        Every ingest request makes this check; SQLAlchemy's Connection and Result around it
        cost several times the query (190 against 24 microseconds of CPU on SQLite).
        """
        compiled = self._active_key
        values = {"id": key_id, "digest": digest}
        params: Any = tuple(values[n] for n in compiled.positiontup) if compiled.positiontup else values
        driver_error = self.key_checks.dialect.loaded_dbapi.Error
        with translate_errors():
            try:
                conn = self.key_checks.raw_connection()  # raises the driver's own errors, unwrapped
            except driver_error as exc:
                raise DBAPIError.instance(compiled.string, params, exc, driver_error) from exc
            try:
                cursor = conn.cursor()
                try:
                    cursor.execute(compiled.string, params)
                    return cursor.fetchone() is not None
                finally:
                    cursor.close()
            except driver_error as exc:
                conn.invalidate(exc)  # a driver error may leave the connection unusable
                raise DBAPIError.instance(compiled.string, params, exc, driver_error) from exc
            finally:
                conn.close()

    def ping(self) -> None:
        """Raise StoreError unless the database answers; for readiness probes."""
        with translate_errors(), self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def migrate(self) -> None:
        """Bring the schema to the newest revision (see `migrate.migrate`)."""
        from driftline.storage.meta.migrate import migrate

        migrate(self.engine)

    def dispose(self) -> None:
        """Close pooled connections; the store reconnects on next use."""
        self.engine.dispose()
        if self.key_checks is not self.engine:
            self.key_checks.dispose()


def _key_check_engine(engine: Engine) -> Engine:
    """A few connections of its own for the key check every request makes.

    The check takes well under a millisecond, and up to 40 worker threads make it: from the
    shared pool, past its size, each would open (and on PostgreSQL, authenticate) a
    connection of its own and close it after. Here a check waits for one of a few instead;
    one that waits past the timeout is a busy store (503). An in-memory SQLite database
    lives in its own engine's connections, so it keeps that engine.
    """
    database = engine.url.database or ""
    if is_sqlite(engine) and (database in ("", ":memory:") or "mode=memory" in database):
        return engine
    return make_engine(
        engine.url, pool_size=KEY_CHECK_POOL_SIZE, max_overflow=0, pool_timeout=KEY_CHECK_TIMEOUT_S
    )


@contextmanager
def translate_errors() -> Iterator[None]:
    """Map driver failures onto the driftline error tree, keeping the cause chained."""
    try:
        yield
    except IntegrityError as exc:
        # Repositories check first; this is the race two writers lost at the same time.
        raise Conflict(f"conflicting write to the metadata store: {_first_line(exc.orig)}") from exc
    except DataError as exc:
        raise InvalidInput(f"value refused by the metadata store: {_first_line(exc.orig)}") from exc
    except (OperationalError, InterfaceError) as exc:
        raise StoreError(f"metadata store unavailable: {_first_line(exc.orig)}") from exc
    except PoolTimeout as exc:
        # every connection busy for the pool's whole timeout: as unavailable as a refused one
        raise StoreError(f"metadata store busy: no connection came free in time ({exc})") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreError(f"metadata store connection lost: {_first_line(exc.orig)}") from exc
        raise


def _first_line(orig: BaseException | None) -> str:
    return str(orig).strip().splitlines()[0] if orig is not None and str(orig).strip() else "unknown error"
