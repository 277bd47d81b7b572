"""Operations: is the model being called, quickly and without errors, and is its data arriving."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from driftline.dashboard import charts, ui

LATENCY = ["latency_p50", "latency_p95", "latency_p99"]
QUANTILES = {"latency_p50": "p50", "latency_p95": "p95", "latency_p99": "p99"}


def volume_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Volume rows with what history expected: the mean of the windows it was compared with."""
    df = ui.ok(rows).copy()
    history = ui.detail(df, "history")
    df["expected"] = history.map(
        lambda h: sum(float(x) for x in h) / len(h) if isinstance(h, list) and h else None
    ).astype(float)
    return df


def _newest(df: pd.DataFrame, metric: str, feature: str = "") -> float | None:
    rows = df[(df["metric"] == metric) & (df["feature"] == feature)].dropna(subset=["value"])
    if rows.empty:
        return None
    return float(rows.sort_values("window_start")["value"].iloc[-1])


def render() -> None:
    ctx = ui.context()
    ui.header(ctx, "Operations")
    got = ui.fetch_all(
        {
            "ops": lambda: ctx.metrics(
                detector="operations",
                metric="throughput,latency_p50,latency_p95,latency_p99,error_rate,timeout_rate,error_rate_by_cause",
            ),
            "volume": lambda: ctx.metrics(details=True, detector="operations", metric="volume"),
            "freshness": lambda: ctx.metrics(detector="operations", metric="freshness", version=None),
        }
    )
    ops = ui.ok(ui.got(got["ops"], "Operations"))
    volume = volume_frame(ui.got(got["volume"], "Volume"))
    fresh = ui.ok(ui.got(got["freshness"], "Freshness"))
    fresh = (
        fresh[(fresh["version"] == "") | (fresh["version"] == (ctx.version or ""))]
        if not fresh.empty
        else fresh
    )

    cols = st.columns(6)
    throughput = _newest(ops, "throughput")
    cols[0].metric(
        "Throughput",
        f"{throughput * 3600:,.0f}/h" if throughput is not None else "–",
        help="Predictions per hour in the newest window.",
    )
    p95 = _newest(ops, "latency_p95")
    cols[1].metric("Latency p95", f"{p95:.1f} ms" if p95 is not None else "–")
    cols[2].metric("Error rate", ui.fmt_pct(_newest(ops, "error_rate")))
    cols[3].metric("Timeout rate", ui.fmt_pct(_newest(ops, "timeout_rate")))
    cols[4].metric("Prediction freshness", ui.fmt_duration(_newest(fresh, "freshness", "predictions")))
    cols[5].metric("Label freshness", ui.fmt_duration(_newest(fresh, "freshness", "labels")))

    left, right = st.columns(2)
    with left:
        rate = ops[ops["metric"] == "throughput"].copy()
        rate["value"] = rate["value"] * 3600.0
        st.plotly_chart(
            charts.series(rate, "Throughput", threshold=False, y_title="predictions per hour"),
            key="throughput",
        )
    with right:
        st.plotly_chart(charts.volume(volume), key="volume")

    st.subheader("Latency")
    left, right = st.columns(2)
    overall = ops[ops["metric"].isin(LATENCY) & (ops["feature"] == "")]
    with left:
        st.plotly_chart(
            charts.series(overall, "Latency, whole request", by="metric", y_title="ms", names=QUANTILES),
            key="latency",
        )
    stages = sorted(set(ops.loc[ops["metric"].isin(LATENCY) & (ops["feature"] != ""), "feature"]))
    with right:
        if stages:
            linked = ctx.focus_value("feature", "operations")
            stage = st.selectbox(
                "Stage",
                stages,
                index=stages.index(linked) if linked in stages else 0,
                key="stage",
                bind="query-params",
            )
            per_stage = ops[ops["metric"].isin(LATENCY) & (ops["feature"] == stage)]
            st.plotly_chart(
                charts.series(
                    per_stage, f"Latency, stage {stage}", by="metric", y_title="ms", names=QUANTILES
                ),
                key="latency-stage",
            )
        else:
            st.caption("The predictions carry no per-stage timings.")

    st.subheader("Errors")
    left, right = st.columns(2)
    with left:
        rates = ops[ops["metric"].isin(["error_rate", "timeout_rate"])]
        st.plotly_chart(
            charts.series(rates, "Error and timeout rates", by="metric", percent=True), key="errors"
        )
    with right:
        causes = ops[ops["metric"] == "error_rate_by_cause"]
        st.plotly_chart(
            charts.series(
                causes, "Errors by failing stage or dependency", by="feature", threshold=False, percent=True
            ),
            key="causes",
        )

    st.subheader("Freshness")
    hours = fresh.copy()
    hours["value"] = hours["value"] / 3600.0
    hours["threshold"] = hours["threshold"] / 3600.0
    st.plotly_chart(
        charts.series(hours, "Age of the newest prediction and label", by="feature", y_title="hours"),
        key="freshness",
    )


if __name__ == "__main__":
    with ui.guard():
        render()
