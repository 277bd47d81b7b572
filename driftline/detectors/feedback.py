"""Human feedback per window and version: how much is reviewed, what reviewers decide, whether they agree.

Feedback arrives by request_id, late and in any order, so it is joined to the predictions
of each window at run time, in ClickHouse: only counts per (version, window, outcome) come
back. A request scored by several versions (champion and shadow) counts for each, and its
reviews are set against each version's own prediction. A reviewer's latest review of a
request stands for that reviewer (a revised outcome replaces the first one).

- `feedback_rate`: share of the window's predictions with at least one review;
- `outcome_share` (feature = outcome): share of the window's reviews with that outcome;
- `agreement`: share of reviews carrying a label in which the label is the model's prediction.

Outcomes that mean the model was wrong (`adverse_outcomes`) alert when their share rises
above a fixed ceiling or, by default, above the pooled share of the trailing windows by more
than a margin and the sampling noise of both; agreement alerts the same way when it falls.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from driftline.detectors import base
from driftline.detectors.base import DetectorConfig, MetricRow, RunContext
from driftline.detectors.data_quality import json_safe
from driftline.schema import Task
from driftline.storage.events import Kind

FloatArray = NDArray[np.float64]


class FeedbackConfig(DetectorConfig):
    """What counts as a review against the model, and how far its share may move."""

    kind: ClassVar[str] = "feedback"

    adverse_outcomes: list[str] = Field(
        default_factory=lambda: ["overridden", "rejected"],
        description="outcomes that mean the model was wrong; their shares are judged",
    )
    max_share: dict[str, float] = Field(
        default_factory=dict,
        description='fixed ceilings per outcome, replacing the trailing level: {"overridden": 0.2}',
    )
    min_agreement: float | None = Field(default=None, ge=0, le=1, description="fixed floor of agreement")
    min_rate: float | None = Field(
        default=None, ge=0, le=1, description="alert when fewer predictions are reviewed"
    )
    history: int = Field(
        default=7, ge=1, le=60, description="trailing windows pooled into the expected level"
    )
    min_reviews: int = Field(
        default=30, ge=1, description="reviews a window and its history need for a verdict"
    )
    margin: float = Field(default=0.02, ge=0, le=1, description="allowed move beyond the trailing level")
    z: float = Field(default=3.0, ge=0, description="sampling allowance, in standard errors")
    agreement_tolerance: float = Field(
        default=0.0, ge=0, description="regression: a label within this of the prediction agrees"
    )


def trailing(values: FloatArray, history: int) -> FloatArray:
    """Per index, the sum over the `history` indices before it (fewer at the start)."""
    cs = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(len(values))
    return np.asarray(cs[idx] - cs[np.maximum(idx - history, 0)], dtype=np.float64)


def _share(k: float, n: float) -> float | None:
    return k / n if n > 0 else None


@base.register(FeedbackConfig)
class Feedback:
    """Feedback rate, outcome shares and reviewer agreement per version and window."""

    def __init__(self, config: FeedbackConfig) -> None:
        self.config: DetectorConfig = config
        self.settings = config
        self._id = config.id

    # -- the push-down ------------------------------------------------------------------------

    def _query(self, ctx: RunContext, lo: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per (version, window): predictions and reviewed ones; per (version, window, outcome): reviews."""
        names = ctx.events.names(ctx.project, ctx.schema.name)
        preds, feedback = names(Kind.PREDICTIONS), names(Kind.FEEDBACK)
        rng = "ts >= toDateTime(%(lo)s, 'UTC') AND ts < toDateTime(%(hi)s, 'UTC')"
        params: dict[str, Any] = {
            "lo": lo,
            "hi": ctx.end,
            "step": ctx.step,
            "tol": self.settings.agreement_tolerance,
        }
        window = (
            f"SELECT request_id, version, intDiv(toUInt32(ts) - %(lo)s, %(step)s) AS w, prediction AS pv "
            f"FROM {preds} WHERE {rng}"
        )
        ids = f"request_id GLOBAL IN (SELECT request_id FROM {preds} WHERE {rng})"
        rate = ctx.events.engine.query_columns(
            f"SELECT version, w, count() AS predictions, sum(reviewed) AS reviewed FROM ({window}) AS p "
            f"GLOBAL ANY LEFT JOIN (SELECT request_id, toUInt8(1) AS reviewed FROM {feedback} WHERE {ids} "
            "GROUP BY request_id) AS f USING request_id GROUP BY version, w",
            params,
        )
        # a reviewer's latest review stands: its outcome, and its label if that review carries one
        # (argMax skips NULL labels, so it is the latest label exactly when the latest review has one)
        same = (
            "ifNull(abs(fl - pv) <= %(tol)s, 0)"
            if ctx.schema.task is Task.REGRESSION
            else "ifNull(fl = pv, 0)"
        )
        reviews = ctx.events.engine.query_columns(
            f"SELECT version, w, outcome, count() AS reviews, sum(has_label) AS labelled, "
            f"sum(toUInt8(has_label = 1 AND {same})) AS agreed FROM ({window}) AS p "
            "GLOBAL ALL INNER JOIN (SELECT request_id, reviewer, argMax(outcome, received) AS outcome, "
            "argMax(toUInt8(isNotNull(label)), received) AS has_label, argMax(label, received) AS fl "
            f"FROM {feedback} WHERE {ids} GROUP BY request_id, reviewer) AS f USING request_id "
            "GROUP BY version, w, outcome",
            params,
        )
        return rate, reviews

    # -- the run ------------------------------------------------------------------------------

    def run(self, ctx: RunContext) -> list[MetricRow]:
        cfg = self.settings
        lead = min(cfg.history, ctx.start // ctx.step)
        lo = ctx.start - lead * ctx.step
        grid = (ctx.end - lo) // ctx.step
        rate, reviews = self._query(ctx, lo)
        if not len(reviews["version"]):
            return []  # a model without human review, or none of its requests reviewed yet
        found = {str(v) for v in rate["version"]}
        known = [v.version for v in ctx.model.versions]
        versions = [v for v in known if v in found] + sorted(found - set(known))
        outcomes = sorted({str(o) for o in reviews["outcome"]})
        slot = {o: i for i, o in enumerate(outcomes)}
        rows: list[MetricRow] = []
        for version in versions:
            mine = rate["version"] == version
            predictions = np.zeros(grid)
            reviewed = np.zeros(grid)
            w = rate["w"][mine].astype(np.int64)
            np.add.at(predictions, w, rate["predictions"][mine].astype(np.float64))
            np.add.at(reviewed, w, rate["reviewed"][mine].astype(np.float64))
            by_outcome = np.zeros((grid, len(outcomes)))
            labelled = np.zeros(grid)
            agreed = np.zeros(grid)
            sel = reviews["version"] == version
            rw = reviews["w"][sel].astype(np.int64)
            col = np.array([slot[str(o)] for o in reviews["outcome"][sel]], dtype=np.int64)
            np.add.at(by_outcome, (rw, col), reviews["reviews"][sel].astype(np.float64))
            np.add.at(labelled, rw, reviews["labelled"][sel].astype(np.float64))
            np.add.at(agreed, rw, reviews["agreed"][sel].astype(np.float64))
            rows.extend(
                self._version(
                    ctx, version, lead, outcomes, predictions, reviewed, by_outcome, labelled, agreed
                )
            )
        return rows

    def _version(
        self,
        ctx: RunContext,
        version: str,
        lead: int,
        outcomes: list[str],
        predictions: FloatArray,
        reviewed: FloatArray,
        by_outcome: FloatArray,
        labelled: FloatArray,
        agreed: FloatArray,
    ) -> list[MetricRow]:
        cfg = self.settings
        total = by_outcome.sum(axis=1)
        base_total = trailing(total, cfg.history)
        base_outcome = np.stack(
            [trailing(by_outcome[:, k], cfg.history) for k in range(len(outcomes))], axis=-1
        )
        base_labelled = trailing(labelled, cfg.history)
        base_agreed = trailing(agreed, cfg.history)
        rows: list[MetricRow] = []
        for j in range((ctx.end - ctx.start) // ctx.step):
            g = j + lead
            bounds = ctx.window_bounds(j)
            n = float(predictions[g])
            if n <= 0:
                continue
            counts = {o: int(by_outcome[g, k]) for k, o in enumerate(outcomes) if by_outcome[g, k] > 0}
            value = float(reviewed[g]) / n
            rows.append(
                self._row(
                    version,
                    "feedback_rate",
                    bounds,
                    value,
                    threshold=cfg.min_rate,
                    alert=cfg.min_rate is not None and value < cfg.min_rate,
                    n=n,
                    details={
                        "predictions": int(n),
                        "reviewed": int(reviewed[g]),
                        "reviews": int(total[g]),
                        "outcomes": counts,
                        "labelled_reviews": int(labelled[g]),
                    },
                )
            )
            if total[g] <= 0:
                continue
            for k, outcome in enumerate(outcomes):
                rows.append(
                    self._judged(
                        version,
                        "outcome_share",
                        bounds,
                        float(by_outcome[g, k]),
                        float(total[g]),
                        float(base_outcome[g, k]),
                        float(base_total[g]),
                        feature=outcome,
                        rising=True,
                        judged=outcome in cfg.adverse_outcomes or outcome in cfg.max_share,
                        fixed=cfg.max_share.get(outcome),
                    )
                )
            rows.append(
                self._judged(
                    version,
                    "agreement",
                    bounds,
                    float(agreed[g]),
                    float(labelled[g]),
                    float(base_agreed[g]),
                    float(base_labelled[g]),
                    rising=False,
                    judged=True,
                    fixed=cfg.min_agreement,
                )
            )
        return rows

    def _judged(
        self,
        version: str,
        metric: str,
        bounds: tuple[int, int],
        k: float,
        n: float,
        base_k: float,
        base_n: float,
        *,
        feature: str = "",
        rising: bool,
        judged: bool,
        fixed: float | None,
    ) -> MetricRow:
        """A share against a fixed limit or the trailing windows' pooled share, allowing for noise."""
        cfg = self.settings
        value = _share(k, n)
        base = _share(base_k, base_n)
        details: dict[str, Any] = {
            "count": int(k),
            "of": int(n),
            "trailing": base,
            "trailing_of": int(base_n),
            "direction": "alert_above" if rising else "alert_below",
        }
        threshold: float | None = None
        alert = False
        if judged and value is not None:
            if fixed is not None:
                threshold = fixed
                details["threshold_from"] = "config"
            elif base is not None and base_n >= cfg.min_reviews:
                se = math.sqrt(base * (1 - base) * (1 / n + 1 / base_n))
                step = cfg.margin + cfg.z * se
                threshold = base + step if rising else base - step
                details["threshold_from"] = "trailing"
            if n < cfg.min_reviews:
                details["reason"] = f"{int(n)} reviews, fewer than min_reviews={cfg.min_reviews}"
            elif threshold is not None:
                alert = value > threshold if rising else value < threshold
            else:
                details["reason"] = "too little trailing feedback"
        if value is None:
            details["reason"] = "no reviews with a label" if metric == "agreement" else "no reviews"
        return self._row(
            version,
            metric,
            bounds,
            value,
            feature=feature,
            threshold=threshold,
            alert=alert,
            n=n,
            details=details,
        )

    def _row(
        self,
        version: str,
        metric: str,
        bounds: tuple[int, int],
        value: float | None,
        *,
        feature: str = "",
        threshold: float | None = None,
        alert: bool = False,
        n: float = 0,
        details: dict[str, Any] | None = None,
    ) -> MetricRow:
        finite = value is not None and math.isfinite(value)
        return MetricRow(
            version=version,
            detector=self.config.kind,
            detector_id=self._id,
            metric=metric,
            feature=feature,
            window_start=bounds[0],
            window_end=bounds[1],
            value=float(value) if finite and value is not None else None,
            threshold=threshold if threshold is not None and math.isfinite(threshold) else None,
            alert=bool(alert and finite),
            sample_size=int(n),
            status="ok" if finite else "no_data",
            details=json_safe(details or {}),
        )
