"""The ClickHouse server SIGKILLed and restarted during a sustained ingest from concurrent clients:
the stored rows are exactly the acknowledged ones.

Why this can go wrong: a block being inserted when the server dies may be half written (one
daily partition committed, the next not), the id index is written before the rows, and the API
falls back from a direct insert to the spool. Only the idempotent insert, keyed by
(request_id, version), keeps a replay from adding a row twice.
"""

from __future__ import annotations

import time

import pytest

from tests.reliability.harness import (
    Clients,
    clickhouse_ids,
    duplicates,
    flush,
    fraud_batches,
    register_fraud,
    split,
)
from tests.support.clickhouse_server import ClickHouseServer
from tests.support.live_server import LiveServer

pytestmark = [pytest.mark.server, pytest.mark.slow]

DATABASE = "crash"
SMALL_ROWS = 180_000  # four clients, 500-row batches, through the spool
BIG_ROWS = 40_000  # one client, 5,000-row batches: inserted directly, spooled when that fails


def test_clickhouse_killed_mid_ingest_stores_exactly_the_acknowledged_rows() -> None:
    started = time.monotonic()
    clickhouse = ClickHouseServer()
    clickhouse.start()
    server = LiveServer(
        {
            "DRIFTLINE_CLICKHOUSE_URL": clickhouse.url_for(DATABASE),
            "DRIFTLINE_FLUSH_INTERVAL_SECONDS": "0.2",
            "DRIFTLINE_DIRECT_INSERT_MIN_ROWS": "5000",
            "DRIFTLINE_LOG_LEVEL": "WARNING",
        }
    )
    try:
        server.start()
        register_fraud(server.url, server.admin_key)
        small = fraud_batches(SMALL_ROWS, 500, seed=1, prefix="s")
        big = fraud_batches(BIG_ROWS, 5000, seed=2, prefix="b")
        clients = Clients(server.url, server.admin_key, [*split(small, 4), big]).start()

        outages: list[tuple[int, float]] = []  # rows acknowledged while down, seconds down
        for at in (40_000, 120_000):
            clients.wait_rows(at, timeout=60)
            clickhouse.kill()
            killed_at, down_from = clients.tally.rows, time.monotonic()
            clients.wait_rows(killed_at + 20_000, timeout=60)  # ingest goes on into the spool
            acked_down = clients.tally.rows - killed_at
            clickhouse.restart()
            outages.append((acked_down, time.monotonic() - down_from))

        clients.join(timeout=180)
        flush(server.url, server.admin_key)
        stored = clickhouse_ids(clickhouse, DATABASE)
        log = server.log_path.read_text(errors="replace")
    finally:
        server.stop()
        clickhouse.stop()

    tally = clients.tally
    assert not tally.unexpected, tally.unexpected[:5]
    assert tally.statuses[500] == 0
    assert len(tally.acked) == clients.total_rows == SMALL_ROWS + BIG_ROWS
    assert all(rows >= 20_000 for rows, _ in outages), f"ingest stopped while ClickHouse was down: {outages}"
    assert "flush to the event store failed" in log, "the outages never reached the flusher"
    assert not duplicates(stored), f"rows stored twice: {duplicates(stored)}"
    stored_set = set(stored)
    assert stored_set == tally.acked, (
        f"{len(tally.acked - stored_set)} acknowledged rows missing, "
        f"{len(stored_set - tally.acked)} rows stored that were never acknowledged"
    )
    print(
        f"\n{len(stored)} rows stored once each = acknowledged; (rows acknowledged, seconds) per outage "
        f"{[(r, round(s, 1)) for r, s in outages]}; {log.count('direct insert failed')} direct inserts fell "
        f"back to the spool; answers {dict(tally.statuses)}; {time.monotonic() - started:.1f}s"
    )
