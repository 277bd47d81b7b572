"""Plotly figures from metric frames: pure functions, so they can be checked without a browser.

Frames are those of `ui.frame()`: one row per metric row of the API, `window_start` and
`window_end` as UTC timestamps, `value` and `threshold` as floats (NaN when absent).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

RED = "#d62728"
ORANGE = "#ff7f0e"
BLUE = "#1f77b4"
GREY = "#7f7f7f"
GREEN = "#2ca02c"
PALETTE = [BLUE, ORANGE, GREEN, "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
SCORE_CAP = 3.0
# greens below the drift line (score 1 of 3), a hard step to orange at it, red well above it
DRIFT_SCALE = [
    [0.0, "#1a9850"],
    [0.2, "#a6d96a"],
    [1 / SCORE_CAP - 0.001, "#ffffbf"],
    [1 / SCORE_CAP, "#fdae61"],
    [1.0, "#a50026"],
]
MARKED_CELLS = 1500  # beyond this many drifted cells, x marks would cost the browser seconds


def _t(moments: Any) -> np.ndarray:
    """UTC timestamps as naive datetime64: Plotly serialises these arrays at once, while
    timezone-aware ones go value by value (a hundred times slower at 90 days of hours)."""
    index = pd.DatetimeIndex(moments)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    values: np.ndarray = index.to_numpy()
    return values


def _mode(points: int) -> str:
    """Markers up to a few hundred points; beyond, each would be an SVG node for the browser to lay out."""
    return "lines+markers" if points <= 400 else "lines"


def _alerts(fig: go.Figure, alerting: pd.DataFrame) -> None:
    """Red rings on alerting windows; past a few hundred, small dots (rings would bury the line)."""
    if alerting.empty:
        return
    dense = len(alerting) > 300
    marker = (
        {"size": 4, "color": RED}
        if dense
        else {"size": 11, "color": "rgba(0,0,0,0)", "line": {"color": RED, "width": 2}}
    )
    fig.add_trace(
        go.Scatter(
            x=_t(alerting["window_start"]),
            y=alerting["value"],
            mode="markers",
            name=f"alert ({len(alerting)})",
            marker=marker,
        )
    )


def _layout(fig: go.Figure, title: str, *, height: int = 320, y_title: str | None = None) -> go.Figure:
    fig.update_layout(
        title={"text": title, "font": {"size": 15}},
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "v", "yanchor": "top", "y": 1.0, "xanchor": "left", "x": 1.02},
        hovermode="closest",
    )
    if y_title:
        fig.update_yaxes(title_text=y_title)
    return fig


def empty(title: str, message: str) -> go.Figure:
    """A titled placeholder: a missing series says why instead of leaving a hole."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height=220)


def _mark_window(fig: go.Figure, window: pd.Timestamp | None) -> None:
    if window is not None:
        fig.add_vline(x=_t([window])[0], line_width=1, line_dash="dot", line_color=GREY)


def drift_heatmap(cells: pd.DataFrame, *, selected: pd.Timestamp | None = None) -> go.Figure:
    """Feature x window of the drift score (statistic over its threshold: 1 is the drift line).

    `cells` has feature, window_start, score, value, threshold, metric, alert. Drift verdicts
    get an x on top so they read even where colours are close.
    """
    if cells.empty:
        return empty("Feature drift", "no feature drift results in this range")
    one = cells.drop_duplicates(["feature", "window_start"], keep="last")
    order = one.groupby("feature")["score"].max().sort_values(ascending=False).index.tolist()
    grid = one.pivot(index="feature", columns="window_start", values="score").reindex(index=order)
    value = one.pivot(index="feature", columns="window_start", values="value").reindex(
        index=grid.index, columns=grid.columns
    )
    threshold = one.pivot(index="feature", columns="window_start", values="threshold").reindex(
        index=grid.index, columns=grid.columns
    )
    method = one.drop_duplicates("feature", keep="last").set_index("feature")["metric"].reindex(grid.index)
    custom = np.dstack([value.to_numpy(), threshold.to_numpy()])
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=_t(grid.columns),
            y=[f"{f}" for f in grid.index],
            customdata=custom,
            hovertemplate="%{y}<br>%{x}<br>statistic %{customdata[0]:.4g} (threshold %{customdata[1]:.4g})"
            "<extra></extra>",
            colorscale=DRIFT_SCALE,
            zmin=0.0,
            zmax=SCORE_CAP,
            colorbar={
                "title": {"text": "score"},
                "tickvals": [0, 1, 2, 3],
                "ticktext": ["0", "1 (drift)", "2", "≥3"],
            },
            xgap=1 if len(grid.columns) <= 400 else 0,
            ygap=1,
        )
    )
    drifted = one[one["alert"]]
    if 0 < len(drifted) <= MARKED_CELLS:
        fig.add_trace(
            go.Scatter(
                x=_t(drifted["window_start"]),
                y=drifted["feature"],
                mode="markers",
                marker={
                    "symbol": "x-thin",
                    "size": 8 if len(grid.columns) <= 400 else 4,
                    "line": {"width": 2, "color": "black"},
                },
                name="drift verdict",
                hoverinfo="skip",
            )
        )
    _mark_window(fig, selected)
    fig.update_yaxes(
        autorange="reversed",
        type="category",
        ticktext=[f"{f} ({method.get(f, '')})" for f in grid.index],
        tickvals=list(grid.index),
    )
    fig.update_layout(showlegend=False)
    height = max(260, 60 + 28 * len(order))
    marks = "x: drift verdict" if len(drifted) <= MARKED_CELLS else "orange to red: drift verdict"
    return _layout(fig, f"Feature drift: statistic ÷ threshold per window ({marks})", height=height)


