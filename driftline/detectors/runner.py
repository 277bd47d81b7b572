"""A detection run: summarise what is new, read windows and references, run detectors, store results."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from driftline.detectors import base
from driftline.detectors.base import DetectorConfig, MetricRow, Reference, RunContext
from driftline.detectors.perf_summaries import PerfSummarizer
from driftline.detectors.results import MetricsTable
from driftline.detectors.summaries import REFERENCE_CHUNKS, Summarizer
from driftline.storage.events import EventStore
from driftline.storage.meta.records import ModelInfo

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    start: int
    end: int
    step: int
    windows: int
    versions: list[str]
    buckets_summarised: int
    rows_written: int
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    alerts: int = 0


def align(start: int, end: int, step: int) -> tuple[int, int]:
    """Windows start on multiples of their length (whole hours, UTC days)."""
    lo = start // step * step
    hi = -(-end // step) * step
    return lo, hi


class Runner:
    def __init__(self, events: EventStore, metrics: MetricsTable | None = None) -> None:
        self.events = events
        self.summarizer = Summarizer(events)
        self.perf = PerfSummarizer(events)
        self.metrics = metrics or MetricsTable(events.engine)

    def context(
        self, project: str, model: ModelInfo, start: int, end: int, step: int, *, now: float | None = None
    ) -> tuple[RunContext, int]:
        now = time.time() if now is None else now
        schema = model.schema
        start, end = align(start, end, step)
        references: dict[str, Reference] = {}
        for v in model.versions:
            if self.summarizer.summarize_reference(project, schema, v.version):
                whole = self.summarizer.read(
                    project,
                    schema,
                    kind="r",
                    start=0,
                    end=REFERENCE_CHUNKS,
                    step=REFERENCE_CHUNKS,
                    versions=[v.version],
                )
                chunks = self.summarizer.read(
                    project, schema, kind="r", start=0, end=REFERENCE_CHUNKS, step=1, versions=[v.version]
                )
                if v.version in whole:
                    references[v.version] = Reference(v.version, whole[v.version], chunks[v.version])
        # references first: they tell which numeric features are discrete, which live summaries count by value
        buckets = self.summarizer.summarize(project, schema, start, end, now=now)
        live = self.summarizer.read(project, schema, kind="p", start=start, end=end, step=step)
        buckets += self.perf.summarize(project, schema, start, end, now=now)
        labelled = {
            v.version for v in model.versions if self.perf.summarize_reference(project, schema, v.version)
        }
        ctx = RunContext(
            project=project,
            model=model,
            start=start,
            end=end,
            step=step,
            live=live,
            references=references,
            events=self.events,
            summarizer=self.summarizer,
            now=now,
            perf=self.perf,
            labelled_references=labelled,
        )
        return ctx, buckets

    def run(
        self,
        project: str,
        model: ModelInfo,
        configs: Sequence[DetectorConfig],
        start: int,
        end: int,
        step: int,
        *,
        now: float | None = None,
    ) -> RunResult:
        began = time.perf_counter()
        ctx, buckets = self.context(project, model, start, end, step, now=now)
        rows: list[MetricRow] = []
        errors: list[str] = []
        for config in configs:
            try:
                rows.extend(base.build(config).run(ctx))
            except Exception as exc:  # a failing detector leaves an error result, the others run on
                log.exception(
                    "detector %s failed", config.kind, extra={"model": model.name, "project": project}
                )
                errors.append(f"{config.kind}: {type(exc).__name__}: {exc}")
                rows.extend(base.error_rows(config, ctx, exc))
        written = self.metrics.write(project, model.name, rows)
        return RunResult(
            start=ctx.start,
            end=ctx.end,
            step=step,
            windows=(ctx.end - ctx.start) // step,
            versions=ctx.versions,
            buckets_summarised=buckets,
            rows_written=written,
            errors=errors,
            seconds=time.perf_counter() - began,
            alerts=sum(1 for r in rows if r.alert),
        )
