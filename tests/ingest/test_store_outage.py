"""A ClickHouse server stopped in the middle of an ingest stream loses nothing acknowledged."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson

from driftline.config import Settings
from driftline.ingest.app import create_app
from tests.conftest import ADMIN_KEY, Api
from tests.support.clickhouse_server import ClickHouseServer
from tests.support.models import FRAUD, fraud_records


def test_server_killed_mid_stream_keeps_every_acknowledged_row(tmp_path: Path) -> None:
    server = ClickHouseServer()
    server.start()
    try:
        settings = Settings(
            home=tmp_path / "home",
            clickhouse_url=server.url,
            bootstrap_key=ADMIN_KEY,
            flush_interval_seconds=0.05,
        )
        acked: list[str] = []
        refused = 0
        lock = threading.Lock()
        stop = threading.Event()
        with Api(create_app(settings)) as api:
            assert api.post("/v1/models", json=FRAUD).status_code == 201
            assert api.post("/v1/models/fraud/versions", json={"version": "v1"}).status_code == 201

            def client(worker: int) -> None:
                nonlocal refused
                batch_no = 0
                while not stop.is_set():
                    recs = fraud_records(200, seed=worker, prefix=f"w{worker}-{batch_no}-")
                    batch_no += 1
                    r = api.post(
                        "/v1/predictions",
                        content=orjson.dumps({"model": "fraud", "records": recs}),
                        headers={"Content-Type": "application/json"},
                    )
                    with lock:
                        if r.status_code == 202:
                            acked.extend(x["request_id"] for x in recs)
                        else:
                            refused += 1

            threads = [threading.Thread(target=client, args=(w,)) for w in range(3)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            server.kill()  # SIGKILL: no clean shutdown
            time.sleep(2.0)  # ingest goes on into the spool meanwhile
            during = len(acked)
            server.restart()
            time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join()
            api.flush()
            stored = server.client("default").execute(
                f"SELECT request_id FROM `{server.url.rsplit('/', 1)[1]}`.`predictions__default__fraud`"
            )
            got = [row[0] for row in stored]
        assert refused == 0
        assert during > 0 and len(acked) > during
        assert len(got) == len(set(got)), "a row was stored twice"
        assert set(got) == set(acked), "an acknowledged row is missing"
    finally:
        server.stop()
