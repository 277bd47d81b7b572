"""The model registry: models with their schema, versions, and reference uploads.

A model's stored schema is the union of what it was registered with and what its
versions added since, because the event store keeps one column per feature ever
declared. Writes that can grow a schema lock the model row first, so concurrent
versions never lose each other's features.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from driftline.errors import Conflict, InvalidInput, NotFound
from driftline.schema import (
    VERSION_PATTERN,
    Approval,
    FeatureSpec,
    ModelSchema,
    Role,
    Task,
    check_name,
)
from driftline.storage.meta._sql import check_text, fresh, insert
from driftline.storage.meta.alerting import AlertRule, AlertState, RetrainingTrigger
from driftline.storage.meta.models import (
    Model,
    ModelVersion,
    Project,
    ReferenceFormat,
    ReferenceUpload,
    utcnow,
)
from driftline.storage.meta.projects import project_row
from driftline.storage.meta.records import ModelInfo, ReferenceInfo, VersionInfo

DATA_VERSION_MAX_LENGTH = 200
URI_MAX_LENGTH = 4096
OWNER_MAX_LENGTH = 200  # as ModelSchema.owner
DESCRIPTION_MAX_LENGTH = 2000  # as ModelSchema.description

_features_adapter = TypeAdapter(list[FeatureSpec])


def dump_schema(schema: ModelSchema) -> str:
    return json.dumps(schema.model_dump(mode="json"), separators=(",", ":"))


def load_schema(text: str) -> ModelSchema:
    return ModelSchema.model_validate_json(text)


def dump_features(features: Sequence[FeatureSpec]) -> str:
    return json.dumps([f.model_dump(mode="json") for f in features], separators=(",", ":"))


def load_features(text: str) -> list[FeatureSpec]:
    return _features_adapter.validate_json(text)


def _fmt(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    elif hasattr(value, "value"):
        value = value.value
    return json.dumps(value, default=str)


def _field_differences(what: str, old: BaseModel, new: BaseModel) -> list[str]:
    return [
        f"{what} {name}: registered {_fmt(getattr(old, name))}, given {_fmt(getattr(new, name))}"
        for name in type(old).model_fields
        if getattr(old, name) != getattr(new, name)
    ]


def _named_differences(
    what: str,
    old: Sequence[Any],
    new: Sequence[Any],
    tolerated_missing: Iterable[str] = (),
) -> list[str]:
    old_by_name = {f.name: f for f in old}
    new_by_name = {f.name: f for f in new}
    tolerated = set(tolerated_missing)
    out: list[str] = []
    for name, spec in old_by_name.items():
        if name not in new_by_name:
            if name not in tolerated:
                out.append(f"{what} {name!r} is registered but missing")
        elif spec != new_by_name[name]:
            out.extend(_field_differences(f"{what} {name!r}", spec, new_by_name[name]))
    out.extend(
        f"{what} {name!r} is not registered (a new version adds features)"
        for name in new_by_name
        if name not in old_by_name
    )
    return out


def schema_differences(registered: ModelSchema, given: ModelSchema, grown: Iterable[str] = ()) -> list[str]:
    """What tells two schemas apart, one readable line per difference; empty when equal.

    Order of features and metadata does not matter. Features named in `grown` (added by
    versions after registration) may be missing from `given`, so a client re-registering
    its original schema at every start keeps working after a version grew it.
    """
    out: list[str] = []
    for name in ("task", "owner", "description"):
        old, new = getattr(registered, name), getattr(given, name)
        if old != new:
            out.append(f"{name}: registered {_fmt(old)}, given {_fmt(new)}")
    out.extend(_named_differences("feature", registered.features, given.features, grown))
    out.extend(_named_differences("metadata", registered.metadata, given.metadata))
    out.extend(_field_differences("label", registered.label, given.label))
    return out


def grow(schema: ModelSchema, extra: Sequence[FeatureSpec]) -> ModelSchema:
    """The schema with `extra` features added, validated as a whole; `schema` itself if none are new."""
    try:
        grown = schema.with_features(list(extra))
    except ValueError as exc:
        raise Conflict(f"model {schema.name!r}: {exc}") from exc
    if grown is schema:
        return schema
    # model_copy skips validation: re-check names against metadata and reserved fields.
    try:
        return ModelSchema.model_validate(grown.model_dump())
    except ValidationError as exc:
        problems = "; ".join(e["msg"] for e in exc.errors())
        raise InvalidInput(f"features refused for model {schema.name!r}: {problems}") from exc


def _check_features(features: Sequence[FeatureSpec] | None) -> list[FeatureSpec] | None:
    """The features with exact repeats dropped; a name repeated with another definition stays, to be refused."""
    if features is None:
        return None
    seen: dict[str, FeatureSpec] = {}
    out = []
    for f in features:
        if not isinstance(f, FeatureSpec):
            raise InvalidInput(f"features must be FeatureSpec values, not {type(f).__name__}")
        if seen.get(f.name) == f:
            continue
        seen.setdefault(f.name, f)
        out.append(f)
    return out


_E = TypeVar("_E", Role, Approval, ReferenceFormat)


def _enum(kind: type[_E], value: _E | str, what: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise InvalidInput(f"invalid {what} {value!r}: one of {', '.join(v.value for v in kind)}") from None


def _model_row(
    session: Session, project: str, name: str, *, lock: bool = False
) -> tuple[Project, Model] | None:
    owner = project_row(session, project)
    if owner is None:
        return None
    stmt = fresh(select(Model).where(Model.project_id == owner.id, Model.name == name))
    if lock:
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).one_or_none()
    return None if row is None else (owner, row)


def _require_model(session: Session, project: str, name: str, *, lock: bool = False) -> tuple[Project, Model]:
    found = _model_row(session, project, name, lock=lock)
    if found is None:
        raise NotFound(f"model {name!r} not found in project {project!r}")
    return found


def _version_row(session: Session, model: Model, version: str) -> ModelVersion | None:
    return session.scalars(
        fresh(select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == version))
    ).one_or_none()


def _require_version(session: Session, project: str, model: str, version: str) -> tuple[Model, ModelVersion]:
    _, row = _require_model(session, project, model)
    found = _version_row(session, row, version)
    if found is None:
        raise NotFound(f"version {version!r} of model {model!r} not found in project {project!r}")
    return row, found


def _version_info(row: ModelVersion, project: str, model: str) -> VersionInfo:
    return VersionInfo(
        id=row.id,
        model_id=row.model_id,
        project=project,
        model=model,
        version=row.version,
        role=Role(row.role),
        approval=Approval(row.approval),
        data_version=row.data_version,
        training_config_uri=row.training_config_uri,
        eval_report_uri=row.eval_report_uri,
        features=load_features(row.features_json),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _versions_of(session: Session, models: Sequence[Model]) -> dict[int, list[ModelVersion]]:
    by_model: dict[int, list[ModelVersion]] = {m.id: [] for m in models}
    if not models:
        return by_model
    rows = session.scalars(
        fresh(select(ModelVersion))
        .where(ModelVersion.model_id.in_(list(by_model)))
        .order_by(ModelVersion.created_at, ModelVersion.id)
    )
    for row in rows:
        by_model[row.model_id].append(row)
    return by_model


def _model_info(row: Model, project: str, versions: Sequence[ModelVersion]) -> ModelInfo:
    return ModelInfo(
        id=row.id,
        project=project,
        name=row.name,
        task=Task(row.task),
        schema=load_schema(row.schema_json),
        owner=row.owner,
        created_at=row.created_at,
        updated_at=row.updated_at,
        versions=[_version_info(v, project, row.name) for v in versions],
    )


class ModelRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def register(self, project: str, schema: ModelSchema) -> tuple[ModelInfo, bool]:
        """Register a model, or find it registered with an equal schema (created False).

        A different schema is a Conflict whose message lists the differences; schemas
        change through new versions' features, never by re-registration.
        """
        if not isinstance(schema, ModelSchema):
            raise InvalidInput(f"a model is registered with a ModelSchema, not {type(schema).__name__}")
        found = _model_row(self._session, project, schema.name)
        if found is None:
            owner = project_row(self._session, project, create=True)
            assert owner is not None
            now = utcnow()
            result = self._session.execute(
                insert(self._session, Model)
                .values(
                    project_id=owner.id,
                    name=schema.name,
                    task=schema.task.value,
                    schema_json=dump_schema(schema),
                    owner=schema.owner,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["project_id", "name"])
                .returning(Model.id)
            )
            # No row comes back when a concurrent writer registered the name first.
            created = result.scalar_one_or_none() is not None
            found = _require_model(self._session, project, schema.name)
            if created:
                return _model_info(found[1], project, []), True
        _, row = found
        versions = _versions_of(self._session, [row])[row.id]
        grown = {f.name for v in versions for f in load_features(v.features_json)}
        differences = schema_differences(load_schema(row.schema_json), schema, grown)
        if differences:
            raise Conflict(
                f"model {schema.name!r} in project {project!r} is registered with another schema: "
                + "; ".join(differences),
                details={"differences": differences},
            )
        return _model_info(row, project, versions), False

    def get(self, project: str, name: str) -> ModelInfo | None:
        found = _model_row(self._session, project, name)
        if found is None:
            return None
        _, row = found
        return _model_info(row, project, _versions_of(self._session, [row])[row.id])

    def require(self, project: str, name: str) -> ModelInfo:
        """Like `get`, but NotFound instead of None."""
        info = self.get(project, name)
        if info is None:
            raise NotFound(f"model {name!r} not found in project {project!r}")
        return info

    def grow_schema(self, project: str, name: str, extra_features: Sequence[FeatureSpec]) -> ModelInfo:
        """Add features to the model's schema; features already there with the same definition are kept."""
        _, row = _require_model(self._session, project, name, lock=True)
        _grow_row(self._session, row, _check_features(extra_features) or [])
        return _model_info(row, project, _versions_of(self._session, [row])[row.id])

    def update(
        self, project: str, name: str, *, owner: str | None = None, description: str | None = None
    ) -> ModelInfo:
        """Change who owns the model or its description: the parts of a schema that are not its shape."""
        check_text(owner, "owner", OWNER_MAX_LENGTH)
        check_text(description, "description", DESCRIPTION_MAX_LENGTH)
        _, row = _require_model(self._session, project, name, lock=True)
        schema = load_schema(row.schema_json)
        changes = {k: v for k, v in (("owner", owner), ("description", description)) if v is not None}
        if any(getattr(schema, k) != v for k, v in changes.items()):
            row.schema_json = dump_schema(schema.model_copy(update=changes))
            if owner is not None:
                row.owner = owner
            row.updated_at = utcnow()
            self._session.flush()
        return _model_info(row, project, _versions_of(self._session, [row])[row.id])

    def delete(self, project: str, name: str) -> None:
        """Delete the model and all that is about it (not its event tables).

        Versions, reference records, monitor and retraining policy go with the model's
        row; alerts, triggers and the rules that name this model alone are kept by name,
        so they go here: a model registered again under the name starts clean, with no
        alert of its predecessor still firing.
        """
        owner, row = _require_model(self._session, project, name)
        for table in (AlertState, RetrainingTrigger, AlertRule):
            self._session.execute(delete(table).where(table.project_id == owner.id, table.model == row.name))
        self._session.execute(delete(Model).where(Model.id == row.id))
        self._session.expunge(row)

    def list(self, project: str) -> builtins.list[ModelInfo]:
        owner = project_row(self._session, project)
        if owner is None:
            return []
        rows = builtins.list(
            self._session.scalars(
                fresh(select(Model).where(Model.project_id == owner.id).order_by(Model.name))
            )
        )
        versions = _versions_of(self._session, rows)
        return [_model_info(r, project, versions[r.id]) for r in rows]


