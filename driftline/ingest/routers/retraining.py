"""Retraining policies (one per model) and the triggers they propose: list, approve, reject.

Approval and rejection take an admin key, and are recorded with the key's id and prefix;
an approved trigger's evidence goes to the policy's pipeline webhook through the outbox,
signed like any webhook, and the trigger becomes `dispatched` once the pipeline took it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from driftline.alerts.service import parse_policy
from driftline.alerts.triggers import DriftFinding, Gates, LabelFinding, PerformanceFinding, PolicySpec
from driftline.ingest.api_models import ErrorOut
from driftline.ingest.deps import MAX_ID, AdminKey, ReadKey, State
from driftline.ingest.routers.alerts import OutboxOut, check_url, outbox_out, ref
from driftline.storage.meta.alerting import PolicyRecord, TriggerRecord, TriggerState

router = APIRouter(prefix="/v1", tags=["retraining"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 422, 503)
}
PolicyRef = Path(max_length=64, description="The policy's id or its model's name")


class PolicyIn(PolicySpec):
    model: str = Field(max_length=64)
    enabled: bool = True
    webhook_url: SecretStr = Field(description="The retraining pipeline's webhook (stored encrypted)")
    webhook_secret: SecretStr = Field(description="HMAC signing secret, 16+ characters (stored encrypted)")

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        return check_url(value)


class PolicyPatch(BaseModel):
    """Any subset; drift, performance, labels and gates merge into the stored ones."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    mode: str | None = None
    drift: dict[str, Any] | None = None
    performance: dict[str, Any] | None = None
    labels: dict[str, Any] | None = None
    gates: dict[str, Any] | None = None
    require_approval: bool | None = None
    webhook_url: SecretStr | None = None
    webhook_secret: SecretStr | None = None

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else check_url(value)


class PolicyStatus(BaseModel):
    episode: int = Field(description="Finding episodes seen so far")
    active: bool = Field(description="Findings hold at the newest window")
    trigger_id: int | None = Field(description="The trigger of the current episode")
    findings: int
    held: list[str] = Field(description="Gates holding the current episode back")
    latest_window_end: int | None
    evaluated_at: str | None


class PolicyOut(BaseModel):
    id: int
    model: str
    enabled: bool
    mode: str
    drift: DriftFinding
    performance: PerformanceFinding
    labels: LabelFinding
    gates: Gates
    require_approval: bool
    webhook_hint: str = Field(description="Scheme and host only")
    secret_set: bool
    status: PolicyStatus
    created_at: datetime
    updated_at: datetime


def policy_out(p: PolicyRecord) -> PolicyOut:
    spec = parse_policy(p.config)
    s = p.state
    return PolicyOut(
        id=p.id,
        model=p.model,
        enabled=p.enabled,
        mode=spec.mode,
        drift=spec.drift,
        performance=spec.performance,
        labels=spec.labels,
        gates=spec.gates,
        require_approval=spec.require_approval,
        webhook_hint=p.url_hint,
        secret_set=p.secret_token is not None,
        status=PolicyStatus(
            episode=int(s.get("episode") or 0),
            active=bool(s.get("active")),
            trigger_id=s.get("trigger_id"),
            findings=int(s.get("findings") or 0),
            held=list(s.get("held") or []),
            latest_window_end=s.get("latest_window_end"),
            evaluated_at=s.get("evaluated_at"),
        ),
        created_at=p.created_at,
        updated_at=p.updated_at,
    )


@router.post(
    "/retraining-policies",
    status_code=201,
    response_model=PolicyOut,
    responses=_ERRORS,
    summary="Set a model's retraining policy (one per model)",
)
def create_policy(body: PolicyIn, state: State, key: AdminKey) -> PolicyOut:
    spec = PolicySpec.model_validate(
        body.model_dump(exclude={"model", "enabled", "webhook_url", "webhook_secret"})
    )
    record = state.alerts.create_policy(
        key.project,
        body.model,
        spec,
        url=body.webhook_url.get_secret_value(),
        secret=body.webhook_secret.get_secret_value(),
        enabled=body.enabled,
    )
    return policy_out(record)


@router.get(
    "/retraining-policies", response_model=list[PolicyOut], responses=_ERRORS, summary="Retraining policies"
)
def list_policies(
    state: State, key: ReadKey, model: str | None = Query(default=None, max_length=64)
) -> list[PolicyOut]:
    with state.meta.repos(readonly=True) as repos:
        return [policy_out(p) for p in repos.policies.list(key.project, model)]


