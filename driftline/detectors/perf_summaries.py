"""Summaries that need labels: predictions joined to their latest label, per hourly bucket.

- `perfsum`: per score bin (BINS equal bins on [0, 1]) and target (binary: '', multiclass:
  each class one-vs-rest plus '@max' for the top score), the count of rows by predicted
  flag, labelled flag and label flag, with the sums of score, score squared and log loss:
  enough for ROC AUC, log loss, Brier, reliability curves and, from the unlabelled rows'
  score distribution, confidence-based estimated performance.
- `confsum`: labelled rows counted by (predicted class, label class): confusion matrices,
  per slice and per pair of slice fields (for slice discovery).
- `regsum`: regression error moments (labelled and not), for MAE, RMSE, MAPE and R².

Labels arrive late and in any order, so each bucket's generation records how many of its
rows were labelled; a later run that counts more re-summarises the bucket. Reference
summaries come from the reference rows' own labels, in the same chunks as `summaries`.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftline.detectors.summaries import BUCKET_SECONDS, REFERENCE_CHUNKS, _runs
from driftline.schema import FeatureKind, ModelSchema, Task
from driftline.storage.events import EventStore, Kind, ddl
from driftline.storage.events.tables import FEATURE_PREFIX, META_PREFIX, TableNames, value_column

BINS = 100
EPS = 1e-15
MAX_PAIR_FIELDS = 6  # pairs of slice fields are searched among at most this many fields
MAX_SLICE_VALUES = 200  # values per slice field kept per bucket (the most frequent)
MAX = "@max"


def perf_slice_fields(schema: ModelSchema) -> list[tuple[str, str]]:
    """(name, column) of fields performance is sliced by: categorical metadata, then categorical features."""
    out = [
        (m.name, f"`{META_PREFIX}{m.name}`")
        for m in schema.metadata
        if m.stored and m.kind is not FeatureKind.NUMERIC
    ]
    out += [
        (f.name, f"`{FEATURE_PREFIX}{f.name}`")
        for f in schema.features
        if f.stored and f.kind is not FeatureKind.NUMERIC
    ]
    return out


def _slice_key(name: str, col: str) -> str:
    return f"concat('{name}=', ifNull(CAST({col} AS Nullable(String)), '(null)'))"


def slice_exprs(schema: ModelSchema, *, pairs: bool) -> list[str]:
    fields = perf_slice_fields(schema)
    keys = ["''"] + [_slice_key(n, c) for n, c in fields]
    if pairs:
        for (a, ca), (b, cb) in itertools.combinations(fields[:MAX_PAIR_FIELDS], 2):
            keys.append(f"concat({_slice_key(a, ca)}, '&', {_slice_key(b, cb)})")
    return keys


def _tables(names: TableNames) -> tuple[str, str, str, str]:
    return names.table("perfsum"), names.table("confsum"), names.table("regsum"), names.table("ledger")


def perf_ddl(names: TableNames) -> list[str]:
    perfsum, confsum, regsum, _ = _tables(names)
    head = "kind String, version String, slice String, bucket DateTime('UTC'), gen UInt64"
    tail = "PARTITION BY toYYYYMM(bucket) ORDER BY (kind, version, slice, bucket, gen"
    return [
        f"CREATE TABLE IF NOT EXISTS {perfsum} ({head}, target String, bin UInt16, pred UInt8, labeled UInt8, "
        f"y UInt8, n UInt64, s Float64, s2 Float64, ll Float64) ENGINE = SummingMergeTree((n, s, s2, ll)) "
        f"{tail}, target, bin, pred, labeled, y)",
        f"CREATE TABLE IF NOT EXISTS {confsum} ({head}, pred String, label String, n UInt64) "
        f"ENGINE = SummingMergeTree(n) {tail}, pred, label)",
        f"CREATE TABLE IF NOT EXISTS {regsum} ({head}, labeled UInt8, n UInt64, se Float64, se2 Float64, "
        "sae Float64, sape Float64, nape UInt64, sy Float64, sy2 Float64, sp Float64, sp2 Float64) "
        f"ENGINE = SummingMergeTree((n, se, se2, sae, sape, nape, sy, sy2, sp, sp2)) {tail}, labeled)",
    ]


@dataclass(frozen=True)
class _Src:
    kind: str  # 'l' live (labels joined), 'q' reference (its own labels)
    rows: str  # a subquery yielding version, ts, bucket, score(s), prediction, label, has, slice columns
    where: str
    params: dict[str, Any]


class PerfSummarizer:
    """Writes and reads the label-dependent summaries of one event store."""

    def __init__(self, events: EventStore) -> None:
        self.events = events
        self.engine = events.engine
        self._ready: dict[str, float] = {}
        self._seen: dict[tuple[str, int, int], tuple[Any, ...]] = {}

    def ensure(self, names: TableNames) -> None:
        """Create the tables, at most once a minute per model (they may be dropped with it)."""
        key = names.table("perfsum")
        if time.monotonic() - self._ready.get(key, -1e9) < 60:
            return
        from driftline.detectors.summaries import summary_ddl

        for statement in summary_ddl(names, self.engine.info) + perf_ddl(names):
            ddl.create_from_statement(self.engine, statement)
        self._ready[key] = time.monotonic()

    # -- the joined rows ----------------------------------------------------------------------

    def _live_rows(self, names: TableNames, schema: ModelSchema, cols: list[str]) -> str:
        preds = names(Kind.PREDICTIONS)
        labels = names(Kind.LABELS)
        rng = "ts >= toDateTime(%(lo)s, 'UTC') AND ts < toDateTime(%(hi)s, 'UTC')"
        return (
            f"SELECT version, ts, toStartOfHour(ts) AS bucket, {', '.join(cols)}, label, has FROM {preds} "
            f"GLOBAL ANY LEFT JOIN (SELECT request_id, argMax(label, received) AS label, toUInt8(1) AS has FROM {labels} "
            f"WHERE request_id GLOBAL IN (SELECT request_id FROM {preds} WHERE {rng}) GROUP BY request_id) AS l "
            f"USING request_id WHERE {rng}"
        )

    def _unlabelled_rows(self, names: TableNames, schema: ModelSchema, cols: list[str]) -> str:
        """The live rows when the model has no label at all: no join, no set of request ids."""
        rng = "ts >= toDateTime(%(lo)s, 'UTC') AND ts < toDateTime(%(hi)s, 'UTC')"
        label = f"CAST(NULL AS {value_column('label', schema).ch_type})"
        return (
            f"SELECT version, ts, toStartOfHour(ts) AS bucket, {', '.join(cols)}, {label} AS label, "
            f"toUInt8(0) AS has FROM {names(Kind.PREDICTIONS)} WHERE {rng}"
        )

    def _reference_rows(self, names: TableNames, cols: list[str], chunk: int) -> str:
        return (
            f"SELECT version, ts, toDateTime(intDiv(row, {chunk}), 'UTC') AS bucket, {', '.join(cols)}, label, "
            f"toUInt8(isNotNull(label)) AS has FROM {names(Kind.REFERENCE)} WHERE version = %(v)s"
        )

    @staticmethod
    def _columns(schema: ModelSchema) -> list[str]:
        cols = ["prediction", "score", "scores"]
        cols += [c for _, c in perf_slice_fields(schema)]
        return cols

    # -- writing ------------------------------------------------------------------------------

    def _write(
        self,
        names: TableNames,
        schema: ModelSchema,
        rows_sql: str,
        kind: str,
        gen: int,
        params: dict[str, Any],
    ) -> None:
        perfsum, confsum, regsum, ledger = _tables(names)
        singles = "arrayJoin([" + ", ".join(slice_exprs(schema, pairs=False)) + "])"
        everything = "arrayJoin([" + ", ".join(slice_exprs(schema, pairs=True)) + "])"
        label = "CAST(label AS Nullable(String))" if schema.task is not Task.REGRESSION else "label"
        if schema.task is Task.BINARY:
            pos = f"'{schema.positive_class}'"
            self.engine.execute(
                f"INSERT INTO {perfsum} (kind, version, slice, bucket, gen, target, bin, pred, labeled, y, n, s, s2, ll) "
                f"SELECT '{kind}', version, slice, bucket, {gen}, '', bin, pred, labeled, y, count(), sum(p), sum(p * p), "
                f"sum(-log(greatest(least(if(y = 1, p, 1 - p), {1 - EPS}), {EPS}))) FROM ("
                f"SELECT version, bucket, {singles} AS slice, assumeNotNull(score) AS p, "
                f"least(toUInt16(floor(p * {BINS})), {BINS - 1}) AS bin, "
                f"toUInt8(ifNull(CAST(prediction AS Nullable(String)) = {pos}, 0)) AS pred, has AS labeled, "
                f"toUInt8(has = 1 AND ifNull({label} = {pos}, 0)) AS y FROM ({rows_sql}) WHERE isNotNull(score)) "
                "GROUP BY version, slice, bucket, bin, pred, labeled, y",
                params,
            )
        elif schema.task is Task.MULTICLASS:
            targets = ", ".join(
                f"('{c}', arrayElement(scores, {i}))" for i, c in enumerate(schema.classes, start=1)
            )
            targets += f", ('{MAX}', arrayReduce('max', scores))"
            self.engine.execute(
                f"INSERT INTO {perfsum} (kind, version, slice, bucket, gen, target, bin, pred, labeled, y, n, s, s2, ll) "
                f"SELECT '{kind}', version, slice, bucket, {gen}, target, bin, pred, labeled, y, count(), sum(p), "
                f"sum(p * p), sum(-log(greatest(least(if(y = 1, p, 1 - p), {1 - EPS}), {EPS}))) FROM ("
                f"SELECT version, bucket, {singles} AS slice, arrayJoin([{targets}]) AS t, t.1 AS target, t.2 AS p, "
                f"least(toUInt16(floor(p * {BINS})), {BINS - 1}) AS bin, "
                f"toUInt8(if(target = '{MAX}', 1, ifNull(CAST(prediction AS Nullable(String)) = target, 0))) AS pred, "
                f"has AS labeled, toUInt8(has = 1 AND if(target = '{MAX}', ifNull({label} = CAST(prediction AS Nullable(String)), 0), "
                f"ifNull({label} = target, 0))) AS y FROM ({rows_sql}) WHERE length(scores) = {len(schema.classes)}) "
                "GROUP BY version, slice, bucket, target, bin, pred, labeled, y",
                params,
            )
        if schema.task is Task.REGRESSION:
            self.engine.execute(
                f"INSERT INTO {regsum} (kind, version, slice, bucket, gen, labeled, n, se, se2, sae, sape, nape, sy, sy2, sp, sp2) "
                f"SELECT '{kind}', version, slice, bucket, {gen}, labeled, count(), sum(e), sum(e * e), sum(abs(e)), "
                "sum(if(yv != 0, abs(e) / abs(yv), 0)), countIf(labeled = 1 AND yv != 0), sum(yv), sum(yv * yv), "
                f"sum(pv), sum(pv * pv) FROM (SELECT version, bucket, {everything} AS slice, has AS labeled, "
                "assumeNotNull(prediction) AS pv, if(has = 1, assumeNotNull(label), 0.) AS yv, if(has = 1, pv - yv, 0.) AS e "
                f"FROM ({rows_sql}) WHERE isNotNull(prediction)) GROUP BY version, slice, bucket, labeled",
                params,
            )
        else:
            self.engine.execute(
                f"INSERT INTO {confsum} (kind, version, slice, bucket, gen, pred, label, n) "
                f"SELECT '{kind}', version, slice, bucket, {gen}, pred, label, n FROM ("
                f"SELECT version, bucket, {everything} AS slice, ifNull(CAST(prediction AS Nullable(String)), '') AS pred, "
                f"ifNull({label}, '') AS label, count() AS n FROM ({rows_sql}) WHERE has = 1 "
                f"GROUP BY version, slice, bucket, pred, label) "
                f"ORDER BY n DESC LIMIT {MAX_SLICE_VALUES * 20} BY version, bucket, slice",
                params,
            )
        self.engine.execute(
            f"INSERT INTO {ledger} (kind, version, slice, bucket, gen, rows, last_ts, info, created) "
            f"SELECT '{kind}', version, '', bucket, {gen}, count(), max(ts), "
            f"concat('{{\"labeled\": ', toString(sum(has)), '}}'), now() FROM ({rows_sql}) GROUP BY version, bucket",
            params,
        )

    def summarize(
        self, project: str, schema: ModelSchema, start: int, end: int, *, now: float | None = None
    ) -> int:
        """Bring summaries up to date over [start, end); returns how many buckets were written."""
        return len(self.summarize_buckets(project, schema, start, end, now=now))

    def summarize_buckets(
        self, project: str, schema: ModelSchema, start: int, end: int, *, now: float | None = None
    ) -> list[int]:
        """Bring the label-joined summaries of closed buckets up to date; returns the buckets (epoch seconds) written."""
        names = self.events.names(project, schema.name)
        self.ensure(names)
        now = time.time() if now is None else now
        end = min(end, int(now) // BUCKET_SECONDS * BUCKET_SECONDS)
        start = start // BUCKET_SECONDS * BUCKET_SECONDS
        if end <= start:
            return []
        _, _, _, ledger = _tables(names)
        # the join below reads the whole range: skip it when neither labels nor predictions changed
        probe = self.engine.query_columns(
            f"SELECT (SELECT count() FROM {names(Kind.LABELS)}) AS labels, "
            f"(SELECT toUInt32(max(received)) FROM {names(Kind.LABELS)}) AS newest, "
            f"(SELECT count() FROM {names(Kind.PREDICTIONS)} WHERE ts >= toDateTime(%(lo)s, 'UTC') "
            "AND ts < toDateTime(%(hi)s, 'UTC')) AS predictions",
            {"lo": start, "hi": end},
        )
        fingerprint = tuple(int(probe[k][0]) for k in ("labels", "newest", "predictions"))
        key = (names.table("perfsum"), start, end)
        if self._seen.get(key) == fingerprint:
            return []
        # the join's set of request ids grows with the predictions in range: skip it while no label exists
        rows_of = self._live_rows if fingerprint[0] else self._unlabelled_rows
        rows_sql = rows_of(names, schema, self._columns(schema))
        params = {"lo": start, "hi": end}
        current = self.engine.query_columns(
            f"SELECT toUInt32(bucket) AS b, count() AS n, sum(has) AS labeled FROM ({rows_sql}) GROUP BY bucket",
            params,
        )
        done = self.engine.query_columns(
            f"SELECT toUInt32(bucket) AS b, argMax(rows, gen) AS n, argMax(info, gen) AS info FROM ("
            f"SELECT bucket, gen, sum(rows) AS rows, any(info) AS info FROM {ledger} WHERE kind = 'l' "
            "AND bucket >= toDateTime(%(lo)s, 'UTC') AND bucket < toDateTime(%(hi)s, 'UTC') GROUP BY bucket, gen"
            ") GROUP BY b",
            params,
        )
        have = {int(b): (int(n), str(i)) for b, n, i in zip(done["b"], done["n"], done["info"], strict=True)}
        stale = [
            int(b)
            for b, n, lab in zip(current["b"], current["n"], current["labeled"], strict=True)
            if have.get(int(b)) != (int(n), json.dumps({"labeled": int(lab)}))
        ]
        if not stale:
            self._seen[key] = fingerprint
            return []
        gen = time.time_ns()
        for run in _runs(sorted(stale)):
            lo, hi = run[0], run[-1] + BUCKET_SECONDS
            self._write(
                names,
                schema,
                rows_sql,
                "l",
                gen,
                {"lo": lo, "hi": hi},
            )
        self._seen[key] = fingerprint
        return stale

    def summarize_reference(
        self, project: str, schema: ModelSchema, version: str, *, force: bool = False
    ) -> bool:
        """Summarise the labelled reference of a version once per upload; False when it has no labels.

        An upload is recognised by its row and label counts; the upload itself summarises with
        `force`, as a corrected reference may keep both.
        """
        names = self.events.names(project, schema.name)
        self.ensure(names)
        _, _, _, ledger = _tables(names)
        table = names(Kind.REFERENCE)
        got = self.engine.query_columns(
            f"SELECT count() AS n, countIf(isNotNull(label)) AS labeled FROM {table} WHERE version = %(v)s",
            {"v": version},
        )
        rows, labeled = int(got["n"][0]), int(got["labeled"][0])
        if labeled == 0:
            return False
        # each chunk's ledger row holds its own labelled count: the newest generation's sum is the upload's
        have = self.engine.query_columns(
            f"SELECT argMax(total, gen) AS n, argMax(labeled, gen) AS labeled FROM (SELECT gen, "
            f"sum(rows) AS total, sum(toUInt64OrZero(extract(info, %(count)s))) AS labeled FROM {ledger} "
            "WHERE kind = 'q' AND version = %(v)s GROUP BY gen)",
            {"v": version, "count": '"labeled": *([0-9]+)'},
        )
        if not force and len(have["n"]) and (int(have["n"][0]), int(have["labeled"][0])) == (rows, labeled):
            return True
        chunk = max(-(-rows // REFERENCE_CHUNKS), 1)
        self._write(
            names,
            schema,
            self._reference_rows(names, self._columns(schema), chunk),
            "q",
            time.time_ns(),
            {"v": version},
        )
        return True

    # -- reading ------------------------------------------------------------------------------

    def read(
        self,
        project: str,
        schema: ModelSchema,
        *,
        kind: str,
        start: int,
        end: int,
        step: int,
        versions: list[str] | None = None,
        slices: str = "overall",
    ) -> dict[tuple[str, str], PerfSummary]:
        """Per (version, slice): windows of binned scores, confusion counts and error moments.

        `slices`: 'overall' (slice ''), 'single' (every field=value), 'pairs' (a=x&b=y), or 'all'.
        """
        names = self.events.names(project, schema.name)
        self.ensure(names)
        perfsum, confsum, regsum, ledger = _tables(names)
        n_windows = max(-(-(end - start) // step), 0)
        if n_windows == 0:
            return {}
        where = "bucket >= toDateTime(%(lo)s, 'UTC') AND bucket < toDateTime(%(hi)s, 'UTC')"
        params: dict[str, Any] = {"lo": start, "hi": end, "step": step}
        if versions is not None:
            where += " AND version IN %(versions)s"
            params["versions"] = tuple(versions) or ("",)
        slice_where = {
            "overall": "slice = ''",
            "single": "slice != '' AND position(slice, '&') = 0",
            "pairs": "position(slice, '&') > 0",
            "all": "1",
        }[slices]
        gens = (
            f"(version, bucket, gen) GLOBAL IN (SELECT version, bucket, max(gen) FROM {ledger} WHERE kind = '{kind}' "
            f"AND slice = '' AND {where} GROUP BY version, bucket)"
        )
        window = "intDiv(toUInt32(bucket) - %(lo)s, %(step)s)"
        scope = f"kind = '{kind}' AND {where} AND {slice_where} AND {gens}"
        out: dict[tuple[str, str], PerfSummary] = {}

        def get(version: str, slice_: str) -> PerfSummary:
            key = (version, slice_)
            if key not in out:
                out[key] = PerfSummary(
                    version, slice_, start + step * np.arange(n_windows, dtype=np.int64), step
                )
            return out[key]

        if schema.task is not Task.REGRESSION:
            ps = self.engine.query_columns(
                f"SELECT version, slice, {window} AS w, target, bin, pred, labeled, y, sum(n) AS n, sum(s) AS s, "
                f"sum(s2) AS s2, sum(ll) AS ll FROM {perfsum} WHERE {scope} "
                "GROUP BY version, slice, w, target, bin, pred, labeled, y",
                params,
            )
            groups: dict[tuple[str, str, str], list[int]] = {}
            for i in range(len(ps["version"])):
                groups.setdefault(
                    (str(ps["version"][i]), str(ps["slice"][i]), str(ps["target"][i])), []
                ).append(i)
            for (v, sl, target), idx in groups.items():
                ix = np.asarray(idx)
                bins = BinnedScores.empty(n_windows)
                cell = (
                    ps["w"][ix].astype(np.int64),
                    ps["bin"][ix].astype(np.int64),
                    ps["pred"][ix].astype(np.int64),
                    ps["labeled"][ix].astype(np.int64),
                    ps["y"][ix].astype(np.int64),
                )
                np.add.at(bins.n, cell, ps["n"][ix].astype(np.float64))
                np.add.at(bins.s, cell, ps["s"][ix].astype(np.float64))
                np.add.at(bins.s2, cell, ps["s2"][ix].astype(np.float64))
                np.add.at(bins.ll, cell, ps["ll"][ix].astype(np.float64))
                get(v, sl).binned[target] = bins
            cs = self.engine.query_columns(
                f"SELECT version, slice, {window} AS w, pred, label, sum(n) AS n FROM {confsum} WHERE {scope} "
                "GROUP BY version, slice, w, pred, label",
                params,
            )
            cgroups: dict[tuple[str, str], list[int]] = {}
            for i in range(len(cs["version"])):
                cgroups.setdefault((str(cs["version"][i]), str(cs["slice"][i])), []).append(i)
            classes = list(schema.classes)
            for (v, sl), idx in cgroups.items():
                ix = np.asarray(idx)
                preds = np.asarray([str(x) for x in cs["pred"][ix]], dtype=object)
                actual = np.asarray([str(x) for x in cs["label"][ix]], dtype=object)
                found = set(preds.tolist()) | set(actual.tolist())
                labels = classes + sorted(found - set(classes) - {""})
                lookup = {c: i for i, c in enumerate(labels)}
                pi = np.asarray([lookup.get(p, -1) for p in preds])
                li = np.asarray([lookup.get(a, -1) for a in actual])
                keep = (pi >= 0) & (li >= 0)
                matrix = np.zeros((n_windows, len(labels), len(labels)), dtype=np.int64)
                np.add.at(
                    matrix,
                    (cs["w"][ix][keep].astype(np.int64), pi[keep], li[keep]),
                    cs["n"][ix][keep].astype(np.int64),
                )
                s = get(v, sl)
                s.classes = labels
                s.confusion = matrix
        else:
            rs = self.engine.query_columns(
                f"SELECT version, slice, {window} AS w, labeled, sum(n) AS n, sum(se) AS se, sum(se2) AS se2, "
                "sum(sae) AS sae, sum(sape) AS sape, sum(nape) AS nape, sum(sy) AS sy, sum(sy2) AS sy2, "
                f"sum(sp) AS sp, sum(sp2) AS sp2 FROM {regsum} WHERE {scope} GROUP BY version, slice, w, labeled",
                params,
            )
            for i in range(len(rs["version"])):
                s = get(str(rs["version"][i]), str(rs["slice"][i]))
                if s.regression is None:
                    s.regression = RegressionMoments.empty(n_windows)
                w, lab = int(rs["w"][i]), int(rs["labeled"][i])
                for name in ("n", "se", "se2", "sae", "sape", "nape", "sy", "sy2", "sp", "sp2"):
                    getattr(s.regression, name)[w, lab] += float(rs[name][i])
        return out


@dataclass
class BinnedScores:
    """Counts and sums per (window, score bin, predicted, labelled, label) cell."""

    n: np.ndarray  # (W, BINS, 2, 2, 2)
    s: np.ndarray
    s2: np.ndarray
    ll: np.ndarray

    @classmethod
    def empty(cls, w: int) -> BinnedScores:
        shape = (w, BINS, 2, 2, 2)
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape))


@dataclass
class RegressionMoments:
    """Sums per (window, labelled flag): count, error, error², |error|, |error|/|y|, y, y², prediction, prediction²."""

    n: np.ndarray
    se: np.ndarray
    se2: np.ndarray
    sae: np.ndarray
    sape: np.ndarray
    nape: np.ndarray
    sy: np.ndarray
    sy2: np.ndarray
    sp: np.ndarray
    sp2: np.ndarray

    @classmethod
    def empty(cls, w: int) -> RegressionMoments:
        return cls(*(np.zeros((w, 2)) for _ in range(10)))


@dataclass
class PerfSummary:
    version: str
    slice: str
    starts: np.ndarray
    step: int
    binned: dict[str, BinnedScores] = field(default_factory=dict)  # target '' (binary) or class / '@max'
    classes: list[str] = field(default_factory=list)
    confusion: np.ndarray | None = None  # (W, K predicted, K label)
    regression: RegressionMoments | None = None
