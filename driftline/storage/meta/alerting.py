"""Tables of alerting: channels, rules, alert state per rule and series, the outbox, retraining.

Rule specs and retraining configs are stored as JSON text and validated by
`driftline.alerts`, so the storage layer does not depend on the rule language. Channel
URLs and secrets arrive here already encrypted (opaque tokens); this module never sees
a plaintext secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from driftline.storage.meta.models import Base, _in, utcnow


class ChannelType(StrEnum):
    SLACK = "slack"
    WEBHOOK = "webhook"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertStatus(StrEnum):
    """ok: nothing breaching (or a pending breach that cleared); the rest as named."""

    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class OutboxState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    DEAD = "dead"


class OutboxKind(StrEnum):
    ALERT = "alert"
    TEST = "test"
    TRIGGER = "trigger"


class TriggerState(StrEnum):
    PROPOSED = "proposed"
    APPROVED = "approved"
    REJECTED = "rejected"
    DISPATCHED = "dispatched"


class Channel(Base):
    __tablename__ = "alert_channels"
    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        CheckConstraint(_in("type", ChannelType), name="type"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    # encrypted tokens, never plaintext
    url_token: Mapped[str] = mapped_column(Text)
    url_hint: Mapped[str] = mapped_column(String(200))
    secret_token: Mapped[str | None] = mapped_column(Text, default=None)
    is_default: Mapped[bool] = mapped_column(Boolean, default=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlertRule(Base):
    __tablename__ = "alert_rules"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    # the selector's model pattern, kept as a column to find a model's rules
    model: Mapped[str] = mapped_column(String(64))
    # which default rule this is (None: made by a user)
    builtin: Mapped[str | None] = mapped_column(String(32), default=None)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    spec_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlertState(Base):
    """One rule applied to one series: the state machine's memory."""

    __tablename__ = "alert_states"
    __table_args__ = (
        UniqueConstraint("rule_id", "series_hash"),
        CheckConstraint(_in("status", AlertStatus), name="status"),
        CheckConstraint(_in("severity", Severity), name="severity"),
        Index("ix_alert_states_project_id_model", "project_id", "model"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(64))
    series_hash: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    detector: Mapped[str] = mapped_column(String(100))
    metric: Mapped[str] = mapped_column(String(200))
    feature: Mapped[str] = mapped_column(String(200))
    slice: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    episode: Mapped[int] = mapped_column(Integer, default=0)
    # [[window_end, breached], ...] of the last M windows with a verdict
    recent_json: Mapped[str] = mapped_column(Text, default="[]")
    # the latest window's figures (value, threshold, window, sample size, details)
    figures_json: Mapped[str] = mapped_column(Text, default="{}")
    last_window_end: Mapped[int | None] = mapped_column(BigInteger, default=None)
    since: Mapped[datetime] = mapped_column(default=utcnow)
    fired_at: Mapped[datetime | None] = mapped_column(default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    last_notified_at: Mapped[datetime | None] = mapped_column(default=None)
    notifications: Mapped[int] = mapped_column(Integer, default=0)
    acked_at: Mapped[datetime | None] = mapped_column(default=None)
    acked_by: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RetrainingPolicy(Base):
    __tablename__ = "retraining_policies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    config_json: Mapped[str] = mapped_column(Text)
    url_token: Mapped[str] = mapped_column(Text)
    url_hint: Mapped[str] = mapped_column(String(200))
    secret_token: Mapped[str | None] = mapped_column(Text, default=None)
    # the finding episode the policy is in (JSON; see driftline.alerts.triggers)
    state_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RetrainingTrigger(Base):
    __tablename__ = "retraining_triggers"
    __table_args__ = (
        CheckConstraint(_in("state", TriggerState), name="state"),
        Index("ix_retraining_triggers_project_id_model", "project_id", "model"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    policy_id: Mapped[int | None] = mapped_column(
        ForeignKey("retraining_policies.id", ondelete="SET NULL"), default=None, index=True
    )
    model: Mapped[str] = mapped_column(String(64))
    episode: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    evidence_json: Mapped[str] = mapped_column(Text)
    # [{"state", "at", "by", "note"}, ...]: every step, who and when
    history_json: Mapped[str] = mapped_column(Text, default="[]")
    proposed_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(default=None)
    decided_by: Mapped[str | None] = mapped_column(String(200), default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxItem(Base):
    """One notification to one target: written with the state change that caused it, sent later."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(_in("state", OutboxState), name="state"),
        CheckConstraint(_in("kind", OutboxKind), name="kind"),
        Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_outbox_project_id_state", "project_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    # the idempotency key receivers deduplicate by: stable across every attempt
    key: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    event: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(200))
    channel_id: Mapped[int | None] = mapped_column(
        ForeignKey("alert_channels.id", ondelete="SET NULL"), default=None, index=True
    )
    policy_id: Mapped[int | None] = mapped_column(
        ForeignKey("retraining_policies.id", ondelete="SET NULL"), default=None, index=True
    )
    alert_id: Mapped[int | None] = mapped_column(
        ForeignKey("alert_states.id", ondelete="SET NULL"), default=None, index=True
    )
    trigger_id: Mapped[int | None] = mapped_column(
        ForeignKey("retraining_triggers.id", ondelete="SET NULL"), default=None, index=True
    )
    # the exact bytes sent (UTF-8 JSON), so every attempt carries the same signature
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


# -- records ---------------------------------------------------------------------------------


def dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class ChannelRecord:
    id: int
    project: str
    name: str
    type: ChannelType
    url_token: str
    url_hint: str
    secret_token: str | None
    is_default: bool
    enabled: bool
    description: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class RuleRecord:
    id: int
    project: str
    name: str
    model: str
    builtin: str | None
    enabled: bool
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class AlertRecord:
    """A rule's state on one series; id 0 until first saved."""

    id: int
    rule_id: int
    project_id: int
    model: str
    series_hash: str
    version: str
    detector: str
    metric: str
    feature: str
    slice: str
    status: AlertStatus
    severity: Severity
    episode: int
    recent: list[tuple[int, bool]]
    figures: dict[str, Any]
    last_window_end: int | None
    since: datetime
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    last_notified_at: datetime | None = None
    notifications: int = 0
    acked_at: datetime | None = None
    acked_by: str | None = None
    rule_name: str = ""


@dataclass(frozen=True)
class OutboxRecord:
    id: int
    project_id: int
    key: str
    kind: OutboxKind
    event: str
    target: str
    channel_id: int | None
    policy_id: int | None
    alert_id: int | None
    trigger_id: int | None
    body: str
    state: OutboxState
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True)
class PolicyRecord:
    id: int
    project: str
    project_id: int
    model_id: int
    model: str
    enabled: bool
    config: dict[str, Any]
    url_token: str
    url_hint: str
    secret_token: str | None
    state: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TriggerRecord:
    id: int
    project_id: int
    policy_id: int | None
    model: str
    episode: int
    state: TriggerState
    evidence: dict[str, Any]
    history: list[dict[str, Any]]
    proposed_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    dispatched_at: datetime | None
    updated_at: datetime
