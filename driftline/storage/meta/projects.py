"""Projects: the tenancy boundary every key and model belongs to."""

from __future__ import annotations

import builtins
import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from driftline.errors import InvalidInput, NotFound
from driftline.schema import PROJECT_PATTERN
from driftline.storage.meta._sql import fresh, insert
from driftline.storage.meta.models import Project, utcnow
from driftline.storage.meta.records import ProjectInfo

DEFAULT_PROJECT = "default"
PROJECT_MAX_LENGTH = 32


def check_project_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > PROJECT_MAX_LENGTH or not re.fullmatch(PROJECT_PATTERN, name):
        raise InvalidInput(
            f"invalid project name {name!r}: lower-case letters, digits, '-' and '_', "
            f"starting with a letter, at most {PROJECT_MAX_LENGTH} characters"
        )
    return name


def project_row(session: Session, name: str, *, create: bool = False) -> Project | None:
    """The project's row; with `create`, made on demand (safe against a concurrent creator)."""
    row = session.scalars(fresh(select(Project).where(Project.name == name))).one_or_none()
    if row is not None or not create:
        return row
    check_project_name(name)
    session.execute(
        insert(session, Project)
        .values(name=name, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return session.scalars(fresh(select(Project).where(Project.name == name))).one()


def require_project(session: Session, name: str) -> Project:
    row = project_row(session, name)
    if row is None:
        raise NotFound(f"project {name!r} not found")
    return row


def project_info(row: Project) -> ProjectInfo:
    return ProjectInfo(id=row.id, name=row.name, created_at=row.created_at)


class ProjectRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, name: str) -> ProjectInfo | None:
        row = project_row(self._session, name)
        return None if row is None else project_info(row)

    def get_or_create(self, name: str) -> ProjectInfo:
        row = project_row(self._session, name, create=True)
        assert row is not None
        return project_info(row)

    def list(self) -> builtins.list[ProjectInfo]:
        rows = self._session.scalars(fresh(select(Project).order_by(Project.name)))
        return [project_info(r) for r in rows]
