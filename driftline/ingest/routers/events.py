"""POST /v1/predictions, /v1/labels, /v1/feedback: JSON batches or flat bulk tables.

Nearly all of the API's traffic comes here: small batches at a high rate. For them,
FastAPI's matching of the path against every route of the API and its dependency
solving cost more CPU than the ingest itself, and with Python's one lock that CPU is
the server's throughput. So `DirectIngest` takes these three exact paths to `handle`
straight away. The routes below call the same `handle`, so a request that reaches them
is answered the same way, and they make the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from driftline.errors import DriftlineError, Forbidden, InvalidInput, Unauthorized
from driftline.ingest import bodies, deps, service
from driftline.ingest.api_models import ErrorOut, FeedbackBatch, IngestResult, LabelBatch, PredictionBatch
from driftline.ingest.error_responses import error_response, validation_response
from driftline.ingest.state import AppState
from driftline.storage.events import Kind
from driftline.storage.meta.models import KeyRole

router = APIRouter(prefix="/v1", tags=["ingest"])
MODEL_MAX_LENGTH = 64
DIRECT_PATHS = {
    "/v1/predictions": Kind.PREDICTIONS,
    "/v1/labels": Kind.LABELS,
    "/v1/feedback": Kind.FEEDBACK,
}

_ROLES = (KeyRole.INGEST,)

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


async def handle(request: Request, kind: Kind, model: str | None) -> Response:
    """Key, body and ingest, with one trip through the threadpool for a key seen before.

    These routes carry nearly all of the traffic. As dependencies, the key check would cost
    a threadpool trip of its own on every request; here a key this process verified before
    is checked for its role at once (an unknown key is refused before its body is read)
    and confirmed active in the same trip as the ingest.
    """
    state: AppState = request.app.state.driftline
    token = deps.bearer_token(request)
    known = state.meta.known_key(token)
    key = known if known is not None else await run_in_threadpool(deps.verified_key, state, token)
    unconfirmed = known is not None

    def confirm() -> None:
        if unconfirmed and not state.meta.confirm_key(token, key):
            raise Unauthorized("the API key is unknown or revoked")

    try:
        deps.check_role(key, _ROLES)
    except Forbidden:
        await run_in_threadpool(confirm)  # a revoked key gets 401 whatever its role, as on every route
        raise

    media = bodies.media_type(request)
    if media in bodies.JSON:
        body = await bodies.read_body(
            request, state.settings.max_body_bytes, timeout=state.settings.body_timeout_seconds
        )

        def run_json() -> IngestResult:
            confirm()
            return service.ingest_json(state, key.project, kind, body, model)

        return _accepted(await run_in_threadpool(run_json))
    await run_in_threadpool(confirm)  # a bulk body is big: refused before it is read
    if model is None:
        raise InvalidInput("a bulk body needs the model as a query parameter: ?model=NAME")
    bulk = await bodies.read_body(
        request, state.settings.max_bulk_bytes, timeout=state.settings.body_timeout_seconds
    )

    def run_bulk() -> IngestResult:
        info = state.models.get(key.project, model)
        table = bodies.parse_table(bulk, media, info.schema)
        return service.ingest(state, key.project, kind, model, table)

    return _accepted(await run_in_threadpool(run_bulk))


def _accepted(result: IngestResult) -> Response:
    return Response(orjson.dumps(result.model_dump()), status_code=202, media_type="application/json")


@router.post(
    "/predictions",
    status_code=202,
    response_model=IngestResult,
    responses=_ERRORS,
    openapi_extra=_body_doc(PredictionBatch),
    summary="Log predictions (JSON batch, or Parquet/Arrow/CSV with ?model=)",
)
async def post_predictions(
    request: Request, model: str | None = Query(default=None, max_length=MODEL_MAX_LENGTH)
) -> Response:
    return await handle(request, Kind.PREDICTIONS, model)


@router.post(
    "/labels",
    status_code=202,
    response_model=IngestResult,
    responses=_ERRORS,
    openapi_extra=_body_doc(LabelBatch),
    summary="Log ground-truth labels by request_id, in any order and at any delay",
)
async def post_labels(
    request: Request, model: str | None = Query(default=None, max_length=MODEL_MAX_LENGTH)
) -> Response:
    return await handle(request, Kind.LABELS, model)


@router.post(
    "/feedback",
    status_code=202,
    response_model=IngestResult,
    responses=_ERRORS,
    openapi_extra=_body_doc(FeedbackBatch),
    summary="Log human feedback (review outcomes) by request_id",
)
async def post_feedback(
    request: Request, model: str | None = Query(default=None, max_length=MODEL_MAX_LENGTH)
) -> Response:
    return await handle(request, Kind.FEEDBACK, model)


def direct_routes(routes: Sequence[BaseRoute]) -> dict[str, tuple[Kind, BaseRoute]]:
    """The ingest paths and their routes (the request metrics label a request by its route)."""
    found: dict[str, tuple[Kind, BaseRoute]] = {
        route.path: (DIRECT_PATHS[route.path], route)
        for route in routes
        if isinstance(route, APIRoute) and route.path in DIRECT_PATHS and "POST" in (route.methods or ())
    }
    if len(found) != len(DIRECT_PATHS):
        raise RuntimeError(f"ingest routes missing: {sorted(set(DIRECT_PATHS) - set(found))}")
    return found


class DirectIngest:
    """POSTs to the ingest paths go to `handle` without FastAPI's router; the rest pass through."""

    def __init__(self, app: ASGIApp, routes: dict[str, tuple[Kind, BaseRoute]]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = (
            self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        )
        if target is None:
            await self.app(scope, receive, send)
            return
        kind, route = target
        scope["route"] = route
        request = Request(scope, receive)
        response: Response
        model = request.query_params.get("model")
        if model is not None and len(model) > MODEL_MAX_LENGTH:
            response = validation_response(
                [
                    {
                        "field": "query.model",
                        "error": f"String should have at most {MODEL_MAX_LENGTH} characters",
                    }
                ]
            )
        else:
            try:
                response = await handle(request, kind, model)
            except DriftlineError as exc:
                response = error_response(exc)
        await response(scope, receive, send)
