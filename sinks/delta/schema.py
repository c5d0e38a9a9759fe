"""Arrow types a Delta table can hold, and how a table's schema follows its source.

Delta Lake has fewer types than Arrow: no unsigned integers, no time of day, no
decimal past 38 digits. `delta_type` maps each Arrow type of the sources' documented
mapping onto one Delta can store without loss (docs/delta.md). `plan_evolution` compares
a table's stored schema with what the source now sends: new columns are added, widened
columns (int32 -> int64, float32 -> float64, a larger decimal) rewrite the table once,
anything else stops the job with a `SchemaChangeError` that says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

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


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` cast column by column to `schema`'s types, with schema's missing columns as nulls.

    An explicit cast: deltalake would otherwise store, say, an int64 into a string column
    as text without complaint.
    """
    columns = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            columns.append(col if col.type == f.type else col.cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=pa.schema([pa.field(f.name, f.type) for f in schema]))


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
