"""The API process SIGKILLed in the middle of delivering notifications, then restarted.

The receiver deduplicates by Idempotency-Key like any careful consumer. Afterwards every
notification in the outbox was delivered, the receiver processed each key exactly once,
and the one in flight at the kill was sent again under the same key (at least once,
never lost, never processed twice).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest

from tests.alerts.conftest import DAY, SECRET, T0
from tests.alerts.receiver import Received, Receiver
from tests.support.live_server import LiveServer
from tests.support.models import FRAUD, fraud_records

ENV = {
    "DRIFTLINE_SCHEDULER_ENABLED": "false",
    "DRIFTLINE_ALERTS_POLL_SECONDS": "0.05",
    "DRIFTLINE_ALERTS_RETRY_BASE_SECONDS": "0.05",
    "DRIFTLINE_ALERTS_RETRY_MAX_SECONDS": "0.2",
    "DRIFTLINE_ALERTS_TIMEOUT_SECONDS": "0.5",
    "DRIFTLINE_ALERTS_LEASE_SECONDS": "2",
    "DRIFTLINE_ALERTS_CONCURRENCY": "2",
    "DRIFTLINE_LOG_JSON": "false",
}


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def _outbox(client: httpx.Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = _ok(client.get("/v1/outbox", params={"limit": 1000}))
    return items


@pytest.mark.slow
def test_killed_mid_delivery_delivers_each_notification_once(database_url: str) -> None:
    third: list[Received] = []

    def hold(received: Received) -> bool:
        if received.index == 2:
            third.append(received)
            return True
        return False

    with Receiver(secret=SECRET, hold=hold) as receiver:
        live = LiveServer({**ENV, "DRIFTLINE_DATABASE_URL": database_url})
        try:
            live.start()
            with httpx.Client(base_url=live.url, headers=live.headers, timeout=60) as client:
                _ok(client.post("/v1/models", json=FRAUD), 201)
                _ok(client.post("/v1/models/fraud/versions", json={"version": "v1", "role": "champion"}), 201)
                for r in _ok(client.get("/v1/rules")):
                    _ok(client.patch(f"/v1/rules/{r['id']}", json={"enabled": False}))
                _ok(
                    client.post(
                        "/v1/channels",
                        json={"name": "hook", "type": "webhook", "url": receiver.url, "secret": SECRET},
                    ),
                    201,
                )
                # every operations series of the day notifies once: several notifications at once
                rule = {
                    "name": "ops",
                    "selector": {"detector": "operations", "metric": "*"},
                    "condition": {"op": ">=", "threshold": 0},
                }
                _ok(client.post("/v1/rules", json=rule), 201)
                records = fraud_records(48)
                for i, rec in enumerate(records):
                    rec["timestamp"] = T0 + i * 1800 + 7
                _ok(
                    client.post(
                        "/v1/predictions",
                        content=orjson.dumps({"model": "fraud", "records": records}),
                        headers={"Content-Type": "application/json"},
                    ),
                    202,
                )
                _ok(client.post("/v1/models/fraud/detect", json={"start": T0, "end": T0 + DAY}))
                written = _outbox(client)
            assert len(written) >= 5, written

            assert receiver.holding.wait(30), "the third delivery never arrived"
            live.kill()  # mid-delivery: the receiver has processed it, the sender never hears back
            receiver.release.set()
            live.start()

            with httpx.Client(base_url=live.url, headers=live.headers, timeout=60) as client:
                deadline = time.monotonic() + 60
                while True:
                    items = _outbox(client)
                    if all(i["state"] == "delivered" for i in items):
                        break
                    assert time.monotonic() < deadline, [(i["id"], i["state"]) for i in items]
                    time.sleep(0.1)
                time.sleep(0.5)
            assert sorted(i["key"] for i in items) == sorted(i["key"] for i in written)
            keys = {i["key"] for i in items}
            assert set(receiver.processed) == keys  # nothing lost
            assert all(n == 1 for n in receiver.processed.values())  # nothing processed twice
            held_key = third[0].key
            assert receiver.duplicates[held_key] >= 1  # the one in flight came again, same key
            assert all(r.signature_ok for r in receiver.requests)
            assert all(r.json["id"] == r.key for r in receiver.requests)
        finally:
            receiver.release.set()
            live.stop()
