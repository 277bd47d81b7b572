"""The demo: a real scikit-learn model, a reference, and weeks of traffic that go wrong.

The model is trained at start on generated loan applications (a known label
function), so its predictions are real. The replayed traffic covers the last `days`
days; from `drift_day` on the applicants' amounts grow, a new country appears, the
`partner` channel's behaviour changes (its slice degrades and calibration slips), a
feature-store dependency gets slow for a few hours and fails for a while. Labels arrive
`label_delay_days` late, so the last days only have estimated performance. A shadow
version scores part of the same requests, for version comparison.

Everything goes through the public API with the Python client, as a serving system's
would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

MODEL = "loan_default"
COUNTRIES = ["FR", "DE", "ES", "IT", "US"]
DEVICES = ["ios", "android", "web"]
CHANNELS = ["web", "app", "partner"]

SCHEMA: dict[str, Any] = {
    "name": MODEL,
    "task": "binary",
    "owner": "credit-risk",
    "description": "Probability that a loan applicant defaults within 12 months.",
    "features": [
        {"name": "amount", "kind": "numeric", "range": [0, 100000], "nullable": False, "important": True},
        {"name": "income", "kind": "numeric", "range": [0, 1000000]},
        {"name": "age", "kind": "numeric", "range": [18, 100]},
        {"name": "tenure_months", "kind": "numeric"},
        {"name": "country", "kind": "categorical", "categories": COUNTRIES},
        {"name": "device", "kind": "categorical"},
        {"name": "has_card", "kind": "boolean"},
        {"name": "email", "kind": "categorical", "pii": "hash"},
    ],
    "metadata": [{"name": "channel"}, {"name": "region"}],
    "label": {"positive": 1},
}


@dataclass(frozen=True)
class Scenario:
    days: int = 28
    per_day: int = 2000
    drift_day: int = 16
    label_delay_days: int = 3
    label_coverage: float = 0.9
    shadow_share: float = 0.3
    seed: int = 7


def applicants(
    rng: np.random.Generator, n: int, *, drifted: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Feature columns; rows flagged in `drifted` come from the shifted population."""
    drifted = np.zeros(n, dtype=bool) if drifted is None else drifted
    amount = rng.lognormal(np.log(4000), 0.6, n) * np.where(drifted, 1.6, 1.0)
    country_p = np.array([0.3, 0.25, 0.15, 0.15, 0.15])
    country = rng.choice(COUNTRIES, n, p=country_p).astype(object)
    new = drifted & (rng.random(n) < 0.12)
    country[new] = "BR"
    return {
        "amount": np.round(np.clip(amount, 100, 95000), 2),
        "income": np.round(rng.lognormal(np.log(38000), 0.45, n), 0),
        "age": np.clip(rng.normal(41, 12, n), 18, 95).round(),
        "tenure_months": np.round(rng.exponential(30, n)),
        "country": country,
        "device": rng.choice(DEVICES, n, p=[0.4, 0.35, 0.25]),
        "has_card": rng.random(n) < 0.6,
        "channel": rng.choice(CHANNELS, n, p=[0.5, 0.35, 0.15]),
        "region": rng.choice(["eu", "us"], n, p=[0.8, 0.2]),
    }


def true_logit(x: dict[str, np.ndarray], *, changed: np.ndarray | None = None) -> np.ndarray:
    """The behaviour labels follow; `changed` rows (partner channel after the drift) default more."""
    logit = (
        -0.9
        + 1.8 * np.log(x["amount"] / 4000)
        - 1.6 * np.log(x["income"] / 38000)
        - 0.04 * (x["age"] - 41)
        - 0.02 * x["tenure_months"]
        + 0.6 * (x["device"] == "web")
        + 0.5 * (x["country"] == "US")
        - 0.7 * x["has_card"]
    )
    if changed is not None:
        logit = logit + 1.6 * changed
    return np.asarray(logit, dtype=np.float64)


def _design(x: dict[str, np.ndarray]) -> Any:
    import pandas as pd

    return pd.DataFrame(
        {k: x[k] for k in ("amount", "income", "age", "tenure_months", "country", "device", "has_card")}
    )


