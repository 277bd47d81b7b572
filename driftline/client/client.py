"""`Driftline`: the SDK object a serving system creates once and shares between threads."""

from __future__ import annotations

import atexit
import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, Self, TypedDict
from urllib.parse import quote

import httpx
import orjson

from driftline.client import _http, _records, _tables
from driftline.client._records import InvalidRecord, Kind
from driftline.client._transport import INVALID, ClientStats, Transport
from driftline.client.errors import DriftlineAPIError

log = logging.getLogger("driftline.client")

Role = Literal["champion", "challenger", "shadow", "canary"]
PARQUET = "application/vnd.apache.parquet"


class IngestResult(TypedDict):
    accepted: int
    duplicates: int
    violations: int
    violations_by_field: dict[str, dict[str, int]]


class ReferenceResult(TypedDict):
    version: str
    rows: int
    violations: int
    violations_by_field: dict[str, dict[str, int]]


def _dump_model(value: Any) -> Any:
    """A pydantic object (ModelSchema, FeatureSpec) as JSON-ready data; anything else as is."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json", exclude_none=True) if callable(dump) else value


class Driftline:
    """Logs predictions, labels and feedback without ever blocking or failing the caller.

    The `log_*` methods validate and serialise the record, append it to a bounded
    in-memory queue and return at once: True if queued, False if dropped (the reason is
    counted in `stats()`). A daemon thread sends batches and retries through outages;
    `close()` (also run at interpreter exit) flushes what is left.

    The admin helpers (`register_model`, `upload_reference`, ...) are for pipelines:
    they block, retry a few times when the server is unavailable, and raise
    `DriftlineAPIError` when it refuses.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        model: str | None = None,
        version: str | None = None,
        max_queue: int = 10_000,
        max_queue_bytes: int = 64 * 1024 * 1024,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        timeout: float = 10.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 300.0,
        min_probe_interval: float = 1.0,
        shutdown_timeout: float = 2.0,
        headers: dict[str, str] | None = None,
        verify: bool | str = True,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if not api_key:
            raise ValueError("api_key is required")
        if max_queue < 1 or batch_size < 1 or max_queue_bytes < 1:
            raise ValueError("max_queue, max_queue_bytes and batch_size must be positive")
        if min(flush_interval, timeout, backoff_base, max_backoff) <= 0 or max_retries < 0:
            raise ValueError("intervals and timeouts must be positive, max_retries at least 0")
        self.url = url.rstrip("/")
        self.model = model
        self.version = version
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.shutdown_timeout = shutdown_timeout
        self._api_key = api_key
        self._headers = headers
        self._verify = verify
        self._transport = Transport(
            self.url,
            api_key,
            max_queue=max_queue,
            max_queue_bytes=max_queue_bytes,
            batch_size=batch_size,
            flush_interval=flush_interval,
            timeout=timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
            max_backoff=max_backoff,
            max_retry_after=max_retry_after,
            min_probe_interval=min_probe_interval,
            headers=headers,
            verify=verify,
        )
        self._admin: httpx.Client | None = None
        self._admin_lock = threading.Lock()
        self._rng = random.Random()  # noqa: S311 (jitter, not secrets)
        self._closed = False
        atexit.register(self._at_exit)

    def __repr__(self) -> str:
        return f"Driftline(url={self.url!r}, model={self.model!r})"

    # -- logging: non-blocking, never raises ---------------------------------------------

    def log_prediction(
        self,
        request_id: str,
        *,
        model: str | None = None,
        version: str | None = None,
        features: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        prediction: Any = None,
        score: float | None = None,
        scores: Mapping[str, float] | None = None,
        latency_ms: float | None = None,
        timings: Mapping[str, float] | None = None,
        status: str = "ok",
        error: str | None = None,
        timestamp: float | str | Any = None,
    ) -> bool:
        """Queue one prediction; False when it was dropped (see `stats()["dropped"]`)."""
        try:
            payload = _records.prediction(
                request_id,
                version=self.version if version is None else version,
                features=features,
                metadata=metadata,
                prediction=prediction,
                score=score,
                scores=scores,
                latency_ms=latency_ms,
                timings=timings,
                status=status,
                error=error,
                timestamp=timestamp,
            )
            return self._submit("predictions", model, payload)
        except Exception as exc:
            return self._invalid(exc)

    def log_label(
        self, request_id: str, label: Any, *, model: str | None = None, timestamp: float | str | Any = None
    ) -> bool:
        """Queue a ground-truth label; it may arrive before or long after its prediction."""
        try:
            return self._submit("labels", model, _records.label(request_id, label, timestamp=timestamp))
        except Exception as exc:
            return self._invalid(exc)

    def log_labels(
        self, records: Iterable[Mapping[str, Any] | tuple[Any, ...]], *, model: str | None = None
    ) -> int:
        """Queue many labels: mappings with request_id, label (and timestamp), or
        (request_id, label[, timestamp]) tuples. Returns how many were queued."""
        queued = 0
        try:
            for record in records:
                if isinstance(record, Mapping):
                    ok = self.log_label(
                        record.get("request_id"),  # type: ignore[arg-type]
                        record.get("label"),
                        model=record.get("model", model),
                        timestamp=record.get("timestamp"),
                    )
                elif isinstance(record, tuple) and len(record) in (2, 3):
                    ok = self.log_label(
                        record[0], record[1], model=model, timestamp=record[2] if len(record) == 3 else None
                    )
                else:
                    ok = self._invalid(InvalidRecord("a label is a mapping or a (request_id, label) tuple"))
                queued += ok
        except Exception as exc:  # a failing iterator: keep what was queued
            self._invalid(exc)
        return queued

    def log_feedback(
        self,
        request_id: str,
        outcome: str,
        *,
        model: str | None = None,
        reviewer: str | None = None,
        label: Any = None,
        comment: str | None = None,
        timestamp: float | str | Any = None,
    ) -> bool:
        """Queue a human review outcome (accepted, overridden, ...) of a prediction."""
        try:
            payload = _records.feedback(
                request_id, outcome, reviewer=reviewer, label=label, comment=comment, timestamp=timestamp
            )
            return self._submit("feedback", model, payload)
        except Exception as exc:
            return self._invalid(exc)

    def _submit(self, kind: Kind, model: str | None, payload: bytes) -> bool:
        name = self.model if model is None else model
        if not isinstance(name, str) or not name:
            raise InvalidRecord("no model: pass model= here or to Driftline()")
        return self._transport.submit(kind, name, payload)

    def _invalid(self, exc: Exception) -> bool:
        with contextlib.suppress(Exception):
            self._transport.drop(INVALID, 1, str(exc) if isinstance(exc, InvalidRecord) else repr(exc))
        return False

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every row logged so far is delivered or dropped; False on timeout."""
        return self._transport.flush(timeout)

    def stats(self) -> ClientStats:
        """Rows queued (or in flight), sent, dropped by reason, retries and the last error."""
        return self._transport.stats()

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to `timeout`, default `shutdown_timeout`), then stop; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        self._transport.close(self.shutdown_timeout if timeout is None else timeout)
        with self._admin_lock:
            if self._admin is not None:
                self._admin.close()
                self._admin = None

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):  # at exit there is no one left to tell
            self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- admin helpers: blocking, raise DriftlineAPIError --------------------------------

    def register_model(self, schema: Any) -> dict[str, Any]:
        """Register a model (a ModelSchema or its dict); registering it again is harmless."""
        return self._json("POST", "/v1/models", json=_dump_model(schema))

    def register_version(
        self,
        model: str,
        version: str,
        *,
        role: Role = "champion",
        approval: str | None = None,
        data_version: str | None = None,
        training_config_uri: str | None = None,
        eval_report_uri: str | None = None,
        features: list[Any] | None = None,
    ) -> dict[str, Any]:
        """Register a version with its deployment role and lineage (and any new features)."""
        body: dict[str, Any] = {"version": version, "role": role}
        optional = {
            "approval": approval,
            "data_version": data_version,
            "training_config_uri": training_config_uri,
            "eval_report_uri": eval_report_uri,
            "features": [_dump_model(f) for f in features] if features is not None else None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return self._json("POST", f"/v1/models/{_seg(model)}/versions", json=body)

    def update_version(
        self,
        model: str,
        version: str,
        *,
        role: Role | None = None,
        approval: str | None = None,
        data_version: str | None = None,
        training_config_uri: str | None = None,
        eval_report_uri: str | None = None,
    ) -> dict[str, Any]:
        """Promote or demote a version, record its approval or add lineage; None keeps a value."""
        given = {
            "role": role,
            "approval": approval,
            "data_version": data_version,
            "training_config_uri": training_config_uri,
            "eval_report_uri": eval_report_uri,
        }
        body = {k: v for k, v in given.items() if v is not None}
        return self._json("PATCH", f"/v1/models/{_seg(model)}/versions/{_seg(version)}", json=body)

    def upload_reference(self, model: str, version: str, data: Any) -> ReferenceResult:
        """Replace a version's reference data with a DataFrame or Arrow table (sent as Parquet).

        Columns are flat: features and metadata by name, `prediction`, `score`, `label`,
        and multiclass scores as `score_<class>`; struct columns `features`, `metadata`
        and `scores` are flattened into that layout first.
        """
        body = _tables.to_parquet(_tables.to_arrow(data))
        path = f"/v1/models/{_seg(model)}/versions/{_seg(version)}/reference"
        result: ReferenceResult = self._json(
            "PUT", path, content=body, headers={"Content-Type": PARQUET}, timeout=max(self.timeout, 120.0)
        )  # type: ignore[assignment]
        return result

    def ingest_table(
        self, model: str, table: Any, *, kind: Kind = "predictions", chunk_rows: int = 100_000
    ) -> IngestResult:
        """Send a table of predictions (or labels, feedback) as Parquet, in chunks; blocking."""
        if kind not in _records.KINDS:
            raise ValueError(f"kind must be one of {_records.KINDS}, not {kind!r}")
        arrow = _tables.to_arrow(table)
        total = IngestResult(accepted=0, duplicates=0, violations=0, violations_by_field={})
        for offset in range(0, max(arrow.num_rows, 1), max(chunk_rows, 1)):
            body = _tables.to_parquet(arrow.slice(offset, chunk_rows))
            got = self._json(
                "POST",
                f"/v1/{kind}",
                params={"model": model},
                content=body,
                headers={"Content-Type": PARQUET},
                timeout=max(self.timeout, 120.0),
            )
            total["accepted"] += int(got.get("accepted", 0))
            total["duplicates"] += int(got.get("duplicates", 0))
            total["violations"] += int(got.get("violations", 0))
            for field, reasons in (got.get("violations_by_field") or {}).items():
                merged = total["violations_by_field"].setdefault(field, {})
                for reason, n in reasons.items():
                    merged[reason] = merged.get(reason, 0) + int(n)
        return total

    def server_flush(self, timeout: float = 30.0) -> bool:
        """Ask the server to move its spool into the store; True once it is drained."""
        got = self._json("POST", "/v1/flush", params={"timeout": timeout}, timeout=timeout + self.timeout)
        return bool(got.get("drained"))

    def get_model(self, name: str) -> dict[str, Any]:
        """A model's schema, versions and stored counts."""
        return self._json("GET", f"/v1/models/{_seg(name)}")

    def list_models(self) -> list[dict[str, Any]]:
        items = self._json("GET", "/v1/models").get("items", [])
        return list(items)

    def get_prediction(self, model: str, request_id: str) -> dict[str, Any]:
        """A stored prediction with its label and feedback (404 while it is still on its way)."""
        return self._json("GET", f"/v1/models/{_seg(model)}/predictions/{_seg(request_id)}")

    def _client(self) -> httpx.Client:
        with self._admin_lock:
            if self._admin is None:
                self._admin = httpx.Client(
                    base_url=self.url,
                    headers=_http.base_headers(self._api_key, self._headers),
                    timeout=self.timeout,
                    verify=self._verify,
                )
            return self._admin

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, **kwargs)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise DriftlineAPIError(response.status_code, f"the response is not JSON: {exc}") from exc
        return body if isinstance(body, dict) else {"items": body}

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, retried (it is idempotent) while the server is down or overloaded."""
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._client().request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                if last:
                    raise DriftlineAPIError(None, f"cannot reach {self.url}: {exc!r}") from exc
                time.sleep(_http.backoff(attempt + 1, self.backoff_base, self.max_backoff, self._rng))
                continue
            status = response.status_code
            if status in _http.RETRY_STATUSES and not last:
                wait = _http.retry_after(response.headers.get("retry-after"))
                if wait is None:
                    wait = _http.backoff(attempt + 1, self.backoff_base, self.max_backoff, self._rng)
                time.sleep(min(wait, self.max_retry_after))
                continue
            if status >= 400:
                detail, errors = _http.error_parts(response)
                raise DriftlineAPIError(
                    status, detail, errors=errors, request_id=response.headers.get("x-request-id")
                )
            return response
        raise AssertionError("unreachable")  # pragma: no cover


def _seg(value: str) -> str:
    """One URL path segment (request ids may hold any character)."""
    return quote(str(value), safe="")
