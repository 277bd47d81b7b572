"""The dashboard's read views on both stacks: overview, distributions, readiness, Evidently reports,
and the compact options of GET /metrics. Data goes in through the API, detection runs for real."""

from __future__ import annotations

import copy
import time
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from driftline.ingest.state import AppState
from driftline.storage.meta.models import KeyRole
from tests.conftest import Api
from tests.support.models import FRAUD

DAY = 86_400
T0 = 1_780_000_000 // DAY * DAY  # a UTC midnight, in the past
HOOK = "http://127.0.0.1:9/retrain"
SECRET = "whsec-0123456789abcdef-signing"


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def state_of(api: Api) -> AppState:
    state: AppState = api.app.state.driftline  # type: ignore[attr-defined]
    return state


def fraud(*, owner: str | None = "risk-team") -> dict[str, Any]:
    schema = copy.deepcopy(FRAUD)
    schema["features"][0]["important"] = True  # amount
    if owner is None:
        schema.pop("owner")
    else:
        schema["owner"] = owner
    return schema


def rows(
    rng: np.random.Generator,
    n: int,
    start: int,
    seconds: int,
    *,
    prefix: str,
    scale: float = 1.0,
    version: str = "v1",
    new_country: float = 0.0,
) -> list[dict[str, Any]]:
    """Fraud predictions spread over [start, start + seconds); `scale` multiplies the amounts."""
    amount = rng.gamma(2.0, 100.0, n) * scale
    country = rng.choice(["FR", "DE", "US"], n, p=[0.5, 0.3, 0.2]).astype(object)
    country[rng.random(n) < new_country] = "BR"
    score = rng.beta(2, 5, n)
    ts = start + np.sort(rng.integers(0, seconds, n))
    return [
        {
            "request_id": f"{prefix}{i}",
            "version": version,
            "timestamp": int(ts[i]),
            "features": {
                "amount": round(float(amount[i]), 2),
                "age": int(rng.integers(18, 90)),
                "country": str(country[i]),
                "vip": bool(rng.random() < 0.3 * scale),
                "email": f"user{i % 40}@example.com",
                "ssn": f"123-45-{i % 10000:04d}",
            },
            "metadata": {"channel": "web" if i % 2 else "app", "region": "eu"},
            "score": float(score[i]),
            "prediction": int(score[i] >= 0.5),
            "latency_ms": float(5 + i % 20),
        }
        for i in range(n)
    ]


