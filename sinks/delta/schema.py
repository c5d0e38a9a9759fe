"""Arrow types a Delta table can hold, and how a table's schema follows its source.

Delta Lake has fewer types than Arrow: no unsigned integers, no time of day, no
decimal past 38 digits. `delta_type` maps each Arrow type of the sources' documented
mapping onto one Delta can store without loss (docs/delta.md). `plan_evolution` compares
a table's stored schema with what the source now sends: new columns are added, widened
columns (int32 -> int64, float32 -> float64, a larger decimal) rewrite the table once,
anything else stops the job with a `SchemaChangeError` that says what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from cdc.errors import SchemaChangeError

_UNSIGNED = {
    pa.uint8(): pa.int16(), pa.uint16(): pa.int32(), pa.uint32(): pa.int64(), pa.uint64(): pa.decimal128(20, 0),
}
_INT_RANK = {pa.int8(): 1, pa.int16(): 2, pa.int32(): 3, pa.int64(): 4}


def delta_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type a Delta table stores values of Arrow type `t` as (lossless)."""
    if t in _UNSIGNED:
        return _UNSIGNED[t]
    if pa.types.is_time(t) or pa.types.is_decimal256(t) or pa.types.is_null(t) or pa.types.is_duration(t):
        return pa.string()
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t):
        return pa.binary()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz="UTC" if t.tz is not None else None)
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(delta_type(t.value_type))
    return t


def delta_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with every field's type replaced by its `delta_type`, all nullable."""
    return pa.schema([pa.field(f.name, delta_type(f.type)) for f in schema])


#: The dates and timestamps a Delta table holds: the range of the Rust date types deltalake
#: computes file statistics with (chrono), -262143-01-01 .. +262142-12-31 23:59:59.999999.
#: Past it the writer panics (``NaiveDate + TimeDelta overflowed``) or fails on every retry,
#: and deltalake's own query engine cannot print the value.
DATE_MIN: Final = -96_465_292  # days since 1970-01-01: -262143-01-01
DATE_MAX: Final = 95_026_236  # +262142-12-31
_DAY_US: Final = 86_400_000_000
TIMESTAMP_MIN: Final = DATE_MIN * _DAY_US  # -262143-01-01T00:00:00
TIMESTAMP_MAX: Final = (DATE_MAX + 1) * _DAY_US - 1  # +262142-12-31T23:59:59.999999

#: ``(column, count)``: `count` values of the column were outside Delta's range and were clamped.
Clamped = Callable[[str, int], None]


def conform(table: pa.Table, schema: pa.Schema, clamped: Clamped | None = None) -> pa.Table:
    """`table` cast column by column to `schema`'s types, with schema's missing columns as nulls.

    An explicit cast: deltalake would otherwise store, say, an int64 into a string column
    as text without complaint. Two casts are cdc's own (docs/delta.md): a time of day
    (``time64``, up to PostgreSQL's ``24:00:00``) and a MySQL TIME (``duration``, up to
    ±838:59:59.999999) become the text ``[-]HH:MM:SS.ffffff``; and dates and timestamps
    outside Delta's range (PostgreSQL's ``infinity`` and ``-infinity`` included) are clamped
    to its last or first value (`DATE_MAX`, `TIMESTAMP_MIN`, ...), reported per column to
    `clamped` with the number of values moved (inside lists too).
    """
    columns = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            fitted, moved = _fit(col.combine_chunks() if col.num_chunks != 1 else col.chunk(0), f.type)
            if moved and clamped is not None:
                clamped(f.name, moved)
            columns.append(fitted)
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=pa.schema([pa.field(f.name, f.type) for f in schema]))


def _fit(values: pa.Array, target: pa.DataType) -> tuple[pa.Array, int]:
    """`values` as `target` (see `conform`), and how many values were clamped."""
    t = values.type
    if pa.types.is_list(target) and (pa.types.is_list(t) or pa.types.is_large_list(t)):
        inner, moved = _fit(values.values, target.value_type)
        offsets = values.offsets.cast(pa.int32()) if pa.types.is_large_list(t) else values.offsets
        mask = values.is_null() if values.null_count else None
        return pa.ListArray.from_arrays(offsets, inner, type=target, mask=mask), moved
    if pa.types.is_string(target) and (pa.types.is_time(t) or pa.types.is_duration(t)):
        return _clock_text(values), 0
    if t != target:
        values = values.cast(target)
    if pa.types.is_date32(target):
        return _clamp(values, pa.int32(), DATE_MIN, DATE_MAX)
    if pa.types.is_timestamp(target):
        return _clamp(values, pa.int64(), TIMESTAMP_MIN, TIMESTAMP_MAX)
    return values, 0


