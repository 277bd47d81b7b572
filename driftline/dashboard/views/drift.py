"""Drift: which features moved and when, how one of them moved, the model's outputs, data quality.

The heatmap colours each cell by its statistic over the drift threshold (distance methods)
or by how far the p-value is below alpha (tests), so features tested by different methods
share one scale where 1 is the line; an x marks each window the detector called drift.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from driftline.dashboard import charts, ui
from driftline.dashboard.api import ApiError

DISTANCES = {"wasserstein", "psi", "jensen_shannon", "hellinger", "drift"}
TESTS = {"ks", "chi2", "z"}
DRIFT_DETECTORS = ("feature_drift", "data_quality")
QUALITY = ["missing_rate", "out_of_range_rate", "unseen_category_rate", "outlier_rate", "schema_violations"]


def score(metric: str, value: float, threshold: float, alert: bool, details: dict[str, Any]) -> float:
    """Where a result sits against its drift line, 1 being the line, capped at `charts.SCORE_CAP`."""
    cap = charts.SCORE_CAP
    if metric in TESTS:
        p = details.get("p_adjusted", details.get("p_value"))
        if isinstance(p, int | float) and 0 < threshold < 1:
            if p <= 0:
                return cap
            return min(cap, max(0.0, math.log(p) / math.log(threshold)))
        return 1.5 if alert else 0.5  # without the p-value only the verdict is known
    if threshold and threshold > 0 and not math.isnan(value):
        return min(cap, max(0.0, value / threshold))
    return 1.5 if alert else 0.0


def cells(df: pd.DataFrame) -> pd.DataFrame:
    """Heatmap cells with a score per (feature, window): vectorised for distance methods, which
    are nearly all of them; tests (scored from their p-values) go row by row."""
    rows = ui.ok(df).copy()
    if rows.empty:
        return rows.assign(score=pd.Series(dtype=float))
    value = rows["value"].to_numpy(dtype=float)
    threshold = rows["threshold"].to_numpy(dtype=float)
    alert = rows["alert"].to_numpy(dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(threshold > 0, value / threshold, np.nan)
    scored = np.where(np.isnan(ratio), np.where(alert, 1.5, 0.0), np.clip(ratio, 0.0, charts.SCORE_CAP))
    tests = rows["metric"].isin(list(TESTS)).to_numpy()
    if tests.any():
        details = rows["details"].to_numpy()
        metrics = rows["metric"].to_numpy()
        for i in np.flatnonzero(tests):
            d = details[i] if isinstance(details[i], dict) else {}
            scored[i] = score(str(metrics[i]), value[i], threshold[i], bool(alert[i]), d)
    rows["score"] = scored
    return rows


def _with_test_details(ctx: ui.Context, df: pd.DataFrame) -> pd.DataFrame:
    """Test methods need their p-values: fetch details for those rows only (usually none)."""
    tests = sorted(set(df["metric"]) & TESTS)
    if not tests:
        return df
    extra = ctx.metrics(details=True, detector="feature_drift", slice="", metric=",".join(tests))
    if extra.empty:
        return df
    keep = df[~df["metric"].isin(tests)]
    return pd.concat([keep, extra], ignore_index=True)


def _default_feature(cells_df: pd.DataFrame, features: list[str], linked: str | None = None) -> str:
    """The linked alert's feature, else the one that drifted most often: the page opens on a finding."""
    if linked in features:
        return str(linked)
    if cells_df.empty:
        return features[0]
    counts = cells_df.groupby("feature")["alert"].sum().sort_values(ascending=False)
    best = (
        str(counts.index[0])
        if counts.iloc[0] > 0
        else str(cells_df.groupby("feature")["score"].max().idxmax())
    )
    return best if best in features else features[0]


def _report(ctx: ui.Context, start: pd.Timestamp, end: pd.Timestamp) -> None:
    st.subheader("Evidently report")
    key = f"report:{ctx.name}:{ui.iso(start)}:{ui.iso(end)}"
    st.caption(
        f"Evidently's data-drift report for {ui.window_label(start, end)}, built by the API from a bounded "
        "sample of the window against the reference."
    )
    if st.button("Build the report for this window", icon=":material/description:", key="build-report"):
        with st.spinner("Building the report…"):
            try:
                st.session_state[key] = ctx.api.report(ctx.name, ui.iso(start), ui.iso(end), ctx.version)
            except ApiError as exc:
                st.warning(f"The report could not be built: {exc.message}")
    html = st.session_state.get(key)
    if isinstance(html, str):
        st.download_button(
            "Open the Evidently report (HTML)",
            data=html,
            file_name=f"{ctx.name}-{start:%Y%m%dT%H%M}-evidently.html",
            mime="text/html",
            icon=":material/open_in_new:",
            key="download-report",
        )


