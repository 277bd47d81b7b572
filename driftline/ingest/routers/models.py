"""The model registry: models, versions, reference data, and stored predictions."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from driftline.detectors.results import MetricsTable
from driftline.errors import InvalidInput, NotFound, StoreError
from driftline.ingest import bodies, service
from driftline.ingest.api_models import (
    CountsOut,
    ErrorOut,
    ModelList,
    ModelOut,
    ModelPatch,
    ReferenceResult,
    StoredPrediction,
    VersionIn,
    VersionOut,
    VersionPatch,
)
from driftline.ingest.deps import AdminKey, IngestKey, ReadKey, State
from driftline.ingest.state import AppState
from driftline.schema import ModelSchema
from driftline.storage.meta.records import ModelInfo, VersionInfo

router = APIRouter(prefix="/v1/models", tags=["models"])
log = logging.getLogger(__name__)

ModelPath = Path(max_length=64, description="Model name")
VersionPath = Path(max_length=64, description="Model version")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 422, 503)
}


def version_out(v: VersionInfo, reference_rows: int | None = None) -> VersionOut:
    return VersionOut(
        version=v.version,
        role=v.role,
        approval=v.approval,
        data_version=v.data_version,
        training_config_uri=v.training_config_uri,
        eval_report_uri=v.eval_report_uri,
        features=v.features,
        created_at=v.created_at,
        reference_rows=reference_rows,
    )


def model_out(state: AppState, info: ModelInfo, *, with_counts: bool) -> ModelOut:
    counts = None
    if with_counts:
        try:
            c = state.events.counts(info.project, info.name)
            counts = CountsOut(
                predictions=c.predictions, labels=c.labels, feedback=c.feedback, reference=c.reference
            )
        except StoreError as exc:
            log.warning("counts unavailable: %s", exc)
    reference = counts.reference if counts else {}
    return ModelOut(
        name=info.name,
        project=info.project,
        task=info.task,
        owner=info.owner,
        schema_=info.schema,
        versions=[version_out(v, reference.get(v.version)) for v in info.versions],
        created_at=info.created_at,
        updated_at=info.updated_at,
        counts=counts,
    )


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    responses={**_ERRORS, 200: {"model": ModelOut, "description": "Already registered with this schema"}},
    summary="Register a model and its schema",
)
def register_model(schema: ModelSchema, state: State, key: AdminKey, response: Response) -> ModelOut:
    with state.meta.repos() as repos:
        info, created = repos.models.register(key.project, schema)
        if created:
            state.alerts.create_default_rules(repos, key.project, info.name)
    state.events.ensure_model(key.project, info.schema)
    state.models.put(info)
    if not created:
        response.status_code = 200
    return model_out(state, info, with_counts=False)


@router.get("", response_model=ModelList, responses=_ERRORS, summary="Models of the key's project")
def list_models(state: State, key: ReadKey) -> ModelList:
    with state.meta.repos(readonly=True) as repos:
        infos = repos.models.list(key.project)
    return ModelList(items=[model_out(state, i, with_counts=False) for i in infos])


@router.get(
    "/{model}", response_model=ModelOut, responses=_ERRORS, summary="A model: schema, versions and counts"
)
def get_model(state: State, key: ReadKey, model: str = ModelPath) -> ModelOut:
    info = state.models.get(key.project, model, fresh=True)
    return model_out(state, info, with_counts=True)


@router.patch(
    "/{model}", response_model=ModelOut, responses=_ERRORS, summary="Change a model's owner or description"
)
def update_model(body: ModelPatch, state: State, key: AdminKey, model: str = ModelPath) -> ModelOut:
    with state.meta.repos() as repos:
        info = repos.models.update(key.project, model, owner=body.owner, description=body.description)
    state.models.put(info)
    return model_out(state, info, with_counts=False)


@router.delete("/{model}", status_code=204, responses=_ERRORS, summary="Delete a model and all its data")
def delete_model(state: State, key: AdminKey, model: str = ModelPath) -> Response:
    info = state.models.get(key.project, model, fresh=True)
    state.flusher.flush_once()
    state.events.drop_model(key.project, info.name)
    MetricsTable(state.events.engine).delete_model(key.project, info.name)
    with state.meta.repos() as repos:
        repos.models.delete(key.project, info.name)
    state.models.forget(key.project, info.name)
    return Response(status_code=204)


@router.post(
    "/{model}/versions",
    status_code=201,
    response_model=VersionOut,
    responses={**_ERRORS, 200: {"model": VersionOut, "description": "Already registered with these values"}},
    summary="Register a version (role, approval, lineage; optional new features)",
)
def add_version(
    body: VersionIn, state: State, key: AdminKey, response: Response, model: str = ModelPath
) -> VersionOut:
    with state.meta.repos() as repos:
        version, created = repos.versions.add(
            key.project,
            model,
            body.version,
            body.role,
            approval=body.approval,
            data_version=body.data_version,
            training_config_uri=body.training_config_uri,
            eval_report_uri=body.eval_report_uri,
            features=body.features,
        )
        info = repos.models.require(key.project, model)
    state.models.put(info)
    if body.features:
        state.events.ensure_model(key.project, info.schema)
    if not created:
        response.status_code = 200
    return version_out(version)


@router.patch(
    "/{model}/versions/{version}",
    response_model=VersionOut,
    responses=_ERRORS,
    summary="Change a version's role, approval or lineage (a rollout promotes, a review approves)",
)
def update_version(
    body: VersionPatch, state: State, key: AdminKey, model: str = ModelPath, version: str = VersionPath
) -> VersionOut:
    with state.meta.repos() as repos:
        updated = repos.versions.update(
            key.project,
            model,
            version,
            role=body.role,
            approval=body.approval,
            data_version=body.data_version,
            training_config_uri=body.training_config_uri,
            eval_report_uri=body.eval_report_uri,
        )
        info = repos.models.require(key.project, model)
    state.models.put(info)
    return version_out(updated)


@router.put(
    "/{model}/versions/{version}/reference",
    response_model=ReferenceResult,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ReferenceBody"}},
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
                "text/csv": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    summary="Upload (replace) a version's reference data: JSON records, CSV or Parquet",
)
async def put_reference(
    request: Request,
    state: State,
    key: IngestKey,
    model: str = ModelPath,
    version: str = VersionPath,
) -> ReferenceResult:
    media = bodies.media_type(request)
    limit = state.settings.max_body_bytes if media in bodies.JSON else state.settings.max_bulk_bytes
    body = await bodies.read_body(request, limit, timeout=state.settings.body_timeout_seconds)

    def run() -> ReferenceResult:
        info = state.models.get(key.project, model)
        if media in bodies.JSON:
            payload = bodies.parse_json(body)
            records = payload.get("records") if isinstance(payload, dict) else None
            if not isinstance(records, list):
                raise InvalidInput("the body must be a JSON object with a 'records' list")
            rows: list[Any] | Any = records
        else:
            rows = bodies.parse_table(body, media, info.schema)
        return service.upload_reference(
            state, key.project, model, version, rows, bodies.reference_format(media), key.id
        )

    return await run_in_threadpool(run)


@router.get(
    "/{model}/predictions/{request_id:path}",
    response_model=StoredPrediction,
    responses=_ERRORS,
    summary="A stored prediction with its version, schema, label and feedback",
)
def get_prediction(
    state: State,
    key: ReadKey,
    model: str = ModelPath,
    request_id: str = Path(max_length=256),
    version: str | None = Query(default=None, max_length=64, description="Which version's prediction"),
) -> StoredPrediction:
    info = state.models.get(key.project, model)
    record = state.events.get_prediction(key.project, info.schema, request_id, version)
    if record is None:
        raise NotFound(f"no prediction {request_id!r} of model {model!r} (it may still be on its way)")
    found = info.version(str(record["version"]))
    return StoredPrediction(
        model=info.name,
        project=info.project,
        version=version_out(found).model_dump(mode="json") if found else None,
        record=record,
        schema_=info.schema,
    )