def distribution(dist: dict[str, Any], feature: str, window_label: str) -> go.Figure:
    """Reference against current shares: histogram bars for numeric, category bars otherwise."""
    title = f"{feature}: reference vs {window_label}"
    ref = [float(x) for x in dist.get("reference_share") or []]
    cur = [float(x) for x in dist.get("current_share") or []]
    if not ref and not cur:
        return empty(title, "no rows in this window")
    fig = go.Figure()
    if dist.get("edges"):
        edges = [float(e) for e in dist.get("edges") or []]
        if len(edges) != len(ref) + 1:
            return empty(title, "the distribution came without its bin edges")
        centers = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
        widths = [b - a for a, b in itertools.pairwise(edges)]
        fig.add_trace(
            go.Bar(x=centers, y=ref, width=widths, name="reference", marker_color=GREY, opacity=0.55)
        )
        fig.add_trace(go.Bar(x=centers, y=cur, width=widths, name="current", marker_color=BLUE, opacity=0.55))
        fig.update_layout(barmode="overlay", bargap=0)
        fig.update_xaxes(title_text=feature)
    else:
        values = [str(v) for v in dist.get("values") or []]
        fig.add_trace(go.Bar(x=values, y=ref, name="reference", marker_color=GREY))
        fig.add_trace(go.Bar(x=values, y=cur, name="current", marker_color=BLUE))
        fig.update_layout(barmode="group")
        fig.update_xaxes(type="category", title_text=feature)
    fig.update_yaxes(tickformat=".0%")
    return _layout(fig, title, y_title="share of rows")


def series(
    frame: pd.DataFrame,
    title: str,
    *,
    by: str | None = None,
    threshold: bool = True,
    selected: pd.Timestamp | None = None,
    y_title: str | None = None,
    percent: bool = False,
    names: dict[str, str] | None = None,
) -> go.Figure:
    """Value over windows, one line per `by` group, dashed thresholds, red rings on alerts."""
    rows = frame.dropna(subset=["value"]).sort_values("window_start")
    if rows.empty:
        return empty(title, "no results in this range")
    fig = go.Figure()
    groups: Sequence[tuple[str, pd.DataFrame]] = (
        [(str(k), g) for k, g in rows.groupby(by, sort=True)] if by else [("value", rows)]
    )
    for i, (name, group) in enumerate(groups):
        label = (names or {}).get(name, name or "all")
        colour = PALETTE[i % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=_t(group["window_start"]),
                y=group["value"],
                mode=_mode(len(group)),
                name=label,
                line={"color": colour},
                marker={"size": 4},
                legendgroup=label,
            )
        )
        if threshold and group["threshold"].notna().any():
            fig.add_trace(
                go.Scatter(
                    x=_t(group["window_start"]),
                    y=group["threshold"],
                    mode="lines",
                    name=f"{label} threshold" if by else "threshold",
                    line={"dash": "dash", "width": 1, "color": colour if by else RED},
                    legendgroup=label,
                    showlegend=not by,
                )
            )
    _alerts(fig, rows[rows["alert"]])
    _mark_window(fig, selected)
    if percent:
        fig.update_yaxes(tickformat=".1%")
    return _layout(fig, title, y_title=y_title)


