"""Probes and metrics: /healthz (alive), /readyz (stores reachable), /metrics, /v1/flush."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from driftline.errors import StoreError
from driftline.ingest.api_models import FlushResult
from driftline.ingest.deps import AdminKey, State

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Both stores answer and the spool has room")
def readyz(state: State) -> JSONResponse:
    checks: dict[str, Any] = {}
    ok = True
    for name, ping in (("metadata", state.meta.ping), ("events", state.events.engine.ping)):
        try:
            ping()
            checks[name] = "ok"
        except StoreError as exc:
            checks[name] = str(exc)
            ok = False
    try:
        state.spool.check_room()
        checks["spool"] = state.spool.stats()
    except Exception as exc:
        checks["spool"] = str(exc)
        ok = False
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics")
def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/v1/flush", response_model=FlushResult, tags=["admin"], summary="Wait until the spool is in the store"
)
async def flush(
    state: State, key: AdminKey, timeout: float = Query(default=30.0, ge=0, le=600)
) -> FlushResult:
    drained = await run_in_threadpool(state.spool.wait_empty, timeout)
    return FlushResult(drained=drained, pending_bytes=state.spool.pending_bytes)
