"""What a model is monitored with: window, schedule, detectors, important slices.

Every model has a monitor: the one stored for it (`PUT /v1/models/{model}/monitors`)
or, when nobody configured it, the defaults, so that a newly registered model is
monitored without any configuration. Detector settings (methods, thresholds) live in
each detector's own config, validated by its family; this module checks the rest.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from driftline.detectors import base, registry
from driftline.detectors.base import DetectorConfig
from driftline.detectors.summaries import BUCKET_SECONDS
from driftline.errors import InvalidInput
from driftline.schema import FIELD_PATTERN, ModelSchema
from driftline.storage.meta.monitors import MonitorRecord

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"(0|[1-9][0-9]{0,5})([smhd])")
MAX_WINDOW_SECONDS = 366 * 86_400
MAX_LOOKBACK_SECONDS = 3 * 366 * 86_400
MIN_SCHEDULE_SECONDS = 60


def parse_duration(text: Any, what: str = "duration") -> int:
    """Seconds of a duration such as "15m", "1h", "7d": one integer and one unit (s, m, h, d)."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string such as '1h' or '7d', not {type(text).__name__}")
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{what} {text!r} is not a duration: write one whole number and a unit, "
            "s, m, h or d (for example '15m', '1h', '1d', '30d')"
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_time(value: Any, what: str = "time") -> int:
    """Epoch seconds of an ISO 8601 time (naive means UTC) or of epoch seconds (number or digits)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{what} must be ISO 8601 or epoch seconds, not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{what} {value!r} is not a valid epoch time")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"{what} must be ISO 8601 or epoch seconds, not {type(value).__name__}")
    text = value.strip()
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        return int(float(text))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{what} {value!r} is neither ISO 8601 (e.g. 2026-05-01T00:00:00Z) nor epoch seconds"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def iso(epoch: float | None) -> str | None:
    """ISO 8601 in UTC with a Z, as the API answers times."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(int(epoch), UTC).isoformat().replace("+00:00", "Z")


def parse_window(text: Any, what: str = "window") -> int:
    """A window length: whole hours (windows merge hourly bucket summaries), at most 366 days."""
    seconds = parse_duration(text, what)
    if seconds <= 0 or seconds % BUCKET_SECONDS:
        raise ValueError(f"{what} {text!r} must be a positive number of whole hours (summaries are hourly)")
    if seconds > MAX_WINDOW_SECONDS:
        raise ValueError(f"{what} {text!r} is longer than 366 days")
    return seconds


def _custom(message: str) -> PydanticCustomError:
    # A custom error keeps the message as written, without pydantic's "Value error, " prefix.
    return PydanticCustomError("monitor", message)


def _checked(check: Any, what: str) -> Any:
    def validate(value: str) -> str:
        try:
            check(value, what)
        except ValueError as exc:
            raise _custom(str(exc)) from None
        return value

    return AfterValidator(validate)


def _schedule(value: str, what: str) -> None:
    if parse_duration(value, what) < MIN_SCHEDULE_SECONDS:
        raise ValueError(f"{what} {value!r} is shorter than one minute")


def _lookback(value: str, what: str) -> None:
    seconds = parse_duration(value, what)
    if seconds <= 0 or seconds > MAX_LOOKBACK_SECONDS:
        raise ValueError(f"{what} {value!r} must be positive and at most 1098 days")


def describe_errors(exc: ValidationError) -> str:
    """One line per problem: where, and what is wrong."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{where}: {e.get('msg', '')}" if where else str(e.get("msg", "")))
    return "; ".join(parts)


def detector_config(payload: Any) -> DetectorConfig:
    """A detector config from its JSON form; ValueError names the kind and the setting at fault."""
    if not isinstance(payload, dict):
        raise ValueError(f"a detector is an object with a 'kind', not {type(payload).__name__}")
    registry.load_all()
    kind = payload.get("kind")
    if kind not in base.kinds():
        raise ValueError(f"unknown detector kind {kind!r}; known kinds: {', '.join(sorted(base.kinds()))}")
    try:
        return base.parse_config(payload)
    except ValidationError as exc:
        raise ValueError(f"{kind}: {describe_errors(exc)}") from None


def _detector(payload: dict[str, Any]) -> dict[str, Any]:
    try:
        return detector_config(payload).to_json()
    except ValueError as exc:
        raise _custom(str(exc)) from None


class ImportantSlice(BaseModel):
    """A slice (`field=value` of a metadata field or categorical feature) with thresholds of its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slice: str = Field(description="field=value, e.g. 'country=FR'", max_length=200)
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="metric -> threshold used for this slice instead of the default"
    )

    @field_validator("slice")
    @classmethod
    def _slice(cls, value: str) -> str:
        name, sep, val = value.partition("=")
        if not sep or not re.fullmatch(FIELD_PATTERN, name) or not val:
            raise _custom(f"slice {value!r} must read field=value, e.g. 'country=FR'")
        return value

    @field_validator("thresholds")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if not math.isfinite(v)]
        if bad:
            raise _custom(f"thresholds must be finite numbers; not {', '.join(bad)}")
        return value

    @property
    def field(self) -> str:
        return self.slice.partition("=")[0]


