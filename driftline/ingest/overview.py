"""Every model of a project at a glance, with its open alerts and the triggers awaiting a decision.

The page opens first every morning, so it costs a fixed handful of queries whatever the
number of windows detected: one metadata transaction (models, open alerts, proposed
triggers), two aggregates over the metrics table (each series' newest result; each model's
newest window) and one over the recent days of every model's predictions.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from driftline.detectors.monitors import iso
from driftline.errors import StoreError
from driftline.ingest.model_facts import champion
from driftline.ingest.state import AppState
from driftline.schema import Approval, Role, Task
from driftline.storage.events import Kind, quote_literal
from driftline.storage.meta.alerting import AlertRecord, AlertStatus, Severity, TriggerRecord, TriggerState
from driftline.storage.meta.records import ModelInfo

log = logging.getLogger(__name__)

DAY = 86_400
RECENT_SECONDS = 7 * DAY  # traffic and freshness read this much of the raw predictions first
MAX_ALERTS = 1000
MAX_TRIGGERS = 200
# the headline metric of each task, in order of preference
HEADLINE: dict[Task, tuple[str, ...]] = {
    Task.BINARY: ("roc_auc", "accuracy"),
    Task.MULTICLASS: ("accuracy", "f1"),
    Task.REGRESSION: ("mae", "rmse"),
}
Health = Literal["ok", "warning", "critical", "unknown"]
_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
_HEALTH: dict[Severity, Health] = {
    Severity.INFO: "ok",
    Severity.WARNING: "warning",
    Severity.CRITICAL: "critical",
}


class VersionBrief(BaseModel):
    version: str
    role: Role
    approval: Approval


class PerformanceBrief(BaseModel):
    metric: str
    value: float
    reference: float | None = Field(description="The reference's level of the same metric")
    estimated: bool = Field(description="True: estimated before labels (no realised value yet)")
    window_end: str


class ModelHealth(BaseModel):
    name: str
    owner: str | None
    task: Task
    versions: list[VersionBrief]
    health: Health = Field(description="Worst severity among open alerts; unknown until first detected")
    open_alerts: int
    drifted_share: float | None = Field(description="Newest share of drifted features of the champion")
    performance: PerformanceBrief | None = Field(
        description="The champion's newest realised performance, else its newest estimate"
    )
    traffic_24h: int = Field(description="Predictions logged in the last 24 hours, every version")
    freshness_seconds: float | None = Field(description="Seconds since the newest prediction")
    last_window_end: str | None = Field(description="End of the newest window with results")


class AlertBrief(BaseModel):
    id: int
    model: str
    version: str
    detector: str
    severity: Severity
    state: AlertStatus
    rule: str
    metric: str
    feature: str
    slice: str
    value: float | None
    threshold: float | None
    since: datetime
    window_start: str | None = Field(description="The newest window the rule evaluated")
    window_end: str | None


class TriggerBrief(BaseModel):
    id: int
    model: str
    created_at: datetime
    summary: str
    findings: int


class OverviewOut(BaseModel):
    models: list[ModelHealth]
    alerts: list[AlertBrief] = Field(description="Open (pending or firing) alerts, newest change first")
    triggers: list[TriggerBrief] = Field(description="Retraining triggers awaiting approval")


def _latest_results(state: AppState, project: str) -> dict[tuple[str, str, str, str], tuple[int, float, str]]:
    """(model, version, detector, metric) -> (window end, value, details) of each headline series' newest ok window.

    The newest windows are found without reading details (the widest column), then the
    details of those few windows alone are read.
    """
    table = state.runner.metrics
    table.ensure()
    metrics = tuple(sorted({m for ms in HEADLINE.values() for m in ms}))
    scope = (
        f"FROM {table.table} WHERE project = %(project)s AND slice = '' AND feature = '' AND ("
        "(detector = 'dataset_drift' AND metric = 'drift_share') OR "
        "(detector IN ('performance', 'estimated_performance') AND metric IN %(metrics)s))"
    )
    params: dict[str, Any] = {"project": project, "metrics": metrics}
    got = table.engine.query_columns(
        "SELECT model, version, detector, metric, we, value FROM ("
        "SELECT model, version, detector, metric, toUInt32(window_end) AS we, argMax(value, computed_ns) AS value, "
        f"argMax(status, computed_ns) AS st {scope} "
        "GROUP BY model, version, detector, detector_id, metric, window_start, window_end"
        ") WHERE st = 'ok' ORDER BY we DESC LIMIT 1 BY model, version, detector, metric",
        params,
    )
    keys = [
        (str(m), str(v), str(d), str(k), int(w))
        for m, v, d, k, w in zip(
            got["model"], got["version"], got["detector"], got["metric"], got["we"], strict=True
        )
    ]
    details: dict[tuple[str, str, str, str, int], str] = {}
    ends = tuple(sorted({k[4] for k in keys if k[2] != "dataset_drift"}))
    if ends:
        found = table.engine.query_columns(
            "SELECT model, version, detector, metric, toUInt32(window_end) AS we, "
            f"argMax(details, computed_ns) AS details {scope} AND toUInt32(window_end) IN %(ends)s "
            "GROUP BY model, version, detector, detector_id, metric, window_start, window_end",
            {**params, "ends": ends},
        )
        for i in range(len(found["model"])):
            key = (
                str(found["model"][i]),
                str(found["version"][i]),
                str(found["detector"][i]),
                str(found["metric"][i]),
                int(found["we"][i]),
            )
            details[key] = str(found["details"][i] or "{}")
    return {
        k[:4]: (k[4], float(value), details.get(k, "{}"))
        for k, value in zip(keys, got["value"].tolist(), strict=True)
    }


def _last_windows(state: AppState, project: str) -> dict[str, int]:
    table = state.runner.metrics
    got = table.engine.query_columns(
        f"SELECT model, toUInt32(max(window_end)) AS we FROM {table.table} WHERE project = %(project)s GROUP BY model",
        {"project": project},
    )
    return {str(m): int(w) for m, w in zip(got["model"], got["we"], strict=True)}


def _traffic_sql(state: AppState, project: str, models: list[str], since: int | None, day: int) -> str:
    parts = []
    for name in models:
        table = state.events.names(project, name)(Kind.PREDICTIONS)
        where = "" if since is None else f" WHERE ts >= toDateTime({int(since)}, 'UTC')"
        parts.append(
            f"SELECT {quote_literal(name)} AS model, countIf(ts >= toDateTime({int(day)}, 'UTC')) AS day, "
            f"count() AS n, toUInt32(max(ts)) AS newest FROM {table}{where}"
        )
    return " UNION ALL ".join(parts)


def _traffic(
    state: AppState, project: str, models: list[str], now: float
) -> dict[str, tuple[int, int | None]]:
    """model -> (predictions in the last 24 h, newest prediction time or None).

    The recent days are read for every model in one query (daily partitions keep it small);
    only a model silent over them has its whole table read for its newest time.
    """
    if not models:
        return {}
    day = int(now) - DAY
    out: dict[str, tuple[int, int | None]] = {}

    def run(names: list[str], since: int | None) -> None:
        try:
            got = state.events.engine.query_columns(_traffic_sql(state, project, names, since, day))
        except StoreError:
            if len(names) == 1:
                log.warning("no traffic figures for model %r", names[0], exc_info=True)
                return
            for name in names:  # one model's broken table must not blank the page
                run([name], since)
            return
        for m, d, n, newest in zip(got["model"], got["day"], got["n"], got["newest"], strict=True):
            out[str(m)] = (int(d), int(newest) if int(n) else None)

    run(models, int(now) - RECENT_SECONDS)
    quiet = [m for m in models if out.get(m, (0, None))[1] is None]
    if quiet:
        run(quiet, None)
    return out


def _health(alerts: list[AlertRecord], detected: bool) -> Health:
    if not alerts:
        return "ok" if detected else "unknown"
    worst = max((a.severity for a in alerts), key=lambda s: _RANK[s])
    return _HEALTH[worst]


def _performance(
    info: ModelInfo, version: str, latest: dict[tuple[str, str, str, str], tuple[int, float, str]]
) -> PerformanceBrief | None:
    """Realised when a labelled window exists, else estimated; the task's headline metric first."""
    for detector, estimated in (("performance", False), ("estimated_performance", True)):
        for metric in HEADLINE[info.task]:
            found = latest.get((info.name, version, detector, metric))
            if found is None:
                continue
            window_end, value, details_text = found
            details: dict[str, Any] = json.loads(details_text)
            ref = details.get("reference")
            level = ref.get("value") if isinstance(ref, dict) else ref
            return PerformanceBrief(
                metric=metric,
                value=value,
                reference=float(level) if isinstance(level, int | float) else None,
                estimated=estimated,
                window_end=iso(window_end) or "",
            )
    return None