def _clamp(values: pa.Array, storage: pa.DataType, low: int, high: int) -> tuple[pa.Array, int]:
    raw = values.view(storage)
    outside = pc.or_(pc.less(raw, low), pc.greater(raw, high))
    moved = pc.sum(outside).as_py() or 0
    if not moved:
        return values, 0
    lo, hi = pa.scalar(low, storage), pa.scalar(high, storage)
    fixed = pc.if_else(pc.less(raw, lo), lo, pc.if_else(pc.greater(raw, hi), hi, raw))  # nulls stay null
    return fixed.view(values.type), moved


def _clock_text(values: pa.Array) -> pa.Array:
    """Microseconds (a time of day or a duration) as ``[-]HH:MM:SS.ffffff``; hours past 23 as they are."""
    us = values.view(pa.int64())
    magnitude = pc.abs(us)

    def part(divisor: int, modulus: int | None, width: int) -> pa.Array:
        n = pc.divide(magnitude, divisor)
        if modulus is not None:
            n = pc.subtract(n, pc.multiply(pc.divide(n, modulus), modulus))
        return pc.utf8_lpad(pc.cast(n, pa.string()), width=width, padding="0")

    sign = pc.if_else(pc.less(us, 0), "-", "")
    return pc.binary_join_element_wise(
        sign, part(3_600_000_000, None, 2), ":", part(60_000_000, 60, 2), ":", part(1_000_000, 60, 2), ".",
        part(1, 1_000_000, 6), "",
    )


def widens(stored: pa.DataType, incoming: pa.DataType) -> bool:
    """True when every value of `stored` fits `incoming` exactly (a widening)."""
    if stored in _INT_RANK and incoming in _INT_RANK:
        return _INT_RANK[incoming] >= _INT_RANK[stored]
    if stored in _INT_RANK and pa.types.is_decimal(incoming):
        return bool(incoming.precision - incoming.scale >= {1: 3, 2: 5, 3: 10, 4: 19}[_INT_RANK[stored]])
    if pa.types.is_float32(stored) and pa.types.is_float64(incoming):
        return True
    if pa.types.is_decimal(stored) and pa.types.is_decimal(incoming):
        return bool(incoming.scale >= stored.scale
                    and incoming.precision - incoming.scale >= stored.precision - stored.scale)
    # numeric(p,s) -> numeric: the exact decimal text
    return bool(pa.types.is_decimal(stored) and pa.types.is_string(incoming))


@dataclass(frozen=True, slots=True)
class Evolution:
    """What a stored table needs before it can take a batch of the source's current schema."""

    target: pa.Schema  # the table's schema afterwards (stored order, new columns at the end)
    added: tuple[pa.Field, ...]  # columns to add (no rewrite)
    widened: tuple[str, ...]  # columns whose type grows: the table is rewritten with `target`

    @property
    def changed(self) -> bool:
        return bool(self.added or self.widened)


def plan_evolution(stored: pa.Schema, incoming: pa.Schema, where: str) -> Evolution:
    """How `stored` follows `incoming` (both Delta types); raise `SchemaChangeError` when it cannot.

    A column the source no longer sends stays in the table (nulls from now on); a column
    whose stored type is wider than what arrives keeps its stored type.
    """
    fields = []
    widened = []
    for f in stored:
        i = incoming.get_field_index(f.name)
        if i < 0 or incoming.field(i).type == f.type:
            fields.append(f)
            continue
        new = incoming.field(i).type
        if widens(new, f.type):
            fields.append(f)  # already wide enough: cast the incoming values up
        elif widens(f.type, new):
            widened.append(f.name)
            fields.append(pa.field(f.name, new))
        else:
            raise SchemaChangeError(
                f"{where}: column {f.name!r} is stored as {f.type} but the source now sends {new}, which cannot be "
                "converted in place; move the table aside (or drop it) and re-snapshot it with "
                "`cdc snapshot CONFIG --job JOB --table SCHEMA.TABLE`, or exclude the table"
            )
    added = tuple(pa.field(f.name, f.type) for f in incoming if stored.get_field_index(f.name) < 0)
    return Evolution(pa.schema([*fields, *added]), added, tuple(widened))
