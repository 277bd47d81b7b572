"""The durable outbox: notifications waiting to be sent, claimed under a lease, retried, dead-lettered.

An item is inserted in the transaction that decided to notify, so a notification exists
exactly when its cause was committed. A sender claims an item with one conditional
UPDATE (due and pending, or sending under an expired lease), which is atomic on SQLite
(one writer at a time) and on PostgreSQL (the row lock makes a racing UPDATE re-check
its condition); a sender that dies mid-delivery leaves the item to be claimed again once
its lease expires. Every attempt sends the same body under the same idempotency key.
"""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from driftline.errors import Conflict, NotFound
from driftline.storage.meta._sql import fresh, insert
from driftline.storage.meta.alerting import OutboxItem, OutboxKind, OutboxRecord, OutboxState
from driftline.storage.meta.models import utcnow
from driftline.storage.meta.projects import project_row

ERROR_MAX_LENGTH = 2000


def _record(row: OutboxItem) -> OutboxRecord:
    return OutboxRecord(
        id=row.id,
        project_id=row.project_id,
        key=row.key,
        kind=OutboxKind(row.kind),
        event=row.event,
        target=row.target,
        channel_id=row.channel_id,
        policy_id=row.policy_id,
        alert_id=row.alert_id,
        trigger_id=row.trigger_id,
        body=row.body,
        state=OutboxState(row.state),
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        next_attempt_at=row.next_attempt_at,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        last_status=row.last_status,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        delivered_at=row.delivered_at,
    )


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(
        and_(OutboxItem.state == OutboxState.PENDING.value, OutboxItem.next_attempt_at <= now),
        and_(OutboxItem.state == OutboxState.SENDING.value, OutboxItem.lease_expires_at <= now),
    )


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


class OutboxRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def enqueue(
        self,
        *,
        project_id: int,
        key: str,
        kind: OutboxKind,
        event: str,
        target: str,
        body: str,
        max_attempts: int,
        channel_id: int | None = None,
        policy_id: int | None = None,
        alert_id: int | None = None,
        trigger_id: int | None = None,
    ) -> int | None:
        """Add a notification; None when one with this key exists (it is the same notification)."""
        now = utcnow()
        result = self._session.execute(
            insert(self._session, OutboxItem)
            .values(
                project_id=project_id,
                key=key,
                kind=kind.value,
                event=event,
                target=target[:200],
                channel_id=channel_id,
                policy_id=policy_id,
                alert_id=alert_id,
                trigger_id=trigger_id,
                body=body,
                state=OutboxState.PENDING.value,
                attempts=0,
                max_attempts=max_attempts,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(OutboxItem.id)
        )
        new_id = result.scalar_one_or_none()
        return None if new_id is None else int(new_id)

    # -- the sender's side ----------------------------------------------------------------

    def due(self, now: datetime, limit: int) -> builtins.list[int]:
        """Ids of items a sender may claim now, oldest due first (a read; claim() decides)."""
        return builtins.list(
            self._session.scalars(
                select(OutboxItem.id)
                .where(_due(now))
                .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
                .limit(limit)
            )
        )

    def next_due_at(self) -> datetime | None:
        """When the earliest waiting item falls due (pending, or sending under a lease)."""
        pending = self._session.scalar(
            select(func.min(OutboxItem.next_attempt_at)).where(OutboxItem.state == OutboxState.PENDING.value)
        )
        leased = self._session.scalar(
            select(func.min(OutboxItem.lease_expires_at)).where(OutboxItem.state == OutboxState.SENDING.value)
        )
        times = [t for t in (pending, leased) if t is not None]
        return min(times) if times else None

    def claim(self, item_id: int, owner: str, lease_seconds: float, now: datetime) -> OutboxRecord | None:
        """Take the item for one attempt if it is still due; None when another sender has it."""
        result = self._session.execute(
            update(OutboxItem)
            .where(OutboxItem.id == item_id, _due(now))
            .values(
                state=OutboxState.SENDING.value,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=OutboxItem.attempts + 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if _rowcount(result) != 1:
            return None
        row = self._session.scalars(fresh(select(OutboxItem).where(OutboxItem.id == item_id))).one()
        return _record(row)

    def delivered(self, item_id: int, status: int, now: datetime) -> bool:
        """Mark sent. Whoever sent it last, a delivered item is delivered (False: it already was)."""
        result = self._session.execute(
            update(OutboxItem)
            .where(
                OutboxItem.id == item_id,
                OutboxItem.state.in_([OutboxState.SENDING.value, OutboxState.PENDING.value]),
            )
            .values(
                state=OutboxState.DELIVERED.value,
                delivered_at=now,
                last_status=status,
                last_error=None,
                lease_owner=None,
                lease_expires_at=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        return _rowcount(result) == 1

    def failed(
        self,
        item_id: int,
        owner: str,
        *,
        status: int | None,
        error: str,
        retry_at: datetime | None,
        now: datetime,
    ) -> bool:
        """Record a failed attempt: pending again at `retry_at`, or dead when it is None.

        Only the holder of the lease may do so: a sender whose lease expired meanwhile
        must not move an item another sender now holds.
        """
        values: dict[str, Any] = {
            "last_status": status,
            "last_error": error[:ERROR_MAX_LENGTH],
            "lease_owner": None,
            "lease_expires_at": None,
            "updated_at": now,
        }
        if retry_at is None:
            values["state"] = OutboxState.DEAD.value
        else:
            values["state"] = OutboxState.PENDING.value
            values["next_attempt_at"] = retry_at
        result = self._session.execute(
            update(OutboxItem)
            .where(
                OutboxItem.id == item_id,
                OutboxItem.state == OutboxState.SENDING.value,
                OutboxItem.lease_owner == owner,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return _rowcount(result) == 1

    # -- the API's side -------------------------------------------------------------------

    def get(self, project: str, item_id: int) -> OutboxRecord:
        owner = project_row(self._session, project)
        row = self._session.get(OutboxItem, item_id, populate_existing=True)
        if owner is None or row is None or row.project_id != owner.id:
            raise NotFound(f"no outbox item {item_id} in project {project!r}")
        return _record(row)

    def by_id(self, item_id: int) -> OutboxRecord | None:
        row = self._session.get(OutboxItem, item_id, populate_existing=True)
        return None if row is None else _record(row)

    def list(
        self,
        project: str,
        *,
        state: OutboxState | None = None,
        kind: OutboxKind | None = None,
        limit: int = 100,
    ) -> builtins.list[OutboxRecord]:
        owner = project_row(self._session, project)
        if owner is None:
            return []
        stmt = fresh(select(OutboxItem)).where(OutboxItem.project_id == owner.id)
        if state is not None:
            stmt = stmt.where(OutboxItem.state == state.value)
        if kind is not None:
            stmt = stmt.where(OutboxItem.kind == kind.value)
        stmt = stmt.order_by(OutboxItem.id.desc()).limit(limit)
        return [_record(r) for r in self._session.scalars(stmt)]

    def for_trigger(self, trigger_id: int) -> OutboxRecord | None:
        """The newest dispatch of a retraining trigger."""
        row = self._session.scalars(
            fresh(select(OutboxItem))
            .where(OutboxItem.trigger_id == trigger_id)
            .order_by(OutboxItem.id.desc())
            .limit(1)
        ).one_or_none()
        return None if row is None else _record(row)

    def requeue(self, project: str, item_id: int, max_attempts: int) -> OutboxRecord:
        """Give a dead item a fresh set of attempts (the same key: receivers still deduplicate)."""
        record = self.get(project, item_id)
        if record.state is not OutboxState.DEAD:
            raise Conflict(f"outbox item {item_id} is {record.state.value}, not dead")
        now = utcnow()
        self._session.execute(
            update(OutboxItem)
            .where(OutboxItem.id == item_id)
            .values(
                state=OutboxState.PENDING.value,
                attempts=0,
                max_attempts=max(max_attempts, 1),
                next_attempt_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        return self.get(project, item_id)

    def counts(self) -> dict[OutboxState, int]:
        """Items per state, over every project (for /metrics)."""
        rows = self._session.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state))
        got = {OutboxState(s): int(n) for s, n in rows}
        return {s: got.get(s, 0) for s in OutboxState}
