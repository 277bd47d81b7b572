"""Several API replicas on one ClickHouse server and one PostgreSQL database.

Three API processes start at once on a fresh database (migrations and job set-up race and
must not fail), each running the scheduler (`DRIFTLINE_SCHEDULER_IN_API=true`, a sweep
every few hundred milliseconds). Data goes in through every replica; once detection is
switched on, every window of every model must be detected exactly once, whoever ran it.
The metrics table keeps each run's rows apart (background merges are stopped on it), so
the runs per window are counted, not inferred. What one replica accepts, any other reads;
a key made on one works on all and its revocation holds on all at once. The cluster
config shipped in deploy/ is also started as two shards and used.
"""

from __future__ import annotations

import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from driftline.config import Settings
from driftline.detectors.results import MetricsTable
from driftline.ingest.app import create_app
from driftline.storage.events.native_engine import NativeEngine
from tests.conftest import Api
from tests.support import postgres
from tests.support.clickhouse_server import ClickHouseServer, free_port
from tests.support.live_server import LiveServer
from tests.support.models import FRAUD, fraud_records

HOUR = 3600
REPLICAS = 3
MODELS = ("fraud", "churn", "spam")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@dataclass
class Deployment:
    replicas: list[LiveServer]
    key: str
    database: str
    clickhouse: ClickHouseServer
    meta_url: str

    def client(self, i: int, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.replicas[i % len(self.replicas)].url,
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=120,
        )


@pytest.fixture(scope="module")
def deployment(clickhouse_server: ClickHouseServer, pg_admin_url: URL) -> Iterator[Deployment]:
    database = f"r_{secrets.token_hex(6)}"
    url = clickhouse_server.url_for(database)
    # the metrics table made ahead and its merges stopped: a second run of a window stays visible
    engine = NativeEngine(url)
    try:
        MetricsTable(engine).ensure()
    finally:
        engine.close()
    ch = clickhouse_server.client()
    ch.execute(f"SYSTEM STOP MERGES `{database}`.`metrics`")
    key = secrets.token_urlsafe(24)
    with postgres.fresh_database(pg_admin_url) as pg:
        env = {
            "DRIFTLINE_CLICKHOUSE_URL": url,
            "DRIFTLINE_DATABASE_URL": pg.render_as_string(hide_password=False),
            "DRIFTLINE_SECRET_KEY": secrets.token_urlsafe(32),
            "DRIFTLINE_BOOTSTRAP_KEY": key,
            "DRIFTLINE_SCHEDULER_ENABLED": "true",
            "DRIFTLINE_SCHEDULER_IN_API": "true",
            "DRIFTLINE_SCHEDULER_TICK_SECONDS": "0.3",
            "DRIFTLINE_FLUSH_INTERVAL_SECONDS": "0.05",
        }
        replicas = [LiveServer(env) for _ in range(REPLICAS)]
        for r in replicas:
            r.admin_key = key
        try:
            # all at once, from this thread (a replica dies with the thread that started it)
            for r in replicas:
                r._spawn()
            for r in replicas:
                r._wait_healthy()
            yield Deployment(replicas, key, database, clickhouse_server, env["DRIFTLINE_DATABASE_URL"])
        finally:
            for r in replicas:
                r.stop()
            ch.execute(f"DROP DATABASE IF EXISTS `{database}`")
            ch.disconnect()


def ok(r: httpx.Response, *codes: int) -> Any:
    assert r.status_code in (codes or (200, 201, 202, 204)), (
        f"{r.request.url}: {r.status_code} {r.text[:400]}"
    )
    return r.json() if r.content else None


def runs_per_window(d: Deployment, model: str) -> dict[tuple[int, int], int]:
    """How many detection runs wrote each (window start, window end) of the model: one
    `computed_ns` per run (some detectors also judge a longer baseline window)."""
    ch = d.clickhouse.client()
    try:
        got = ch.execute(
            f"SELECT toUInt32(window_start), toUInt32(window_end), uniqExact(computed_ns) "
            f"FROM `{d.database}`.`metrics` WHERE project = 'default' AND model = %(m)s "
            "GROUP BY window_start, window_end",
            {"m": model},
        )
    finally:
        ch.disconnect()
    return {(int(s), int(e)): int(n) for s, e, n in got}


