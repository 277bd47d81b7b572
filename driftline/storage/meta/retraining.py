"""Repositories of retraining policies (one per model) and the triggers they propose."""

from __future__ import annotations

import builtins
import json
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from driftline.errors import Conflict, NotFound
from driftline.storage.meta._sql import fresh, insert
from driftline.storage.meta.alerting import (
    PolicyRecord,
    RetrainingPolicy,
    RetrainingTrigger,
    TriggerRecord,
    TriggerState,
    dump,
)
from driftline.storage.meta.models import Model, Project, utcnow
from driftline.storage.meta.projects import project_row
from driftline.storage.meta.registry import _require_model


def _policy(row: RetrainingPolicy, project: str, model: str) -> PolicyRecord:
    return PolicyRecord(
        id=row.id,
        project=project,
        project_id=row.project_id,
        model_id=row.model_id,
        model=model,
        enabled=row.enabled,
        config=json.loads(row.config_json),
        url_token=row.url_token,
        url_hint=row.url_hint,
        secret_token=row.secret_token,
        state=json.loads(row.state_json),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class PolicyRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def _select(self, project: str) -> Any:
        return (
            fresh(select(RetrainingPolicy, Model.name))
            .join(Model, Model.id == RetrainingPolicy.model_id)
            .join(Project, Project.id == RetrainingPolicy.project_id)
            .where(Project.name == project)
        )

    def create(
        self,
        project: str,
        model: str,
        config: dict[str, Any],
        url_token: str,
        url_hint: str,
        secret_token: str | None,
        *,
        enabled: bool,
    ) -> PolicyRecord:
        owner, found = _require_model(self._session, project, model)
        now = utcnow()
        result = self._session.execute(
            insert(self._session, RetrainingPolicy)
            .values(
                project_id=owner.id,
                model_id=found.id,
                enabled=enabled,
                config_json=dump(config),
                url_token=url_token,
                url_hint=url_hint,
                secret_token=secret_token,
                state_json="{}",
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["model_id"])
            .returning(RetrainingPolicy.id)
        )
        if result.scalar_one_or_none() is None:
            raise Conflict(f"model {model!r} has a retraining policy already: PATCH it")
        return self.require(project, model)

    def require(self, project: str, ref: int | str, *, lock: bool = False) -> PolicyRecord:
        """A policy by id, or by the name of its model."""
        stmt = self._select(project)
        stmt = (
            stmt.where(RetrainingPolicy.id == ref) if isinstance(ref, int) else stmt.where(Model.name == ref)
        )
        if lock:
            stmt = stmt.with_for_update(of=RetrainingPolicy)
        found = self._session.execute(stmt).one_or_none()
        if found is None:
            raise NotFound(f"no retraining policy {ref!r} in project {project!r}")
        return _policy(found[0], project, found[1])

    def get(self, project: str, ref: int | str, *, lock: bool = False) -> PolicyRecord | None:
        try:
            return self.require(project, ref, lock=lock)
        except NotFound:
            return None

    def by_id(self, policy_id: int) -> PolicyRecord | None:
        found = self._session.execute(
            fresh(select(RetrainingPolicy, Model.name, Project.name))
            .join(Model, Model.id == RetrainingPolicy.model_id)
            .join(Project, Project.id == RetrainingPolicy.project_id)
            .where(RetrainingPolicy.id == policy_id)
        ).one_or_none()
        return None if found is None else _policy(found[0], found[2], found[1])

    def list(self, project: str, model: str | None = None) -> builtins.list[PolicyRecord]:
        stmt = self._select(project)
        if model is not None:
            stmt = stmt.where(Model.name == model)
        return [_policy(r, project, m) for r, m in self._session.execute(stmt.order_by(Model.name))]

    def update(self, project: str, ref: int | str, **changes: Any) -> PolicyRecord:
        """Set enabled, config, url_token, url_hint, secret_token or state."""
        record = self.require(project, ref, lock=True)
        row = self._session.get(RetrainingPolicy, record.id)
        assert row is not None
        for name, value in changes.items():
            if name == "config":
                row.config_json = dump(value)
            elif name == "state":
                row.state_json = dump(value)
            elif name in ("enabled", "url_token", "url_hint", "secret_token"):
                setattr(row, name, value)
            else:
                raise ValueError(f"cannot change {name!r}")
        row.updated_at = utcnow()
        self._session.flush()
        return _policy(row, project, record.model)

    def delete(self, project: str, ref: int | str) -> None:
        record = self.require(project, ref)
        self._session.execute(delete(RetrainingPolicy).where(RetrainingPolicy.id == record.id))


def _trigger(row: RetrainingTrigger) -> TriggerRecord:
    return TriggerRecord(
        id=row.id,
        project_id=row.project_id,
        policy_id=row.policy_id,
        model=row.model,
        episode=row.episode,
        state=TriggerState(row.state),
        evidence=json.loads(row.evidence_json),
        history=json.loads(row.history_json),
        proposed_at=row.proposed_at,
        decided_at=row.decided_at,
        decided_by=row.decided_by,
        dispatched_at=row.dispatched_at,
        updated_at=row.updated_at,
    )


class TriggerRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def create(
        self,
        *,
        project_id: int,
        policy_id: int,
        model: str,
        episode: int,
        evidence: dict[str, Any],
        history: builtins.list[dict[str, Any]],
        at: datetime,
    ) -> TriggerRecord:
        row = RetrainingTrigger(
            project_id=project_id,
            policy_id=policy_id,
            model=model,
            episode=episode,
            state=TriggerState.PROPOSED.value,
            evidence_json=dump(evidence),
            history_json=dump(history),
            proposed_at=at,
            created_at=at,
            updated_at=at,
        )
        self._session.add(row)
        self._session.flush()
        return _trigger(row)

    def _row(self, trigger_id: int, *, lock: bool = False) -> RetrainingTrigger | None:
        stmt = fresh(select(RetrainingTrigger)).where(RetrainingTrigger.id == trigger_id)
        if lock:
            stmt = stmt.with_for_update()
        return self._session.scalars(stmt).one_or_none()

    def by_id(self, trigger_id: int, *, lock: bool = False) -> TriggerRecord | None:
        row = self._row(trigger_id, lock=lock)
        return None if row is None else _trigger(row)

    def require(self, project: str, trigger_id: int, *, lock: bool = False) -> TriggerRecord:
        owner = project_row(self._session, project)
        row = self._row(trigger_id, lock=lock)
        if owner is None or row is None or row.project_id != owner.id:
            raise NotFound(f"no trigger {trigger_id} in project {project!r}")
        return _trigger(row)

    def list(
        self,
        project: str,
        *,
        model: str | None = None,
        state: TriggerState | None = None,
        limit: int = 200,
    ) -> builtins.list[TriggerRecord]:
        owner = project_row(self._session, project)
        if owner is None:
            return []
        stmt = fresh(select(RetrainingTrigger)).where(RetrainingTrigger.project_id == owner.id)
        if model is not None:
            stmt = stmt.where(RetrainingTrigger.model == model)
        if state is not None:
            stmt = stmt.where(RetrainingTrigger.state == state.value)
        stmt = stmt.order_by(RetrainingTrigger.id.desc()).limit(limit)
        return [_trigger(r) for r in self._session.scalars(stmt)]

    def latest(self, policy_id: int) -> TriggerRecord | None:
        row = self._session.scalars(
            fresh(select(RetrainingTrigger))
            .where(RetrainingTrigger.policy_id == policy_id)
            .order_by(RetrainingTrigger.proposed_at.desc(), RetrainingTrigger.id.desc())
            .limit(1)
        ).one_or_none()
        return None if row is None else _trigger(row)

    def save(
        self,
        trigger_id: int,
        *,
        state: TriggerState | None = None,
        evidence: dict[str, Any] | None = None,
        history: builtins.list[dict[str, Any]] | None = None,
        decided_at: datetime | None = None,
        decided_by: str | None = None,
        dispatched_at: datetime | None = None,
    ) -> TriggerRecord:
        row = self._row(trigger_id)
        if row is None:
            raise NotFound(f"trigger {trigger_id} is gone")
        if state is not None:
            row.state = state.value
        if evidence is not None:
            row.evidence_json = dump(evidence)
        if history is not None:
            row.history_json = dump(history)
        if decided_at is not None:
            row.decided_at, row.decided_by = decided_at, decided_by
        if dispatched_at is not None:
            row.dispatched_at = dispatched_at
        row.updated_at = utcnow()
        self._session.flush()
        return _trigger(row)
