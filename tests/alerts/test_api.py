"""The alerting API on both stacks: default rules, validation, project scoping, roles; and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from driftline.storage.meta.models import KeyRole
from tests.alerts.conftest import (
    SECRET,
    channel,
    disable_defaults,
    drift_row,
    feed,
    ok,
    outbox,
    register,
    rule,
    state_of,
)
from tests.alerts.receiver import DeadPort, Receiver
from tests.conftest import Api
from tests.support.live_server import LiveServer
from tests.support.models import FRAUD, HOUSES


def key_for(api: Api, project: str, role: KeyRole) -> str:
    with state_of(api).meta.repos() as repos:
        plaintext, _ = repos.keys.create(project, role, f"{project}-{role.value}")
    return plaintext


def test_default_rules_at_registration_which_the_owner_changes(api: Api) -> None:
    register(api)
    rules = ok(api.get("/v1/rules", params={"model": "fraud"}))
    assert {r["builtin"]: r["name"] for r in rules} == {
        "feature_drift": "fraud: persistent feature drift",
        "performance": "fraud: performance drop",
        "calibration": "fraud: calibration",
        "silent_traffic": "fraud: silent traffic",
        "error_rate": "fraud: error-rate spike",
    }
    by = {r["builtin"]: r for r in rules}
    drift = by["feature_drift"]
    assert drift["selector"] == {
        "model": "fraud",
        "version": "*",
        "detector": "feature_drift",
        "metric": "*",
        "feature": "*",
        "slice": "",
    }
    assert drift["condition"] == {"op": "alert", "threshold": None, "adjusted": True, "details": {}}
    assert drift["persistence"] == {"breaches": 3, "windows": 4}
    assert (drift["severity"], drift["channels"], drift["enabled"], drift["notify_resolved"]) == (
        "warning",
        None,
        True,
        True,
    )
    assert by["silent_traffic"]["selector"]["metric"] == "volume"
    assert by["silent_traffic"]["condition"]["details"] == {"direction": "silent"}
    assert by["error_rate"]["selector"]["metric"] == "error_rate"
    assert by["performance"]["persistence"] == {"breaches": 2, "windows": 3}
    assert by["calibration"]["selector"]["metric"] == "ece"

    # the owner tightens one, switches one off, deletes one
    changed = ok(
        api.patch(
            f"/v1/rules/{drift['id']}",
            json={"persistence": {"breaches": 2}, "selector": {"metric": "psi"}, "severity": "critical"},
        )
    )
    assert changed["persistence"] == {"breaches": 2, "windows": 4}
    assert changed["selector"]["metric"] == "psi" and changed["selector"]["detector"] == "feature_drift"
    assert changed["severity"] == "critical" and changed["builtin"] == "feature_drift"
    off = ok(api.patch(f"/v1/rules/{by['calibration']['id']}", json={"enabled": False}))
    assert off["enabled"] is False
    assert api.delete(f"/v1/rules/{by['error_rate']['id']}").status_code == 204
    # registering the same model again keeps what the owner made of them
    assert api.post("/v1/models", json=FRAUD).status_code == 200
    again = {r["builtin"]: r for r in ok(api.get("/v1/rules", params={"model": "fraud"}))}
    assert set(again) == {"feature_drift", "performance", "calibration", "silent_traffic"}
    assert again["feature_drift"]["persistence"]["breaches"] == 2 and again["calibration"]["enabled"] is False
    # another model gets its own
    ok(api.post("/v1/models", json=HOUSES), 201)
    assert len(ok(api.get("/v1/rules", params={"model": "houses"}))) == 5


def test_rule_and_channel_validation(api: Api) -> None:
    register(api)
    hook = "http://127.0.0.1:9/hook"
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        (
            "post",
            "/v1/channels",
            {"name": "s", "type": "slack", "url": hook, "secret": SECRET},
            422,
            "no secret",
        ),
        ("post", "/v1/channels", {"name": "w", "type": "webhook", "url": hook}, 422, "signing secret"),
        (
            "post",
            "/v1/channels",
            {"name": "w", "type": "webhook", "url": "file:///x", "secret": SECRET},
            422,
            "http",
        ),
        (
            "post",
            "/v1/channels",
            {"name": "m", "type": "slack", "url": "http://169.254.169.254/latest/meta-data"},
            422,
            "cloud metadata",
        ),
        ("post", "/v1/channels", {"name": "m", "type": "slack", "url": "http://[::]:80/"}, 422, "not a host"),
        ("post", "/v1/channels", {"name": "1x", "type": "slack", "url": hook}, 422, "name"),
        ("post", "/v1/channels", {"name": "x", "type": "email", "url": hook}, 422, "type"),
        ("post", "/v1/rules", {"name": "r", "condition": {"op": ">"}}, 422, "threshold"),
        (
            "post",
            "/v1/rules",
            {"name": "r", "condition": {"op": "alert", "threshold": 1}},
            422,
            "no threshold",
        ),
        ("post", "/v1/rules", {"name": "r", "persistence": {"breaches": 3, "windows": 2}}, 422, "exceed"),
        ("post", "/v1/rules", {"name": "r", "channels": ["nowhere"]}, 422, "unknown channels"),
        ("post", "/v1/rules", {"name": "r", "repeat_interval": "10s"}, 422, "repeat_interval"),
        ("post", "/v1/rules", {"name": "r", "severity": "fatal"}, 422, "severity"),
        ("post", "/v1/rules", {"name": "r", "selector": {"colour": "red"}}, 422, "colour"),
    ]
    for method, path, body, status, words in cases:
        r = getattr(api, method)(path, json=body)
        assert r.status_code == status and words in r.text, (body, r.text)

    channel(api, "hook", hook)
    assert api.patch("/v1/channels/hook", json={"url": None}).status_code == 422
    assert api.patch("/v1/channels/hook", json={"secret": None}).status_code == 422  # webhooks are signed
    assert (
        api.post(
            "/v1/channels", json={"name": "hook", "type": "webhook", "url": hook, "secret": SECRET}
        ).status_code
        == 409
    )
    made = rule(api, name="drift", selector={"detector": "feature_drift"}, channels=["hook"])
    assert api.post("/v1/rules", json={"name": "drift"}).status_code == 409
    # a channel a rule sends to cannot go; once the rule lets go of it, it can
    r = api.delete("/v1/channels/hook")
    assert r.status_code == 409 and r.json()["rules"] == [made["id"]]
    ok(api.patch(f"/v1/rules/{made['id']}", json={"channels": None}))
    assert api.delete("/v1/channels/hook").status_code == 204
    assert api.get("/v1/channels/hook").status_code == 404
    bad = api.patch(f"/v1/rules/{made['id']}", json={"condition": {"op": "<"}})
    assert bad.status_code == 422 and "threshold" in bad.text
    assert ok(api.patch(f"/v1/rules/{made['id']}", json={"condition": {"op": "<", "threshold": 0.5}}))[
        "condition"
    ] == {"op": "<", "threshold": 0.5, "adjusted": True, "details": {}}


def test_switching_a_rule_off_closes_its_alerts_quietly(api: Api) -> None:
    with Receiver(secret=SECRET) as hook:
        register(api)
        disable_defaults(api)
        channel(api, "hook", hook.url)
        made = rule(api, name="drift", selector={"detector": "feature_drift"})
        feed(api, [drift_row(0, True)], 0, 0)
        hook.wait_requests(1)
        assert [a["state"] for a in ok(api.get("/v1/alerts", params={"rule": made["id"]}))] == ["firing"]
        ok(api.patch(f"/v1/rules/{made['id']}", json={"enabled": False}))
        (alert,) = ok(api.get("/v1/alerts", params={"rule": made["id"]}))
        assert alert["state"] == "resolved" and alert["details"]["closed"] == "rule disabled"
        feed(api, [drift_row(1, True)], 1, 1)  # a disabled rule is not evaluated
        assert len(outbox(api)) == 1 and len(hook.requests) == 1


def test_everything_is_scoped_to_the_keys_project(api: Api) -> None:
    register(api)
    with DeadPort() as down:
        channel(api, "hook", down.url, default=False)
        made = rule(api, name="drift", selector={"detector": "feature_drift"}, channels=["hook"])
        feed(api, [drift_row(0, True)], 0, 0)
        (alert,) = ok(api.get("/v1/alerts", params={"state": "firing"}))
        (item,) = outbox(api)
        channel_id = ok(api.get("/v1/channels/hook"))["id"]
        other = Api(api.app, key_for(api, "other", KeyRole.ADMIN))
        for path in (
            "/v1/channels/hook",
            f"/v1/channels/{channel_id}",
            f"/v1/rules/{made['id']}",
            f"/v1/alerts/{alert['id']}",
            f"/v1/outbox/{item['id']}",
            "/v1/retraining-policies/fraud",
        ):
            assert other.get(path).status_code == 404, path
        assert other.patch(f"/v1/rules/{made['id']}", json={"enabled": False}).status_code == 404
        assert other.delete(f"/v1/rules/{made['id']}").status_code == 404
        assert other.patch("/v1/channels/hook", json={"enabled": False}).status_code == 404
        assert other.delete("/v1/channels/hook").status_code == 404
        assert other.post("/v1/channels/hook/test").status_code == 404
        assert other.post(f"/v1/alerts/{alert['id']}/ack").status_code == 404
        assert other.post(f"/v1/outbox/{item['id']}/retry").status_code == 404
        for path in (
            "/v1/channels",
            "/v1/rules",
            "/v1/alerts",
            "/v1/outbox",
            "/v1/triggers",
            "/v1/retraining-policies",
        ):
            assert ok(other.get(path)) == [], path
        # the other project may use the same names
        channel(other, "hook", down.url)
        other.close()
        assert ok(api.get(f"/v1/rules/{made['id']}"))["enabled"] is True


def test_roles_read_for_reads_admin_for_writes(api: Api) -> None:
    register(api)
    made = rule(api, name="drift", selector={"detector": "feature_drift"})
    reader = Api(api.app, key_for(api, "default", KeyRole.READ))
    ingester = Api(api.app, key_for(api, "default", KeyRole.INGEST))
    try:
        for path in (
            "/v1/channels",
            "/v1/rules",
            "/v1/alerts",
            "/v1/outbox",
            "/v1/triggers",
            "/v1/retraining-policies",
        ):
            assert reader.get(path).status_code == 200, path
            assert ingester.get(path).status_code == 403, path
        writes = [
            ("post", "/v1/channels", {"name": "x", "type": "slack", "url": "http://127.0.0.1:9/x"}),
            ("patch", f"/v1/rules/{made['id']}", {"enabled": False}),
            ("delete", f"/v1/rules/{made['id']}", None),
            ("post", "/v1/rules", {"name": "y"}),
            ("post", "/v1/alerts/1/ack", None),
            ("post", "/v1/triggers/1/approve", None),
            ("post", "/v1/triggers/1/reject", None),
            ("post", "/v1/outbox/1/retry", None),
            ("post", "/v1/retraining-policies", {"model": "fraud"}),
        ]
        for method, path, body in writes:
            kwargs = {"json": body} if body is not None else {}
            assert getattr(reader, method)(path, **kwargs).status_code == 403, path
        assert Api(api.app, "not-a-key-0123456789").get("/v1/rules").status_code == 401
    finally:
        reader.close()
        ingester.close()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_cli_test_channel() -> None:
    env_server = {"DRIFTLINE_SCHEDULER_ENABLED": "false", "DRIFTLINE_ALERTS_POLL_SECONDS": "0.05"}
    with Receiver(path="/services/T/B/cliToken") as slack, DeadPort() as down, LiveServer(env_server) as live:
        with httpx.Client(base_url=live.url, headers=live.headers) as client:
            body = {"name": "ml-alerts", "type": "slack", "url": slack.url}
            assert client.post("/v1/channels", json=body).status_code == 201
            body = {"name": "broken", "type": "webhook", "url": down.url, "secret": SECRET}
            assert client.post("/v1/channels", json=body).status_code == 201
        env = {"DRIFTLINE_API_URL": live.url, "DRIFTLINE_API_KEY": live.admin_key}
        done = _cli("alerts", "test-channel", "ml-alerts", env=env)
        assert done.returncode == 0, done.stderr
        assert "delivered to channel ml-alerts (HTTP 200)" in done.stdout
        (message,) = slack.requests
        assert message.json["text"].startswith("driftline test message: channel ml-alerts of project default")
        assert message.json["blocks"][0]["type"] == "section"

        failed = _cli("alerts", "test-channel", "broken", env=env)
        assert failed.returncode == 1 and "ConnectError" in failed.stderr
        missing = _cli("alerts", "test-channel", "nope", env=env)
        assert missing.returncode == 2 and "refused (404)" in missing.stderr
        unkeyed = _cli("alerts", "test-channel", "ml-alerts", env={"DRIFTLINE_API_URL": live.url})
        assert unkeyed.returncode == 2 and "admin key" in unkeyed.stderr
        with httpx.Client(base_url=live.url, headers=live.headers) as client:
            dead = client.get("/v1/outbox", params={"state": "dead"}).json()
            assert [(d["kind"], d["target"]) for d in dead] == [("test", "channel broken")]
            assert "cliToken" not in live.log_tail(400)
