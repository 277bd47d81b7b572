"""Secrets never leave driftline: not in API answers, not in stored errors, not in the logs.

`driftline serve` runs at DEBUG with its output captured, on the embedded store and on a
ClickHouse server with PostgreSQL. The test hands it every kind of secret (the bootstrap
key, API keys, the deployment secret, channel URLs with tokens in path and query, webhook
signing secrets, a retraining pipeline's URL and secret), makes every delivery fail against
a receiver that repeats the request it got, and then reads every answer and the whole log.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.alerts.conftest import DAY, T0
from tests.security.served import EchoReceiver, ServedApi
from tests.support import postgres
from tests.support.models import FRAUD, fraud_records

FAST = {
    "DRIFTLINE_LOG_LEVEL": "DEBUG",
    "DRIFTLINE_LOG_JSON": "true",
    "DRIFTLINE_ALERTS_POLL_SECONDS": "0.05",
    "DRIFTLINE_ALERTS_RETRY_BASE_SECONDS": "0.05",
    "DRIFTLINE_ALERTS_RETRY_MAX_SECONDS": "0.1",
    "DRIFTLINE_ALERTS_MAX_ATTEMPTS": "2",
    "DRIFTLINE_ALERTS_TIMEOUT_SECONDS": "2",
    "DRIFTLINE_ALERTS_LEASE_SECONDS": "8",
    "DRIFTLINE_SCHEDULER_TICK_SECONDS": "0.5",
    "DRIFTLINE_SCHEDULER_IN_API": "true",
    "DRIFTLINE_FLUSH_INTERVAL_SECONDS": "0.05",
}


def token(label: str) -> str:
    return f"{label}{secrets.token_hex(12)}"


@pytest.fixture(params=["embedded", "server"])
def live_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    env = {**FAST, "DRIFTLINE_SECRET_KEY": token("deploysecret")}
    if request.param == "embedded":
        yield env
        return
    env["DRIFTLINE_CLICKHOUSE_URL"] = request.getfixturevalue("clickhouse_url")
    with postgres.fresh_database(request.getfixturevalue("pg_admin_url")) as url:
        env["DRIFTLINE_DATABASE_URL"] = url.render_as_string(hide_password=False)
        yield env


def ok(r: httpx.Response, *codes: int) -> Any:
    assert r.status_code in (codes or (200, 201, 202, 204)), (
        f"{r.request.url}: {r.status_code} {r.text[:300]}"
    )
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text


def wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {got!r}"[:3000])
        time.sleep(0.1)


def test_secrets_stay_out_of_answers_and_logs(live_env: dict[str, str]) -> None:
    path_token, query_token, slack_token = token("pathtok"), token("querytok"), token("slacktok")
    path_token2, pipe_token, pipe_query = token("pathtwo"), token("pipetok"), token("pipeq")
    hook_secret, hook_secret2 = token("hooksecret"), token("hooksecrettwo")
    pipe_secret, pipe_secret2 = token("pipesecret"), token("pipesecrettwo")
    bad_token = token("badtok")
    made_keys: list[str] = []
    answers: list[httpx.Response] = []

    with EchoReceiver() as echo, ServedApi(live_env) as server:
        secrets_all = [
            server.admin_key,
            live_env["DRIFTLINE_SECRET_KEY"],
            path_token,
            query_token,
            slack_token,
            path_token2,
            pipe_token,
            pipe_query,
            hook_secret,
            hook_secret2,
            pipe_secret,
            pipe_secret2,
            bad_token,
        ]

        def keep(r: httpx.Response) -> None:
            r.read()
            answers.append(r)

        api = httpx.Client(
            base_url=server.url, headers=server.headers, timeout=60, event_hooks={"response": [keep]}
        )
        with api:
            # keys: made, used, revoked, used again; and keys that never existed
            for role in ("admin", "read", "ingest"):
                made = ok(api.post("/v1/keys", json={"role": role, "name": f"k-{role}"}), 201)
                made_keys.append(made["key"])
                assert made["key"].startswith(made["prefix"])
            for k in made_keys:
                api.get("/v1/models", headers={"Authorization": f"Bearer {k}"})
            revoked = ok(api.get("/v1/keys"))[-1]
            ok(api.delete(f"/v1/keys/{revoked['id']}"), 204)
            assert (
                api.get("/v1/models", headers={"Authorization": f"Bearer {made_keys[-1]}"}).status_code == 401
            )
            wrong = "dl_" + secrets.token_urlsafe(32)
            secrets_all.append(wrong)
            assert api.get("/v1/models", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401

            # channels with credentials in path, query and secret; refused ones must not echo theirs
            ok(
                api.post(
                    "/v1/channels",
                    json={
                        "name": "hook",
                        "type": "webhook",
                        "url": f"{echo.base}/hooks/{path_token}?token={query_token}",
                        "secret": hook_secret,
                    },
                ),
                201,
            )
            ok(
                api.post(
                    "/v1/channels",
                    json={
                        "name": "slack",
                        "type": "slack",
                        "url": f"{echo.base}/services/{slack_token}",
                        "default": False,
                    },
                ),
                201,
            )
            for bad in (
                {
                    "name": "bad",
                    "type": "webhook",
                    "url": f"ftp://user:{bad_token}@example.invalid/x",
                    "secret": hook_secret,
                },
                {"name": "bad", "type": "webhook", "url": f"{echo.base}/{bad_token}", "secret": "short"},
                {"name": "bad", "type": "pager", "url": f"{echo.base}/{bad_token}"},
            ):
                assert api.post("/v1/channels", json=bad).status_code == 422
            assert api.patch("/v1/channels/hook", json={"url": f"gopher://{bad_token}"}).status_code == 422
            for name in ("hook", "slack"):
                item = ok(api.post(f"/v1/channels/{name}/test", params={"wait": 10}))
                assert item["state"] == "dead" and item["last_error"], item
            ok(
                api.patch(
                    "/v1/channels/hook",
                    json={
                        "url": f"{echo.base}/hooks/{path_token2}?token={query_token}",
                        "secret": hook_secret2,
                    },
                )
            )
            ok(api.post("/v1/channels/hook/test", params={"wait": 10}))

            # a model whose drift fires a rule and proposes a retraining trigger
            schema = copy.deepcopy(FRAUD)
            schema["features"][0]["important"] = True
            ok(api.post("/v1/models", json=schema), 201)
            ok(api.post("/v1/models/fraud/versions", json={"version": "v1", "role": "champion"}), 201)
            ok(api.put("/v1/models/fraud/monitors", json={"window": "1d", "enabled": False}))
            reference = fraud_records(800, seed=1, prefix="ref-")
            for r in reference:
                r.pop("version")
            ok(api.put("/v1/models/fraud/versions/v1/reference", json={"records": reference}))
            live = fraud_records(800, seed=2, prefix="live-", start=T0 + 3600)
            for r in live:
                r["features"]["amount"] *= 4
            ok(api.post("/v1/predictions", json={"model": "fraud", "records": live}), 202)
            policy = {
                "model": "fraud",
                "drift": {"windows": 1, "features": ["amount"]},
                "performance": {"enabled": False},
                "labels": {"enabled": False},
                "gates": {"min_samples": 10, "min_label_coverage": 0, "cooldown": "1h"},
                "webhook_url": f"{echo.base}/pipeline/{pipe_token}?sig={pipe_query}",
                "webhook_secret": pipe_secret,
            }
            ok(api.post("/v1/retraining-policies", json=policy), 201)
            ok(api.patch("/v1/retraining-policies/fraud", json={"webhook_secret": pipe_secret2}))
            ok(
                api.post(
                    "/v1/rules",
                    json={
                        "name": "psi now",
                        "selector": {"model": "fraud", "detector": "feature_drift", "feature": "amount"},
                        "condition": {"op": "alert"},
                        "persistence": {"breaches": 1, "windows": 1},
                        "channels": ["hook"],
                    },
                ),
                201,
            )
            ok(api.post("/v1/flush", params={"timeout": 30}))
            ok(api.post("/v1/models/fraud/detect", json={"start": T0, "end": T0 + DAY, "window": "1d"}))
            (trigger,) = wait(
                lambda: ok(api.get("/v1/triggers", params={"state": "proposed"})), 30, "a proposed trigger"
            )
            ok(api.post(f"/v1/triggers/{trigger['id']}/approve", json={"note": "go"}))

            def all_dead() -> list[dict[str, Any]]:
                got: list[dict[str, Any]] = ok(api.get("/v1/outbox", params={"limit": 1000}))
                kinds = {i["kind"] for i in got}
                done = kinds >= {"alert", "trigger"} and all(i["state"] == "dead" for i in got)
                return got if done else []

            items = wait(all_dead, 60, "every notification dead")
            for item in items:
                ok(api.get(f"/v1/outbox/{item['id']}"))
            for path in (
                "/v1/channels",
                "/v1/channels/hook",
                "/v1/channels/slack",
                "/v1/retraining-policies",
                "/v1/retraining-policies/fraud",
                f"/v1/triggers/{trigger['id']}",
                "/v1/alerts?state=all",
                "/v1/keys",
                "/v1/models/fraud",
                "/v1/overview",
                "/readyz",
                "/metrics",
            ):
                ok(api.get(path))
        server.stop(keep_dir=True)
        log = server.output()

    # the secrets were really used: every receiver URL was called with its tokens
    called = " ".join(echo.paths)
    for used in (path_token, query_token, slack_token, path_token2, pipe_token, pipe_query):
        assert used in called
    # and the failure paths, with the receiver's echo, were logged
    assert "rejected POST" in log and '"level": "info"' in log and "dead after" in log, log[-3000:]
    assert any("rejected POST" in (i.get("last_error") or "") for i in items)

    for secret in secrets_all:
        assert secret not in log, f"{secret[:12]}... is in the server's output"
        for answer in answers:
            assert secret not in answer.text, (
                f"{secret[:12]}... in the answer to {answer.request.method} {answer.request.url}"
            )
    for plaintext in made_keys:
        assert plaintext not in log
        shown = [a for a in answers if plaintext in a.text]
        assert len(shown) == 1 and shown[0].request.method == "POST", "a key is shown once, at creation"
