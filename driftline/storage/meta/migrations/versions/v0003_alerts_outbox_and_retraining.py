"""alert channels, rules and state, the notification outbox, retraining policies and triggers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _project(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["project_id"], ["projects.id"], name=op.f(f"fk_{table}_project_id_projects"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "alert_channels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("url_token", sa.Text(), nullable=False),
        sa.Column("url_hint", sa.String(200), nullable=False),
        sa.Column("secret_token", sa.Text(), nullable=True),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint("type IN ('slack', 'webhook')", name=op.f("ck_alert_channels_type")),
        _project("alert_channels"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_channels")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_alert_channels_project_id_name")),
    )
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("builtin", sa.String(32), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _project("alert_rules"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_rules")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_alert_rules_project_id_name")),
    )
    op.create_table(
        "alert_states",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("series_hash", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("detector", sa.String(100), nullable=False),
        sa.Column("metric", sa.String(200), nullable=False),
        sa.Column("feature", sa.String(200), nullable=False),
        sa.Column("slice", sa.String(300), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("recent_json", sa.Text(), nullable=False),
        sa.Column("figures_json", sa.Text(), nullable=False),
        sa.Column("last_window_end", sa.BigInteger(), nullable=True),
        _ts("since"),
        _ts("fired_at", nullable=True),
        _ts("resolved_at", nullable=True),
        _ts("last_notified_at", nullable=True),
        sa.Column("notifications", sa.Integer(), nullable=False),
        _ts("acked_at", nullable=True),
        sa.Column("acked_by", sa.String(200), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(
            "severity IN ('info', 'warning', 'critical')", name=op.f("ck_alert_states_severity")
        ),
        sa.CheckConstraint(
            "status IN ('ok', 'pending', 'firing', 'resolved')", name=op.f("ck_alert_states_status")
        ),
        _project("alert_states"),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["alert_rules.id"],
            name=op.f("fk_alert_states_rule_id_alert_rules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_states")),
        sa.UniqueConstraint("rule_id", "series_hash", name=op.f("uq_alert_states_rule_id_series_hash")),
    )
    op.create_index("ix_alert_states_project_id_model", "alert_states", ["project_id", "model"])
    op.create_table(
        "retraining_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("url_token", sa.Text(), nullable=False),
        sa.Column("url_hint", sa.String(200), nullable=False),
        sa.Column("secret_token", sa.Text(), nullable=True),
        sa.Column("state_json", sa.Text(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_retraining_policies_model_id_models"),
            ondelete="CASCADE",
        ),
        _project("retraining_policies"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retraining_policies")),
        sa.UniqueConstraint("model_id", name=op.f("uq_retraining_policies_model_id")),
    )
    op.create_table(
        "retraining_triggers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("evidence_json", sa.Text(), nullable=False),
        sa.Column("history_json", sa.Text(), nullable=False),
        _ts("proposed_at"),
        _ts("decided_at", nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        _ts("dispatched_at", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(
            "state IN ('proposed', 'approved', 'rejected', 'dispatched')",
            name=op.f("ck_retraining_triggers_state"),
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["retraining_policies.id"],
            name=op.f("fk_retraining_triggers_policy_id_retraining_policies"),
            ondelete="SET NULL",
        ),
        _project("retraining_triggers"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retraining_triggers")),
    )
    op.create_index(op.f("ix_retraining_triggers_policy_id"), "retraining_triggers", ["policy_id"])
    op.create_index("ix_retraining_triggers_project_id_model", "retraining_triggers", ["project_id", "model"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("channel_id", sa.Integer(), nullable=True),
        sa.Column("policy_id", sa.Integer(), nullable=True),
        sa.Column("alert_id", sa.Integer(), nullable=True),
        sa.Column("trigger_id", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at"),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        _ts("lease_expires_at", nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("delivered_at", nullable=True),
        sa.CheckConstraint("kind IN ('alert', 'test', 'trigger')", name=op.f("ck_outbox_kind")),
        sa.CheckConstraint(
            "state IN ('pending', 'sending', 'delivered', 'dead')", name=op.f("ck_outbox_state")
        ),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["alert_states.id"],
            name=op.f("fk_outbox_alert_id_alert_states"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["channel_id"],
            ["alert_channels.id"],
            name=op.f("fk_outbox_channel_id_alert_channels"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["retraining_policies.id"],
            name=op.f("fk_outbox_policy_id_retraining_policies"),
            ondelete="SET NULL",
        ),
        _project("outbox"),
        sa.ForeignKeyConstraint(
            ["trigger_id"],
            ["retraining_triggers.id"],
            name=op.f("fk_outbox_trigger_id_retraining_triggers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("key", name=op.f("uq_outbox_key")),
    )
    for column in ("alert_id", "channel_id", "policy_id", "trigger_id"):
        op.create_index(op.f(f"ix_outbox_{column}"), "outbox", [column])
    op.create_index("ix_outbox_project_id_state", "outbox", ["project_id", "state"])
    op.create_index("ix_outbox_state_next_attempt_at", "outbox", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("retraining_triggers")
    op.drop_table("retraining_policies")
    op.drop_table("alert_states")
    op.drop_table("alert_rules")
    op.drop_table("alert_channels")
