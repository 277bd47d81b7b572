"""Shared fixtures: real stores in temp dirs, on both event engines and both metadata databases."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from driftline.config import Settings
from driftline.ingest.app import create_app
from driftline.storage.events import EventEngine
from driftline.storage.events.chdb_engine import ChdbEngine
from driftline.storage.events.native_engine import NativeEngine
from tests.support import postgres

pytest_plugins = ["tests.support.pytest_clickhouse"]

ADMIN_KEY = "test-admin-key-0123456789abcdef"
ENGINES = ["chdb", "clickhouse"]
METAS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chDB runs one embedded server per process: every in-process test shares its data dir,
    each in a database of its own."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(scope="session")
def pg_admin_url() -> object:
    return postgres.admin_url()


@pytest.fixture(params=ENGINES)
def engine_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def event_engine(engine_kind: str, chdb_dir: Path, request: pytest.FixtureRequest) -> Iterator[EventEngine]:
    engine: EventEngine
    if engine_kind == "chdb":
        database = f"t_{secrets.token_hex(8)}"
        engine = ChdbEngine(chdb_dir, database)
        try:
            yield engine
        finally:
            engine.execute(f"DROP DATABASE IF EXISTS `{database}`")
            engine.close()
    else:
        engine = NativeEngine(request.getfixturevalue("clickhouse_url"))
        try:
            yield engine
        finally:
            engine.close()


@pytest.fixture(params=METAS)
def meta_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(meta_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if meta_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'meta.db'}"
        return
    with postgres.fresh_database(request.getfixturevalue("pg_admin_url")) as url:
        yield url.render_as_string(hide_password=False)


def make_settings(
    tmp_path: Path,
    engine_kind: str,
    chdb_dir: Path,
    database_url: str,
    request: pytest.FixtureRequest,
    **extra: object,
) -> Settings:
    values: dict[str, object] = {
        "home": tmp_path / "home",
        "bootstrap_key": ADMIN_KEY,
        "database_url": database_url,
        "flush_interval_seconds": 0.05,
        "log_json": False,
        "scheduler_enabled": False,
    }
    if engine_kind == "chdb":
        values["events_dir"] = chdb_dir
        values["events_database"] = f"t_{secrets.token_hex(8)}"
    else:
        values["clickhouse_url"] = request.getfixturevalue("clickhouse_url")
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(
    params=[("chdb", "sqlite"), ("clickhouse", "postgresql")], ids=["chdb-sqlite", "clickhouse-postgresql"]
)
def stack(request: pytest.FixtureRequest, tmp_path: Path, chdb_dir: Path) -> Iterator[Settings]:
    """Settings of a whole stack: each event engine, each metadata database."""
    engine_kind, meta = request.param
    if meta == "sqlite":
        yield make_settings(tmp_path, engine_kind, chdb_dir, f"sqlite:///{tmp_path / 'meta.db'}", request)
        return
    with postgres.fresh_database(request.getfixturevalue("pg_admin_url")) as url:  # type: ignore[arg-type]
        yield make_settings(
            tmp_path, engine_kind, chdb_dir, url.render_as_string(hide_password=False), request
        )


class Api(TestClient):
    """A TestClient that sends the admin key unless told otherwise."""

    def __init__(self, app: object, key: str = ADMIN_KEY) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.headers["Authorization"] = f"Bearer {key}"

    def flush(self) -> None:
        r = self.post("/v1/flush", params={"timeout": 30})
        assert r.status_code == 200 and r.json()["drained"], r.text


@pytest.fixture
def api(stack: Settings) -> Iterator[Api]:
    with Api(create_app(stack)) as client:
        yield client