class MonitorConfig(BaseModel):
    """A model's monitor. `detectors` empty means every registered family with default settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: Annotated[str, _checked(parse_window, "window")] = Field(
        default="1d",
        description="Length of a detection window: whole hours, e.g. '1h', '6h', '1d', '7d', '30d'.",
    )
    schedule: Annotated[str, _checked(_schedule, "schedule")] = Field(
        default="1h",
        description="How often the scheduled job runs for this model (summarises new buckets, "
        "detects closed windows), e.g. '15m', '1h'.",
    )
    delay: Annotated[str, _checked(parse_duration, "delay")] = Field(
        default="5m",
        description="How long after its end a window is left for late rows before it is detected.",
    )
    lookback: Annotated[str, _checked(_lookback, "lookback")] = Field(
        default="7d",
        description="Catch-up limit: windows that ended longer ago than this are not caught up "
        "after an outage (backfill them with `driftline detect`).",
    )
    detectors: list[Annotated[dict[str, Any], AfterValidator(_detector)]] = Field(
        default_factory=list,
        description='Detector configs, each {"kind": ..., settings...}; empty: every family with defaults.',
    )
    important_slices: list[ImportantSlice] = Field(default_factory=list)
    enabled: bool = Field(default=True, description="False: the scheduler leaves the model alone.")

    @field_validator("detectors")
    @classmethod
    def _distinct(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: dict[str, int] = {}
        for i, payload in enumerate(value):
            ident = base.parse_config(payload).id
            if ident in seen:
                raise _custom(f"detectors[{i}] repeats detectors[{seen[ident]}] (same kind and settings)")
            seen[ident] = i
        return value

    @field_validator("important_slices")
    @classmethod
    def _distinct_slices(cls, value: list[ImportantSlice]) -> list[ImportantSlice]:
        names = [s.slice for s in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise _custom(f"important slices listed twice: {', '.join(repeated)}")
        return value

    @property
    def window_seconds(self) -> int:
        return parse_window(self.window)

    @property
    def schedule_seconds(self) -> int:
        return parse_duration(self.schedule)

    @property
    def delay_seconds(self) -> int:
        return parse_duration(self.delay)

    @property
    def lookback_seconds(self) -> int:
        return parse_duration(self.lookback)

    def configs(self) -> list[DetectorConfig]:
        """The detectors to run: the configured ones, else every family's defaults."""
        if self.detectors:
            return [base.parse_config(d) for d in self.detectors]
        return registry.default_configs()

    def check_schema(self, schema: ModelSchema) -> None:
        """Refuse important slices on fields the model does not have (InvalidInput)."""
        fields = {m.name for m in schema.metadata} | {f.name for f in schema.features}
        for i, s in enumerate(self.important_slices):
            if s.field not in fields:
                raise InvalidInput(
                    f"important_slices[{i}]: {s.field!r} is not a metadata field or feature of model "
                    f"{schema.name!r}"
                )


@dataclass(frozen=True)
class Monitor:
    """A model's effective monitor: `stored` False means the defaults apply."""

    config: MonitorConfig
    stored: bool
    record: MonitorRecord


def parse_monitor(payload: Any) -> MonitorConfig:
    """A MonitorConfig from JSON, InvalidInput with every problem named."""
    if not isinstance(payload, dict):
        raise InvalidInput("a monitor config is a JSON object")
    try:
        return MonitorConfig.model_validate(payload)
    except ValidationError as exc:
        raise InvalidInput(f"invalid monitor config: {describe_errors(exc)}") from None


def monitor_of(record: MonitorRecord) -> Monitor:
    """The effective monitor of a stored record (InvalidInput when a stored config no longer validates)."""
    if record.config is None:
        return Monitor(MonitorConfig(), stored=False, record=record)
    try:
        config = MonitorConfig.model_validate(record.config)
    except ValidationError as exc:
        raise InvalidInput(
            f"the stored monitor of model {record.model!r} no longer validates ({describe_errors(exc)}); "
            "PUT a new one"
        ) from None
    return Monitor(config, stored=True, record=record)
