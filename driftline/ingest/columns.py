"""Typed columns from raw input, JSON lists or Arrow arrays alike.

Fixed fields of a record (request_id, timestamp, score...) must have the right type:
a wrong one makes the request malformed, reported per row and field. Feature and
metadata values that break the schema are kept (as null when they cannot be typed)
and reported as data-quality violations: monitoring bad data is the job.
Fast paths check a whole column at once; per-value work happens only on bad data.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from driftline.errors import InvalidInput
from driftline.schema import canonical_class

Raw: TypeAlias = "list[Any] | pa.Array | pa.ChunkedArray"
MAX_ERRORS = 50
MIN_EPOCH = 946_684_800  # 2000-01-01: earlier event times are taken for mistakes
MAX_STRING = 4096


@dataclass
class RowErrors:
    """Per-row, per-field errors of one request; raised together so a client fixes them at once."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0

    def add(self, row: int, fld: str, message: str) -> None:
        self.total += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"row": row, "field": fld, "error": message})

    def add_rows(self, rows: np.ndarray, fld: str, message: Callable[[int], str]) -> None:
        room = max(MAX_ERRORS - len(self.errors), 0)
        for row in rows[:room]:
            self.add(int(row), fld, message(int(row)))
        self.total += max(len(rows) - room, 0)

    def raise_if_any(self) -> None:
        if not self.errors:
            return
        first = self.errors[0]
        more = f" (and {self.total - 1} more)" if self.total > 1 else ""
        raise InvalidInput(
            f"row {first['row']}, field {first['field']!r}: {first['error']}{more}; nothing was stored",
            details={"errors": self.errors, "error_count": self.total},
        )


def _as_list(values: Raw) -> list[Any]:
    return values.to_pylist() if isinstance(values, (pa.Array, pa.ChunkedArray)) else values


def _combine(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- numbers ------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def floats(values: Raw) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (NaN where null or bad) and the mask of bad (untypeable) values."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = _combine(values)
        if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type):
            out = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
            finite = np.isfinite(out)
            if finite.all():
                return out, np.zeros(len(out), dtype=bool)
            bad = ~finite & ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            if bad.any():
                out = out.copy()
                out[bad] = np.nan
            return out, bad
        if pa.types.is_null(arr.type):
            return np.full(len(arr), np.nan), np.zeros(len(arr), dtype=bool)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            try:
                return floats(arr.cast(pa.float64()))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        values = arr.to_pylist()
    kinds = set(map(type, values))
    if kinds <= {int, float, type(None)}:
        try:
            out = np.array(values, dtype=np.float64)
        except OverflowError:
            out = None
        if out is not None:
            bad = ~np.isfinite(out) & np.array([v is not None for v in values], dtype=bool)
            out[bad] = np.nan
            return out, bad
    out = np.full(len(values), np.nan)
    bad = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None:
            continue
        if _is_number(v):
            out[i] = float(v)
        elif isinstance(v, str):
            try:
                f = float(v)
            except ValueError:
                bad[i] = True
                continue
            if math.isfinite(f):
                out[i] = f
            else:
                bad[i] = True
        else:
            bad[i] = True
    return out, bad


def nulls(values: Raw) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return np.asarray(_combine(values).is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return np.array([v is None for v in values], dtype=bool)


# -- strings and classes -----------------------------------------------------------------


def strings(values: Raw, *, canonical: bool = False) -> tuple[pa.Array, np.ndarray]:
    """String values (null where null or bad) and the mask of bad values.

    With canonical=True, numbers and booleans become class names ('1', '0', ...);
    otherwise numbers become their text and booleans are bad.
    """
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = _combine(values)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            return _clip(arr.cast(pa.string()))
        if pa.types.is_dictionary(arr.type):
            return strings(arr.dictionary_decode(), canonical=canonical)
        if pa.types.is_null(arr.type):
            return pa.nulls(len(arr), pa.string()), np.zeros(len(arr), dtype=bool)
        if pa.types.is_integer(arr.type) or (pa.types.is_boolean(arr.type) and canonical):
            return pa.array(
                [None if v is None else canonical_class(v) for v in arr.to_pylist()], pa.string()
            ), (np.zeros(len(arr), dtype=bool))
        values = arr.to_pylist()
    kinds = set(map(type, values))
    if kinds <= {str, type(None)}:
        return _clip(pa.array(values, pa.string()))
    out: list[str | None] = [None] * len(values)
    bad = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, str):
            out[i] = v[:MAX_STRING]
        elif isinstance(v, bool):
            if canonical:
                out[i] = canonical_class(v)
            else:
                bad[i] = True
        elif _is_number(v):
            out[i] = canonical_class(v)
        else:
            bad[i] = True
    return pa.array(out, pa.string()), bad


