"""Monitors, detection on demand and the metrics it wrote, per model."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from driftline.detectors.base import DetectorConfig
from driftline.detectors.monitors import Monitor, MonitorConfig, iso, monitor_of, parse_duration, parse_time
from driftline.detectors.scheduler import detect, detect_range
from driftline.errors import DriftlineError, InvalidInput, Unavailable
from driftline.ingest.api_models import ErrorOut
from driftline.ingest.deps import AdminKey, ReadKey, State
from driftline.ingest.metric_reads import MetricsSelect, encode, read_items, split_values
from driftline.storage.meta.monitors import MonitorRecord

router = APIRouter(prefix="/v1/models", tags=["detection"])

ModelPath = Path(max_length=64, description="Model name")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 422, 503)
}


class DetectorOut(BaseModel):
    kind: str
    id: str = Field(description="Stable id: a hash of the kind and settings.")
    settings: dict[str, Any]


class MonitorState(BaseModel):
    watermark: str | None = Field(description="Every window ending at or before this has results.")
    last_run_at: str | None = Field(description="When the scheduler last ran this model.")
    last_error: str | None


class MonitorOut(BaseModel):
    model: str
    source: Literal["stored", "default"] = Field(description="'default' until a monitor is PUT.")
    config: MonitorConfig
    detectors: list[DetectorOut] = Field(
        description="The detectors that run (the defaults when none are set)."
    )
    state: MonitorState


class DetectIn(BaseModel):
    start: str | int | float = Field(description="ISO 8601 (naive = UTC) or epoch seconds.")
    end: str | int | float = Field(description="ISO 8601 (naive = UTC) or epoch seconds; exclusive.")
    window: str | None = Field(
        default=None, description="Window length such as '1h', '1d', '30d'; default: the monitor's window."
    )


class DetectOut(BaseModel):
    model: str
    start: str = Field(description="Start of the first window (the range is aligned to whole windows).")
    end: str
    window: str
    windows: int
    versions: list[str] = Field(description="Versions with traffic in the range.")
    buckets_summarised: int = Field(description="Hourly buckets summarised by this run (new or late rows).")
    rows_written: int = Field(description="Rows written to the metrics table (replacing earlier runs).")
    alerts: int
    errors: list[str] = Field(description="Detectors that failed; each also left an error result.")
    seconds: float
    detectors: list[DetectorOut]


class MetricOut(BaseModel):
    window_start: str
    window_end: str
    version: str
    detector: str
    detector_id: str
    metric: str
    feature: str
    slice: str
    value: float | None
    threshold: float | None
    alert: bool
    sample_size: int
    status: str = Field(description="ok, no_data or error")
    details: dict[str, Any] | None = Field(default=None, description="Left out when details=false")


class MetricsOut(BaseModel):
    items: list[MetricOut]
    truncated: bool = Field(description="True when more rows matched than `limit`.")


def _detector_out(config: DetectorConfig) -> DetectorOut:
    return DetectorOut(kind=config.kind, id=config.id, settings=config.model_dump(mode="json"))


def _monitor_out(monitor: Monitor) -> MonitorOut:
    record = monitor.record
    return MonitorOut(
        model=record.model,
        source="stored" if monitor.stored else "default",
        config=monitor.config,
        detectors=[_detector_out(c) for c in monitor.config.configs()],
        state=MonitorState(
            watermark=iso(record.watermark),
            last_run_at=iso(record.last_run_at.timestamp()) if record.last_run_at else None,
            last_error=record.last_error,
        ),
    )


# comma-separated names; names are printable ASCII, which keeps the longest URL a
# list makes well under what the HTTP server reads
_LIST = r"^[\x20-\x7e]*$"


@router.get(
    "/{model}/monitors",
    response_model=MonitorOut,
    responses=_ERRORS,
    summary="The model's monitor: the stored one, or the defaults",
)
def get_monitor(state: State, key: ReadKey, model: str = ModelPath) -> MonitorOut:
    with state.meta.repos(readonly=True) as repos:
        record = repos.monitors.get(key.project, model)
    return _monitor_out(monitor_of(record))


@router.put(
    "/{model}/monitors",
    response_model=MonitorOut,
    responses=_ERRORS,
    summary="Set the model's monitor: window, schedule, detectors (methods, thresholds), important slices",
)
def put_monitor(body: MonitorConfig, state: State, key: AdminKey, model: str = ModelPath) -> MonitorOut:
    info = state.models.get(key.project, model, fresh=True)
    body.check_schema(info.schema)
    with state.meta.repos() as repos:
        restart = _window_of(repos.monitors.get(key.project, model)) != body.window_seconds
        record = repos.monitors.put(key.project, model, body.model_dump(mode="json"), restart=restart)
    return _monitor_out(monitor_of(record))


def _window_of(record: MonitorRecord) -> int | None:
    """The window length the model's watermark counts in (None when its stored config is broken)."""
    try:
        return monitor_of(record).config.window_seconds
    except DriftlineError:
        return None


