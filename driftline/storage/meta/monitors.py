"""Monitors, detection watermarks, leases and the scheduler's job table.

A model's monitor config is stored as JSON text (NULL: the defaults), next to the job
state the scheduler keeps per model: the watermark (every window ending at or before
it has its results written) and the outcome of the last run. Leases make one worker at
a time run a job when several are started: a lease row is taken with one conditional
UPDATE (expired, or already ours), which is atomic on SQLite (one writer at a time)
and on PostgreSQL (the row lock makes a racing UPDATE re-check its condition).

The config is validated by `driftline.detectors.monitors`; this module only stores it,
so the storage layer does not depend on the detector families.
"""

from __future__ import annotations

import builtins
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    Unicode,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Mapped, Session, mapped_column

from driftline.storage.meta._sql import fresh, insert
from driftline.storage.meta.models import Base, Model, Project, utcnow
from driftline.storage.meta.registry import _require_model

ERROR_MAX_LENGTH = 4000


class Monitor(Base):
    __tablename__ = "monitors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), unique=True)
    # NULL: the model is monitored with the defaults
    config_json: Mapped[str | None] = mapped_column(Text, default=None)
    # epoch seconds; every window ending at or before it has its results written
    watermark: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # the scheduler's clock at its last run of this model (drives the schedule)
    last_run_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lease(Base):
    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(200), default=None)
    # epoch milliseconds of the holder's wall clock; 0 when free
    expires_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    acquired_at: Mapped[datetime | None] = mapped_column(default=None)


