"""Notifications from rule to receiver on both stacks: Slack and webhook payloads, retries, dead letters,
signatures, persistence, repeats and resolves, and secrets kept out of responses and logs.

Results are real MetricRows written through the metrics table; the evaluation hook runs as
after a detector run; receivers are real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from driftline.alerts import SCHEMA_VERSION, notifiers
from driftline.config import Settings
from driftline.ingest.app import create_app
from tests.alerts.conftest import (
    PUBLIC_URL,
    SECRET,
    T0,
    channel,
    disable_defaults,
    drift_row,
    feed,
    ok,
    outbox,
    register,
    rule,
    state_of,
    wait_outbox,
)
from tests.alerts.receiver import DeadPort, Receiver, Script
from tests.conftest import Api

SLACK_TOKEN = "T000SLACK/B000HOOK/xoxSecretToken42"


def test_slack_message_for_persistent_drift(api: Api) -> None:
    """The default drift rule fires on the third drifted window of four; Slack gets one message."""
    with Receiver(path=f"/services/{SLACK_TOKEN}") as slack:
        register(api)
        channel(api, "ml-alerts", slack.url, type="slack")
        # day 0 quiet, days 1-5 drifted by the adjusted verdict; one run per day, as the scheduler does
        for day in range(6):
            feed(api, [drift_row(day, day >= 1, value=0.05 + 0.06 * day if day else 0.04)], day, day)
        (message,) = slack.wait_requests(1)
        time.sleep(0.3)
        assert len(slack.requests) == 1, "one notification per episode, not one per window"

        body = message.json
        assert message.path == f"/services/{SLACK_TOKEN}"
        assert message.headers["content-type"].startswith("application/json")
        assert re.fullmatch(r"[0-9a-f]{32}", message.key)
        assert "x-driftline-signature" not in message.headers  # Slack URLs carry their own token
        assert set(body) == {"text", "blocks"}
        header, intro, facts, actions, context = body["blocks"]
        assert header == {
            "type": "header",
            "text": {"type": "plain_text", "text": "Firing: fraud: persistent feature drift", "emoji": True},
        }
        assert intro["type"] == "section"
        assert intro["text"] == {
            "type": "mrkdwn",
            "text": ":red_circle: *fraud* (v1): feature_drift `psi` on `amount`",
        }
        fields = {
            f["text"].split("\n", 1)[0].strip("*"): f["text"].split("\n", 1)[1] for f in facts["fields"]
        }
        assert all(f["type"] == "mrkdwn" for f in facts["fields"])
        # fired at day 3: days 1, 2 and 3 drifted among days 0-3
        assert fields == {
            "Model": "fraud",
            "Version": "v1",
            "Severity": "warning",
            "What fired": "feature_drift `psi` on `amount`",
            "Value": "0.23 (detector threshold 0.2)",
            "Persistence": "3 of the last 4 windows (fires at 3)",
            "Window": "2026-05-31T00:00:00Z to 2026-06-01T00:00:00Z",
            "Condition": "the detector's adjusted verdict",
        }
        link = f"{PUBLIC_URL}/drift?model=fraud&version=v1&detector=feature_drift&metric=psi&feature=amount&alert=1"
        alert_id = ok(api.get("/v1/alerts", params={"model": "fraud", "state": "firing"}))[0]["id"]
        link = link.replace("alert=1", f"alert={alert_id}")
        assert actions == {
            "type": "actions",
            "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Open in driftline"}, "url": link}
            ],
        }
        assert context["type"] == "context"
        assert context["elements"][0]["text"].startswith(f"project default · alert {alert_id} · rule ")
        text = body["text"]
        assert text.startswith("[FIRING] warning: fraud: persistent feature drift: model fraud version v1, ")
        for part in (
            "feature_drift psi on amount",
            "0.23 (detector threshold 0.2)",
            "3 of the last 4 windows",
        ):
            assert part in text
        assert "2026-05-31T00:00:00Z to 2026-06-01T00:00:00Z" in text and link in text
        assert T0 == 1_779_926_400  # the windows above are days after this midnight

        (item,) = outbox(api)
        assert (item["state"], item["attempts"], item["event"], item["key"]) == (
            "delivered",
            1,
            "alert.firing",
            message.key,
        )
        alerts = ok(api.get("/v1/alerts", params={"model": "fraud"}))
        assert [(a["state"], a["feature"], a["breaches"], a["windows"]) for a in alerts] == [
            ("firing", "amount", 4, 4)
        ]


def test_webhook_payload_and_signature(api: Api) -> None:
    with Receiver(secret=SECRET) as right, Receiver(secret="not-the-secret-at-all-000") as wrong:
        register(api)
        disable_defaults(api)
        channel(api, "right", right.url, default=False)
        channel(api, "wrong", wrong.url, default=False)
        made = rule(
            api,
            name="psi above 0.25",
            selector={"model": "fraud", "detector": "feature_drift", "metric": "psi", "slice": ""},
            condition={"op": ">", "threshold": 0.25},
            persistence={"breaches": 1, "windows": 1},
            severity="critical",
            channels=["right", "wrong"],
        )
        feed(api, [drift_row(0, True, value=0.4), drift_row(0, True, value=0.1, feature="age")], 0, 0)
        (got,) = right.wait_requests(1)
        (other,) = wrong.wait_requests(1)
        # one document per channel: the same facts under each channel's own key and signature
        assert {**got.json, "id": None} == {**other.json, "id": None}
        digest = hmac.new(SECRET.encode(), got.body, hashlib.sha256).hexdigest()
        assert got.headers["x-driftline-signature"] == f"sha256={digest}"
        assert got.signature_ok is True
        assert other.signature_ok is False  # the receiver with another secret refuses it
        assert got.headers["idempotency-key"] != other.headers["idempotency-key"]
        assert got.headers["x-driftline-event"] == "alert.firing"
        doc = got.json
        assert doc["schema_version"] == SCHEMA_VERSION == "1"
        assert doc["type"] == "alert.firing" and doc["id"] == got.key and doc["project"] == "default"
        a = doc["alert"]
        assert {k: a[k] for k in ("model", "version", "detector", "metric", "feature", "slice")} == {
            "model": "fraud",
            "version": "v1",
            "detector": "feature_drift",
            "metric": "psi",
            "feature": "amount",
            "slice": "",
        }
        assert (a["value"], a["threshold"], a["detector_threshold"], a["verdict"]) == (0.4, 0.25, 0.2, True)
        assert (a["state"], a["severity"], a["episode"], a["breaches"], a["windows"]) == (
            "firing",
            "critical",
            1,
            1,
            1,
        )
        assert a["rule"]["id"] == made["id"] and a["rule"]["condition"]["text"] == "value > 0.25"
        assert a["window"] == {"start": "2026-05-28T00:00:00Z", "end": "2026-05-29T00:00:00Z"}
        assert doc["url"].startswith(f"{PUBLIC_URL}/drift?model=fraud")


def test_500_three_times_then_200_is_delivered_once(api: Api) -> None:
    script = Script(responses=[(500, {}), (500, {}), (500, {})], then=200)
    with Receiver(secret=SECRET, script=script) as hook:
        register(api)
        disable_defaults(api)
        channel(api, "hook", hook.url)
        rule(
            api,
            name="any drift",
            selector={"detector": "feature_drift"},
            persistence={"breaches": 1, "windows": 1},
        )
        feed(api, [drift_row(0, True)], 0, 0)
        hook.wait_requests(4)
        items = wait_outbox(api, lambda items: items and items[0]["state"] == "delivered")
        time.sleep(0.3)
        assert [r.status for r in hook.requests] == [500, 500, 500, 200]
        assert len(hook.successes()) == 1 and len(set(hook.processed)) == 1
        assert len({r.key for r in hook.requests}) == 1  # every attempt carries the same key
        assert [r.headers["x-driftline-attempt"] for r in hook.requests] == ["1", "2", "3", "4"]
        assert len({r.body for r in hook.requests}) == 1 and all(r.signature_ok for r in hook.requests)
        (item,) = items
        assert (item["attempts"], item["last_status"], item["last_error"]) == (4, 200, None)


def test_retry_after_is_honoured(api: Api) -> None:
    script = Script(responses=[(429, {"Retry-After": "1"})], then=200)
    with Receiver(secret=SECRET, script=script) as hook:
        register(api)
        disable_defaults(api)
        channel(api, "hook", hook.url)
        rule(api, name="any drift", selector={"detector": "feature_drift"})
        feed(api, [drift_row(0, True)], 0, 0)
        first, second = hook.wait_requests(2)
        assert second.at - first.at >= 0.95  # the backoff alone would be ~10 ms


def test_receiver_down_for_good_is_dead_lettered(api: Api) -> None:
    with DeadPort() as down:
        register(api)
        disable_defaults(api)
        channel(api, "gone", down.url)
        rule(api, name="any drift", selector={"detector": "feature_drift"})
        feed(api, [drift_row(0, True)], 0, 0)
        items = wait_outbox(api, lambda items: items and items[0]["state"] == "dead")
        (item,) = items
        assert item["attempts"] == 4 and item["last_status"] is None
        assert "ConnectError" in item["last_error"]
        dead = outbox(api, state="dead")
        assert [d["id"] for d in dead] == [item["id"]]
        assert outbox(api, state="pending") == []
        metrics = api.get("/metrics").text
        assert 'driftline_outbox_items{state="dead"} 1.0' in metrics
        assert 'driftline_notifications_dead_total{kind="alert"} 1.0' in metrics
        assert 'driftline_notification_attempts_total{kind="alert",outcome="retry"} 3.0' in metrics
        detail = ok(api.get(f"/v1/outbox/{item['id']}"))
        assert detail["payload"]["type"] == "alert.firing"

    # an operator fixes the receiver and re-queues the dead letter: same key, delivered
    with Receiver(secret=SECRET) as hook:
        ok(api.patch("/v1/channels/gone", json={"url": hook.url}))
        again = ok(api.post(f"/v1/outbox/{item['id']}/retry"))
        assert again["state"] == "pending"
        (got,) = hook.wait_requests(1)
        assert got.key == item["key"]
        wait_outbox(api, lambda items: items[0]["state"] == "delivered")


def test_a_refusal_that_cannot_heal_is_dead_at_once(api: Api) -> None:
    with Receiver(secret=SECRET, script=Script(then=404)) as hook:
        register(api)
        disable_defaults(api)
        channel(api, "hook", hook.url)
        rule(api, name="any drift", selector={"detector": "feature_drift"})
        feed(api, [drift_row(0, True)], 0, 0)
        (item,) = wait_outbox(api, lambda items: items and items[0]["state"] == "dead")
        assert (item["attempts"], item["last_status"]) == (1, 404)
        assert len(hook.requests) == 1


def test_a_channel_resolving_to_cloud_metadata_is_never_posted_to(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that resolves to a link-local address (checked at each attempt): dead at once, nothing sent."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def resolve(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "metadata.example":
            asked.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    register(api)
    disable_defaults(api)
    channel(api, "hook", "http://metadata.example/latest/meta-data")  # a name: accepted when created
    rule(api, name="any drift", selector={"detector": "feature_drift"})
    feed(api, [drift_row(0, True)], 0, 0)
    (item,) = wait_outbox(api, lambda items: items and items[0]["state"] == "dead")
    assert item["attempts"] == 1 and item["last_status"] is None
    assert "cloud metadata" in item["last_error"] and asked == ["metadata.example"]


def test_persistence_repeat_and_resolve_as_configured(api: Api) -> None:
    with Receiver(secret=SECRET) as hook:
        register(api)
        disable_defaults(api)
        channel(api, "hook", hook.url)
        rule(
            api,
            name="drift 2 of 3",
            selector={"detector": "feature_drift", "feature": "amount", "slice": ""},
            persistence={"breaches": 2, "windows": 3},
            repeat_interval="1h",
            notify_resolved=True,
        )
        service = state_of(api).alerts
        start = time.time()
        clock = [start]
        service.clock = lambda: clock[0]

        def day(d: int, drifted: bool, hours: float = 0.0) -> None:
            clock[0] = start + hours * 3600
            feed(api, [drift_row(d, drifted)], d, d)

        day(0, True)  # 1 of 1: pending
        assert ok(api.get("/v1/alerts"))[0]["state"] == "pending"
        day(1, False)  # 1 of 2
        day(2, True)  # 2 of 3: firing
        events = [r.json["type"] for r in hook.wait_requests(1)]
        assert events == ["alert.firing"]
        day(3, True, hours=0.5)  # still firing, within the repeat interval
        day(4, True, hours=1.1)  # an hour after the firing notification: repeat
        hook.wait_requests(2)
        feed(api, [drift_row(4, True)], 4, 4)  # a re-run of day 4: nothing new
        day(5, False, hours=1.2)  # 2 of 3 (days 3, 4): still firing
        day(6, False, hours=1.3)  # 1 of 3: resolved
        got = hook.wait_requests(3)
        time.sleep(0.3)
        assert [r.json["type"] for r in hook.requests] == ["alert.firing", "alert.repeat", "alert.resolved"]
        assert len({r.key for r in got}) == 3
        firing, repeat, resolved = (r.json["alert"] for r in hook.requests)
        assert (firing["window"]["start"], firing["breaches"], firing["windows"]) == (
            "2026-05-30T00:00:00Z",
            2,
            3,
        )
        assert repeat["window"]["start"] == "2026-06-01T00:00:00Z" and repeat["state"] == "firing"
        assert (resolved["state"], resolved["window"]["start"], resolved["breaches"]) == (
            "resolved",
            "2026-06-03T00:00:00Z",
            1,
        )
        (alert,) = ok(api.get("/v1/alerts", params={"state": "resolved"}))
        assert (alert["episode"], alert["notifications"]) == (1, 3)


def test_ack_stops_repeats(api: Api) -> None:
    with Receiver(secret=SECRET) as hook:
        register(api)
        disable_defaults(api)
        channel(api, "hook", hook.url)
        rule(api, name="drift", selector={"detector": "feature_drift"}, repeat_interval="1m")
        service = state_of(api).alerts
        start = time.time()
        feed(api, [drift_row(0, True)], 0, 0)
        (alert,) = ok(api.get("/v1/alerts", params={"state": "firing"}))
        acked = ok(api.post(f"/v1/alerts/{alert['id']}/ack"))
        assert acked["acked_by"].startswith("key ") and acked["acked_at"]
        service.clock = lambda: start + 3600
        feed(api, [drift_row(1, True)], 1, 1)
        time.sleep(0.3)
        assert [r.json["type"] for r in hook.requests] == ["alert.firing"]
        assert api.post(f"/v1/alerts/{alert['id'] + 999}/ack").status_code == 404


def test_rerun_does_not_notify_again(api: Api) -> None:
    with Receiver(secret=SECRET) as hook:
        register(api)
        disable_defaults(api)
        channel(api, "hook", hook.url)
        rule(
            api,
            name="drift",
            selector={"detector": "feature_drift"},
            persistence={"breaches": 2, "windows": 2},
        )
        rows = [drift_row(d, True, feature=f) for d in range(3) for f in ("amount", "age")]
        first = feed(api, rows, 0, 2)
        assert (first.transitions, first.notifications) == (2, 2)
        for _ in range(2):
            again = feed(api, rows, 0, 2)
            assert (again.transitions, again.notifications) == (0, 0)
        hook.wait_requests(2)
        time.sleep(0.3)
        assert len(hook.requests) == 2 and len(outbox(api)) == 2


def test_secrets_never_in_responses_or_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = "xoxSuperSecretToken99"
    secret = "signing-secret-never-shown-123"
    with (
        Receiver(path=f"/services/T1/B1/{token}", script=Script(responses=[(500, {})])) as slack,
        Receiver(secret=secret, path=f"/private/{token}") as hook,
    ):
        register(api)
        disable_defaults(api)
        responses = [
            api.post("/v1/channels", json={"name": "slack", "type": "slack", "url": slack.url}),
            api.post(
                "/v1/channels", json={"name": "hook", "type": "webhook", "url": hook.url, "secret": secret}
            ),
            api.patch("/v1/channels/hook", json={"secret": secret + "-2", "url": hook.url}),
            api.get("/v1/channels"),
            api.get("/v1/channels/slack"),
            api.post("/v1/channels", json={"name": "bad", "type": "webhook", "url": "ftp://x/" + token}),
            api.post(
                "/v1/channels", json={"name": "bad", "type": "webhook", "url": hook.url, "secret": "short"}
            ),
        ]
        assert [r.status_code for r in responses] == [201, 201, 200, 200, 200, 422, 422]
        listed = responses[3].json()
        assert {c["name"]: (c["url_hint"], c["secret_set"]) for c in listed} == {
            "hook": (f"http://127.0.0.1:{hook.port}/…", True),
            "slack": (f"http://127.0.0.1:{slack.port}/…", False),
        }
        rule(api, name="drift", selector={"detector": "feature_drift"})
        feed(api, [drift_row(0, True)], 0, 0)
        slack.wait_requests(2)
        hook.wait_requests(1)
        wait_outbox(api, lambda items: len(items) == 2 and all(i["state"] == "delivered" for i in items))
        responses += [api.get("/v1/outbox"), *(api.get(f"/v1/outbox/{i['id']}") for i in outbox(api))]
        responses.append(api.get("/openapi.json"))
        for r in responses:
            assert token not in r.text and secret not in r.text, r.request.url
        logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
        assert "delivered" in logged  # the sender did log its work
        assert token not in logged and secret not in logged
        # stored encrypted: the database file holds neither
        with state_of(api).meta.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT url_token, url_hint, secret_token FROM alert_channels"
            ).fetchall()
        assert rows and all(token not in str(row) and secret not in str(row) for row in rows)


def test_a_waiting_notification_goes_to_the_channels_current_url(settings: Settings) -> None:
    """A notification waiting for its retry is sent to the URL the channel has then (rotation works)."""
    slow = settings.model_copy(update={"alerts_retry_base_seconds": 1.0, "alerts_retry_max_seconds": 1.0})
    with DeadPort() as down, Receiver(secret=SECRET) as hook, Api(create_app(slow)) as api:
        register(api)
        disable_defaults(api)
        channel(api, "hook", down.url)
        rule(api, name="drift", selector={"detector": "feature_drift"})
        feed(api, [drift_row(0, True)], 0, 0)
        wait_outbox(api, lambda items: items and items[0]["attempts"] >= 1 and items[0]["state"] == "pending")
        ok(api.patch("/v1/channels/hook", json={"url": hook.url}))
        (got,) = hook.wait_requests(1, timeout=10)
        (item,) = wait_outbox(api, lambda items: items[0]["state"] == "delivered")
        # the first attempt failed at the old URL; on a slow machine a retry may have too
        # before the patch landed: whichever attempt came after it reached the new URL
        attempt = int(got.headers["x-driftline-attempt"])
        assert attempt >= 2
        assert item["attempts"] == attempt


def test_timing_of_backoff_is_exponential_and_capped() -> None:
    import random

    from driftline.alerts.outbox import backoff

    rng = random.Random(7)
    delays = [backoff(n, 1.0, 10.0, rng) for n in range(1, 7)]
    for n, d in enumerate(delays, start=1):
        full = min(2 ** (n - 1), 10.0)
        assert full / 2 <= d <= full
    assert timedelta(seconds=max(delays)) <= timedelta(seconds=10)


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://169.254.169.254/latest/meta-data", True),
        ("http://[::ffff:169.254.169.254]/", True),
        ("http://[fe80::1]/", True),
        ("http://[fd00:ec2::254]/", True),
        ("http://100.100.100.200/", True),
        ("http://0.0.0.0:8080/", True),
        ("http://224.0.0.1/", True),
        ("http://127.0.0.1:9/hook", False),
        ("http://10.1.2.3/alerts", False),
        ("http://[::1]:9/hook", False),
    ],
)
def test_which_addresses_notifications_may_not_reach(url: str, refused: bool) -> None:
    assert (notifiers.destination(url).refused is not None) is refused


def _resolving(monkeypatch: pytest.MonkeyPatch, answers: list[list[str]]) -> list[str]:
    """`hook.example` resolves to the next of `answers` at each lookup (the last one repeats)."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def resolve(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hook.example":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        addresses = answers[min(len(asked), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port))) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return asked


