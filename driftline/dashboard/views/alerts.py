"""Alerts & triggers: what fired and why, acknowledge; retraining proposals, approve or reject.

Every write goes through the API with the dashboard's key, which the API records as the
actor (acknowledged by, decided by); the page shows that record back after the write.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from driftline.dashboard import charts, ui
from driftline.dashboard.api import ApiError, Row

OPEN = ("pending", "firing")
SHOW = ["open", "recent"]  # open: firing and pending; recent: resolved too


def _ack(ctx: ui.Context, alert: Row) -> None:
    try:
        done = ctx.api.ack(int(alert["id"]))
    except ApiError as exc:
        st.error(f"Alert {alert['id']} could not be acknowledged: {exc.message}")
        return
    ui.flash(f"Alert {done['id']} acknowledged by {done.get('acked_by') or 'this key'}.")
    st.rerun()


def _decide(ctx: ui.Context, trigger: Row, decision: str) -> None:
    note = st.session_state.get(f"note-{trigger['id']}") or None
    try:
        done = ctx.api.decide(int(trigger["id"]), decision, note)
    except ApiError as exc:
        st.error(f"Trigger {trigger['id']} could not be {decision}d: {exc.message}")
        return
    verb = "approved" if decision == "approve" else "rejected"
    ui.flash(
        f"Trigger {done['id']} {verb} by {done.get('decided_by') or 'this key'}; now {done.get('state')}."
    )
    st.rerun()


def _alert(ctx: ui.Context, alert: Row) -> None:
    state = str(alert.get("state"))
    with st.container(border=True):
        head = st.columns([5, 2, 2])
        with head[0]:
            severity = str(alert.get("severity"))
            st.markdown(
                f":{ui.SEVERITY_COLOURS.get(severity, 'gray')}-badge[{severity}] "
                f":{'red' if state == 'firing' else 'orange' if state == 'pending' else 'green'}-badge[{state}] "
                f"**{alert.get('rule')}** · #{alert.get('id')}"
            )
            what = " · ".join(
                p
                for p in (
                    str(alert.get("detector") or ""),
                    str(alert.get("metric") or ""),
                    f"feature {alert['feature']}" if alert.get("feature") else "",
                    f"slice {alert['slice']}" if alert.get("slice") else "",
                    f"version {alert['version']}" if alert.get("version") else "",
                )
                if p
            )
            st.markdown(what)
            window = ui.parse_time(alert.get("window_start"))
            window_end = ui.parse_time(alert.get("window_end"))
            st.caption(
                f"value {ui.fmt_num(alert.get('value'))} against threshold {ui.fmt_num(alert.get('threshold'))}"
                f" · window {ui.window_label(window, window_end) if window else '–'}"
                f" · breached {alert.get('breaches', '–')} of the last {alert.get('windows', '–')} windows"
                f" · since {ui.fmt_time(alert.get('since'))}"
                + (f" · acknowledged by {alert['acked_by']}" if alert.get("acked_by") else "")
            )
        with head[1]:
            ui.nav_link("Explain", ui.url(*ui.link_params(alert)), key=f"explain-{alert['id']}")
        with head[2]:
            if state in OPEN and not alert.get("acked_at"):
                if st.button("Acknowledge", key=f"ack-{alert['id']}", icon=":material/done:"):
                    _ack(ctx, alert)
            elif alert.get("acked_at"):
                st.caption("acknowledged")
        details = alert.get("details") or {}
        if details:
            with st.expander("Evidence"):
                ui.evidence(details)


def finding_link(model: str, finding: dict[str, Any]) -> str:
    """The page and window that show a trigger's finding (its newest window, a week before)."""
    latest = finding.get("latest") or {}
    return ui.url(
        *ui.link_params(
            {
                "model": model,
                "version": finding.get("version"),
                "detector": finding.get("detector"),
                "metric": finding.get("metric"),
                "feature": finding.get("feature"),
                "window_start": latest.get("window_start"),
                "window_end": latest.get("window_end"),
            }
        )
    )


