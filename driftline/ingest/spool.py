"""The durable spool: every acknowledged batch is on disk, fsynced, before the 2xx.

Records are appended to segment files as [length][crc32][header][Arrow IPC]; many
writers share one fsync (group commit). A flusher reads records in order, inserts
them into the event store in large blocks, and then moves a checkpoint forward;
after a crash it replays from the checkpoint, and the store's idempotent inserts make
the replay of already-inserted records harmless. A torn tail (a record that was
never acknowledged) is cut off at start.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from pyarrow import ipc

from driftline.errors import PayloadTooLarge, Unavailable

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")  # payload length, crc32 of payload
_HEAD = struct.Struct("<I")  # header length
SEGMENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Position:
    segment: int
    offset: int

    def __lt__(self, other: Position) -> bool:
        return (self.segment, self.offset) < (other.segment, other.offset)

    def __le__(self, other: Position) -> bool:
        return (self.segment, self.offset) <= (other.segment, other.offset)


@dataclass(frozen=True)
class SpoolRecord:
    project: str
    model: str
    kind: str
    table: pa.Table
    end: Position
    size: int


def encode(project: str, model: str, kind: str, table: pa.Table) -> bytes:
    header = orjson.dumps({"project": project, "model": model, "kind": kind, "rows": table.num_rows})
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    payload = _HEAD.pack(len(header)) + header + sink.getvalue()
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes, end: Position) -> SpoolRecord:
    (hlen,) = _HEAD.unpack_from(payload, 0)
    header = orjson.loads(payload[_HEAD.size : _HEAD.size + hlen])
    table = ipc.open_stream(pa.py_buffer(payload[_HEAD.size + hlen :])).read_all()
    return SpoolRecord(
        header["project"], header["model"], header["kind"], table, end, len(payload) + _FRAME.size
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """An append-only, fsynced log of accepted batches in one directory, owned by one process."""

    def __init__(self, directory: Path, *, max_bytes: int, min_free_bytes: int = 0) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._lockfile = (self.dir / "LOCK").open("a+")
        try:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lockfile.close()
            raise RuntimeError(f"the spool at {self.dir} is in use by another process") from exc
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._changed = threading.Condition()
        self._flush_asked = False
        self.checkpoint = self._read_checkpoint()
        segments = self._segments()
        for seg in segments:
            if seg < self.checkpoint.segment:
                self._path(seg).unlink(missing_ok=True)
        segments = [s for s in segments if s >= self.checkpoint.segment]
        self._active = segments[-1] if segments else max(self.checkpoint.segment, 1)
        if segments:
            self._repair(self._active)
        self._fd = os.open(self._path(self._active), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._written = Position(self._active, os.fstat(self._fd).st_size)
        self._synced = self._written
        self._pending_bytes = self._measure_pending()
        self._closed = False

    # -- files ----------------------------------------------------------------------------

    def _path(self, segment: int) -> Path:
        return self.dir / f"seg-{segment:08d}.log"

    def _segments(self) -> list[int]:
        return sorted(int(p.name[4:12]) for p in self.dir.glob("seg-*.log"))

    def _read_checkpoint(self) -> Position:
        path = self.dir / "checkpoint.json"
        if not path.exists():
            return Position(1, 0)
        data = orjson.loads(path.read_bytes())
        return Position(int(data["segment"]), int(data["offset"]))

    def _write_checkpoint(self, pos: Position) -> None:
        tmp = self.dir / "checkpoint.json.tmp"
        with tmp.open("wb") as f:
            f.write(orjson.dumps({"segment": pos.segment, "offset": pos.offset}))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.dir / "checkpoint.json")
        _fsync_dir(self.dir)

    def _repair(self, segment: int) -> None:
        """Cut a torn record off the end of the last segment (it was never acknowledged)."""
        path = self._path(segment)
        good = 0
        with path.open("rb") as f:
            data = f.read()
        while good + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, good)
            end = good + _FRAME.size + length
            if end > len(data) or zlib.crc32(data[good + _FRAME.size : end]) != crc:
                break
            good = end
        if good < len(data):
            log.warning("spool: cut %d bytes of a torn record off %s", len(data) - good, path.name)
            with path.open("r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())

    def _measure_pending(self) -> int:
        total = 0
        for seg in self._segments():
            if seg >= self.checkpoint.segment:
                size = self._path(seg).stat().st_size
                total += size - (self.checkpoint.offset if seg == self.checkpoint.segment else 0)
        return max(total, 0)

    # -- writing --------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def check_room(self, nbytes: int = 0) -> None:
        """503 before accepting what the spool or the disk cannot hold now; 413 for what it never could."""
        if nbytes > self.max_bytes:
            raise PayloadTooLarge(
                f"this batch needs {nbytes} bytes of spool, more than its whole size ({self.max_bytes}); send smaller batches"
            )
        if self._pending_bytes + nbytes > self.max_bytes:
            raise Unavailable("the ingest spool is full; the event store is behind or down", retry_after=10)
        free = shutil.disk_usage(self.dir).free
        if free - nbytes < self.min_free_bytes:
            raise Unavailable("the disk under the ingest spool is nearly full", retry_after=30)

    def append(self, project: str, model: str, kind: str, table: pa.Table) -> Position:
        """Write one batch and return once it is fsynced (durable)."""
        frame = encode(project, model, kind, table)
        self.check_room(len(frame))
        with self._write_lock:
            if self._closed:
                raise Unavailable("the server is shutting down", retry_after=2)
            if self._written.offset >= SEGMENT_BYTES:
                self._rotate()
            try:
                written = 0
                view = memoryview(frame)
                while written < len(frame):
                    written += os.write(self._fd, view[written:])
            except OSError as exc:
                # a partial frame is a torn tail: cut it so later records stay readable
                os.ftruncate(self._fd, self._written.offset)
                raise Unavailable(f"cannot write the ingest spool: {exc.strerror}", retry_after=30) from exc
            end = Position(self._active, self._written.offset + len(frame))
            self._written = end
        self._sync(end)
        with self._changed:
            self._pending_bytes += len(frame)
            self._changed.notify_all()
        return end

    def _sync(self, upto: Position) -> None:
        """fsync once for every writer that got here since the last fsync (group commit)."""
        with self._sync_lock:
            if upto <= self._synced:
                return
            with self._write_lock:
                target = self._written
                fd = os.dup(self._fd)
            try:
                os.fsync(fd)
            except OSError as exc:
                raise Unavailable(f"cannot fsync the ingest spool: {exc.strerror}", retry_after=30) from exc
            finally:
                os.close(fd)
            # segments before the target's were fsynced when they were rotated out
            self._synced = target

    def _rotate(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._active += 1
        self._fd = os.open(self._path(self._active), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _fsync_dir(self.dir)
        self._written = Position(self._active, 0)
        self._synced = self._written

    # -- reading --------------------------------------------------------------------------

    def read(self, start: Position, max_rows: int) -> list[SpoolRecord]:
        """Durable records after `start`, up to about max_rows rows."""
        out: list[SpoolRecord] = []
        rows = 0
        with self._sync_lock:
            synced = self._synced
        seg, offset = start.segment, start.offset
        while seg <= synced.segment and rows < max_rows:
            path = self._path(seg)
            if not path.exists():
                seg, offset = seg + 1, 0
                continue
            limit = synced.offset if seg == synced.segment else path.stat().st_size
            with path.open("rb") as f:
                f.seek(offset)
                while offset + _FRAME.size <= limit and rows < max_rows:
                    head = f.read(_FRAME.size)
                    length, crc = _FRAME.unpack(head)
                    payload = f.read(length)
                    if len(payload) < length or zlib.crc32(payload) != crc:
                        raise RuntimeError(f"spool record at {path.name}:{offset} is corrupt")
                    offset += _FRAME.size + length
                    record = decode(payload, Position(seg, offset))
                    out.append(record)
                    rows += record.table.num_rows
            if rows < max_rows and seg < synced.segment:
                seg, offset = seg + 1, 0
            else:
                break
        return out

    def records(self, max_rows: int) -> list[SpoolRecord]:
        return self.read(self.checkpoint, max_rows)

    def commit(self, upto: Position, nbytes: int) -> None:
        """Everything before `upto` is in the event store: move the checkpoint, drop old segments."""
        self._write_checkpoint(upto)
        old = self.checkpoint
        self.checkpoint = upto
        for seg in range(old.segment, upto.segment):
            self._path(seg).unlink(missing_ok=True)
        with self._changed:
            self._pending_bytes = max(self._pending_bytes - nbytes, 0)
            self._changed.notify_all()

    def wait_for_data(self, timeout: float, *, min_bytes: int = 1) -> None:
        """Sleep until `min_bytes` wait to be flushed, someone asks for a flush, or `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._flush_asked and self._pending_bytes < min_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            self._flush_asked = False

    def ask_flush(self) -> None:
        with self._changed:
            self._flush_asked = True
            self._changed.notify_all()

    def wait_empty(self, timeout: float) -> bool:
        """Flush now and wait until nothing is left to flush, or False after `timeout`."""
        return self._wait_flush(lambda: self._pending_bytes > 0, timeout)

    def wait_flushed(self, timeout: float) -> bool:
        """Wait until every record written before this call is in the store.

        Unlike `wait_empty`, records written meanwhile do not hold it up, so it returns
        under a steady stream of ingest (detection needs what was acknowledged before it
        started, not an idle spool).
        """
        with self._write_lock:
            target = self._written
        return self._wait_flush(lambda: self._pending_bytes > 0 and self.checkpoint < target, timeout)

    def _wait_flush(self, pending: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        self.ask_flush()
        with self._changed:
            while pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def quarantine(self, record: SpoolRecord, reason: str) -> Path:
        """Keep a record the store refuses for good, where an operator can see and replay it."""
        qdir = self.dir / "quarantine"
        qdir.mkdir(exist_ok=True)
        name = f"{record.project}__{record.model}__{record.kind}__{record.end.segment}_{record.end.offset}"
        path = qdir / f"{name}.arrow"
        with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, record.table.schema) as writer:
            writer.write_table(record.table)
        (qdir / f"{name}.reason.txt").write_text(reason)
        return path

    def stats(self) -> dict[str, Any]:
        return {
            "pending_bytes": self._pending_bytes,
            "segments": len(self._segments()),
            "quarantined": len(list((self.dir / "quarantine").glob("*.arrow")))
            if (self.dir / "quarantine").exists()
            else 0,
        }

    def iter_all(self) -> Iterator[SpoolRecord]:
        pos = self.checkpoint
        while True:
            batch = self.read(pos, 100_000)
            if not batch:
                return
            yield from batch
            pos = batch[-1].end

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            os.fsync(self._fd)
            os.close(self._fd)
        fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_UN)
        self._lockfile.close()
