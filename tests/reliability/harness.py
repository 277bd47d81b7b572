"""What the fault tests share: seeded batches, client threads that post until acknowledged, and
readers of what the stores hold.

A client thread owns a queue of batches and posts each one until it gets a 202, the way a
serving system retries. Only a 202 counts as acknowledged; every other answer is tallied, so a
test can assert on what it saw (never a 500, a Retry-After on every 503) and compare the rows
the store holds with exactly the acknowledged ones.
"""

from __future__ import annotations

import collections
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from tests.support.clickhouse_server import ClickHouseServer

DAY = 86_400
T0 = 1_780_000_000 // DAY * DAY  # 2026-05-28: in the past, so no row is refused as future


@dataclass(frozen=True)
class Batch:
    ids: tuple[str, ...]
    body: bytes


def fraud_batches(
    rows: int, per_batch: int, *, seed: int, prefix: str, days: int = 3, model: str = "fraud"
) -> list[Batch]:
    """Prediction batches of the FRAUD model with unique request ids, spread over `days` daily
    partitions so a block that a crash interrupts may be half in one partition and half not."""
    rng = np.random.default_rng(seed)
    out: list[Batch] = []
    for start in range(0, rows, per_batch):
        n = min(per_batch, rows - start)
        amounts = rng.gamma(2.0, 100.0, n)
        ages = rng.integers(18, 90, n)
        countries = rng.choice(["FR", "DE", "US"], n)
        scores = rng.random(n)
        times = T0 + rng.integers(0, days * DAY, n)
        ids = tuple(f"{prefix}{start + i}" for i in range(n))
        records = [
            {
                "request_id": ids[i],
                "version": "v1",
                "timestamp": int(times[i]),
                "features": {
                    "amount": float(amounts[i]),
                    "age": int(ages[i]),
                    "country": str(countries[i]),
                    "vip": bool(i % 7 == 0),
                    "email": f"user{i % 50}@example.com",
                    "ssn": "123-45-6789",
                },
                "metadata": {"channel": "web" if i % 2 else "app", "region": "eu"},
                "score": float(scores[i]),
                "latency_ms": float(5 + i % 20),
            }
            for i in range(n)
        ]
        out.append(Batch(ids, orjson.dumps({"model": model, "records": records})))
    return out


@dataclass
class Tally:
    """What the clients saw, across all threads."""

    acked: set[str] = field(default_factory=set)
    acked_batches: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    transport_errors: int = 0
    missing_retry_after: int = 0
    unexpected: list[str] = field(default_factory=list)
    first_ack_at: float | None = None
    last_ack_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def rows(self) -> int:
        with self.lock:
            return len(self.acked)


class Clients:
    """Threads posting batches to POST /v1/predictions, each batch until it is acknowledged.

    `allowed` are the statuses that mean "try again later" (their Retry-After is honoured, up
    to `max_pause`); anything else but 202 is unexpected and ends that thread. Transport errors
    (a server killed mid-request) are retried too: a batch whose answer was lost is sent again,
    as a client would, and the store's idempotent insert keeps its rows once.
    """

    def __init__(
        self,
        url: str,
        key: str,
        queues: list[list[Batch]],
        *,
        allowed: Iterable[int] = (503,),
        max_pause: float = 0.5,
        deadline: float = 240.0,
        on_answer: Callable[[int], None] | None = None,
    ) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.queues = queues
        self.allowed = frozenset(allowed)
        self.max_pause = max_pause
        self.deadline = time.monotonic() + deadline
        self.on_answer = on_answer
        self.tally = Tally()
        self.stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name=f"client-{i}", daemon=True)
            for i, q in enumerate(queues)
        ]

    @property
    def total_rows(self) -> int:
        return sum(len(b.ids) for q in self.queues for b in q)

    def start(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def join(self, timeout: float = 240.0) -> None:
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(end - time.monotonic(), 0.1))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            self.stop.set()
            raise AssertionError(f"client threads still running after {timeout:.0f}s: {alive}")

    def wait_rows(self, rows: int, timeout: float) -> None:
        """Block until at least `rows` rows are acknowledged (or every thread has ended)."""
        end = time.monotonic() + timeout
        while self.tally.rows < rows:
            if time.monotonic() > end:
                raise AssertionError(f"only {self.tally.rows} of {rows} rows acknowledged in {timeout:.0f}s")
            if not any(t.is_alive() for t in self._threads):
                return
            time.sleep(0.01)

    def _run(self, queue: list[Batch]) -> None:
        tally = self.tally
        with httpx.Client(timeout=httpx.Timeout(60.0, connect=2.0)) as client:
            for batch in queue:
                while True:
                    if self.stop.is_set():
                        return
                    if time.monotonic() > self.deadline:
                        with tally.lock:
                            tally.unexpected.append("deadline passed with batches unacknowledged")
                        return
                    try:
                        r = client.post(
                            f"{self.url}/v1/predictions", content=batch.body, headers=self.headers
                        )
                    except httpx.TransportError:
                        with tally.lock:
                            tally.transport_errors += 1
                        time.sleep(0.05)
                        continue
                    if self.on_answer is not None:
                        self.on_answer(r.status_code)
                    with tally.lock:
                        tally.statuses[r.status_code] += 1
                        if r.status_code == 202:
                            tally.acked.update(batch.ids)
                            tally.acked_batches += 1
                            now = time.monotonic()
                            tally.first_ack_at = tally.first_ack_at or now
                            tally.last_ack_at = now
                    if r.status_code == 202:
                        break
                    if r.status_code not in self.allowed:
                        with tally.lock:
                            tally.unexpected.append(f"{r.status_code}: {r.text[:300]}")
                        return
                    retry_after = r.headers.get("retry-after")
                    if retry_after is None:
                        with tally.lock:
                            tally.missing_retry_after += 1
                    pause = float(retry_after) if retry_after and retry_after.isdigit() else self.max_pause
                    time.sleep(min(pause, self.max_pause))