def performance(
    realised: pd.DataFrame,
    estimated: pd.DataFrame,
    metric: str,
    *,
    reference: float | None,
    selected: pd.Timestamp | None = None,
) -> go.Figure:
    """Realised (labelled) and estimated performance, the reference level and its band.

    The band is the estimator's alert band (reference ± its sampling error at the window's
    size) where estimates exist, otherwise the realised series' alert threshold.
    """
    title = f"{metric}: realised vs estimated"
    if realised.dropna(subset=["value"]).empty and estimated.dropna(subset=["value"]).empty:
        return empty(title, "no performance results in this range")
    fig = go.Figure()
    band = (
        estimated.dropna(subset=["lower", "upper"]).sort_values("window_start")
        if not estimated.empty
        else estimated
    )
    if not band.empty:
        fig.add_trace(
            go.Scatter(
                x=_t(band["window_start"]),
                y=band["upper"],
                mode="lines",
                line={"width": 0},
                showlegend=False,
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=_t(band["window_start"]),
                y=band["lower"],
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor="rgba(31,119,180,0.12)",
                name="expected band",
            )
        )
    if reference is not None and math.isfinite(reference):
        fig.add_hline(
            y=reference,
            line_dash="dot",
            line_color=GREY,
            annotation_text="reference",
            annotation_position="top left",
        )
    est = estimated.dropna(subset=["value"]).sort_values("window_start") if not estimated.empty else estimated
    if not est.empty:
        fig.add_trace(
            go.Scatter(
                x=_t(est["window_start"]),
                y=est["value"],
                mode=_mode(len(est)),
                name="estimated",
                line={"dash": "dash", "color": ORANGE},
                marker={"size": 4},
            )
        )
    real = realised.dropna(subset=["value"]).sort_values("window_start")
    if not real.empty:
        fig.add_trace(
            go.Scatter(
                x=_t(real["window_start"]),
                y=real["value"],
                mode=_mode(len(real)),
                name="realised",
                line={"color": BLUE},
                marker={"size": 5},
            )
        )
        if band.empty and real["threshold"].notna().any():
            fig.add_trace(
                go.Scatter(
                    x=_t(real["window_start"]),
                    y=real["threshold"],
                    mode="lines",
                    name="threshold",
                    line={"dash": "dash", "width": 1, "color": RED},
                )
            )
    flagged = (
        pd.concat([f[f["alert"]] for f in (real, est) if not f.empty])
        if not (real.empty and est.empty)
        else real
    )
    _alerts(fig, flagged)
    _mark_window(fig, selected)
    return _layout(fig, title, height=360, y_title=metric)


def reliability(
    bins: list[dict[str, Any]], title: str, *, reason: str = "no labelled rows in this window"
) -> go.Figure:
    """Observed outcome rate against mean score per bin; the diagonal is perfect calibration.

    Without bins, `reason` says why (the window's result knows: no labels, or too few).
    """
    rows = [b for b in bins if b.get("count")]
    if not rows:
        return empty(title, reason)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dot", "color": GREY})
    )
    fig.add_trace(
        go.Scatter(
            x=[b.get("mean_score") for b in rows],
            y=[b.get("observed_rate") for b in rows],
            mode="lines+markers",
            name="observed",
            marker={"size": [max(6.0, min(22.0, math.sqrt(float(b["count"])))) for b in rows], "color": BLUE},
            customdata=[b["count"] for b in rows],
            hovertemplate="mean score %{x:.3f}<br>observed %{y:.3f}<br>%{customdata} rows<extra></extra>",
        )
    )
    fig.update_xaxes(range=[0, 1], title_text="mean predicted score")
    fig.update_yaxes(range=[0, 1], title_text="observed rate")
    return _layout(fig, title, height=340)


def slice_heatmap(frame: pd.DataFrame, metric: str) -> go.Figure:
    """Slice x window of the metric, worst slices on top, flagged cells marked."""
    title = f"{metric} per slice"
    rows = frame.dropna(subset=["value"])
    if rows.empty:
        return empty(title, "no slice results in this range")
    order = rows.groupby("slice")["value"].mean().sort_values().index.tolist()
    grid = rows.pivot_table(index="slice", columns="window_start", values="value", aggfunc="first").reindex(
        index=order
    )
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=_t(grid.columns),
            y=list(grid.index),
            colorscale="RdYlGn",
            colorbar={"title": {"text": metric}},
            xgap=1,
            ygap=1,
            hovertemplate="%{y}<br>%{x}<br>%{z:.3f}<extra></extra>",
        )
    )
    flagged = rows[rows["alert"]]
    if not flagged.empty:
        fig.add_trace(
            go.Scatter(
                x=_t(flagged["window_start"]),
                y=flagged["slice"],
                mode="markers",
                name="flagged",
                marker={"symbol": "x-thin", "size": 8, "line": {"width": 2, "color": "black"}},
                hoverinfo="skip",
            )
        )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(showlegend=False)
    return _layout(fig, title + " (x: flagged)", height=max(260, 60 + 24 * len(order)))


