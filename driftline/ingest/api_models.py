"""The HTTP contract's shapes, for OpenAPI and for responses.

Ingest bodies are documented here but parsed by orjson and checked column-wise by
`records`, which is many times faster than validating each record as an object.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from driftline.schema import Approval, FeatureSpec, ModelSchema, Role, Task

Scalar = str | int | float | bool | None


class PredictionRecord(BaseModel):
    request_id: str = Field(max_length=256, description="Unique per prediction; retries reuse it.")
    version: str = Field(description="A registered version of the model.")
    timestamp: str | float | None = Field(
        default=None, description="ISO 8601 (naive = UTC) or epoch seconds."
    )
    features: dict[str, Scalar] = Field(default_factory=dict)
    metadata: dict[str, Scalar] = Field(default_factory=dict, description="Input metadata: slice candidates.")
    prediction: str | int | float | bool | None = None
    score: float | None = Field(
        default=None, ge=0, le=1, description="Binary: probability of the positive class."
    )
    scores: dict[str, float] | None = Field(default=None, description="Multiclass: class -> probability.")
    latency_ms: float | None = Field(default=None, ge=0)
    timings: dict[str, float] | None = Field(default=None, description="Stage -> milliseconds.")
    status: Literal["ok", "error", "timeout"] = "ok"
    error: str | None = Field(default=None, description="Which stage or dependency failed.")


class PredictionBatch(BaseModel):
    model: str
    records: list[PredictionRecord]


class LabelRecord(BaseModel):
    request_id: str
    label: str | int | float | bool
    timestamp: str | float | None = None


class LabelBatch(BaseModel):
    model: str
    records: list[LabelRecord]


class FeedbackRecord(BaseModel):
    request_id: str
    outcome: str = Field(max_length=64, description="A review outcome such as accepted or overridden.")
    reviewer: str | None = None
    label: str | int | float | bool | None = Field(default=None, description="The reviewer's label, if any.")
    comment: str | None = None
    timestamp: str | float | None = None


class FeedbackBatch(BaseModel):
    model: str
    records: list[FeedbackRecord]


class ReferenceRecord(PredictionRecord):
    request_id: str = ""
    version: str = ""
    label: str | int | float | bool | None = None


class ReferenceBody(BaseModel):
    records: list[ReferenceRecord]


class IngestResult(BaseModel):
    accepted: int = Field(description="Rows durable in the spool or the store.")
    duplicates: int = Field(description="Rows already accepted before (same key); stored once.")
    violations: int = Field(description="Feature values that broke the schema; stored and counted.")
    violations_by_field: dict[str, dict[str, int]] = Field(default_factory=dict)


class ReferenceResult(BaseModel):
    version: str
    rows: int
    violations: int
    violations_by_field: dict[str, dict[str, int]] = Field(default_factory=dict)


class VersionIn(BaseModel):
    version: str
    role: Role = Role.CHAMPION
    approval: Approval | None = None
    data_version: str | None = None
    training_config_uri: str | None = None
    eval_report_uri: str | None = None
    features: list[FeatureSpec] | None = Field(default=None, description="Features this version adds.")


class VersionPatch(BaseModel):
    """Fields to change on a version; those left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    approval: Approval | None = None
    data_version: str | None = Field(default=None, max_length=200)
    training_config_uri: str | None = Field(default=None, max_length=4096)
    eval_report_uri: str | None = Field(default=None, max_length=4096)


class ModelPatch(BaseModel):
    """Who owns a model and what it is for; its shape changes only through new versions."""

    model_config = ConfigDict(extra="forbid")

    owner: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=2000)


class VersionOut(BaseModel):
    version: str
    role: Role
    approval: Approval
    data_version: str | None
    training_config_uri: str | None
    eval_report_uri: str | None
    features: list[FeatureSpec]
    created_at: datetime
    reference_rows: int | None = None


class CountsOut(BaseModel):
    predictions: int
    labels: int
    feedback: int
    reference: dict[str, int]


class ModelOut(BaseModel):
    name: str
    project: str
    task: Task
    owner: str | None
    schema_: ModelSchema = Field(alias="schema")
    versions: list[VersionOut]
    created_at: datetime
    updated_at: datetime
    counts: CountsOut | None = None

    model_config = {"populate_by_name": True}


class ModelList(BaseModel):
    items: list[ModelOut]


class KeyCreate(BaseModel):
    role: Literal["ingest", "read", "admin"]
    name: str = Field(default="", max_length=200)


class KeyOut(BaseModel):
    id: int
    project: str
    role: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself; shown once, stored only as a hash.")


class FlushResult(BaseModel):
    drained: bool
    pending_bytes: int


class StoredPrediction(BaseModel):
    model: str
    project: str
    version: dict[str, Any] | None
    record: dict[str, Any]
    schema_: ModelSchema = Field(alias="schema")

    model_config = {"populate_by_name": True}


class ErrorOut(BaseModel):
    detail: str
    errors: list[dict[str, Any]] | None = None
