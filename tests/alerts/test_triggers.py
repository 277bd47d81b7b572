"""Retraining triggers end to end on both stacks: one trigger per finding episode, gates, cooldown,
approval dispatching signed evidence to a pipeline webhook, rejection sending nothing."""

from __future__ import annotations

import copy
import hashlib
import hmac
import time
from typing import Any

from driftline.detectors.base import MetricRow
from tests.alerts.conftest import (
    DAY,
    SECRET,
    T0,
    coverage_row,
    disable_defaults,
    drift_row,
    feed,
    ok,
    perf_row,
    register,
    state_of,
    throughput_row,
    wait_outbox,
)
from tests.alerts.receiver import Receiver
from tests.conftest import Api
from tests.support.models import FRAUD


def important_fraud() -> dict[str, Any]:
    schema = copy.deepcopy(FRAUD)
    schema["features"][0]["important"] = True  # amount
    return schema


def day_rows(
    day: int, *, drift: bool, accuracy: float, labelled: int = 300, rows: int = 1000
) -> list[MetricRow]:
    return [
        drift_row(day, drift),
        drift_row(day, drift, feature="age"),  # not important: never a finding
        perf_row(day, accuracy),
        coverage_row(day, labelled, rows),
        throughput_row(day, rows),
    ]


def policy(api: Api, url: str, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "fraud",
        "drift": {"windows": 3},
        "performance": {"windows": 1},
        "gates": {"min_samples": 1000, "min_label_coverage": 0.2, "cooldown": "7d"},
        "webhook_url": url,
        "webhook_secret": SECRET,
        **extra,
    }
    made: dict[str, Any] = ok(api.post("/v1/retraining-policies", json=body), 201)
    return made


def triggers(api: Api, **params: Any) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = ok(api.get("/v1/triggers", params=params))
    return got


def test_one_trigger_per_episode_cooldown_approval_and_rejection(api: Api) -> None:
    with Receiver(path="/pipeline/retrain", secret=SECRET) as pipeline:
        register(api, important_fraud())
        disable_defaults(api)
        made = policy(api, pipeline.url)
        assert (
            made["require_approval"] is True and made["webhook_hint"] == f"http://127.0.0.1:{pipeline.port}/…"
        )
        assert made["secret_set"] is True and "webhook_secret" not in made and SECRET not in str(made)
        service = state_of(api).alerts
        start = time.time()
        clock = [start]
        service.clock = lambda: clock[0]

        # drift on `amount` from day 1, accuracy drops from day 3; one run per day
        for day in range(6):
            feed(api, day_rows(day, drift=day >= 1, accuracy=0.7 if day >= 3 else 0.92), day, day)
            if day < 3:
                assert triggers(api) == [], day  # drift for fewer than 3 windows is no finding yet
        (first,) = triggers(api)
        assert first["state"] == "proposed" and first["episode"] == 1
        # the same days detected again in one run: still one trigger
        feed(
            api,
            [r for d in range(6) for r in day_rows(d, drift=d >= 1, accuracy=0.7 if d >= 3 else 0.92)],
            0,
            5,
        )
        (first,) = triggers(api)

        evidence = first["evidence"]
        kinds = {(f["kind"], f["feature"], f["metric"]) for f in evidence["findings"]}
        assert kinds == {("drift", "amount", "psi"), ("performance", "", "accuracy")}
        drift = next(f for f in evidence["findings"] if f["kind"] == "drift")
        assert drift["windows"] >= 3 and drift["required"] == 3 and drift["version"] == "v1"
        assert drift["since"] == iso(T0 + DAY)
        assert [s["value"] for s in drift["series"]][:3] == [0.31, 0.31, 0.31]
        assert evidence["window"]["start"] == iso(T0 + DAY)
        figures = evidence["figures"]
        assert figures["samples"] >= 3000 and figures["label_coverage"] == 0.3
        data = evidence["data"]
        assert data["versions"] == ["v1"] and data["start"] == iso(T0 + DAY)
        assert (
            "predictions__default__fraud" in data["sql"] and f"toDateTime({T0 + DAY}, 'UTC')" in data["sql"]
        )
        assert data["metrics_api"].startswith("/v1/models/fraud/metrics?start=")
        assert [h["state"] for h in first["history"]] == ["proposed"]
        assert first["history"][0]["by"] == {"system": "policy"}
        assert first["dispatch"] is None and pipeline.requests == []

        # the findings clear (episode over), then come back within the cooldown: held, no trigger
        for day in (6, 7):
            feed(api, day_rows(day, drift=False, accuracy=0.92), day, day)
        for day in (8, 9, 10):
            feed(api, day_rows(day, drift=True, accuracy=0.6), day, day)
        assert len(triggers(api)) == 1
        status = ok(api.get("/v1/retraining-policies/fraud"))["status"]
        assert status["episode"] == 2 and status["active"] is True and status["trigger_id"] is None
        assert len(status["held"]) == 1 and status["held"][0].startswith("cooldown:")

        # approval dispatches the evidence, signed, through the outbox
        approved = ok(api.post(f"/v1/triggers/{first['id']}/approve", json={"note": "retrain on June data"}))
        assert approved["state"] in ("approved", "dispatched")
        (sent,) = pipeline.wait_requests(1)
        digest = hmac.new(SECRET.encode(), sent.body, hashlib.sha256).hexdigest()
        assert sent.headers["x-driftline-signature"] == f"sha256={digest}" and sent.signature_ok
        doc = sent.json
        assert doc["type"] == "retraining.trigger" and doc["schema_version"] == "1"
        assert doc["id"] == sent.key and sent.headers["x-driftline-event"] == "retraining.trigger"
        assert doc["trigger"]["id"] == first["id"] and doc["trigger"]["state"] == "approved"
        assert doc["trigger"]["evidence"] == evidence  # what was proposed is what the pipeline gets
        wait_outbox(
            api, lambda items: any(i["kind"] == "trigger" and i["state"] == "delivered" for i in items)
        )
        done = ok(api.get(f"/v1/triggers/{first['id']}"))
        assert done["state"] == "dispatched" and done["dispatched_at"]
        steps = done["history"]
        assert [h["state"] for h in steps] == ["proposed", "approved", "dispatched"]
        assert steps[1]["by"]["key_id"] >= 1 and steps[1]["by"]["role"] == "admin"
        assert steps[1]["by"]["key_prefix"] and steps[1]["note"] == "retrain on June data"
        assert done["decided_by"].startswith(f"key {steps[1]['by']['key_id']} (")
        assert done["dispatch"]["state"] == "delivered" and done["dispatch"]["key"] == sent.key
        assert api.post(f"/v1/triggers/{first['id']}/approve").status_code == 409

        # once the cooldown has passed, the episode still going proposes its one trigger; rejected, nothing is sent
        clock[0] = start + 8 * DAY
        feed(api, day_rows(11, drift=True, accuracy=0.6), 11, 11)
        second = triggers(api, state="proposed")
        assert [t["episode"] for t in second] == [2]
        rejected = ok(api.post(f"/v1/triggers/{second[0]['id']}/reject", json={"note": "known campaign"}))
        assert rejected["state"] == "rejected" and rejected["dispatch"] is None
        assert [h["state"] for h in rejected["history"]] == ["proposed", "rejected"]
        feed(api, day_rows(12, drift=True, accuracy=0.6), 12, 12)
        time.sleep(0.3)
        assert len(pipeline.requests) == 1
        assert api.post(f"/v1/triggers/{second[0]['id']}/approve").status_code == 409
        assert [t["state"] for t in triggers(api)] == ["rejected", "dispatched"]
        assert [t["id"] for t in triggers(api, state="dispatched", model="fraud")] == [first["id"]]


