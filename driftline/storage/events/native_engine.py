"""A ClickHouse server over the native protocol (clickhouse-driver).

A driver Client is not thread-safe, so the engine keeps a small pool; a broken
connection is dropped and the error surfaces as StoreError for the spool to retry.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa

from driftline.errors import StoreError
from driftline.storage.events.engine import Columns, EngineInfo, normalise, render, short_error

_SETTINGS = {"allow_experimental_low_cardinality_type": 1}


def _to_lists(data: pa.Table) -> list[list[Any]]:
    out = []
    for col in data.columns:
        if pa.types.is_timestamp(col.type):
            # epoch integers skip the driver's per-value timezone conversion
            values = col.cast(pa.timestamp("s", tz="UTC")).cast(pa.int64())
            out.append(values.to_pylist())
        else:
            out.append(col.to_pylist())
    return out


class NativeEngine:
    """ClickHouse server at clickhouse://user:pass@host:port/database."""

    def __init__(
        self, url: str, *, cluster: str | None = None, pool_size: int = 8, connect_timeout: float = 5.0
    ) -> None:
        self.url = url
        self.cluster = cluster
        self._nodes: list[NativeEngine] | None = None
        self._database_ready = False
        parsed = urlparse(url)
        if parsed.scheme not in ("clickhouse", "clickhouses"):
            raise ValueError("the ClickHouse URL must look like clickhouse://user:pass@host:9000/db")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 9000
        self.database = (parsed.path or "/default").lstrip("/") or "default"
        self._kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": unquote(parsed.username or "default"),
            "password": unquote(parsed.password or ""),
            # every statement names its tables in full: connect to `default`, make ours on first use
            "database": "default",
            "connect_timeout": connect_timeout,
            "send_receive_timeout": 300,
            "sync_request_timeout": 5,
            "secure": parsed.scheme == "clickhouses",
            # on a cluster, an insert returns once every shard has its rows: a 2xx stays durable
            "settings": {**_SETTINGS, **({"insert_distributed_sync": 1} if cluster else {})},
        }
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue(maxsize=pool_size)
        self._info: EngineInfo | None = None

    @property
    def info(self) -> EngineInfo:
        """The server's version, asked once; a server down at start is asked again later."""
        if self._info is None:
            with self._client() as client:
                version = str(client.execute("SELECT version()")[0][0])
            major, minor = (int(x) for x in version.split(".")[:2])
            self._info = EngineInfo(name="clickhouse", version=(major, minor))
        return self._info

    def _new_client(self) -> Any:
        from clickhouse_driver import Client

        client = Client(**self._kwargs)
        if not self._database_ready:
            client.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            self._database_ready = True
        return client

    @contextmanager
    def _client(self) -> Iterator[Any]:
        try:
            client = self._pool.get_nowait()
        except queue.Empty:
            try:
                client = self._new_client()
            except Exception as exc:
                raise StoreError(f"ClickHouse at {self.host}:{self.port}: {short_error(exc)}") from exc
        ok = False
        try:
            yield client
            ok = True
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"ClickHouse at {self.host}:{self.port}: {short_error(exc)}") from exc
        finally:
            if ok:
                try:
                    self._pool.put_nowait(client)
                except queue.Full:
                    client.disconnect()
            else:
                client.disconnect()

    def nodes(self) -> list[NativeEngine]:
        """An engine per node of the cluster (as system.clusters lists them), for DDL."""
        if not self.cluster:
            return [self]
        if self._nodes is None:
            got = self.query_columns(
                "SELECT host_address, port FROM system.clusters WHERE cluster = %(c)s ORDER BY shard_num, replica_num",
                {"c": self.cluster},
            )
            if not len(got["port"]):
                raise StoreError(f"cluster {self.cluster!r} is not in the server's remote_servers")
            parsed = urlparse(self.url)
            userinfo = parsed.netloc.rpartition("@")[0]
            prefix = f"{parsed.scheme}://{userinfo + '@' if userinfo else ''}"
            self._nodes = [
                NativeEngine(
                    f"{prefix}{host}:{int(port)}/{self.database}",
                    connect_timeout=self._kwargs["connect_timeout"],
                )
                for host, port in zip(got["host_address"], got["port"], strict=True)
            ]
        return self._nodes

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        with self._client() as client:
            client.execute(render(sql, params))

    def insert_columns(self, table: str, data: pa.Table) -> int:
        if data.num_rows == 0:
            return 0
        names = ", ".join(f"`{n}`" for n in data.column_names)
        with self._client() as client:
            client.execute(f"INSERT INTO {table} ({names}) VALUES", _to_lists(data), columnar=True)
        return int(data.num_rows)

    def query_columns(self, sql: str, params: Mapping[str, Any] | None = None) -> Columns:
        with self._client() as client:
            data, types = client.execute(render(sql, params), columnar=True, with_column_types=True)
        if not data:
            data = [[] for _ in types]
        return {name: normalise(values, typ) for (name, typ), values in zip(types, data, strict=True)}

    def ping(self) -> None:
        with self._client() as client:
            client.execute("SELECT 1")

    def close(self) -> None:
        for node in self._nodes or []:
            if node is not self:
                node.close()
        while True:
            try:
                self._pool.get_nowait().disconnect()
            except queue.Empty:
                return
