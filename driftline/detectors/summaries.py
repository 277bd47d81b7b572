"""Phase one of detection: compact, mergeable summaries computed inside ClickHouse.

Per model, version and hourly bucket, one pass over the raw rows writes:

- `numsum`: per numeric column (features, score, regression prediction, latency, stage
  timings) the count, sum, sum of squares, min, max and a t-digest state;
- `catsum`: per categorical column (features, booleans, class predictions, status,
  failing stage, data-quality violation codes, and numeric features the reference
  shows to be discrete) the count of each value;
- `ledger`: per bucket, how many raw rows the summary saw, written last.

A window of any length merges its buckets with -Merge, so a detection run costs the
same whatever the raw volume. A bucket whose raw count no longer matches its ledger
(late rows, a replayed spool) is summarised again under a new generation; readers
take the newest generation the ledger vouches for, so a half-written generation is
never read. The reference of a version is summarised the same way, in chunks of rows
(kind 'r', bucket = chunk number), so that thresholds can be learned from it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftline.schema import FeatureKind, ModelSchema, Task
from driftline.storage.events import EventStore, Kind, ddl
from driftline.storage.events.engine import EngineInfo
from driftline.storage.events.tables import FEATURE_PREFIX, META_PREFIX, TableNames

log = logging.getLogger(__name__)

BUCKET_SECONDS = 3600
LEVELS = np.round(
    np.concatenate(
        [
            [0.0001, 0.0005],
            np.arange(1, 10) / 1000,
            np.arange(10, 991, 5) / 1000,
            np.arange(991, 1000) / 1000,
            [0.9995, 0.9999],
        ]
    ),
    4,
)
NULL = "\x00"  # the value under which catsum counts nulls
MAX_VALUES = 2000  # distinct values kept per bucket and column; the rest is the remainder of `rows`
DISCRETE_MAX = 20  # a numeric feature with at most this many values in the reference is also counted by value
REFERENCE_CHUNKS = 10
TDIGEST_ROWS = 16_384  # rows per bucket a t-digest sees before it samples (see _num_states)

SCORE = "@score"
PREDICTION = "@prediction"
LATENCY = "@latency_ms"
STATUS = "@status"
ERROR = "@error"
DQ = "@dq"
TIMING = "@timing:"
CLASS_SCORE = "@score:"

_LEVELS_SQL = ", ".join(repr(float(x)) for x in LEVELS)


def _tables(names: TableNames) -> tuple[str, str, str]:
    return names.table("numsum"), names.table("catsum"), names.table("ledger")


def summary_ddl(names: TableNames, info: EngineInfo) -> list[str]:
    """DDL of the summary tables; the state types follow what the server's -State functions produce.

    A -State of a Nullable column is typed with the Nullable argument on current
    ClickHouse and without it on 18.16; the queries are the same on both.
    """
    numsum, catsum, ledger = _tables(names)
    arg = "Float64" if info.legacy else "Nullable(Float64)"
    return [
        f"CREATE TABLE IF NOT EXISTS {numsum} (kind String, version String, slice String, bucket DateTime('UTC'), "
        f"gen UInt64, feature String, n AggregateFunction(count, {arg}), s AggregateFunction(sum, {arg}), "
        f"s2 AggregateFunction(sum, {arg}), mn AggregateFunction(min, {arg}), mx AggregateFunction(max, {arg}), "
        "td AggregateFunction(quantilesTDigestWeightedIf(0.5), Float64, UInt64, UInt8)) "
        "ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(bucket) "
        "ORDER BY (kind, version, slice, feature, bucket, gen)",
        f"CREATE TABLE IF NOT EXISTS {catsum} (kind String, version String, slice String, bucket DateTime('UTC'), "
        "gen UInt64, feature String, value String, n UInt64) ENGINE = SummingMergeTree(n) "
        "PARTITION BY toYYYYMM(bucket) ORDER BY (kind, version, slice, feature, bucket, gen, value)",
        f"CREATE TABLE IF NOT EXISTS {ledger} (kind String, version String, slice String, bucket DateTime('UTC'), "
        "gen UInt64, rows UInt64, last_ts DateTime('UTC'), info String, created DateTime('UTC')) "
        "ENGINE = MergeTree PARTITION BY toYYYYMM(bucket) ORDER BY (kind, version, bucket, gen, slice)",
    ]


# -- what a summary pass reads ------------------------------------------------------------


def _num_states(expr: str, modulus: str = "1", *, sampled: bool = False) -> list[str]:
    """States of a Nullable(Float64) expression: nulls are skipped by every function.

    The t-digest sees, when `sampled`, only the rows whose `keep` is set (one in `modulus`,
    by a hash of the request id, computed once per row: see `_sampler`), each weighted by
    `modulus`: the sketch is the costly part of a summary, and beyond some thousands of rows
    per bucket a weighted sample knows the quantiles as well as every row does. Counts,
    sums, min and max always see every row.
    """
    keep = " AND keep" if sampled else ""
    return [
        f"countState({expr})",
        f"sumState({expr})",
        f"sumState({expr} * {expr})",
        f"minState({expr})",
        f"maxState({expr})",
        f"quantilesTDigestWeightedIfState(0.5)(assumeNotNull({expr}), toUInt64({modulus}), isNotNull({expr}){keep})",
    ]


def _sampler(modulus: str) -> str:
    """The WITH clause naming, when the t-digest samples, a row's weight and whether it is `keep`."""
    if modulus == "1":
        return ""
    return f"WITH {modulus} AS modulus, modulo(cityHash64(request_id), modulus) = 0 AS keep "


