"""Real detection on drifted data, through POST /detect, to a Slack message; on both stacks."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson

from tests.alerts.conftest import DAY, PUBLIC_URL, T0, channel, ok, outbox, register
from tests.alerts.receiver import Receiver
from tests.conftest import Api
from tests.support.models import fraud_records

MONITOR = {
    "window": "1d",
    "detectors": [{"kind": "feature_drift", "slices": False, "features": ["amount", "age"]}],
}


def predictions(day: int, n: int, *, shift: float, seed: int) -> list[dict[str, Any]]:
    """A day of fraud traffic; `shift` scales the amounts (drift) and leaves the ages alone."""
    records = fraud_records(n, seed=seed, prefix=f"d{day}-")
    for i, r in enumerate(records):
        r["timestamp"] = T0 + day * DAY + i * (DAY // n) + 5
        r["features"]["amount"] = r["features"]["amount"] * shift
    return records


def iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def test_drift_detected_by_post_detect_reaches_slack(api: Api) -> None:
    with Receiver(path="/services/T9/B9/e2eToken") as slack:
        register(api)
        ok(api.post("/v1/models/fraud/versions", json={"version": "v1", "role": "champion"}), 201)
        ok(api.put("/v1/models/fraud/monitors", json=MONITOR))
        reference = [{**r, "label": i % 2} for i, r in enumerate(fraud_records(600, seed=1))]
        for r in reference:
            r.pop("version")
        ok(api.put("/v1/models/fraud/versions/v1/reference", json={"records": reference}))
        channel(api, "ml-alerts", slack.url, type="slack")
        rng = np.random.default_rng(42)
        records = []
        for day in range(5):  # day 0 as the reference, then amounts three times larger
            records += predictions(day, 300, shift=1.0 if day == 0 else 3.0, seed=int(rng.integers(1 << 30)))
        r = api.post(
            "/v1/predictions",
            content=orjson.dumps({"model": "fraud", "records": records}),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 202, r.text

        detected = ok(api.post("/v1/models/fraud/detect", json={"start": T0, "end": T0 + 5 * DAY}))
        assert detected["windows"] == 5 and detected["errors"] == []
        (message,) = slack.wait_requests(1)
        time.sleep(0.3)
        assert len(slack.requests) == 1  # age does not drift; amount fires once, on day 3

        rows = ok(api.get("/v1/models/fraud/metrics", params={"feature": "amount"}))["items"]
        by_day = {(m["window_start"]): m for m in rows}
        assert [by_day[iso(T0 + d * DAY)]["details"]["drift_adjusted"] for d in range(5)] == [
            False,
            True,
            True,
            True,
            True,
        ]
        fired = by_day[iso(T0 + 3 * DAY)]
        body = message.json
        fields = {
            f["text"].split("\n", 1)[0].strip("*"): f["text"].split("\n", 1)[1]
            for f in body["blocks"][2]["fields"]
        }
        method = fired["metric"]
        assert fields["Model"] == "fraud" and fields["Version"] == "v1" and fields["Severity"] == "warning"
        assert fields["What fired"] == f"feature_drift `{method}` on `amount`"
        assert fields["Value"].startswith(
            f"{fired['value']:.4g} (detector threshold {fired['threshold']:.4g})"
        )
        assert fields["Persistence"] == "3 of the last 4 windows (fires at 3)"
        assert fields["Window"] == f"{iso(T0 + 3 * DAY)} to {iso(T0 + 4 * DAY)}"
        assert body["blocks"][0]["text"]["text"] == "Firing: fraud: persistent feature drift"
        button = body["blocks"][3]["elements"][0]
        assert button["url"].startswith(f"{PUBLIC_URL}/drift?model=fraud&version=v1&detector=feature_drift")
        assert "text" in body and "fraud" in body["text"] and method in body["text"]

        # the same detection again: results replaced, state unchanged, nothing sent
        ok(api.post("/v1/models/fraud/detect", json={"start": T0, "end": T0 + 5 * DAY}))
        time.sleep(0.3)
        assert len(slack.requests) == 1 and len(outbox(api)) == 1
        (alert,) = ok(api.get("/v1/alerts", params={"model": "fraud"}))
        assert (alert["state"], alert["feature"], alert["metric"], alert["breaches"]) == (
            "firing",
            "amount",
            method,
            4,
        )


def test_scheduled_detection_evaluates_rules_once_per_window(api: Api) -> None:
    """The scheduler's jobs call the same hook after each chunk, before the watermark moves."""
    from driftline.detectors.scheduler import DetectionJobs
    from tests.alerts.conftest import SECRET, disable_defaults, rule, state_of

    with Receiver(secret=SECRET) as hook:
        register(api)
        disable_defaults(api)
        ok(api.post("/v1/models/fraud/versions", json={"version": "v1", "role": "champion"}), 201)
        monitor = {"window": "1d", "lookback": "2d", "delay": "0m", "detectors": [{"kind": "operations"}]}
        ok(api.put("/v1/models/fraud/monitors", json=monitor))
        channel(api, "hook", hook.url)
        rule(
            api,
            name="traffic seen",
            selector={"detector": "operations", "metric": "throughput"},
            condition={"op": ">", "threshold": 0},
        )
        records = []
        for day in range(3):
            records += predictions(day, 48, shift=1.0, seed=day)
        ok(api.post("/v1/predictions", json={"model": "fraud", "records": records}), 202)
        api.flush()
        state = state_of(api)
        jobs = DetectionJobs(state.meta, state.events, state.runner, after_run=state.alerts.after_run)
        (run,) = jobs.sweep(now=T0 + 2 * DAY + 600)
        assert (run.status, run.windows, run.errors) == ("done", 2, [])
        (message,) = hook.wait_requests(1)
        fired = message.json["alert"]
        assert fired["metric"] == "throughput" and fired["window"]["start"] == iso(T0)
        (run,) = jobs.sweep(now=T0 + 3 * DAY + 600)  # one more window, still breaching: no new notification
        assert run.windows == 1
        time.sleep(0.3)
        assert len(hook.requests) == 1
        (alert,) = ok(api.get("/v1/alerts", params={"state": "firing"}))
        assert alert["window_start"] == iso(T0 + 2 * DAY) and alert["breaches"] == 1
