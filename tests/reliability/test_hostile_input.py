"""Hostile input, by hand: each case gets a clear 4xx naming what is wrong, or is stored as data.

SQL in every identifier (model, feature, metadata, version) is refused by the name
patterns; SQL in every value (request ids, categories, metadata, labels, query
parameters) is stored and read back byte for byte; JSON nested too deep, NaN and
numbers that overflow a double are 400s; timestamps far in the past or future are 422s
naming the row and field; a five-megabyte string is stored cut to its first 4096 characters; a million-row Parquet batch is
stored whole; a body trickled in byte by byte ends with 408 while the server keeps serving.
"""

from __future__ import annotations

import io
import socket
import time
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from driftline.ingest.columns import MAX_STRING
from tests.conftest import Api
from tests.support.live_server import LiveServer
from tests.support.models import FRAUD, fraud_records

INJECTIONS = [
    "x'; DROP TABLE predictions; --",
    "a`b` UNION SELECT * FROM system.users --",
    "fraud\x00",
    "') OR ('1'='1",
    "%(model)s",
    "é",
]


def post_json(api: Api, body: bytes | dict[str, Any], path: str = "/v1/predictions") -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return api.post(path, content=content, headers={"Content-Type": "application/json"})


def registered(api: Api) -> Api:
    assert api.post("/v1/models", json=FRAUD).status_code == 201
    assert api.post("/v1/models/fraud/versions", json={"version": "v1"}).status_code == 201
    return api


@pytest.mark.parametrize("name", INJECTIONS)
def test_sql_in_identifiers_is_refused_by_name(api: Api, name: str) -> None:
    registered(api)
    cases = {
        "model": api.post("/v1/models", json={**FRAUD, "name": name}),
        "feature": api.post(
            "/v1/models", json={**FRAUD, "name": "m2", "features": [{"name": name, "kind": "numeric"}]}
        ),
        "metadata": api.post("/v1/models", json={**FRAUD, "name": "m3", "metadata": [{"name": name}]}),
        "version": api.post("/v1/models/fraud/versions", json={"version": name}),
        "new feature": api.post(
            "/v1/models/fraud/versions",
            json={"version": "v2", "features": [{"name": name, "kind": "numeric"}]},
        ),
    }
    for what, r in cases.items():
        assert r.status_code == 422, (what, r.text)
        assert "name" in r.json()["detail"] or "version" in r.json()["detail"], (what, r.text)
    # in a path, the name finds nothing rather than anything else
    assert api.get(f"/v1/models/{quote(name, safe='')}").status_code in (404, 422)
    assert [m["name"] for m in api.get("/v1/models").json()["items"]] == ["fraud"]
    assert "v2" not in [v["version"] for v in api.get("/v1/models/fraud").json()["versions"]]


def test_sql_in_values_is_stored_and_read_back_as_data(api: Api) -> None:
    registered(api)
    records = fraud_records(len(INJECTIONS), prefix="safe")
    for rec, value in zip(records, INJECTIONS, strict=True):
        rec["request_id"] = f"id {value}"
        rec["features"]["country"] = value
        rec["metadata"]["channel"] = value
    r = post_json(api, {"model": "fraud", "records": records})
    assert r.status_code == 202, r.text
    labels = [{"request_id": rec["request_id"], "label": INJECTIONS[0]} for rec in records[:1]]
    assert post_json(api, {"model": "fraud", "records": labels}, "/v1/labels").status_code == 202
    api.flush()
    for value in INJECTIONS:
        got = api.get(f"/v1/models/fraud/predictions/{quote('id ' + value, safe='')}")
        assert got.status_code == 200, (value, got.text)
        record = got.json()["record"]
        assert record["request_id"] == f"id {value}"
        assert record["features"]["country"] == value and record["metadata"]["channel"] == value
    for params in (
        {"slice": "channel=' OR 1=1 --"},
        {"feature": "amount' OR '1'='1"},
        {"detector": "x`; DROP TABLE t"},
        {"metric": "psi') --"},
        {"version": "v1' --"},
    ):
        r = api.get("/v1/models/fraud/metrics", params=params)
        assert r.status_code == 200 and r.json()["items"] == [], (params, r.text)
    assert api.get("/v1/models/fraud/metrics", params={"start": "'; DROP TABLE t"}).status_code == 422
    assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == len(INJECTIONS)


