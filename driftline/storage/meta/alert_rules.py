"""Repositories of channels, alert rules and alert state, scoped to a project.

Every lookup takes the project, so a row of another project is as invisible as a
missing one (NotFound). Nothing here commits: the caller's transaction writes a state
change and the notifications it causes together.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from driftline.errors import Conflict, NotFound
from driftline.storage.meta._sql import fresh, insert
from driftline.storage.meta.alerting import (
    AlertRecord,
    AlertRule,
    AlertState,
    AlertStatus,
    Channel,
    ChannelRecord,
    ChannelType,
    RuleRecord,
    Severity,
    dump,
)
from driftline.storage.meta.models import Project, utcnow
from driftline.storage.meta.projects import project_row, require_project


def _channel(row: Channel, project: str) -> ChannelRecord:
    return ChannelRecord(
        id=row.id,
        project=project,
        name=row.name,
        type=ChannelType(row.type),
        url_token=row.url_token,
        url_hint=row.url_hint,
        secret_token=row.secret_token,
        is_default=row.is_default,
        enabled=row.enabled,
        description=row.description,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class ChannelRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def _row(self, project: str, ref: str | int) -> tuple[Project, Channel] | None:
        owner = project_row(self._session, project)
        if owner is None:
            return None
        stmt = fresh(select(Channel)).where(Channel.project_id == owner.id)
        stmt = stmt.where(Channel.id == ref) if isinstance(ref, int) else stmt.where(Channel.name == ref)
        row = self._session.scalars(stmt).one_or_none()
        return None if row is None else (owner, row)

    def _require(self, project: str, ref: str | int) -> tuple[Project, Channel]:
        found = self._row(project, ref)
        if found is None:
            raise NotFound(f"no channel {ref!r} in project {project!r}")
        return found

    def create(
        self,
        project: str,
        name: str,
        type: ChannelType,
        url_token: str,
        url_hint: str,
        secret_token: str | None,
        *,
        is_default: bool,
        enabled: bool,
        description: str,
    ) -> ChannelRecord:
        owner = project_row(self._session, project, create=True)
        assert owner is not None
        now = utcnow()
        result = self._session.execute(
            insert(self._session, Channel)
            .values(
                project_id=owner.id,
                name=name,
                type=type.value,
                url_token=url_token,
                url_hint=url_hint,
                secret_token=secret_token,
                is_default=is_default,
                enabled=enabled,
                description=description,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["project_id", "name"])
            .returning(Channel.id)
        )
        if result.scalar_one_or_none() is None:
            raise Conflict(f"a channel named {name!r} exists in project {project!r}")
        return self.require(project, name)

    def get(self, project: str, ref: str | int) -> ChannelRecord | None:
        found = self._row(project, ref)
        return None if found is None else _channel(found[1], project)

    def require(self, project: str, ref: str | int) -> ChannelRecord:
        _, row = self._require(project, ref)
        return _channel(row, project)

    def by_id(self, channel_id: int) -> ChannelRecord | None:
        found = self._session.execute(
            fresh(select(Channel, Project.name).join(Project, Project.id == Channel.project_id)).where(
                Channel.id == channel_id
            )
        ).one_or_none()
        return None if found is None else _channel(found[0], found[1])

    def list(self, project: str) -> builtins.list[ChannelRecord]:
        owner = project_row(self._session, project)
        if owner is None:
            return []
        rows = self._session.scalars(
            fresh(select(Channel)).where(Channel.project_id == owner.id).order_by(Channel.name)
        )
        return [_channel(r, project) for r in rows]

    def update(self, project: str, ref: str | int, **changes: Any) -> ChannelRecord:
        """Set the given columns (url_token, url_hint, secret_token, is_default, enabled, description)."""
        _, row = self._require(project, ref)
        allowed = {"url_token", "url_hint", "secret_token", "is_default", "enabled", "description"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)}")
        for name, value in changes.items():
            setattr(row, name, value)
        row.updated_at = utcnow()
        self._session.flush()
        return _channel(row, project)

    def delete(self, project: str, ref: str | int) -> None:
        _, row = self._require(project, ref)
        self._session.execute(delete(Channel).where(Channel.id == row.id))
        self._session.expunge(row)


def _rule(row: AlertRule, project: str) -> RuleRecord:
    return RuleRecord(
        id=row.id,
        project=project,
        name=row.name,
        model=row.model,
        builtin=row.builtin,
        enabled=row.enabled,
        spec=json.loads(row.spec_json),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class RuleRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def _require(self, project: str, rule_id: int, *, lock: bool = False) -> AlertRule:
        owner = project_row(self._session, project)
        stmt = fresh(select(AlertRule)).where(AlertRule.id == rule_id)
        if lock:
            stmt = stmt.with_for_update()
        row = None if owner is None else self._session.scalars(stmt).one_or_none()
        if row is None or owner is None or row.project_id != owner.id:
            raise NotFound(f"no rule {rule_id} in project {project!r}")
        return row

    def create(
        self,
        project: str,
        name: str,
        model: str,
        spec: dict[str, Any],
        *,
        enabled: bool = True,
        builtin: str | None = None,
        if_missing: bool = False,
    ) -> RuleRecord | None:
        """A new rule; with `if_missing` a name already taken is left alone (None), else Conflict."""
        owner = project_row(self._session, project, create=True)
        assert owner is not None
        now = utcnow()
        result = self._session.execute(
            insert(self._session, AlertRule)
            .values(
                project_id=owner.id,
                name=name,
                model=model,
                builtin=builtin,
                enabled=enabled,
                spec_json=dump(spec),
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["project_id", "name"])
            .returning(AlertRule.id)
        )
        new_id = result.scalar_one_or_none()
        if new_id is None:
            if if_missing:
                return None
            raise Conflict(f"a rule named {name!r} exists in project {project!r}")
        return self.require(project, int(new_id))

    def require(self, project: str, rule_id: int) -> RuleRecord:
        return _rule(self._require(project, rule_id), project)

    def list(self, project: str, *, enabled_only: bool = False) -> builtins.list[RuleRecord]:
        owner = project_row(self._session, project)
        if owner is None:
            return []
        stmt = fresh(select(AlertRule)).where(AlertRule.project_id == owner.id)
        if enabled_only:
            stmt = stmt.where(AlertRule.enabled.is_(True))
        return [_rule(r, project) for r in self._session.scalars(stmt.order_by(AlertRule.id))]

    def lock(self, project: str, rule_ids: Iterable[int]) -> dict[int, RuleRecord]:
        """The rules as they are now, row-locked in id order until the transaction ends.

        Two evaluations of one model (the scheduler and a backfill) then apply their
        windows one after the other, and the second finds the first one's state.
        SQLite needs no row lock: its writing transactions are serial.
        """
        ids = sorted(set(rule_ids))
        if not ids:
            return {}
        owner = require_project(self._session, project)
        rows = self._session.scalars(
            fresh(select(AlertRule))
            .where(AlertRule.project_id == owner.id, AlertRule.id.in_(ids))
            .order_by(AlertRule.id)
            .with_for_update()
        )
        return {r.id: _rule(r, project) for r in rows}

    def update(
        self,
        project: str,
        rule_id: int,
        *,
        name: str,
        model: str,
        spec: dict[str, Any],
        enabled: bool,
    ) -> RuleRecord:
        row = self._require(project, rule_id, lock=True)
        if name != row.name:
            taken = self._session.scalars(
                select(AlertRule.id).where(AlertRule.project_id == row.project_id, AlertRule.name == name)
            ).first()
            if taken is not None:
                raise Conflict(f"a rule named {name!r} exists in project {project!r}")
        row.name, row.model, row.spec_json, row.enabled = name, model, dump(spec), enabled
        row.updated_at = utcnow()
        self._session.flush()
        return _rule(row, project)

    def delete(self, project: str, rule_id: int) -> None:
        row = self._require(project, rule_id)
        self._session.execute(delete(AlertRule).where(AlertRule.id == row.id))
        self._session.expunge(row)

    def using_channel(self, project: str, channel: str) -> builtins.list[RuleRecord]:
        """Rules that name the channel explicitly."""
        return [r for r in self.list(project) if channel in (r.spec.get("channels") or [])]


def _alert(row: AlertState, rule_name: str = "") -> AlertRecord:
    return AlertRecord(
        id=row.id,
        rule_id=row.rule_id,
        project_id=row.project_id,
        model=row.model,
        series_hash=row.series_hash,
        version=row.version,
        detector=row.detector,
        metric=row.metric,
        feature=row.feature,
        slice=row.slice,
        status=AlertStatus(row.status),
        severity=Severity(row.severity),
        episode=row.episode,
        recent=[(int(w), bool(b)) for w, b in json.loads(row.recent_json)],
        figures=json.loads(row.figures_json),
        last_window_end=row.last_window_end,
        since=row.since,
        fired_at=row.fired_at,
        resolved_at=row.resolved_at,
        last_notified_at=row.last_notified_at,
        notifications=row.notifications,
        acked_at=row.acked_at,
        acked_by=row.acked_by,
        rule_name=rule_name,
    )


_ALERT_COLUMNS = (
    "status",
    "severity",
    "episode",
    "last_window_end",
    "since",
    "fired_at",
    "resolved_at",
    "last_notified_at",
    "notifications",
    "acked_at",
    "acked_by",
)


class AlertRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def for_rule(self, rule_id: int, model: str) -> dict[str, AlertRecord]:
        """The rule's states on a model's series, by series hash."""
        rows = self._session.scalars(
            fresh(select(AlertState)).where(AlertState.rule_id == rule_id, AlertState.model == model)
        )
        return {r.series_hash: _alert(r) for r in rows}

    def save(self, record: AlertRecord) -> AlertRecord:
        """Insert (id 0) or update the state; returns it with its id."""
        now = utcnow()
        if record.id == 0:
            row = AlertState(
                rule_id=record.rule_id,
                project_id=record.project_id,
                model=record.model,
                series_hash=record.series_hash,
                version=record.version,
                detector=record.detector,
                metric=record.metric,
                feature=record.feature,
                slice=record.slice,
                created_at=now,
            )
            self._session.add(row)
        else:
            found = self._session.get(AlertState, record.id)
            if found is None:
                raise NotFound(f"alert {record.id} is gone")
            row = found
        for name in _ALERT_COLUMNS:
            value = getattr(record, name)
            setattr(row, name, value.value if name in ("status", "severity") else value)
        row.recent_json = dump([[w, b] for w, b in record.recent])
        row.figures_json = dump(record.figures)
        row.updated_at = now
        self._session.flush()
        return _alert(row, record.rule_name)

    def _query(self, project_id: int) -> Any:
        return (
            fresh(select(AlertState, AlertRule.name))
            .join(AlertRule, AlertRule.id == AlertState.rule_id)
            .where(AlertState.project_id == project_id)
        )

    def get(self, project: str, alert_id: int) -> AlertRecord:
        owner = project_row(self._session, project)
        found = (
            None
            if owner is None
            else self._session.execute(self._query(owner.id).where(AlertState.id == alert_id)).one_or_none()
        )
        if found is None:
            raise NotFound(f"no alert {alert_id} in project {project!r}")
        return _alert(found[0], found[1])

    def list(
        self,
        project: str,
        *,
        model: str | None = None,
        statuses: Iterable[AlertStatus] | None = None,
        rule_id: int | None = None,
        limit: int = 1000,
    ) -> builtins.list[AlertRecord]:
        owner = project_row(self._session, project)
        if owner is None:
            return []
        stmt = self._query(owner.id)
        if model is not None:
            stmt = stmt.where(AlertState.model == model)
        if statuses is not None:
            stmt = stmt.where(AlertState.status.in_([s.value for s in statuses]))
        if rule_id is not None:
            stmt = stmt.where(AlertState.rule_id == rule_id)
        stmt = stmt.order_by(AlertState.updated_at.desc(), AlertState.id.desc()).limit(limit)
        return [_alert(r, name) for r, name in self._session.execute(stmt)]

    def ack(self, project: str, alert_id: int, by: str, at: datetime) -> AlertRecord:
        record = self.get(project, alert_id)
        row = self._session.get(AlertState, record.id)
        assert row is not None
        row.acked_at, row.acked_by = at, by
        row.updated_at = utcnow()
        self._session.flush()
        return _alert(row, record.rule_name)

    def settle_rule(self, rule_id: int, reason: str) -> int:
        """Quietly close a rule's open states (it was switched off): nothing is sent."""
        rows = builtins.list(
            self._session.scalars(
                fresh(select(AlertState)).where(
                    AlertState.rule_id == rule_id,
                    AlertState.status.in_([AlertStatus.PENDING.value, AlertStatus.FIRING.value]),
                )
            )
        )
        now = utcnow()
        for row in rows:
            fired = row.status == AlertStatus.FIRING.value
            row.status = AlertStatus.RESOLVED.value if fired else AlertStatus.OK.value
            if fired:
                row.resolved_at = now
            row.since = now
            row.recent_json = "[]"
            figures = json.loads(row.figures_json)
            figures["closed"] = reason
            row.figures_json = dump(figures)
            row.updated_at = now
        self._session.flush()
        return len(rows)
