"""Performance: realised and estimated quality against the reference, labels, calibration, slices, versions.

Labels arrive late, so the realised line stops days before the estimated one (CBPE); the
band is what the estimator expects from a window of that size around the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from driftline.dashboard import charts, ui

METRICS = {
    "binary": ["roc_auc", "accuracy", "precision", "recall", "f1", "log_loss", "brier"],
    "multiclass": ["accuracy", "f1", "precision", "recall", "roc_auc", "log_loss"],
    "regression": ["mae", "rmse", "mape", "r2"],
}
ESTIMATED = {"accuracy", "precision", "recall", "f1", "roc_auc"}
LOWER_IS_BETTER = {"log_loss", "brier", "mae", "rmse", "mape"}
NOT_SLICES = {"discovered", "discovered_count"}


def _metric(ctx: ui.Context) -> str:
    options = METRICS.get(ctx.task, METRICS["binary"])
    linked = ctx.focus_value("metric", "performance", "estimated_performance", "blended_performance")
    headline = linked if linked in options else (ctx.model.get("performance") or {}).get("metric")
    index = options.index(headline) if headline in options else 0
    return str(st.selectbox("Metric", options, index=index, key="metric", bind="query-params"))


def realised_frame(rows: pd.DataFrame) -> tuple[pd.DataFrame, float | None]:
    """Realised rows and the reference level they are judged against."""
    df = ui.ok(rows)
    reference = None
    if not df.empty:
        levels = ui.detail(df, "reference", "value").dropna()
        reference = float(levels.iloc[-1]) if not levels.empty else None
    return df, reference


def estimated_frame(rows: pd.DataFrame) -> tuple[pd.DataFrame, float | None]:
    df = ui.ok(rows).copy()
    df["lower"] = pd.to_numeric(ui.detail(df, "lower"), errors="coerce")
    df["upper"] = pd.to_numeric(ui.detail(df, "upper"), errors="coerce")
    levels = pd.to_numeric(ui.detail(df, "reference"), errors="coerce").dropna()
    return df, (float(levels.iloc[-1]) if not levels.empty else None)


def slice_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One window's slices, worst first, with their intervals and verdicts."""
    df = ui.ok(rows)
    df = df[(df["slice"] != "") & (df["metric"] == metric)]
    if df.empty:
        return pd.DataFrame()
    interval = ui.detail(df, "interval")
    table = pd.DataFrame(
        {
            "slice": df["slice"],
            metric: df["value"],
            "low": interval.map(lambda i: i[0] if isinstance(i, list) and i else None),
            "high": interval.map(lambda i: i[1] if isinstance(i, list) and len(i) > 1 else None),
            "labelled": ui.detail(df, "labelled"),
            "rest of window": ui.detail(df, "rest"),
            "q": ui.detail(df, "q_overall"),
            "flagged": df["alert"],
        }
    )
    return table.sort_values(metric, ascending=metric not in LOWER_IS_BETTER).reset_index(drop=True)


def _labels(df: pd.DataFrame, window: pd.Timestamp | None) -> None:
    st.subheader("Labels")
    left, right = st.columns(2)
    with left:
        coverage = df[df["metric"] == "label_coverage"]
        st.plotly_chart(
            charts.series(coverage, "Label coverage", threshold=False, selected=window, percent=True),
            key="label-coverage",
        )
    with right:
        delay = df[df["metric"].isin(["label_delay_p50", "label_delay_p90"])].copy()
        delay["value"] = delay["value"] / 3600.0
        st.plotly_chart(
            charts.series(
                delay,
                "Label delay",
                by="metric",
                threshold=False,
                selected=window,
                y_title="hours",
                names={"label_delay_p50": "p50", "label_delay_p90": "p90"},
            ),
            key="label-delay",
        )


def reliability(rows: pd.DataFrame, window: pd.Timestamp | None) -> go.Figure:
    """The window's reliability diagram; without one, the reason its result gives (such as too few labels)."""
    label = ui.window_label(window) if window is not None else "no window"
    title = f"Reliability diagram, {label}"
    whole = rows[rows["slice"] == ""]
    ok = ui.ok(whole)
    if not ok.empty and isinstance(ok["details"].iloc[-1], dict):
        return charts.reliability(list(ok["details"].iloc[-1].get("reliability") or []), title)
    last = whole["details"].iloc[-1] if not whole.empty else None
    if isinstance(last, dict) and last.get("reason"):
        return charts.reliability([], title, reason=str(last["reason"]))
    return charts.reliability([], title)


