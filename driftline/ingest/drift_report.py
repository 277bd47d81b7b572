"""Evidently's data-drift report for one window, for users who already read Evidently reports.

Evidently works on raw rows, so it gets a bounded, deterministic sample: at most `rows`
of the window's predictions and of the reference, chosen by a hash of the request id (the
same request always falls in or out, so a report is reproducible and a re-run of the same
window is the same report). Only stored feature columns go in: `pii: drop` features were
never stored and `pii: hash` ones are stored hashed, so a raw value cannot reach the page.
Building one takes seconds and memory in proportion to `rows`, so a few at a time run,
each in a worker thread.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from driftline.errors import NotFound, Unavailable
from driftline.ingest.model_facts import pick_version, reference_for, reference_rows
from driftline.ingest.state import AppState
from driftline.schema import FeatureKind
from driftline.storage.events import Kind
from driftline.storage.events.tables import FEATURE_PREFIX
from driftline.storage.meta.records import ModelInfo

if TYPE_CHECKING:
    import pandas as pd

MAX_ROWS = 50_000
CONCURRENT = 2
WAIT_SECONDS = 30.0
_slots = threading.BoundedSemaphore(CONCURRENT)


def _frame(columns: dict[str, Any], kinds: dict[str, FeatureKind]) -> pd.DataFrame:
    import pandas as pd

    data = {}
    for name, kind in kinds.items():
        values = columns[FEATURE_PREFIX + name]
        if kind is FeatureKind.BOOLEAN:
            # a boolean is a category to Evidently; NaN stays missing
            values = pd.Series(values).map({0: "false", 1: "true"})
        data[name] = values
    return pd.DataFrame(data)


def sample(
    state: AppState, info: ModelInfo, version: str, start: int, end: int, ref_version: str, rows: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, FeatureKind]]:
    """(current, reference, kinds): stored features of at most `rows` rows each, by request-id hash."""
    kinds = {f.name: f.kind for f in info.schema.features if f.stored}
    select = ", ".join(f"`{FEATURE_PREFIX}{name}`" for name in kinds)
    names = state.events.names(info.project, info.name)
    engine = state.events.engine
    current = engine.query_columns(
        f"SELECT {select} FROM {names(Kind.PREDICTIONS)} WHERE ts >= toDateTime(%(lo)s, 'UTC') "
        "AND ts < toDateTime(%(hi)s, 'UTC') AND version = %(v)s "
        "ORDER BY cityHash64(request_id), request_id LIMIT %(n)s",
        {"lo": start, "hi": end, "v": version, "n": rows},
    )
    reference = engine.query_columns(
        f"SELECT {select} FROM {names(Kind.REFERENCE)} WHERE version = %(v)s "
        "ORDER BY cityHash64(request_id, row), row LIMIT %(n)s",
        {"v": ref_version, "n": rows},
    )
    return _frame(current, kinds), _frame(reference, kinds), kinds


def render(current: pd.DataFrame, reference: pd.DataFrame, kinds: dict[str, FeatureKind]) -> str:
    """Evidently's Report with the DataDriftPreset, as one self-contained HTML page."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric = [n for n, k in kinds.items() if k is FeatureKind.NUMERIC]
    categorical = [n for n, k in kinds.items() if k is not FeatureKind.NUMERIC]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    return str(snapshot.get_html_str(as_iframe=False))


def build(state: AppState, info: ModelInfo, version: str | None, start: int, end: int, rows: int) -> str:
    serving = pick_version(info, version)
    have = reference_rows(state.events, info.project, info.name)
    ref_version = reference_for(info, serving.version, set(have))
    if ref_version is None:
        raise NotFound(f"model {info.name!r} has no reference data: upload one for a version")
    if not _slots.acquire(timeout=WAIT_SECONDS):
        raise Unavailable(f"{CONCURRENT} reports are being built; try again shortly", retry_after=10)
    try:
        current, reference, kinds = sample(state, info, serving.version, start, end, ref_version, rows)
        if current.empty:
            raise NotFound(
                f"no predictions of version {serving.version!r} of model {info.name!r} in the window"
            )
        # Evidently refuses a column without values on either side (a feature a newer version added)
        kinds = {n: k for n, k in kinds.items() if current[n].notna().any() and reference[n].notna().any()}
        if not kinds:
            raise NotFound("no feature has values both in the window and in the reference")
        return render(current[list(kinds)], reference[list(kinds)], kinds)
    finally:
        _slots.release()
