"""Target tables of the warehouse sinks: column types, table names, and schema evolution.

Every source column arrives with its Arrow type (the documented mapping of docs/types.md,
`RowCodec.arrow_schema()`); this module maps that Arrow type to the target engine's column
type (docs/warehouse.md) and decides what a schema change needs: nothing (the target type
already holds every value of the new one), a widening (``ALTER COLUMN ... TYPE``), or a
refusal (one line saying what to do). Pure code, no I/O: the engines read their catalogs
and run the statements.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import pyarrow as pa

from cdc.events import TableId


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one engine spells the column types the warehouse sinks create.

    `names` maps each Arrow type to the type name the engine's catalog reports for it
    (DuckDB's ``information_schema.columns.data_type``, PostgreSQL's ``format_type``), so a
    type read back from the catalog compares with the one the sink would create.
    `stored_as` maps an Arrow type the engine has no column type of its own for to the
    Arrow type whose column holds every one of its values exactly (PostgreSQL has no
    unsigned integers: ``uint64`` is kept in ``numeric(20,0)``); the engine casts such
    values to that type when it loads them.
    """

    engine: str
    names: Mapping[pa.DataType, str]
    decimal: str  # with {p} and {s}
    array_suffix: str  # appended to an element type name for a list
    stored_as: Mapping[pa.DataType, pa.DataType] = field(default_factory=dict)

    def stored(self, arrow: pa.DataType) -> pa.DataType:
        """The Arrow type of the column that holds values of `arrow` (`arrow` itself unless `stored_as` says)."""
        if pa.types.is_list(arrow):
            element = self.stored(arrow.value_type)
            return arrow if element == arrow.value_type else pa.list_(element)
        return self.stored_as.get(arrow, arrow)

    def type_name(self, arrow: pa.DataType) -> str:
        """The target column type of an Arrow type; raise `KeyError` for one outside the mapping."""
        arrow = self.stored_as.get(arrow, arrow)
        if pa.types.is_decimal128(arrow):
            return self.decimal.format(p=arrow.precision, s=arrow.scale)
        if pa.types.is_list(arrow):
            return self.type_name(arrow.value_type) + self.array_suffix
        return self.names[arrow]

    def arrow_type(self, name: str) -> pa.DataType | None:
        """The Arrow type a catalog type name stands for, or None for a type this sink never creates."""
        text = name.strip()
        if text.endswith(self.array_suffix):
            element = self.arrow_type(text[: -len(self.array_suffix)])
            return None if element is None else pa.list_(element)
        match = _DECIMAL.fullmatch(text)
        if match is not None:
            return pa.decimal128(int(match.group(2)), int(match.group(3)))
        return _reverse(self).get(text.lower())


_DECIMAL: Final = re.compile(r"(?i)(decimal|numeric)\((\d+),\s*(\d+)\)")
_REVERSE: dict[str, dict[str, pa.DataType]] = {}


def _reverse(dialect: Dialect) -> dict[str, pa.DataType]:
    found = _REVERSE.get(dialect.engine)
    if found is None:
        found = _REVERSE[dialect.engine] = {name.lower(): arrow for arrow, name in dialect.names.items()}
    return found


DUCKDB: Final = Dialect(
    engine="duckdb",
    names={
        pa.bool_(): "BOOLEAN",
        pa.int8(): "TINYINT",
        pa.uint8(): "UTINYINT",
        pa.uint16(): "USMALLINT",
        pa.uint32(): "UINTEGER",
        pa.uint64(): "UBIGINT",
        pa.int16(): "SMALLINT",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE",
        pa.string(): "VARCHAR",
        pa.binary(): "BLOB",
        pa.date32(): "DATE",
        pa.time64("us"): "TIME",
        pa.timestamp("us"): "TIMESTAMP",
        pa.timestamp("us", tz="UTC"): "TIMESTAMP WITH TIME ZONE",
        pa.duration("us"): "INTERVAL",
    },
    decimal="DECIMAL({p},{s})",
    array_suffix="[]",
)

POSTGRES: Final = Dialect(
    engine="postgres",
    names={
        pa.bool_(): "boolean",
        pa.int16(): "smallint",
        pa.int32(): "integer",
        pa.int64(): "bigint",
        pa.float32(): "real",
        pa.float64(): "double precision",
        pa.string(): "text",
        pa.binary(): "bytea",
        pa.date32(): "date",
        pa.time64("us"): "time without time zone",
        pa.timestamp("us"): "timestamp without time zone",
        pa.timestamp("us", tz="UTC"): "timestamp with time zone",
        pa.duration("us"): "interval",
    },
    decimal="numeric({p},{s})",
    array_suffix="[]",
    # No 1-byte or unsigned integers: the next signed type that holds every value, numeric for uint64.
    stored_as={
        pa.int8(): pa.int16(), pa.uint8(): pa.int16(), pa.uint16(): pa.int32(), pa.uint32(): pa.int64(),
        pa.uint64(): pa.decimal128(20, 0),
    },
)