@router.delete(
    "/{model}/monitors",
    response_model=MonitorOut,
    responses=_ERRORS,
    summary="Forget the stored monitor: the model is monitored with the defaults again",
)
def reset_monitor(state: State, key: AdminKey, model: str = ModelPath) -> MonitorOut:
    with state.meta.repos() as repos:
        restart = _window_of(repos.monitors.get(key.project, model)) != MonitorConfig().window_seconds
        record = repos.monitors.reset(key.project, model, restart=restart)
    return _monitor_out(monitor_of(record))


@router.post(
    "/{model}/detect",
    response_model=DetectOut,
    responses=_ERRORS,
    summary="Run every detector of the model's monitor over a range now; returns when done",
)
def run_detect(body: DetectIn, state: State, key: AdminKey, model: str = ModelPath) -> DetectOut:
    # a sync route: FastAPI runs it in the threadpool, so a long run never blocks the event loop
    with state.meta.repos(readonly=True) as repos:
        record = repos.monitors.get(key.project, model)
    window = body.window or monitor_of(record).config.window
    rng = detect_range(body.start, body.end, window, max_windows=state.settings.detect_max_windows)
    timeout = state.settings.detect_spool_timeout_seconds
    if not state.spool.wait_flushed(timeout):
        raise Unavailable(
            f"rows accepted earlier are still on their way to the event store after {timeout:.0f}s "
            "(is it down?); detect again later",
            retry_after=10,
        )
    result, configs = detect(state.meta, state.runner, key.project, model, rng)
    state.alerts.after_run(key.project, model, result)
    return DetectOut(
        model=model,
        start=iso(result.start) or "",
        end=iso(result.end) or "",
        window=rng.window,
        windows=result.windows,
        versions=result.versions,
        buckets_summarised=result.buckets_summarised,
        rows_written=result.rows_written,
        alerts=result.alerts,
        errors=result.errors,
        seconds=round(result.seconds, 3),
        detectors=[_detector_out(c) for c in configs],
    )


def _time(value: str | None, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return parse_time(value, what)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


@router.get(
    "/{model}/metrics",
    response_model=MetricsOut,
    responses=_ERRORS,
    summary="Detection results, filtered; a re-run's rows replace the earlier ones",
    description="detector, metric, feature and version take one value or several separated by commas "
    "(metric=psi,wasserstein). For pages over many windows, details=false leaves out the widest "
    "field and window=1h keeps the results of one window length.",
)
def get_metrics(
    state: State,
    key: ReadKey,
    model: str = ModelPath,
    detector: str | None = Query(
        default=None, max_length=1000, pattern=_LIST, description="Detector kind(s)"
    ),
    metric: str | None = Query(default=None, max_length=2000, pattern=_LIST),
    feature: str | None = Query(default=None, max_length=10_000, pattern=_LIST),
    slice: str | None = Query(default=None, max_length=300, description="'' is the whole population"),
    version: str | None = Query(default=None, max_length=1000, pattern=_LIST),
    status: Literal["ok", "error", "no_data"] | None = Query(default=None),
    start: str | None = Query(default=None, description="Windows starting at or after (ISO 8601 or epoch)"),
    end: str | None = Query(default=None, description="Windows ending at or before (ISO 8601 or epoch)"),
    window: str | None = Query(
        default=None, max_length=10, description="Only windows of this length, e.g. '1h' or '1d'"
    ),
    details: bool = Query(default=True, description="false: leave out each item's details"),
    limit: int = Query(default=10_000, ge=1, le=100_000),
) -> Response:
    info = state.models.get(key.project, model)
    length = None
    if window:
        try:
            length = parse_duration(window, "window")
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    query = MetricsSelect(
        project=key.project,
        model=info.name,
        detectors=split_values(detector),
        metrics=split_values(metric),
        features=split_values(feature),
        versions=split_values(version),
        slice=slice,
        status=status,
        start=_time(start, "start"),
        end=_time(end, "end"),
        window=length,
        details=details,
        limit=limit,
    )
    items, truncated = read_items(state.runner.metrics, query)
    return Response(encode(items, truncated), media_type="application/json")