def _in_order(info: EngineInfo) -> str:
    """Settings of a summary pass: aggregate runs of rows sharing the sort key prefix at once."""
    return " SETTINGS optimize_aggregation_in_order = 1" if info.aggregation_in_order else ""


def numeric_columns(schema: ModelSchema) -> list[tuple[str, str]]:
    """(summary name, Nullable(Float64) expression) of every numeric column."""
    out: list[tuple[str, str]] = []
    for f in schema.features:
        if f.stored and f.kind is FeatureKind.NUMERIC:
            out.append((f.name, f"`{FEATURE_PREFIX}{f.name}`"))
    for m in schema.metadata:
        if m.stored and m.kind is FeatureKind.NUMERIC:
            out.append((m.name, f"`{META_PREFIX}{m.name}`"))
    out.append((PREDICTION, "prediction") if schema.task is Task.REGRESSION else (SCORE, "score"))
    if schema.task is Task.MULTICLASS:
        for i, c in enumerate(schema.classes, start=1):
            out.append(
                (CLASS_SCORE + c, f"if(length(scores) >= {i}, toNullable(arrayElement(scores, {i})), NULL)")
            )
    out.append((LATENCY, "latency_ms"))
    return out


def categorical_columns(schema: ModelSchema, discrete: set[str], *, live: bool) -> list[tuple[str, str]]:
    """(summary name, stored column) of every column counted by value (as Nullable(String))."""
    out: list[tuple[str, str]] = []
    for spec, prefix in [(f, FEATURE_PREFIX) for f in schema.features] + [
        (m, META_PREFIX) for m in schema.metadata
    ]:
        if not spec.stored:
            continue
        col = f"`{prefix}{spec.name}`"
        if spec.kind is not FeatureKind.NUMERIC or spec.name in discrete:
            out.append((spec.name, col))
    if schema.task is not Task.REGRESSION:
        out.append((PREDICTION, "prediction"))
    if live:
        out.append((STATUS, "status"))
    return out


_VERSION_STEP = 4_294_967_296  # 2**32: a bucket (epoch seconds or chunk) fits below it


@dataclass(frozen=True)
class GroupKey:
    """A summary pass's group key: (version, bucket) packed in one UInt64 `k`, and the slice.

    ClickHouse aggregates by a single number key about twice as fast as by a
    (String, DateTime) pair, and the rows of a bucket lie together, so consecutive rows
    mostly share a key. The versions are those the ledger counted; a row of another
    version, arriving meanwhile, is left out (the ledger does not vouch for it either).
    The SQL takes its versions from `params`.
    """

    versions: list[str]
    bucket_expr: str
    slice_expr: str

    @property
    def params(self) -> dict[str, Any]:
        return {"key_versions": self.versions, "key_codes": list(range(len(self.versions)))}

    @property
    def expr(self) -> str:
        return (
            f"toUInt64(toUInt32({self.bucket_expr})) + "
            f"{_VERSION_STEP} * transform(version, %(key_versions)s, %(key_codes)s, {len(self.versions)})"
        )

    @property
    def version(self) -> str:
        return f"arrayElement(%(key_versions)s, toUInt32(intDiv(k, {_VERSION_STEP})) + 1)"

    @property
    def bucket(self) -> str:
        return f"toDateTime(toUInt32(modulo(k, {_VERSION_STEP})), 'UTC')"

    @property
    def known(self) -> str:
        return f"intDiv(k, {_VERSION_STEP}) < {len(self.versions)}"


