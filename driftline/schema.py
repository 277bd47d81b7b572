"""The contract of a monitored model: features, metadata, task and label.

Shared by the registry (stored as JSON), the event-store DDL (one typed column per
feature), ingest validation and the detectors. Names that reach SQL are checked
here against strict patterns, once, at registration.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

PROJECT_PATTERN = r"^[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*$"
MODEL_PATTERN = r"^[A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)*$"
FIELD_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
CLASS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._ -]*$"

ProjectName = Annotated[str, StringConstraints(pattern=PROJECT_PATTERN, max_length=32)]
ModelName = Annotated[str, StringConstraints(pattern=MODEL_PATTERN, max_length=64)]
FieldName = Annotated[str, StringConstraints(pattern=FIELD_PATTERN, max_length=64)]
VersionName = Annotated[str, StringConstraints(pattern=VERSION_PATTERN, max_length=64)]

# Fields of a record that bulk bodies carry as columns of their own name: features and
# metadata may not take these names.
RESERVED_FIELDS = frozenset(
    {
        "request_id",
        "model",
        "version",
        "timestamp",
        "ts",
        "received",
        "prediction",
        "score",
        "scores",
        "latency_ms",
        "timings",
        "status",
        "error",
        "label",
        "features",
        "metadata",
        "outcome",
        "reviewer",
        "comment",
        "row",
    }
)
SCORE_PREFIX = "score_"
TIMING_PREFIX = "timing_"


def check_name(value: str, pattern: str, what: str) -> str:
    """Raise ValueError unless value is a safe identifier of the given kind."""
    if not isinstance(value, str) or not re.fullmatch(pattern, value) or len(value) > 64:
        raise ValueError(f"invalid {what} {value!r}: must match {pattern}")
    return value


class Task(StrEnum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"


class FeatureKind(StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    BOOLEAN = "boolean"


class Pii(StrEnum):
    DROP = "drop"
    HASH = "hash"


class Role(StrEnum):
    CHAMPION = "champion"
    CHALLENGER = "challenger"
    SHADOW = "shadow"
    CANARY = "canary"


class Approval(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def canonical_class(value: Any) -> str:
    """One spelling per class value: True and 1 and 1.0 are all '1'."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, float)):
        return str(value)
    raise ValueError(f"a class must be a string, number or boolean, not {type(value).__name__}")


class FeatureSpec(_Strict):
    name: FieldName
    kind: FeatureKind
    nullable: bool = True
    range: tuple[float, float] | None = None
    categories: list[str] | None = None
    pii: Pii | None = None
    important: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.range is not None:
            if self.kind is not FeatureKind.NUMERIC:
                raise ValueError(f"feature {self.name!r}: range applies to numeric features only")
            if not self.range[0] <= self.range[1]:
                raise ValueError(f"feature {self.name!r}: range low must not exceed high")
        if self.categories is not None:
            if self.kind is not FeatureKind.CATEGORICAL:
                raise ValueError(f"feature {self.name!r}: categories apply to categorical features only")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"feature {self.name!r}: categories repeat")
        if self.pii is Pii.HASH and self.kind is not FeatureKind.CATEGORICAL:
            raise ValueError(f"feature {self.name!r}: pii 'hash' applies to categorical features only")
        return self

    @property
    def stored(self) -> bool:
        return self.pii is not Pii.DROP


class MetadataField(_Strict):
    """Input metadata carried with each prediction; the slice candidates."""

    name: FieldName
    kind: FeatureKind = FeatureKind.CATEGORICAL
    pii: Pii | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MetadataField:
        if self.pii is Pii.HASH and self.kind is not FeatureKind.CATEGORICAL:
            raise ValueError(f"metadata {self.name!r}: pii 'hash' applies to categorical fields only")
        return self

    @property
    def stored(self) -> bool:
        return self.pii is not Pii.DROP


class LabelSpec(_Strict):
    kind: Literal["binary", "categorical", "numeric"] | None = None
    positive: str | None = None
    classes: list[str] | None = None

    @field_validator("positive", mode="before")
    @classmethod
    def _canonical_positive(cls, value: Any) -> Any:
        return None if value is None else canonical_class(value)

    @field_validator("classes", mode="before")
    @classmethod
    def _canonical_classes(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list):
            raise ValueError("classes must be a list")
        return [canonical_class(v) for v in value]


_TASK_LABEL = {Task.BINARY: "binary", Task.MULTICLASS: "categorical", Task.REGRESSION: "numeric"}


class ModelSchema(_Strict):
    """What `POST /v1/models` takes and what the registry stores."""

    name: ModelName
    task: Task
    features: list[FeatureSpec] = Field(min_length=1, max_length=2000)
    metadata: list[MetadataField] = Field(default_factory=list, max_length=200)
    label: LabelSpec = Field(default_factory=LabelSpec)
    owner: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _consistent(self) -> ModelSchema:
        names = [f.name for f in self.features] + [m.name for m in self.metadata]
        seen: set[str] = set()
        for name in names:
            low = name.lower()
            if low in seen:
                raise ValueError(
                    f"field {name!r} is declared twice (features and metadata share one namespace)"
                )
            seen.add(low)
            if low in RESERVED_FIELDS or low.startswith((SCORE_PREFIX, TIMING_PREFIX)):
                raise ValueError(
                    f"field {name!r} clashes with a record field; reserved: {sorted(RESERVED_FIELDS)}, "
                    f"and the prefixes {SCORE_PREFIX!r}, {TIMING_PREFIX!r}"
                )
        expected = _TASK_LABEL[self.task]
        if self.label.kind is not None and self.label.kind != expected:
            raise ValueError(
                f"task {self.task.value!r} takes label kind {expected!r}, not {self.label.kind!r}"
            )
        if self.task is Task.MULTICLASS:
            if not self.label.classes or len(self.label.classes) < 2:
                raise ValueError("a multiclass model declares label.classes (at least two)")
            if len(set(self.label.classes)) != len(self.label.classes):
                raise ValueError("label.classes repeat")
            for c in self.label.classes:
                check_name(c, CLASS_PATTERN, "class")
        if self.task is Task.REGRESSION and (self.label.positive or self.label.classes):
            raise ValueError("a regression model has no positive class or classes")
        if self.task is Task.BINARY and self.label.classes is not None:
            if len(self.label.classes) != 2:
                raise ValueError("a binary model has exactly two classes")
            if self.positive_class not in self.label.classes:
                raise ValueError("label.positive must be one of label.classes")
        return self

    @property
    def label_kind(self) -> str:
        return _TASK_LABEL[self.task]

    @property
    def positive_class(self) -> str:
        """The positive class of a binary model: declared, else '1'."""
        return self.label.positive if self.label.positive is not None else "1"

    @property
    def classes(self) -> list[str]:
        if self.task is Task.MULTICLASS:
            return list(self.label.classes or [])
        if self.task is Task.BINARY:
            if self.label.classes:
                return list(self.label.classes)
            return ["0", "1"] if self.positive_class == "1" else [self.positive_class]
        return []

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def with_features(self, extra: list[FeatureSpec]) -> ModelSchema:
        """The schema grown by a new version's features (existing names must not change)."""
        known = {f.name: f for f in self.features}
        added = []
        for f in extra:
            if f.name in known:
                if known[f.name] != f:
                    raise ValueError(f"feature {f.name!r} exists with another definition")
                continue
            added.append(f)
        return self.model_copy(update={"features": [*self.features, *added]}) if added else self
