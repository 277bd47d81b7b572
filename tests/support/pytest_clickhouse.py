"""pytest fixtures for tests that need the real ClickHouse server.

One server serves the whole session (a start costs well under a second, but the schema
set-up of many tests adds up); each test gets its own database so tests stay independent.
Load with ``pytest_plugins = ["tests.support.pytest_clickhouse"]`` in the root conftest.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.support.clickhouse_server import DEFAULT_BINARY, ClickHouseServer


class _Shared:
    """The session's server, shared if the fixture is also imported into a test module.

    An imported fixture is a second definition with its own session cache; counting users
    makes both definitions hand out the same server and the last one out stops it.
    """

    server: ClickHouseServer | None = None
    users = 0


@pytest.fixture(scope="session")
def clickhouse_server() -> Iterator[ClickHouseServer]:
    """A ClickHouse 18.16 server for the session; skipped where the package is not installed."""
    server = _Shared.server
    if server is None:
        if not DEFAULT_BINARY.exists():
            pytest.skip(f"{DEFAULT_BINARY} not installed: run scripts/install_clickhouse.sh")
        server = ClickHouseServer()
        server.start()
        _Shared.server = server
    _Shared.users += 1
    try:
        yield server
    finally:
        _Shared.users -= 1
        if _Shared.users == 0:
            _Shared.server = None
            server.stop()


@pytest.fixture
def clickhouse_url(clickhouse_server: ClickHouseServer) -> Iterator[str]:
    """URL of a fresh database ``t_<hex>`` on the session server, dropped after the test."""
    database = f"t_{secrets.token_hex(8)}"
    client = clickhouse_server.client()
    try:
        client.execute(f"CREATE DATABASE {database}")
        yield clickhouse_server.url_for(database)
        client.execute(f"DROP DATABASE IF EXISTS {database}")
    finally:
        client.disconnect()