def _grow_row(session: Session, row: Model, extra: Sequence[FeatureSpec]) -> None:
    schema = load_schema(row.schema_json)
    grown = grow(schema, extra)
    if grown is not schema:
        row.schema_json = dump_schema(grown)
        row.updated_at = utcnow()
        session.flush()


class VersionRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(
        self,
        project: str,
        model: str,
        version: str,
        role: Role | str,
        *,
        approval: Approval | str | None = None,
        data_version: str | None = None,
        training_config_uri: str | None = None,
        eval_report_uri: str | None = None,
        features: Sequence[FeatureSpec] | None = None,
    ) -> tuple[VersionInfo, bool]:
        """Add a version, or find it already added with the same values (created False).

        On a repeat, arguments left as None are not compared, so a client re-posting its
        version after an approval changed still succeeds; a value that differs is a
        Conflict. `features` grow the model's schema in the same transaction.
        """
        try:
            check_name(version, VERSION_PATTERN, "version")
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        wanted_role = _enum(Role, role, "role")
        wanted_approval = None if approval is None else _enum(Approval, approval, "approval")
        check_text(data_version, "data_version", DATA_VERSION_MAX_LENGTH)
        check_text(training_config_uri, "training_config_uri", URI_MAX_LENGTH)
        check_text(eval_report_uri, "eval_report_uri", URI_MAX_LENGTH)
        extra = _check_features(features)

        _, model_row = _require_model(self._session, project, model, lock=True)
        existing = _version_row(self._session, model_row, version)
        if existing is not None:
            given: dict[str, Any] = {
                "role": wanted_role.value,
                "approval": None if wanted_approval is None else wanted_approval.value,
                "data_version": data_version,
                "training_config_uri": training_config_uri,
                "eval_report_uri": eval_report_uri,
            }
            differences = [
                f"{name}: registered {_fmt(getattr(existing, name))}, given {_fmt(value)}"
                for name, value in given.items()
                if value is not None and getattr(existing, name) != value
            ]
            if extra is not None:
                differences += _named_differences("feature", load_features(existing.features_json), extra)
            if differences:
                raise Conflict(
                    f"version {version!r} of model {model!r} exists with other values: "
                    + "; ".join(differences),
                    details={"differences": differences},
                )
            return _version_info(existing, project, model), False

        if extra:
            _grow_row(self._session, model_row, extra)
        now = utcnow()
        row = ModelVersion(
            model_id=model_row.id,
            version=version,
            role=wanted_role.value,
            approval=(wanted_approval or Approval.PENDING).value,
            data_version=data_version,
            training_config_uri=training_config_uri,
            eval_report_uri=eval_report_uri,
            features_json=dump_features(extra or []),
            created_at=now,
            updated_at=now,
        )
        self._session.add(row)
        self._session.flush()
        return _version_info(row, project, model), True

    def get(self, project: str, model: str, version: str) -> VersionInfo | None:
        found = _model_row(self._session, project, model)
        if found is None:
            return None
        row = _version_row(self._session, found[1], version)
        return None if row is None else _version_info(row, project, model)

    def update(
        self,
        project: str,
        model: str,
        version: str,
        *,
        role: Role | str | None = None,
        approval: Approval | str | None = None,
        data_version: str | None = None,
        training_config_uri: str | None = None,
        eval_report_uri: str | None = None,
    ) -> VersionInfo:
        """Change a version's role, approval or lineage (None leaves a value as it is); other
        champions are left as they are, since a rollout may run two for a while."""
        new_role = None if role is None else _enum(Role, role, "role")
        new_approval = None if approval is None else _enum(Approval, approval, "approval")
        check_text(data_version, "data_version", DATA_VERSION_MAX_LENGTH)
        check_text(training_config_uri, "training_config_uri", URI_MAX_LENGTH)
        check_text(eval_report_uri, "eval_report_uri", URI_MAX_LENGTH)
        _, row = _require_version(self._session, project, model, version)
        wanted: dict[str, str | None] = {
            "role": None if new_role is None else new_role.value,
            "approval": None if new_approval is None else new_approval.value,
            "data_version": data_version,
            "training_config_uri": training_config_uri,
            "eval_report_uri": eval_report_uri,
        }
        changed = False
        for name, value in wanted.items():
            if value is not None and getattr(row, name) != value:
                setattr(row, name, value)
                changed = True
        if changed:
            row.updated_at = utcnow()
            self._session.flush()
        return _version_info(row, project, model)

    def list(self, project: str, model: str) -> builtins.list[VersionInfo]:
        """Oldest first; NotFound when the model does not exist."""
        _, row = _require_model(self._session, project, model)
        return [_version_info(v, project, model) for v in _versions_of(self._session, [row])[row.id]]


class ReferenceRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def record_upload(
        self,
        project: str,
        model: str,
        version: str,
        rows: int,
        fmt: ReferenceFormat | str,
        *,
        key_id: int | None = None,
    ) -> ReferenceInfo:
        """Record the version's reference data set, replacing the previous record."""
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise InvalidInput(f"rows must be a non-negative integer, not {rows!r}")
        wanted = _enum(ReferenceFormat, fmt, "reference format")
        _, version_row = _require_version(self._session, project, model, version)
        values = {
            "row_count": rows,
            "format": wanted.value,
            "uploaded_at": utcnow(),
            "uploaded_by_key_id": key_id,
        }
        self._session.execute(
            insert(self._session, ReferenceUpload)
            .values(version_id=version_row.id, **values)
            .on_conflict_do_update(index_elements=["version_id"], set_=values)
        )
        info = self._get(version_row, project, model)
        assert info is not None
        return info

    def get(self, project: str, model: str, version: str) -> ReferenceInfo | None:
        found = _model_row(self._session, project, model)
        if found is None:
            return None
        version_row = _version_row(self._session, found[1], version)
        return None if version_row is None else self._get(version_row, project, model)

    def _get(self, version_row: ModelVersion, project: str, model: str) -> ReferenceInfo | None:
        stmt = fresh(select(ReferenceUpload).where(ReferenceUpload.version_id == version_row.id))
        row = self._session.scalars(stmt).one_or_none()
        if row is None:
            return None
        return ReferenceInfo(
            id=row.id,
            version_id=row.version_id,
            project=project,
            model=model,
            version=version_row.version,
            rows=row.rows,
            format=ReferenceFormat(row.format),
            uploaded_at=row.uploaded_at,
            uploaded_by_key_id=row.uploaded_by_key_id,
        )
