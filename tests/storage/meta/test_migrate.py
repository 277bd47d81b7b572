from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from driftline.errors import StoreError
from driftline.storage.meta import (
    MetaStore,
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    migrate,
)
from driftline.storage.meta.models import Base

TABLES = {"projects", "api_keys", "models", "model_versions", "reference_uploads"}


def test_migrations_apply_from_empty(empty_url: str) -> None:
    assert current_revision(empty_url) is None
    migrate(empty_url)
    assert current_revision(empty_url) == head_revision()
    engine = make_engine(empty_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_migrate_is_idempotent(empty_url: str) -> None:
    migrate(empty_url)
    store = MetaStore.from_url(empty_url)
    try:
        with store.repos() as r:
            r.projects.get_or_create("kept")
        migrate(empty_url)
        store.migrate()
        assert current_revision(store.engine) == head_revision()
        with store.repos() as r:
            assert [p.name for p in r.projects.list()] == ["kept"]
    finally:
        store.dispose()


def test_models_and_migrations_agree(store: MetaStore) -> None:
    """A change to models.py without a new revision fails here."""
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_migrations_downgrade_and_upgrade_again(store: MetaStore) -> None:
    with store.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert current_revision(store.engine) is None
    assert not TABLES & set(inspect(store.engine).get_table_names())
    store.migrate()
    assert current_revision(store.engine) == head_revision()


def test_concurrent_migrate_from_threads(empty_url: str) -> None:
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            migrate(empty_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert current_revision(empty_url) == head_revision()


CHILD = """
import sys, time
from driftline.storage.meta import migrate
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
migrate(sys.argv[1])
"""


@pytest.mark.slow
def test_concurrent_migrate_from_processes(empty_url: str) -> None:
    """Several servers starting at once on one empty database all come up."""
    start = time.time() + 3.0  # every child has imported by then, so they race for real
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, empty_url, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in outcomes] == [0, 0, 0], "\n".join(err for _, err in outcomes)
    assert current_revision(empty_url) == head_revision()


def test_migrate_unreachable_database_is_a_store_error(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}"  # a directory, not a database file
    else:
        url = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    with pytest.raises(StoreError) as info:
        migrate(url)
    assert info.value.__cause__ is not None


def test_alembic_config_points_inside_the_package() -> None:
    location = Path(alembic_config().get_main_option("script_location") or "")
    assert (location / "env.py").is_file()
    assert any((location / "versions").glob("v*.py"))