def test_each_scheduled_window_is_detected_once(deployment: Deployment) -> None:
    d = deployment
    now = time.time()
    first_hour = int(now) // HOUR * HOUR - 20 * HOUR
    clients = [d.client(i) for i in range(REPLICAS)]
    try:
        for m, name in enumerate(MODELS):
            api = clients[m]
            ok(api.post("/v1/models", json={**FRAUD, "name": name}), 201)
            ok(clients[m + 1 - REPLICAS].post(f"/v1/models/{name}/versions", json={"version": "v1"}), 201)
            monitor = {"window": "1h", "schedule": "1h", "delay": "1m", "lookback": "1d", "enabled": False}
            ok(clients[m - 1].put(f"/v1/models/{name}/monitors", json=monitor))
            reference = fraud_records(500, seed=m, prefix="ref-")
            for r in reference:
                r.pop("version")
            ok(api.put(f"/v1/models/{name}/versions/v1/reference", json={"records": reference}))
            # 18 closed hours of traffic, each hour through another replica
            for h in range(18):
                records = fraud_records(60, seed=h, prefix=f"{name}-{h}-", start=first_hour + h * HOUR)
                target = clients[(m + h) % REPLICAS]
                ok(target.post("/v1/predictions", json={"model": name, "records": records}), 202)
                labels = [
                    {"request_id": r["request_id"], "label": int(r["score"] > 0.5)} for r in records[::2]
                ]
                ok(
                    clients[(m + h + 1) % REPLICAS].post(
                        "/v1/labels", json={"model": name, "records": labels}
                    ),
                    202,
                )
        for api in clients:
            assert ok(api.post("/v1/flush", params={"timeout": 60}))["drained"]
        assert all(runs_per_window(d, name) == {} for name in MODELS)

        # switch detection on: every replica's scheduler now finds every model due
        for m, name in enumerate(MODELS):
            monitor = {"window": "1h", "schedule": "1h", "delay": "1m", "lookback": "1d", "enabled": True}
            ok(clients[m].put(f"/v1/models/{name}/monitors", json=monitor))
        expected_end = int(time.time() - 60) // HOUR * HOUR
        holders: set[str] = set()  # which processes held a model's lease while we watched
        meta = create_engine(d.meta_url)
        deadline = time.monotonic() + 240
        try:
            while True:
                with meta.connect() as conn:
                    held = conn.execute(
                        text("SELECT owner FROM leases WHERE name LIKE 'detect:%' AND owner IS NOT NULL")
                    )
                    holders |= {str(owner).split(":")[1] for (owner,) in held}
                states = [ok(clients[0].get(f"/v1/models/{name}/monitors"))["state"] for name in MODELS]
                if all(
                    s["watermark"] is not None
                    and s["last_error"] is None
                    and datetime.fromisoformat(s["watermark"].replace("Z", "+00:00")).timestamp()
                    >= expected_end
                    for s in states
                ):
                    break
                assert time.monotonic() < deadline, states
                time.sleep(0.1)
        finally:
            meta.dispose()
        time.sleep(3)  # ten more sweeps on each replica: nothing is due, nothing runs again
        pids = {str(r.pid) for r in d.replicas}
        # leases are held by replicas only; which ones is a race (one sweep may take every model)
        assert holders <= pids, (holders, pids)

        for name in MODELS:
            runs = runs_per_window(d, name)
            windows = sorted(s for s, e in runs if e - s == HOUR)
            assert windows[0] <= first_hour and windows[-1] >= expected_end - HOUR, (name, windows[:3])
            assert windows == list(range(windows[0], windows[-1] + HOUR, HOUR)), "a window was skipped"
            twice = {w: n for w, n in runs.items() if n != 1}
            assert not twice, f"{name}: windows detected more than once: {twice}"
            results = ok(
                clients[2].get(f"/v1/models/{name}/metrics", params={"metric": "throughput", "version": "v1"})
            )
            rows = {
                m["window_start"]: m["sample_size"]
                for m in results["items"]
                if m["feature"] == "" and m["slice"] == ""
            }
            assert sum(rows.values()) == 18 * 60, rows  # every row counted once, whichever replica took it
    finally:
        for api in clients:
            api.close()


