"""Every error the API answers, in one JSON shape (`ErrorOut`), from any layer that raises it."""

from __future__ import annotations

import logging
from typing import Any

from fastapi.responses import JSONResponse

from driftline.errors import DriftlineError, Unavailable

log = logging.getLogger("driftline.api")


def error_response(exc: DriftlineError) -> JSONResponse:
    """The answer to a DriftlineError; a 503 always says when to retry."""
    if exc.status_code >= 500:
        log.warning("%s: %s", type(exc).__name__, exc.message)
    body: dict[str, Any] = {"detail": exc.message}
    if isinstance(exc.details, dict):
        body.update({k: v for k, v in exc.details.items() if k != "detail"})
    elif exc.details is not None:
        body["details"] = exc.details
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else None
    if exc.status_code == 503 and headers is None:
        headers = {"Retry-After": "5"}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def validation_response(errors: list[dict[str, str]]) -> JSONResponse:
    """A 422 naming the first invalid parameter or field, and listing up to 50."""
    errors = errors[:50]
    first = errors[0] if errors else {"field": "", "error": "invalid request"}
    return JSONResponse(
        {"detail": f"field {first['field']!r}: {first['error']}", "errors": errors}, status_code=422
    )
