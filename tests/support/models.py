"""Model schemas and records the tests use, generated from a seeded RNG."""

from __future__ import annotations

from typing import Any

import numpy as np

FRAUD: dict[str, Any] = {
    "name": "fraud",
    "task": "binary",
    "features": [
        {"name": "amount", "kind": "numeric", "range": [0, 10000], "nullable": False},
        {"name": "age", "kind": "numeric"},
        {"name": "country", "kind": "categorical", "categories": ["FR", "DE", "US"]},
        {"name": "vip", "kind": "boolean"},
        {"name": "email", "kind": "categorical", "pii": "hash"},
        {"name": "ssn", "kind": "categorical", "pii": "drop"},
    ],
    "metadata": [{"name": "channel"}, {"name": "region"}],
    "label": {"positive": 1},
    "owner": "risk-team",
}

IRIS: dict[str, Any] = {
    "name": "iris",
    "task": "multiclass",
    "features": [{"name": "petal", "kind": "numeric"}, {"name": "sepal", "kind": "numeric"}],
    "label": {"classes": ["setosa", "versicolor", "virginica"]},
}

HOUSES: dict[str, Any] = {
    "name": "houses",
    "task": "regression",
    "features": [{"name": "rooms", "kind": "numeric"}, {"name": "city", "kind": "categorical"}],
}


def fraud_records(
    n: int, *, seed: int = 0, prefix: str = "r", version: str = "v1", start: int = 1_780_000_000
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    amounts = rng.gamma(2.0, 100.0, n)
    ages = rng.integers(18, 90, n)
    countries = rng.choice(["FR", "DE", "US"], n)
    scores = rng.random(n)
    return [
        {
            "request_id": f"{prefix}{i}",
            "version": version,
            "timestamp": start + i,
            "features": {
                "amount": float(amounts[i]),
                "age": int(ages[i]),
                "country": str(countries[i]),
                "vip": bool(i % 7 == 0),
                "email": f"user{i % 50}@example.com",
                "ssn": "123-45-6789",
            },
            "metadata": {"channel": "web" if i % 2 else "app", "region": "eu"},
            "score": float(scores[i]),
            "latency_ms": float(5 + i % 20),
            "timings": {"preprocess": 1.0, "inference": 3.5},
        }
        for i in range(n)
    ]
