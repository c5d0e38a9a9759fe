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
from dataclasses import dataclass
from typing import Final

import pyarrow as pa

from cdc.events import TableId


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one engine spells the column types the warehouse sinks create.

    `names` maps each Arrow type to the type name the engine's catalog reports for it
    (DuckDB's ``information_schema.columns.data_type``, PostgreSQL's ``format_type``), so a
    type read back from the catalog compares with the one the sink would create.
    """

    engine: str
    names: Mapping[pa.DataType, str]
    decimal: str  # with {p} and {s}
    array_suffix: str  # appended to an element type name for a list

    def type_name(self, arrow: pa.DataType) -> str:
        """The target column type of an Arrow type; raise `KeyError` for one outside the mapping."""
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
    },
    decimal="numeric({p},{s})",
    array_suffix="[]",
)


class Change(enum.Enum):
    """What a source column's new type asks of an existing target column."""

    NONE = "none"  # the target type holds every value of the new type
    WIDEN = "widen"  # the new type is wider: alter the target column to it
    INCOMPATIBLE = "incompatible"  # neither holds the other: the user decides


_INT_RANK: Final = {pa.int16(): 1, pa.int32(): 2, pa.int64(): 3}
_FLOAT_RANK: Final = {pa.float32(): 1, pa.float64(): 2}
MAX_DECIMAL_PRECISION: Final = 38


def evolve(target: pa.DataType | None, new: pa.DataType) -> tuple[Change, pa.DataType]:
    """How a target column of type `target` (None: a type this sink never creates, left as the
    user made it) takes values of the source's `new` type, and the type it should have.

    Integers widen (smallint → integer → bigint), floats widen (real → double), decimals widen
    to hold both the integer digits and the scale of each (up to precision 38). A narrower new
    type needs nothing. Every other pair is incompatible.
    """
    if target is None or target == new:
        return Change.NONE, target if target is not None else new
    for rank in (_INT_RANK, _FLOAT_RANK):
        if target in rank and new in rank:
            return (Change.NONE, target) if rank[target] >= rank[new] else (Change.WIDEN, new)
    if pa.types.is_decimal128(target) and pa.types.is_decimal128(new):
        scale = max(target.scale, new.scale)
        digits = max(target.precision - target.scale, new.precision - new.scale)
        if digits + scale > MAX_DECIMAL_PRECISION:
            return Change.INCOMPATIBLE, new
        both = pa.decimal128(digits + scale, scale)
        return (Change.NONE, target) if both == target else (Change.WIDEN, both)
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