def _clip(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Cap string length so a hostile value cannot bloat the store."""
    # bytes bound code points from above: only a value longer in bytes needs counting
    widest = pc.max(pc.binary_length(arr)).as_py() if len(arr) else None
    longest = pc.max(pc.utf8_length(arr)).as_py() if widest is not None and widest > MAX_STRING else None
    if longest is not None and longest > MAX_STRING:
        arr = pc.utf8_slice_codeunits(arr, 0, MAX_STRING)
    return arr, np.zeros(len(arr), dtype=bool)


def booleans(values: Raw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0/1 values, the null mask and the mask of bad values."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = _combine(values)
        if pa.types.is_boolean(arr.type):
            isnull = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            out = np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=np.uint8)
            return out, isnull, np.zeros(len(arr), dtype=bool)
        values = arr.to_pylist()
    out = np.zeros(len(values), dtype=np.uint8)
    isnull = np.zeros(len(values), dtype=bool)
    bad = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None:
            isnull[i] = True
        elif v is True or v is False:
            out[i] = v
        elif _is_number(v) and v in (0, 1):
            out[i] = int(v)
        elif isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
            out[i] = v.lower() in ("true", "1", "yes")
        else:
            bad[i] = True
            isnull[i] = True
    return out, isnull, bad


# -- timestamps --------------------------------------------------------------------------


def _parse_iso(text: str) -> float:
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def timestamps(values: Raw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epoch seconds (int64), the null mask and the mask of unparseable values.

    Accepts ISO 8601 (naive means UTC) and epoch seconds.
    """
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = _combine(values)
        if pa.types.is_timestamp(arr.type):
            # naive means UTC: the stored integers are epoch-relative either way
            secs = arr.cast(pa.timestamp("s", tz=arr.type.tz), safe=False).cast(pa.int64())
            isnull = np.asarray(secs.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            return (
                np.asarray(secs.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64),
                isnull,
                (np.zeros(len(arr), dtype=bool)),
            )
        if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
            f, bad = floats(arr)
            isnull = np.isnan(f) & ~bad
            return np.nan_to_num(f, nan=0.0).astype(np.int64), isnull, bad
        if pa.types.is_string(arr.type):
            for target in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
                try:
                    return timestamps(arr.cast(target))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    continue
        values = arr.to_pylist()
    kinds = set(map(type, values))
    if kinds <= {int, float, type(None)}:
        f, bad = floats(values)
        isnull = np.isnan(f) & ~bad
        return np.nan_to_num(f, nan=0.0).astype(np.int64), isnull, bad
    out = np.zeros(len(values), dtype=np.int64)
    isnull = np.zeros(len(values), dtype=bool)
    bad = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None:
            isnull[i] = True
        elif _is_number(v):
            out[i] = int(v)
        elif isinstance(v, str):
            try:
                out[i] = int(_parse_iso(v))
            except (ValueError, OverflowError):
                bad[i] = True
        elif isinstance(v, datetime):
            out[i] = int((v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp())
        else:
            bad[i] = True
    return out, isnull, bad


def epoch_to_arrow(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.int64()).cast(pa.timestamp("s", tz="UTC"))


def check_time_range(
    epochs: np.ndarray, valid: np.ndarray, now: float, max_future: int, fld: str, errors: RowErrors
) -> None:
    """Event times before 2000 or beyond the allowed clock skew are mistakes, not data."""
    early = valid & (epochs < MIN_EPOCH)
    late = valid & (epochs > now + max_future)
    errors.add_rows(np.flatnonzero(early), fld, lambda i: f"{int(epochs[i])} is before 2000-01-01")
    errors.add_rows(
        np.flatnonzero(late), fld, lambda i: f"{int(epochs[i])} is more than {max_future}s in the future"
    )


# -- list-valued columns -----------------------------------------------------------------


def list_array(rows: np.ndarray, values: Sequence[Any], n: int, value_type: pa.DataType) -> pa.Array:
    """A list column of n rows from (row, value) pairs, without a loop over rows."""
    if len(rows) == 0:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], value_type))
    order = np.argsort(rows, kind="stable")
    counts = np.bincount(rows, minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    ordered = pa.array(values, value_type).take(pa.array(order))
    return pa.ListArray.from_arrays(pa.array(offsets), ordered)


@dataclass
class Violations:
    """Data-quality violations of a batch as (row, 'field:reason') pairs."""

    rows: list[np.ndarray] = field(default_factory=list)
    codes: list[np.ndarray] = field(default_factory=list)
    by_field: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, mask: np.ndarray, fld: str, reason: str) -> None:
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return
        self.rows.append(idx)
        self.codes.append(np.full(len(idx), f"{fld}:{reason}", dtype=object))
        counts = self.by_field.setdefault(fld, {})
        counts[reason] = counts.get(reason, 0) + len(idx)

    @property
    def total(self) -> int:
        return sum(len(r) for r in self.rows)

    def column(self, n: int) -> pa.Array:
        if not self.rows:
            return list_array(np.zeros(0, dtype=np.int64), [], n, pa.string())
        return list_array(np.concatenate(self.rows), np.concatenate(self.codes).tolist(), n, pa.string())


class PiiHasher:
    """Keyed hashing of PII values: equal inputs stay equal (so drift still works), none can be read back."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def one(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:24]

    def __call__(self, arr: pa.Array) -> pa.Array:
        encoded = arr.dictionary_encode()
        dictionary = pa.array([self.one(v) for v in encoded.dictionary.to_pylist()], pa.string())
        return pc.take(dictionary, encoded.indices)