def _calibration(ece: pd.DataFrame, reliability_rows: pd.DataFrame, window: pd.Timestamp | None) -> None:
    st.subheader("Calibration")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(reliability(reliability_rows, window), key="reliability")
    with right:
        st.plotly_chart(charts.series(ece, "Expected calibration error (ECE)", selected=window), key="ece")


def _slices(
    metric: str,
    history: pd.DataFrame,
    window_rows: pd.DataFrame,
    discovered: pd.DataFrame,
    window: pd.Timestamp | None,
) -> None:
    st.subheader("Slices")
    available = sorted(set(history["metric"]) - NOT_SLICES) if not history.empty else []
    slice_metric = metric if metric in available else (available[0] if available else metric)
    table = slice_table(window_rows, slice_metric)
    if table.empty:
        st.caption("No slice results for this window (slices need enough labelled rows).")
    else:
        st.caption(
            f"{slice_metric} per slice in {ui.window_label(window) if window is not None else '–'}, worst first; "
            "low/high: Wilson interval; flagged: worse than the rest of the window or than the reference."
        )
        st.dataframe(
            table,
            hide_index=True,
            column_config={
                slice_metric: st.column_config.NumberColumn(format="%.3f"),
                "low": st.column_config.NumberColumn(format="%.3f"),
                "high": st.column_config.NumberColumn(format="%.3f"),
                "rest of window": st.column_config.NumberColumn(format="%.3f"),
                "q": st.column_config.NumberColumn(format="%.3g"),
            },
        )
    cells = (
        history[(history["slice"] != "") & (history["metric"] == slice_metric)]
        if not history.empty
        else history
    )
    st.plotly_chart(charts.slice_heatmap(cells, slice_metric), key="slice-heatmap")
    found = ui.ok(discovered)
    if not found.empty:
        st.markdown("**Discovered slices** (searched over single fields and pairs, Benjamini-Hochberg)")
        interval = ui.detail(found, "interval")
        st.dataframe(
            pd.DataFrame(
                {
                    "window": found["window_start"].dt.strftime("%Y-%m-%d %H:%M"),
                    "slice": found["slice"],
                    "value": found["value"],
                    "low": interval.map(lambda i: i[0] if isinstance(i, list) and i else None),
                    "high": interval.map(lambda i: i[1] if isinstance(i, list) and len(i) > 1 else None),
                    "rest": ui.detail(found, "rest"),
                    "worse by": ui.detail(found, "worse_by"),
                    "q": ui.detail(found, "q"),
                }
            ).sort_values("value"),
            hide_index=True,
        )


def _versions(history: pd.DataFrame, window_rows: pd.DataFrame, window: pd.Timestamp | None) -> None:
    st.subheader("Version comparison")
    if history.empty:
        st.caption("No challenger, shadow or canary version scored the same requests in this range.")
        return
    diffs = history[history["metric"].str.endswith("_diff")].copy()
    diffs["series"] = diffs["version"] + " " + diffs["metric"]
    left, right = st.columns(2)
    with left:
        fig = charts.series(diffs, "Challenger minus champion", by="series", threshold=False, selected=window)
        fig.add_hline(y=0, line_width=1, line_color=charts.GREY)
        st.plotly_chart(fig, key="version-diff")
    with right:
        agreement = history[history["metric"] == "prediction_agreement"]
        st.plotly_chart(
            charts.series(
                agreement,
                "Prediction agreement",
                by="version",
                threshold=False,
                selected=window,
                percent=True,
            ),
            key="version-agreement",
        )
    latest = ui.ok(window_rows)
    if not latest.empty:
        interval = ui.detail(latest, "interval")
        st.dataframe(
            pd.DataFrame(
                {
                    "version": latest["version"],
                    "role": ui.detail(latest, "role"),
                    "metric": latest["metric"],
                    "value": latest["value"],
                    "low": interval.map(lambda i: i[0] if isinstance(i, list) and i else None),
                    "high": interval.map(lambda i: i[1] if isinstance(i, list) and len(i) > 1 else None),
                    "p": ui.detail(latest, "p_value"),
                    "alert": latest["alert"],
                }
            ),
            hide_index=True,
        )


