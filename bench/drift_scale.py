"""Drift at scale: summarise raw rows once, then run drift over 30 daily windows from summaries.

For each size (default 10,000,000 then 100,000,000 prediction rows of 20 features over
30 days) a fresh process builds an embedded store, generates the rows inside ClickHouse,
and prints: the time to summarise the raw rows once (rows/s), the time of a drift run
over the 30 daily windows from the summaries, and the process's peak memory. The run's
cost must not grow with raw rows: the two sizes' drift-run times are compared. The peer
of the summarising step is a plain ClickHouse scan of the same columns (sum of every
feature), measured in the same process, so its ratio shows what the summaries cost.

    python -m bench.drift_scale [--sizes 10000000 100000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DAYS = 30
N_NUMERIC, N_CATEGORICAL = 16, 4
START = 1_780_000_000 // 86_400 * 86_400
SCHEMA = {
    "name": "scale",
    "task": "binary",
    "features": [{"name": f"x{i}", "kind": "numeric"} for i in range(N_NUMERIC)]
    + [{"name": f"c{i}", "kind": "categorical"} for i in range(N_CATEGORICAL)],
}


def generate(home: Path, rows: int) -> float:
    """Fill a fresh embedded store with `rows` predictions and a reference, then let merges settle."""
    from driftline.schema import ModelSchema
    from driftline.storage.events import EventStore, Kind
    from driftline.storage.events.chdb_engine import ChdbEngine

    engine = ChdbEngine(home / "events")
    store = EventStore(engine)
    schema = ModelSchema.model_validate(SCHEMA)
    store.ensure_model("default", schema)
    names = store.names("default", "scale")
    drift_from = START + 20 * 86_400
    feats = ", ".join(
        f"randNormal(0, 1) + {0.5 if i < 3 else 0} * (ts >= {drift_from}) AS `f_x{i}`"
        for i in range(N_NUMERIC)
    )
    cats = ", ".join(f"['a','b','c','d'][1 + (rand({i}) % 4)] AS `f_c{i}`" for i in range(N_CATEGORICAL))
    xs = ", ".join(f"`f_x{i}`" for i in range(N_NUMERIC))
    cs = ", ".join(f"`f_c{i}`" for i in range(N_CATEGORICAL))
    t = time.perf_counter()
    step = 10_000_000
    for lo in range(0, rows, step):
        n = min(step, rows - lo)
        engine.execute(
            f"INSERT INTO {names(Kind.PREDICTIONS)} (request_id, version, ts, received, prediction, score, status, {xs}, {cs}) "
            f"SELECT toString(number), 'v1', toDateTime(ts, 'UTC'), toDateTime(ts, 'UTC'), '1', rand() / 4294967295, 'ok', "
            f"{xs}, {cs} FROM (SELECT number, toUInt32({START} + intDiv(number * {DAYS * 86_400}, {rows})) AS ts, "
            f"{feats}, {cats} FROM numbers({lo}, {n}))"
        )
    engine.execute(
        f"INSERT INTO {names(Kind.REFERENCE)} (version, row, request_id, ts, prediction, score, status, {xs}, {cs}) "
        f"SELECT 'v1', number, toString(number), toDateTime({START}, 'UTC'), '1', rand() / 4294967295, 'ok', "
        + ", ".join("randNormal(0, 1)" for _ in range(N_NUMERIC))
        + ", "
        + ", ".join(f"['a','b','c','d'][1 + (rand({i}) % 4)]" for i in range(N_CATEGORICAL))
        + " FROM numbers(100000)"
    )
    engine.execute(f"OPTIMIZE TABLE {names(Kind.PREDICTIONS)} FINAL")
    elapsed = time.perf_counter() - t
    engine.close()
    return elapsed


def one_size(rows: int, home: Path) -> dict[str, Any]:
    """Summarise and detect on a store `generate` filled; run in a fresh process for its peak memory."""
    from datetime import UTC, datetime

    from driftline.detectors import registry
    from driftline.detectors.base import parse_config
    from driftline.detectors.runner import Runner
    from driftline.schema import Approval, ModelSchema, Role
    from driftline.storage.events import EventStore, Kind
    from driftline.storage.events.chdb_engine import ChdbEngine
    from driftline.storage.meta.records import ModelInfo, VersionInfo

    engine = ChdbEngine(home / "events")
    store = EventStore(engine)
    schema = ModelSchema.model_validate(SCHEMA)
    names = store.names("default", "scale")
    cols = ", ".join(f"sum(`f_x{i}`)" for i in range(N_NUMERIC))
    t = time.perf_counter()
    engine.query_columns(f"SELECT {cols}, uniqExact(`f_c0`) FROM {names(Kind.PREDICTIONS)}")
    scan = time.perf_counter() - t
    runner = Runner(store)
    end = START + DAYS * 86_400
    later = START + 40 * 86_400
    t = time.perf_counter()
    buckets = runner.summarizer.summarize("default", schema, START, end, now=later)
    summarise = time.perf_counter() - t
    now = datetime.now(UTC)
    version = VersionInfo(
        0, 0, "default", "scale", "v1", Role.CHAMPION, Approval.APPROVED, None, None, None, [], now, now
    )
    model = ModelInfo(0, "default", "scale", schema.task, schema, None, now, now, [version])
    registry.load_all()
    configs = [parse_config({"kind": k}) for k in ("feature_drift", "dataset_drift")]
    runner.run(
        "default", model, configs, START, end, 86_400, now=later
    )  # the reference is summarised once here
    t = time.perf_counter()
    result = runner.run("default", model, configs, START, end, 86_400, now=later)
    drift = time.perf_counter() - t
    engine.close()
    return {
        "rows": rows,
        "buckets": buckets,
        "summarise_s": summarise,
        "summarise_rows_per_s": rows / summarise,
        "scan_s": scan,
        "drift_run_s": drift,
        "drift_rows_written": result.rows_written,
        "drift_alerts": result.alerts,
        "detectors": [c.kind for c in configs],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        print(json.dumps({"generate_s": generate(args.home, args.generate)}))
        return
    if args.one:
        print(json.dumps(one_size(args.one, args.home)))
        return
    results = []
    for size in args.sizes:
        home = Path(tempfile.mkdtemp(prefix="driftline-scale-"))
        try:
            got: dict[str, Any] = {}
            for step in (["--generate", str(size)], ["--one", str(size)]):
                out = subprocess.run(
                    [sys.executable, "-m", "bench.drift_scale", *step, "--home", str(home)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if out.returncode != 0:
                    raise SystemExit(out.stderr[-3000:])
                got.update(json.loads(out.stdout.strip().splitlines()[-1]))
            results.append(got)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    print(
        f"{'rows':>13}{'summarise s':>13}{'rows/s':>13}{'plain scan s':>14}{'drift run s':>13}{'peak MB':>10}"
    )
    for r in results:
        print(
            f"{r['rows']:>13,}{r['summarise_s']:>13.2f}{r['summarise_rows_per_s']:>13,.0f}{r['scan_s']:>14.2f}"
            f"{r['drift_run_s']:>13.2f}{r['peak_rss_mb']:>10,.0f}"
        )
    print()
    print(f"detectors: {results[0]['detectors']}; results per run: {results[0]['drift_rows_written']}")
    print(
        "targets: summarise >= 2,000,000 rows/s; drift run < 5 s and within 2x across sizes; peak < 2,048 MB"
    )
    if len(results) > 1:
        print(
            f"drift run, largest / smallest size: {results[-1]['drift_run_s'] / results[0]['drift_run_s']:.2f}x"
        )
    for r in results:
        print(f"{r['rows']:,} rows: summarising costs {r['summarise_s'] / r['scan_s']:.1f}x a plain scan")


if __name__ == "__main__":
    main()
