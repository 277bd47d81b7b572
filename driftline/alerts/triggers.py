"""Retraining triggers: which findings call for retraining, the gates they must pass, one trigger per episode.

A model's policy names the findings that count:
- drift persisting on important features (FeatureSpec.important, or a list) for N windows,
  by the adjusted verdict;
- a performance drop (the detector's verdict) on the whole population or an important
  slice (the monitor's important slices, or a list) for N windows;
- labels showing changed behaviour: concept drift or label drift, for N windows.
Findings are judged at the newest window detected: a finding holds when its series
breached in each of the N windows ending there. An episode starts when the findings
hold (any of them, or all with `mode: all`) and ends when they stop; an episode proposes
at most one trigger, once its gates pass (minimum samples and label coverage over the
finding windows, cooldown since the policy's last trigger). While a trigger waits for
approval, new findings of its episode are added to its evidence. Nothing here runs on a
clock: only detector results move a policy.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from driftline.alerts.notifiers import figures_of, iso
from driftline.detectors.monitors import parse_duration
from driftline.schema import ModelSchema
from driftline.storage.events import Kind, TableNames

DRIFT = "drift"
PERFORMANCE = "performance"
LABELS = "labels"
PERFORMANCE_METRICS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "log_loss",
    "mae",
    "rmse",
    "mape",
    "r2",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DriftFinding(_Strict):
    enabled: bool = True
    windows: int = Field(default=3, ge=1, le=100, description="consecutive windows the drift must persist")
    features: list[str] | None = Field(
        default=None, description="features that count; null: the schema's important features"
    )
    detectors: list[str] = Field(default_factory=lambda: ["feature_drift"])
    adjusted: bool = Field(default=True, description="use the Benjamini-Hochberg adjusted verdict")


class PerformanceFinding(_Strict):
    enabled: bool = True
    windows: int = Field(default=1, ge=1, le=100)
    metrics: list[str] | None = Field(default=None, description="null: every realised performance metric")
    slices: list[str] | None = Field(
        default=None, description="slices that count besides the whole population; null: the important slices"
    )
    detectors: list[str] = Field(default_factory=lambda: ["performance", "slice_performance"])


class LabelFinding(_Strict):
    enabled: bool = True
    windows: int = Field(default=1, ge=1, le=100)
    detectors: list[str] = Field(default_factory=lambda: ["concept_drift", "label_drift"])


class Gates(_Strict):
    min_samples: int = Field(default=1000, ge=0, description="predictions in the finding windows")
    min_label_coverage: float = Field(
        default=0.1, ge=0, le=1, description="share of those predictions with a label"
    )
    cooldown: str = Field(default="7d", description="since the policy's last trigger, e.g. '7d'")

    @field_validator("cooldown")
    @classmethod
    def _cooldown(cls, value: str) -> str:
        parse_duration(value, "cooldown")
        return value

    @property
    def cooldown_seconds(self) -> int:
        return parse_duration(self.cooldown)


class PolicySpec(_Strict):
    """A policy's findings and gates (its webhook and enabled flag are kept beside it)."""

    mode: Literal["any", "all"] = Field(
        default="any", description="any: one enabled kind of finding is enough; all: every enabled kind"
    )
    drift: DriftFinding = Field(default_factory=DriftFinding)
    performance: PerformanceFinding = Field(default_factory=PerformanceFinding)
    labels: LabelFinding = Field(default_factory=LabelFinding)
    gates: Gates = Field(default_factory=Gates)
    require_approval: bool = Field(default=True, description="a human approves before dispatch")

    @property
    def lookback_windows(self) -> int:
        return max(self.drift.windows, self.performance.windows, self.labels.windows)

    @property
    def detectors(self) -> set[str]:
        """Detectors whose results the policy reads (operations and performance feed the gates)."""
        out = {"operations", "performance"}
        for kind in (self.drift, self.performance, self.labels):
            if kind.enabled:
                out |= set(kind.detectors)
        return out


@dataclass
class Finding:
    kind: str
    version: str
    detector: str
    metric: str
    feature: str
    slice: str
    windows: int
    required: int
    since: int
    latest: dict[str, Any]
    series: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return "|".join((self.kind, self.version, self.detector, self.metric, self.feature, self.slice))

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "detector": self.detector,
            "metric": self.metric,
            "feature": self.feature,
            "slice": self.slice,
            "windows": self.windows,
            "required": self.required,
            "since": iso(self.since),
            "latest": self.latest,
            "series": self.series,
        }


def _verdict(row: dict[str, Any], adjusted: bool) -> bool | None:
    if row.get("status") != "ok":
        return None
    details = row.get("details") or {}
    if adjusted and isinstance(details.get("drift_adjusted"), bool):
        return bool(details["drift_adjusted"])
    return bool(row.get("alert"))


