"""Ingest as the routers call it: body in, durable rows and a count out.

Kept apart from the routers so the same path serves HTTP, the CLI's file ingest and
the benchmarks.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from driftline.errors import DriftlineError, InvalidInput, PayloadTooLarge, StoreError
from driftline.ingest import json_arrow
from driftline.ingest.api_models import IngestResult, ReferenceResult
from driftline.ingest.bodies import parse_json
from driftline.ingest.columns import RowErrors
from driftline.ingest.json_arrow import FIELDS
from driftline.ingest.records import (
    ArrowSource,
    Batch,
    JsonSource,
    Rows,
    Source,
    StructSource,
    build_feedback,
    build_labels,
    build_predictions,
    build_reference,
    fast_json_source,
)
from driftline.ingest.state import AppState
from driftline.schema import ModelSchema
from driftline.storage.events import Kind
from driftline.storage.meta.records import ModelInfo

log = logging.getLogger(__name__)


def split_json(payload: Any, max_rows: int) -> tuple[str, list[Any]]:
    """The model name and records of a JSON batch; 4xx when the envelope is wrong."""
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object with 'model' and 'records'")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("field 'model' is required and must be a string")
    records = payload.get("records")
    if not isinstance(records, list):
        raise InvalidInput("field 'records' is required and must be a list")
    if len(records) > max_rows:
        raise PayloadTooLarge(f"{len(records)} records in one batch; the limit is {max_rows}")
    return model, records


def ingest_json(state: AppState, project: str, kind: Kind, body: bytes, model: str | None) -> IngestResult:
    """A JSON batch: read by Arrow when it types cleanly, else parsed and checked value by value."""
    max_rows = state.settings.max_batch_rows
    name = json_arrow.leading_model(body)
    if name is not None and (model is None or model == name):
        try:
            schema = state.models.get(project, name).schema
        except DriftlineError:
            schema = None  # unknown model, or none to be had now: the checking path says which
        if schema is not None:
            result = _ingest_typed(state, project, kind, name, schema, body)
            if result is not None:
                return result
    name, parsed = split_json(parse_json(body), max_rows)
    if model is not None and model != name:
        raise InvalidInput(f"?model={model!r} and the body's model {name!r} differ")
    return ingest(state, project, kind, name, parsed)


def _ingest_typed(
    state: AppState, project: str, kind: Kind, model: str, schema: ModelSchema, body: bytes
) -> IngestResult | None:
    """A body Arrow's reader can type, read together with the bodies that arrive with it.

    None when the checking path must read it. Bodies of one model, kind and record type
    that arrive while a group is being done are read in one pass, then checked and
    spooled as one group (see `batching`).
    """
    rec = json_arrow.record_type(body, schema, kind)
    if rec is None:
        return None
    result = state.bodies.submit(
        (project, model, kind, rec),
        body,
        len(body),
        lambda group: _ingest_lines(state, project, kind, model, rec, group),
    )
    if result is not None:
        return _logged(result, project, kind, model)
    # the group declined this body: read on its own, it is checked on its own
    records = json_arrow.read_records(body, schema, kind, model, state.settings.max_batch_rows)
    return None if records is None else ingest(state, project, kind, model, records)


def _ingest_lines(
    state: AppState, project: str, kind: Kind, model: str, rec: pa.StructType, bodies: Sequence[bytes]
) -> list[IngestResult | BaseException | None]:
    """One result per body of a group, or None for each when the group must be done body by body."""
    read = json_arrow.read_lines(bodies, rec, model, state.settings.max_batch_rows)
    if read is None:
        return [None] * len(bodies)
    records, sizes = read
    if len(bodies) > 1 and len(records) >= state.settings.direct_insert_min_rows:
        return [None] * len(bodies)  # a group is always spooled: each body takes its own way
    try:
        return list(_accept(state, project, kind, model, records, sizes))
    except DriftlineError as exc:
        if exc.status_code >= 500 or len(bodies) == 1:
            raise
        # a malformed body (or a group too big for the spool): each on its own, so every
        # request gets exactly its own errors and nothing of a malformed one is stored
        return [None] * len(bodies)


def _build(state: AppState, kind: Kind, info: ModelInfo, src: Source, errors: RowErrors, now: float) -> Batch:
    settings = state.settings
    if kind is Kind.PREDICTIONS:
        versions = [v.version for v in info.versions]
        return build_predictions(
            info.schema,
            versions,
            src,
            errors,
            now=now,
            max_future=settings.max_future_seconds,
            hasher=state.hasher,
        )
    if kind is Kind.LABELS:
        return build_labels(info.schema, src, errors, now=now, max_future=settings.max_future_seconds)
    return build_feedback(info.schema, src, errors, now=now, max_future=settings.max_future_seconds)


def _keys(kind: Kind, table: pa.Table) -> list[str]:
    ids = table.column("request_id").cast(pa.string()).fill_null("")
    other = {Kind.PREDICTIONS: "version", Kind.LABELS: "label"}.get(kind, "reviewer")
    second = table.column(other).cast(pa.string()).fill_null("")
    parts = [ids, second]
    if kind is Kind.FEEDBACK:
        parts.append(table.column("outcome"))
    return list(pc.binary_join_element_wise(*parts, "\x00").to_pylist())


def ingest(state: AppState, project: str, kind: Kind, model: str, rows: Rows) -> IngestResult:
    """Check a batch, drop what this process knows to be a retry, make the rest durable.

    Small batches that arrive together are checked and spooled as one group (see
    `batching`); each still gets its own result, and its own errors when malformed.
    """
    n = rows.num_rows if isinstance(rows, pa.Table) else len(rows)
    if 0 < n < state.settings.direct_insert_min_rows:
        key = (project, model, kind, type(rows))
        result = state.batches.submit(
            key, rows, n, lambda items: _ingest_group(state, project, kind, model, items)
        )
    else:
        result = _accept(state, project, kind, model, rows, [n])[0]
    return _logged(result, project, kind, model)


def _logged(result: IngestResult, project: str, kind: Kind, model: str) -> IngestResult:
    log.info(
        "accepted %d %s",
        result.accepted,
        kind.value,
        extra={"project": project, "model": model, "rows": result.accepted},
    )
    return result


def _ingest_group(
    state: AppState, project: str, kind: Kind, model: str, items: Sequence[Rows]
) -> list[IngestResult | BaseException]:
    """One result per request of a group; a group with a malformed request is done request by request."""
    if len(items) > 1:
        sizes = [it.num_rows if isinstance(it, pa.Table) else len(it) for it in items]
        try:
            combined: Rows
            if isinstance(items[0], pa.Table):
                combined = pa.concat_tables(items, promote_options="default")
            elif isinstance(items[0], pa.StructArray):
                combined = pa.concat_arrays(items)
            else:
                combined = [r for it in items for r in it]
            return list(_accept(state, project, kind, model, combined, sizes))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass  # the tables do not combine: each on its own
        except DriftlineError as exc:
            if exc.status_code >= 500:
                raise
            # a malformed request (or the group is too big for the spool): each on its own, so
            # every request gets exactly its own errors and nothing of a malformed one is stored
    out: list[IngestResult | BaseException] = []
    for it in items:
        try:
            out.append(_accept(state, project, kind, model, it, [len(it)])[0])
        except Exception as exc:
            out.append(exc)
    return out


def _accept(
    state: AppState, project: str, kind: Kind, model: str, rows: Rows, sizes: list[int]
) -> list[IngestResult]:
    """Build, dedup and make durable the rows of one or more requests (`sizes` rows each, in order)."""
    now = time.time()
    info = state.models.get(project, model)
    make_source = source_for(rows, kind, info.schema)
    errors = RowErrors()
    src = make_source(errors)
    try:
        batch = _build(state, kind, info, src, errors, now)
    except InvalidInput as exc:
        if kind is not Kind.PREDICTIONS or not any(
            e["field"] == "version" for e in (exc.details or {}).get("errors", [])
        ):
            raise
        # another process may have registered the version a moment ago
        info = state.models.get(project, model, fresh=True)
        errors = RowErrors()
        batch = _build(state, kind, info, make_source(errors), errors, now)
    table = batch.table
    direct_size = table.num_rows >= state.settings.direct_insert_min_rows
    # the recent-keys courtesy is for streams of small batches; big ones get the store's exact count
    keys = [] if direct_size else _keys(kind, table)
    seen = state.recent.seen(keys)
    duplicates = int(seen.sum())
    if len(sizes) == 1:
        results = [
            IngestResult(
                accepted=0,
                duplicates=duplicates,
                violations=batch.violations,
                violations_by_field=batch.violations_by_field,
            )
        ]
    else:
        results = _split_results(table, seen, sizes, batch.violations)
    if duplicates:
        table = table.filter(pa.array(~seen))
        keys = [k for k, s in zip(keys, seen, strict=True) if not s]
    accepted = table.num_rows
    if accepted:
        direct = False
        if direct_size:
            try:
                result = state.events.insert(kind, project, info.schema, table)
                duplicates += result.duplicates
                results[0].duplicates += result.duplicates
                accepted = result.inserted
                direct = True
            except StoreError as exc:
                log.warning("direct insert failed, spooling instead: %s", exc)
        if not direct:
            state.spool.append(project, model, kind.value, table)
        state.recent.add(keys)
    if len(sizes) == 1:
        results[0].accepted = accepted
    state.metrics.rows.labels(kind.value).inc(accepted)
    state.metrics.duplicates.labels(kind.value).inc(duplicates)
    state.metrics.violations.inc(batch.violations)
    return results


def _split_results(
    table: pa.Table, seen: np.ndarray, sizes: list[int], violations: int
) -> list[IngestResult]:
    """Per-request counts of a group: rows by request, violations from each row's `dq` codes."""
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    codes: list[str] = []
    offsets = np.zeros(len(seen) + 1, dtype=np.int64)
    if violations:
        dq = table.column("dq").combine_chunks()
        offsets = np.asarray(dq.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        offsets = offsets - offsets[0]
        codes = dq.flatten().to_pylist()
    out = []
    for lo, hi in itertools.pairwise(bounds):
        dups = int(seen[lo:hi].sum())
        by_field: dict[str, dict[str, int]] = {}
        mine = codes[offsets[lo] : offsets[hi]]
        for code in mine:
            fld, _, reason = code.rpartition(":")
            counts = by_field.setdefault(fld, {})
            counts[reason] = counts.get(reason, 0) + 1
        out.append(
            IngestResult(
                accepted=int(hi - lo) - dups,
                duplicates=dups,
                violations=len(mine),
                violations_by_field=by_field,
            )
        )
    return out


def source_for(rows: Rows, kind: Kind, schema: ModelSchema) -> Callable[[RowErrors], Source]:
    """Arrow's one-pass conversion when every value has the expected type, else the checking path."""
    if isinstance(rows, pa.Table):
        table = rows
        return lambda errors: ArrowSource(table)
    if isinstance(rows, pa.StructArray):
        typed = StructSource(rows, None)
        return lambda errors: typed
    fast = fast_json_source(rows, schema, FIELDS[kind])

    def make(errors: RowErrors) -> Source:
        return fast if fast is not None else JsonSource(rows, errors)

    return make


def upload_reference(
    state: AppState,
    project: str,
    model: str,
    version: str,
    rows: Rows,
    fmt: str,
    key_id: int | None,
) -> ReferenceResult:
    """Replace a version's reference rows; the store must take them now (no spool)."""
    info = state.models.get(project, model)
    if info.version(version) is None:
        info = state.models.get(project, model, fresh=True)
        if info.version(version) is None:
            from driftline.errors import NotFound

            raise NotFound(f"version {version!r} of model {model!r} is not registered")
    errors = RowErrors()
    src = source_for(rows, Kind.REFERENCE, info.schema)(errors)
    batch = build_reference(info.schema, version, src, errors, now=time.time(), hasher=state.hasher)
    if batch.rows == 0:
        raise InvalidInput("the reference data has no rows")
    rows = state.events.replace_reference(project, info.schema, version, batch.table)
    # summarised before the answer: a corrected upload may keep the old one's ids and times,
    # which is all a detection run's check for a new upload looks at (a failure here is
    # answered as one, so the client sends the upload again)
    state.runner.summarizer.summarize_reference(project, info.schema, version, force=True)
    state.runner.perf.summarize_reference(project, info.schema, version, force=True)
    with state.meta.repos() as repos:
        repos.references.record_upload(project, model, version, rows, fmt, key_id=key_id)
    return ReferenceResult(
        version=version, rows=rows, violations=batch.violations, violations_by_field=batch.violations_by_field
    )


def violations_total(by_field: dict[str, dict[str, int]]) -> int:
    return int(np.sum([n for reasons in by_field.values() for n in reasons.values()])) if by_field else 0