def test_malformed_numbers_depth_and_huge_strings(api: Api) -> None:
    registered(api)
    head = b'{"model":"fraud","records":[{"request_id":"n","version":"v1","timestamp":1780000000,'
    cases = {
        "deep": b'{"model":"fraud","records":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
        "NaN": head + b'"features":{"amount":NaN},"score":0.5}]}',
        "Infinity": head + b'"features":{"amount":Infinity},"score":0.5}]}',
        "overflow": head + b'"features":{"amount":1e999},"score":0.5}]}',
    }
    for what, body in cases.items():
        r = post_json(api, body)
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"], (what, r.text)
    rec = fraud_records(1, prefix="long")[0]
    rec["features"]["country"] = "x" * 5_000_000
    r = post_json(api, {"model": "fraud", "records": [rec]})
    assert r.status_code == 202 and r.json()["violations_by_field"] == {"country": {"category": 1}}, r.text
    api.flush()
    stored = api.get("/v1/models/fraud/predictions/long0").json()["record"]
    assert (
        stored["features"]["country"] == "x" * MAX_STRING
    )  # a string value is kept to its first 4096 characters
    assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == 1


@pytest.mark.parametrize(
    "timestamp",
    ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", -1e12, 1e15, "2026-13-45", "yesterday", True],
)
def test_timestamps_far_away_or_malformed_are_refused_by_row(api: Api, timestamp: Any) -> None:
    registered(api)
    records = fraud_records(3, prefix="t")
    records[2]["timestamp"] = timestamp
    r = post_json(api, {"model": "fraud", "records": records})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["row"] == 2 and r.json()["errors"][0]["field"] == "timestamp"
    api.flush()
    assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == 0  # nothing of the batch


def test_a_million_row_batch_is_stored_whole(api: Api) -> None:
    registered(api)
    n = 1_000_000
    table = pa.table(
        {
            "request_id": pa.array([f"m{i}" for i in range(n)]),
            "version": pa.array(["v1"] * n),
            "timestamp": pa.array(1_780_000_000 + np.arange(n, dtype=np.int64) % 86_400),
            "amount": pa.array([12.5] * n),
            "score": pa.array([0.25] * n),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    r = api.post(
        "/v1/predictions",
        params={"model": "fraud"},
        content=buffer.getvalue(),
        headers={"Content-Type": "application/vnd.apache.parquet"},
    )
    assert r.status_code == 202 and r.json()["accepted"] == n, r.text
    # as JSON the same batch is over the per-request row limit: a 413 that says so
    records = [
        {"request_id": f"j{i}", "version": "v1", "timestamp": 1_780_000_000, "features": {}}
        for i in range(100_001)
    ]
    r = post_json(api, {"model": "fraud", "records": records})
    assert r.status_code == 413 and "100001 records" in r.json()["detail"], r.text
    api.flush()
    assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == n


def test_a_slowly_trickled_body_gets_408_and_the_server_keeps_serving() -> None:
    with LiveServer(
        {"DRIFTLINE_BODY_TIMEOUT_SECONDS": "2", "DRIFTLINE_SCHEDULER_ENABLED": "false"}
    ) as server:
        body = orjson.dumps({"model": "fraud", "records": fraud_records(5)})
        head = (
            f"POST /v1/predictions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.admin_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
            slow.sendall(head)
            answer = b""
            slow.setblocking(False)
            for byte in body:
                try:
                    slow.sendall(bytes([byte]))
                except OSError:
                    break  # the server closed the connection after answering
                # meanwhile others are served at once
                assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
                time.sleep(0.25)
                try:
                    answer += slow.recv(65536)
                except BlockingIOError:
                    continue
                if answer:
                    break
            slow.setblocking(True)
            while b"\r\n\r\n" not in answer:
                chunk = slow.recv(65536)
                if not chunk:
                    break
                answer += chunk
        waited = time.monotonic() - began
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"too slowly" in answer or b"408" in answer
        assert waited < 15, waited
        # nothing of the trickled batch was stored; the model does not even exist
        r = httpx.get(f"{server.url}/v1/models", headers=server.headers, timeout=10)
        assert r.status_code == 200 and r.json()["items"] == []
