"""Overview: every model's health at a glance, what is open, and whether each version is ready."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta

import pandas as pd
import streamlit as st

from driftline.dashboard import charts, ui
from driftline.dashboard.api import ApiError, Row

LOWER_IS_BETTER = {"log_loss", "brier", "mae", "rmse", "mape", "ece", "mce"}


def _range_of(ctx: ui.Context, model: Row) -> tuple[str, str]:
    """The picked range, ending at this model's own newest window (custom dates stay as picked)."""
    if ctx.range_key == "custom" or model.get("name") == ctx.name:
        return ctx.start_iso, ctx.end_iso
    end = ui.anchor_of(model)
    return ui.iso(end - (ctx.end - ctx.start)), ui.iso(end)


def _champion(model: Row) -> str | None:
    versions = model.get("versions") or []
    for v in versions:
        if v.get("role") == "champion":
            return str(v["version"])
    return str(versions[0]["version"]) if versions else None


def _model_card(ctx: ui.Context, model: Row, drift: pd.DataFrame | ApiError) -> None:
    name = str(model["name"])
    with st.container(border=True):
        cols = st.columns([2.3, 1.0, 1.7, 1.1, 1.4, 2.6])
        with cols[0]:
            st.markdown(f"### {name}")
            ui.health_badge(model.get("health"))
            versions = ", ".join(
                f"{v['version']} ({v.get('role') or '–'}, {v.get('approval') or '–'})"
                for v in model.get("versions") or []
            )
            st.caption(
                f"owner {model.get('owner') or '–'} · {model.get('task') or '–'} · {versions or 'no versions'}"
            )
        cols[1].metric(
            "Drifted",
            ui.fmt_pct(model.get("drifted_share")),
            help="Share of the champion's features whose drift test fired in the newest window.",
        )
        perf = model.get("performance")
        if perf:
            metric = str(perf.get("metric"))
            value = perf.get("value")
            reference = perf.get("reference")
            delta = None
            if value is not None and reference is not None:
                delta = f"{float(value) - float(reference):+.3f} vs ref."
            cols[2].metric(
                f"{metric} ({'estimated' if perf.get('estimated') else 'realised'})",
                ui.fmt_num(value),
                delta=delta,
                delta_color="inverse" if metric in LOWER_IS_BETTER else "normal",
                help=f"Window ending {perf.get('window_end') or '–'}; reference {ui.fmt_num(reference)}.",
            )
        else:
            cols[2].metric("Performance", "–", help="No labels and no estimate yet.")
        cols[3].metric("Traffic 24 h", ui.fmt_num(model.get("traffic_24h")))
        cols[4].metric(
            "Freshness",
            ui.fmt_duration(model.get("freshness_seconds")),
            help="Time since the newest prediction arrived.",
        )
        with cols[5]:
            if isinstance(drift, ApiError):
                st.caption(f"drift history unavailable: {drift.message}")
            else:
                st.plotly_chart(
                    charts.sparkline(ui.ok(drift), "Drifted-feature share"),
                    key=f"spark-{name}",
                    config={"displayModeBar": False},
                )
        if isinstance(drift, pd.DataFrame) and not ui.ok(drift).empty:
            details = ui.ok(drift)["details"].iloc[-1]
            features = (details if isinstance(details, dict) else {}).get("drifted") or []
            st.markdown(f"Drifted in the newest window: **{', '.join(features) or 'none'}**")
        links = st.columns(4)
        for col, page, label in (
            (links[0], "drift", "Drift"),
            (links[1], "performance", "Performance"),
            (links[2], "operations", "Operations"),
            (links[3], "alerts", "Alerts & triggers"),
        ):
            with col:
                ui.nav_link(label, ui.url(page, {"model": name}), key=f"{page}-{name}")


def _alerts(alerts: list[Row]) -> None:
    st.subheader(f"Open alerts ({len(alerts)})")
    if not alerts:
        st.caption("Nothing is firing.")
        return
    order = {"critical": 0, "warning": 1, "info": 2}
    table = pd.DataFrame(
        [
            {
                "severity": a.get("severity"),
                "state": a.get("state"),
                "model": a.get("model"),
                "rule": a.get("rule"),
                "metric": a.get("metric"),
                "feature": a.get("feature") or "",
                "slice": a.get("slice") or "",
                "value": a.get("value"),
                "threshold": a.get("threshold"),
                "since": ui.fmt_time(a.get("since")),
                "explain": ui.url(*ui.link_params(a)),
            }
            for a in sorted(alerts, key=lambda a: (order.get(str(a.get("severity")), 3), str(a.get("since"))))
        ]
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "value": st.column_config.NumberColumn(format="%.4g"),
            "threshold": st.column_config.NumberColumn(format="%.4g"),
            "explain": st.column_config.LinkColumn(display_text="explain"),
        },
    )
    ui.page_link("alerts", "Alerts & triggers: evidence, acknowledge", icon=":material/notifications_active:")