@router.get(
    "/retraining-policies/{policy}",
    response_model=PolicyOut,
    responses=_ERRORS,
    summary="A retraining policy",
)
def get_policy(state: State, key: ReadKey, policy: str = PolicyRef) -> PolicyOut:
    with state.meta.repos(readonly=True) as repos:
        return policy_out(repos.policies.require(key.project, ref(policy)))


@router.patch(
    "/retraining-policies/{policy}", response_model=PolicyOut, responses=_ERRORS, summary="Change a policy"
)
def patch_policy(body: PolicyPatch, state: State, key: AdminKey, policy: str = PolicyRef) -> PolicyOut:
    changes: dict[str, Any] = {}
    for name, value in body.model_dump(exclude_unset=True).items():
        plain = value.get_secret_value() if isinstance(value, SecretStr) else value
        changes[{"webhook_url": "url", "webhook_secret": "secret"}.get(name, name)] = plain
    return policy_out(state.alerts.update_policy(key.project, ref(policy), changes))


@router.delete(
    "/retraining-policies/{policy}",
    status_code=204,
    responses=_ERRORS,
    summary="Delete a policy (its triggers are kept)",
)
def delete_policy(state: State, key: AdminKey, policy: str = PolicyRef) -> Response:
    with state.meta.repos() as repos:
        repos.policies.delete(key.project, ref(policy))
    return Response(status_code=204)


# -- triggers ---------------------------------------------------------------------------------


class TriggerOut(BaseModel):
    id: int
    model: str
    state: TriggerState
    episode: int
    proposed_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    dispatched_at: datetime | None
    history: list[dict[str, Any]] = Field(description="Every step: state, at, by (key id and prefix), note")
    evidence: dict[str, Any]
    dispatch: OutboxOut | None = Field(description="The notification that carries it to the pipeline")


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=1000)


def trigger_out(t: TriggerRecord, dispatch: OutboxOut | None) -> TriggerOut:
    return TriggerOut(
        id=t.id,
        model=t.model,
        state=t.state,
        episode=t.episode,
        proposed_at=t.proposed_at,
        decided_at=t.decided_at,
        decided_by=t.decided_by,
        dispatched_at=t.dispatched_at,
        history=t.history,
        evidence=t.evidence,
        dispatch=dispatch,
    )


def _with_dispatch(state: State, t: TriggerRecord) -> TriggerOut:
    with state.meta.repos(readonly=True) as repos:
        item = repos.outbox.for_trigger(t.id)
    return trigger_out(t, None if item is None else outbox_out(item))


@router.get("/triggers", response_model=list[TriggerOut], responses=_ERRORS, summary="Triggers, newest first")
def list_triggers(
    state: State,
    key: ReadKey,
    model: str | None = Query(default=None, max_length=64),
    state_: Annotated[TriggerState | None, Query(alias="state")] = None,
    limit: int = Query(default=200, ge=1, le=5000),
) -> list[TriggerOut]:
    out = []
    with state.meta.repos(readonly=True) as repos:
        for t in repos.triggers.list(key.project, model=model, state=state_, limit=limit):
            item = repos.outbox.for_trigger(t.id)
            out.append(trigger_out(t, None if item is None else outbox_out(item)))
    return out


@router.get("/triggers/{trigger_id}", response_model=TriggerOut, responses=_ERRORS, summary="A trigger")
def get_trigger(state: State, key: ReadKey, trigger_id: int = Path(ge=1, le=MAX_ID)) -> TriggerOut:
    with state.meta.repos(readonly=True) as repos:
        found = repos.triggers.require(key.project, trigger_id)
    return _with_dispatch(state, found)


@router.post(
    "/triggers/{trigger_id}/approve",
    response_model=TriggerOut,
    responses=_ERRORS,
    summary="Approve a proposed trigger: its evidence is dispatched to the pipeline webhook",
)
def approve_trigger(
    state: State,
    key: AdminKey,
    trigger_id: int = Path(ge=1, le=MAX_ID),
    body: Annotated[Decision | None, Body()] = None,
) -> TriggerOut:
    done = state.alerts.approve(key.project, trigger_id, key, body.note if body else None)
    return _with_dispatch(state, done)


@router.post(
    "/triggers/{trigger_id}/reject",
    response_model=TriggerOut,
    responses=_ERRORS,
    summary="Reject a proposed trigger: nothing is sent",
)
def reject_trigger(
    state: State,
    key: AdminKey,
    trigger_id: int = Path(ge=1, le=MAX_ID),
    body: Annotated[Decision | None, Body()] = None,
) -> TriggerOut:
    done = state.alerts.reject(key.project, trigger_id, key, body.note if body else None)
    return _with_dispatch(state, done)
