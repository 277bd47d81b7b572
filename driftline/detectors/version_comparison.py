"""Champion against challengers, shadows and canaries on the same windows.

- `prediction_agreement`: of the request ids both versions scored in the window (the
  champion's time decides the window), the share whose predictions agree (regression:
  within `agreement_tolerance`). A push-down join of the two versions' rows by request_id;
  only counts per (version, window) come back.
- `score_drift` (feature '@score', or '@prediction' for regressors and multiclass models):
  the challenger's output distribution against the champion's in the same window, with the
  drift methods of feature drift (`methods`): Evidently's default choice, or the one configured.
- `<metric>_diff` once labels exist (accuracy, roc_auc; mae, rmse): challenger minus
  champion from both versions' label-joined summaries, with a normal interval on the
  difference of two independent estimates (two proportions for accuracy, Hanley-McNeil
  errors for ROC AUC) and a verdict. On shared traffic (a shadow) the two estimates are
  positively correlated, so the interval is wider than a paired one: a verdict errs
  towards `inconclusive`, never towards a wrong sign.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.stats
from numpy.typing import NDArray
from pydantic import Field

from driftline.detectors import base, methods
from driftline.detectors.base import DetectorConfig, MetricRow, RunContext
from driftline.detectors.data_quality import json_safe
from driftline.detectors.perf_summaries import BinnedScores, PerfSummary
from driftline.detectors.slices import HIGHER_IS_BETTER, Estimate, class_list, estimate, positive_index, stack
from driftline.detectors.summaries import PREDICTION, SCORE, Summary
from driftline.schema import Role, Task
from driftline.storage.events import Kind

FloatArray = NDArray[np.float64]

COMPARED = (Role.CHALLENGER, Role.SHADOW, Role.CANARY)
DiffMetric = Literal["accuracy", "roc_auc", "mae", "rmse"]
DEFAULTS: dict[Task, tuple[DiffMetric, ...]] = {
    Task.BINARY: ("accuracy", "roc_auc"),
    Task.MULTICLASS: ("accuracy",),
    Task.REGRESSION: ("mae",),
}
ALLOWED: dict[Task, tuple[DiffMetric, ...]] = {
    Task.BINARY: ("accuracy", "roc_auc"),
    Task.MULTICLASS: ("accuracy",),
    Task.REGRESSION: ("mae", "rmse"),
}


class VersionComparisonConfig(DetectorConfig):
    """How versions are compared; every default is what a release review would look at."""

    kind: ClassVar[str] = "version_comparison"

    metrics: list[DiffMetric] | None = Field(
        default=None, description="default: accuracy and roc_auc (binary), accuracy (multiclass), mae"
    )
    confidence: float = Field(default=0.95, gt=0, lt=1, description="level of the difference's interval")
    min_labels: int = Field(default=100, ge=1, description="labelled rows each version needs for a verdict")
    min_overlap: int = Field(default=30, ge=1, description="shared request ids needed to judge agreement")
    min_agreement: float | None = Field(
        default=None, ge=0, le=1, description="alert below this agreement (e.g. a canary of the same model)"
    )
    agreement_tolerance: float = Field(
        default=0.0, ge=0, description="regression: predictions this close agree"
    )
    score_method: str = Field(default="auto", description="a drift method name, or auto (Evidently's choice)")
    score_threshold: float | None = Field(default=None, description="default: the method's own")
    min_rows: int = Field(default=30, ge=1, description="rows each version needs for score drift")
    slack_s: int = Field(
        default=3600,
        ge=0,
        description="a version's row logged this much before or after the champion's still pairs",
    )


def binned_auc(b: BinnedScores) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ROC AUC per window from score-bin counts of labelled rows, pairs within a bin as ties; (auc, pos, neg)."""
    lab = b.n[:, :, :, 1, :].sum(axis=2)
    neg, pos = lab[..., 0], lab[..., 1]
    below = np.cumsum(neg, axis=1) - neg
    p, n = pos.sum(axis=1), neg.sum(axis=1)
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    out = np.full(len(p), np.nan)
    np.divide(wins, p * n, out=out, where=(p * n) > 0)
    return out, p, n


