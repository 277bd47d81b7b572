"""The disk under the spool filling up while the event store is down: clear 503s with Retry-After
(413 for a batch the spool could never hold), never a 500, and nothing corrupt: once space is
freed and the store is back, every acknowledged row is stored and ingest goes on.

Why this can go wrong: a spool write that runs out of space leaves half a frame on disk; unless
it is cut off, every later frame, and a restart's replay, reads garbage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

from driftline.errors import Unavailable
from driftline.ingest.spool import Spool, encode
from tests.reliability.harness import Batch, clickhouse_ids, duplicates, flush, fraud_batches, register_fraud
from tests.support.clickhouse_server import ClickHouseServer
from tests.support.live_server import LiveServer

pytestmark = [pytest.mark.server, pytest.mark.slow]

DISK = 8 * 1024 * 1024
SPOOL_MAX = 6 * 1024 * 1024  # the operator sized the spool to the disk
ROOM = 2 * 1024 * 1024  # what the ballast leaves free: "nearly full"
DATABASE = "diskfull"


@contextlib.contextmanager
def small_disk() -> Iterator[tuple[Path, bool]]:
    """An 8 MiB tmpfs (True), or where mounting is not permitted a plain dir (False)."""
    mnt = Path(tempfile.mkdtemp(prefix="driftline-spool-disk-"))
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mnt)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield mnt, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
        shutil.rmtree(mnt, ignore_errors=True)


def post(client: httpx.Client, batch: Batch) -> httpx.Response:
    return client.post("/v1/predictions", content=batch.body, headers={"Content-Type": "application/json"})


def fill(
    url: str, key: str, batches: list[Batch], acked: set[str], statuses: list[int]
) -> tuple[list[httpx.Response], int]:
    """Post from four threads until each has been refused three times; (refusals, batches used)."""
    lock = threading.Lock()
    refused: list[httpx.Response] = []
    queues = [batches[i : len(batches) // 2 : 4] for i in range(4)]

    def run(queue: list[Batch]) -> None:
        mine = 0
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60.0) as c:
            for batch in queue:
                r = post(c, batch)
                with lock:
                    statuses.append(r.status_code)
                    if r.status_code == 202:
                        acked.update(batch.ids)
                    else:
                        refused.append(r)
                        mine += 1
                if mine >= 3:
                    return

    threads = [threading.Thread(target=run, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return refused, len(batches) // 2


def test_spool_disk_full_answers_503_and_keeps_every_acknowledged_row() -> None:
    began = time.monotonic()
    clickhouse = ClickHouseServer()
    clickhouse.start()
    with small_disk() as (disk, mounted):
        env = {
            "DRIFTLINE_CLICKHOUSE_URL": clickhouse.url_for(DATABASE),
            "DRIFTLINE_SPOOL_DIR": str(disk / "spool"),
            "DRIFTLINE_SPOOL_MAX_BYTES": str(SPOOL_MAX),
            "DRIFTLINE_FLUSH_INTERVAL_SECONDS": "0.1",
            "DRIFTLINE_LOG_LEVEL": "WARNING",
        }
        if mounted:
            env["DRIFTLINE_SPOOL_MIN_FREE_BYTES"] = "0"  # write until the disk itself says no (ENOSPC)
        else:  # no tmpfs: the configured reserve makes the disk "nearly full" instead
            env["DRIFTLINE_SPOOL_MIN_FREE_BYTES"] = str(shutil.disk_usage(disk).free - ROOM)
        server = LiveServer(env)
        ballast = disk / "ballast"
        acked: set[str] = set()
        statuses: list[int] = []
        try:
            server.start()
            register_fraud(server.url, server.admin_key)
            if mounted:
                with ballast.open("wb") as f:
                    f.write(b"\0" * (shutil.disk_usage(disk).free - ROOM))
            clickhouse.kill()
            batches = fraud_batches(60_000, 500, seed=6, prefix="f")
            with httpx.Client(base_url=server.url, headers=server.headers, timeout=60.0) as client:
                # one batch the spool could never hold: refused for good, not "later"
                huge = fraud_batches(60_000, 60_000, seed=7, prefix="h")[0]
                r = post(client, huge)
                assert r.status_code == 413, r.text

                full, sent = fill(server.url, server.admin_key, batches, acked, statuses)
                assert full, f"{sent} batches fitted in {ROOM} bytes"
                for r in full:
                    assert r.status_code == 503, r.text
                    assert int(r.headers["retry-after"]) > 0
                    assert "nearly full" in r.text or "No space left" in r.text, r.text
                assert client.get("/healthz").status_code == 200
                ready = client.get("/readyz")
                assert ready.status_code == 503 and "spool" in ready.text
                acked_full = len(acked)

            server.kill()  # a crash on a full disk: the spool must reopen cleanly
            server.start()
            ballast.unlink(missing_ok=True)
            clickhouse.restart()
            flush(server.url, server.admin_key)
            with httpx.Client(base_url=server.url, headers=server.headers, timeout=60.0) as client:
                for batch in batches[sent : sent + 20]:  # ingest goes on
                    r = post(client, batch)
                    statuses.append(r.status_code)
                    assert r.status_code == 202, r.text
                    acked.update(batch.ids)
            flush(server.url, server.admin_key)
            stored = clickhouse_ids(clickhouse, DATABASE)
            log = server.log_path.read_text(errors="replace")
        finally:
            server.stop()
            clickhouse.stop()

    assert 500 not in statuses
    assert "unhandled error" not in log and "corrupt" not in log
    assert not duplicates(stored), f"rows stored twice: {duplicates(stored)}"
    assert set(stored) == acked
    how = "an 8 MiB tmpfs, written until ENOSPC" if mounted else "a reserve of free space (no tmpfs)"
    print(
        f"\nspool on {how}: {acked_full} rows acknowledged before the disk was full, then "
        f"{len(full)} 503s with Retry-After; a {len(huge.body)}-byte batch 413; after a crash, freeing space and the store's return "
        f"{len(stored)} rows stored = acknowledged; {time.monotonic() - began:.1f}s"
    )


def spool_table(rows: int, tag: str) -> pa.Table:
    return pa.table(
        {"request_id": [f"{tag}-{i}" for i in range(rows)], "x": np.arange(rows, dtype=np.float64)}
    )


def test_spool_write_that_runs_out_of_space_leaves_no_torn_frame() -> None:
    """Two writers pass the free-space check together and the second write runs out of space half
    way: its partial frame is cut off, it gets a 503, and the spool reopens with exactly the
    frames that were acknowledged."""
    with small_disk() as (disk, mounted):
        if not mounted:
            pytest.skip("needs a tmpfs mount to run a disk out of space")
        ballast = disk / "ballast"
        spool = Spool(disk / "spool", max_bytes=SPOOL_MAX, min_free_bytes=0)
        frame = len(encode("p", "m", "predictions", spool_table(2000, "probe")))
        acked: list[str] = []
        refusals: list[str] = []
        lock = threading.Lock()
        n = 0
        try:
            while sum("No space left" in m for m in refusals) < 3 and n < 1000:
                # leave room for about one and a half frames, then let two writers race for it
                ballast.unlink(missing_ok=True)
                spare = shutil.disk_usage(disk).free - frame * 3 // 2
                if spare > 0:
                    with ballast.open("wb") as f:
                        f.write(b"\0" * spare)
                barrier = threading.Barrier(2)

                def write(tag: str, barrier: threading.Barrier = barrier) -> None:
                    table = spool_table(2000, tag)
                    barrier.wait()
                    try:
                        spool.append("p", "m", "predictions", table)
                    except Unavailable as exc:
                        with lock:
                            refusals.append(exc.message)
                    else:
                        with lock:
                            acked.append(tag)

                tags = [f"w{n}", f"w{n + 1}"]
                n += 2
                threads = [threading.Thread(target=write, args=(t,)) for t in tags]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                # what was written is flushed elsewhere: move the checkpoint, keep the segment
                records = spool.records(10**9)
                if records:
                    spool.commit(records[-1].end, sum(r.size for r in records))
        finally:
            spool.close()
        torn = [m for m in refusals if "No space left" in m]
        assert torn, f"no write ran out of space half way in {n} attempts: {refusals[:3]}"
        ballast.unlink(missing_ok=True)
        # reopened from the first frame, every frame reads back whole and in order
        (disk / "spool" / "checkpoint.json").unlink()
        reopened = Spool(disk / "spool", max_bytes=SPOOL_MAX, min_free_bytes=0)
        try:
            tags = [str(r.table.column("request_id")[0].as_py()).split("-")[0] for r in reopened.iter_all()]
        finally:
            reopened.close()
        assert sorted(tags) == sorted(acked), "a frame was lost, torn or read twice"
        print(
            f"\n{n} racing writes of {frame}-byte frames: {len(acked)} acknowledged and read back once, "
            f"{len(torn)} cut off by ENOSPC mid-frame, {len(refusals) - len(torn)} refused before writing"
        )
