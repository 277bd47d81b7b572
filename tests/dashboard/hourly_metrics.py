"""Fill a stopped server's store with 90 days of hourly metric rows for one model.

Real detection of every hourly window of 90 days takes about twenty minutes here, so the
page-speed test detects two daily windows for real and repeats their rows (every family,
version, feature and slice, with their details) over each hour of the range. It runs in a
process of its own because the embedded store admits one process: the server is stopped
while this writes, and started again on the same home to serve the rows.

    python -m tests.dashboard.hourly_metrics MODEL END_EPOCH DAYS   (DRIFTLINE_HOME set)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from driftline.config import get_settings
from driftline.detectors.base import MetricRow
from driftline.detectors.results import MetricsQuery, MetricsTable
from driftline.storage.events import make_engine

HOUR = 3600
DRIFTING = {"feature_drift", "prediction_drift", "dataset_drift"}


def templates(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the newest complete daily window (the newest one may be partial)."""
    daily = [r for r in rows if int(r["window_end"]) - int(r["window_start"]) == 86_400]
    starts = sorted({int(r["window_start"]) for r in daily})
    if not starts:
        raise SystemExit("no daily windows detected to copy")
    chosen = starts[-2] if len(starts) > 1 else starts[-1]
    return [r for r in daily if int(r["window_start"]) == chosen]


def hourly(template: list[dict[str, Any]], end: int, hours: int, drift_after: int) -> Iterator[MetricRow]:
    rng = np.random.default_rng(1)
    start = end - hours * HOUR
    for h in range(hours):
        lo = start + h * HOUR
        drifted = h >= drift_after
        for t in template:
            value = t["value"]
            alert = bool(t["alert"])
            if value is not None and t["status"] == "ok":
                if t["detector"] in DRIFTING and not drifted:
                    value, alert = float(value) * rng.uniform(0.05, 0.3), False
                else:
                    value = float(value) * rng.uniform(0.9, 1.1)
            yield MetricRow(
                version=str(t["version"]),
                detector=str(t["detector"]),
                detector_id=str(t["detector_id"]),
                metric=str(t["metric"]),
                window_start=lo,
                window_end=lo + HOUR,
                value=value,
                feature=str(t["feature"]),
                slice=str(t["slice"]),
                threshold=t["threshold"],
                alert=alert,
                sample_size=max(1, int(t["sample_size"]) // 24),
                status=str(t["status"]),
                details=t["details"],
            )


def main(argv: list[str]) -> int:
    model, end, days = argv[0], int(argv[1]), int(argv[2])
    engine = make_engine(get_settings())
    try:
        table = MetricsTable(engine)
        template = templates(table.read(MetricsQuery(project="default", model=model)))
        hours = days * 24
        batch: list[MetricRow] = []
        written = 0
        for row in hourly(template, end, hours, drift_after=hours * 2 // 3):
            batch.append(row)
            if len(batch) >= 50_000:
                written += table.write("default", model, batch)
                batch = []
        written += table.write("default", model, batch)
        print(f"{written} hourly rows from {len(template)} per window over {hours} windows")
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