class SchedulerJob(Base):
    """APScheduler's SQLAlchemyJobStore table, created here so migrations own the schema."""

    __tablename__ = "scheduler_jobs"

    id: Mapped[str] = mapped_column(Unicode(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True, default=None)
    job_state: Mapped[bytes] = mapped_column(LargeBinary)


SCHEDULER_JOBS_TABLE = SchedulerJob.__tablename__


@dataclass(frozen=True)
class MonitorRecord:
    """A model's stored monitor config (None: the defaults) and its detection state."""

    model_id: int
    project: str
    model: str
    config: dict[str, Any] | None
    watermark: int | None
    last_run_at: datetime | None
    last_error: str | None
    updated_at: datetime | None


@dataclass(frozen=True)
class ModelRef:
    """A model as the scheduler walks them: enough to find it again."""

    model_id: int
    project: str
    model: str


def _record(project: str, model: Model, row: Monitor | None) -> MonitorRecord:
    if row is None:
        return MonitorRecord(model.id, project, model.name, None, None, None, None, None)
    return MonitorRecord(
        model_id=model.id,
        project=project,
        model=model.name,
        config=None if row.config_json is None else json.loads(row.config_json),
        watermark=row.watermark,
        last_run_at=row.last_run_at,
        last_error=row.last_error,
        updated_at=row.updated_at,
    )


class MonitorRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def _row(self, model_id: int) -> Monitor | None:
        return self._session.scalars(fresh(select(Monitor).where(Monitor.model_id == model_id))).one_or_none()

    def _ensure_row(self, model_id: int) -> Monitor:
        """The model's row, made on demand (safe against a concurrent maker)."""
        now = utcnow()
        self._session.execute(
            insert(self._session, Monitor)
            .values(model_id=model_id, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=["model_id"])
        )
        row = self._row(model_id)
        assert row is not None
        return row

    def get(self, project: str, model: str) -> MonitorRecord:
        """The model's monitor; config None when nobody configured it. NotFound for an unknown model."""
        _, found = _require_model(self._session, project, model)
        return _record(project, found, self._row(found.id))

    def put(
        self, project: str, model: str, config: dict[str, Any], *, restart: bool = False
    ) -> MonitorRecord:
        """Store a validated config; the detection state (watermark) is kept unless `restart`
        (a new window length: a watermark counted in the old windows says nothing of the new)."""
        _, found = _require_model(self._session, project, model)
        row = self._ensure_row(found.id)
        row.config_json = json.dumps(config, sort_keys=True, separators=(",", ":"))
        row.updated_at = utcnow()
        if restart:
            _restart(row)
        self._session.flush()
        return _record(project, found, row)

    def reset(self, project: str, model: str, *, restart: bool = False) -> MonitorRecord:
        """Back to the defaults; the detection state is kept unless `restart` (see `put`)."""
        _, found = _require_model(self._session, project, model)
        row = self._row(found.id)
        if row is not None and (row.config_json is not None or restart):
            row.config_json = None
            row.updated_at = utcnow()
            if restart:
                _restart(row)
            self._session.flush()
        return _record(project, found, row)

    def state(self, model_id: int) -> MonitorRecord | None:
        """The monitor of a model by id (None when the model is gone)."""
        found = self._session.execute(
            fresh(select(Model, Project.name).join(Project, Project.id == Model.project_id)).where(
                Model.id == model_id
            )
        ).one_or_none()
        if found is None:
            return None
        model, project = found
        return _record(project, model, self._row(model_id))

    def models(self) -> builtins.list[ModelRef]:
        """Every model of every project, in a stable order."""
        rows = self._session.execute(
            select(Model.id, Project.name, Model.name)
            .join(Project, Project.id == Model.project_id)
            .order_by(Project.name, Model.name)
        )
        return [ModelRef(model_id=i, project=p, model=m) for i, p, m in rows]

    def advance(self, model_id: int, watermark: int, config: dict[str, Any] | None) -> bool:
        """Move the watermark forward (never back): the windows up to it have their results written.

        Only while the stored config is still `config`, the one the windows were detected
        with; False when it changed meanwhile (the windows are detected again under it).
        """
        row = self._ensure_row(model_id)
        stored = None if row.config_json is None else json.loads(row.config_json)
        if stored != config:
            return False
        if row.watermark is None or row.watermark < watermark:
            row.watermark = watermark
            self._session.flush()
        return True

    def record_run(self, model_id: int, ran_at: float, error: str | None) -> None:
        """Remember when the scheduler last ran the model (its clock) and how it went."""
        row = self._ensure_row(model_id)
        row.last_run_at = datetime.fromtimestamp(ran_at, UTC)
        row.last_error = None if error is None else error[:ERROR_MAX_LENGTH]
        self._session.flush()


def _restart(row: Monitor) -> None:
    row.watermark = None
    row.last_run_at = None
    row.last_error = None


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    owner: str | None
    expires_ms: int


def _ms(now: float | None) -> int:
    return int((time.time() if now is None else now) * 1000)


class LeaseRepository:
    """Named leases with an expiry: one holder at a time, taken over once the holder stops renewing.

    Times are the holders' wall clocks (epoch ms); a lease outlives any plausible clock
    skew between workers by being minutes long and renewed as work progresses.
    Each call is meant to run in a short transaction of its own, so that a held lease
    is visible to other workers at once.
    """

    def __init__(self, session: Session) -> None:
        self._session = session

    def acquire(self, name: str, owner: str, ttl_seconds: float, *, now: float | None = None) -> bool:
        """Take the lease if it is free, expired or already ours; True when we hold it."""
        now_ms = _ms(now)
        self._session.execute(
            insert(self._session, Lease)
            .values(name=name, owner=None, expires_ms=0)
            .on_conflict_do_nothing(index_elements=["name"])
        )
        result = self._session.execute(
            update(Lease)
            .where(Lease.name == name, (Lease.expires_ms <= now_ms) | (Lease.owner == owner))
            .values(owner=owner, expires_ms=now_ms + int(ttl_seconds * 1000), acquired_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return _rowcount(result) == 1

    def renew(self, name: str, owner: str, ttl_seconds: float, *, now: float | None = None) -> bool:
        """Extend a lease we still hold; False when it expired or another worker took it."""
        now_ms = _ms(now)
        result = self._session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.owner == owner, Lease.expires_ms > now_ms)
            .values(expires_ms=now_ms + int(ttl_seconds * 1000))
            .execution_options(synchronize_session=False)
        )
        return _rowcount(result) == 1

    def release(self, name: str, owner: str) -> bool:
        """Free a lease we hold, so the next worker need not wait for it to expire."""
        result = self._session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.owner == owner)
            .values(owner=None, expires_ms=0)
            .execution_options(synchronize_session=False)
        )
        return _rowcount(result) == 1

    def get(self, name: str) -> LeaseInfo | None:
        row = self._session.scalars(fresh(select(Lease).where(Lease.name == name))).one_or_none()
        return None if row is None else LeaseInfo(row.name, row.owner, row.expires_ms)


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0
