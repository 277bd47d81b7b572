"""The API process SIGKILLed mid-ingest (embedded store) and restarted: the spool replays, no
acknowledged row is lost and none is stored twice.

Why this can go wrong: at the kill the spool holds fsynced records past its checkpoint, the
flusher may have inserted a block without moving the checkpoint, a frame may be half written,
and a direct insert may be cut short. The clients resend every batch whose answer they lost, as
serving systems do, so afterwards the store must hold exactly the acknowledged rows.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.reliability.harness import (
    Clients,
    chdb_query,
    duplicates,
    flush,
    fraud_batches,
    register_fraud,
    split,
)
from tests.support.live_server import LiveServer

pytestmark = pytest.mark.slow

SMALL_ROWS = 100_000  # three clients, 500-row batches, through the spool
BIG_ROWS = 20_000  # one client, 5,000-row batches, inserted directly


def wait_spooled(url: str) -> int:
    """Bytes the spool holds that are not in the store yet, waiting until there are some: the
    kill must leave something to replay."""
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for _ in range(500):
            pending = int(client.get("/readyz").json()["checks"]["spool"]["pending_bytes"])
            if pending > 0:
                return pending
            time.sleep(0.005)
    raise AssertionError("the spool never held unflushed rows")


def test_api_killed_mid_ingest_replays_its_spool_without_loss_or_duplicates() -> None:
    started = time.monotonic()
    server = LiveServer(
        {
            "DRIFTLINE_FLUSH_INTERVAL_SECONDS": "0.3",
            "DRIFTLINE_DIRECT_INSERT_MIN_ROWS": "5000",
            "DRIFTLINE_SCHEDULER_ENABLED": "false",
            "DRIFTLINE_LOG_LEVEL": "WARNING",
        }
    )
    try:
        server.start()
        register_fraud(server.url, server.admin_key)
        small = fraud_batches(SMALL_ROWS, 500, seed=3, prefix="s")
        big = fraud_batches(BIG_ROWS, 5000, seed=4, prefix="b")
        clients = Clients(server.url, server.admin_key, [*split(small, 3), big]).start()
        kills: list[tuple[int, int, float]] = []  # rows acknowledged, spool bytes waiting, restart seconds
        for at in (25_000, 70_000):
            clients.wait_rows(at, timeout=60)
            pending = wait_spooled(server.url)
            acked = clients.tally.rows
            server.kill()
            t = time.monotonic()
            server.start()
            kills.append((acked, pending, time.monotonic() - t))
        clients.join(timeout=180)
        flush(server.url, server.admin_key)
        server.stop(keep_dir=True)  # the embedded store admits one process: read it once the API is gone
        got = chdb_query(
            server.home / "events", "SELECT request_id FROM driftline.predictions__default__fraud"
        )
        stored = [str(x) for x in got["request_id"]]
    finally:
        server.stop(keep_dir=False)

    tally = clients.tally
    assert not tally.unexpected, tally.unexpected[:5]
    assert tally.statuses[500] == 0
    assert tally.transport_errors > 0, "no request was cut short by the kills"
    assert len(tally.acked) == SMALL_ROWS + BIG_ROWS
    assert not duplicates(stored), f"rows stored twice: {duplicates(stored)}"
    stored_set = set(stored)
    assert stored_set == tally.acked, (
        f"{len(tally.acked - stored_set)} acknowledged rows missing, "
        f"{len(stored_set - tally.acked)} rows stored that were never acknowledged"
    )
    print(
        f"\n{len(stored)} rows stored once each = acknowledged; kills at (rows, spool bytes, restart s) "
        f"{[(a, p, round(s, 1)) for a, p, s in kills]}; {tally.transport_errors} attempts cut or refused, "
        "then resent; "
        f"answers {dict(tally.statuses)}; {time.monotonic() - started:.1f}s"
    )
