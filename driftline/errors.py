"""A small tree of errors; the API maps each branch to one HTTP status."""

from __future__ import annotations

from typing import Any


class DriftlineError(Exception):
    """Base of every error driftline raises on purpose."""

    status_code = 500

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(DriftlineError):
    """The request is malformed; nothing of it is stored."""

    status_code = 422


class BadRequest(InvalidInput):
    """The body cannot be read at all (bad JSON, wrong content type)."""

    status_code = 400


class NotFound(DriftlineError):
    status_code = 404


class Conflict(DriftlineError):
    status_code = 409


class Unauthorized(DriftlineError):
    status_code = 401


class Forbidden(DriftlineError):
    status_code = 403


class PayloadTooLarge(DriftlineError):
    status_code = 413


class UnsupportedMediaType(DriftlineError):
    status_code = 415


class RequestTimeout(BadRequest):
    """The client sent its body too slowly."""

    status_code = 408


class Unavailable(DriftlineError):
    """A store or the spool cannot take the request now; the caller retries."""

    status_code = 503

    def __init__(self, message: str, *, retry_after: int = 5, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class StoreError(DriftlineError):
    """The event or metadata store failed; the cause is chained."""

    status_code = 503
