"""The rules every model gets at registration, so a new model alerts without configuration.

They notify the project's default channels (a rule's `channels: null`), and the owner
changes or switches them off like any other rule; a model registered again keeps what
its owner made of them.
"""

from __future__ import annotations

from typing import Any

from driftline.alerts.rules import Condition, Persistence, RuleSpec, Selector
from driftline.storage.meta.alerting import Severity


def default_rules(model: str) -> list[tuple[str, str, RuleSpec]]:
    """(builtin id, rule name, spec) of the model's default rules."""

    def spec(
        detector: str,
        metric: str,
        *,
        persistence: tuple[int, int],
        severity: Severity,
        repeat: str,
        description: str,
        feature: str = "*",
        slice: str = "*",
        details: dict[str, Any] | None = None,
    ) -> RuleSpec:
        return RuleSpec(
            selector=Selector(
                model=model, version="*", detector=detector, metric=metric, feature=feature, slice=slice
            ),
            condition=Condition(op="alert", adjusted=True, details=details or {}),
            persistence=Persistence(breaches=persistence[0], windows=persistence[1]),
            severity=severity,
            channels=None,
            repeat_interval=repeat,
            notify_resolved=True,
            description=description,
        )

    return [
        (
            "feature_drift",
            f"{model}: persistent feature drift",
            spec(
                "feature_drift",
                "*",
                slice="",
                persistence=(3, 4),
                severity=Severity.WARNING,
                repeat="1d",
                description="A feature of the whole population drifts in 3 of the last 4 windows, "
                "by the Benjamini-Hochberg adjusted verdict (one feature in many drifting by chance "
                "does not count).",
            ),
        ),
        (
            "performance",
            f"{model}: performance drop",
            spec(
                "performance",
                "*",
                slice="",
                persistence=(2, 3),
                severity=Severity.CRITICAL,
                repeat="1d",
                description="Realised performance is worse than the reference (beyond its sampling "
                "error) in 2 of the last 3 windows.",
            ),
        ),
        (
            "calibration",
            f"{model}: calibration",
            spec(
                "calibration",
                "ece",
                persistence=(2, 3),
                severity=Severity.WARNING,
                repeat="1d",
                description="Expected calibration error above its limit in 2 of the last 3 windows.",
            ),
        ),
        (
            "silent_traffic",
            f"{model}: silent traffic",
            spec(
                "operations",
                "volume",
                details={"direction": "silent"},
                persistence=(1, 1),
                severity=Severity.CRITICAL,
                repeat="6h",
                description="A version that served in comparable windows sent nothing in this one.",
            ),
        ),
        (
            "error_rate",
            f"{model}: error-rate spike",
            spec(
                "operations",
                "error_rate",
                feature="",
                persistence=(1, 1),
                severity=Severity.CRITICAL,
                repeat="6h",
                description="The share of predictions answered with an error is above its usual level.",
            ),
        ),
    ]