def test_what_one_replica_takes_every_replica_reads(deployment: Deployment) -> None:
    d = deployment
    a, b, c = (d.client(i) for i in range(REPLICAS))
    with a, b, c:
        ok(a.post("/v1/models", json={**FRAUD, "name": "shared"}), 201)
        # the registry is shared at once: the version made on b is known to c's ingest
        ok(b.post("/v1/models/shared/versions", json={"version": "v1"}), 201)
        first = fraud_records(50, seed=1, prefix="from-c-", start=int(time.time()) - 2 * HOUR)
        second = fraud_records(50, seed=2, prefix="from-a-", start=int(time.time()) - 2 * HOUR)
        for r in (*first, *second):
            r["features"]["email"] = "same.person@example.com"
        ok(c.post("/v1/predictions", json={"model": "shared", "records": first}), 202)
        ok(a.post("/v1/predictions", json={"model": "shared", "records": second}), 202)
        ok(
            b.post(
                "/v1/labels", json={"model": "shared", "records": [{"request_id": "from-c-7", "label": 1}]}
            ),
            202,
        )
        for api in (a, b, c):
            assert ok(api.post("/v1/flush", params={"timeout": 60}))["drained"]
        for api in (a, b, c):
            assert ok(api.get("/v1/models/shared"))["counts"]["predictions"] == 100
        got_c = ok(a.get("/v1/models/shared/predictions/from-c-7"))
        got_a = ok(c.get("/v1/models/shared/predictions/from-a-7"))
        assert got_c["record"]["label"]["value"] == "1"  # posted through b, joined on a
        # one deployment secret: the same value hashes the same on every replica
        assert got_c["record"]["features"]["email"] == got_a["record"]["features"]["email"]
        assert got_c["record"]["features"]["email"] != "same.person@example.com"

        made = ok(a.post("/v1/keys", json={"role": "read", "name": "roaming"}), 201)
        for api in (a, b, c):
            assert (
                api.get("/v1/models", headers={"Authorization": f"Bearer {made['key']}"}).status_code == 200
            )
        ok(b.delete(f"/v1/keys/{made['id']}"), 204)
        for api in (a, b, c):
            assert (
                api.get("/v1/models", headers={"Authorization": f"Bearer {made['key']}"}).status_code == 401
            )


def deploy_remote_servers(ports: list[int]) -> tuple[str, str]:
    """deploy/'s remote_servers, pointed at local test servers: (cluster name, XML fragment)."""
    root = ET.parse(DEPLOY / "clickhouse" / "config.d" / "remote_servers.xml").getroot()
    remote = root.find("remote_servers")
    assert remote is not None and len(remote) == 1
    cluster = remote[0]
    replicas = cluster.findall("shard/replica")
    assert len(replicas) == len(ports) == 2
    for replica, port in zip(replicas, ports, strict=True):
        for tag, value in (("host", "127.0.0.1"), ("port", str(port))):
            node = replica.find(tag)
            assert node is not None
            node.text = value
        for tag in ("user", "password"):  # the test servers' default user has no password
            for node in replica.findall(tag):
                replica.remove(node)
    return cluster.tag, ET.tostring(cluster, encoding="unicode")


def test_the_shipped_cluster_config_runs_two_shards(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    name, xml = deploy_remote_servers(ports)
    servers = [ClickHouseServer(tcp_port=p, remote_servers=xml) for p in ports]
    for s in servers:
        s.start(wait=False)
    try:
        for s in servers:
            s.wait_ready()
        database = f"d_{secrets.token_hex(6)}"
        settings = Settings(
            home=tmp_path / "home",
            clickhouse_url=f"clickhouse://default:@127.0.0.1:{ports[1]}/{database}",
            clickhouse_cluster=name,
            bootstrap_key="deploy-test-admin-key-0123456789",
            scheduler_enabled=False,
            flush_interval_seconds=0.05,
        )
        with Api(create_app(settings), key="deploy-test-admin-key-0123456789") as api:
            ok(api.post("/v1/models", json=FRAUD), 201)
            ok(api.post("/v1/models/fraud/versions", json={"version": "v1"}), 201)
            records = fraud_records(2000, seed=3, start=int(time.time()) - 3 * HOUR)
            ok(api.post("/v1/predictions", json={"model": "fraud", "records": records}), 202)
            api.flush()
            assert ok(api.get("/v1/models/fraud"))["counts"]["predictions"] == 2000
        local = [
            s.client().execute(f"SELECT count() FROM `{database}`.`predictions__default__fraud_local`")[0][0]
            for s in servers
        ]
        assert all(n > 0 for n in local) and sum(local) == 2000, local
    finally:
        for s in servers:
            s.stop()
