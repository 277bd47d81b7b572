"""The dashboard's client of the REST API: one pooled connection, the key, short-lived caches.

Reads are cached for `CACHE_SECONDS` keyed by base URL, a fingerprint of the key, path and
parameters, so the reruns Streamlit does on every click cost nothing, while a page opened a
minute later sees new windows. Writes (acknowledge, approve, reject, retry) empty the cache
so the next render shows their effect. The key never becomes part of a cache key or a
repr: only its SHA-256 fingerprint does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pandas as pd
import streamlit as st

from driftline.dashboard.launch import KEY_ENV, URL_ENV

CACHE_SECONDS = 30

Params = tuple[tuple[str, str], ...]
Row = dict[str, Any]
MAX_ROWS = 100_000  # the API's largest page: 90 days of hourly windows for a family fit in it
METRIC_COLUMNS = [
    "window_start",
    "window_end",
    "version",
    "detector",
    "metric",
    "feature",
    "slice",
    "value",
    "threshold",
    "alert",
    "sample_size",
    "status",
    "details",
]


class ApiError(Exception):
    """The API refused or could not be reached; `status` is 0 when no answer came."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


def _param(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def params_of(values: Mapping[str, object]) -> Params:
    """Sorted, stringified, without Nones: equal queries make equal cache keys."""
    return tuple(sorted((k, _param(v)) for k, v in values.items() if v is not None))


@st.cache_resource(show_spinner=False)
def _http(base: str) -> httpx.Client:
    """One keep-alive pool per API for the whole server process (the key goes per request)."""
    return httpx.Client(
        base_url=base,
        timeout=httpx.Timeout(60.0, connect=5.0),
        limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
    )


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("message") or body
        return detail if isinstance(detail, str) else str(detail)[:500]
    return str(body)[:500]


def _request(base: str, key: str, method: str, path: str, params: Params = (), body: Any = None) -> Any:
    try:
        response = _http(base).request(
            method, path, params=params, json=body, headers={"Authorization": f"Bearer {key}"}
        )
    except httpx.HTTPError as exc:
        raise ApiError(0, f"cannot reach the API at {base}: {exc}") from exc
    if response.status_code >= 400:
        raise ApiError(response.status_code, _detail(response))
    if "json" in response.headers.get("content-type", ""):
        return orjson.loads(response.content)
    return response.text


def metrics_frame(items: list[Row]) -> pd.DataFrame:
    """Metric rows as a frame: UTC timestamps, float values (NaN for null), details as dicts."""
    df = (
        pd.DataFrame.from_records(items, columns=METRIC_COLUMNS)
        if items
        else pd.DataFrame(columns=METRIC_COLUMNS)
    )
    df["window_start"] = pd.to_datetime(df["window_start"], utc=True, format="ISO8601")
    df["window_end"] = pd.to_datetime(df["window_end"], utc=True, format="ISO8601")
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    df["threshold"] = pd.to_numeric(df["threshold"], errors="coerce").astype(float)
    df["alert"] = df["alert"].fillna(False).astype(bool)
    df["sample_size"] = pd.to_numeric(df["sample_size"], errors="coerce").fillna(0).astype("int64")
    return df


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False, max_entries=512)
def _cached_get(base: str, key_id: str, path: str, params: Params, _key: str) -> Any:
    # `_key` is left out of the cache key by Streamlit (leading underscore); `key_id` stands for it
    return _request(base, _key, "GET", path, params)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False, max_entries=256)
def _cached_frame(base: str, key_id: str, path: str, params: Params, _key: str) -> pd.DataFrame:
    """Frames are cached instead of JSON: a cache hit unpickles columns, not thousands of dicts."""
    body = _request(base, _key, "GET", path, params)
    df = metrics_frame(body.get("items") or [])
    df.attrs["truncated"] = bool(body.get("truncated"))
    return df


def clear_cache() -> None:
    _cached_get.clear()
    _cached_frame.clear()


@dataclass(frozen=True)
class Api:
    """A base URL and a key; every read of every page goes through `get`."""

    base: str
    key: str = field(repr=False)

    @classmethod
    def from_env(cls) -> Api:
        """The launcher passes both through the environment, never on a command line."""
        base = os.environ.get(URL_ENV, "").strip()
        key = os.environ.get(KEY_ENV, "").strip()
        if not base or not key:
            raise ApiError(0, f"set {URL_ENV} and {KEY_ENV} (driftline dashboard --api URL --key KEY)")
        return cls(base.rstrip("/"), key)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()[:16]

    def get(self, path: str, **params: object) -> Any:
        return _cached_get(self.base, self.key_id, path, params_of(params), self.key)

    def get_fresh(self, path: str, **params: object) -> Any:
        """Uncached: for documents built on demand (the Evidently report)."""
        return _request(self.base, self.key, "GET", path, params_of(params))

    def post(self, path: str, body: Any = None) -> Any:
        try:
            return _request(self.base, self.key, "POST", path, (), body)
        finally:
            clear_cache()

    # -- what the pages read --------------------------------------------------------------

    def overview(self) -> Row:
        got: Row = self.get("/v1/overview")
        return got

    def metrics(self, model: str, *, details: bool = False, **filters: object) -> pd.DataFrame:
        """GET /v1/models/{model}/metrics as a frame; `details` is off unless a page shows them.

        `attrs["truncated"]` says the API had more rows than the largest page it returns.
        """
        filters.setdefault("limit", MAX_ROWS)
        params = params_of({"details": details, **filters})
        return _cached_frame(self.base, self.key_id, f"/v1/models/{model}/metrics", params, self.key)

    def distributions(self, model: str, **params: object) -> Row:
        got: Row = self.get(f"/v1/models/{model}/distributions", **params)
        return got

    def readiness(self, model: str, version: str) -> Row:
        got: Row = self.get(f"/v1/models/{model}/versions/{version}/readiness")
        return got

    def report(self, model: str, start: str, end: str, version: str | None = None) -> str:
        return str(self.get_fresh(f"/v1/models/{model}/report", start=start, end=end, version=version))

    def alerts(self, **params: object) -> list[Row]:
        got: list[Row] = self.get("/v1/alerts", **params)
        return got

    def triggers(self, **params: object) -> list[Row]:
        got: list[Row] = self.get("/v1/triggers", **params)
        return got

    def dead_letters(self) -> list[Row]:
        got: list[Row] = self.get("/v1/outbox", state="dead")
        return got

    def ack(self, alert_id: int) -> Row:
        got: Row = self.post(f"/v1/alerts/{alert_id}/ack")
        return got

    def decide(self, trigger_id: int, decision: str, note: str | None = None) -> Row:
        """Approve or reject; the API records which key acted."""
        if decision not in ("approve", "reject"):
            raise ValueError(f"unknown decision {decision!r}")
        got: Row = self.post(f"/v1/triggers/{trigger_id}/{decision}", {"note": note} if note else None)
        return got

    def retry(self, item_id: int) -> Row:
        got: Row = self.post(f"/v1/outbox/{item_id}/retry")
        return got
