"""POST /v1/models/{model}/detect and GET .../metrics on both stacks, and `driftline detect`.

Detection runs the small real `test_rows` detector (tests/detectors/test_scheduler.py) for
the plumbing, and the registered families' defaults where a test says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from driftline.config import Settings, get_settings
from driftline.detectors import registry
from driftline.ingest.app import create_app
from tests.conftest import Api
from tests.detectors.test_scheduler import (  # the autouse fixture gives each test a fresh log
    DAY,
    KIND,
    T0,
    _clear_calls,  # noqa: F401
    detected,
    ingest_days,
    iso,
    iso_day,
    quiet,
    register,
)
from tests.support.live_server import LiveServer
from tests.support.models import FRAUD, fraud_records

MONITOR = {"window": "1d", "detectors": [{"kind": KIND}]}


@pytest.fixture
def api(stack: Settings) -> Iterator[Api]:
    with Api(create_app(quiet(stack))) as client:
        yield client


def detect(api: Api, **body: Any) -> httpx.Response:
    return api.post("/v1/models/fraud/detect", json=body)


def items(api: Api, **params: Any) -> list[dict[str, Any]]:
    r = api.get("/v1/models/fraud/metrics", params=params)
    assert r.status_code == 200, r.text
    got: list[dict[str, Any]] = r.json()["items"]
    return got


def test_detect_writes_results_and_a_rerun_replaces_them(api: Api) -> None:
    register(api, MONITOR)
    ingest_days(api, range(3))  # no flush: detect waits for the spool itself
    r = detect(api, start=iso_day(0), end=T0 + 3 * DAY, window="1d")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["start"] == iso_day(0) and body["end"] == iso_day(3) and body["window"] == "1d"
    assert (body["windows"], body["versions"], body["errors"], body["alerts"]) == (3, ["v1"], [], 0)
    assert body["rows_written"] == 6  # two metrics per window
    assert body["buckets_summarised"] >= 72  # every hour of the 3 days (and their label-joined twins)
    assert [d["kind"] for d in body["detectors"]] == [KIND] and body["seconds"] >= 0
    first = items(api, detector=KIND)
    assert len(first) == 6
    rows = [m for m in first if m["metric"] == "rows"]
    assert [(m["window_start"], m["window_end"], m["value"]) for m in rows] == [
        (iso_day(d), iso_day(d + 1), 24.0) for d in range(3)
    ]
    m = rows[0]
    assert (m["version"], m["feature"], m["slice"], m["status"], m["alert"], m["sample_size"]) == (
        "v1",
        "",
        "",
        "ok",
        False,
        24,
    )
    assert m["threshold"] == 1e12 and len(m["detector_id"]) == 12 and "run" in m["details"]

    # the same detect again: the same rows, replaced (a new run token), never doubled
    r = detect(api, start=iso_day(0), end=T0 + 3 * DAY, window="1d")
    assert r.status_code == 200 and r.json()["buckets_summarised"] == 0
    second = items(api, detector=KIND)
    assert len(second) == 6
    assert {m["details"]["run"] for m in second}.isdisjoint({m["details"]["run"] for m in first})
    key = ("window_start", "metric", "value")
    assert sorted(tuple(m[k] for k in key) for m in second) == sorted(tuple(m[k] for k in key) for m in first)

    # late rows in a closed day: the next detect re-summarises that bucket and replaces its result
    late = fraud_records(5, prefix="late", start=T0 + DAY + 100)
    assert api.post("/v1/predictions", json={"model": "fraud", "records": late}).status_code == 202
    r = detect(api, start=T0, end=T0 + 3 * DAY)  # the monitor's window
    assert r.status_code == 200 and 1 <= r.json()["buckets_summarised"] <= 2  # the late rows' hour
    rows = items(api, detector=KIND, metric="rows")
    assert [m["value"] for m in rows] == [24.0, 29.0, 24.0]


def test_detect_aligns_to_whole_windows_and_takes_epochs(api: Api) -> None:
    register(api, MONITOR)
    ingest_days(api, range(2))
    r = detect(api, start=str(T0 + 3600 * 5), end=T0 + DAY + 60, window="6h")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["start"], body["end"], body["windows"]) == (iso(T0), iso(T0 + DAY + 6 * 3600), 5)
    assert sorted(detected()) == [T0 + 6 * 3600 * i for i in range(5)]


def test_metrics_filters(api: Api) -> None:
    register(api, MONITOR, versions=("v1", "v2"))
    ingest_days(api, range(2))
    ingest_days(api, range(1, 2), version="v2", prefix="b", per_hour=2)
    assert detect(api, start=T0, end=T0 + 2 * DAY, window="1d").status_code == 200
    everything = items(api)
    assert len(everything) == 8  # 2 versions x 2 days x 2 metrics
    assert {m["version"] for m in items(api, version="v2")} == {"v2"}
    assert [m["value"] for m in items(api, version="v2", metric="rows")] == [0.0, 48.0]
    assert {m["metric"] for m in items(api, feature="@score")} == {"scored"}
    assert len(items(api, metric="rows")) == 4
    assert items(api, detector="feature_drift") == []
    assert len(items(api, slice="")) == 8 and items(api, slice="channel=web") == []
    day1 = items(api, start=iso_day(1))
    assert {m["window_start"] for m in day1} == {iso_day(1)} and len(day1) == 4
    assert {m["window_start"] for m in items(api, end=T0 + DAY)} == {iso_day(0)}
    assert len(items(api, status="ok")) == 8 and items(api, status="error") == []
    r = api.get("/v1/models/fraud/metrics", params={"limit": 2})
    assert r.status_code == 200 and len(r.json()["items"]) == 2 and r.json()["truncated"] is True
    assert api.get("/v1/models/fraud/metrics").json()["truncated"] is False
    # a read key may read, not run
    read = api.post("/v1/keys", json={"role": "read"}).json()["key"]
    headers = {"Authorization": f"Bearer {read}"}
    assert api.get("/v1/models/fraud/metrics", headers=headers).status_code == 200
    assert (
        api.post("/v1/models/fraud/detect", json={"start": 0, "end": 1}, headers=headers).status_code == 403
    )
    ingest = api.post("/v1/keys", json={"role": "ingest"}).json()["key"]
    assert (
        api.get("/v1/models/fraud/metrics", headers={"Authorization": f"Bearer {ingest}"}).status_code == 403
    )


def test_detect_refuses_bad_requests(api: Api) -> None:
    register(api, MONITOR)

    def refused(status: int, text: str, **body: Any) -> None:
        r = detect(api, **body)
        assert r.status_code == status, r.text
        assert text in r.json()["detail"], r.json()

    refused(422, "whole hours", start=T0, end=T0 + DAY, window="90m")
    refused(422, "is not a duration", start=T0, end=T0 + DAY, window="1w")
    refused(422, "is not a duration", start=T0, end=T0 + DAY, window="1.5h")
    refused(422, "must be after start", start=T0 + DAY, end=T0)
    refused(422, "neither ISO 8601", start="yesterday", end=T0)
    refused(422, "at most 10000 per request", start=0, end=T0, window="1h")
    refused(422, "field 'start'", end=T0)
    r = api.post("/v1/models/nope/detect", json={"start": T0, "end": T0 + DAY})
    assert r.status_code == 404
    assert api.get("/v1/models/nope/metrics").status_code == 404
    r = api.get("/v1/models/fraud/metrics", params={"start": "soon"})
    assert r.status_code == 422 and "start" in r.json()["detail"]


def test_detect_with_the_default_detectors(api: Api) -> None:
    """No monitor: every registered family runs with its defaults, whatever exists."""
    register(api)
    ingest_days(api, range(3))
    monitor = api.get("/v1/models/fraud/monitors").json()
    assert monitor["source"] == "default"
    expected = sorted(c.kind for c in registry.default_configs())
    assert sorted(d["kind"] for d in monitor["detectors"]) == expected
    r = detect(api, start=T0, end=T0 + 3 * DAY)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["windows"] == 3 and sorted(d["kind"] for d in body["detectors"]) == expected
    written = len(items(api))
    assert written == body["rows_written"]
    assert detect(api, start=T0, end=T0 + 3 * DAY).status_code == 200
    assert len(items(api)) == written


# -- `driftline detect` ---------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    return subprocess.run(
        [sys.executable, "-m", "driftline", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_cli_detect_against_a_live_api() -> None:
    """On the embedded store the CLI asks the running API, which owns the data."""
    with LiveServer() as live, httpx.Client(base_url=live.url, headers=live.headers, timeout=60) as client:
        assert client.post("/v1/models", json=FRAUD).status_code == 201
        assert (
            client.post("/v1/models/fraud/versions", json={"version": "v1", "role": "champion"}).status_code
            == 201
        )
        records = fraud_records(72)
        for i, rec in enumerate(records):
            rec["timestamp"] = T0 + i * 3600 + 11
        r = client.post(
            "/v1/predictions",
            content=orjson.dumps({"model": "fraud", "records": records}),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 202
        env = {"DRIFTLINE_API_URL": live.url, "DRIFTLINE_API_KEY": live.admin_key}
        args = ["detect", "--model", "fraud", "--start", iso_day(0), "--end", str(T0 + 3 * DAY)]
        done = run_cli(*args, "--window", "1d", "--json", env=env)
        assert done.returncode in (0, 1), done.stderr
        body = json.loads(done.stdout)
        assert body["windows"] == 3 and body["versions"] == ["v1"] and body["start"] == iso_day(0)
        assert done.returncode == (1 if body["errors"] else 0)
        stored = client.get("/v1/models/fraud/metrics").json()["items"]
        assert len(stored) == body["rows_written"]
        # again, in the plain format: replaced, not doubled
        again = run_cli(*args, "--window", "1d", env=env)
        assert "3 windows of 1d" in again.stdout, again.stdout + again.stderr
        assert len(client.get("/v1/models/fraud/metrics").json()["items"]) == len(stored)
        # refusals come back with the API's message and exit code 2
        bad = run_cli(*args, "--window", "90m", env=env)
        assert bad.returncode == 2 and "whole hours" in bad.stderr
        missing = run_cli("detect", "--model", "nope", "--start", "0", "--end", "1", env=env)
        assert missing.returncode == 2 and "refused (404)" in missing.stderr
        unkeyed = run_cli(*args, env={"DRIFTLINE_API_URL": live.url})
        assert unkeyed.returncode == 2 and "admin key" in unkeyed.stderr
    gone = run_cli(*args, env=env)
    assert gone.returncode == 1 and "cannot reach the API" in gone.stderr


@pytest.mark.parametrize(
    "stack", [("clickhouse", "postgresql")], indirect=True, ids=["clickhouse-postgresql"]
)
def test_cli_detect_in_process_with_a_server(
    stack: Settings, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a ClickHouse server the CLI runs the detectors itself, on the same stores."""
    from driftline.cli import app

    register(api, MONITOR)
    ingest_days(api, range(2))
    api.flush()
    for name in [k for k in os.environ if k.startswith("DRIFTLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DRIFTLINE_HOME", str(stack.home))
    monkeypatch.setenv("DRIFTLINE_DATABASE_URL", stack.resolved_database_url)
    monkeypatch.setenv("DRIFTLINE_CLICKHOUSE_URL", str(stack.clickhouse_url))
    get_settings.cache_clear()
    try:
        args = ["detect", "--model", "fraud", "--start", iso_day(0), "--end", iso_day(2), "--json"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        body = json.loads(result.stdout)
        assert (body["windows"], body["window"], body["rows_written"]) == (2, "1d", 4)
        assert [m["value"] for m in items(api, metric="rows")] == [24.0, 24.0]
        result = CliRunner().invoke(app, ["detect", "--model", "nope", "--start", "0", "--end", "1"])
        assert result.exit_code == 2 and "not found" in result.output
    finally:
        get_settings.cache_clear()
