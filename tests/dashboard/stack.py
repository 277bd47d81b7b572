"""A real API loaded with the demo, for the dashboard's page tests and the browser test.

The demo's drift, late labels, slice and calibration trouble come from `driftline.demo`;
on top, a webhook channel and a retraining policy whose receivers refuse connections, so
notifications are dead-lettered at once (one attempt) and persistent drift proposes a
retraining trigger to approve or reject.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from driftline.demo import Scenario, load
from tests.support.live_server import LiveServer

REFUSED = "http://127.0.0.1:9/refused"  # the discard port: nothing listens, connections are refused
ENV = {
    "DRIFTLINE_SCHEDULER_ENABLED": "false",  # detection runs when the test says so
    "DRIFTLINE_ALERTS_MAX_ATTEMPTS": "1",
    "DRIFTLINE_ALERTS_RETRY_BASE_SECONDS": "0.1",
    "DRIFTLINE_ALERTS_POLL_SECONDS": "0.2",
    "DRIFTLINE_ALERTS_TIMEOUT_SECONDS": "2",
}


@dataclass
class DemoStack:
    server: LiveServer
    loaded: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def key(self) -> str:
        return self.server.admin_key

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.server.headers, timeout=60)

    def get(self, path: str, **params: Any) -> Any:
        with self.client() as c:
            r = c.get(path, params=params)
            assert r.status_code == 200, r.text
            return r.json()


def _setup(server: LiveServer) -> Any:
    def setup(model: str) -> None:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as c:
            r = c.post(
                "/v1/channels",
                json={
                    "name": "refused",
                    "type": "webhook",
                    "url": REFUSED,
                    "secret": secrets.token_urlsafe(24),
                },
            )
            assert r.status_code == 201, r.text
            r = c.post(
                "/v1/retraining-policies",
                json={
                    "model": model,
                    "webhook_url": REFUSED,
                    "webhook_secret": secrets.token_urlsafe(24),
                    "gates": {"min_samples": 0, "min_label_coverage": 0},
                },
            )
            assert r.status_code == 201, r.text

    return setup


def wait_for(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def demo_stack(days: int = 21, per_day: int = 500) -> Iterator[DemoStack]:
    """Start the API, load the demo and detect (daily windows); stop everything on exit."""
    server = LiveServer(env=ENV)
    server.start()
    try:
        stack = DemoStack(server)
        stack.loaded = load(
            server.url,
            server.admin_key,
            Scenario(days=days, per_day=per_day, drift_day=days * 4 // 7),
            setup=_setup(server),
        )
        wait_for(lambda: stack.get("/v1/outbox", state="dead"), what="a dead-lettered notification")
        yield stack
    finally:
        server.stop()