def send(api: Api, path: str, records: list[dict[str, Any]], model: str = "fraud") -> None:
    for i in range(0, len(records), 5000):
        r = api.post(
            path,
            content=orjson.dumps({"model": model, "records": records[i : i + 5000]}),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 202, r.text


def reference(rng: np.random.Generator, n: int, *, labels: bool = True) -> list[dict[str, Any]]:
    out = rows(rng, n, T0 - 30 * DAY, DAY, prefix="ref")
    for r in out:
        r.pop("version")
        if labels:
            r["label"] = int(rng.random() < r["score"])
    return out


def setup_model(
    api: Api, *, schema: dict[str, Any] | None = None, monitor: dict[str, Any] | None = None
) -> None:
    ok(api.post("/v1/models", json=schema or fraud()), 201)
    ok(
        api.post(
            "/v1/models/fraud/versions",
            json={"version": "v1", "role": "champion", "approval": "approved"},
        ),
        201,
    )
    ok(api.post("/v1/models/fraud/versions", json={"version": "v2", "role": "shadow"}), 201)
    ok(
        api.put(
            "/v1/models/fraud/monitors",
            json=monitor or {"window": "1d", "detectors": [{"kind": "data_quality"}]},
        )
    )


def metrics(api: Api, **params: Any) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = ok(api.get("/v1/models/fraud/metrics", params=params))["items"]
    return got


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# -- overview -----------------------------------------------------------------------------------


OVERVIEW_MONITOR = {
    "window": "1d",
    "detectors": [
        {"kind": "feature_drift", "slices": False},
        {"kind": "dataset_drift"},
        {"kind": "performance"},
        {"kind": "estimated_performance"},
        {"kind": "operations"},
    ],
}


def test_overview_reports_health_drift_performance_traffic_alerts_and_triggers(api: Api) -> None:
    rng = np.random.default_rng(11)
    setup_model(api, monitor=OVERVIEW_MONITOR)
    ok(api.post("/v1/models", json={**copy.deepcopy(FRAUD), "name": "quiet"}), 201)
    ok(api.put("/v1/models/fraud/versions/v1/reference", json={"records": reference(rng, 1500)}))
    policy = {
        "model": "fraud",
        "drift": {"windows": 3},
        "gates": {"min_samples": 500, "min_label_coverage": 0.1, "cooldown": "7d"},
        "webhook_url": HOOK,
        "webhook_secret": SECRET,
    }
    ok(api.post("/v1/retraining-policies", json=policy), 201)

    # four closed UTC days, amounts three times larger from the second; labels for the first three
    today = int(time.time()) // DAY * DAY
    first = today - 4 * DAY
    days = [
        rows(rng, 500, first + d * DAY, DAY, prefix=f"d{d}-", scale=1.0 if d == 0 else 3.0) for d in range(4)
    ]
    now = time.time()
    latest = rows(rng, 20, int(now) - 90, 60, prefix="now-", scale=3.0)
    loaded = [r for day in days for r in day] + latest
    send(api, "/v1/predictions", loaded)
    labels = [
        {
            "request_id": r["request_id"],
            "label": int(rng.random() < r["score"]),
            "timestamp": r["timestamp"] + 60,
        }
        for day in days[:3]
        for r in day
        if rng.random() < 0.8
    ]
    send(api, "/v1/labels", labels)
    api.flush()
    ok(api.post("/v1/models/fraud/detect", json={"start": first, "end": today}))

    before = time.time()
    got = ok(api.get("/v1/overview"))
    after = time.time()
    by_name = {m["name"]: m for m in got["models"]}
    assert sorted(by_name) == ["fraud", "quiet"]
    model = by_name["fraud"]
    assert model["owner"] == "risk-team" and model["task"] == "binary"
    assert model["versions"] == [
        {"version": "v1", "role": "champion", "approval": "approved"},
        {"version": "v2", "role": "shadow", "approval": "pending"},
    ]
    assert model["last_window_end"] == iso(today)

    share = metrics(api, detector="dataset_drift", version="v1", slice="", status="ok")[-1]
    assert share["window_end"] == iso(today)
    assert model["drifted_share"] == pytest.approx(share["value"]) and share["value"] > 0

    # realised, from the newest labelled window (the last day has no labels yet)
    realised = metrics(api, detector="performance", metric="roc_auc", version="v1", slice="", status="ok")
    assert realised[-1]["window_end"] == iso(today - DAY)
    perf = model["performance"]
    assert perf["metric"] == "roc_auc" and perf["estimated"] is False
    assert perf["value"] == pytest.approx(realised[-1]["value"])
    assert perf["reference"] == pytest.approx(realised[-1]["details"]["reference"]["value"])
    assert perf["window_end"] == iso(today - DAY)

    stamps = np.array([r["timestamp"] for r in loaded])
    # the server counts whole seconds: its "24 hours ago" is its clock truncated to the second
    assert (
        int((stamps >= after - DAY).sum()) <= model["traffic_24h"] <= int((stamps >= int(before) - DAY).sum())
    )
    newest = float(stamps.max())
    assert before - newest - 1 <= model["freshness_seconds"] <= after - newest + 1

    active = ok(api.get("/v1/alerts", params={"model": "fraud", "state": "active"}))
    assert model["open_alerts"] == len(active) > 0
    rank = {"info": 0, "warning": 1, "critical": 2}
    worst = max(active, key=lambda a: rank[a["severity"]])["severity"]
    assert model["health"] == {"info": "ok"}.get(worst, worst)
    drift = [a for a in got["alerts"] if a["feature"] == "amount" and a["detector"] == "feature_drift"]
    assert drift and drift[0]["state"] == "firing" and drift[0]["model"] == "fraud"
    assert drift[0]["severity"] == "warning" and drift[0]["rule"] == "fraud: persistent feature drift"
    assert drift[0]["window_end"] == iso(today) and drift[0]["value"] is not None
    assert {a["id"] for a in got["alerts"]} == {a["id"] for a in active}
    assert set(got["alerts"][0]) >= {
        "id", "model", "severity", "state", "rule", "metric", "feature", "slice", "value", "threshold", "since",
    }  # fmt: skip

    proposed = ok(api.get("/v1/triggers", params={"state": "proposed"}))
    assert [t["id"] for t in got["triggers"]] == [t["id"] for t in proposed] and len(proposed) == 1
    trigger = got["triggers"][0]
    assert trigger["model"] == "fraud" and "drift: feature_drift" in trigger["summary"]
    assert "on amount" in trigger["summary"] and trigger["findings"] >= 1 and trigger["created_at"]

    quiet = by_name["quiet"]
    assert quiet["health"] == "unknown" and quiet["open_alerts"] == 0 and quiet["versions"] == []
    assert quiet["drifted_share"] is None and quiet["performance"] is None
    assert (
        quiet["traffic_24h"] == 0 and quiet["freshness_seconds"] is None and quiet["last_window_end"] is None
    )


# -- distributions ------------------------------------------------------------------------------


def loaded_window(api: Api, *, seed: int = 5) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A reference and one detected day (T0) of drifted traffic; returns (reference, current)."""
    rng = np.random.default_rng(seed)
    setup_model(api)
    ref = reference(rng, 2000)
    ok(api.put("/v1/models/fraud/versions/v1/reference", json={"records": ref}))
    current = rows(rng, 1500, T0, DAY, prefix="c", scale=1.5, new_country=0.1)
    send(api, "/v1/predictions", current)
    api.flush()
    ok(api.post("/v1/models/fraud/detect", json={"start": T0, "end": T0 + DAY}))
    return ref, current


def distribution(api: Api, feature: str, **params: Any) -> dict[str, Any]:
    got: dict[str, Any] = ok(
        api.get(
            "/v1/models/fraud/distributions",
            params={"feature": feature, "start": T0, "end": T0 + DAY, **params},
        )
    )
    return got


def test_distributions_match_numpy_histograms_of_the_loaded_rows(api: Api) -> None:
    ref, cur = loaded_window(api)

    for feature, values in (
        ("amount", lambda r: r["features"]["amount"]),
        ("age", lambda r: r["features"]["age"]),
        ("@score", lambda r: r["score"]),
    ):
        got = distribution(api, feature)
        assert got["kind"] == "numeric" and got["version"] == "v1" and got["reference_version"] == "v1"
        assert "values" not in got and got["start"] == iso(T0) and got["end"] == iso(T0 + DAY)
        raw_ref = np.array([values(r) for r in ref], dtype=float)
        raw_cur = np.array([values(r) for r in cur], dtype=float)
        edges = np.array(got["edges"])
        assert len(edges) == 31 and len(got["reference_share"]) == len(got["current_share"]) == 30
        assert edges[0] == pytest.approx(min(raw_ref.min(), raw_cur.min()))
        assert edges[-1] == pytest.approx(max(raw_ref.max(), raw_cur.max()))
        assert np.allclose(np.diff(edges), np.diff(edges)[0])
        assert got["reference_rows"] == len(ref) and got["current_rows"] == len(cur)
        for raw, shares in ((raw_ref, got["reference_share"]), (raw_cur, got["current_share"])):
            expected = np.histogram(raw, bins=edges)[0] / len(raw)
            assert np.abs(np.array(shares) - expected).max() < 0.02, feature
            assert sum(shares) == pytest.approx(1.0, abs=1e-6)

    got = distribution(api, "country")
    assert got["kind"] == "categorical" and "edges" not in got
    for raw, shares in (
        ([r["features"]["country"] for r in ref], got["reference_share"]),
        ([r["features"]["country"] for r in cur], got["current_share"]),
    ):
        expected = {v: raw.count(v) / len(raw) for v in got["values"]}
        assert shares == pytest.approx([expected[v] for v in got["values"]], abs=1e-9)
    assert set(got["values"]) == {"FR", "DE", "US", "BR"}
    assert got["reference_share"][got["values"].index("BR")] == 0.0

    two = distribution(api, "country", bins=2)
    assert two["values"][-1] == "(other)" and len(two["values"]) == 3
    assert sum(two["current_share"]) == pytest.approx(1.0)

    vip = distribution(api, "vip")
    assert set(vip["values"]) == {"true", "false"}
    share_true = sum(r["features"]["vip"] for r in cur) / len(cur)
    assert vip["current_share"][vip["values"].index("true")] == pytest.approx(share_true)

    hashed = distribution(api, "email")
    assert not any("@" in v for v in hashed["values"])  # stored hashed, shown hashed

    prediction = distribution(api, "@prediction")
    assert prediction["kind"] == "categorical" and set(prediction["values"]) <= {"0", "1"}

    # a window without traffic keeps the reference and reports no current rows
    empty = distribution(api, "amount", start=T0 + 2 * DAY, end=T0 + 3 * DAY)
    assert empty["current_rows"] == 0 and sum(empty["current_share"]) == 0
    assert empty["reference_rows"] == len(ref)

    # the shadow has no reference of its own: compared with the champion's
    shadow = distribution(api, "amount", version="v2")
    assert shadow["reference_version"] == "v1" and shadow["current_rows"] == 0


# -- readiness ----------------------------------------------------------------------------------


def readiness(api: Api) -> dict[str, dict[str, Any]]:
    got = ok(api.get("/v1/models/fraud/versions/v1/readiness"))
    assert got["model"] == "fraud" and got["version"] == "v1"
    items = {i["key"]: i for i in got["items"]}
    assert got["ready"] is all(i["ok"] for i in items.values())
    return items


def failing(api: Api) -> set[str]:
    return {k for k, i in readiness(api).items() if not i["ok"]}


KEYS = {"owner", "schema", "reference", "eval_report", "latency", "alerting", "retraining_policy", "approval"}


def test_readiness_items_flip_as_each_piece_is_fixed(api: Api) -> None:
    rng = np.random.default_rng(3)
    ok(api.post("/v1/models", json=fraud(owner=None)), 201)
    ok(api.post("/v1/models/fraud/versions", json={"version": "v1", "role": "champion"}), 201)
    items = readiness(api)
    assert set(items) == KEYS and failing(api) == KEYS
    assert items["owner"]["detail"].startswith("no owner")
    assert "no live predictions" in items["schema"]["detail"]
    assert "no enabled alert channel" in items["alerting"]["detail"]
    assert items["approval"]["detail"] == "approval is pending"

    # the owner is set on the registered model, and re-registering says what differs
    assert ok(api.patch("/v1/models/fraud", json={"owner": "risk-team"}))["owner"] == "risk-team"
    assert failing(api) == KEYS - {"owner"}
    assert readiness(api)["owner"]["detail"] == "owned by risk-team"
    conflict = api.post("/v1/models", json=fraud(owner="someone-else"))
    assert conflict.status_code == 409 and "owner" in conflict.text
    assert ok(api.post("/v1/models", json=fraud()), 200)["owner"] == "risk-team"

    # the evaluation report is lineage of a version, added when the evaluation is written
    uri = "s3://models/fraud/v1/eval.html"
    patched = ok(api.patch("/v1/models/fraud/versions/v1", json={"eval_report_uri": uri}))
    assert patched["eval_report_uri"] == uri and patched["role"] == "champion"
    assert patched["approval"] == "pending"
    assert failing(api) == KEYS - {"owner", "eval_report"}
    assert readiness(api)["eval_report"]["detail"] == "s3://models/fraud/v1/eval.html"

    # live traffic that breaks the schema and carries no latency
    bad = rows(rng, 30, T0, 3600, prefix="bad")
    for r in bad:
        r["features"]["country"] = "XX"
        r.pop("latency_ms")
    send(api, "/v1/predictions", bad)
    api.flush()
    items = readiness(api)
    assert not items["schema"]["ok"] and "30 of 30 live predictions" in items["schema"]["detail"]
    assert not items["latency"]["ok"] and items["latency"]["detail"] == "live predictions carry no latency_ms"

    # enough clean traffic, with latency, brings violations under 1%
    send(api, "/v1/predictions", rows(rng, 3500, T0 + 3600, 3600, prefix="good"))
    api.flush()
    items = readiness(api)
    assert items["schema"]["ok"] and items["latency"]["ok"], items
    assert items["schema"]["detail"] == "3530 live predictions, 0.8% breaking the schema"
    assert items["latency"]["detail"] == "3500 of 3530 live predictions carry latency_ms"
    assert failing(api) == {"reference", "alerting", "retraining_policy", "approval"}

    # a reference without labels is not enough; with labels it is
    ok(api.put("/v1/models/fraud/versions/v1/reference", json={"records": reference(rng, 200, labels=False)}))
    items = readiness(api)
    assert not items["reference"]["ok"] and "without labels" in items["reference"]["detail"]
    ok(api.put("/v1/models/fraud/versions/v1/reference", json={"records": reference(rng, 200)}))
    items = readiness(api)
    assert items["reference"]["ok"] and items["reference"]["detail"].startswith("200 reference rows, ")

    # a channel reaches the default rules; switching every rule off breaks it again
    channel = {"name": "ml-alerts", "type": "webhook", "url": HOOK, "secret": SECRET}
    ok(api.post("/v1/channels", json=channel), 201)
    assert readiness(api)["alerting"]["ok"]
    rules = ok(api.get("/v1/rules", params={"model": "fraud"}))
    for r in rules:
        ok(api.patch(f"/v1/rules/{r['id']}", json={"enabled": False}))
    assert "no enabled alert rule" in readiness(api)["alerting"]["detail"]
    ok(api.patch(f"/v1/rules/{rules[0]['id']}", json={"enabled": True}))
    assert failing(api) == {"retraining_policy", "approval"}

    policy = {"model": "fraud", "webhook_url": HOOK, "webhook_secret": SECRET}
    ok(api.post("/v1/retraining-policies", json=policy), 201)
    assert failing(api) == {"approval"}

    assert (
        ok(api.patch("/v1/models/fraud/versions/v1", json={"approval": "approved"}))["approval"] == "approved"
    )
    got = ok(api.get("/v1/models/fraud/versions/v1/readiness"))
    assert got["ready"] is True and all(i["ok"] for i in got["items"])


# -- the Evidently report -----------------------------------------------------------------------


def names(page: str, column: str) -> bool:
    """Whether the report names a column (as a JSON string, possibly HTML-escaped)."""
    return f'"{column}"' in page or f"&quot;{column}&quot;" in page


def test_evidently_report_names_the_features_and_never_shows_a_raw_pii_value(api: Api) -> None:
    ref, cur = loaded_window(api, seed=8)
    r = api.get("/v1/models/fraud/report", params={"start": T0, "end": T0 + DAY, "rows": 800})
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<html" in page[:1000].lower()
    for feature in ("amount", "age", "country", "vip", "email"):
        assert names(page, feature), feature
    assert not names(page, "ssn")  # pii: drop is not stored at all
    assert "123-45-" not in page
    raw_emails = {row["features"]["email"] for row in ref + cur}
    assert not [e for e in raw_emails if e in page]
    assert "@example.com" not in page
    hashed = distribution(api, "email")["values"]
    assert any(h in page for h in hashed)  # the hashed values are what Evidently saw

    again = api.get("/v1/models/fraud/report", params={"start": T0, "end": T0 + DAY, "rows": 800})
    assert again.status_code == 200

    # a feature a later version adds has no values in this window: left out, not an error
    grown = {"version": "v3", "role": "challenger", "features": [{"name": "tenure", "kind": "numeric"}]}
    ok(api.post("/v1/models/fraud/versions", json=grown), 201)
    r = api.get("/v1/models/fraud/report", params={"start": T0, "end": T0 + DAY, "rows": 300})
    assert r.status_code == 200 and names(r.text, "amount") and not names(r.text, "tenure")

    # limits and what is not there
    r = api.get("/v1/models/fraud/report", params={"start": T0, "end": T0 + DAY, "rows": 50_001})
    assert r.status_code == 422 and "rows" in r.json()["detail"]
    r = api.get("/v1/models/fraud/report", params={"start": T0, "end": T0 + DAY, "rows": 0})
    assert r.status_code == 422
    r = api.get("/v1/models/fraud/report", params={"start": T0 + DAY, "end": T0})
    assert r.status_code == 422 and r.json()["detail"] == "start must come before end"
    r = api.get("/v1/models/fraud/report", params={"start": T0 + 5 * DAY, "end": T0 + 6 * DAY})
    assert r.status_code == 404 and "no predictions" in r.json()["detail"]
    r = api.get("/v1/models/fraud/report", params={"start": T0, "end": T0 + DAY, "version": "v9"})
    assert r.status_code == 404


def test_limits_and_missing_things_answer_404_or_422(api: Api) -> None:
    setup_model(api)
    send(api, "/v1/predictions", rows(np.random.default_rng(1), 50, T0, 3600, prefix="x"))
    api.flush()
    # no reference anywhere yet
    r = api.get("/v1/models/fraud/distributions", params={"feature": "amount", "start": T0, "end": T0 + DAY})
    assert r.status_code == 404 and "no reference" in r.json()["detail"]
    r = api.get("/v1/models/fraud/report", params={"start": T0, "end": T0 + DAY})
    assert r.status_code == 404 and "no reference" in r.json()["detail"]

    ok(
        api.put(
            "/v1/models/fraud/versions/v1/reference",
            json={"records": reference(np.random.default_rng(2), 100)},
        )
    )
    base = {"start": T0, "end": T0 + DAY}
    for params, status, text in (
        ({"feature": "ssn"}, 404, "pii: drop"),
        ({"feature": "nope"}, 404, "no column 'nope'"),
        ({"feature": "amount", "bins": 0}, 422, "bins"),
        ({"feature": "amount", "bins": 201}, 422, "bins"),
        ({"feature": "amount", "version": "v9"}, 404, "v9"),
        ({"feature": "amount", "start": "yesterday"}, 422, "start"),
        ({"feature": "amount", "start": T0, "end": T0 + 400 * DAY}, 422, "366 days"),
        ({}, 422, "feature"),
    ):
        r = api.get("/v1/models/fraud/distributions", params={**base, **params})
        assert r.status_code == status and text in r.json()["detail"], (params, r.text)
    r = api.get("/v1/models/fraud/distributions", params={"feature": "amount", "start": T0, "end": T0 + DAY})
    assert r.status_code == 200 and r.json()["current_rows"] == 0  # nothing detected, nothing summarised
    assert r.json()["reference_rows"] == 100

    assert api.get("/v1/models/nope/versions/v1/readiness").status_code == 404
    assert api.get("/v1/models/fraud/versions/v9/readiness").status_code == 404
    assert api.get("/v1/models/nope/distributions", params={"feature": "amount"}).status_code == 404
    assert api.get("/v1/models/nope/report").status_code == 404
    assert (
        api.get("/v1/overview", headers={"Authorization": "Bearer wrong-key-0123456789"}).status_code == 401
    )


def test_a_key_of_another_project_sees_none_of_it(api: Api) -> None:
    setup_model(api)
    ok(
        api.put(
            "/v1/models/fraud/versions/v1/reference",
            json={"records": reference(np.random.default_rng(4), 100)},
        )
    )
    with state_of(api).meta.repos() as repos:
        other, _ = repos.keys.create("other", KeyRole.READ, "their dashboard")
    headers = {"Authorization": f"Bearer {other}"}
    got = ok(api.get("/v1/overview", headers=headers))
    assert got == {"models": [], "alerts": [], "triggers": []}
    for path, params in (
        ("/v1/models/fraud/distributions", {"feature": "amount", "start": T0, "end": T0 + DAY}),
        ("/v1/models/fraud/versions/v1/readiness", {}),
        ("/v1/models/fraud/report", {"start": T0, "end": T0 + DAY}),
        ("/v1/models/fraud/metrics", {"details": "false"}),
    ):
        r = api.get(path, params=params, headers=headers)
        assert r.status_code == 404, (path, r.text)
    assert [m["name"] for m in ok(api.get("/v1/overview"))["models"]] == ["fraud"]


# -- GET /metrics, compact ----------------------------------------------------------------------


def test_metrics_take_several_values_a_window_length_and_leave_details_out(api: Api) -> None:
    monitor = {
        "window": "1d",
        "detectors": [{"kind": "feature_drift", "slices": False}, {"kind": "data_quality"}],
    }
    rng = np.random.default_rng(9)
    setup_model(api, monitor=monitor)
    ok(api.put("/v1/models/fraud/versions/v1/reference", json={"records": reference(rng, 600)}))
    send(api, "/v1/predictions", rows(rng, 600, T0, 2 * DAY, prefix="m"))
    api.flush()
    ok(api.post("/v1/models/fraud/detect", json={"start": T0, "end": T0 + 2 * DAY}))
    ok(api.post("/v1/models/fraud/detect", json={"start": T0, "end": T0 + 2 * DAY, "window": "12h"}))

    full = metrics(api, detector="feature_drift", feature="amount")
    assert {m["window_end"] for m in full} == {iso(T0 + h * 3600) for h in (12, 24, 36, 48)}
    assert all(isinstance(m["details"], dict) and m["details"]["method"] == m["metric"] for m in full)

    compact = metrics(api, detector="feature_drift", feature="amount", details="false")
    assert all("details" not in m for m in compact)
    assert [{k: v for k, v in m.items() if k != "details"} for m in full] == compact

    daily = metrics(api, detector="feature_drift", feature="amount", window="1d")
    assert [m["window_end"] for m in daily] == [iso(T0 + DAY), iso(T0 + 2 * DAY)]

    both = metrics(api, detector="feature_drift", feature="amount,country", window="1d", details="false")
    assert {m["feature"] for m in both} == {"amount", "country"} and len(both) == 4
    methods = {m["metric"] for m in both}
    one = metrics(api, detector="feature_drift,data_quality", metric=",".join(sorted(methods)), window="1d")
    assert {m["detector"] for m in one} == {"feature_drift"} and {m["metric"] for m in one} == methods
    mixed = metrics(api, detector="feature_drift,data_quality", feature="amount", window="1d")
    assert {m["detector"] for m in mixed} == {"feature_drift", "data_quality"}

    page = ok(api.get("/v1/models/fraud/metrics", params={"feature": "amount", "limit": 3}))
    assert len(page["items"]) == 3 and page["truncated"] is True

    r = api.get("/v1/models/fraud/metrics", params={"window": "fortnight"})
    assert r.status_code == 422 and "window" in r.json()["detail"]


def test_a_corrected_reference_with_the_same_ids_and_times_replaces_the_old_ones_summaries(api: Api) -> None:
    """A reference uploaded again with the same request ids, timestamps and row count but new
    values (a fixed feature pipeline) is what drift and performance are judged against next."""
    ref, _ = loaded_window(api)
    fixed = [{**r, "features": {**r["features"], "amount": 10 * r["features"]["amount"]}} for r in ref]
    ok(api.put("/v1/models/fraud/versions/v1/reference", json={"records": fixed}))
    got = distribution(api, "amount")
    raw = np.array([r["features"]["amount"] for r in fixed])
    assert got["reference_rows"] == len(fixed)
    assert got["edges"][-1] == pytest.approx(raw.max())
    expected = np.histogram(raw, bins=np.array(got["edges"]))[0] / len(raw)
    assert np.abs(np.array(got["reference_share"]) - expected).max() < 0.02
