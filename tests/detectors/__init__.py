"""Helpers for detector tests: raw rows into a real event store, a registered model, a run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from driftline.detectors.base import DetectorConfig
from driftline.detectors.results import MetricsQuery
from driftline.detectors.runner import Runner
from driftline.ingest.columns import PiiHasher, RowErrors
from driftline.ingest.records import ArrowSource, build_predictions, build_reference
from driftline.schema import Approval, ModelSchema, Role
from driftline.storage.events import EventEngine, EventStore, Kind
from driftline.storage.meta.records import ModelInfo, VersionInfo

PROJECT = "default"
DAY = 86_400
T0 = 1_780_000_000 // DAY * DAY  # a UTC midnight
NOW = T0 + 400 * DAY  # every bucket of every test is closed by then
HASHER = PiiHasher(b"test-key")


def model_info(schema: ModelSchema, versions: list[str], champion: str | None = None) -> ModelInfo:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    infos = [
        VersionInfo(
            id=i + 1,
            model_id=1,
            project=PROJECT,
            model=schema.name,
            version=v,
            role=Role.CHAMPION if v == (champion or versions[0]) else Role.CHALLENGER,
            approval=Approval.APPROVED,
            data_version=None,
            training_config_uri=None,
            eval_report_uri=None,
            features=list(schema.features),
            created_at=when,
            updated_at=when,
        )
        for i, v in enumerate(versions)
    ]
    return ModelInfo(
        id=1,
        project=PROJECT,
        name=schema.name,
        task=schema.task,
        schema=schema,
        owner=None,
        created_at=when,
        updated_at=when,
        versions=infos,
    )


class Loaded:
    """A model in a real event store, with predictions and references loaded from raw columns."""

    def __init__(
        self, engine: EventEngine, schema: dict[str, Any], versions: list[str] | None = None
    ) -> None:
        self.schema = ModelSchema.model_validate(schema)
        self.versions = versions or ["v1"]
        self.store = EventStore(engine)
        self.store.ensure_model(PROJECT, self.schema)
        self.runner = Runner(self.store)
        self.model = model_info(self.schema, self.versions)
        self._ids = 0

    def predictions(self, columns: dict[str, Any], *, version: str = "v1") -> None:
        """Raw prediction rows; `columns` holds `timestamp` and the features, metadata, score... by name."""
        n = len(columns["timestamp"])
        ids = [f"r{self._ids + i}" for i in range(n)]
        self._ids += n
        table = pa.table({"request_id": ids, "version": [version] * n, **columns})
        batch = build_predictions(
            self.schema,
            self.versions,
            ArrowSource(table),
            RowErrors(),
            now=NOW,
            max_future=DAY,
            hasher=HASHER,
        )
        self.store.insert(Kind.PREDICTIONS, PROJECT, self.schema, batch.table)

    def reference(self, columns: dict[str, Any], *, version: str = "v1") -> None:
        table = pa.table(columns)
        batch = build_reference(self.schema, version, ArrowSource(table), RowErrors(), now=NOW, hasher=HASHER)
        self.store.replace_reference(PROJECT, self.schema, version, batch.table)

    def run(
        self, configs: Sequence[DetectorConfig], start: int, end: int, step: int = DAY
    ) -> list[dict[str, Any]]:
        """Run the detectors through the Runner and read every row back from the metrics table."""
        result = self.runner.run(PROJECT, self.model, configs, start, end, step, now=NOW)
        assert not result.errors, result.errors
        return self.runner.metrics.read(MetricsQuery(project=PROJECT, model=self.schema.name))


def days(n_per_day: int, n_days: int, start: int = T0) -> np.ndarray:
    """Timestamps: `n_per_day` rows spread over each of `n_days` days."""
    per_day = start + np.arange(n_per_day, dtype=np.int64) * DAY // n_per_day
    return (per_day[None, :] + DAY * np.arange(n_days, dtype=np.int64)[:, None]).ravel()


def with_nulls(values: np.ndarray, share: float, rng: np.random.Generator) -> pa.Array:
    """A column with a share of its values missing (null, as serving systems send them)."""
    mask = rng.random(len(values)) < share
    return pa.array(values, mask=mask)
