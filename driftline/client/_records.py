"""Records as the SDK queues them: checked and serialised once, when they are logged.

Serialising at log time snapshots the caller's dicts (a serving system often reuses or
mutates them after the call) and lets the queue bound its memory in bytes.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Literal

import orjson

Kind = Literal["predictions", "labels", "feedback"]
KINDS: tuple[Kind, ...] = ("predictions", "labels", "feedback")
STATUSES = ("ok", "error", "timeout")
MAX_ID = 256

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class InvalidRecord(ValueError):
    """An argument the server would refuse; the record is dropped, never raised to the caller."""


def _default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy and similar scalars
    if callable(item):
        return item()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot send a value of type {type(value).__name__}")


def dumps(record: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(record, default=_default, option=_OPTIONS)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise InvalidRecord(str(exc)) from exc


def identifier(value: Any, what: str, max_len: int = MAX_ID) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (int, uuid.UUID)) and not isinstance(value, bool):
        text = str(value)
    else:
        raise InvalidRecord(f"{what} must be a string, not {type(value).__name__}")
    if not text or len(text) > max_len:
        raise InvalidRecord(f"{what} must have 1 to {max_len} characters")
    return text


def event_time(value: Any) -> float | str:
    """Now by default: fixed when the event happens, so a retry carries the same time."""
    if value is None:
        return time.time()
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # naive = UTC
        return aware.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InvalidRecord("timestamp must be finite")
        return float(value)
    if isinstance(value, str) and value:
        return value
    raise InvalidRecord("timestamp must be epoch seconds, an ISO 8601 string or a datetime")


def _mapping(value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, Mapping):
        return dict(value)
    raise InvalidRecord(f"{what} must be a mapping, not {type(value).__name__}")


def prediction(
    request_id: Any,
    *,
    version: Any,
    features: Any,
    metadata: Any,
    prediction: Any,
    score: Any,
    scores: Any,
    latency_ms: Any,
    timings: Any,
    status: Any,
    error: Any,
    timestamp: Any,
) -> bytes:
    record: dict[str, Any] = {
        "request_id": identifier(request_id, "request_id"),
        "version": identifier(version, "version", 64),
        "timestamp": event_time(timestamp),
        "features": _mapping(features, "features") or {},
    }
    meta = _mapping(metadata, "metadata")
    if meta:
        record["metadata"] = meta
    if prediction is not None:
        record["prediction"] = prediction
    if score is not None:
        record["score"] = score
    per_class = _mapping(scores, "scores")
    if per_class is not None:
        record["scores"] = per_class
    if latency_ms is not None:
        record["latency_ms"] = latency_ms
    stages = _mapping(timings, "timings")
    if stages:
        record["timings"] = stages
    if status != "ok":
        if status not in STATUSES:
            raise InvalidRecord(f"status must be one of {list(STATUSES)}, not {status!r}")
        record["status"] = status
    if error is not None:
        record["error"] = str(error)
    return dumps(record)


def label(request_id: Any, value: Any, *, timestamp: Any) -> bytes:
    if value is None:
        raise InvalidRecord("label must not be None")
    return dumps(
        {
            "request_id": identifier(request_id, "request_id"),
            "label": value,
            "timestamp": event_time(timestamp),
        }
    )


def feedback(
    request_id: Any, outcome: Any, *, reviewer: Any, label: Any, comment: Any, timestamp: Any
) -> bytes:
    record: dict[str, Any] = {
        "request_id": identifier(request_id, "request_id"),
        "outcome": identifier(outcome, "outcome", 64),
        "timestamp": event_time(timestamp),
    }
    if reviewer is not None:
        record["reviewer"] = identifier(reviewer, "reviewer")
    if label is not None:
        record["label"] = label
    if comment is not None:
        record["comment"] = str(comment)
    return dumps(record)


def batch_body(model: str, payloads: list[bytes]) -> bytes:
    """A JSON batch from records serialised earlier, without parsing them again."""
    return b'{"model":' + orjson.dumps(model) + b',"records":[' + b",".join(payloads) + b"]}"