def test_gates_hold_until_labels_arrive_and_nothing_fires_without_findings(api: Api) -> None:
    with Receiver(path="/pipeline", secret=SECRET) as pipeline:
        register(api, important_fraud())
        disable_defaults(api)
        policy(
            api, pipeline.url, require_approval=False, drift={"windows": 2}, performance={"enabled": False}
        )
        service = state_of(api).alerts
        start = time.time()
        # quiet windows, long after any cooldown: no finding, no trigger, whatever the clock says
        for day in range(3):
            service.clock = lambda day=day: start + day * 30 * DAY
            feed(api, day_rows(day, drift=False, accuracy=0.92), day, day)
        assert triggers(api) == []
        # drift persists, but few labels so far: held by the coverage gate
        for day in (3, 4):
            feed(api, day_rows(day, drift=True, accuracy=0.92, labelled=50), day, day)
        assert triggers(api) == []
        held = ok(api.get("/v1/retraining-policies/fraud"))["status"]["held"]
        assert len(held) == 1 and held[0].startswith("min_label_coverage: label coverage 0.050")
        # late labels: the latest windows detected again, now covered: proposed and, without approval, dispatched
        rows = [r for d in (3, 4) for r in day_rows(d, drift=True, accuracy=0.92, labelled=400)]
        feed(api, rows, 3, 4)
        (trigger,) = triggers(api)
        assert trigger["history"][1]["by"] == {"system": "policy"}
        (sent,) = pipeline.wait_requests(1)
        assert sent.signature_ok and sent.json["trigger"]["evidence"]["figures"]["label_coverage"] == 0.4
        wait_outbox(api, lambda items: items and items[0]["state"] == "delivered")
        assert ok(api.get(f"/v1/triggers/{trigger['id']}"))["state"] == "dispatched"


def test_mode_all_needs_every_kind_of_finding(api: Api) -> None:
    with Receiver(path="/pipeline", secret=SECRET) as pipeline:
        register(api, important_fraud())
        disable_defaults(api)
        policy(api, pipeline.url, mode="all", gates={"min_samples": 0, "min_label_coverage": 0})
        for day in range(4):
            feed(api, day_rows(day, drift=True, accuracy=0.92), day, day)
        assert triggers(api) == []  # drift alone, performance fine, labels fine
        feed(api, day_rows(4, drift=True, accuracy=0.5), 4, 4)
        assert triggers(api) == []  # labels (concept/label drift) never changed
        ok(api.patch("/v1/retraining-policies/fraud", json={"labels": {"enabled": False}}))
        feed(api, day_rows(5, drift=True, accuracy=0.5), 5, 5)
        (trigger,) = triggers(api)
        assert {f["kind"] for f in trigger["evidence"]["findings"]} == {"drift", "performance"}
        # policy API: validation, one per model, delete keeps triggers
        assert (
            api.post(
                "/v1/retraining-policies",
                json={"model": "fraud", "webhook_url": pipeline.url, "webhook_secret": SECRET},
            ).status_code
            == 409
        )
        bad = api.patch("/v1/retraining-policies/fraud", json={"gates": {"cooldown": "soon"}})
        assert bad.status_code == 422 and "cooldown" in bad.text
        assert (
            api.post(
                "/v1/retraining-policies",
                json={"model": "nope", "webhook_url": pipeline.url, "webhook_secret": SECRET},
            ).status_code
            == 404
        )
        assert api.delete("/v1/retraining-policies/fraud").status_code == 204
        assert len(triggers(api)) == 1
        assert api.post(f"/v1/triggers/{trigger['id']}/approve").status_code == 409  # nowhere to dispatch


def iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
