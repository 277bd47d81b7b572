"""Data drift on 1,000,000 reference and 1,000,000 current rows: driftline against Evidently.

Both sides get the same raw data: 10 numeric and 3 categorical columns, six of them
drifted (a shift, two scale changes, a mixture reweighted, a small location shift on a
skewed column, a new category). Each side runs in a fresh process, one after the other,
so that its time and peak memory are its own:

- driftline: the rows are first loaded into an embedded chDB store (ingest, not timed);
  a fresh process then summarises the raw rows once (reference and live) and runs
  feature and dataset drift from the summaries;
- Evidently 0.7: `Report([DataDriftPreset()])` on the two pandas DataFrames.

It prints both times, the speed ratio (target: at least 100x), each side's peak memory
and, per column, both methods, statistics and verdicts, which must agree.

    python -m bench.drift_vs_evidently [--rows 1000000]
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

import numpy as np

DAY = 86_400
START = 1_780_000_000 // DAY * DAY
NOW = START + 10 * DAY
NUMERIC = [f"x{i}" for i in range(10)]
CATEGORICAL = ["c0", "c1", "c2"]
SCHEMA = {
    "name": "peer",
    "task": "binary",
    "features": [{"name": n, "kind": "numeric"} for n in NUMERIC]
    + [{"name": c, "kind": "categorical"} for c in CATEGORICAL],
}
EVIDENTLY_METHODS = {
    "K-S p_value": "ks",
    "chi-square p_value": "chi2",
    "Z-test p_value": "z",
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensen_shannon",
}


def columns(rows: int, current: bool, seed: int = 7) -> dict[str, np.ndarray]:
    """One side's raw columns; the same seed gives both processes the same data."""
    rng = np.random.default_rng(seed + int(current))
    d = 1.0 if current else 0.0
    bimodal_share = 0.5 + 0.1 * d
    out: dict[str, np.ndarray] = {
        "x0": rng.normal(0, 1, rows),
        "x1": rng.normal(0.25 * d, 1, rows),
        "x2": rng.lognormal(0, 0.6, rows) * (1 + 0.25 * d),
        "x3": rng.uniform(-3, 3, rows),
        "x4": rng.gamma(2.0, 2.0, rows),
        "x5": rng.normal(0, 1 + 0.3 * d, rows),
        "x6": np.where(rng.random(rows) < bimodal_share, rng.normal(-2, 1, rows), rng.normal(2, 1, rows)),
        "x7": rng.standard_t(5, rows),
        "x8": rng.beta(2, 5, rows) + 0.02 * d,
        "x9": rng.exponential(1.0, rows),
    }
    cats5 = np.array(["a", "b", "c", "d", "e"])
    out["c0"] = cats5[rng.integers(0, 5, rows)]
    c1 = np.array(["red", "green", "blue", "violet"])
    out["c1"] = c1[rng.choice(4, rows, p=[0.3, 0.3, 0.3, 0.1] if current else [1 / 3, 1 / 3, 1 / 3, 0.0])]
    weights = np.linspace(1, 2, 20) if current else np.linspace(1, 1.5, 20)
    out["c2"] = np.array([f"k{i:02d}" for i in range(20)])[rng.choice(20, rows, p=weights / weights.sum())]
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model() -> Any:
    from datetime import UTC, datetime

    from driftline.schema import Approval, ModelSchema, Role
    from driftline.storage.meta.records import ModelInfo, VersionInfo

    schema = ModelSchema.model_validate(SCHEMA)
    now = datetime.now(UTC)
    version = VersionInfo(
        1, 1, "default", "peer", "v1", Role.CHAMPION, Approval.APPROVED, None, None, None, [], now, now
    )
    return ModelInfo(1, "default", "peer", schema.task, schema, None, now, now, [version])