def render() -> None:
    ctx = ui.context()
    ui.header(ctx, "Drift")
    first = ui.fetch_all(
        {
            "features": lambda: ctx.metrics(detector="feature_drift", slice=""),
            "dataset": lambda: ctx.metrics(detector="dataset_drift", slice=""),
            "prediction": lambda: ctx.metrics(detector="prediction_drift", slice=""),
        }
    )
    df = _with_test_details(ctx, ui.got(first["features"], "Feature drift"))
    heat = cells(df)
    selected_features = sorted(set(df["feature"])) if not df.empty else []
    if not selected_features:
        st.info("No feature-drift results in this range yet: run detection, or widen the time range.")
    ends = ui.window_ends(df)

    pick = st.columns(2)
    with pick[0]:
        feature = (
            st.selectbox(
                "Feature",
                selected_features,
                index=selected_features.index(
                    _default_feature(heat, selected_features, ctx.focus_value("feature", *DRIFT_DETECTORS))
                ),
                key="feature",
                bind="query-params",
            )
            if selected_features
            else None
        )
    with pick[1]:
        window = ui.pick_window("Window", list(ends), ends=ends, default=ctx.focus_window)
    pending = None
    if feature and window is not None:
        window_end = ends.get(window, window + pd.Timedelta(days=1))
        pending = ui.start_all(  # the window's reads run while the heatmap is drawn
            {
                "dist": lambda: ctx.api.distributions(
                    ctx.name,
                    feature=feature,
                    version=ctx.version,
                    start=ui.iso(window),
                    end=ui.iso(window_end),
                    bins=30,
                ),
                "quality": lambda: ctx.metrics(
                    detector="data_quality", slice="", start=ui.iso(window), end=ui.iso(window_end)
                ),
                "quality_history": lambda: ctx.metrics(detector="data_quality", slice="", feature=feature),
            }
        )
    st.plotly_chart(charts.drift_heatmap(heat, selected=window), key="heatmap")

    second: dict[str, Any] = pending.result() if pending is not None else {}
    if feature and window is not None:
        left, right = st.columns(2)
        with left:
            dist = ui.unwrap(second["dist"], "Distributions")
            if dist is not None:
                st.plotly_chart(
                    charts.distribution(dist, feature, ui.window_label(window, window_end)),
                    key="distribution",
                )
        with right:
            history = heat[heat["feature"] == feature] if not heat.empty else heat
            method = str(history["metric"].iloc[-1]) if not history.empty else "statistic"
            st.plotly_chart(
                charts.series(history, f"{feature}: {method} per window", selected=window, y_title=method),
                key="feature-history",
            )
        drifted = heat[(heat["window_start"] == window) & heat["alert"]] if not heat.empty else heat
        names = ", ".join(sorted(drifted["feature"])) if not drifted.empty else "none"
        st.markdown(f"Drifted in {ui.window_label(window, window_end)}: **{names}**")

    st.subheader("Prediction and score drift")
    left, right = st.columns(2)
    with left:
        pdf = ui.ok(ui.got(first["prediction"], "Prediction drift"))
        st.plotly_chart(
            charts.series(pdf, "Drift of the model's outputs", by="feature", selected=window),
            key="prediction-drift",
        )
    with right:
        ddf = ui.ok(ui.got(first["dataset"], "Dataset drift"))
        st.plotly_chart(
            charts.series(ddf, "Share of drifted features", selected=window, percent=True),
            key="dataset-drift",
        )

    st.subheader("Data quality")
    if feature and window is not None and second:
        qdf = ui.ok(ui.got(second["quality"], "Data quality"))
        if not qdf.empty:
            table = qdf.pivot_table(index="feature", columns="metric", values="value", aggfunc="first")
            flags = qdf[qdf["alert"]].groupby("feature")["metric"].apply(lambda m: ", ".join(sorted(m)))
            table = table.reindex(columns=[c for c in QUALITY if c in table.columns])
            table["alerts"] = flags.reindex(table.index).fillna("")
            st.dataframe(
                table.sort_values("alerts", ascending=False),
                column_config={
                    **{c: st.column_config.NumberColumn(format="percent") for c in QUALITY[:-1]},
                    "schema_violations": st.column_config.NumberColumn(
                        format="%d", help="rows in the window"
                    ),
                },
            )
        else:
            st.caption("No data-quality results for this window.")
        hdf = ui.ok(ui.got(second["quality_history"], "Data-quality history"))
        hdf = hdf[hdf["metric"] != "schema_violations"] if not hdf.empty else hdf
        st.plotly_chart(
            charts.series(hdf, f"{feature}: data-quality rates", by="metric", selected=window, percent=True),
            key="quality-history",
        )
        _report(ctx, window, ends.get(window, window + pd.Timedelta(days=1)))
    else:
        st.caption("Pick a feature and a window.")


if __name__ == "__main__":
    with ui.guard():
        render()