def split(batches: list[Batch], clients: int) -> list[list[Batch]]:
    """Round-robin the batches over `clients` queues."""
    return [batches[i::clients] for i in range(clients)]


def register_fraud(url: str, key: str, *, model: dict[str, Any] | None = None) -> None:
    from tests.support.models import FRAUD

    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60.0) as client:
        r = client.post("/v1/models", json=model or FRAUD)
        assert r.status_code in (200, 201), r.text
        name = (model or FRAUD)["name"]
        r = client.post(f"/v1/models/{name}/versions", json={"version": "v1"})
        assert r.status_code in (200, 201), r.text


def flush(url: str, key: str, timeout: float = 120.0) -> None:
    """POST /v1/flush until the spool is in the store (the flusher may be backing off)."""
    end = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout) as c:
        while True:
            r = c.post("/v1/flush", params={"timeout": min(30.0, max(end - time.monotonic(), 1.0))})
            if r.status_code == 200 and r.json()["drained"]:
                return
            if time.monotonic() > end:
                raise AssertionError(f"the spool did not drain in {timeout:.0f}s: {r.status_code} {r.text}")


def clickhouse_ids(server: ClickHouseServer, database: str, model: str = "fraud") -> list[str]:
    """Every stored prediction's request_id, one per stored row (duplicates stay visible)."""
    client = server.client()
    try:
        rows = client.execute(f"SELECT request_id FROM `{database}`.`predictions__default__{model}`")
    finally:
        client.disconnect()
    return [str(r[0]) for r in rows]


_CHDB_DUMP = """
import sys, orjson
from pathlib import Path
from driftline.storage.events.chdb_engine import ChdbEngine
engine = ChdbEngine(Path(sys.argv[1]), sys.argv[2])
got = engine.query_columns(sys.argv[3])
Path(sys.argv[4]).write_bytes(orjson.dumps({k: v.tolist() for k, v in got.items()}))
engine.close()
"""


def chdb_query(events_dir: Path, sql: str, *, database: str = "driftline") -> dict[str, list[Any]]:
    """Run one query on an embedded store that no server holds now, in a process of its own
    (chDB admits one data dir per process)."""
    out = events_dir.parent / f"query-{time.monotonic_ns()}.json"
    done = subprocess.run(
        [sys.executable, "-c", _CHDB_DUMP, str(events_dir), database, sql, str(out)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    try:
        result: dict[str, list[Any]] = orjson.loads(out.read_bytes())
    finally:
        out.unlink(missing_ok=True)
    return result


def duplicates(ids: list[str]) -> list[str]:
    counts = collections.Counter(ids)
    return sorted(k for k, n in counts.items() if n > 1)[:10]


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def _pg_stop(pg_ctl: Path, data: Path, as_user: list[str]) -> None:
    if (data / "postmaster.pid").exists():
        subprocess.run(
            [*as_user, str(pg_ctl), "stop", "-D", str(data), "-m", "immediate", "-w"],
            capture_output=True,
            timeout=60,
            check=False,
        )


class PrivatePostgres:
    """A PostgreSQL cluster of its own (Debian's binaries) in a temp dir, on a port of 127.0.0.1.

    PostgreSQL refuses to run as root, so as root every command runs as the `postgres` user,
    which then owns the temp dir. stop() is abrupt (`-m immediate`, as a crash), start() runs
    crash recovery on the same data; close() stops it and removes the dir.
    """

    def __init__(self) -> None:
        from tests.support.live_server import free_port

        bindir = _pg_bin()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
        self.bin = bindir
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="driftline-pg-"))
        self.data = self.base / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._finalizer = weakref.finalize(self, _pg_stop, self.bin / "pg_ctl", self.data, self.as_user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bin / tool), *args], capture_output=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed: {done.stdout.decode()[-2000:]} {done.stderr.decode()[-2000:]}"
            )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=off "
            "-c full_page_writes=off -c max_connections=60"
        )
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.base / "log"),
            "-o",
            options,
        )

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")

    def close(self) -> None:
        self._finalizer()
        shutil.rmtree(self.base, ignore_errors=True)
