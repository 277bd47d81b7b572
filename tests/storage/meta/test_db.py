from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from driftline.config import Settings
from driftline.errors import Conflict, InvalidInput, StoreError
from driftline.storage.meta import MetaStore, make_engine, normalize_url
from driftline.storage.meta.models import Project


def test_sqlite_engine_sets_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new' / 'dir' / 'meta.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert (tmp_path / "new" / "dir" / "meta.db").is_file()
    finally:
        engine.dispose()


def test_postgres_urls_use_psycopg_and_pre_ping() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    engine = make_engine("postgresql://u@127.0.0.1/db")
    assert engine.dialect.driver == "psycopg"
    assert engine.pool._pre_ping


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url"])
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        make_engine(url)


def test_from_settings_uses_sqlite_under_home(tmp_path: Path) -> None:
    store = MetaStore.from_settings(Settings(home=tmp_path / "home"))
    try:
        assert store.url.get_backend_name() == "sqlite"
        assert store.url.database == str(tmp_path / "home" / "meta.db")
        store.migrate()
        store.ping()
    finally:
        store.dispose()


def test_session_commits_on_success(store: MetaStore) -> None:
    with store.session() as s:
        s.add(Project(name="alpha"))
    with store.session(readonly=True) as s:
        assert s.scalars(select(Project.name)).all() == ["alpha"]


def test_session_rolls_back_on_error(store: MetaStore) -> None:
    with pytest.raises(RuntimeError), store.session() as s:
        s.add(Project(name="alpha"))
        s.flush()
        raise RuntimeError("boom")
    with store.session() as s:
        assert s.scalars(select(Project)).all() == []


def test_integrity_error_becomes_conflict(store: MetaStore) -> None:
    with store.session() as s:
        s.add(Project(name="alpha"))
    with pytest.raises(Conflict) as info, store.session() as s:
        s.add(Project(name="alpha"))
    assert info.value.__cause__ is not None


def test_timestamps_come_back_aware_utc(store: MetaStore) -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    with store.session() as s:
        s.add(Project(name="alpha", created_at=moment))
    with store.session() as s:
        created = s.scalars(select(Project.created_at)).one()
    assert created == moment
    assert created.tzinfo == UTC


def test_ping(store: MetaStore) -> None:
    store.ping()


def test_unreachable_database_is_a_store_error(backend: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}" if backend == "sqlite" else "postgresql+psycopg://postgres@127.0.0.1:1/x"
    store = MetaStore.from_url(url)
    try:
        with pytest.raises(StoreError) as info:
            store.ping()
        assert isinstance(info.value.__cause__, OperationalError)
        with pytest.raises(StoreError), store.repos() as r:
            r.projects.list()
    finally:
        store.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_store_reconnects_after_connections_are_killed(store: MetaStore) -> None:
    with store.session() as s:
        pid = s.execute(text("SELECT pg_backend_pid()")).scalar_one()
    other = make_engine(store.url)
    try:
        with other.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            conn.commit()
    finally:
        other.dispose()
    with store.repos() as r:  # pool_pre_ping replaces the dead connection
        assert r.projects.list() == []


def test_a_pool_with_no_free_connection_is_a_store_error(empty_url: str) -> None:
    """Every connection busy past the pool's timeout answers like an unavailable store (a 503
    with Retry-After at the API), not as an unexpected error."""
    store = MetaStore.from_url(empty_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        store.migrate()
        with store.engine.connect(), pytest.raises(StoreError, match="busy"), store.repos() as r:
            r.projects.list()
        with store.repos() as r:
            assert r.projects.list() is not None
    finally:
        store.dispose()
