"""POST /v1/predictions, /v1/labels, /v1/feedback: JSON batches or flat bulk tables."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from driftline.errors import InvalidInput
from driftline.ingest import bodies, service
from driftline.ingest.api_models import ErrorOut, FeedbackBatch, IngestResult, LabelBatch, PredictionBatch
from driftline.ingest.deps import IngestKey, State
from driftline.storage.events import Kind

router = APIRouter(prefix="/v1", tags=["ingest"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 413, 415, 422, 503)
}


def _body_doc(model: type[Any]) -> dict[str, Any]:
    schema_ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema_ref},
                "application/vnd.apache.parquet": binary,
                "application/vnd.apache.arrow.stream": binary,
                "text/csv": binary,
            },
        }
    }


async def _handle(
    request: Request, state: State, key: IngestKey, kind: Kind, model: str | None
) -> IngestResult:
    media = bodies.media_type(request)
    if media in bodies.JSON:
        body = await bodies.read_body(
            request, state.settings.max_body_bytes, timeout=state.settings.body_timeout_seconds
        )

        return await run_in_threadpool(service.ingest_json, state, key.project, kind, body, model)
    if model is None:
        raise InvalidInput("a bulk body needs the model as a query parameter: ?model=NAME")
    body = await bodies.read_body(
        request, state.settings.max_bulk_bytes, timeout=state.settings.body_timeout_seconds
    )

    def run_bulk() -> IngestResult:
        info = state.models.get(key.project, model)
        table = bodies.parse_table(body, media, info.schema)
        return service.ingest(state, key.project, kind, model, table)

    return await run_in_threadpool(run_bulk)


@router.post(
    "/predictions",
    status_code=202,
    response_model=IngestResult,
    responses=_ERRORS,
    openapi_extra=_body_doc(PredictionBatch),
    summary="Log predictions (JSON batch, or Parquet/Arrow/CSV with ?model=)",
)
async def post_predictions(
    request: Request, state: State, key: IngestKey, model: str | None = Query(default=None, max_length=64)
) -> IngestResult:
    return await _handle(request, state, key, Kind.PREDICTIONS, model)


@router.post(
    "/labels",
    status_code=202,
    response_model=IngestResult,
    responses=_ERRORS,
    openapi_extra=_body_doc(LabelBatch),
    summary="Log ground-truth labels by request_id, in any order and at any delay",
)
async def post_labels(
    request: Request, state: State, key: IngestKey, model: str | None = Query(default=None, max_length=64)
) -> IngestResult:
    return await _handle(request, state, key, Kind.LABELS, model)


@router.post(
    "/feedback",
    status_code=202,
    response_model=IngestResult,
    responses=_ERRORS,
    openapi_extra=_body_doc(FeedbackBatch),
    summary="Log human feedback (review outcomes) by request_id",
)
async def post_feedback(
    request: Request, state: State, key: IngestKey, model: str | None = Query(default=None, max_length=64)
) -> IngestResult:
    return await _handle(request, state, key, Kind.FEEDBACK, model)