class Change(enum.Enum):
    """What a source column's new type asks of an existing target column."""

    NONE = "none"  # the target type holds every value of the new type
    WIDEN = "widen"  # the new type is wider: alter the target column to it
    INCOMPATIBLE = "incompatible"  # neither holds the other: the user decides


#: The values of each integer type (MySQL's sources bring 1-byte and unsigned ones).
_INT_RANGE: Final = {
    pa.int8(): (-(2**7), 2**7 - 1), pa.uint8(): (0, 2**8 - 1),
    pa.int16(): (-(2**15), 2**15 - 1), pa.uint16(): (0, 2**16 - 1),
    pa.int32(): (-(2**31), 2**31 - 1), pa.uint32(): (0, 2**32 - 1),
    pa.int64(): (-(2**63), 2**63 - 1), pa.uint64(): (0, 2**64 - 1),
}
#: What a column holding two integer types neither of which holds the other widens to, narrowest first.
_BOTH_SIGNS: Final = (pa.int16(), pa.int32(), pa.int64(), pa.decimal128(20, 0))
_FLOAT_RANK: Final = {pa.float32(): 1, pa.float64(): 2}
MAX_DECIMAL_PRECISION: Final = 38


def _holds(outer: pa.DataType, inner: pa.DataType) -> bool:
    """True when every value of the integer type `inner` is a value of `outer` (an integer or decimal type)."""
    lo, hi = _INT_RANGE[inner]
    if pa.types.is_decimal128(outer):
        return bool(max(-lo, hi) < 10 ** (outer.precision - outer.scale))
    olo, ohi = _INT_RANGE[outer]
    return olo <= lo and hi <= ohi


def _as_decimal(t: pa.DataType) -> pa.DataType:
    """An integer type as the narrowest ``decimal128(p, 0)`` holding its values; other types as they are."""
    if t not in _INT_RANGE:
        return t
    lo, hi = _INT_RANGE[t]
    return pa.decimal128(len(str(max(-lo, hi))), 0)


def evolve(target: pa.DataType | None, new: pa.DataType) -> tuple[Change, pa.DataType]:
    """How a target column of type `target` (None: a type this sink never creates, left as the
    user made it) takes values of the source's `new` type, and the type it should have.

    Integers widen to the narrowest type holding both (smallint → integer → bigint; a signed
    and an unsigned type that neither holds the other to the next signed type, ``uint64``
    and a signed type to ``decimal(20,0)``); floats widen (real → double); decimals and
    integers widen to the decimal that holds both the integer digits and the scale of each
    (up to precision 38). A narrower new type needs nothing. Every other pair is incompatible.
    """
    if target is None or target == new:
        return Change.NONE, target if target is not None else new
    if target in _INT_RANGE and new in _INT_RANGE:
        if _holds(target, new):
            return Change.NONE, target
        if _holds(new, target):
            return Change.WIDEN, new
        return Change.WIDEN, next(t for t in _BOTH_SIGNS if _holds(t, target) and _holds(t, new))
    if target in _FLOAT_RANK and new in _FLOAT_RANK:
        return (Change.NONE, target) if _FLOAT_RANK[target] >= _FLOAT_RANK[new] else (Change.WIDEN, new)
    old, wide = _as_decimal(target), _as_decimal(new)
    if pa.types.is_decimal128(old) and pa.types.is_decimal128(wide):
        scale = max(old.scale, wide.scale)
        digits = max(old.precision - old.scale, wide.precision - wide.scale)
        if digits + scale > MAX_DECIMAL_PRECISION:
            return Change.INCOMPATIBLE, new
        both = pa.decimal128(digits + scale, scale)
        return (Change.NONE, target) if both == old else (Change.WIDEN, both)
    return Change.INCOMPATIBLE, new


@dataclass(frozen=True, slots=True)
class TargetNames:
    """Where a source table lands: ``target_schema`` and ``table_name`` templates."""

    schema: str = "{schema}"
    table: str = "{table}"

    def of(self, table: TableId) -> tuple[str, str]:
        """The target ``(schema, table)`` of a source table (raw names; the engine quotes them)."""
        values = {"source": table.source, "schema": table.schema, "table": table.table}
        return self.schema.format_map(values), self.table.format_map(values)