def volume(frame: pd.DataFrame) -> go.Figure:
    """Rows per window as bars against what history expected (the mean of `details.history`)."""
    title = "Volume against expected"
    rows = frame.dropna(subset=["value"]).sort_values("window_start")
    if rows.empty:
        return empty(title, "no volume results in this range")
    fig = go.Figure()
    fig.add_trace(
        go.Bar(x=_t(rows["window_start"]), y=rows["value"], name="rows", marker_color=BLUE, opacity=0.8)
    )
    if "expected" in rows and rows["expected"].notna().any():
        fig.add_trace(
            go.Scatter(
                x=_t(rows["window_start"]),
                y=rows["expected"],
                mode="lines",
                name="expected",
                line={"color": ORANGE, "dash": "dash"},
            )
        )
    _alerts(fig, rows[rows["alert"]])
    return _layout(fig, title, y_title="rows")


def sparkline(frame: pd.DataFrame, title: str) -> go.Figure:
    """A small line for a card: no legend, no axes titles."""
    rows = frame.dropna(subset=["value"]).sort_values("window_start")
    if rows.empty:
        return empty(title, "no results yet")
    fig = go.Figure(
        go.Scatter(
            x=_t(rows["window_start"]),
            y=rows["value"],
            mode="lines",
            line={"color": BLUE},
            fill="tozeroy",
            fillcolor="rgba(31,119,180,0.10)",
            showlegend=False,
        )
    )
    if rows["threshold"].notna().any():
        fig.add_trace(
            go.Scatter(
                x=_t(rows["window_start"]),
                y=rows["threshold"],
                mode="lines",
                showlegend=False,
                line={"dash": "dash", "width": 1, "color": RED},
            )
        )
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig = _layout(fig, title, height=170)
    fig.update_layout(margin={"l": 0, "r": 0, "t": 28, "b": 0})
    return fig


SEVERITY_COLOURS = {"critical": RED, "warning": ORANGE, "info": BLUE}
STATE_SYMBOLS = {"firing": "circle", "pending": "circle-open", "resolved": "square-open", "ok": "x-thin"}


def alert_timeline(alerts: Sequence[dict[str, Any]]) -> go.Figure:
    """Each alert at the window it was last judged on, one row per series: what fires together."""
    title = "Alerts by series and window"
    rows = [a for a in alerts if a.get("window_start")]
    if not rows:
        return empty(title, "no alert has a window yet")

    def series_of(a: dict[str, Any]) -> str:
        parts = [str(a.get("metric") or ""), str(a.get("feature") or ""), str(a.get("slice") or "")]
        return f"{a.get('version') or '–'} · " + " ".join(p for p in parts if p)

    fig = go.Figure()
    for severity, colour in SEVERITY_COLOURS.items():
        for state, symbol in STATE_SYMBOLS.items():
            group = [a for a in rows if a.get("severity") == severity and a.get("state") == state]
            if not group:
                continue
            fig.add_trace(
                go.Scatter(
                    x=_t([pd.Timestamp(a["window_start"]) for a in group]),
                    y=[series_of(a) for a in group],
                    mode="markers",
                    name=f"{severity} {state}",
                    marker={
                        "symbol": symbol,
                        "size": 12,
                        "color": colour,
                        "line": {"width": 2, "color": colour},
                    },
                    customdata=[
                        [a.get("id"), a.get("rule"), a.get("value"), a.get("threshold")] for a in group
                    ],
                    hovertemplate="#%{customdata[0]} %{customdata[1]}<br>%{y}<br>%{x}<br>"
                    "value %{customdata[2]:.4g} vs %{customdata[3]:.4g}<extra></extra>",
                )
            )
    fig.update_yaxes(type="category", automargin=True)
    names = {series_of(a) for a in rows}
    return _layout(fig, title, height=max(240, 80 + 26 * len(names)))


def findings(evidence: dict[str, Any]) -> go.Figure:
    """The series behind a retraining trigger's findings, each against its threshold."""
    title = "Findings behind the trigger"
    items = [f for f in evidence.get("findings") or [] if f.get("series")]
    if not items:
        return empty(title, "the evidence carries no series")
    fig = go.Figure()
    for i, f in enumerate(items):
        colour = PALETTE[i % len(PALETTE)]
        label = (
            f"{f.get('version')} {f.get('metric')} {f.get('feature') or ''} {f.get('slice') or ''}".strip()
        )
        points = f["series"]
        x = _t([pd.Timestamp(p["window_start"]) for p in points])
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[p.get("value") for p in points],
                mode="lines+markers",
                name=label,
                line={"color": colour},
                legendgroup=label,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[p.get("threshold") for p in points],
                mode="lines",
                name=f"{label} threshold",
                line={"color": colour, "dash": "dash", "width": 1},
                legendgroup=label,
                showlegend=False,
            )
        )
    return _layout(fig, title, height=280)
