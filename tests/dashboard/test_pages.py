"""Each page against the demo API: what it reads, what it shows, what its buttons do."""

from __future__ import annotations

import pandas as pd
import pytest

from driftline.dashboard import ui
from tests.dashboard.conftest import OpenPage, chart_titles, figures, open_page, texts, titled
from tests.dashboard.stack import DemoStack

pytestmark = pytest.mark.slow


def firing_drift_alert(demo: DemoStack) -> dict[str, object]:
    alerts = demo.get("/v1/alerts", state="firing")
    found = [a for a in alerts if a["detector"] == "feature_drift" and a["feature"] and not a["slice"]]
    assert found, [(a["detector"], a["metric"], a["feature"]) for a in alerts]
    alert: dict[str, object] = found[0]
    return alert


def test_overview_shows_each_model_its_alerts_triggers_and_readiness(demo: DemoStack, page: OpenPage) -> None:
    at = page("overview")
    text = texts(at)
    assert at.title[0].value == "Overview"
    assert "loan_default" in text
    assert "amount" in text  # drifted in the newest window
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Open alerts"]) == len(demo.get("/v1/overview")["alerts"]) > 0
    assert int(metrics["Triggers waiting"]) >= 1
    assert metrics["roc_auc (realised)"] not in ("", "–")
    assert "Drifted-feature share" in chart_titles(at)
    # the open alerts table links each alert to the page and window that explain it
    table = at.dataframe[0].value
    assert {"severity", "rule", "explain"} <= set(table.columns)
    assert all(str(u).startswith("./") and "alert=" in str(u) for u in table["explain"])
    # readiness: one panel per version, each item passes or says what is missing
    panels = [e.label for e in at.expander]
    assert any("loan_default · v1" in p for p in panels) and any("loan_default · v2" in p for p in panels)
    readiness = demo.get("/v1/models/loan_default/versions/v1/readiness")
    for item in readiness["items"]:
        assert item["label"] in text


def test_drift_page_opens_on_a_drifted_feature_with_heatmap_distribution_and_history(page: OpenPage) -> None:
    at = page("drift")
    assert at.selectbox(key="feature").value == "amount"  # drifted most often in the range
    heat = titled(at, "Feature drift")
    grid = heat["data"][0]
    assert grid["type"] == "heatmap" and "amount" in grid["y"] and "country" in grid["y"]
    marks = heat["data"][1]
    assert marks["name"] == "drift verdict" and "amount" in marks["y"]
    dist = titled(at, "amount: reference vs")
    assert [t["name"] for t in dist["data"]] == ["reference", "current"]
    assert abs(sum(dist["data"][0]["y"]) - 1) < 1e-6 and abs(sum(dist["data"][1]["y"]) - 1) < 1e-6
    history = titled(at, "amount: wasserstein per window")
    assert any(t["name"].startswith("alert (") for t in history["data"])
    titles = chart_titles(at)
    assert "Drift of the model's outputs" in titles and "Share of drifted features" in titles
    assert any("data-quality rates" in t for t in titles)
    assert "Drifted in" in texts(at) and "amount" in texts(at)
    at.button(key="build-report").click().run()  # Evidently's report of the window, built on demand
    assert not at.exception
    (download,) = at.get("download_button")
    assert download.proto.label == "Open the Evidently report (HTML)"


def test_categorical_feature_and_window_come_from_the_url(page: OpenPage, demo: DemoStack) -> None:
    rows = demo.get("/v1/models/loan_default/metrics", detector="dataset_drift", version="v1")["items"]
    window = sorted(r["window_start"] for r in rows if r["status"] == "ok")[-3]
    at = page("drift", {"feature": "country", "window": window[:16] + "Z"})
    assert at.selectbox(key="feature").value == "country"
    assert at.selectbox(key="window").value == window[:16] + "Z"
    dist = titled(at, "country: reference vs")
    assert "BR" in dist["data"][1]["x"]  # the new country shows up in the current bars


def test_an_alert_link_opens_the_window_that_explains_it(page: OpenPage, demo: DemoStack) -> None:
    alert = firing_drift_alert(demo)
    where, params = ui.link_params(alert)
    assert where == "drift" and params["alert"] == str(alert["id"])
    at = page(where, params)
    assert at.selectbox(key="feature").value == alert["feature"]
    assert at.selectbox(key="window").value == ui.window_key(pd.Timestamp(str(alert["window_start"])))
    assert at.selectbox(key="version").value == alert["version"]
    assert at.selectbox(key="range").value == "custom"
    assert f"Linked from alert #{alert['id']}" in texts(at)
    # a notification's link carries only the alert: the same view follows from it
    short = page("drift", {"model": "loan_default", "alert": str(alert["id"])})
    assert short.selectbox(key="feature").value == alert["feature"]
    assert short.selectbox(key="window").value == at.selectbox(key="window").value
    assert short.selectbox(key="range").value == "custom"


