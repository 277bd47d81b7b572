"""The dashboard's requests against a model with 90 days of hourly windows, timed over HTTP.

A prepare step, in a process of its own (the embedded store admits one process), registers
the demo model through the API, uploads its reference, logs a week of its traffic (the
demo's generator, a real scikit-learn model) and runs real detection over that week, so
distributions read real summaries. It then writes 90 days x 24 hourly windows of results
of every family, for the champion and the shadow, through MetricsTable: the rows and
details a monitor with hourly windows leaves behind (about 170 per version and window,
700,000 in all), and lets the alert rules evaluate the newest windows. The real API then
starts on that store, without its scheduler, and every request a page makes is timed
(median of 5 after a warm-up). A page's figure is the sum of its requests, made one after
another; the budget is 2 seconds per page.

    python -m bench.dashboard_queries [--days 90] [--clickhouse URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench._server import Server

MODEL = "loan_default"
HOUR = 3600
DAY = 86_400
BUDGET_SECONDS = 2.0
SLICES = ["", "channel=web", "channel=app", "channel=partner", "region=eu", "region=us"]
NUMERIC = ["amount", "income", "age", "tenure_months"]
CATEGORICAL = ["country", "device", "has_card", "email"]
CLASSIFICATION = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier")


def synthetic_rows(days: int, end: int, version: str, seed: int) -> list[Any]:
    """Hourly results of every family over `days`, shaped as the detectors shape them."""
    from driftline.detectors.base import MetricRow

    rng = np.random.default_rng(seed)
    out: list[MetricRow] = []
    start = end - days * DAY
    drift_from = end - days * DAY // 3

    def row(detector: str, metric: str, lo: int, value: float | None, **kw: Any) -> None:
        status = "ok" if value is not None else "no_data"
        out.append(
            MetricRow(
                version=version,
                detector=detector,
                detector_id=detector[:4] + "00000000",
                metric=metric,
                window_start=lo,
                window_end=lo + HOUR,
                value=value,
                status=status,
                **kw,
            )
        )

    for lo in range(start, end, HOUR):
        drifting = lo >= drift_from
        n = int(rng.integers(40, 120))
        for feature in NUMERIC + CATEGORICAL:
            method = "wasserstein" if feature in NUMERIC else "jensenshannon"
            for sl in SLICES:
                v = float(rng.gamma(2, 0.03) + (0.2 if drifting and feature == "amount" else 0.0))
                row(
                    "feature_drift",
                    method,
                    lo,
                    v,
                    feature=feature,
                    slice=sl,
                    threshold=0.1,
                    alert=v > 0.1,
                    sample_size=n if not sl else n // 3,
                    details={
                        "method": method,
                        "strategy": "fixed",
                        "reference_version": "v1",
                        "reference_slice": sl,
                        "statistic": v,
                        "reference_size": 5000,
                        "current_size": n,
                        "threshold_on": "statistic",
                        "drift_adjusted": v > 0.12,
                    },
                )
        for column, method in (("@score", "wasserstein"), ("@prediction", "jensenshannon")):
            for sl in SLICES:
                v = float(rng.gamma(2, 0.03))
                row(
                    "prediction_drift",
                    method,
                    lo,
                    v,
                    feature=column,
                    slice=sl,
                    threshold=0.1,
                    alert=v > 0.1,
                    sample_size=n,
                    details={"method": method, "statistic": v, "drift_adjusted": v > 0.12},
                )
        share = 0.125 if drifting else 0.0
        row(
            "dataset_drift",
            "drift_share",
            lo,
            share,
            threshold=0.5,
            sample_size=n,
            details={"features": 8, "drifted": ["amount"] if drifting else [], "methods": {"wasserstein": 4}},
        )
        for feature in NUMERIC + CATEGORICAL:
            for metric in ("missing_rate", "out_of_range_rate", "outlier_rate", "unseen_category_rate"):
                row(
                    "data_quality",
                    metric,
                    lo,
                    float(rng.random() * 0.01),
                    feature=feature,
                    threshold=0.05,
                    sample_size=n,
                    details={"reference_rate": 0.001, "margin": 0.05},
                )
        for metric, value in (
            ("throughput", n / HOUR),
            ("latency_p50", float(rng.normal(25, 2))),
            ("latency_p95", float(rng.normal(60, 5))),
            ("latency_p99", float(rng.normal(90, 8))),
            ("error_rate", float(rng.random() * 0.01)),
            ("timeout_rate", float(rng.random() * 0.005)),
            ("volume", float(n)),
            ("freshness", float(rng.integers(1, 120))),
        ):
            row("operations", metric, lo, value, sample_size=n, details={"rows": n, "expected": 80.0})
        labelled = lo < end - 3 * DAY
        for metric in CLASSIFICATION:
            value = float(rng.normal(0.8, 0.03)) if labelled else None
            row(
                "performance",
                metric,
                lo,
                value,
                threshold=0.7 if labelled else None,
                sample_size=int(n * 0.9) if labelled else 0,
                details={"labelled": int(n * 0.9), "reference": {"version": "v1", "value": 0.8}}
                if labelled
                else {"reason": "3 labelled rows, fewer than min_labels=30"},
            )
        row("performance", "label_coverage", lo, 0.9 if labelled else 0.0, details={"labelled": n, "rows": n})
        for metric in ("accuracy", "precision", "recall", "f1", "roc_auc"):
            v = float(rng.normal(0.8, 0.02))
            row(
                "estimated_performance",
                metric,
                lo,
                v,
                threshold=0.72,
                sample_size=n,
                details={"reference": 0.8},
            )
            row("blended_performance", metric, lo, v, sample_size=n, details={"reference": 0.8})
        for metric in ("ece", "mce", "brier"):
            row("calibration", metric, lo, float(rng.random() * 0.05), threshold=0.05, sample_size=n)
        for sl in SLICES[1:]:
            for metric in CLASSIFICATION:
                v = float(rng.normal(0.78, 0.05)) if labelled else None
                row(
                    "slice_performance",
                    metric,
                    lo,
                    v,
                    slice=sl,
                    sample_size=n // 3,
                    details={"interval": [0.7, 0.86], "overall": 0.8} if labelled else {"reason": "too few"},
                )
        row("label_drift", "label_drift", lo, float(rng.random() * 0.05) if labelled else None)
        row("concept_drift", "concept_drift", lo, float(rng.normal(0, 0.01)) if labelled else None)
    return out


def prepare(home: Path, key: str, days: int, clickhouse: str | None) -> dict[str, Any]:
    """Fill the store (this process must exit before the API opens an embedded store)."""
    from fastapi.testclient import TestClient

    from driftline import demo
    from driftline.config import Settings
    from driftline.detectors.runner import RunResult
    from driftline.ingest.app import create_app
    from driftline.ingest.state import AppState

    values: dict[str, Any] = {
        "home": home,
        "bootstrap_key": key,
        "scheduler_enabled": False,
        "log_level": "WARNING",
    }
    if clickhouse:
        values["clickhouse_url"] = clickhouse
    settings = Settings(**values)
    end = int(time.time()) // HOUR * HOUR
    began = time.perf_counter()
    with TestClient(create_app(settings)) as api:
        api.headers["Authorization"] = f"Bearer {key}"

        def ok(r: httpx.Response) -> Any:
            assert r.status_code < 300, r.text
            return r.json() if r.content else None

        rng = np.random.default_rng(7)
        champion = demo.train(rng, 5000)
        ok(api.post("/v1/models", json=demo.SCHEMA))
        ok(
            api.post(
                f"/v1/models/{MODEL}/versions",
                json={"version": "v1", "role": "champion", "approval": "approved"},
            )
        )
        ok(api.post(f"/v1/models/{MODEL}/versions", json={"version": "v2", "role": "shadow"}))
        import io

        import pyarrow.parquet as pq

        def parquet(table: Any) -> bytes:
            buf = io.BytesIO()
            pq.write_table(table, buf)
            return buf.getvalue()

        media = {"Content-Type": "application/vnd.apache.parquet"}
        ref = demo.reference(rng, champion, 5000)
        ok(api.put(f"/v1/models/{MODEL}/versions/v1/reference", content=parquet(ref), headers=media))
        week = demo.traffic(rng, champion, champion, demo.Scenario(days=7, per_day=3000, drift_day=3), end)
        ok(api.post(f"/v1/predictions?model={MODEL}", content=parquet(week.predictions), headers=media))
        ok(api.post("/v1/flush", params={"timeout": 120}))
        monitor = {"window": "1d", "detectors": [{"kind": "data_quality"}]}
        ok(api.put(f"/v1/models/{MODEL}/monitors", json=monitor))
        ok(api.post(f"/v1/models/{MODEL}/detect", json={"start": week.start, "end": week.end}))
        raw_seconds = time.perf_counter() - began

        state: AppState = api.app.state.driftline  # type: ignore[attr-defined]
        t = time.perf_counter()
        written = 0
        for version, seed in (("v1", 1), ("v2", 2)):
            rows = synthetic_rows(days, end, version, seed)
            for i in range(0, len(rows), 100_000):
                written += state.runner.metrics.write("default", MODEL, rows[i : i + 100_000])
        write_seconds = time.perf_counter() - t
        result = RunResult(
            start=end - 2 * DAY,
            end=end,
            step=HOUR,
            windows=48,
            versions=["v1", "v2"],
            buckets_summarised=0,
            rows_written=0,
        )
        state.alerts.after_run("default", MODEL, result)
    return {
        "end": end,
        "metric_rows": written,
        "raw_predictions": week.predictions.num_rows,
        "prepare_raw_seconds": round(raw_seconds, 1),
        "write_metrics_seconds": round(write_seconds, 1),
    }


def requests_by_page(end: int, days: int) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    """(label, path, params) of each page, as the dashboard asks for them."""
    start = end - days * DAY
    span = {"start": start, "end": end}
    m = f"/v1/models/{MODEL}"
    return {
        "overview": [
            ("overview", "/v1/overview", {}),
            ("readiness v1", f"{m}/versions/v1/readiness", {}),
        ],
        "drift": [
            (
                "heatmap: feature_drift, all features, v1, 1h, no details",
                f"{m}/metrics",
                {
                    **span,
                    "detector": "feature_drift",
                    "version": "v1",
                    "slice": "",
                    "window": "1h",
                    "details": "false",
                    "limit": 100_000,
                },
            ),
            (
                "history of one feature, with details",
                f"{m}/metrics",
                {
                    **span,
                    "detector": "feature_drift",
                    "feature": "amount",
                    "version": "v1",
                    "slice": "",
                    "window": "1h",
                },
            ),
            (
                "dataset drift share",
                f"{m}/metrics",
                {
                    **span,
                    "detector": "dataset_drift",
                    "version": "v1",
                    "slice": "",
                    "window": "1h",
                    "details": "false",
                },
            ),
            (
                "prediction drift",
                f"{m}/metrics",
                {
                    **span,
                    "detector": "prediction_drift",
                    "version": "v1",
                    "slice": "",
                    "window": "1h",
                    "details": "false",
                },
            ),
            (
                "data quality, last 7 days",
                f"{m}/metrics",
                {
                    "start": end - 7 * DAY,
                    "end": end,
                    "detector": "data_quality",
                    "version": "v1",
                    "window": "1h",
                    "details": "false",
                    "limit": 100_000,
                },
            ),
            (
                "distribution of amount, last day",
                f"{m}/distributions",
                {"feature": "amount", "start": end - DAY, "end": end},
            ),
            (
                "distribution of country, last day",
                f"{m}/distributions",
                {"feature": "country", "start": end - DAY, "end": end},
            ),
        ],
        "performance": [
            (
                "realised, estimated, blended roc_auc",
                f"{m}/metrics",
                {
                    **span,
                    "detector": "performance,estimated_performance,blended_performance",
                    "metric": "roc_auc",
                    "version": "v1",
                    "window": "1h",
                },
            ),
            (
                "label coverage",
                f"{m}/metrics",
                {
                    **span,
                    "detector": "performance",
                    "metric": "label_coverage",
                    "version": "v1",
                    "window": "1h",
                    "details": "false",
                },
            ),
            (
                "calibration",
                f"{m}/metrics",
                {**span, "detector": "calibration", "version": "v1", "window": "1h", "details": "false"},
            ),
            (
                "slices, last 7 days",
                f"{m}/metrics",
                {
                    "start": end - 7 * DAY,
                    "end": end,
                    "detector": "slice_performance",
                    "version": "v1",
                    "window": "1h",
                },
            ),
        ],
        "operations": [
            (
                "operations, both versions",
                f"{m}/metrics",
                {
                    **span,
                    "detector": "operations",
                    "slice": "",
                    "window": "1h",
                    "details": "false",
                    "limit": 100_000,
                },
            ),
        ],
        "alerts": [
            ("alerts", "/v1/alerts", {"state": "all"}),
            ("triggers", "/v1/triggers", {}),
            ("dead notifications", "/v1/outbox", {"state": "dead"}),
        ],
    }


def measure(server: Server, end: int, days: int, repeat: int) -> dict[str, Any]:
    pages: dict[str, Any] = {}
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as client:
        for page, requests in requests_by_page(end, days).items():
            timings = []
            for label, path, params in requests:
                client.get(path, params=params).raise_for_status()  # warm-up
                seconds = []
                size = items = 0
                for _ in range(repeat):
                    t = time.perf_counter()
                    r = client.get(path, params=params)
                    seconds.append(time.perf_counter() - t)
                    r.raise_for_status()
                    size = len(r.content)
                    body = r.json()
                    items = (
                        len(body["items"])
                        if isinstance(body, dict) and "items" in body
                        else (len(body) if isinstance(body, list) else 1)
                    )
                timings.append(
                    {
                        "request": label,
                        "ms": round(statistics.median(seconds) * 1000, 1),
                        "items": items,
                        "kb": round(size / 1024),
                    }
                )
            total = sum(t["ms"] for t in timings) / 1000
            pages[page] = {
                "requests": timings,
                "seconds": round(total, 3),
                "within_budget": total < BUDGET_SECONDS,
            }
    # the heatmap with details, for comparison with details=false
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as client:
        params = requests_by_page(end, days)["drift"][0][2] | {"details": "true"}
        client.get(f"/v1/models/{MODEL}/metrics", params=params).raise_for_status()
        t = time.perf_counter()
        r = client.get(f"/v1/models/{MODEL}/metrics", params=params)
        pages["drift"]["heatmap_with_details_ms"] = round((time.perf_counter() - t) * 1000, 1)
        pages["drift"]["heatmap_with_details_kb"] = round(len(r.content) / 1024)
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--clickhouse", help="a ClickHouse server URL (clickhouse://host:9000/db); default: chDB"
    )
    parser.add_argument("--step", choices=["prepare"], help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "prepare":
        print(json.dumps(prepare(Path(args.home), args.key, args.days, args.clickhouse)))
        return
    env = {"DRIFTLINE_SCHEDULER_ENABLED": "false"}
    if args.clickhouse:
        env["DRIFTLINE_CLICKHOUSE_URL"] = args.clickhouse
    server = Server(env)
    command = [
        sys.executable,
        "-m",
        "bench.dashboard_queries",
        "--step",
        "prepare",
        "--home",
        str(server.home),
    ]
    command += ["--key", server.key, "--days", str(args.days)]
    if args.clickhouse:
        command += ["--clickhouse", args.clickhouse]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    prepared = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"store: {'ClickHouse server' if args.clickhouse else 'chDB (embedded)'}; {json.dumps(prepared)}")
    with server:
        pages = measure(server, prepared["end"], args.days, args.repeat)
    for page, got in pages.items():
        verdict = "ok" if got["within_budget"] else "OVER BUDGET"
        print(
            f"\n{page}: {got['seconds'] * 1000:.0f} ms in {len(got['requests'])} requests ({verdict}, budget {BUDGET_SECONDS:.0f} s)"
        )
        for t in got["requests"]:
            print(f"  {t['ms']:8.1f} ms  {t['items']:7d} items  {t['kb']:6d} KB  {t['request']}")
        if "heatmap_with_details_ms" in got:
            print(
                f"  (the heatmap with details: {got['heatmap_with_details_ms']:.0f} ms, "
                f"{got['heatmap_with_details_kb']} KB)"
            )


if __name__ == "__main__":
    main()
