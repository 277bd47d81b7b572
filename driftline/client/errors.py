"""The one exception the SDK raises, and only from its blocking admin helpers."""

from __future__ import annotations

from typing import Any


class DriftlineAPIError(Exception):
    """The server refused a request, or could not be reached (`status` is None then).

    `detail` is the server's message; `errors` its per-row list when it sent one, so a
    pipeline can report exactly which rows of an upload were malformed.
    """

    def __init__(
        self,
        status: int | None,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.request_id = request_id
        where = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"{where}: {detail}")
