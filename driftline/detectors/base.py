"""The detector contract: a frozen config with a stable id, run over summarised windows.

Every family (feature drift, data quality, operations, performance...) registers a
config class under its `kind`; `registry.build` turns a monitor's list of configs into
detectors. A detector returns MetricRows; one that fails returns an explicit error row
per version instead of a silent NaN.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from driftline.detectors.perf_summaries import PerfSummarizer
from driftline.detectors.summaries import Summarizer, Summary
from driftline.schema import ModelSchema
from driftline.storage.events import EventStore
from driftline.storage.meta.records import ModelInfo


class DetectorConfig(BaseModel):
    """Settings of one detector; its id is a hash of them, so a changed setting is a new series."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str] = ""

    @property
    def id(self) -> str:
        payload = json.dumps({"kind": self.kind, **self.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.model_dump(mode="json")}


@dataclass(frozen=True)
class MetricRow:
    """One value in the metrics table: (model, version, detector id, metric, feature, slice, window)."""

    version: str
    detector: str
    detector_id: str
    metric: str
    window_start: int
    window_end: int
    value: float | None
    feature: str = ""
    slice: str = ""
    threshold: float | None = None
    alert: bool = False
    sample_size: int = 0
    status: str = "ok"  # ok | error | no_data
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status == "ok" and (self.value is None or not math.isfinite(self.value)):
            raise ValueError(
                f"{self.detector}/{self.metric}/{self.feature}: an ok result needs a finite value, got {self.value!r}; "
                "report status 'no_data' or 'error' instead"
            )


@dataclass(frozen=True)
class Reference:
    """A version's reference, whole (one window) and in chunks (for learned thresholds)."""

    version: str
    whole: Summary
    chunks: Summary


@dataclass
class RunContext:
    """What a detector sees: the model, its summarised windows per version, and references."""

    project: str
    model: ModelInfo
    start: int
    end: int
    step: int
    live: dict[str, Summary]
    references: dict[str, Reference]
    events: EventStore
    summarizer: Summarizer
    now: float
    settings: dict[str, Any] = field(default_factory=dict)
    perf: PerfSummarizer | None = None  # label-joined summaries, brought up to date by the runner
    labelled_references: set[str] = field(default_factory=set)  # versions whose reference has labels

    @property
    def schema(self) -> ModelSchema:
        return self.model.schema

    @property
    def versions(self) -> list[str]:
        """Versions with traffic in the range, in registration order."""
        known = [v.version for v in self.model.versions]
        return [v for v in known if v in self.live] + sorted(v for v in self.live if v not in known)

    def reference_for(self, version: str) -> Reference | None:
        """The version's own reference, else the champion's, else the newest one uploaded."""
        if version in self.references:
            return self.references[version]
        champions = [v.version for v in self.model.versions if v.role.value == "champion"]
        for v in reversed(champions):
            if v in self.references:
                return self.references[v]
        for v in reversed([v.version for v in self.model.versions]):
            if v in self.references:
                return self.references[v]
        return None

    def window_bounds(self, i: int) -> tuple[int, int]:
        lo = self.start + i * self.step
        return lo, min(lo + self.step, self.end)


class Detector(Protocol):
    config: DetectorConfig

    def run(self, ctx: RunContext) -> list[MetricRow]: ...


_KINDS: dict[str, tuple[type[DetectorConfig], Callable[[Any], Detector]]] = {}


def register(
    config: type[DetectorConfig],
) -> Callable[[Callable[[Any], Detector]], Callable[[Any], Detector]]:
    """Register a detector factory under its config's kind."""

    def deco(factory: Callable[[Any], Detector]) -> Callable[[Any], Detector]:
        if not config.kind:
            raise ValueError(f"{config.__name__} has no kind")
        if config.kind in _KINDS:
            raise ValueError(f"detector kind {config.kind!r} is registered twice")
        _KINDS[config.kind] = (config, factory)
        return factory

    return deco


def kinds() -> dict[str, type[DetectorConfig]]:
    return {k: v[0] for k, v in _KINDS.items()}


def parse_config(payload: dict[str, Any]) -> DetectorConfig:
    """A config from its JSON form {"kind": ..., settings...}; ValueError names what is wrong."""
    kind = payload.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown detector kind {kind!r}; known: {sorted(_KINDS)}")
    body = {k: v for k, v in payload.items() if k != "kind"}
    return _KINDS[str(kind)][0].model_validate(body)


def build(config: DetectorConfig) -> Detector:
    return _KINDS[config.kind][1](config)


def error_rows(config: DetectorConfig, ctx: RunContext, exc: BaseException) -> list[MetricRow]:
    """What a failed detector leaves behind: one explicit error row per version and window."""
    message = f"{type(exc).__name__}: {exc}"[:2000]
    rows = []
    for version in ctx.versions or [""]:
        for i in range(max(ctx.live[version].windows if version in ctx.live else 1, 1)):
            lo, hi = ctx.window_bounds(i)
            rows.append(
                MetricRow(
                    version=version,
                    detector=config.kind,
                    detector_id=config.id,
                    metric="error",
                    window_start=lo,
                    window_end=hi,
                    value=None,
                    status="error",
                    details={"error": message},
                )
            )
    return rows
