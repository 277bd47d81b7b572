"""Channels, rules, alerts and the outbox of the key's project.

Everything is scoped to the key's project: another project's rows answer 404 like
missing ones. Reads take a read key, writes an admin key. Channel URLs and secrets go in
and never come out: responses show a hint (scheme and host) and whether a secret is set.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from driftline.alerts import notifiers
from driftline.alerts.notifiers import iso
from driftline.alerts.rules import CHANNEL_NAME_PATTERN, RULE_NAME_PATTERN, RuleSpec
from driftline.alerts.service import parse_rule
from driftline.ingest.api_models import ErrorOut
from driftline.ingest.deps import MAX_ID, AdminKey, ReadKey, State
from driftline.storage.meta.alerting import (
    AlertRecord,
    AlertStatus,
    ChannelRecord,
    ChannelType,
    OutboxKind,
    OutboxRecord,
    OutboxState,
    RuleRecord,
    Severity,
)

router = APIRouter(prefix="/v1", tags=["alerts"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 422, 503)
}
ChannelRef = Path(max_length=64, description="The channel's name or id")


def ref(value: str) -> str | int:
    """A path segment naming a row by id (digits) or by name (names start with a letter)."""
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else value


def check_url(value: SecretStr) -> SecretStr:
    """http(s) with a host; the message never repeats the URL (it may be a credential)."""
    text = value.get_secret_value()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(text) > 2000:
        raise ValueError("must be an http(s) URL with a host, at most 2000 characters")
    # a name is checked on every address it resolves to, each time a notification is sent
    literal = notifiers.ip_literal(parts.hostname)
    reason = notifiers.forbidden_address(literal) if literal is not None else None
    if reason is not None:
        raise ValueError(f"must not point at {reason}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- channels ---------------------------------------------------------------------------------


class ChannelIn(_Strict):
    name: str = Field(pattern=CHANNEL_NAME_PATTERN, max_length=64)
    type: ChannelType
    url: SecretStr = Field(description="Slack incoming-webhook URL, or the webhook's URL (stored encrypted)")
    secret: SecretStr | None = Field(
        default=None, description="Webhooks: the HMAC signing secret, 16+ characters (stored encrypted)"
    )
    default: bool = Field(default=True, description="Rules without a channel list notify default channels")
    enabled: bool = True
    description: str = Field(default="", max_length=500)

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        return check_url(value)


class ChannelPatch(_Strict):
    url: SecretStr | None = None
    secret: SecretStr | None = None
    default: bool | None = None
    enabled: bool | None = None
    description: str | None = Field(default=None, max_length=500)

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else check_url(value)


class ChannelOut(BaseModel):
    id: int
    name: str
    type: ChannelType
    url_hint: str = Field(description="Scheme and host only: the URL itself is never shown")
    secret_set: bool
    default: bool
    enabled: bool
    description: str
    created_at: datetime
    updated_at: datetime


class OutboxOut(BaseModel):
    id: int
    key: str = Field(description="The Idempotency-Key every attempt carries")
    kind: OutboxKind
    event: str
    target: str
    state: OutboxState
    attempts: int
    max_attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    alert_id: int | None
    trigger_id: int | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any] | None = Field(default=None, description="The body sent (single item reads only)")


def channel_out(c: ChannelRecord) -> ChannelOut:
    return ChannelOut(
        id=c.id,
        name=c.name,
        type=c.type,
        url_hint=c.url_hint,
        secret_set=c.secret_token is not None,
        default=c.is_default,
        enabled=c.enabled,
        description=c.description,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


def outbox_out(r: OutboxRecord, *, payload: bool = False) -> OutboxOut:
    return OutboxOut(
        id=r.id,
        key=r.key,
        kind=r.kind,
        event=r.event,
        target=r.target,
        state=r.state,
        attempts=r.attempts,
        max_attempts=r.max_attempts,
        next_attempt_at=r.next_attempt_at if r.state is OutboxState.PENDING else None,
        last_status=r.last_status,
        last_error=r.last_error,
        alert_id=r.alert_id,
        trigger_id=r.trigger_id,
        created_at=r.created_at,
        updated_at=r.updated_at,
        delivered_at=r.delivered_at,
        payload=json.loads(r.body) if payload else None,
    )


@router.post(
    "/channels", status_code=201, response_model=ChannelOut, responses=_ERRORS, summary="Add a channel"
)
def create_channel(body: ChannelIn, state: State, key: AdminKey) -> ChannelOut:
    record = state.alerts.create_channel(
        key.project,
        name=body.name,
        type=body.type,
        url=body.url.get_secret_value(),
        secret=None if body.secret is None else body.secret.get_secret_value(),
        is_default=body.default,
        enabled=body.enabled,
        description=body.description,
    )
    return channel_out(record)


@router.get(
    "/channels", response_model=list[ChannelOut], responses=_ERRORS, summary="Channels of the project"
)
def list_channels(state: State, key: ReadKey) -> list[ChannelOut]:
    with state.meta.repos(readonly=True) as repos:
        return [channel_out(c) for c in repos.channels.list(key.project)]


@router.get("/channels/{channel}", response_model=ChannelOut, responses=_ERRORS, summary="A channel")
def get_channel(state: State, key: ReadKey, channel: str = ChannelRef) -> ChannelOut:
    with state.meta.repos(readonly=True) as repos:
        return channel_out(repos.channels.require(key.project, ref(channel)))


@router.patch(
    "/channels/{channel}",
    response_model=ChannelOut,
    responses=_ERRORS,
    summary="Change a channel (a new URL or secret replaces the stored one)",
)
def patch_channel(body: ChannelPatch, state: State, key: AdminKey, channel: str = ChannelRef) -> ChannelOut:
    changes: dict[str, Any] = {}
    for name, value in body.model_dump(exclude_unset=True).items():
        changes[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return channel_out(state.alerts.update_channel(key.project, ref(channel), changes))


@router.delete("/channels/{channel}", status_code=204, responses=_ERRORS, summary="Delete a channel")
def delete_channel(state: State, key: AdminKey, channel: str = ChannelRef) -> Response:
    state.alerts.delete_channel(key.project, ref(channel))
    return Response(status_code=204)


@router.post(
    "/channels/{channel}/test",
    response_model=OutboxOut,
    responses=_ERRORS,
    summary="Send a test message through the outbox; waits up to `wait` seconds for the outcome",
)
def test_channel(
    state: State,
    key: AdminKey,
    channel: str = ChannelRef,
    wait: float = Query(default=10.0, ge=0, le=120),
) -> OutboxOut:
    item = state.alerts.test_channel(key.project, ref(channel))
    deadline = time.monotonic() + wait
    while item.state not in (OutboxState.DELIVERED, OutboxState.DEAD) and time.monotonic() < deadline:
        time.sleep(0.05)
        with state.meta.repos(readonly=True) as repos:
            item = repos.outbox.get(key.project, item.id)
    return outbox_out(item)


# -- rules ------------------------------------------------------------------------------------


class RuleIn(RuleSpec):
    name: str = Field(pattern=RULE_NAME_PATTERN, max_length=100)
    enabled: bool = True


class RulePatch(_Strict):
    """Any subset; selector, condition and persistence merge into the stored ones."""

    name: str | None = Field(default=None, pattern=RULE_NAME_PATTERN, max_length=100)
    enabled: bool | None = None
    selector: dict[str, Any] | None = None
    condition: dict[str, Any] | None = None
    persistence: dict[str, Any] | None = None
    severity: Severity | None = None
    channels: list[str] | None = None
    repeat_interval: str | None = None
    notify_resolved: bool | None = None
    description: str | None = None


class RuleOut(RuleSpec):
    id: int
    name: str
    enabled: bool
    builtin: str | None = Field(description="Which default rule this is; null: made by a user")
    created_at: datetime
    updated_at: datetime


def rule_out(r: RuleRecord) -> RuleOut:
    spec = parse_rule(r.spec)
    return RuleOut(
        id=r.id,
        name=r.name,
        enabled=r.enabled,
        builtin=r.builtin,
        created_at=r.created_at,
        updated_at=r.updated_at,
        **spec.model_dump(),
    )


@router.post("/rules", status_code=201, response_model=RuleOut, responses=_ERRORS, summary="Add a rule")
def create_rule(body: RuleIn, state: State, key: AdminKey) -> RuleOut:
    spec = RuleSpec.model_validate(body.model_dump(exclude={"name", "enabled"}))
    return rule_out(state.alerts.create_rule(key.project, body.name, spec, enabled=body.enabled))


@router.get("/rules", response_model=list[RuleOut], responses=_ERRORS, summary="Rules of the project")
def list_rules(
    state: State,
    key: ReadKey,
    model: str | None = Query(default=None, max_length=64, description="Rules whose selector matches it"),
) -> list[RuleOut]:
    from fnmatch import fnmatchcase

    with state.meta.repos(readonly=True) as repos:
        rules = repos.rules.list(key.project)
    return [rule_out(r) for r in rules if model is None or fnmatchcase(model, r.model)]


@router.get("/rules/{rule_id}", response_model=RuleOut, responses=_ERRORS, summary="A rule")
def get_rule(state: State, key: ReadKey, rule_id: int = Path(ge=1, le=MAX_ID)) -> RuleOut:
    with state.meta.repos(readonly=True) as repos:
        return rule_out(repos.rules.require(key.project, rule_id))


@router.patch(
    "/rules/{rule_id}",
    response_model=RuleOut,
    responses=_ERRORS,
    summary="Change a rule; switching it off closes its open alerts quietly",
)
def patch_rule(body: RulePatch, state: State, key: AdminKey, rule_id: int = Path(ge=1, le=MAX_ID)) -> RuleOut:
    changes = body.model_dump(exclude_unset=True)
    return rule_out(state.alerts.update_rule(key.project, rule_id, changes))


@router.delete("/rules/{rule_id}", status_code=204, responses=_ERRORS, summary="Delete a rule and its alerts")
def delete_rule(state: State, key: AdminKey, rule_id: int = Path(ge=1, le=MAX_ID)) -> Response:
    with state.meta.repos() as repos:
        repos.rules.delete(key.project, rule_id)
    return Response(status_code=204)


# -- alerts -----------------------------------------------------------------------------------


class AlertOut(BaseModel):
    id: int
    rule_id: int
    rule: str
    model: str
    version: str
    detector: str
    metric: str
    feature: str
    slice: str
    state: AlertStatus
    severity: Severity
    episode: int
    value: float | None
    threshold: float | None
    window_start: str | None = Field(description="The newest window evaluated")
    window_end: str | None
    verdict: bool | None = Field(description="The detector's own verdict in the newest window")
    sample_size: int | None
    breaches: int = Field(description="Breaching windows among the last `windows`")
    windows: int
    since: datetime = Field(description="When the state last changed")
    fired_at: datetime | None
    resolved_at: datetime | None
    last_notified_at: datetime | None
    notifications: int = Field(description="Notifications of this episode (firing, repeats, resolved)")
    acked_at: datetime | None
    acked_by: str | None
    details: dict[str, Any]


def alert_out(a: AlertRecord) -> AlertOut:
    fig = a.figures
    return AlertOut(
        id=a.id,
        rule_id=a.rule_id,
        rule=a.rule_name,
        model=a.model,
        version=a.version,
        detector=a.detector,
        metric=a.metric,
        feature=a.feature,
        slice=a.slice,
        state=a.status,
        severity=a.severity,
        episode=a.episode,
        value=fig.get("value"),
        threshold=fig.get("threshold"),
        window_start=iso(fig.get("window_start")),
        window_end=iso(fig.get("window_end")),
        verdict=fig.get("alert"),
        sample_size=fig.get("sample_size"),
        breaches=sum(1 for _, b in a.recent if b),
        windows=len(a.recent),
        since=a.since,
        fired_at=a.fired_at,
        resolved_at=a.resolved_at,
        last_notified_at=a.last_notified_at,
        notifications=a.notifications,
        acked_at=a.acked_at,
        acked_by=a.acked_by,
        details={**fig.get("details", {}), **({"closed": fig["closed"]} if "closed" in fig else {})},
    )


_STATES: dict[str, list[AlertStatus] | None] = {
    "ok": [AlertStatus.OK],
    "pending": [AlertStatus.PENDING],
    "firing": [AlertStatus.FIRING],
    "resolved": [AlertStatus.RESOLVED],
    "active": [AlertStatus.PENDING, AlertStatus.FIRING],
    "all": None,
}


@router.get(
    "/alerts", response_model=list[AlertOut], responses=_ERRORS, summary="Alerts, newest change first"
)
def list_alerts(
    state: State,
    key: ReadKey,
    model: str | None = Query(default=None, max_length=64),
    state_: Literal["ok", "pending", "firing", "resolved", "active", "all"] | None = Query(
        default=None, alias="state", description="Default: pending, firing and resolved (not ok)"
    ),
    rule: int | None = Query(default=None, ge=1, le=MAX_ID),
    limit: int = Query(default=500, ge=1, le=10_000),
) -> list[AlertOut]:
    statuses = (
        [AlertStatus.PENDING, AlertStatus.FIRING, AlertStatus.RESOLVED] if state_ is None else _STATES[state_]
    )
    with state.meta.repos(readonly=True) as repos:
        found = repos.alerts.list(key.project, model=model, statuses=statuses, rule_id=rule, limit=limit)
    return [alert_out(a) for a in found]


@router.get("/alerts/{alert_id}", response_model=AlertOut, responses=_ERRORS, summary="An alert")
def get_alert(state: State, key: ReadKey, alert_id: int = Path(ge=1, le=MAX_ID)) -> AlertOut:
    with state.meta.repos(readonly=True) as repos:
        return alert_out(repos.alerts.get(key.project, alert_id))


@router.post(
    "/alerts/{alert_id}/ack",
    response_model=AlertOut,
    responses=_ERRORS,
    summary="Acknowledge: no repeats for the rest of this episode",
)
def ack_alert(state: State, key: AdminKey, alert_id: int = Path(ge=1, le=MAX_ID)) -> AlertOut:
    return alert_out(state.alerts.ack(key.project, alert_id, key))


# -- outbox -----------------------------------------------------------------------------------


@router.get(
    "/outbox", response_model=list[OutboxOut], responses=_ERRORS, summary="Notifications, newest first"
)
def list_outbox(
    state: State,
    key: ReadKey,
    state_: Annotated[OutboxState | None, Query(alias="state", description="e.g. dead")] = None,
    kind: Annotated[OutboxKind | None, Query()] = None,
    limit: int = Query(default=100, ge=1, le=10_000),
) -> list[OutboxOut]:
    with state.meta.repos(readonly=True) as repos:
        return [outbox_out(r) for r in repos.outbox.list(key.project, state=state_, kind=kind, limit=limit)]


@router.get(
    "/outbox/{item_id}", response_model=OutboxOut, responses=_ERRORS, summary="A notification, with its body"
)
def get_outbox(state: State, key: ReadKey, item_id: int = Path(ge=1, le=MAX_ID)) -> OutboxOut:
    with state.meta.repos(readonly=True) as repos:
        return outbox_out(repos.outbox.get(key.project, item_id), payload=True)


@router.post(
    "/outbox/{item_id}/retry",
    response_model=OutboxOut,
    responses=_ERRORS,
    summary="Give a dead notification a fresh set of attempts (same idempotency key)",
)
def retry_outbox(state: State, key: AdminKey, item_id: int = Path(ge=1, le=MAX_ID)) -> OutboxOut:
    return outbox_out(state.alerts.requeue(key.project, item_id))