def _post(url: str, transport: Any = None) -> notifiers.Outcome:
    transport = transport or httpx.HTTPTransport(retries=0)
    try:
        return notifiers.post(transport, url, b"{}", {"Content-Type": "application/json"}, 5.0)
    finally:
        transport.close()


def test_an_attempt_connects_to_the_address_it_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The name is looked up once per attempt: a second answer, pointing at metadata, is never used."""
    asked = _resolving(monkeypatch, [["127.0.0.1"], ["169.254.169.254"]])
    with Receiver() as hook:
        outcome = _post(f"http://hook.example:{hook.port}/hook")
        assert outcome.ok, outcome.error
        (got,) = hook.requests
        assert got.headers["host"] == f"hook.example:{hook.port}"
        assert asked == ["hook.example"]
        # the next attempt looks again, and refuses what the name points at now
        again = _post(f"http://hook.example:{hook.port}/hook")
        assert not again.ok and not again.retryable and "cloud metadata" in again.error
        assert len(hook.requests) == 1


def test_an_attempt_tries_each_checked_address_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    _resolving(monkeypatch, [["127.0.0.2", "127.0.0.1"]])  # nothing listens on 127.0.0.2
    with Receiver() as hook:
        outcome = _post(f"http://hook.example:{hook.port}/hook")
        assert outcome.ok, outcome.error
        assert len(hook.requests) == 1
    with DeadPort() as dead:
        outcome = _post(f"http://hook.example:{dead.port}/hook")
    assert not outcome.ok and outcome.retryable and "ConnectError" in outcome.error


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for `name` and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize("served_name", ["hook.example", "other.example"])
def test_a_pinned_https_attempt_checks_the_certificate_of_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served_name: str
) -> None:
    """Connecting to the checked address still verifies the certificate against the URL's host."""
    _resolving(monkeypatch, [["127.0.0.1"]])
    cert, key = _certificate(tmp_path, served_name)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    trusted = ssl.create_default_context(cafile=str(cert))
    hook = Receiver()
    hook._server.socket = server_side.wrap_socket(hook._server.socket, server_side=True)
    with hook:
        outcome = _post(
            f"https://hook.example:{hook.port}/hook", httpx.HTTPTransport(verify=trusted, retries=0)
        )
    if served_name == "hook.example":
        assert outcome.ok, outcome.error
        assert hook.requests[0].headers["host"] == f"hook.example:{hook.port}"
    else:
        assert not outcome.ok and "certificate" in outcome.error.lower()
        assert hook.requests == []