def trigger_summary(evidence: dict[str, Any]) -> str:
    """One line naming what the trigger found, for a list where its evidence is one click away."""
    findings = [f for f in evidence.get("findings") or [] if isinstance(f, dict)]
    parts = []
    for f in findings[:5]:
        text = f"{f.get('kind', 'finding')}: {f.get('detector', '')} {f.get('metric', '')}".rstrip()
        if f.get("feature"):
            text += f" on {f['feature']}"
        if f.get("slice"):
            text += f" in {f['slice']}"
        text += f" ({f.get('version', '')}, {f.get('windows', '?')} windows)"
        parts.append(text)
    if len(findings) > 5:
        parts.append(f"and {len(findings) - 5} more")
    return "; ".join(parts) or "no findings recorded"


def alert_brief(a: AlertRecord) -> AlertBrief:
    fig = a.figures
    return AlertBrief(
        id=a.id,
        model=a.model,
        version=a.version,
        detector=a.detector,
        severity=a.severity,
        state=a.status,
        rule=a.rule_name,
        metric=a.metric,
        feature=a.feature,
        slice=a.slice,
        value=fig.get("value"),
        threshold=fig.get("threshold"),
        since=a.since,
        window_start=iso(fig.get("window_start")),
        window_end=iso(fig.get("window_end")),
    )


