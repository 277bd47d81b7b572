"""A fresh PostgreSQL database per test, on the server at 127.0.0.1:5432.

An unreachable server fails the test rather than skipping it: `make services`
(scripts/ensure_postgres.sh) makes sure one answers.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

PG_ENV = "DRIFTLINE_TEST_POSTGRES_URL"
PG_CANDIDATES = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)


def admin_url() -> URL:
    """A URL of the server's `test` database whose user may create databases."""
    candidates = [os.environ[PG_ENV]] if os.environ.get(PG_ENV) else list(PG_CANDIDATES)
    errors = []
    for candidate in candidates:
        url = make_url(candidate)
        engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return url
        except Exception as exc:
            errors.append(f"{url.render_as_string()}: {exc}")
        finally:
            engine.dispose()
    pytest.fail("PostgreSQL is not reachable (set " + PG_ENV + "):\n" + "\n".join(errors))


@contextmanager
def fresh_database(admin: URL) -> Iterator[URL]:
    """Create a database for one test and drop it (with its connections) afterwards."""
    name = f"dl_test_{secrets.token_hex(6)}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin.set(database=name)
        finally:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()