def _series(row: dict[str, Any]) -> tuple[str, str, str, str, str]:
    return (
        str(row["version"]),
        str(row["detector"]),
        str(row["metric"]),
        str(row["feature"]),
        str(row["slice"]),
    )


def _streaks(
    rows: list[dict[str, Any]], latest: int, step: int, required: int, kind: str, adjusted: bool
) -> list[Finding]:
    """Series whose verdict held in each of the `required` (or more) windows ending at `latest`."""
    by_series: dict[tuple[str, str, str, str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_series[_series(r)][int(r["window_end"])] = r
    found: list[Finding] = []
    for key, windows in by_series.items():
        n = 0
        end = latest
        while end in windows and _verdict(windows[end], adjusted):
            n += 1
            end -= step
        if n >= required:
            kept = [windows[latest - i * step] for i in range(n)][::-1]
            found.append(
                Finding(
                    kind=kind,
                    version=key[0],
                    detector=key[1],
                    metric=key[2],
                    feature=key[3],
                    slice=key[4],
                    windows=n,
                    required=required,
                    since=int(kept[0]["window_start"]),
                    latest=figures_of(windows[latest]),
                    series=[
                        {
                            "window_start": iso(int(r["window_start"])),
                            "window_end": iso(int(r["window_end"])),
                            "value": figures_of(r)["value"],
                            "threshold": figures_of(r)["threshold"],
                        }
                        for r in kept
                    ],
                )
            )
    return sorted(found, key=lambda f: f.key)


def findings(
    spec: PolicySpec,
    schema: ModelSchema,
    important_slices: set[str],
    rows: list[dict[str, Any]],
    latest: int,
    step: int,
) -> dict[str, list[Finding]]:
    """The findings of each enabled kind that hold at the window ending at `latest`."""
    out: dict[str, list[Finding]] = {}
    if spec.drift.enabled:
        features = (
            set(spec.drift.features)
            if spec.drift.features is not None
            else {f.name for f in schema.features if f.important}
        )
        picked = [
            r
            for r in rows
            if r["detector"] in spec.drift.detectors and r["feature"] in features and r["slice"] == ""
        ]
        out[DRIFT] = _streaks(picked, latest, step, spec.drift.windows, DRIFT, spec.drift.adjusted)
    if spec.performance.enabled:
        metrics = set(spec.performance.metrics or PERFORMANCE_METRICS)
        slices = {""} | (
            set(spec.performance.slices) if spec.performance.slices is not None else important_slices
        )
        picked = [
            r
            for r in rows
            if r["detector"] in spec.performance.detectors and r["metric"] in metrics and r["slice"] in slices
        ]
        out[PERFORMANCE] = _streaks(picked, latest, step, spec.performance.windows, PERFORMANCE, False)
    if spec.labels.enabled:
        picked = [r for r in rows if r["detector"] in spec.labels.detectors and r["slice"] == ""]
        out[LABELS] = _streaks(picked, latest, step, spec.labels.windows, LABELS, False)
    return out


def has_evidence(spec: PolicySpec, rows: list[dict[str, Any]], latest: int) -> bool:
    """Whether the newest window has a verdict from any detector an enabled finding reads."""
    detectors: set[str] = set()
    for kind in (spec.drift, spec.performance, spec.labels):
        if kind.enabled:
            detectors |= set(kind.detectors)
    return any(
        r["detector"] in detectors and int(r["window_end"]) == latest and r.get("status") == "ok"
        for r in rows
    )


def holds(spec: PolicySpec, found: dict[str, list[Finding]]) -> bool:
    kinds = [bool(v) for v in found.values()]
    if not kinds:
        return False
    return all(kinds) if spec.mode == "all" else any(kinds)


@dataclass(frozen=True)
class Figures:
    start: int
    end: int
    versions: list[str]
    samples: int
    labelled: int
    rows: int

    @property
    def label_coverage(self) -> float | None:
        return self.labelled / self.rows if self.rows else None


def figures(found: list[Finding], rows: list[dict[str, Any]], latest: int, step: int) -> Figures:
    """Samples and label coverage over the windows of the findings, for the versions they concern."""
    start = min(f.since for f in found)
    versions = sorted(
        {f.version for f in found if f.version} or {str(r["version"]) for r in rows if r["version"]}
    )
    in_range = [
        r
        for r in rows
        if start <= int(r["window_start"])
        and int(r["window_end"]) <= latest
        and str(r["version"]) in versions
    ]
    per_window: dict[tuple[str, int], int] = {}
    for r in in_range:
        if r["detector"] == "operations" and r["metric"] == "throughput" and r["feature"] == "":
            per_window[(str(r["version"]), int(r["window_end"]))] = int(r["sample_size"])
    if not per_window:  # no operations results: the findings' own sample sizes
        series = {(f.version, f.detector, f.metric, f.feature, f.slice) for f in found}
        for r in in_range:
            if _series(r) in series:
                slot = (str(r["version"]), int(r["window_end"]))
                per_window[slot] = max(per_window.get(slot, 0), int(r["sample_size"]))
    labelled = total = 0
    for r in in_range:
        if r["detector"] == "performance" and r["metric"] == "label_coverage" and r["status"] == "ok":
            details = r.get("details") or {}
            labelled += int(details.get("labelled", 0) or 0)
            total += int(details.get("rows", 0) or 0)
    return Figures(start, latest, versions, sum(per_window.values()), labelled, total)


def gate_failures(
    spec: PolicySpec, fig: Figures, last_trigger_at: datetime | None, now: datetime
) -> list[str]:
    """Why the episode may not propose a trigger yet (empty: it may)."""
    held: list[str] = []
    g = spec.gates
    if fig.samples < g.min_samples:
        held.append(
            f"min_samples: {fig.samples} predictions in the finding windows, fewer than {g.min_samples}"
        )
    coverage = fig.label_coverage
    if g.min_label_coverage > 0 and (coverage is None or coverage < g.min_label_coverage):
        shown = "no labels" if coverage is None else f"label coverage {coverage:.3f}"
        held.append(f"min_label_coverage: {shown}, below {g.min_label_coverage:g}")
    if last_trigger_at is not None:
        left = g.cooldown_seconds - (now - last_trigger_at).total_seconds()
        if left > 0:
            held.append(
                f"cooldown: the last trigger was proposed {iso_ago(now, last_trigger_at)}; {math.ceil(left)}s left"
            )
    return held


def iso_ago(now: datetime, then: datetime) -> str:
    seconds = int((now - then).total_seconds())
    return f"{seconds}s ago"


def data_section(
    database: str, project: str, model: str, versions: list[str], start: int, end: int
) -> dict[str, Any]:
    """How to fetch the window to retrain on: the tables, a ready query, the metrics it came from."""
    names = TableNames(database, project, model)
    predictions, labels = names(Kind.PREDICTIONS), names(Kind.LABELS)
    quoted = ", ".join("'" + v.replace("\\", "").replace("'", "") + "'" for v in versions) or "''"
    sql = (
        f"SELECT p.*, l.label AS label FROM {predictions} AS p LEFT JOIN "
        f"(SELECT request_id, argMax(label, received) AS label FROM {labels} GROUP BY request_id) AS l "
        f"USING request_id WHERE p.version IN ({quoted}) "
        f"AND p.ts >= toDateTime({start}, 'UTC') AND p.ts < toDateTime({end}, 'UTC')"
    )
    return {
        "versions": versions,
        "start": iso(start),
        "end": iso(end),
        "predictions_table": predictions,
        "labels_table": labels,
        "sql": sql,
        "metrics_api": f"/v1/models/{model}/metrics?start={iso(start)}&end={iso(end)}",
    }


def evidence(
    *,
    project: str,
    model: str,
    database: str,
    spec: PolicySpec,
    found: dict[str, list[Finding]],
    fig: Figures,
    step: int,
    episode: int,
) -> dict[str, Any]:
    """What a trigger carries: findings, windows, figures, and how to fetch the rows to retrain on."""
    return {
        "project": project,
        "model": model,
        "episode": episode,
        "mode": spec.mode,
        "findings": [f.as_dict() for kind in (DRIFT, PERFORMANCE, LABELS) for f in found.get(kind, [])],
        "window": {"start": iso(fig.start), "end": iso(fig.end), "step_seconds": step},
        "figures": {
            "samples": fig.samples,
            "labelled": fig.labelled,
            "label_coverage": fig.label_coverage,
            "gates": spec.gates.model_dump(),
        },
        "data": data_section(database, project, model, fig.versions, fig.start, fig.end),
    }


def merge_evidence(old: dict[str, Any], new: dict[str, Any], database: str) -> dict[str, Any]:
    """A waiting trigger's evidence with its episode's newer findings: by series, the newest wins."""
    seen: dict[str, dict[str, Any]] = {}
    for f in [*old.get("findings", []), *new.get("findings", [])]:
        key = "|".join(
            str(f.get(k, "")) for k in ("kind", "version", "detector", "metric", "feature", "slice")
        )
        seen[key] = f
    start = min(_epoch(e["window"]["start"]) for e in (old, new) if e.get("window", {}).get("start"))
    end = _epoch(new["window"]["end"])
    versions = sorted(set(old.get("data", {}).get("versions", [])) | set(new["data"]["versions"]))
    return {
        **new,
        "findings": list(seen.values()),
        "window": {**new["window"], "start": iso(start)},
        "data": data_section(database, new["project"], new["model"], versions, start, end),
    }


def _epoch(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
