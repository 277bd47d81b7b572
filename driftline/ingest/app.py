"""The FastAPI application: built by a factory, stores opened in its lifespan."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import driftline
from driftline.config import Settings, get_settings
from driftline.errors import DriftlineError
from driftline.ingest import openapi as openapi_doc
from driftline.ingest.api_models import (
    FeedbackBatch,
    LabelBatch,
    PredictionBatch,
    ReferenceBody,
)
from driftline.ingest.error_responses import error_response, validation_response
from driftline.ingest.routers import alerts, detect, events, health, keys, models, retraining
from driftline.ingest.routers import views as views_router
from driftline.ingest.routers.events import DirectIngest
from driftline.ingest.state import AppState
from driftline.ingest.telemetry import Metrics, configure_logging, request_id_var

log = logging.getLogger("driftline.api")

_DOC_MODELS = (PredictionBatch, LabelBatch, FeedbackBatch, ReferenceBody)


class ObserveMiddleware:
    """Request id, metrics and a last-resort 500, as plain ASGI.

    Starlette's decorator middleware re-streams every body through a task; for
    megabyte ingest bodies that costs more than the ingest itself.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = (headers.get(b"x-request-id") or uuid.uuid4().hex.encode()).decode("latin-1")[:64]
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error")
            if not started:
                response = JSONResponse({"detail": "internal error"}, status_code=500)
                await response(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, path, str(status)).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - start)
            request_id_var.reset(token)


def create_app(settings: Settings | None = None, *, state: AppState | None = None) -> FastAPI:
    """The API; `state` lets a caller (the CLI's `up`) share stores with the scheduler."""
    settings = settings or get_settings()
    metrics = state.metrics if state is not None else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = state is None
        app_state: AppState = (
            state if state is not None else await run_in_threadpool(AppState.open, settings, metrics=metrics)
        )
        app.state.driftline = app_state
        if owned:
            app_state.start()
        try:
            yield
        finally:
            if owned:
                await run_in_threadpool(app_state.close)

    app = FastAPI(
        title="driftline",
        version=driftline.__version__,
        description="Drift and model-quality monitoring: log predictions and late labels, read what drifted.",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(events.router)
    app.include_router(keys.router)
    app.include_router(detect.router)
    app.include_router(alerts.router)
    app.include_router(retraining.router)
    app.include_router(views_router.router)

    @app.exception_handler(DriftlineError)
    async def on_driftline_error(request: Request, exc: DriftlineError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(
            [
                {
                    "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"),
                    "error": e.get("msg", ""),
                }
                for e in exc.errors()[:50]
            ]
        )

    # inside ObserveMiddleware, so the direct routes get request ids and metrics as all others
    app.add_middleware(DirectIngest, routes=events.direct_routes(events.router.routes))
    app.add_middleware(ObserveMiddleware, metrics=metrics)

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            app.openapi_schema = openapi_doc.build(app, _DOC_MODELS)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def serve(settings: Settings | None = None) -> None:
    """Run the API with uvicorn (the process that owns an embedded store)."""
    import uvicorn

    settings = settings or get_settings()
    configure_logging(settings.log_level, as_json=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_keep_alive=30,
    )