def prepare(rows: int, home: Path) -> dict[str, Any]:
    """Load both sides into an embedded store, as ingest would (not part of the comparison)."""
    import pyarrow as pa

    from driftline.ingest.columns import PiiHasher, RowErrors
    from driftline.ingest.records import ArrowSource, build_predictions, build_reference
    from driftline.storage.events import EventStore, Kind
    from driftline.storage.events.chdb_engine import ChdbEngine

    model = _model()
    engine = ChdbEngine(home / "events")
    store = EventStore(engine)
    store.ensure_model("default", model.schema)
    hasher = PiiHasher(b"bench")
    t = time.perf_counter()
    ref = build_reference(
        model.schema, "v1", ArrowSource(pa.table(columns(rows, False))), RowErrors(), now=NOW, hasher=hasher
    )
    store.replace_reference("default", model.schema, "v1", ref.table)
    cur = columns(rows, True)
    live = pa.table(
        {
            "request_id": pa.array(np.char.add("r", np.arange(rows).astype(str))),
            "version": pa.array(np.full(rows, "v1")),
            "timestamp": START + np.arange(rows, dtype=np.int64) * DAY // rows,
            **cur,
        }
    )
    batch = build_predictions(
        model.schema, ["v1"], ArrowSource(live), RowErrors(), now=NOW, max_future=DAY, hasher=hasher
    )
    store.insert(Kind.PREDICTIONS, "default", model.schema, batch.table)
    load = time.perf_counter() - t
    engine.close()
    return {"load_s": load}


def run_driftline(home: Path) -> dict[str, Any]:
    """Summarise the raw rows once, then drift from the summaries: what a detection costs.

    The drift run reads the summaries as the Runner does (the whole reference, its chunks
    and the current window), runs feature and dataset drift and writes the results.
    """
    from driftline.detectors import base
    from driftline.detectors.base import Reference, RunContext
    from driftline.detectors.feature_drift import DatasetDriftConfig, FeatureDriftConfig
    from driftline.detectors.results import MetricsQuery, MetricsTable
    from driftline.detectors.summaries import REFERENCE_CHUNKS, Summarizer
    from driftline.storage.events import EventStore
    from driftline.storage.events.chdb_engine import ChdbEngine

    model = _model()
    schema = model.schema
    engine = ChdbEngine(home / "events")
    store = EventStore(engine)
    summarizer = Summarizer(store)
    metrics = MetricsTable(engine)
    metrics.ensure()
    before = rss_mb()
    t0 = time.perf_counter()
    summarizer.summarize_reference("default", schema, "v1")
    t1 = time.perf_counter()
    summarizer.summarize("default", schema, START, START + DAY, now=NOW)
    t2 = time.perf_counter()
    whole = summarizer.read("default", schema, kind="r", start=0, end=REFERENCE_CHUNKS, step=REFERENCE_CHUNKS)
    chunks = summarizer.read("default", schema, kind="r", start=0, end=REFERENCE_CHUNKS, step=1)
    live = summarizer.read("default", schema, kind="p", start=START, end=START + DAY, step=DAY)
    ctx = RunContext(
        project="default",
        model=model,
        start=START,
        end=START + DAY,
        step=DAY,
        live=live,
        references={"v1": Reference("v1", whole["v1"], chunks["v1"])},
        events=store,
        summarizer=summarizer,
        now=NOW,
    )
    t3 = time.perf_counter()
    results = []
    for config in (FeatureDriftConfig(slices=False), DatasetDriftConfig()):
        results.extend(base.build(config).run(ctx))
    t4 = time.perf_counter()
    metrics.write("default", "peer", results)
    t5 = time.perf_counter()
    peak = peak_mb()
    rows = metrics.read(MetricsQuery(project="default", model="peer"))
    engine.close()
    per_column = {
        r["feature"]: {
            "method": r["metric"],
            "score": r["details"].get("p_value", r["value"]),
            "drift": r["alert"],
        }
        for r in rows
        if r["detector"] == "feature_drift"
    }
    share = next(r["value"] for r in rows if r["detector"] == "dataset_drift")
    return {
        "summarise_reference_s": t1 - t0,
        "summarise_live_s": t2 - t1,
        "read_s": t3 - t2,
        "statistics_s": t4 - t3,
        "write_s": t5 - t4,
        "total_s": t5 - t0,
        "rss_before_mb": before,
        "peak_mb": peak,
        "columns": per_column,
        "share": share,
    }