def test_performance_page_realised_estimated_labels_calibration_slices_versions(
    page: OpenPage, demo: DemoStack
) -> None:
    at = page("performance")
    assert at.selectbox(key="metric").value == "roc_auc"
    perf = titled(at, "roc_auc: realised vs estimated")
    names = {t.get("name") for t in perf["data"]}
    assert {"realised", "estimated", "expected band"} <= names
    estimated = next(t for t in perf["data"] if t.get("name") == "estimated")
    realised = next(t for t in perf["data"] if t.get("name") == "realised")
    assert max(estimated["x"]) > max(realised["x"])  # estimates reach the windows labels have not
    assert any(s.get("y0") == s.get("y1") for s in perf["layout"].get("shapes", []))  # reference level
    titles = chart_titles(at)
    assert {"Label coverage", "Label delay", "Expected calibration error (ECE)"} <= set(titles)
    reliability = titled(at, "Reliability diagram")
    assert len(reliability["data"][1]["x"]) >= 5
    slices = next(d.value for d in at.dataframe if "slice" in d.value.columns and "low" in d.value.columns)
    assert list(slices["accuracy"]) == sorted(slices["accuracy"])  # worst first
    assert (slices["low"] <= slices["accuracy"]).all() and (slices["accuracy"] <= slices["high"]).all()
    assert "accuracy per slice (x: flagged)" in titles
    assert "Challenger minus champion" in titles and "Prediction agreement" in titles
    discovered = demo.get(
        "/v1/models/loan_default/metrics", detector="slice_performance", metric="discovered"
    )
    if any(r["version"] == "v1" and r["status"] == "ok" for r in discovered["items"]):
        assert "Discovered slices" in texts(at)


def test_operations_page_throughput_latency_errors_volume_freshness(page: OpenPage) -> None:
    at = page("operations")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Latency p95"].endswith("ms") and metrics["Throughput"].endswith("/h")
    assert metrics["Prediction freshness"] != "–"
    assert set(at.selectbox(key="stage").options) >= {"feature_store", "inference"}
    titles = chart_titles(at)
    for title in (
        "Throughput",
        "Volume against expected",
        "Latency, whole request",
        "Latency, stage feature_store",
        "Error and timeout rates",
        "Errors by failing stage or dependency",
        "Age of the newest prediction and label",
    ):
        assert title in titles
    latency = titled(at, "Latency, whole request")
    assert {"p50", "p95", "p99"} <= {t["name"] for t in latency["data"]}
    causes = titled(at, "Errors by failing stage or dependency")
    assert max(causes["data"][0]["y"]) > 0  # the feature store failed for a while


def test_alerts_page_acknowledges_and_rejects_through_the_api(page: OpenPage, demo: DemoStack) -> None:
    at = page("alerts")
    text = texts(at)
    assert "Retraining trigger #" in text and "Dead-lettered notifications" in text
    dead = at.dataframe[-1].value
    assert len(dead) == len(demo.get("/v1/outbox", state="dead")) >= 1
    assert (dead["target"] == "channel refused").all() and dead["last error"].notna().all()
    firing = [a for a in demo.get("/v1/alerts", model="loan_default", state="firing") if not a["acked_at"]]
    target = firing[0]
    links = [str(getattr(h, "value", "")) for h in at.get("html")]
    explain = [h for h in links if f'data-key="explain-{target["id"]}"' in h]
    assert explain and f"alert={target['id']}" in explain[0]

    at.button(key=f"ack-{target['id']}").click().run()
    assert not at.exception
    acked = demo.get(f"/v1/alerts/{target['id']}")
    assert acked["acked_at"] and acked["acked_by"]
    assert f"Alert {target['id']} acknowledged by {acked['acked_by']}" in texts(at)

    (trigger,) = demo.get("/v1/triggers", state="proposed")
    at.text_input(key=f"note-{trigger['id']}").input("not before the quarter closes")
    at.button(key=f"reject-{trigger['id']}").click().run()
    assert not at.exception
    done = demo.get(f"/v1/triggers/{trigger['id']}")
    assert done["state"] == "rejected" and done["decided_by"]
    assert done["history"][-1]["note"] == "not before the quarter closes"
    assert f"Trigger {trigger['id']} rejected by {done['decided_by']}" in texts(at)
    with pytest.raises(KeyError):  # decided: no buttons any more
        at.button(key=f"approve-{trigger['id']}")


def test_a_refused_key_or_a_missing_api_is_a_message(
    demo: DemoStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftline.dashboard import api as dashboard_api
    from driftline.dashboard.launch import KEY_ENV, URL_ENV

    dashboard_api.clear_cache()
    monkeypatch.setenv(URL_ENV, demo.url)
    monkeypatch.setenv(KEY_ENV, "not-a-key-of-this-api-0123456789")
    at = open_page("overview")
    assert "refused the dashboard's key" in texts(at)
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9")
    at = open_page("overview")
    assert "could not answer" in texts(at)
    monkeypatch.delenv(URL_ENV)
    at = open_page("overview")
    assert URL_ENV in texts(at)
    dashboard_api.clear_cache()


def test_figures_are_json_the_browser_can_draw(page: OpenPage) -> None:
    for name in ("overview", "drift", "performance", "operations"):
        at = page(name)
        assert figures(at), name
