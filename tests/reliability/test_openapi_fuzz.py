"""Every route of the OpenAPI schema, fuzzed by schemathesis with an admin key, a read key, another
project's admin key and no key: never a 500, and every answer is one its route documents (status
code, content type, body schema, headers).

The server is a real uvicorn process on loopback with a model that has data, so generated names
sometimes hit something real; alert delivery is off, so nothing generated is ever sent anywhere.
Examples per route are bounded and derandomised, so the run is the same every time.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from driftline.config import Settings
from driftline.ingest.app import create_app
from driftline.storage.meta import MetaStore
from tests.reliability.harness import fraud_batches
from tests.support.live_server import LiveServer
from tests.support.models import FRAUD

pytestmark = pytest.mark.slow

EXAMPLES = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
WHO = ["admin", "read", "other-project", "no-key"]

# the schema as the code builds it; building the app connects to nothing
schema = schemathesis.openapi.from_dict(
    create_app(Settings(home=Path(tempfile.gettempdir()) / "driftline-openapi-unused")).openapi()
)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    live = LiveServer(
        {
            "DRIFTLINE_SCHEDULER_ENABLED": "false",
            "DRIFTLINE_ALERTS_DELIVERY_ENABLED": "false",
            "DRIFTLINE_DETECT_MAX_WINDOWS": "48",
            "DRIFTLINE_BODY_TIMEOUT_SECONDS": "5",
            "DRIFTLINE_LOG_LEVEL": "WARNING",
        }
    )
    with live:
        with httpx.Client(base_url=live.url, headers=live.headers, timeout=120.0) as client:
            assert client.post("/v1/models", json=FRAUD).status_code == 201
            assert client.post("/v1/models/fraud/versions", json={"version": "v1"}).status_code == 201
            for batch in fraud_batches(4000, 2000, seed=10, prefix="z"):
                r = client.post(
                    "/v1/predictions", content=batch.body, headers={"Content-Type": "application/json"}
                )
                assert r.status_code == 202, r.text
            assert client.post("/v1/flush").status_code == 200
        yield live
        assert "unhandled error" not in live.log_path.read_text(errors="replace"), live.log_tail()


@pytest.fixture
def auth(server: LiveServer, who: str) -> dict[str, str]:
    """A fresh key per route: a fuzzed DELETE /v1/keys/{id} may have revoked the last one."""
    if who == "no-key":
        return {}
    project, role = {"admin": ("default", "admin"), "read": ("default", "read")}.get(who, ("other", "admin"))
    meta = MetaStore.from_url(f"sqlite:///{server.home / 'meta.db'}")
    try:
        with meta.repos() as repos:
            plaintext, _ = repos.keys.create(project, role, f"fuzz-{who}")
    finally:
        meta.dispose()
    return {"Authorization": f"Bearer {plaintext}"}


@pytest.mark.parametrize("who", WHO)
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_route_answers_as_documented(
    case: Any, who: str, server: LiveServer, auth: dict[str, str]
) -> None:
    case.call_and_validate(base_url=server.url, headers=auth, checks=CHECKS, timeout=60)
