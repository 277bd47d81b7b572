"""Request bodies: size limits first, then JSON or a flat Parquet, Arrow or CSV table."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyarrow import ipc
from starlette.requests import ClientDisconnect, Request

from driftline.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from driftline.schema import FeatureKind, ModelSchema, Task

PARQUET = ("application/vnd.apache.parquet", "application/x-parquet", "application/parquet")
ARROW = ("application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.file", "application/x-arrow")
CSV = ("text/csv", "application/csv")
JSON = ("application/json", "")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(
    request: Request, limit: int, *, timeout: float = 60.0, min_rate: float = 32 * 1024
) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `limit`.

    A client that trickles its body (slowloris) holds a connection and a worker: the body
    must arrive within `timeout` seconds, stretched for large bodies to allow `min_rate`
    bytes per second, or the request ends with 408.
    """
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError as exc:
            raise BadRequest("Content-Length is not a number") from exc
        if declared > limit:
            raise PayloadTooLarge(f"the body has {declared} bytes; the limit is {limit}")
    expected = int(length) if length is not None else 0
    budget = max(timeout, expected / min_rate)
    chunks: list[bytes] = []
    total = 0

    async def receive() -> None:
        nonlocal total
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
            chunks.append(chunk)

    try:
        async with asyncio.timeout(budget):  # no task of its own, unlike wait_for
            await receive()
    except TimeoutError as exc:
        raise RequestTimeout(
            f"the body did not arrive within {budget:.0f} s ({total} bytes received)"
        ) from exc
    except ClientDisconnect as exc:
        raise BadRequest("the client went away before sending the whole body") from exc
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body:
        raise BadRequest("the body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc


def _csv_types(schema: ModelSchema) -> dict[str, pa.DataType]:
    """Columns CSV must not guess: ids and classes stay text even when they look like numbers."""
    types: dict[str, pa.DataType] = {"request_id": pa.string(), "version": pa.string(), "error": pa.string()}
    for name, kind in [(f.name, f.kind) for f in schema.features] + [
        (m.name, m.kind) for m in schema.metadata
    ]:
        if kind is FeatureKind.CATEGORICAL:
            types[name] = pa.string()
    if schema.task is not Task.REGRESSION:
        types["prediction"] = pa.string()
        types["label"] = pa.string()
    return types


def parse_table(body: bytes, media: str, schema: ModelSchema) -> pa.Table:
    """A flat table from a Parquet, Arrow IPC or CSV body; 400 when it cannot be read."""
    if not body:
        raise BadRequest("the body is empty")
    try:
        if media in PARQUET:
            return pq.read_table(pa.BufferReader(body))
        if media in ARROW:
            try:
                return ipc.open_stream(pa.BufferReader(body)).read_all()
            except pa.ArrowInvalid:
                return ipc.open_file(pa.BufferReader(body)).read_all()
        if media in CSV:
            return pacsv.read_csv(
                pa.BufferReader(body),
                convert_options=pacsv.ConvertOptions(
                    column_types=_csv_types(schema), strings_can_be_null=True
                ),
            )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
        raise BadRequest(f"cannot read the {media} body: {exc}") from exc
    raise UnsupportedMediaType(
        f"unsupported Content-Type {media!r}; send application/json, {PARQUET[0]}, {ARROW[0]} or text/csv"
    )


def reference_format(media: str) -> str:
    if media in PARQUET:
        return "parquet"
    if media in ARROW:
        return "arrow"
    if media in CSV:
        return "csv"
    return "json"