def train(rng: np.random.Generator, n: int = 20_000, *, c: float = 1.0) -> Any:
    """A logistic regression pipeline on one-hot categoricals and log amounts, fitted now."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    x = applicants(rng, n)
    y = rng.random(n) < 1 / (1 + np.exp(-true_logit(x)))
    numeric = make_pipeline(FunctionTransformer(np.log1p), StandardScaler())
    prep = ColumnTransformer(
        [
            ("num", numeric, ["amount", "income", "tenure_months"]),
            ("age", StandardScaler(), ["age"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["country", "device"]),
            ("card", "passthrough", ["has_card"]),
        ]
    )
    model = make_pipeline(prep, LogisticRegression(C=c, max_iter=500))
    model.fit(_design(x), y)
    return model


def reference(rng: np.random.Generator, model: Any, n: int = 5000) -> pa.Table:
    """Held-out applicants with the model's scores and their true outcomes."""
    x = applicants(rng, n)
    score = model.predict_proba(_design(x))[:, 1]
    y = rng.random(n) < 1 / (1 + np.exp(-true_logit(x)))
    return pa.table(
        {
            **{k: v for k, v in x.items() if k not in ("channel", "region")},
            "channel": x["channel"],
            "region": x["region"],
            "email": [f"user{i % 997}@example.com" for i in range(n)],
            "score": score,
            "prediction": np.where(score >= 0.5, "1", "0"),
            "label": np.where(y, "1", "0"),
        }
    )


@dataclass
class Traffic:
    predictions: pa.Table
    shadow: pa.Table
    labels: pa.Table
    feedback: pa.Table
    start: int
    end: int


