"""Reference against current distribution of one column over a time range, from summaries only.

A numeric column is cut into equal-width bins over the two samples' combined range, and
each bin's share is read off the summary's CDF (exact value counts where the column is
counted by value, else the t-digest quantiles), so a histogram costs the same whatever
the raw volume. A categorical column shows its most common values and the rest as one.
The current side covers the hourly buckets detection has summarised.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from driftline.detectors.feature_drift import feature_columns, prediction_columns
from driftline.detectors.methods import ColumnKind, Sample, sample
from driftline.detectors.monitors import iso
from driftline.detectors.stats import Numeric
from driftline.detectors.summaries import BUCKET_SECONDS, REFERENCE_CHUNKS, Summarizer
from driftline.errors import InvalidInput, NotFound
from driftline.ingest.model_facts import pick_version, reference_for, reference_rows
from driftline.ingest.state import AppState
from driftline.schema import FeatureKind
from driftline.storage.meta.records import ModelInfo

OTHER = "(other)"
MAX_RANGE_SECONDS = 366 * 86_400
_BOOLEAN = {"0": "false", "1": "true"}


class DistributionOut(BaseModel):
    feature: str
    kind: ColumnKind
    version: str
    reference_version: str = Field(description="Whose reference: the version's own, else the champion's")
    start: str = Field(description="Whole hours: the range is widened to hour boundaries")
    end: str
    edges: list[float] | None = Field(default=None, description="Numeric: bin edges, the last bin closed")
    values: list[str] | None = Field(default=None, description=f"Categorical: top values, then {OTHER!r}")
    reference_share: list[float]
    current_share: list[float]
    reference_rows: int = Field(description="Non-null values the reference shares are of")
    current_rows: int = Field(description="Non-null values the current shares are of")


def _distribution(s: Sample) -> Numeric | None:
    if s.n == 0:
        return None
    exact = s.exact() if s.counted else None
    return exact if exact is not None else s.numeric


def numeric_shares(
    reference: Sample, current: Sample, bins: int
) -> tuple[list[float], list[float], list[float]]:
    """(edges, reference shares, current shares) over equal-width bins of the combined range."""
    dists = [d for d in (_distribution(reference), _distribution(current)) if d is not None]
    if not dists:
        return [], [], []
    lo, hi = min(d.min for d in dists), max(d.max for d in dists)
    edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.array([lo - 0.5, hi + 0.5])

    def shares(s: Sample) -> list[float]:
        d = _distribution(s)
        if d is None:
            return [0.0] * (len(edges) - 1)
        return [float(x) for x in np.clip(d.mass(edges), 0.0, 1.0)]

    return [float(e) for e in edges], shares(reference), shares(current)


def categorical_shares(
    reference: Sample, current: Sample, top: int
) -> tuple[list[str], list[float], list[float]]:
    """(values, reference shares, current shares): the `top` values by their larger share, then the rest."""
    counts: dict[str, list[float]] = {}
    for side, s in enumerate((reference, current)):
        if s.keys is None or s.counts is None or s.n == 0:
            continue
        for k, c in zip(s.keys.tolist(), s.counts.tolist(), strict=True):
            counts.setdefault(str(k), [0.0, 0.0])[side] += c / s.n
    ranked = sorted(counts.items(), key=lambda kv: (-max(kv[1]), kv[0]))
    kept, rest = ranked[:top], ranked[top:]
    values = [k for k, _ in kept]
    ref = [v[0] for _, v in kept]
    cur = [v[1] for _, v in kept]
    if rest:
        values.append(OTHER)
        ref.append(sum(v[0] for _, v in rest))
        cur.append(sum(v[1] for _, v in rest))
    return values, ref, cur


def build(
    state: AppState,
    info: ModelInfo,
    feature: str,
    version: str | None,
    start: int,
    end: int,
    bins: int,
) -> DistributionOut:
    schema = info.schema
    columns = {c.name: c.kind for c in feature_columns(schema) + prediction_columns(schema)}
    if feature not in columns:
        if any(f.name == feature and not f.stored for f in schema.features):
            raise NotFound(f"feature {feature!r} is not stored (pii: drop), so it has no distribution")
        raise NotFound(f"model {info.name!r} has no column {feature!r}; known: {sorted(columns)}")
    kind = columns[feature]
    serving = pick_version(info, version)
    lo = start // BUCKET_SECONDS * BUCKET_SECONDS
    hi = -(-end // BUCKET_SECONDS) * BUCKET_SECONDS
    if hi - lo > MAX_RANGE_SECONDS:
        raise InvalidInput("the range is longer than 366 days")
    have = reference_rows(state.events, info.project, info.name)
    ref_version = reference_for(info, serving.version, set(have))
    if ref_version is None:
        raise NotFound(f"model {info.name!r} has no reference data: upload one for a version")
    summarizer: Summarizer = state.runner.summarizer
    # a no-op once this upload is summarised; before a first detection run it makes the reference readable
    summarizer.summarize_reference(info.project, schema, ref_version)
    ref = summarizer.read(
        info.project,
        schema,
        kind="r",
        start=0,
        end=REFERENCE_CHUNKS,
        step=REFERENCE_CHUNKS,
        versions=[ref_version],
        features=[feature],
    ).get(ref_version)
    cur = summarizer.read(
        info.project,
        schema,
        kind="p",
        start=lo,
        end=hi,
        step=hi - lo,
        versions=[serving.version],
        features=[feature],
    ).get(serving.version)
    ref_sample = sample(ref, 0, feature, kind) if ref is not None else Sample(0)
    cur_sample = sample(cur, 0, feature, kind) if cur is not None else Sample(0)
    out = DistributionOut(
        feature=feature,
        kind=kind,
        version=serving.version,
        reference_version=ref_version,
        start=iso(lo) or "",
        end=iso(hi) or "",
        reference_share=[],
        current_share=[],
        reference_rows=ref_sample.n,
        current_rows=cur_sample.n,
    )
    if kind is ColumnKind.NUMERIC:
        edges, r, c = numeric_shares(ref_sample, cur_sample, bins)
        return out.model_copy(update={"edges": edges, "reference_share": r, "current_share": c})
    values, r, c = categorical_shares(ref_sample, cur_sample, bins)
    spec = next((f for f in schema.features if f.name == feature), None)
    if spec is not None and spec.kind is FeatureKind.BOOLEAN:
        values = [_BOOLEAN.get(v, v) for v in values]
    return out.model_copy(update={"values": values, "reference_share": r, "current_share": c})