def _findings(model: str, evidence: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for f in evidence.get("findings") or []:
        latest = f.get("latest") or {}
        rows.append(
            {
                "kind": f.get("kind"),
                "version": f.get("version"),
                "detector": f.get("detector"),
                "metric": f.get("metric"),
                "feature": f.get("feature") or "",
                "slice": f.get("slice") or "",
                "windows": f"{f.get('windows')} (needs {f.get('required')})",
                "since": f.get("since"),
                "value": latest.get("value"),
                "threshold": latest.get("threshold"),
                "explain": finding_link(model, f),
            }
        )
    return pd.DataFrame(rows)


def _trigger(ctx: ui.Context, trigger: Row) -> None:
    tid = trigger["id"]
    state = str(trigger.get("state"))
    with st.container(border=True):
        st.markdown(
            f":{'orange' if state == 'proposed' else 'green' if state in ('approved', 'dispatched') else 'gray'}"
            f"-badge[{state}] **Retraining trigger #{tid}** · {trigger.get('model')} · episode "
            f"{trigger.get('episode')} · proposed {ui.fmt_time(trigger.get('proposed_at'))}"
        )
        evidence = trigger.get("evidence") or {}
        figures = evidence.get("figures") or {}
        data = evidence.get("data") or {}
        if figures or data:
            st.caption(
                f"{ui.fmt_num(figures.get('samples'))} predictions, label coverage "
                f"{ui.fmt_pct(figures.get('label_coverage'))}; data {ui.fmt_time(data.get('start'))} → "
                f"{ui.fmt_time(data.get('end'))}"
            )
        if evidence.get("findings"):
            st.plotly_chart(charts.findings(evidence), key=f"findings-{tid}")
        findings = _findings(str(trigger.get("model")), evidence)
        if not findings.empty:
            st.dataframe(
                findings,
                hide_index=True,
                column_config={"explain": st.column_config.LinkColumn(display_text="explain")},
            )
        if trigger.get("decided_by"):
            st.caption(f"decided by {trigger['decided_by']} at {ui.fmt_time(trigger.get('decided_at'))}")
        with st.expander("Evidence and history"):
            ui.evidence({"evidence": evidence, "history": trigger.get("history") or []})
        if state == "proposed":
            cols = st.columns([4, 1, 1], vertical_alignment="bottom")
            cols[0].text_input("Note (recorded with the decision)", key=f"note-{tid}")
            with cols[1]:
                if st.button("Approve", key=f"approve-{tid}", type="primary", icon=":material/check:"):
                    _decide(ctx, trigger, "approve")
            with cols[2]:
                if st.button("Reject", key=f"reject-{tid}", icon=":material/close:"):
                    _decide(ctx, trigger, "reject")


def _dead(ctx: ui.Context, items: list[Row]) -> None:
    st.subheader(f"Dead-lettered notifications ({len(items)})")
    if not items:
        st.caption("Every notification was delivered or is still being retried.")
        return
    table = pd.DataFrame(
        [
            {
                "id": i.get("id"),
                "kind": i.get("kind"),
                "event": i.get("event"),
                "target": i.get("target"),
                "attempts": f"{i.get('attempts')}/{i.get('max_attempts')}",
                "last status": i.get("last_status"),
                "last error": i.get("last_error"),
                "alert": i.get("alert_id"),
                "trigger": i.get("trigger_id"),
                "created": i.get("created_at"),
            }
            for i in items
        ]
    )
    st.dataframe(table, hide_index=True)
    cols = st.columns([2, 1, 4], vertical_alignment="bottom")
    chosen = cols[0].selectbox("Notification", [int(i["id"]) for i in items], key="dead-item")
    with cols[1]:
        if st.button("Retry", key="retry-dead", icon=":material/replay:") and chosen is not None:
            try:
                done = ctx.api.retry(int(chosen))
            except ApiError as exc:
                st.error(f"Notification {chosen} could not be retried: {exc.message}")
            else:
                ui.flash(f"Notification {done['id']} queued again ({done.get('state')}).")
                st.rerun()


def render() -> None:
    ctx = ui.context()
    ui.header(ctx, "Alerts & triggers")
    ui.show_flash()
    cols = st.columns([2, 2, 4])
    show = cols[0].selectbox(
        "Alerts (open: firing or pending; recent: resolved too)", SHOW, key="show", bind="query-params"
    )
    every_model = cols[1].checkbox("Every model", key="all", bind="query-params")
    model = None if every_model else ctx.name
    got = ui.fetch_all(
        {
            "alerts": lambda: ctx.api.alerts(
                model=model, state="active" if show == "open" else None, limit=200
            ),
            "proposed": lambda: ctx.api.triggers(model=model, state="proposed"),
            "triggers": lambda: ctx.api.triggers(model=model, limit=20),
            "dead": ctx.api.dead_letters,
        }
    )
    proposed = ui.unwrap(got["proposed"], "Triggers") or []
    recent = [t for t in ui.unwrap(got["triggers"], "Triggers") or [] if t.get("state") != "proposed"]
    linked = str(st.query_params.get("trigger") or "")
    # the trigger a link names (a notification, the overview) comes first
    proposed.sort(key=lambda t: str(t.get("id")) != linked)
    st.subheader(f"Retraining triggers ({len(proposed)} waiting)")
    if not proposed and not recent:
        st.caption("No retraining trigger was proposed.")
    for trigger in [*proposed, *recent[:10]]:
        _trigger(ctx, trigger)
    alerts = ui.unwrap(got["alerts"], "Alerts") or []
    order = {"firing": 0, "pending": 1, "resolved": 2, "ok": 3}
    focus = ctx.focus.get("id") if ctx.focus else None
    alerts = sorted(
        alerts,
        key=lambda a: (a.get("id") != focus, order.get(str(a.get("state")), 4), -int(a.get("id") or 0)),
    )
    if ctx.focus and all(a.get("id") != focus for a in alerts):
        alerts.insert(0, ctx.focus)
    firing = sum(1 for a in alerts if a.get("state") == "firing")
    st.subheader(f"Alerts ({firing} firing, {len(alerts)} shown)")
    if not alerts:
        st.caption("No alerts.")
    else:
        st.plotly_chart(charts.alert_timeline(alerts), key="alert-timeline")
    for alert in alerts[:50]:
        _alert(ctx, alert)
    if len(alerts) > 50:
        st.caption(f"{len(alerts) - 50} more not shown; narrow to one model.")

    _dead(ctx, ui.unwrap(got["dead"], "Outbox") or [])


if __name__ == "__main__":
    with ui.guard():
        render()