def traffic(rng: np.random.Generator, champion: Any, shadow: Any, scenario: Scenario, now: float) -> Traffic:
    """Weeks of scored requests ending now, with what goes wrong and when."""
    days = scenario.days
    end = int(now) // 3600 * 3600
    # traffic starts at a midnight (UTC), so the first daily window is a whole day, and runs
    # until now: today's window is the live one, part-way through like in production
    start = -(-(end - days * 86_400) // 86_400) * 86_400
    n = days * scenario.per_day
    # a daily cycle: more traffic in the day than at night
    hours = rng.choice(24, n, p=np.r_[np.full(7, 0.015), np.full(12, 0.06), np.full(5, 0.035)] / 1.0)
    day = np.sort(rng.integers(0, days, n))
    ts = start + day * 86_400 + hours * 3600 + rng.integers(0, 3600, n)
    future = ts >= end
    hours, day, ts = hours[~future], day[~future], ts[~future]
    n = len(ts)
    drifted = day >= scenario.drift_day
    x = applicants(rng, n, drifted=drifted)
    changed = drifted & (x["channel"] == "partner")
    design = _design(x)
    score = champion.predict_proba(design)[:, 1]
    y = rng.random(n) < 1 / (1 + np.exp(-true_logit(x, changed=changed)))
    latency_ms = rng.gamma(4, 5, n)
    store_ms = rng.gamma(3, 1.5, n)
    slow = (day == scenario.drift_day + 3) & (hours >= 9) & (hours < 14)
    store_ms[slow] *= 12
    status = np.full(n, "ok", dtype=object)
    error = np.full(n, None, dtype=object)
    failing = (day == scenario.drift_day + 5) & (hours >= 10) & (hours < 12) & (rng.random(n) < 0.4)
    status[failing] = np.where(rng.random(int(failing.sum())) < 0.5, "error", "timeout")
    error[failing] = "feature_store"
    ids = np.array([f"req-{i:07d}" for i in range(n)])
    preds = pa.table(
        {
            "request_id": ids,
            "version": ["v1"] * n,
            "timestamp": pa.array(ts, pa.int64()).cast(pa.timestamp("s")),
            **{k: v for k, v in x.items()},
            "email": [f"user{i % 997}@example.com" for i in range(n)],
            "score": score,
            "prediction": np.where(score >= 0.5, "1", "0"),
            "latency_ms": latency_ms + store_ms,
            "timing_feature_store": store_ms,
            "timing_inference": latency_ms,
            "status": status,
            "error": error,
        }
    )
    share = rng.random(n) < scenario.shadow_share
    shadow_score = shadow.predict_proba(design[share])[:, 1]
    shadow_tbl = preds.filter(pa.array(share)).set_column(1, "version", pa.array(["v2"] * int(share.sum())))
    shadow_tbl = shadow_tbl.set_column(
        shadow_tbl.column_names.index("score"), "score", pa.array(shadow_score)
    )
    shadow_tbl = shadow_tbl.set_column(
        shadow_tbl.column_names.index("prediction"),
        "prediction",
        pa.array(np.where(shadow_score >= 0.5, "1", "0")),
    )
    labelled = (ts < end - scenario.label_delay_days * 86_400) & (rng.random(n) < scenario.label_coverage)
    label_ts = ts[labelled] + scenario.label_delay_days * 86_400
    labels = pa.table(
        {
            "request_id": ids[labelled],
            "label": np.where(y[labelled], "1", "0"),
            "timestamp": pa.array(label_ts, pa.int64()).cast(pa.timestamp("s")),
        }
    )
    reviewed = labelled & (rng.random(n) < 0.05)
    agree = (score[reviewed] >= 0.5) == y[reviewed]
    feedback = pa.table(
        {
            "request_id": ids[reviewed],
            "outcome": np.where(agree, "accepted", "overridden"),
            "reviewer": rng.choice(["ana", "ben", "chen"], int(reviewed.sum())),
            "label": np.where(y[reviewed], "1", "0"),
            "timestamp": pa.array(ts[reviewed] + 86_400, pa.int64()).cast(pa.timestamp("s")),
        }
    )
    return Traffic(preds, shadow_tbl, labels, feedback, start, end)


def load(
    url: str,
    key: str,
    scenario: Scenario | None = None,
    *,
    detect: bool = True,
    setup: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train, register, replay and detect against a running API; returns what was loaded.

    `setup` runs once the model is registered and before traffic arrives (e.g. to add a
    retraining policy), so that detection sees it.
    """
    from driftline.client import Driftline

    scenario = scenario or Scenario()
    rng = np.random.default_rng(scenario.seed)
    began = time.perf_counter()
    champion = train(rng)
    shadow = train(rng, 40_000, c=0.3)
    client = Driftline(url, key)
    try:
        client.register_model(SCHEMA)
        client.register_version(
            MODEL,
            "v1",
            role="champion",
            approval="approved",
            data_version="2026-09",
            training_config_uri="s3://models/loan_default/v1/config.yaml",
            eval_report_uri="s3://models/loan_default/v1/eval.html",
        )
        client.register_version(MODEL, "v2", role="shadow", approval="pending", data_version="2026-10")
        if setup is not None:
            setup(MODEL)
        ref = reference(rng, champion)
        client.upload_reference(MODEL, "v1", ref)
        shadow_ref = ref.set_column(
            ref.column_names.index("score"),
            "score",
            pa.array(
                shadow.predict_proba(
                    _design(
                        {
                            k: ref.column(k).to_numpy(zero_copy_only=False)
                            for k in (
                                "amount",
                                "income",
                                "age",
                                "tenure_months",
                                "country",
                                "device",
                                "has_card",
                            )
                        }
                    )
                )[:, 1]
            ),
        )
        client.upload_reference(MODEL, "v2", shadow_ref)
        t = traffic(rng, champion, shadow, scenario, time.time())
        client.ingest_table(MODEL, t.predictions)
        client.ingest_table(MODEL, t.shadow)
        client.ingest_table(MODEL, t.labels, kind="labels")
        client.ingest_table(MODEL, t.feedback, kind="feedback")
        client.server_flush(120)
        result: dict[str, Any] = {
            "model": MODEL,
            "predictions": t.predictions.num_rows + t.shadow.num_rows,
            "labels": t.labels.num_rows,
            "feedback": t.feedback.num_rows,
            "start": t.start,
            "end": t.end,
        }
        if detect:
            # closed days only, as the scheduler detects: the day in progress may hold a few
            # night-time rows yet, too few to judge (the scheduler takes it when it closes)
            got = client._json(
                "POST",
                f"/v1/models/{MODEL}/detect",
                json={"start": t.start, "end": t.end // 86_400 * 86_400, "window": "1d"},
                timeout=600,
            )
            result["detection"] = got
        result["seconds"] = round(time.perf_counter() - began, 1)
        return result
    finally:
        client.close()
