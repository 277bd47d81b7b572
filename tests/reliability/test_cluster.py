"""Scale-out: driftline on two ClickHouse 18.16 servers as two shards, without code changes.

The same data goes to a one-server store and to the cluster; ingest lands on both shards,
and every detector result matches the single server's (counts and rates exactly, sketch-based
statistics within the t-digest's own tolerance, verdicts identically).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from driftline.config import Settings
from driftline.ingest.app import create_app
from tests.conftest import ADMIN_KEY, Api
from tests.support.clickhouse_server import ClickHouseServer, free_port
from tests.support.models import FRAUD, fraud_records

CLUSTER = "two_shards"
DAY = 86_400
T0 = 1_780_000_000 // DAY * DAY


@pytest.fixture(scope="module")
def shards() -> Iterator[list[ClickHouseServer]]:
    ports = [free_port(), free_port()]
    spec = {CLUSTER: [[("127.0.0.1", ports[0])], [("127.0.0.1", ports[1])]]}
    servers = [ClickHouseServer(tcp_port=p, remote_servers=spec) for p in ports]
    for s in servers:
        s.start(wait=False)
    try:
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        for s in servers:
            s.stop()


def load(api: Api) -> None:
    assert api.post("/v1/models", json=FRAUD).status_code == 201
    assert api.post("/v1/models/fraud/versions", json={"version": "v1"}).status_code == 201
    reference = fraud_records(3000, seed=11, prefix="ref-")
    for i, r in enumerate(reference):
        r.pop("version")
        r["label"] = i % 3 == 0
    assert api.put("/v1/models/fraud/versions/v1/reference", json={"records": reference}).status_code == 200
    for day in range(4):
        records = fraud_records(2000, seed=day, prefix=f"d{day}-", start=T0 + day * DAY)
        if day >= 2:  # drift from day 2
            for r in records:
                r["features"]["amount"] *= 2.5
        body = orjson.dumps({"model": "fraud", "records": records})
        assert (
            api.post(
                "/v1/predictions", content=body, headers={"Content-Type": "application/json"}
            ).status_code
            == 202
        )
        labels = [{"request_id": r["request_id"], "label": int(r["score"] > 0.6)} for r in records[::2]]
        assert api.post("/v1/labels", json={"model": "fraud", "records": labels}).status_code == 202
    api.flush()
    r = api.post("/v1/models/fraud/detect", json={"start": T0, "end": T0 + 4 * DAY, "window": "1d"})
    assert r.status_code == 200, r.text
    assert not r.json()["errors"], r.json()["errors"]


def results(api: Api) -> dict[tuple[Any, ...], dict[str, Any]]:
    got = api.get("/v1/models/fraud/metrics", params={"limit": 100000}).json()["items"]
    return {
        (m["window_start"], m["version"], m["detector"], m["metric"], m["feature"], m["slice"]): m
        for m in got
        if m["status"] != "error"
    }


def test_cluster_spreads_ingest_and_matches_one_server(
    shards: list[ClickHouseServer], clickhouse_url: str, tmp_path: Path
) -> None:
    database = f"c_{secrets.token_hex(6)}"
    common: dict[str, Any] = {
        "bootstrap_key": ADMIN_KEY,
        "flush_interval_seconds": 0.05,
        "scheduler_enabled": False,
    }
    cluster = Settings(
        home=tmp_path / "cluster",
        clickhouse_url=f"clickhouse://default:@127.0.0.1:{shards[0].tcp_port}/{database}",
        clickhouse_cluster=CLUSTER,
        **common,
    )
    single = Settings(home=tmp_path / "single", clickhouse_url=clickhouse_url, **common)
    with Api(create_app(cluster)) as api:
        load(api)
        on_cluster = results(api)
        counts = api.get("/v1/models/fraud").json()["counts"]
    with Api(create_app(single)) as api:
        load(api)
        on_one = results(api)

    # ingest went to both shards, and together they hold every row once
    local = [
        s.client().execute(f"SELECT count() FROM `{database}`.`predictions__default__fraud_local`")[0][0]
        for s in shards
    ]
    assert all(n > 0 for n in local) and sum(local) == 8000 == counts["predictions"]
    assert counts["labels"] == 4000

    assert on_cluster.keys() == on_one.keys()
    assert len(on_one) > 100
    exact = {"data_quality", "operations", "performance", "slice_performance", "feedback", "calibration"}
    for key, one in on_one.items():
        other = on_cluster[key]
        assert other["status"] == one["status"], key
        assert other["sample_size"] == one["sample_size"], key
        if one["value"] is None:
            assert other["value"] is None, key
            continue
        if "delay" in key[3] or key[3] == "freshness":
            continue  # measured against the clock of each load
        if key[2] in exact and not key[3].startswith("latency") and key[3] != "outlier_rate":
            assert other["value"] == pytest.approx(one["value"], rel=1e-9, abs=1e-12), key
        else:  # sketch-based: t-digest states merged from two shards instead of one
            assert other["value"] == pytest.approx(one["value"], rel=0.03, abs=0.01), key
        if key[2] in ("feature_drift", "dataset_drift", "data_quality", "performance", "operations"):
            assert other["alert"] == one["alert"], key