def render() -> None:
    ctx = ui.context()
    ui.header(ctx, "Performance")
    top = st.columns(2)
    with top[0]:
        metric = _metric(ctx)
    calls: dict[str, Callable[[], pd.DataFrame]] = {
        "realised": lambda: ctx.metrics(details=True, detector="performance", metric=metric, slice=""),
        "labels": lambda: ctx.metrics(
            detector="performance", metric="label_coverage,label_delay_p50,label_delay_p90", slice=""
        ),
        "ece": lambda: ctx.metrics(detector="calibration", metric="ece", slice=""),
        # the slice detector measures one metric (accuracy or mae unless configured): ask for it and the picked one
        "slices": lambda: ctx.metrics(
            detector="slice_performance",
            metric=f"{metric},{'mae' if ctx.task == 'regression' else 'accuracy'}",
        ),
        "discovered": lambda: ctx.metrics(details=True, detector="slice_performance", metric="discovered"),
        "versions": lambda: ctx.metrics(detector="version_comparison", version=None),
    }
    if metric in ESTIMATED and ctx.task != "regression":
        calls["estimated"] = lambda: ctx.metrics(
            details=True, detector="estimated_performance", metric=metric, slice=""
        )
    got = ui.fetch_all(calls)
    realised, reference = realised_frame(ui.got(got["realised"], "Realised performance"))
    estimated, est_reference = estimated_frame(
        ui.got(got["estimated"], "Estimated performance") if "estimated" in got else ui.frame([])
    )
    labels = ui.ok(ui.got(got["labels"], "Labels"))
    ece = ui.ok(ui.got(got["ece"], "Calibration"))
    slices = ui.ok(ui.got(got["slices"], "Slices"))
    versions = ui.ok(ui.got(got["versions"], "Version comparison"))

    labelled = realised if not realised.empty else ece
    ends = ui.window_ends(labelled)
    # unless an alert points at one, the newest window whose calibration is judged too: the
    # newest labelled one may hold the first few labels of a day, too few for the diagram
    judged = set(ends) & set(ece["window_start"]) if not ece.empty else set()
    default = ctx.focus_window if ctx.focus_window is not None else (max(judged) if judged else None)
    with top[1]:
        window = ui.pick_window("Labelled window", list(ends), ends=ends, default=default)
    window_end = ends.get(window) if window is not None else None

    pending = None
    if window is not None and window_end is not None:
        lo, hi = ui.iso(window), ui.iso(window_end)
        pending = ui.start_all(  # the window's reads run while the charts above are drawn
            {
                "reliability": lambda: ctx.metrics(
                    details=True, detector="calibration", metric="ece", start=lo, end=hi
                ),
                "slices": lambda: ctx.metrics(details=True, detector="slice_performance", start=lo, end=hi),
                "versions": lambda: ctx.metrics(
                    details=True, detector="version_comparison", version=None, start=lo, end=hi
                ),
            }
        )
    st.plotly_chart(
        charts.performance(
            realised,
            estimated,
            metric,
            reference=reference if reference is not None else est_reference,
            selected=window,
        ),
        key="performance",
    )
    if not realised.empty:
        newest = realised.sort_values("window_start").iloc[-1]
        cols = st.columns(3)
        cols[0].metric(f"Newest realised {metric}", ui.fmt_num(newest["value"]))
        cols[1].metric("Reference", ui.fmt_num(reference))
        cols[2].metric("Labelled rows", ui.fmt_num(newest["sample_size"]))
    _labels(labels, window)
    second: dict[str, Any] = pending.result() if pending is not None else {}
    none = ui.frame([])
    _calibration(ece, ui.got(second["reliability"], "Reliability") if second else none, window)
    _slices(
        metric,
        slices,
        ui.got(second["slices"], "Slices of the window") if second else none,
        ui.got(got["discovered"], "Discovered slices"),
        window,
    )
    _versions(versions, ui.got(second["versions"], "Version comparison") if second else none, window)


if __name__ == "__main__":
    with ui.guard():
        render()