def trigger_brief(t: TriggerRecord) -> TriggerBrief:
    return TriggerBrief(
        id=t.id,
        model=t.model,
        created_at=t.proposed_at,
        summary=trigger_summary(t.evidence),
        findings=len(t.evidence.get("findings") or []),
    )


def build(state: AppState, project: str, now: float) -> OverviewOut:
    with state.meta.repos(readonly=True) as repos:
        infos = repos.models.list(project)
        alerts = repos.alerts.list(
            project, statuses=[AlertStatus.PENDING, AlertStatus.FIRING], limit=MAX_ALERTS
        )
        proposed = repos.triggers.list(project, state=TriggerState.PROPOSED, limit=MAX_TRIGGERS)
    latest = _latest_results(state, project)
    windows = _last_windows(state, project)
    traffic = _traffic(state, project, [i.name for i in infos], now)
    models = []
    for info in infos:
        serving = champion(info)
        own = [a for a in alerts if a.model == info.name]
        shares = latest.get((info.name, serving.version, "dataset_drift", "drift_share")) if serving else None
        day, newest = traffic.get(info.name, (0, None))
        models.append(
            ModelHealth(
                name=info.name,
                owner=info.owner,
                task=info.task,
                versions=[
                    VersionBrief(version=v.version, role=v.role, approval=v.approval) for v in info.versions
                ],
                health=_health(own, info.name in windows),
                open_alerts=len(own),
                drifted_share=shares[1] if shares else None,
                performance=_performance(info, serving.version, latest) if serving else None,
                traffic_24h=day,
                freshness_seconds=None if newest is None else max(now - newest, 0.0),
                last_window_end=iso(windows.get(info.name)),
            )
        )
    known = {i.name for i in infos}  # a deleted model's states outlive it; they concern nobody now
    return OverviewOut(
        models=models,
        alerts=[alert_brief(a) for a in alerts if a.model in known],
        triggers=[trigger_brief(t) for t in proposed if t.model in known],
    )
