"""The deployment checklist of a model version, judged from what driftline already knows.

Each item passes or says what is missing, so the list doubles as the to-do before a
version takes traffic: someone owns it, its inputs match the schema on live traffic, it
has a reference to be compared with, its evaluation is on record, its latency is logged,
somebody is told when it goes wrong, a retraining path exists, and it was approved.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from pydantic import BaseModel, Field

from driftline.alerts.service import parse_rule
from driftline.errors import InvalidInput
from driftline.ingest.model_facts import pick_version, reference_rows
from driftline.ingest.state import AppState
from driftline.schema import Approval
from driftline.storage.events import Kind
from driftline.storage.meta.records import ModelInfo, VersionInfo

MAX_VIOLATION_SHARE = 0.01  # live rows that may break the schema before it counts as not validated


class ReadinessItem(BaseModel):
    key: str
    label: str
    ok: bool
    detail: str = Field(description="What was found, or what is missing")


class ReadinessOut(BaseModel):
    model: str
    version: str
    ready: bool = Field(description="Every item passes")
    items: list[ReadinessItem]


def _live(state: AppState, info: ModelInfo, version: str) -> tuple[int, int, int]:
    """(predictions, predictions breaking the schema, predictions with a latency) of the version."""
    table = state.events.names(info.project, info.name)(Kind.PREDICTIONS)
    got = state.events.engine.query_columns(
        "SELECT count() AS n, countIf(notEmpty(dq)) AS bad, countIf(isNotNull(latency_ms)) AS timed "
        f"FROM {table} WHERE version = %(v)s",
        {"v": version},
    )
    return int(got["n"][0]), int(got["bad"][0]), int(got["timed"][0])


def _alerting(state: AppState, project: str, model: str) -> tuple[bool, str]:
    with state.meta.repos(readonly=True) as repos:
        channels = [c for c in repos.channels.list(project) if c.enabled]
        rules = [r for r in repos.rules.list(project, enabled_only=True) if fnmatchcase(model, r.model)]
    if not channels:
        return False, "no enabled alert channel in the project: add a Slack or webhook channel"
    if not rules:
        return False, f"no enabled alert rule selects model {model!r}"
    reaching = 0
    for rule in rules:
        try:
            spec = parse_rule(rule.spec)
        except InvalidInput:
            continue
        named = spec.channels
        if any((c.is_default if named is None else c.name in named) for c in channels):
            reaching += 1
    if not reaching:
        return False, f"{len(rules)} enabled rules, but none notifies an enabled channel"
    return True, f"{reaching} enabled rules notify {len(channels)} enabled channels"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "0%"


def build(state: AppState, info: ModelInfo, version_name: str) -> ReadinessOut:
    version: VersionInfo = pick_version(info, version_name)
    project, model = info.project, info.name
    items: list[ReadinessItem] = []

    def item(key: str, label: str, ok: bool, detail: str) -> None:
        items.append(ReadinessItem(key=key, label=label, ok=ok, detail=detail))

    item(
        "owner",
        "Owner set",
        bool(info.owner),
        f"owned by {info.owner}" if info.owner else "no owner: register the model with `owner`",
    )

    rows, bad, timed = _live(state, info, version.version)
    if rows == 0:
        schema_ok, schema_detail = False, f"schema registered; no live predictions of {version.version} yet"
    elif bad / rows > MAX_VIOLATION_SHARE:
        schema_ok, schema_detail = (
            False,
            f"{bad} of {rows} live predictions ({_share(bad, rows)}) break the schema, "
            f"above {MAX_VIOLATION_SHARE:.0%}: see the data_quality results",
        )
    else:
        schema_ok, schema_detail = (
            True,
            f"{rows} live predictions, {_share(bad, rows)} breaking the schema",
        )
    item("schema", "Schema registered and validated on live traffic", schema_ok, schema_detail)

    ref = reference_rows(state.events, project, model).get(version.version)
    if ref is None:
        ref_ok, ref_detail = False, f"no reference data uploaded for {version.version}"
    elif ref.labelled == 0:
        ref_ok, ref_detail = (
            False,
            f"{ref.rows} reference rows without labels: upload it with labels so performance has a baseline",
        )
    else:
        ref_ok, ref_detail = True, f"{ref.rows} reference rows, {ref.labelled} labelled"
    item("reference", "Reference uploaded, with labels", ref_ok, ref_detail)

    item(
        "eval_report",
        "Evaluation report linked",
        bool(version.eval_report_uri),
        version.eval_report_uri or "no eval_report_uri on the version",
    )

    if timed:
        latency_detail = f"{timed} of {rows} live predictions carry latency_ms"
    elif rows:
        latency_detail = "live predictions carry no latency_ms"
    else:
        latency_detail = "no live predictions yet"
    item("latency", "Latency measured on live traffic", timed > 0, latency_detail)

    alerting_ok, alerting_detail = _alerting(state, project, model)
    item("alerting", "Alert channel connected and rules enabled", alerting_ok, alerting_detail)

    with state.meta.repos(readonly=True) as repos:
        policy = repos.policies.get(project, model)
    if policy is None:
        policy_ok, policy_detail = False, "no retraining policy for the model"
    elif not policy.enabled:
        policy_ok, policy_detail = False, "the retraining policy is disabled"
    else:
        policy_ok, policy_detail = True, f"retraining policy sends to {policy.url_hint}"
    item("retraining_policy", "Retraining policy set", policy_ok, policy_detail)

    approved = version.approval is Approval.APPROVED
    item(
        "approval",
        "Approved",
        approved,
        "approved" if approved else f"approval is {version.approval.value}",
    )
    return ReadinessOut(model=model, version=version.version, ready=all(i.ok for i in items), items=items)
