"""The real-server harness itself: start, crash and restart, clusters, clean-up."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

from tests.support.clickhouse_server import (
    DEFAULT_BINARY,
    ClickHouseServer,
    ClickHouseServerError,
    free_port,
    remote_servers_xml,
)
from tests.support.pytest_clickhouse import clickhouse_server, clickhouse_url  # noqa: F401

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not DEFAULT_BINARY.exists(), reason="clickhouse-server not installed"),
]


def _gone(pid: int) -> bool:
    """True when no process has this pid (reaped, not merely a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_start_query_stop() -> None:
    server = ClickHouseServer()
    started = time.monotonic()
    server.start()
    elapsed = time.monotonic() - started
    try:
        pid = server.pid
        assert pid is not None
        assert elapsed < 30
        client = Client.from_url(server.url)
        try:
            version, one = client.execute("SELECT version(), 1")[0]
        finally:
            client.disconnect()
        assert version.startswith("18.16")
        assert one == 1
        assert server.url == f"clickhouse://default:@127.0.0.1:{server.tcp_port}/default"
        assert server.data_dir.is_dir()
        assert (server.data_dir / "metadata").is_dir()  # the server really uses our data dir
    finally:
        base_dir = server.base_dir
        server.stop()
    assert server.pid is None
    assert _gone(pid)
    assert not base_dir.exists()


def test_listens_on_ipv4_loopback_only() -> None:
    with ClickHouseServer() as server:
        config = ET.parse(server.config_path).getroot()
        assert [node.text for node in config.findall("listen_host")] == ["127.0.0.1"]
        for tag in ("https_port", "tcp_port_secure", "mysql_port"):
            assert config.find(tag) is None
        assert "/var/lib/clickhouse" not in server.config_path.read_text()
        assert "/var/log/clickhouse-server" not in server.config_path.read_text()
        if socket.has_ipv6:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                code = sock.connect_ex(("::1", server.tcp_port))
            assert code != 0, "the server must not listen on ::1"


def test_kill_then_restart_keeps_data() -> None:
    server = ClickHouseServer()
    server.start()
    try:
        client = server.client()
        client.execute("CREATE TABLE events (id UInt64, v Float64) ENGINE = MergeTree ORDER BY id")
        client.execute("INSERT INTO events (id, v) VALUES", [{"id": i, "v": i / 2} for i in range(1000)])
        client.disconnect()
        port, data_dir, pid = server.tcp_port, server.data_dir, server.pid
        assert pid is not None

        started = time.monotonic()
        server.kill()
        assert server.pid is None
        assert _gone(pid)
        assert data_dir.is_dir()  # a crash leaves the data where it was
        server.restart()
        elapsed = time.monotonic() - started

        assert server.tcp_port == port
        assert server.data_dir == data_dir
        assert elapsed < 30
        client = server.client()
        try:
            assert client.execute("SELECT count(), sum(id) FROM events") == [(1000, 499500)]
        finally:
            client.disconnect()
    finally:
        server.stop()


def test_graceful_restart_keeps_data() -> None:
    with ClickHouseServer() as server:
        client = server.client()
        client.execute("CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x")
        client.execute("INSERT INTO t (x) VALUES", [(1,), (2,)])
        client.disconnect()
        server.restart()
        client = server.client()
        try:
            assert client.execute("SELECT sum(x) FROM t") == [(3,)]
        finally:
            client.disconnect()


def test_two_servers_as_two_shards() -> None:
    port_a, port_b = free_port(), free_port()
    clusters = {"two_shards": [[("127.0.0.1", port_a)], [("127.0.0.1", port_b)]]}
    # One server gets the structure, the other the same cluster as an XML fragment.
    shard_a = ClickHouseServer(tcp_port=port_a, remote_servers=clusters)
    shard_b = ClickHouseServer(tcp_port=port_b, remote_servers=remote_servers_xml(clusters))
    try:
        shard_a.start(wait=False)
        shard_b.start(wait=False)
        shard_a.wait_ready()
        shard_b.wait_ready()
        a, b = shard_a.client(), shard_b.client()
        for client in (a, b):
            assert client.execute(
                "SELECT shard_num, port FROM system.clusters WHERE cluster = 'two_shards' ORDER BY shard_num"
            ) == [(1, port_a), (2, port_b)]
            client.execute("CREATE TABLE local (id UInt64, v String) ENGINE = MergeTree ORDER BY id")
        a.execute("CREATE TABLE dist AS local ENGINE = Distributed(two_shards, currentDatabase(), local, id)")
        a.execute(
            "INSERT INTO dist (id, v) VALUES",
            [(i, f"row{i}") for i in range(100)],
            settings={"insert_distributed_sync": 1},
        )
        # Sharding key id: even ids to shard 1 (server a), odd ids to shard 2 (server b).
        assert a.execute("SELECT count(), sum(id % 2) FROM local") == [(50, 0)]
        assert b.execute("SELECT count(), sum(id % 2) FROM local") == [(50, 50)]
        assert a.execute("SELECT count(), sum(id) FROM dist") == [(100, 4950)]
        a.disconnect()
        b.disconnect()
    finally:
        shard_a.stop()
        shard_b.stop()


def test_nothing_left_running_after_stop() -> None:
    with ClickHouseServer() as server:
        pid = server.pid
        base_dir = server.base_dir
        assert pid is not None
        assert Path(f"/proc/{pid}").exists()
    assert server.pid is None
    assert _gone(pid)
    assert not Path(f"/proc/{pid}").exists()
    assert not base_dir.exists()


def test_keep_dir_leaves_data_and_logs() -> None:
    server = ClickHouseServer(keep_dir=True)
    server.start()
    base_dir = server.base_dir
    try:
        server.stop()
        assert (base_dir / "data").is_dir()
        assert (base_dir / "logs" / "clickhouse-server.log").exists()
    finally:
        server.stop(keep_dir=False)
    assert not base_dir.exists()


def test_taken_port_fails_fast() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ClickHouseServer(tcp_port=port)
        with pytest.raises(ClickHouseServerError, match=f"{port}.*already in use"):
            server.start()
        server.stop()


def test_start_failure_reports_err_log() -> None:
    server = ClickHouseServer(timezone="No/Such_Zone", start_timeout=20)
    try:
        with pytest.raises(ClickHouseServerError) as info:
            server.start()
        assert server.pid is None
    finally:
        server.stop()
    message = str(info.value)
    assert "clickhouse-server exited" in message
    assert "clickhouse-server.err.log" in message
    assert "No/Such_Zone" in message


def test_session_fixture_and_fresh_database(clickhouse_server: ClickHouseServer, clickhouse_url: str) -> None:  # noqa: F811
    database = clickhouse_url.rsplit("/", 1)[1]
    assert database.startswith("t_")
    assert clickhouse_url.startswith(f"clickhouse://default:@127.0.0.1:{clickhouse_server.tcp_port}/")
    client = Client.from_url(clickhouse_url)
    try:
        assert client.execute("SELECT currentDatabase()") == [(database,)]
        client.execute("CREATE TABLE t (x UInt32) ENGINE = MergeTree ORDER BY x")
        client.execute("INSERT INTO t (x) VALUES", [(1,), (2,), (3,)])
        assert client.execute("SELECT sum(x) FROM t WHERE x > %(lo)s", {"lo": 1}) == [(5,)]
    finally:
        client.disconnect()


def test_each_test_gets_its_own_database(clickhouse_server: ClickHouseServer, clickhouse_url: str) -> None:  # noqa: F811
    database = clickhouse_url.rsplit("/", 1)[1]
    client = clickhouse_server.client()
    try:
        databases = {row[0] for row in client.execute("SHOW DATABASES")}
        assert database in databases
        # Databases of earlier tests were dropped after them.
        assert {d for d in databases if d.startswith("t_")} == {database}
    finally:
        client.disconnect()


def test_low_cardinality_needs_the_experimental_setting(clickhouse_url: str) -> None:  # noqa: F811
    client = Client.from_url(clickhouse_url)
    ddl = "CREATE TABLE lc (c LowCardinality(String)) ENGINE = MergeTree ORDER BY tuple()"
    try:
        with pytest.raises(ServerException):
            client.execute(ddl)
        client.execute(ddl, settings={"allow_experimental_low_cardinality_type": 1})
        client.execute("INSERT INTO lc (c) VALUES", [("a",), ("b",), ("a",)])
        assert client.execute("SELECT c, count() FROM lc GROUP BY c ORDER BY c") == [("a", 2), ("b", 1)]
    finally:
        client.disconnect()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
    reason="needs root, unshare and ip to build a network namespace without IPv6",
)
def test_starts_without_ipv6() -> None:
    # A fresh network namespace with only IPv4 loopback: the packaged ::1 listen_host would
    # make the server exit here ("Cannot assign requested address").
    script = (
        "from tests.support.clickhouse_server import ClickHouseServer\n"
        "with ClickHouseServer() as server:\n"
        "    client = server.client()\n"
        "    print(client.execute('SELECT 42')[0][0])\n"
        "    client.disconnect()\n"
    )
    shell = (
        "ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
        '&& sysctl -qw net.ipv6.conf.lo.disable_ipv6=1 && exec "$0" -c "$1"'
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", shell, sys.executable, script],
        check=False,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.skip(f"cannot create a network namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"