@dataclass(frozen=True)
class Source:
    """Where a summary pass reads: live predictions (by hour) or a version's reference (by chunk)."""

    kind: str  # 'p' or 'r'
    table: str
    bucket_expr: str
    where: str
    params: dict[str, Any]
    modulus: str = "1"  # SQL: the t-digest sample's 1-in-n per row (see _num_states)


class Summarizer:
    """Writes and reads the summaries of one event store."""

    def __init__(self, events: EventStore) -> None:
        self.events = events
        self.engine = events.engine
        self._ready: dict[str, float] = {}

    def ensure(self, names: TableNames) -> None:
        """Create the summary tables, at most once a minute per model (they may be dropped with it)."""
        key = names.table("ledger")
        if time.monotonic() - self._ready.get(key, -1e9) < 60:
            return
        for statement in summary_ddl(names, self.engine.info):
            ddl.create_from_statement(self.engine, statement)
        self._ready[key] = time.monotonic()

    # -- writing ---------------------------------------------------------------------------

    def _write(
        self,
        names: TableNames,
        schema: ModelSchema,
        src: Source,
        gen: int,
        discrete: set[str],
        slices: list[str],
        *,
        live: bool,
        info: str | None = None,
    ) -> None:
        """One generation of one source: numeric states, timings, value counts, then the ledger.

        Slices ride along in the same scan: each row counts once overall (slice '') and once
        under `field=value` for every slice field, through arrayJoin before grouping.
        """
        ledger = _tables(names)[2]
        slice_expr = (
            "arrayJoin([''"
            + "".join(
                f", concat('{f}=', ifNull(CAST(`{META_PREFIX}{f}` AS Nullable(String)), '(null)'))"
                for f in slices
            )
            + "])"
            if slices
            else "''"
        )
        # the rows each bucket holds, counted before the summaries are written: a row arriving
        # meanwhile may or may not be in them, so the ledger must not vouch for it (the bucket
        # then looks stale and is summarised again), as a count taken afterwards would
        with ddl.scratch_table(
            self.engine,
            names.database,
            "ledger",
            "version String, slice String, bucket DateTime('UTC'), rows UInt64, last_ts DateTime('UTC')",
        ) as counted:
            self.engine.execute(
                f"INSERT INTO {counted} SELECT version, {slice_expr} AS slice, {src.bucket_expr} AS bucket, "
                f"count(), max(ts) FROM {src.table} WHERE {src.where} GROUP BY version, slice, bucket",
                src.params,
            )
            versions = self.engine.query_columns(f"SELECT DISTINCT version FROM {counted}")["version"]
            if not len(versions):
                return
            key = GroupKey(sorted(str(v) for v in versions), src.bucket_expr, slice_expr)
            self._write_states(names, schema, src, gen, discrete, key, live=live)
            self.engine.execute(
                f"INSERT INTO {ledger} (kind, version, slice, bucket, gen, rows, last_ts, info, created) "
                f"SELECT '{src.kind}', version, slice, bucket, {gen}, rows, last_ts, %(info)s, now() FROM {counted}",
                {"info": info if info is not None else _info(discrete, slices)},
            )

    def _write_states(
        self,
        names: TableNames,
        schema: ModelSchema,
        src: Source,
        gen: int,
        discrete: set[str],
        key: GroupKey,
        *,
        live: bool,
    ) -> None:
        """Numeric states, timings and value counts of one generation (the ledger comes after),
        grouped by `key`."""
        numsum, catsum, _ = _tables(names)
        cols = numeric_columns(schema)
        arrays = ["[" + ", ".join(f"'{name}'" for name, _ in cols) + "] AS names"]
        sampled = src.modulus != "1"
        states = [_num_states(expr, "modulus" if sampled else "1", sampled=sampled) for _, expr in cols]
        for i, alias in enumerate(("ns", "ss", "s2s", "mns", "mxs", "tds")):
            arrays.append("[" + ", ".join(st[i] for st in states) + f"] AS {alias}")
        settings = _in_order(self.engine.info)
        self.engine.execute(
            f"INSERT INTO {numsum} (kind, version, slice, bucket, gen, feature, n, s, s2, mn, mx, td) "
            f"SELECT '{src.kind}', {key.version} AS version, slice, {key.bucket} AS bucket, {gen}, feature, "
            f"n, s, s2, mn, mx, td FROM ({_sampler(src.modulus)}SELECT {key.expr} AS k, {key.slice_expr} AS slice, "
            f"{', '.join(arrays)} FROM {src.table} WHERE {src.where} GROUP BY k, slice) "
            f"ARRAY JOIN names AS feature, ns AS n, ss AS s, s2s AS s2, mns AS mn, mxs AS mx, tds AS td "
            f"WHERE {key.known}{settings}",
            {**src.params, **key.params},
        )
        if live:
            timing = _num_states("toNullable(ms)")
            self.engine.execute(
                f"INSERT INTO {numsum} (kind, version, slice, bucket, gen, feature, n, s, s2, mn, mx, td) "
                f"SELECT '{src.kind}', {key.version} AS version, '', {key.bucket} AS bucket, {gen}, feature, "
                f"n, s, s2, mn, mx, td FROM (SELECT {key.expr} AS k, concat('{TIMING}', stage) AS feature, "
                f"{', '.join(f'{st} AS {a}' for st, a in zip(timing, ('n', 's', 's2', 'mn', 'mx', 'td'), strict=True))} "
                f"FROM {src.table} ARRAY JOIN timing_stage AS stage, timing_ms AS ms WHERE {src.where} "
                f"GROUP BY k, feature) WHERE {key.known}",
                {**src.params, **key.params},
            )
        # one GROUP BY per column beats one arrayJoin over all of them: no row multiplication
        # grouped by the stored column itself (a LowCardinality one by its dictionary index), cast after
        parts = [
            f"SELECT k, slice, '{name}' AS feature, ifNull(CAST(raw AS Nullable(String)), %(null)s) AS value, n "
            f"FROM (SELECT {key.expr} AS k, {key.slice_expr} AS slice, {col} AS raw, count() AS n "
            f"FROM {src.table} WHERE {src.where} GROUP BY k, slice, raw)"
            for name, col in categorical_columns(schema, discrete, live=live)
        ]
        parts.append(
            f"SELECT {key.expr} AS k, {key.slice_expr} AS slice, '{DQ}' AS feature, arrayJoin(dq) AS value, "
            f"count() AS n FROM {src.table} WHERE {src.where} AND notEmpty(dq) GROUP BY k, slice, value"
        )
        if live:
            parts.append(
                f"SELECT {key.expr} AS k, {key.slice_expr} AS slice, '{ERROR}' AS feature, "
                f"ifNull(error, '(unspecified)') AS value, count() AS n FROM {src.table} "
                f"WHERE {src.where} AND status != 'ok' GROUP BY k, slice, value"
            )
        self.engine.execute(
            f"INSERT INTO {catsum} (kind, version, slice, bucket, gen, feature, value, n) "
            f"SELECT '{src.kind}', {key.version} AS version, slice, {key.bucket} AS bucket, {gen}, feature, value, n "
            f"FROM (" + " UNION ALL ".join(parts) + f") WHERE {key.known} "
            f"ORDER BY n DESC LIMIT {MAX_VALUES} BY k, slice, feature",
            {**src.params, **key.params, "null": NULL},
        )

    def discrete_features(self, project: str, schema: ModelSchema) -> set[str]:
        """Numeric features that some reference of the model shows to take few values.

        Each version's newest reference summary says which in its ledger row: a corrected
        upload that no longer counts a feature by value takes it out.
        """
        names = self.events.names(project, schema.name)
        self.ensure(names)
        numeric = {f.name for f in schema.features if f.stored and f.kind is FeatureKind.NUMERIC}
        if not numeric:
            return set()
        _, _, ledger = _tables(names)
        got = self.engine.query_columns(
            f"SELECT version, argMax(info, gen) AS info FROM {ledger} WHERE kind = 'r' AND slice = '' GROUP BY version"
        )
        shown: set[str] = set()
        for info in got["info"]:
            shown.update(json.loads(str(info)).get("discrete", []))
        return shown & numeric

    def summarize(
        self, project: str, schema: ModelSchema, start: int, end: int, *, now: float | None = None
    ) -> int:
        """Bring summaries up to date over [start, end); returns how many buckets were written."""
        return len(self.summarize_buckets(project, schema, start, end, now=now))

    def summarize_buckets(
        self, project: str, schema: ModelSchema, start: int, end: int, *, now: float | None = None
    ) -> list[int]:
        """Bring the summaries of closed hourly buckets in [start, end) up to date; returns the buckets (epoch seconds) written."""
        names = self.events.names(project, schema.name)
        self.ensure(names)
        now = time.time() if now is None else now
        end = min(end, int(now) // BUCKET_SECONDS * BUCKET_SECONDS)
        start = start // BUCKET_SECONDS * BUCKET_SECONDS
        if end <= start:
            return []
        discrete = self.discrete_features(project, schema)
        slices = slice_fields(schema)
        _, _, ledger = _tables(names)
        table = names(Kind.PREDICTIONS)
        raw = self.engine.query_columns(
            f"SELECT toUInt32(toStartOfHour(ts)) AS b, count() AS n FROM {table} "
            "WHERE ts >= toDateTime(%(lo)s, 'UTC') AND ts < toDateTime(%(hi)s, 'UTC') GROUP BY b",
            {"lo": start, "hi": end},
        )
        done = self.engine.query_columns(
            f"SELECT toUInt32(bucket) AS b, argMax(rows, gen) AS n, argMax(info, gen) AS info FROM ("
            f"SELECT bucket, gen, sum(rows) AS rows, any(info) AS info FROM {ledger} WHERE kind = 'p' AND slice = '' "
            "AND bucket >= toDateTime(%(lo)s, 'UTC') AND bucket < toDateTime(%(hi)s, 'UTC') GROUP BY bucket, gen"
            ") GROUP BY b",
            {"lo": start, "hi": end},
        )
        have = {int(b): (int(n), str(i)) for b, n, i in zip(done["b"], done["n"], done["info"], strict=True)}
        rows_of = {int(b): int(n) for b, n in zip(raw["b"], raw["n"], strict=True)}
        info = _info(discrete, slices)
        stale = [
            int(b) for b, n in zip(raw["b"], raw["n"], strict=True) if have.get(int(b)) != (int(n), info)
        ]
        if not stale:
            return []
        gen = time.time_ns()
        for chunk in _runs(sorted(stale)):
            lo, hi = chunk[0], chunk[-1] + BUCKET_SECONDS
            src = Source(
                kind="p",
                table=table,
                bucket_expr="toStartOfHour(ts)",
                where="ts >= toDateTime(%(lo)s, 'UTC') AND ts < toDateTime(%(hi)s, 'UTC')",
                params={"lo": lo, "hi": hi},
                modulus=_modulus("toUInt32(toStartOfHour(ts))", {b: rows_of[b] for b in chunk}),
            )
            self._write(names, schema, src, gen, discrete, slices, live=True)
        log.info("summarised %d buckets", len(stale), extra={"model": schema.name, "project": project})
        return stale

    def summarize_reference(
        self, project: str, schema: ModelSchema, version: str, *, force: bool = False
    ) -> bool:
        """Summarise a version's reference in chunks, once per upload; False when it has no rows.

        An upload is recognised by a fingerprint of its rows (count, newest time, hash of the
        ids), so a run that finds it summarised costs one small query. The fingerprint does
        not see values: the upload itself summarises with `force`, as a corrected reference
        may keep its ids and times.
        """
        names = self.events.names(project, schema.name)
        self.ensure(names)
        _, _, ledger = _tables(names)
        table = names(Kind.REFERENCE)
        got = self.engine.query_columns(
            f"SELECT count() AS n, toUInt32(max(ts)) AS newest, sum(cityHash64(request_id, row)) AS h "
            f"FROM {table} WHERE version = %(v)s",
            {"v": version},
        )
        rows = int(got["n"][0])
        if rows == 0:
            return False
        slices = slice_fields(schema)
        fingerprint = [rows, int(got["newest"][0]), str(got["h"][0])]
        have = self.engine.query_columns(
            f"SELECT argMax(info, gen) AS info FROM {ledger} WHERE kind = 'r' AND version = %(v)s AND slice = ''",
            {"v": version},
        )
        if not force and len(have["info"]) and have["info"][0]:
            known = json.loads(str(have["info"][0]))
            if known.get("fingerprint") == fingerprint and known.get("slices") == slices:
                return True
        numeric = [f for f in schema.features if f.stored and f.kind is FeatureKind.NUMERIC]
        discrete: set[str] = set()
        if numeric:
            # uniqUpTo stops counting past the limit: the same decision as an exact count, far cheaper;
            # a column without a value (NULL on 18.16, 0 elsewhere) shows nothing to count by value
            uniq = ", ".join(
                f"ifNull(uniqUpTo({DISCRETE_MAX})(`{FEATURE_PREFIX}{f.name}`), 0) AS `{f.name}`"
                for f in numeric
            )
            counts = self.engine.query_columns(
                f"SELECT {uniq} FROM {table} WHERE version = %(v)s", {"v": version}
            )
            discrete = {f.name for f in numeric if 0 < int(counts[f.name][0]) <= DISCRETE_MAX}
        info = json.dumps({"fingerprint": fingerprint, "slices": slices, "discrete": sorted(discrete)})
        chunk = max(-(-rows // REFERENCE_CHUNKS), 1)
        src = Source(
            kind="r",
            table=table,
            bucket_expr=f"toDateTime(intDiv(row, {chunk}), 'UTC')",
            where="version = %(v)s",
            params={"v": version},
            modulus=str(sample_modulus(chunk)),
        )
        self._write(names, schema, src, time.time_ns(), discrete, slices, live=False, info=info)
        return True

    # -- reading ---------------------------------------------------------------------------

    def _live_gens(self, ledger: str, kind: str, where: str) -> str:
        return (
            f"(version, bucket, gen) GLOBAL IN (SELECT version, bucket, max(gen) FROM {ledger} "
            f"WHERE kind = '{kind}' AND slice = '' AND {where} GROUP BY version, bucket)"
        )

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
        features: list[str] | None = None,
    ) -> dict[str, Summary]:
        """Merged summaries per version over windows [start + i*step, start + (i+1)*step) up to `end`.

        `features` limits what is merged (a name ending in '*' is a prefix, e.g. '@timing:*').
        """
        got = self._read(project, schema, kind, start, end, step, versions, None, features)
        return {v: summary for (v, _), summary in got.items()}

    def read_slices(
        self,
        project: str,
        schema: ModelSchema,
        *,
        kind: str,
        start: int,
        end: int,
        step: int,
        field: str | None = None,
        versions: list[str] | None = None,
        features: list[str] | None = None,
    ) -> dict[tuple[str, str], Summary]:
        """Like `read`, per (version, slice) for the slices of `field` (or of every slice field)."""
        return self._read(project, schema, kind, start, end, step, versions, field or "", features)

    def _read(
        self,
        project: str,
        schema: ModelSchema,
        kind: str,
        start: int,
        end: int,
        step: int,
        versions: list[str] | None,
        field: str | None,
        features: list[str] | None = None,
    ) -> dict[tuple[str, str], Summary]:
        names = self.events.names(project, schema.name)
        self.ensure(names)
        numsum, catsum, ledger = _tables(names)
        n_windows = max(-(-(end - start) // step), 0)
        if n_windows == 0:
            return {}
        where = "bucket >= toDateTime(%(lo)s, 'UTC') AND bucket < toDateTime(%(hi)s, 'UTC')"
        params: dict[str, Any] = {"lo": start, "hi": end, "step": step}
        if versions is not None:
            where += " AND version IN %(versions)s"
            params["versions"] = tuple(versions) or ("",)
        if field is None:
            slice_where = "slice = ''"
        elif field == "":
            slice_where = "slice != ''"
        else:
            slice_where = "startsWith(slice, %(prefix)s)"
            params["prefix"] = field + "="
        window = "intDiv(toUInt32(bucket) - %(lo)s, %(step)s)"
        led = self.engine.query_columns(
            f"SELECT version, slice, toUInt32(bucket) AS b, gen, rows, toUInt32(last_ts) AS last_ts "
            f"FROM {ledger} WHERE kind = '{kind}' AND {where} AND (slice = '' OR {slice_where})",
            params,
        )
        ledgered = _LiveLedger.of(led, field)
        if ledgered.empty:
            return {}
        if len(ledgered.live) <= MAX_LISTED_GENS:
            # the live generations as a list: no subquery over the ledger in each read below
            gens = "(version, toUInt32(bucket), gen) IN %(live)s"
            params["live"] = ledgered.live
        else:
            gens = self._live_gens(ledger, kind, where)
        scope = f"kind = '{kind}' AND {where} AND {slice_where} AND {gens}"
        feature_scope = scope
        if features is not None:
            exact = tuple(f for f in features if not f.endswith("*")) or ("",)
            prefixes = [f[:-1] for f in features if f.endswith("*")]
            params["features"] = exact
            ors = ["feature IN %(features)s"]
            for i, prefix in enumerate(prefixes):
                params[f"prefix{i}"] = prefix
                ors.append(f"startsWith(feature, %(prefix{i})s)")
            feature_scope = f"{scope} AND ({' OR '.join(ors)})"
        num = self.engine.query_columns(
            f"SELECT version, slice, {window} AS w, feature, countMerge(n) AS n, sumMerge(s) AS s, "
            f"sumMerge(s2) AS s2, minMerge(mn) AS mn, maxMerge(mx) AS mx, "
            f"quantilesTDigestWeightedIfMerge({_LEVELS_SQL})(td) AS q FROM {numsum} "
            f"WHERE {feature_scope} GROUP BY version, slice, w, feature",
            params,
        )
        cat = self.engine.query_columns(
            f"SELECT version, slice, {window} AS w, feature, value, sum(n) AS n FROM {catsum} "
            f"WHERE {feature_scope} GROUP BY version, slice, w, feature, value",
            params,
        )
        out: dict[tuple[str, str], Summary] = {}

        def summary(version: str, slice_: str) -> Summary:
            key = (version, slice_)
            if key not in out:
                out[key] = Summary.empty(version, start, step, n_windows, slice_)
            return out[key]

        for v, sl, w, rows, last in ledgered.windows(start, step, n_windows):
            s = summary(v, sl)
            s.rows[w] = rows
            s.last_ts[w] = last
        for i in range(len(num["version"])):
            s = summary(str(num["version"][i]), str(num["slice"][i]))
            block = s.numeric_block(str(num["feature"][i]))
            w = int(num["w"][i])
            block.n[w] = num["n"][i]
            block.sum[w] = num["s"][i]
            block.sum2[w] = num["s2"][i]
            if block.n[w] > 0:
                block.min[w] = num["mn"][i]
                block.max[w] = num["mx"][i]
                block.q[w] = np.asarray(num["q"][i], dtype=np.float64)
        grouped: dict[tuple[str, str, str], list[int]] = {}
        for i in range(len(cat["version"])):
            key3 = (str(cat["version"][i]), str(cat["slice"][i]), str(cat["feature"][i]))
            grouped.setdefault(key3, []).append(i)
        for (v, sl, feature), idx in grouped.items():
            s = summary(v, sl)
            ix = np.asarray(idx)
            values = cat["value"][ix].astype(object)
            uniq, inverse = np.unique(values, return_inverse=True)
            counts = np.zeros((n_windows, len(uniq)), dtype=np.int64)
            np.add.at(counts, (cat["w"][ix].astype(np.int64), inverse), cat["n"][ix].astype(np.int64))
            s.categorical[feature] = CategoricalBlock(values=uniq, counts=counts)
        return out


MAX_LISTED_GENS = 2000  # (version, bucket) pairs a read lists inline; beyond, a subquery finds them


@dataclass(frozen=True)
class _LiveLedger:
    """The ledger rows of one read that belong to each bucket's newest generation.

    A bucket summarised again has older generations next to its newest; the newest is
    the one whose overall row (slice '') has the largest gen. Slice rows of that
    generation come with it.
    """

    version: np.ndarray
    slice: np.ndarray
    bucket: np.ndarray
    rows: np.ndarray
    last_ts: np.ndarray
    live: tuple[tuple[str, int, int], ...]  # (version, bucket, gen) of every newest generation

    @property
    def empty(self) -> bool:
        return not self.live

    @classmethod
    def of(cls, led: dict[str, np.ndarray], field: str | None) -> _LiveLedger:
        version = led["version"].astype(str)
        slices = led["slice"].astype(str)
        bucket = led["b"].astype(np.int64)
        gen = led["gen"].astype(np.uint64)
        names, code = np.unique(version, return_inverse=True)
        key = code.astype(np.int64) << 32 | bucket
        top = slices == ""
        # the newest generation of each (version, bucket): the last of its run once sorted by gen
        order = np.lexsort((gen[top], key[top]))
        top_key, top_gen = key[top][order], gen[top][order]
        last = np.r_[top_key[1:] != top_key[:-1], True] if len(top_key) else np.zeros(0, dtype=bool)
        newest_key, newest_gen = top_key[last], top_gen[last]
        at = np.clip(np.searchsorted(newest_key, key), 0, max(len(newest_key) - 1, 0))
        live_row = (
            (newest_key[at] == key) & (newest_gen[at] == gen) if len(newest_key) else np.zeros(len(key), bool)
        )
        keep = live_row & (top if field is None else ~top)
        live = tuple(
            zip(
                names[newest_key >> 32].tolist(),
                (newest_key & 0xFFFFFFFF).tolist(),
                newest_gen.tolist(),
                strict=True,
            )
        )
        return cls(
            version=version[keep],
            slice=slices[keep],
            bucket=bucket[keep],
            rows=led["rows"].astype(np.int64)[keep],
            last_ts=led["last_ts"].astype(np.int64)[keep],
            live=live,
        )

    def windows(self, start: int, step: int, n: int) -> list[tuple[str, str, int, int, int]]:
        """(version, slice, window, rows, newest event time) per window that has rows."""
        w = (self.bucket - start) // step
        inside = (w >= 0) & (w < n)
        groups = np.stack([self.version[inside], self.slice[inside], w[inside].astype(str)], axis=1)
        if not len(groups):
            return []
        uniq, which = np.unique(groups, axis=0, return_inverse=True)
        which = which.reshape(-1)
        rows = np.zeros(len(uniq), dtype=np.int64)
        last = np.zeros(len(uniq), dtype=np.int64)
        np.add.at(rows, which, self.rows[inside])
        np.maximum.at(last, which, self.last_ts[inside])
        return [
            (str(v), str(sl), int(wi), int(r), int(t))
            for (v, sl, wi), r, t in zip(uniq.tolist(), rows.tolist(), last.tolist(), strict=True)
        ]


def sample_modulus(rows: int) -> int:
    """1-in-n for a bucket of `rows` rows: a power of two keeping about TDIGEST_ROWS of them."""
    n = 1
    while rows > TDIGEST_ROWS * n:
        n *= 2
    return n


def _modulus(bucket_sql: str, rows: dict[int, int]) -> str:
    """The per-row 1-in-n of a run of buckets, as SQL (a constant when the buckets agree)."""
    moduli = {b: sample_modulus(n) for b, n in rows.items()}
    if len(set(moduli.values())) <= 1:
        return str(next(iter(moduli.values()), 1))
    keys = ", ".join(str(b) for b in moduli)
    values = ", ".join(str(m) for m in moduli.values())
    return f"transform({bucket_sql}, [{keys}], [{values}], 1)"


def _info(discrete: set[str], slices: list[str]) -> str:
    """What a generation was written with; a change makes its buckets stale."""
    return json.dumps({"discrete": sorted(discrete), "slices": list(slices)})


def slice_fields(schema: ModelSchema) -> list[str]:
    """Metadata fields summarised per value: the stored categorical and boolean ones."""
    return [m.name for m in schema.metadata if m.stored and m.kind is not FeatureKind.NUMERIC]


def _runs(buckets: list[int]) -> list[list[int]]:
    """Contiguous runs of hourly buckets (each summarised by one range scan), at most a month each."""
    runs: list[list[int]] = []
    for b in buckets:
        if runs and b == runs[-1][-1] + BUCKET_SECONDS and len(runs[-1]) < 24 * 31:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


@dataclass
class NumericBlock:
    """One numeric column over W windows: exact moments and t-digest quantiles at LEVELS."""

    n: np.ndarray
    sum: np.ndarray
    sum2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q: np.ndarray  # (W, len(LEVELS)), NaN where a window has no values

    @classmethod
    def empty(cls, w: int) -> NumericBlock:
        nan = np.full(w, np.nan)
        return cls(
            np.zeros(w), np.zeros(w), np.zeros(w), nan.copy(), nan.copy(), np.full((w, len(LEVELS)), np.nan)
        )

    def window(self, i: int) -> NumericWindow:
        return NumericWindow(
            n=float(self.n[i]),
            sum=float(self.sum[i]),
            sum2=float(self.sum2[i]),
            min=float(self.min[i]),
            max=float(self.max[i]),
            q=self.q[i],
        )


@dataclass(frozen=True)
class NumericWindow:
    n: float
    sum: float
    sum2: float
    min: float
    max: float
    q: np.ndarray

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else float("nan")

    @property
    def var(self) -> float:
        """Population variance (ddof=0), as numpy's default std uses."""
        if not self.n:
            return float("nan")
        return max(self.sum2 / self.n - self.mean**2, 0.0)

    @property
    def std(self) -> float:
        return float(np.sqrt(self.var))


@dataclass
class CategoricalBlock:
    """One column counted by value over W windows; NULL counts under `NULL`."""

    values: np.ndarray  # (K,) object
    counts: np.ndarray  # (W, K) int64

    def window(self, i: int) -> dict[str, int]:
        row = self.counts[i]
        return {str(v): int(c) for v, c in zip(self.values, row, strict=True) if c}


@dataclass
class Summary:
    """Summaries of one version over a grid of windows (or reference chunks)."""

    version: str
    starts: np.ndarray
    step: int
    rows: np.ndarray
    last_ts: np.ndarray
    numeric: dict[str, NumericBlock] = field(default_factory=dict)
    categorical: dict[str, CategoricalBlock] = field(default_factory=dict)
    slice: str = ""

    @classmethod
    def empty(cls, version: str, start: int, step: int, n: int, slice_: str = "") -> Summary:
        return cls(
            slice=slice_,
            version=version,
            starts=start + step * np.arange(n, dtype=np.int64),
            step=step,
            rows=np.zeros(n, dtype=np.int64),
            last_ts=np.zeros(n, dtype=np.int64),
        )

    def numeric_block(self, feature: str) -> NumericBlock:
        if feature not in self.numeric:
            self.numeric[feature] = NumericBlock.empty(len(self.starts))
        return self.numeric[feature]

    @property
    def windows(self) -> int:
        return len(self.starts)