def run_evidently(rows: int) -> dict[str, Any]:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    ref = pd.DataFrame(columns(rows, False))
    cur = pd.DataFrame(columns(rows, True))
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    before = rss_mb()
    t = time.perf_counter()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    out = snapshot.dict()
    elapsed = time.perf_counter() - t
    peak = peak_mb()
    per_column: dict[str, dict[str, Any]] = {}
    share = float("nan")
    for m in out["metrics"]:
        config = m["config"]
        if config["type"].endswith("ValueDrift"):
            per_column[config["column"]] = {
                "method": EVIDENTLY_METHODS.get(config["method"], config["method"]),
                "score": float(m["value"]),
            }
        elif config["type"].endswith("DriftedColumnsCount"):
            share = float(m["value"]["share"])
    for test in out["tests"]:
        params = test["metric_config"]["params"]
        if params["type"].endswith("ValueDrift"):
            per_column[params["column"]]["drift"] = test["status"] == "FAIL"
    return {
        "total_s": elapsed,
        "rss_before_mb": before,
        "peak_mb": peak,
        "columns": per_column,
        "share": share,
    }


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.drift_vs_evidently", *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows on each side")
    parser.add_argument("--step", choices=["prepare", "driftline", "evidently"], help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "prepare":
        print(json.dumps(prepare(args.rows, Path(args.home))))
        return
    if args.step == "driftline":
        print(json.dumps(run_driftline(Path(args.home))))
        return
    if args.step == "evidently":
        print(json.dumps(run_evidently(args.rows)))
        return

    home = Path(tempfile.mkdtemp(prefix="driftline-peer-"))
    try:
        rows = str(args.rows)
        print(f"{args.rows:,} reference + {args.rows:,} current rows, 10 numeric + 3 categorical columns")
        loaded = _child(["--step", "prepare", "--rows", rows, "--home", str(home)])
        print(f"loading both sides into the embedded store (ingest, not compared): {loaded['load_s']:.1f} s")
        ours = _child(["--step", "driftline", "--rows", rows, "--home", str(home)])
        theirs = _child(["--step", "evidently", "--rows", rows])
    finally:
        shutil.rmtree(home, ignore_errors=True)

    print()
    print(f"{'':<34}{'seconds':>10}{'peak RSS MB':>13}{'RSS before MB':>15}")
    print(
        f"{'driftline (summaries + statistics)':<34}{ours['total_s']:>10.2f}{ours['peak_mb']:>13,.0f}"
        f"{ours['rss_before_mb']:>15,.0f}"
    )
    print(
        f"{'  summarise reference, raw rows':<34}{ours['summarise_reference_s']:>10.2f}\n"
        f"{'  summarise current, raw rows':<34}{ours['summarise_live_s']:>10.2f}\n"
        f"{'  read summaries':<34}{ours['read_s']:>10.2f}\n"
        f"{'  statistics (13 columns)':<34}{ours['statistics_s']:>10.3f}\n"
        f"{'  write results':<34}{ours['write_s']:>10.3f}"
    )
    print(
        f"{'Evidently DataDriftPreset':<34}{theirs['total_s']:>10.2f}{theirs['peak_mb']:>13,.0f}"
        f"{theirs['rss_before_mb']:>15,.0f}"
    )
    print()
    print(
        f"{'column':<8}{'driftline':>16}{'statistic':>12}{'drift':>7}{'Evidently':>16}{'statistic':>12}{'drift':>7}"
    )
    agree = 0
    for col in NUMERIC + CATEGORICAL:
        a, b = ours["columns"][col], theirs["columns"][col]
        agree += a["drift"] == b["drift"]
        mark = "" if a["drift"] == b["drift"] else "  <- differs"
        print(
            f"{col:<8}{a['method']:>16}{a['score']:>12.4f}{a['drift']!s:>7}"
            f"{b['method']:>16}{b['score']:>12.4f}{b['drift']!s:>7}{mark}"
        )
    n = len(NUMERIC) + len(CATEGORICAL)
    print()
    print(f"dataset drift share: driftline {ours['share']:.3f}, Evidently {theirs['share']:.3f}")
    print(f"verdicts agree on {agree} of {n} columns")
    from_summaries = ours["read_s"] + ours["statistics_s"] + ours["write_s"]
    print(
        f"driftline is {theirs['total_s'] / ours['total_s']:.0f}x faster end to end (target: 100x) and peaks at "
        f"{ours['peak_mb'] / theirs['peak_mb']:.2f}x Evidently's memory"
    )
    warm = ours["total_s"] - ours["summarise_reference_s"]
    print(
        f"with the reference summarised at upload (a cached summary), summarising the current rows and "
        f"the drift run take {warm:.2f} s: {theirs['total_s'] / warm:.0f}x faster"
    )
    print(
        f"once the raw rows are summarised (each bucket once, as it closes), a drift run takes "
        f"{from_summaries:.2f} s: {theirs['total_s'] / from_summaries:.0f}x faster"
    )


if __name__ == "__main__":
    main()
