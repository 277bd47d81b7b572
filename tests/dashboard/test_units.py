"""The dashboard's pure parts: launch command, time ranges, links, drift scores, figures, frames."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from typer.testing import CliRunner

from driftline.cli import app as cli
from driftline.dashboard import charts, launch, ui
from driftline.dashboard.api import metrics_frame, params_of
from driftline.dashboard.views import drift, performance

ANCHOR = datetime(2026, 11, 30, tzinfo=UTC)


def row(
    day: int, feature: str, value: float, *, metric: str = "wasserstein", alert: bool = False
) -> dict[str, object]:
    start = ANCHOR - timedelta(days=10 - day)
    return {
        "window_start": start.isoformat().replace("+00:00", "Z"),
        "window_end": (start + timedelta(days=1)).isoformat().replace("+00:00", "Z"),
        "version": "v1",
        "detector": "feature_drift",
        "metric": metric,
        "feature": feature,
        "slice": "",
        "value": value,
        "threshold": 0.1 if metric != "ks" else 0.05,
        "alert": alert,
        "sample_size": 100,
        "status": "ok",
        "details": {},
    }


def test_the_key_goes_through_the_environment_never_the_command_line() -> None:
    argv = launch.command(8600, "127.0.0.1")
    assert argv[1:4] == ["-m", "driftline.dashboard", "run"] and str(launch.APP) in argv
    env = launch.environment("http://api:8000/", "secret-key-0123456789", {"PATH": "/bin"})
    assert env[launch.URL_ENV] == "http://api:8000" and env[launch.KEY_ENV] == "secret-key-0123456789"
    assert "secret-key-0123456789" not in " ".join(argv)
    with pytest.raises(ValueError, match="key"):
        launch.start("http://api:8000", "")


def test_the_command_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIFTLINE_API_KEY", raising=False)
    got = CliRunner().invoke(cli, ["dashboard", "--api", "http://127.0.0.1:9"])
    assert got.exit_code == 2 and "key is needed" in got.output


def test_ranges_end_at_the_newest_window_and_custom_ones_cover_whole_days() -> None:
    assert ui.time_range("7d", ANCHOR, None) == (ANCHOR - timedelta(days=7), ANCHOR)
    assert ui.time_range("unknown", ANCHOR, None) == (ANCHOR - timedelta(days=30), ANCHOR)
    start, end = ui.time_range("custom", ANCHOR, (date(2026, 11, 20), date(2026, 11, 18)))
    assert (start, end) == (datetime(2026, 11, 18, tzinfo=UTC), datetime(2026, 11, 21, tzinfo=UTC))
    assert ui.anchor_of({"last_window_end": "2026-11-30T00:00:00Z"}) == ANCHOR


def test_an_alert_links_to_its_page_window_and_series() -> None:
    alert = {
        "id": 7,
        "model": "loan_default",
        "version": "v2",
        "detector": "feature_drift",
        "metric": "wasserstein",
        "feature": "amount",
        "slice": "",
        "window_start": "2026-11-28T13:00:00Z",
        "window_end": "2026-11-28T14:00:00Z",
    }
    page, params = ui.link_params(alert)
    assert page == "drift"
    assert params == {
        "model": "loan_default",
        "version": "v2",
        "alert": "7",
        "range": "custom",
        "start": "2026-11-27",
        "end": "2026-11-28",
        "window": "2026-11-28T13:00Z",
        "feature": "amount",
    }
    href = ui.url(page, params)
    parts = urlsplit(href)
    assert parts.path == "./drift" and parse_qs(parts.query)["window"] == ["2026-11-28T13:00Z"]
    assert ui.parse_time(params["window"]) == datetime(2026, 11, 28, 13, tzinfo=UTC)
    latency = {**alert, "detector": "operations", "metric": "latency_p95", "feature": "feature_store"}
    assert (
        ui.link_params(latency)[0] == "operations" and ui.link_params(latency)[1]["stage"] == "feature_store"
    )
    perf = {**alert, "detector": "performance", "metric": "accuracy", "feature": ""}
    assert ui.link_params(perf)[1]["metric"] == "accuracy" and "feature" not in ui.link_params(perf)[1]
    assert ui.link_params({**alert, "detector": "something_new"})[0] == "alerts"


def test_drift_scores_put_every_method_on_one_scale_where_one_is_the_line() -> None:
    assert drift.score("wasserstein", 0.2, 0.1, True, {}) == pytest.approx(2.0)
    assert drift.score("wasserstein", 5.0, 0.1, True, {}) == charts.SCORE_CAP
    assert drift.score("ks", 0.3, 0.05, True, {"p_value": 0.05}) == pytest.approx(1.0)
    assert drift.score("ks", 0.3, 0.05, True, {"p_adjusted": 0.0025, "p_value": 0.001}) == pytest.approx(2.0)
    assert drift.score("chi2", 90.0, 0.05, True, {"p_value": 0.0}) == charts.SCORE_CAP
    assert drift.score("z", 1.0, 0.05, True, {}) == 1.5  # no p-value: only the verdict is known
    rows = [row(0, "amount", 0.05), row(1, "amount", 0.4, alert=True), row(1, "age", 0.3, metric="ks")]
    rows[2]["details"] = {"p_value": 0.0025}
    df = metrics_frame(rows)
    scored = drift.cells(df)
    expected = [
        drift.score(m, v, t, a, d)
        for m, v, t, a, d in zip(
            df["metric"], df["value"], df["threshold"], df["alert"], df["details"], strict=True
        )
    ]
    assert list(scored["score"]) == pytest.approx(expected)


def test_the_heatmap_orders_features_by_drift_and_marks_verdicts() -> None:
    rows = [row(d, "amount", 0.05 + 0.1 * d, alert=d >= 1) for d in range(3)]
    rows += [row(d, "age", 0.01) for d in range(3)]
    fig = charts.drift_heatmap(drift.cells(metrics_frame(rows)))
    heat, marks = fig.data
    assert list(heat.y) == ["amount", "age"]
    assert np.asarray(heat.x).dtype.kind == "M"  # naive UTC datetime64: the fast path to JSON
    assert heat.z[0][2] == pytest.approx(2.5) and heat.z[1][0] == pytest.approx(0.1)
    assert list(marks.y) == ["amount", "amount"]
    assert charts.drift_heatmap(drift.cells(metrics_frame([]))).layout.annotations  # says there is nothing


def test_distributions_draw_as_histograms_or_category_bars() -> None:
    numeric = {
        "kind": "numeric",
        "edges": [0, 1, 2],
        "reference_share": [0.5, 0.5],
        "current_share": [0.2, 0.8],
    }
    fig = charts.distribution(numeric, "amount", "today")
    assert [t.name for t in fig.data] == ["reference", "current"] and list(fig.data[1].x) == [0.5, 1.5]
    cats = {
        "kind": "categorical",
        "values": ["FR", "BR"],
        "reference_share": [1, 0],
        "current_share": [0.9, 0.1],
    }
    assert list(charts.distribution(cats, "country", "today").data[1].x) == ["FR", "BR"]
    broken = {"kind": "numeric", "edges": [0, 1], "reference_share": [0.5, 0.5], "current_share": [0.2, 0.8]}
    assert charts.distribution(broken, "amount", "today").layout.annotations


def test_frames_and_params() -> None:
    df = metrics_frame([row(0, "amount", 0.1), {**row(1, "amount", 0.1), "value": None, "status": "no_data"}])
    assert str(df["window_start"].dt.tz) == "UTC" and df["value"].isna().tolist() == [False, True]
    assert len(ui.ok(df)) == 1 and ui.window_ends(df)[df["window_start"][0]] == df["window_end"][0]
    assert params_of({"b": True, "a": None, "c": 3}) == (("b", "true"), ("c", "3"))
    assert ui.fmt_duration(90) == "1.5 min" and ui.fmt_duration(36 * 3600) == "1.5 d"
    assert (
        ui.window_label(pd.Timestamp("2026-11-28", tz="UTC"), pd.Timestamp("2026-11-29", tz="UTC"))
        == "2026-11-28"
    )


def test_an_empty_reliability_diagram_says_why() -> None:
    window = pd.Timestamp("2026-11-28", tz="UTC")
    few = {
        **row(0, "", 0.0),
        "detector": "calibration",
        "metric": "ece",
        "value": None,
        "status": "no_data",
        "details": {"labelled": 41, "reason": "41 labelled rows, fewer than 100"},
    }
    bins = [{"count": 50, "mean_score": 0.1 * i + 0.05, "observed_rate": 0.1 * i} for i in range(10)]
    judged = {**few, "value": 0.02, "status": "ok", "details": {"labelled": 500, "reliability": bins}}

    def text(fig: go.Figure) -> list[str]:
        return [a.text for a in fig.layout.annotations]

    assert text(performance.reliability(metrics_frame([few]), window)) == ["41 labelled rows, fewer than 100"]
    assert text(performance.reliability(metrics_frame([]), window)) == ["no labelled rows in this window"]
    drawn = performance.reliability(metrics_frame([judged]), window)
    assert not text(drawn) and list(drawn.data[1].x) == [b["mean_score"] for b in bins]
