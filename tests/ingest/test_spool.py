"""The spool keeps every acknowledged batch through crashes, torn writes and full disks."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from driftline.errors import Unavailable
from driftline.ingest.spool import Spool


def batch(start: int, n: int) -> pa.Table:
    return pa.table(
        {"request_id": [f"r{i}" for i in range(start, start + n)], "x": list(range(start, start + n))}
    )


def ids(spool: Spool) -> list[str]:
    return [rid for rec in spool.iter_all() for rid in rec.table.column("request_id").to_pylist()]


def test_records_survive_reopen_and_commit_moves_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 30)
    for i in range(5):
        spool.append("p", "m", "predictions", batch(i * 10, 10))
    spool.close()
    spool = Spool(tmp_path, max_bytes=1 << 30)  # a restart replays what was not committed
    records = spool.records(max_rows=25)
    assert [r.table.num_rows for r in records] == [10, 10, 10]
    spool.commit(records[-1].end, sum(r.size for r in records))
    spool.close()
    spool = Spool(tmp_path, max_bytes=1 << 30)
    assert ids(spool) == [f"r{i}" for i in range(30, 50)]
    spool.close()


def test_torn_tail_is_cut_and_later_writes_are_readable(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 30)
    spool.append("p", "m", "predictions", batch(0, 3))
    spool.close()
    segment = next(tmp_path.glob("seg-*.log"))
    with segment.open("ab") as f:
        f.write(b"\x10\x00\x00\x00garbage-that-was-never-acknowledged")
    spool = Spool(tmp_path, max_bytes=1 << 30)
    spool.append("p", "m", "predictions", batch(3, 2))
    assert ids(spool) == ["r0", "r1", "r2", "r3", "r4"]
    spool.close()


def test_concurrent_writers_share_fsyncs_and_lose_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 30)

    def write(worker: int) -> None:
        for j in range(50):
            spool.append("p", "m", "predictions", batch(worker * 1000 + j * 10, 10))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = ids(spool)
    assert len(got) == len(set(got)) == 8 * 50 * 10
    spool.close()


def test_full_spool_answers_503(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1024 * 1024)
    spool.append("p", "m", "predictions", pa.table({"request_id": ["x" * 1000] * 600}))
    big = pa.table({"request_id": ["y" * 1000] * 600})
    with pytest.raises(Unavailable) as info:
        spool.append("p", "m", "predictions", big)
    assert info.value.retry_after > 0
    assert len(ids(spool)) == 600
    spool.close()


def test_batch_larger_than_the_whole_spool_is_413(tmp_path: Path) -> None:
    from driftline.errors import PayloadTooLarge

    spool = Spool(tmp_path, max_bytes=1024 * 1024)
    with pytest.raises(PayloadTooLarge):
        spool.append("p", "m", "predictions", pa.table({"request_id": ["x" * 1000] * 4000}))
    spool.close()


def test_nearly_full_disk_answers_503(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    spool = Spool(tmp_path, max_bytes=1 << 40, min_free_bytes=free + (1 << 30))
    with pytest.raises(Unavailable, match="disk"):
        spool.append("p", "m", "predictions", batch(0, 1))
    spool.close()


def test_one_process_per_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 30)
    with pytest.raises(RuntimeError, match="in use"):
        Spool(tmp_path, max_bytes=1 << 30)
    spool.close()
