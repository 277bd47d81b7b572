"""Monitors: strict parsing, validation messages, storage on both databases, leases, and the API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from driftline.config import Settings
from driftline.detectors import registry
from driftline.detectors.monitors import (
    MonitorConfig,
    monitor_of,
    parse_duration,
    parse_monitor,
    parse_time,
    parse_window,
)
from driftline.errors import InvalidInput, NotFound
from driftline.ingest.app import create_app
from driftline.schema import ModelSchema
from driftline.storage.meta import MetaStore
from tests.conftest import Api
from tests.detectors.test_scheduler import KIND, RowsConfig, quiet, register
from tests.support.models import FRAUD

# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900), ("1h", 3600), ("6h", 21_600), ("1d", 86_400), ("30d", 2_592_000), ("0m", 0), ("90s", 90)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["1H", "1.5h", "01h", "1 h", "h", "", "1w", "-1h", "1h30m", " 1h", "1d ", "1e3s"]
)
def test_durations_are_parsed_strictly(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text, "window")


def test_durations_must_be_text() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_duration(3600)


def test_windows_are_whole_hours() -> None:
    assert parse_window("7d") == 7 * 86_400
    for bad, why in [
        ("90m", "whole hours"),
        ("0h", "whole hours"),
        ("30s", "whole hours"),
        ("367d", "366 days"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_window(bad)


def test_times() -> None:
    assert parse_time("2026-05-28T00:00:00Z") == 1_779_926_400
    assert parse_time("2026-05-28T02:00:00+02:00") == 1_779_926_400
    assert parse_time("2026-05-28T00:00:00") == 1_779_926_400  # naive is UTC
    assert parse_time("2026-05-28") == 1_779_926_400
    assert (
        parse_time(1_779_926_400) == parse_time("1779926400") == parse_time(1_779_926_400.7) == 1_779_926_400
    )
    for bad in [True, None, "yesterday", -5, float("nan"), [1]]:
        with pytest.raises(ValueError):
            parse_time(bad, "start")


# -- the config ---------------------------------------------------------------------------


def test_defaults() -> None:
    config = MonitorConfig()
    assert (config.window, config.schedule, config.delay, config.lookback, config.enabled) == (
        "1d",
        "1h",
        "5m",
        "7d",
        True,
    )
    assert (config.window_seconds, config.schedule_seconds, config.lookback_seconds) == (
        86_400,
        3600,
        604_800,
    )
    assert [c.id for c in config.configs()] == [c.id for c in registry.default_configs()]
    assert all(getattr(type(c), "default", True) for c in config.configs())


def test_detectors_are_validated_and_normalised() -> None:
    config = parse_monitor({"window": "6h", "detectors": [{"kind": KIND, "alert_above": 5}]})
    assert config.detectors == [{"kind": KIND, "alert_above": 5.0, "sleep": 0.0, "fail": False}]
    (detector,) = config.configs()
    assert detector == RowsConfig(alert_above=5) and detector.id == RowsConfig(alert_above=5).id
    # stored and loaded again: the same detector, the same id
    again = MonitorConfig.model_validate(config.model_dump(mode="json"))
    assert again == config and again.configs()[0].id == detector.id


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"detectors": [{"kind": "nope"}]}, "detectors.0: unknown detector kind 'nope'; known kinds:"),
        ({"detectors": [{"settings": 1}]}, "unknown detector kind None"),
        ({"detectors": ["psi"]}, "detectors.0: Input should be a valid dictionary"),
        (
            {"detectors": [{"kind": KIND, "alert_above": "high"}]},
            "detectors.0: test_rows: alert_above: Input should be a valid number",
        ),
        (
            {"detectors": [{"kind": KIND, "colour": "red"}]},
            "test_rows: colour: Extra inputs are not permitted",
        ),
        ({"detectors": [{"kind": KIND}, {"kind": KIND, "sleep": 0}]}, "detectors[1] repeats detectors[0]"),
        ({"window": "90m"}, "window: window '90m' must be a positive number of whole hours"),
        ({"window": "1w"}, "window: window '1w' is not a duration"),
        ({"schedule": "30s"}, "schedule '30s' is shorter than one minute"),
        ({"lookback": "0d"}, "lookback '0d' must be positive"),
        ({"delay": "soon"}, "delay 'soon' is not a duration"),
        ({"important_slices": [{"slice": "country"}]}, "slice 'country' must read field=value"),
        (
            {"important_slices": [{"slice": "country=FR", "thresholds": {"psi": "inf"}}]},
            "thresholds must be finite numbers; not psi",
        ),
        (
            {"important_slices": [{"slice": "country=FR"}, {"slice": "country=FR"}]},
            "important slices listed twice: country=FR",
        ),
        ({"windows": "1d"}, "windows: Extra inputs are not permitted"),
        ({"enabled": "maybe"}, "enabled: Input should be a valid boolean"),
    ],
)
def test_validation_messages(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_monitor(payload)
    assert message in info.value.message


def test_important_slices_must_name_fields_of_the_model() -> None:
    schema = ModelSchema.model_validate(FRAUD)
    ok = parse_monitor({"important_slices": [{"slice": "channel=web"}, {"slice": "country=FR"}]})
    ok.check_schema(schema)
    bad = parse_monitor({"important_slices": [{"slice": "planet=mars", "thresholds": {"psi": 0.2}}]})
    with pytest.raises(InvalidInput, match="'planet' is not a metadata field or feature of model 'fraud'"):
        bad.check_schema(schema)


# -- storage, on SQLite and PostgreSQL ----------------------------------------------------


@pytest.fixture
def meta(database_url: str) -> Iterator[MetaStore]:
    store = MetaStore.from_url(database_url)
    store.migrate()
    try:
        yield store
    finally:
        store.dispose()


def test_monitor_records(meta: MetaStore) -> None:
    schema = ModelSchema.model_validate(FRAUD)
    with meta.repos() as r:
        info, _ = r.models.register("default", schema)
    with meta.repos(readonly=True) as r:
        record = r.monitors.get("default", "fraud")
        assert (record.config, record.watermark, record.model_id) == (None, None, info.id)
        assert [(m.project, m.model) for m in r.monitors.models()] == [("default", "fraud")]
        with pytest.raises(NotFound):
            r.monitors.get("default", "nope")
    config = parse_monitor({"window": "1h", "detectors": [{"kind": KIND}]}).model_dump(mode="json")
    with meta.repos() as r:
        assert r.monitors.advance(info.id, 1000, None)
        stored = r.monitors.put("default", "fraud", config)
    assert stored.config == config and stored.watermark == 1000  # a new config keeps the state
    with meta.repos() as r:
        assert r.monitors.advance(info.id, 500, config)  # never back
        # a run made under the old config does not move the watermark of the new one
        assert not r.monitors.advance(info.id, 5000, None)
        r.monitors.record_run(info.id, 1_780_000_000.5, "x" * 10_000)
    with meta.repos(readonly=True) as r:
        state = r.monitors.state(info.id)
    assert state is not None and state.watermark == 1000 and state.last_run_at is not None
    assert state.last_run_at.timestamp() == 1_780_000_000.5 and len(state.last_error or "") == 4000
    assert monitor_of(state).stored and monitor_of(state).config.window == "1h"
    with meta.repos() as r:
        reset = r.monitors.reset("default", "fraud")
    assert reset.config is None and reset.watermark == 1000 and not monitor_of(reset).stored
    with meta.repos() as r:  # another window length: the state starts again
        restarted = r.monitors.put("default", "fraud", config, restart=True)
    assert restarted.watermark is None and restarted.last_run_at is None and restarted.last_error is None
    with meta.repos() as r:
        assert r.monitors.advance(info.id, 2000, config)
        back = r.monitors.reset("default", "fraud", restart=True)
    assert back.config is None and back.watermark is None
    # the model goes: its monitor goes with it
    with meta.repos() as r:
        r.models.delete("default", "fraud")
    with meta.repos(readonly=True) as r:
        assert r.monitors.state(info.id) is None and r.monitors.models() == []


def test_a_stored_config_that_no_longer_validates_says_so(meta: MetaStore) -> None:
    with meta.repos() as r:
        r.models.register("default", ModelSchema.model_validate(FRAUD))
        record = r.monitors.put("default", "fraud", {"detectors": [{"kind": "retired_family"}]})
    with pytest.raises(InvalidInput, match="no longer validates"):
        monitor_of(record)


def test_leases(meta: MetaStore) -> None:
    now = 1_000_000.0
    with meta.repos() as r:
        assert r.leases.acquire("job", "a", 60, now=now)
        assert not r.leases.acquire("job", "b", 60, now=now + 30)
        assert r.leases.acquire("job", "a", 60, now=now + 30)  # a holder may take it again
        assert r.leases.renew("job", "a", 60, now=now + 80)  # extended to now + 140
        assert not r.leases.renew("job", "b", 60, now=now + 80)
        assert not r.leases.acquire("job", "b", 60, now=now + 139)
        assert r.leases.acquire("job", "b", 60, now=now + 141)  # a's lease ran out
        assert not r.leases.renew("job", "a", 60, now=now + 150)  # a lost it for good
        assert not r.leases.release("job", "a")
        assert r.leases.release("job", "b")
        assert r.leases.acquire("job", "a", 60, now=now + 151)
        lease = r.leases.get("job")
        assert lease is not None and lease.owner == "a" and lease.expires_ms == int((now + 211) * 1000)
        assert r.leases.get("other") is None


def test_leases_race_between_connections(meta: MetaStore, database_url: str) -> None:
    """Many workers, each with its own engine, try at the same instant: one wins."""
    import threading

    stores = [MetaStore.from_url(database_url) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    won: list[int] = []

    def take(i: int) -> None:
        barrier.wait()
        with stores[i].repos() as r:
            if r.leases.acquire("race", f"w{i}", 60):
                won.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(stores))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for s in stores:
            s.dispose()
    assert len(won) == 1


# -- the API ----------------------------------------------------------------------------------


@pytest.fixture
def api(stack: Settings) -> Iterator[Api]:
    with Api(create_app(quiet(stack))) as client:
        yield client


def test_monitor_crud(api: Api) -> None:
    register(api)
    got = api.get("/v1/models/fraud/monitors").json()
    assert got["source"] == "default" and got["model"] == "fraud"
    assert got["config"] == MonitorConfig().model_dump(mode="json")
    assert [d["id"] for d in got["detectors"]] == [c.id for c in registry.default_configs()]
    assert got["state"] == {"watermark": None, "last_run_at": None, "last_error": None}

    body = {
        "window": "6h",
        "schedule": "15m",
        "lookback": "3d",
        "detectors": [{"kind": KIND, "alert_above": 100}],
        "important_slices": [{"slice": "channel=web", "thresholds": {"rows": 10}}],
    }
    r = api.put("/v1/models/fraud/monitors", json=body)
    assert r.status_code == 200, r.text
    put = r.json()
    assert put["source"] == "stored" and put["config"]["window"] == "6h" and put["config"]["delay"] == "5m"
    assert put["detectors"] == [
        {
            "kind": KIND,
            "id": RowsConfig(alert_above=100).id,
            "settings": {"alert_above": 100.0, "sleep": 0.0, "fail": False},
        }
    ]
    assert put["config"]["important_slices"] == [{"slice": "channel=web", "thresholds": {"rows": 10.0}}]
    assert api.get("/v1/models/fraud/monitors").json() == put

    read = api.post("/v1/keys", json={"role": "read"}).json()["key"]
    headers = {"Authorization": f"Bearer {read}"}
    assert api.get("/v1/models/fraud/monitors", headers=headers).json() == put
    assert api.put("/v1/models/fraud/monitors", json=body, headers=headers).status_code == 403

    r = api.delete("/v1/models/fraud/monitors")
    assert r.status_code == 200 and r.json()["source"] == "default"
    assert api.get("/v1/models/fraud/monitors").json()["source"] == "default"

    # a deleted and re-registered model starts with the defaults
    assert api.put("/v1/models/fraud/monitors", json=body).status_code == 200
    assert api.delete("/v1/models/fraud").status_code == 204
    assert api.get("/v1/models/fraud/monitors").status_code == 404
    assert api.put("/v1/models/fraud/monitors", json=body).status_code == 404
    register(api)
    assert api.get("/v1/models/fraud/monitors").json()["source"] == "default"


def test_monitor_refusals(api: Api) -> None:
    register(api)

    def refused(body: Any, text: str) -> None:
        r = api.put("/v1/models/fraud/monitors", json=body)
        assert r.status_code == 422, r.text
        assert text in r.json()["detail"], r.json()

    refused({"detectors": [{"kind": "nope"}]}, "field 'detectors.0': unknown detector kind 'nope'")
    refused({"detectors": [{"kind": KIND, "alert_above": "high"}]}, "test_rows: alert_above: Input should be")
    refused({"window": "90m"}, "whole hours")
    refused({"schedule": "1x"}, "is not a duration")
    refused({"important_slices": [{"slice": "planet=mars"}]}, "'planet' is not a metadata field or feature")
    refused({"colour": "red"}, "field 'colour': Extra inputs are not permitted")
    refused([1, 2], "valid dictionary")
    assert api.get("/v1/models/fraud/monitors").json()["source"] == "default"  # nothing stored
    assert api.get("/v1/models/nope/monitors").status_code == 404


def test_monitor_shows_the_schedulers_state(api: Api) -> None:
    from tests.detectors.test_scheduler import DAY, T0, ingest_days, jobs_for

    register(api, {"window": "1d", "lookback": "2d", "delay": "0m", "detectors": [{"kind": KIND}]})
    ingest_days(api, range(2))
    api.flush()
    jobs_for(api).sweep(now=T0 + 2 * DAY + 60)
    state = api.get("/v1/models/fraud/monitors").json()["state"]
    assert state["watermark"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 2 * DAY))
    assert state["last_run_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 2 * DAY + 60))
    assert state["last_error"] is None
