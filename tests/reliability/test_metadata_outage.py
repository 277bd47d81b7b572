"""The metadata database (PostgreSQL) down in the middle of an ingest stream: every answer is a
202 or a 503 with Retry-After, never a 500; once it is back, ingest resumes and every
acknowledged row is stored.

Why this can go wrong: every request checks its key in the metadata store, pooled connections
die with the server, and a driver error that escapes the translation to StoreError would
surface as a 500 that tells a client not to retry.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.reliability.harness import (
    Clients,
    PrivatePostgres,
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

ROWS = 60_000


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.close()


def test_metadata_outage_answers_503_with_retry_after_and_loses_nothing(
    postgres: PrivatePostgres, clickhouse_server: ClickHouseServer, clickhouse_url: str
) -> None:
    started = time.monotonic()
    database = clickhouse_url.rsplit("/", 1)[1]
    server = LiveServer(
        {
            "DRIFTLINE_DATABASE_URL": postgres.url,
            "DRIFTLINE_CLICKHOUSE_URL": clickhouse_url,
            "DRIFTLINE_FLUSH_INTERVAL_SECONDS": "0.2",
            "DRIFTLINE_LOG_LEVEL": "WARNING",
        }
    )
    try:
        server.start()
        register_fraud(server.url, server.admin_key)
        clients = Clients(
            server.url,
            server.admin_key,
            split(fraud_batches(ROWS, 250, seed=5, prefix="m"), 3),
            allowed={503},
            max_pause=0.1,
        ).start()
        clients.wait_rows(15_000, timeout=60)
        postgres.stop()
        down_from, before = time.monotonic(), clients.tally.rows
        refused_before = clients.tally.statuses[503]
        while clients.tally.statuses[503] - refused_before < 30 and time.monotonic() - down_from < 20:
            time.sleep(0.05)
        time.sleep(1.0)  # let the stream keep knocking for a while
        refused = clients.tally.statuses[503] - refused_before
        acked_down = clients.tally.rows - before
        postgres.start()
        down_for = time.monotonic() - down_from
        back = clients.tally.rows
        clients.join(timeout=120)
        flush(server.url, server.admin_key)
        stored = clickhouse_ids(clickhouse_server, database)
        log = server.log_path.read_text(errors="replace")
    finally:
        server.stop()

    tally = clients.tally
    assert not tally.unexpected, tally.unexpected[:5]
    assert set(tally.statuses) <= {202, 503}, dict(tally.statuses)
    assert tally.missing_retry_after == 0, "a 503 came without Retry-After"
    assert refused >= 30, f"only {refused} answers were 503 while PostgreSQL was down"
    assert "unhandled error" not in log
    assert len(tally.acked) == ROWS and len(tally.acked) - back > 0, "ingest did not resume"
    assert not duplicates(stored), f"rows stored twice: {duplicates(stored)}"
    assert set(stored) == tally.acked
    print(
        f"\n{len(stored)} rows stored = acknowledged; PostgreSQL down {down_for:.1f}s: {refused} answers 503 "
        f"with Retry-After, {acked_down} rows acknowledged meanwhile; {ROWS - back} rows after it came back; "
        f"answers {dict(tally.statuses)}; {time.monotonic() - started:.1f}s"
    )
