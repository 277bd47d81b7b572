"""The rule language: which results a rule watches, what counts as a breach, how long before it fires.

A selector picks rows of the metrics table by model, version, detector, metric, feature
and slice, each a glob (`*` matches anything, '' only the empty value: the whole
population for slices, no feature for model-wide metrics). A series is one concrete
combination the selector matched; the state machine runs per rule and series.

A condition is either the detector's own verdict (`op: alert`; for p-value tests the
Benjamini-Hochberg adjusted verdict by default, since testing many features in many
windows makes some raw alarm certain) or a comparison of the value with a threshold.
Rows without a verdict (no data, error) are no evidence either way and are skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from driftline.detectors.monitors import parse_duration
from driftline.storage.meta.alerting import Severity

RULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.:()/-]*$"
CHANNEL_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]*$"
Op = Literal["alert", ">", ">=", "<", "<="]
Scalar = str | int | float | bool | None
SERIES_FIELDS = ("version", "detector", "metric", "feature", "slice")
_MATCH_ORDER = ("detector", "metric", "feature", "slice", "version")  # most selective first


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Selector(_Strict):
    """Globs over the result key; `*` matches anything."""

    model: str = Field(default="*", max_length=64)
    version: str = Field(default="*", max_length=64)
    detector: str = Field(default="*", max_length=100)
    metric: str = Field(default="*", max_length=200)
    feature: str = Field(default="*", max_length=200)
    slice: str = Field(default="*", max_length=300, description="'' is the whole population")

    def matches_model(self, model: str) -> bool:
        return fnmatchcase(model, self.model)

    def matches(self, row: dict[str, Any]) -> bool:
        return all(fnmatchcase(str(row[name]), getattr(self, name)) for name in _MATCH_ORDER)

    @property
    def literal_detector(self) -> str | None:
        """The one detector the selector names, or None when it is a pattern."""
        return None if any(c in self.detector for c in "*?[") else self.detector


class Condition(_Strict):
    op: Op = Field(default="alert", description="'alert': the detector's verdict; else value OP threshold")
    threshold: float | None = Field(default=None, description="Needed by the comparisons")
    adjusted: bool = Field(
        default=True,
        description="With op 'alert': use the Benjamini-Hochberg adjusted verdict where the detector gives one",
    )
    details: dict[str, Scalar] = Field(
        default_factory=dict,
        description="Only rows whose details hold these values can breach, e.g. {'direction': 'silent'}",
    )

    @model_validator(mode="after")
    def _threshold(self) -> Condition:
        if self.op == "alert":
            if self.threshold is not None:
                raise ValueError("op 'alert' takes no threshold: it is the detector's verdict")
        elif self.threshold is None or not math.isfinite(self.threshold):
            raise ValueError(f"op {self.op!r} needs a finite threshold")
        return self

    def breached(self, row: dict[str, Any]) -> bool | None:
        """Whether the row breaches; None when it carries no verdict (no data, error)."""
        if row.get("status") != "ok":
            return None
        details = row.get("details") or {}
        if any(details.get(k) != v for k, v in self.details.items()):
            return False
        if self.op == "alert":
            if self.adjusted and isinstance(details.get("drift_adjusted"), bool):
                return bool(details["drift_adjusted"])
            return bool(row.get("alert"))
        value = row.get("value")
        if value is None or not math.isfinite(float(value)):
            return None
        assert self.threshold is not None
        v, t = float(value), self.threshold
        return {">": v > t, ">=": v >= t, "<": v < t, "<=": v <= t}[self.op]

    def describe(self) -> str:
        if self.op == "alert":
            what = "the detector's adjusted verdict" if self.adjusted else "the detector's verdict"
        else:
            what = f"value {self.op} {self.threshold:g}"
        if self.details:
            what += " where " + ", ".join(f"{k}={v}" for k, v in sorted(self.details.items()))
        return what


class Persistence(_Strict):
    """Fire when `breaches` of the last `windows` windows breach; resolve when fewer do."""

    breaches: int = Field(default=1, ge=1, le=100)
    windows: int = Field(default=1, ge=1, le=100)

    @model_validator(mode="after")
    def _order(self) -> Persistence:
        if self.breaches > self.windows:
            raise ValueError(f"breaches ({self.breaches}) cannot exceed windows ({self.windows})")
        return self


def _duration(value: str | None) -> str | None:
    if value is not None:
        seconds = parse_duration(value, "repeat_interval")
        if seconds < 60:
            raise ValueError("repeat_interval must be at least one minute ('1m')")
    return value


class RuleSpec(_Strict):
    """Everything of a rule but its name and enabled flag (columns of their own)."""

    selector: Selector = Field(default_factory=Selector)
    condition: Condition = Field(default_factory=Condition)
    persistence: Persistence = Field(default_factory=Persistence)
    severity: Severity = Severity.WARNING
    channels: list[str] | None = Field(
        default=None,
        description="Channel names; null: every enabled channel marked default",
        max_length=20,
    )
    repeat_interval: str | None = Field(
        default=None, description="Notify again while firing, at most this often (e.g. '4h'); null: never"
    )
    notify_resolved: bool = Field(default=True, description="Notify when it clears")
    description: str = Field(default="", max_length=1000)

    @field_validator("repeat_interval")
    @classmethod
    def _repeat(cls, value: str | None) -> str | None:
        return _duration(value)

    @field_validator("channels")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("channels are listed twice")
        return value

    @property
    def repeat_seconds(self) -> int | None:
        return None if self.repeat_interval is None else parse_duration(self.repeat_interval)


@dataclass(frozen=True)
class Series:
    """One concrete result series a selector matched, in windows of one length.

    A backfill in 6-hour windows of a model monitored daily is another series: mixing
    the two in one "last M windows" would make persistence meaningless.
    """

    version: str
    detector: str
    metric: str
    feature: str
    slice: str
    step: int

    @classmethod
    def of(cls, row: dict[str, Any]) -> Series:
        return cls(
            version=str(row["version"]),
            detector=str(row["detector"]),
            metric=str(row["metric"]),
            feature=str(row["feature"]),
            slice=str(row["slice"]),
            step=int(row["window_end"]) - int(row["window_start"]),
        )

    @property
    def hash(self) -> str:
        text = json.dumps([self.version, self.detector, self.metric, self.feature, self.slice, self.step])
        return hashlib.sha256(text.encode()).hexdigest()

    def label(self) -> str:
        """detector metric [feature] [slice] [version], for messages."""
        parts = [self.detector, self.metric]
        if self.feature:
            parts.append(f"on {self.feature}")
        if self.slice:
            parts.append(f"in {self.slice}")
        return " ".join(parts)