def hanley_se(auc: FloatArray, pos: FloatArray, neg: FloatArray) -> FloatArray:
    """Hanley & McNeil's standard error of a ROC AUC from its positive and negative counts."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    num = auc * (1 - auc) + (pos - 1) * (q1 - auc * auc) + (neg - 1) * (q2 - auc * auc)
    out = np.full(len(auc), np.nan)
    np.divide(num, pos * neg, out=out, where=(pos * neg) > 0)
    return np.asarray(np.sqrt(np.clip(out, 0.0, None)), dtype=np.float64)


def _num(x: Any) -> float | None:
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def champion_of(ctx: RunContext) -> str | None:
    """The newest version registered as champion."""
    champions = [v.version for v in ctx.model.versions if v.role is Role.CHAMPION]
    return champions[-1] if champions else None


@base.register(VersionComparisonConfig)
class VersionComparison:
    """Agreement, score drift and the performance difference of each compared version against the champion."""

    def __init__(self, config: VersionComparisonConfig) -> None:
        self.config: DetectorConfig = config
        self.settings = config
        self._id = config.id

    def run(self, ctx: RunContext) -> list[MetricRow]:
        champion = champion_of(ctx)
        others = [v.version for v in ctx.model.versions if v.role in COMPARED and v.version != champion]
        if champion is None or not others:
            return []
        schema = ctx.schema
        metrics = list(self.settings.metrics or DEFAULTS[schema.task])
        bad = [m for m in metrics if m not in ALLOWED[schema.task]]
        if bad:
            raise ValueError(f"metrics {bad} do not apply to a {schema.task.value} model")
        windows = max(-(-(ctx.end - ctx.start) // ctx.step), 0)
        rows_of, pairs = self._pairs(ctx, champion, others)
        perf: dict[tuple[str, str], PerfSummary] = {}
        if ctx.perf is not None:
            perf = ctx.perf.read(
                ctx.project,
                schema,
                kind="l",
                start=ctx.start,
                end=ctx.end,
                step=ctx.step,
                versions=[champion, *others],
            )
        classes = class_list(schema, perf.values())
        pos = positive_index(schema, classes)
        levels = {
            v: {m: self._level(m, perf.get((v, "")), windows, schema.task, classes, pos) for m in metrics}
            for v in [champion, *others]
        }
        out: list[MetricRow] = []
        for other in others:
            for j in range(windows):
                n_champion = float(rows_of.get((champion, j), 0))
                n_other = float(rows_of.get((other, j), 0))
                if n_champion <= 0 or n_other <= 0:
                    continue
                bounds = ctx.window_bounds(j)
                common = {"champion": champion, "role": self._role(ctx, other)}
                out.append(self._agreement(other, bounds, pairs.get((other, j)), n_champion, n_other, common))
                out.append(self._score_drift(ctx, other, champion, bounds, j, common))
                for m in metrics:
                    out.append(self._diff(other, bounds, m, levels[champion][m], levels[other][m], j, common))
        return out

    @staticmethod
    def _role(ctx: RunContext, version: str) -> str:
        return next((v.role.value for v in ctx.model.versions if v.version == version), "")

    # -- prediction agreement (push-down) -------------------------------------------------------

    def _pairs(
        self, ctx: RunContext, champion: str, others: list[str]
    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], dict[str, float]]]:
        """Rows per (version, window), and per (other version, window) the shared requests and their agreement."""
        cfg = self.settings
        table = ctx.events.names(ctx.project, ctx.schema.name)(Kind.PREDICTIONS)
        engine = ctx.events.engine
        params: dict[str, Any] = {
            "lo": ctx.start,
            "hi": ctx.end,
            "step": ctx.step,
            "champion": champion,
            "others": tuple(others),
            "all": (champion, *others),
            "slo": max(ctx.start - cfg.slack_s, 0),
            "shi": ctx.end + cfg.slack_s,
            "tol": cfg.agreement_tolerance,
        }
        rng = "ts >= toDateTime(%(lo)s, 'UTC') AND ts < toDateTime(%(hi)s, 'UTC')"
        window = "intDiv(toUInt32(ts) - %(lo)s, %(step)s)"
        counts = engine.query_columns(
            f"SELECT version, {window} AS w, count() AS n FROM {table} WHERE version IN %(all)s AND {rng} "
            "GROUP BY version, w",
            params,
        )
        task = ctx.schema.task
        if task is Task.REGRESSION:
            same = "ifNull(abs(p1 - p2) <= %(tol)s, 0)"
            gap, a, b = "abs(p1 - p2)", "prediction", "prediction"
        else:
            same = "ifNull(p1 = p2, 0)"
            gap, a, b = "abs(s1 - s2)", "score", "score"
        got = engine.query_columns(
            f"SELECT version, w, count() AS shared, sum(toUInt8({same})) AS agreed, "
            f"ifNull(sum({gap}), 0) AS gap, count({gap}) AS gaps FROM ("
            f"SELECT request_id, {window} AS w, prediction AS p1, {a} AS s1 FROM {table} "
            f"WHERE version = %(champion)s AND {rng}) AS c "
            f"GLOBAL ALL INNER JOIN (SELECT request_id, version, prediction AS p2, {b} AS s2 FROM {table} "
            "WHERE version IN %(others)s AND ts >= toDateTime(%(slo)s, 'UTC') AND ts < toDateTime(%(shi)s, 'UTC')) "
            "AS o USING request_id GROUP BY version, w",
            params,
        )
        rows_of = {
            (str(v), int(w)): int(n)
            for v, w, n in zip(counts["version"], counts["w"], counts["n"], strict=True)
        }
        pairs = {
            (str(got["version"][i]), int(got["w"][i])): {
                "shared": float(got["shared"][i]),
                "agreed": float(got["agreed"][i]),
                "gap": float(got["gap"][i]),
                "gaps": float(got["gaps"][i]),
            }
            for i in range(len(got["version"]))
        }
        return rows_of, pairs

    def _agreement(
        self,
        version: str,
        bounds: tuple[int, int],
        pair: dict[str, float] | None,
        n_champion: float,
        n_other: float,
        common: dict[str, Any],
    ) -> MetricRow:
        cfg = self.settings
        shared = pair["shared"] if pair else 0.0
        value = pair["agreed"] / shared if pair and shared > 0 else None
        details: dict[str, Any] = {
            **common,
            "shared": int(shared),
            "agreed": int(pair["agreed"]) if pair else 0,
            "champion_rows": int(n_champion),
            "rows": int(n_other),
            "coverage": shared / n_champion,
            "mean_abs_difference": pair["gap"] / pair["gaps"] if pair and pair["gaps"] > 0 else None,
        }
        floor = cfg.min_agreement
        alert = False
        if value is None:
            details["reason"] = "no request scored by both versions"
        elif shared < cfg.min_overlap:
            details["reason"] = f"{int(shared)} shared requests, fewer than min_overlap={cfg.min_overlap}"
        else:
            alert = floor is not None and value < floor
        return self._row(
            version,
            "prediction_agreement",
            bounds,
            value,
            threshold=floor,
            alert=alert,
            n=shared,
            details=details,
        )

    # -- score drift ----------------------------------------------------------------------------

    def _score_drift(
        self,
        ctx: RunContext,
        version: str,
        champion: str,
        bounds: tuple[int, int],
        j: int,
        common: dict[str, Any],
    ) -> MetricRow:
        cfg = self.settings
        task = ctx.schema.task
        column = SCORE if task is Task.BINARY else PREDICTION
        kind = methods.ColumnKind.CATEGORICAL if task is Task.MULTICLASS else methods.ColumnKind.NUMERIC
        a: Summary | None = ctx.live.get(champion)
        b: Summary | None = ctx.live.get(version)
        details: dict[str, Any] = dict(common)
        if a is None or b is None:
            details["reason"] = "no summarised rows"
            return self._row(version, "score_drift", bounds, None, feature=column, details=details)
        ref = methods.sample(a, j, column, kind)
        cur = methods.sample(b, j, column, kind)
        details.update({"champion_n": ref.n, "n": cur.n})
        if min(ref.n, cur.n) < cfg.min_rows:
            details["reason"] = f"fewer than min_rows={cfg.min_rows} summarised values in a version"
            return self._row(version, "score_drift", bounds, None, feature=column, n=cur.n, details=details)
        name = methods.default_method(kind, ref, cur) if cfg.score_method == "auto" else cfg.score_method
        method = methods.get(name, kind)
        score = method.score(method.fit(ref), cur, cfg.score_threshold)
        details.update(
            {
                "method": name,
                "p_value": _num(score.p_value),
                "threshold_on": "p_value" if method.test else "statistic",
            }
        )
        return self._row(
            version,
            "score_drift",
            bounds,
            score.statistic,
            feature=column,
            threshold=score.threshold,
            alert=score.drift,
            n=cur.n,
            details=details,
        )

    # -- performance difference -----------------------------------------------------------------

    @staticmethod
    def _level(
        metric: str, s: PerfSummary | None, windows: int, task: Task, classes: list[str], pos: int
    ) -> Estimate:
        """A version's metric per window with its standard error and rows."""
        if metric == "roc_auc":
            b = s.binned.get("") if s is not None else None
            b = b if b is not None else BinnedScores.empty(windows)
            auc, p, n = binned_auc(b)
            return Estimate(metric, auc, hanley_se(auc, p, n), p + n, p + n)
        return estimate(metric, stack([s], windows, task, classes)[0], pos)

    def _diff(
        self,
        version: str,
        bounds: tuple[int, int],
        metric: str,
        champ: Estimate,
        other: Estimate,
        j: int,
        common: dict[str, Any],
    ) -> MetricRow:
        cfg = self.settings
        a, b = _num(champ.value[j]), _num(other.value[j])
        na, nb = float(champ.labelled[j]), float(other.labelled[j])
        details: dict[str, Any] = {
            **common,
            "champion_value": a,
            "value": b,
            "champion_labelled": int(na),
            "labelled": int(nb),
            "direction": "higher_is_better"
            if metric in HIGHER_IS_BETTER or metric == "roc_auc"
            else "lower_is_better",
        }
        name = f"{metric}_diff"
        if a is None or b is None:
            details["verdict"] = "no_data"
            details["reason"] = "no labelled rows" if min(na, nb) <= 0 else f"{metric} undefined in a version"
            return self._row(version, name, bounds, None, threshold=0.0, n=min(na, nb), details=details)
        diff = b - a
        se = math.sqrt(float(champ.se[j]) ** 2 + float(other.se[j]) ** 2)
        z = float(scipy.stats.norm.ppf(0.5 + cfg.confidence / 2))
        lo, hi = diff - z * se, diff + z * se
        details.update(
            {
                "interval": [lo, hi],
                "confidence": cfg.confidence,
                "se": se,
                "p_value": float(2 * scipy.stats.norm.sf(abs(diff) / se)) if se > 0 else None,
            }
        )
        higher = details["direction"] == "higher_is_better"
        better, worse = (lo > 0, hi < 0) if higher else (hi < 0, lo > 0)
        if min(na, nb) < cfg.min_labels:
            verdict = "insufficient"
            details["reason"] = f"fewer than min_labels={cfg.min_labels} labelled rows in a version"
        else:
            verdict = "better" if better else "worse" if worse else "inconclusive"
        details["verdict"] = verdict
        return self._row(
            version,
            name,
            bounds,
            diff,
            threshold=0.0,
            alert=verdict == "worse",
            n=min(na, nb),
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