def _triggers(triggers: list[Row]) -> None:
    st.subheader(f"Retraining triggers waiting for approval ({len(triggers)})")
    if not triggers:
        st.caption("No trigger waits for a decision.")
        return
    for t in triggers:
        with st.container(border=True):
            st.markdown(
                f"**Trigger #{t.get('id')}** · {t.get('model')} · proposed {ui.fmt_time(t.get('created_at'))}"
            )
            if t.get("summary"):
                st.caption(str(t["summary"]))
            ui.nav_link(
                "Review, approve or reject",
                ui.url("alerts", {"model": str(t.get("model")), "trigger": str(t.get("id"))}),
                key=f"trigger-{t.get('id')}",
            )


def _readiness(ctx: ui.Context, models: list[Row]) -> None:
    st.subheader("Readiness per version")
    calls: dict[str, Callable[[], Row]] = {}
    for m in models:
        for v in m.get("versions") or []:
            name, version = str(m["name"]), str(v["version"])
            calls[f"{name}\x00{version}"] = functools.partial(ctx.api.readiness, name, version)
    if not calls:
        st.caption("No versions registered yet.")
        return
    results = ui.fetch_all(calls)
    for m in models:
        for v in m.get("versions") or []:
            name, version = str(m["name"]), str(v["version"])
            got = results[f"{name}\x00{version}"]
            _readiness_panel(ctx, m, v, got)


def _readiness_panel(ctx: ui.Context, model: Row, version: Row, got: Row | ApiError) -> None:
    name = str(model["name"])
    title = f"{name} · {version['version']} ({version.get('role') or '–'}, {version.get('approval') or '–'})"
    if isinstance(got, ApiError):
        with st.expander(f"{title}: readiness unavailable"):
            st.warning(got.message)
        return
    items: list[Row] = list(got.get("items") or [])
    missing = [i for i in items if not i.get("ok")]
    verdict = "ready" if got.get("ready") else f"{len(missing)} of {len(items)} checks open"
    icon = ":material/verified:" if got.get("ready") else ":material/pending_actions:"
    with st.expander(f"{title}: {verdict}", icon=icon, expanded=name == ctx.name):
        for item in items:
            mark = ":green[:material/check_circle:]" if item.get("ok") else ":red[:material/cancel:]"
            detail = f" — {item['detail']}" if item.get("detail") else ""
            st.markdown(f"{mark} **{item.get('label') or item.get('key')}**{detail}")


def render() -> None:
    ctx = ui.context()
    st.title("Overview")
    ui.show_flash()
    overview = ctx.overview
    models: list[Row] = list(overview.get("models") or [])
    alerts: list[Row] = list(overview.get("alerts") or [])
    triggers: list[Row] = list(overview.get("triggers") or [])
    cols = st.columns(4)
    cols[0].metric("Models", len(models))
    cols[1].metric("Unhealthy", sum(1 for m in models if m.get("health") in ("warning", "critical")))
    cols[2].metric("Open alerts", len(alerts))
    cols[3].metric("Triggers waiting", len(triggers))

    calls: dict[str, Callable[[], pd.DataFrame]] = {
        str(m["name"]): functools.partial(_drift_history, ctx, m) for m in models
    }
    drift = ui.fetch_all(calls)
    st.subheader("Models")
    for m in models:
        _model_card(ctx, m, drift[str(m["name"])])
    left, right = st.columns([3, 2])
    with left:
        _alerts(alerts)
    with right:
        _triggers(triggers)
    _readiness(ctx, models)


def _drift_history(ctx: ui.Context, model: Row) -> pd.DataFrame:
    """Drift share over the range without details, and with them (which features) for the newest days."""
    name, version = str(model["name"]), _champion(model)
    start, end = _range_of(ctx, model)
    history = ctx.api.metrics(name, detector="dataset_drift", slice="", version=version, start=start, end=end)
    last = ui.parse_time(end)
    if last is None:
        return ui.most_common_length(history)
    recent = ctx.api.metrics(
        name,
        details=True,
        detector="dataset_drift",
        slice="",
        version=version,
        start=ui.iso(last - timedelta(days=2)),
        end=end,
    )
    both = pd.concat([history, recent], ignore_index=True)
    both = both.drop_duplicates(subset=["window_start", "window_end"], keep="last")
    return ui.most_common_length(both.sort_values("window_start"))


if __name__ == "__main__":
    with ui.guard():
        render()
