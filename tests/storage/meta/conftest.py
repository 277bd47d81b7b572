"""Fixtures: a fresh metadata store on SQLite and on PostgreSQL.

Each PostgreSQL-backed test gets its own database, created on the server's `test`
database and dropped afterwards (tests/support/postgres.py). An unreachable server
fails the postgresql parameter rather than skipping it: CI provides one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from driftline.schema import FeatureSpec, LabelSpec, MetadataField, ModelSchema
from driftline.storage.meta import MetaStore
from tests.support import postgres

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def empty_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of an empty database of the parametrised backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'home' / 'meta.db'}"
        return
    admin_url: URL = request.getfixturevalue("pg_admin_url")  # tests/conftest.py
    with postgres.fresh_database(admin_url) as url:
        yield url.render_as_string(hide_password=False)


@pytest.fixture
def store(empty_url: str) -> Iterator[MetaStore]:
    """A migrated store on a fresh database."""
    meta = MetaStore.from_url(empty_url)
    meta.migrate()
    try:
        yield meta
    finally:
        meta.dispose()


@pytest.fixture
def churn_schema() -> ModelSchema:
    """A schema that uses every part of the contract, to check nothing is lost in storage."""
    return ModelSchema(
        name="churn",
        task="binary",
        features=[
            FeatureSpec(name="age", kind="numeric", nullable=False, range=(0, 120), important=True),
            FeatureSpec(name="plan", kind="categorical", categories=["free", "pro", "team"]),
            FeatureSpec(name="email", kind="categorical", pii="hash"),
            FeatureSpec(name="ssn", kind="numeric", pii="drop"),
            FeatureSpec(name="is_trial", kind="boolean"),
        ],
        metadata=[
            MetadataField(name="country"),
            MetadataField(name="device_id", pii="hash"),
            MetadataField(name="tenure_days", kind="numeric"),
        ],
        label=LabelSpec(kind="binary", positive="yes", classes=["no", "yes"]),
        owner="ml-platform@example.com",
        description="Monthly churn propensity",
    )
