"""What repositories return: plain frozen values, detached from any session.

Callers keep them after the transaction ends, pass them across threads and
serialise them, without lazy loads or a stale ORM identity map behind them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from driftline.schema import Approval, FeatureSpec, ModelSchema, Role, Task
from driftline.storage.meta.models import KeyRole, ReferenceFormat


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True)
class KeyInfo:
    """An API key without its secret: `prefix` is what listings show."""

    id: int
    project: str
    project_id: int
    role: KeyRole
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class VersionInfo:
    id: int
    model_id: int
    project: str
    model: str
    version: str
    role: Role
    approval: Approval
    data_version: str | None
    training_config_uri: str | None
    eval_report_uri: str | None
    features: list[FeatureSpec]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ModelInfo:
    """A registered model; `schema` already holds every feature its versions added."""

    id: int
    project: str
    name: str
    task: Task
    schema: ModelSchema
    owner: str | None
    created_at: datetime
    updated_at: datetime
    versions: list[VersionInfo] = field(default_factory=list)

    def version(self, version: str) -> VersionInfo | None:
        return next((v for v in self.versions if v.version == version), None)


@dataclass(frozen=True)
class ReferenceInfo:
    """The current reference data set of a version (the rows live in the event store)."""

    id: int
    version_id: int
    project: str
    model: str
    version: str
    rows: int
    format: ReferenceFormat
    uploaded_at: datetime
    uploaded_by_key_id: int | None
