"""Fixtures of alerting tests: the app on both stacks with delivery backoff in milliseconds,
and helpers that write real MetricRows through the metrics table and run the evaluation hook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from driftline.config import Settings
from driftline.detectors.base import MetricRow
from driftline.detectors.runner import RunResult
from driftline.ingest.app import create_app
from driftline.ingest.state import AppState
from tests.conftest import Api
from tests.support.models import FRAUD

DAY = 86_400
T0 = 1_780_000_000 // DAY * DAY  # a UTC midnight
PROJECT = "default"
SECRET = "whsec-0123456789abcdef-signing"
PUBLIC_URL = "https://driftline.example.com"
FAST: dict[str, Any] = {
    "alerts_poll_seconds": 0.02,
    "alerts_retry_base_seconds": 0.01,
    "alerts_retry_max_seconds": 0.05,
    "alerts_timeout_seconds": 2.0,
    "alerts_lease_seconds": 8.0,
    "alerts_max_attempts": 4,
    "public_url": PUBLIC_URL,
}


@pytest.fixture
def settings(stack: Settings) -> Settings:
    return stack.model_copy(update=FAST)


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    with Api(create_app(settings)) as client:
        yield client


def state_of(api: Api) -> AppState:
    state: AppState = api.app.state.driftline  # type: ignore[attr-defined]
    return state


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def register(api: Api, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = ok(api.post("/v1/models", json=schema or FRAUD), 201)
    return body


def channel(api: Api, name: str, url: str, *, type: str = "webhook", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "type": type, "url": url, **extra}
    if type == "webhook":
        body.setdefault("secret", SECRET)
    created: dict[str, Any] = ok(api.post("/v1/channels", json=body), 201)
    return created


def rule(api: Api, **body: Any) -> dict[str, Any]:
    created: dict[str, Any] = ok(api.post("/v1/rules", json=body), 201)
    return created


def disable_defaults(api: Api) -> None:
    for r in ok(api.get("/v1/rules")):
        if r["builtin"]:
            ok(api.patch(f"/v1/rules/{r['id']}", json={"enabled": False}))


def window(day: int) -> tuple[int, int]:
    return T0 + day * DAY, T0 + (day + 1) * DAY


def drift_row(
    day: int,
    drifted: bool,
    *,
    feature: str = "amount",
    value: float | None = None,
    version: str = "v1",
    adjusted: bool | None = None,
    metric: str = "psi",
    slice: str = "",
) -> MetricRow:
    lo, hi = window(day)
    return MetricRow(
        version=version,
        detector="feature_drift",
        detector_id="fd0123456789",
        metric=metric,
        window_start=lo,
        window_end=hi,
        value=value if value is not None else (0.31 if drifted else 0.04),
        feature=feature,
        slice=slice,
        threshold=0.2,
        alert=drifted,
        sample_size=1200,
        details={
            "method": metric,
            "statistic": value if value is not None else (0.31 if drifted else 0.04),
            "drift_adjusted": drifted if adjusted is None else adjusted,
            "threshold_on": "statistic",
        },
    )


def perf_row(
    day: int, value: float, *, limit: float = 0.85, version: str = "v1", metric: str = "accuracy"
) -> MetricRow:
    lo, hi = window(day)
    return MetricRow(
        version=version,
        detector="performance",
        detector_id="pf0123456789",
        metric=metric,
        window_start=lo,
        window_end=hi,
        value=value,
        threshold=limit,
        alert=value < limit,
        sample_size=800,
        details={"labelled": 800, "direction": "higher_is_better"},
    )


def coverage_row(day: int, labelled: int, rows: int, version: str = "v1") -> MetricRow:
    lo, hi = window(day)
    return MetricRow(
        version=version,
        detector="performance",
        detector_id="pf0123456789",
        metric="label_coverage",
        window_start=lo,
        window_end=hi,
        value=labelled / rows,
        sample_size=labelled,
        details={"labelled": labelled, "rows": rows},
    )


def throughput_row(day: int, rows: int, version: str = "v1") -> MetricRow:
    lo, hi = window(day)
    return MetricRow(
        version=version,
        detector="operations",
        detector_id="op0123456789",
        metric="throughput",
        window_start=lo,
        window_end=hi,
        value=rows / DAY,
        sample_size=rows,
        details={"rows": rows, "seconds": DAY},
    )


def feed(api: Api, rows: list[MetricRow], first_day: int, last_day: int, model: str = "fraud") -> Any:
    """Write a run's rows through the metrics table, then call the hook as a detector run would."""
    state = state_of(api)
    state.runner.metrics.write(PROJECT, model, rows)
    start, end = T0 + first_day * DAY, T0 + (last_day + 1) * DAY
    result = RunResult(
        start=start,
        end=end,
        step=DAY,
        windows=(end - start) // DAY,
        versions=sorted({r.version for r in rows}),
        buckets_summarised=0,
        rows_written=len(rows),
    )
    return state.alerts.after_run(PROJECT, model, result)


def outbox(api: Api, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = ok(api.get("/v1/outbox", params=params))
    return items


def wait_outbox(api: Api, check: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        items = outbox(api, limit=1000)
        if check(items):
            return items
        if time.monotonic() > deadline:
            raise AssertionError(
                f"outbox never got there: {[(i['id'], i['state'], i['attempts']) for i in items]}"
            )
        time.sleep(0.05)
