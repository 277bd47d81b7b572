"""What the dashboard reads beyond raw results: the overview, distributions, readiness, Evidently reports.

The dashboard talks only to this API (an embedded store admits one process), so each page
gets what it shows in one or two requests, computed from summaries and aggregates rather
than raw rows. Everything is scoped to the key's project: another project's model is 404.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from driftline.detectors.monitors import parse_time
from driftline.errors import InvalidInput
from driftline.ingest import distributions, drift_report, overview, readiness
from driftline.ingest.api_models import ErrorOut
from driftline.ingest.deps import ReadKey, State
from driftline.ingest.model_facts import time_range

router = APIRouter(prefix="/v1", tags=["views"])

ModelPath = Path(max_length=64, description="Model name")
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (401, 403, 404, 422, 503)}
DAY = 86_400


def _time(value: str | None, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return parse_time(value, what)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


@router.get(
    "/overview",
    response_model=overview.OverviewOut,
    responses=_ERRORS,
    summary="Every model's health at a glance, open alerts and retraining triggers awaiting approval",
)
def get_overview(state: State, key: ReadKey) -> overview.OverviewOut:
    return overview.build(state, key.project, time.time())


@router.get(
    "/models/{model}/distributions",
    response_model=distributions.DistributionOut,
    response_model_exclude_none=True,
    responses=_ERRORS,
    summary="Reference against current distribution of one feature, @score or @prediction, from summaries",
)
def get_distribution(
    state: State,
    key: ReadKey,
    model: str = ModelPath,
    feature: str = Query(
        max_length=200, description="A feature, '@score', '@prediction' or '@score:<class>'"
    ),
    version: str | None = Query(default=None, max_length=64, description="Default: the champion"),
    start: str | None = Query(default=None, description="ISO 8601 or epoch; default: 7 days before end"),
    end: str | None = Query(default=None, description="ISO 8601 or epoch, exclusive; default: now"),
    bins: int = Query(default=30, ge=1, le=200, description="Numeric: bins; categorical: values shown"),
) -> distributions.DistributionOut:
    info = state.models.get(key.project, model)
    lo, hi = time_range(_time(start, "start"), _time(end, "end"), time.time(), 7 * DAY)
    return distributions.build(state, info, feature, version, lo, hi, bins)


@router.get(
    "/models/{model}/versions/{version}/readiness",
    response_model=readiness.ReadinessOut,
    responses=_ERRORS,
    summary="The version's deployment checklist: each item passes or says what is missing",
)
def get_readiness(
    state: State, key: ReadKey, model: str = ModelPath, version: str = Path(max_length=64)
) -> readiness.ReadinessOut:
    info = state.models.get(key.project, model, fresh=True)
    return readiness.build(state, info, version)


@router.get(
    "/models/{model}/report",
    response_class=HTMLResponse,
    responses={**_ERRORS, 200: {"content": {"text/html": {}}, "description": "Evidently's HTML report"}},
    summary="Evidently's data-drift report for a window, on a bounded sample of it against the reference",
)
async def get_report(
    state: State,
    key: ReadKey,
    model: str = ModelPath,
    start: str | None = Query(default=None, description="ISO 8601 or epoch; default: 1 day before end"),
    end: str | None = Query(default=None, description="ISO 8601 or epoch, exclusive; default: now"),
    version: str | None = Query(default=None, max_length=64, description="Default: the champion"),
    rows: int = Query(
        default=5000,
        ge=1,
        le=drift_report.MAX_ROWS,
        description=f"Rows sampled from the window and from the reference, at most {drift_report.MAX_ROWS}",
    ),
) -> HTMLResponse:
    lo, hi = time_range(_time(start, "start"), _time(end, "end"), time.time(), DAY)

    def run() -> str:
        info = state.models.get(key.project, model)
        return drift_report.build(state, info, version, lo, hi, rows)

    return HTMLResponse(await run_in_threadpool(run))
