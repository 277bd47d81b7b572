"""HTTP details shared by the background sender and the blocking admin helpers."""

from __future__ import annotations

import math
import random
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

import driftline

USER_AGENT = f"driftline-python/{driftline.__version__}"

# Answers that mean "not now" rather than "never": the server (or a proxy in front of it)
# is down, overloaded or asks us to slow down. Rows refused this way stay queued.
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(seconds, 0.0)


def backoff(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: many clients recovering at once do not retry in step."""
    delay = min(cap, base * 2.0 ** max(failures - 1, 0))
    return delay * rng.uniform(0.5, 1.0)


def error_parts(response: httpx.Response) -> tuple[str, list[dict[str, Any]]]:
    """The server's `detail` and per-row `errors` (the API's error shape), or the raw text."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        text = response.text.strip()
        return (text[:500] or response.reason_phrase or f"HTTP {response.status_code}"), []
    if not isinstance(body, dict):
        return str(body)[:500], []
    detail = body.get("detail")
    if not isinstance(detail, str):
        detail = orjson.dumps(detail).decode() if detail is not None else f"HTTP {response.status_code}"
    errors = body.get("errors")
    rows = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    return detail, rows


def base_headers(api_key: str, extra: dict[str, str] | None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}
    headers.update(extra or {})
    return headers
