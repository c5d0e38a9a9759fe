"""The PostgreSQL warehouse sink (``{type: postgres, dsn: ...}``): PostgreSQL as a target.

Each step's rows are loaded with a binary ``COPY`` into a temporary staging table, then
applied by the shared statements of `sinks.warehouse.merge`: one MERGE on PostgreSQL 15+
(updates in place; about 20% faster there than DELETE + INSERT), DELETE + INSERT before 15;
with the ``_cdc_checkpoints`` row in the same transaction. Dates, times and timestamps travel as
their Arrow integers (days or microseconds since 1970) and are turned into PostgreSQL
values in SQL, so infinities, ``24:00:00`` and years Python cannot hold arrive exactly; arrays
of them travel as integer arrays and are converted element by element the same way.
The session runs with ``timezone = UTC``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Final

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.postgres import types as pg_types

from sinks.warehouse.merge import WarehouseSink
from sinks.warehouse.schema import POSTGRES, TargetNames

STAGE: Final = "_cdc_stage"
#: The first server version with MERGE.
MERGE_VERSION: Final = 150000
#: The transaction-level advisory lock (``pg_advisory_xact_lock``) every cdc warehouse sink of a
#: target database takes before creating tables or schemas in it: the bytes of ``cdc:ddl``.
DDL_LOCK: Final = int.from_bytes(b"cdc:ddl", "big")

#: PostgreSQL names (for COPY's binary types) of the Arrow types staged as themselves.
_COPY_TYPES: Final = {
    pa.bool_(): "bool", pa.int16(): "int2", pa.int32(): "int4", pa.int64(): "int8", pa.float32(): "float4",
    pa.float64(): "float8", pa.string(): "text", pa.binary(): "bytea", pa.date32(): "date",
    pa.time64("us"): "time", pa.timestamp("us"): "timestamp", pa.timestamp("us", tz="UTC"): "timestamptz",
}
_DAY_US: Final = sql.SQL("86400000000")
#: How a staged integer becomes the target value (x: the staged column).
_FROM_MICROS: Final = sql.SQL(
    "CASE WHEN {x} = 9223372036854775807 THEN 'infinity'::{t} WHEN {x} = -9223372036854775808 THEN '-infinity'::{t} "
    "ELSE {t} 'epoch' + ({x} / {day}) * interval '1 day' + ({x} % {day}) * interval '1 microsecond' END"
)
_FROM_DAYS: Final = sql.SQL(
    "CASE WHEN {x} = 2147483647 THEN 'infinity'::date WHEN {x} = -2147483648 THEN '-infinity'::date "
    "ELSE date 'epoch' + {x} END"
)
_FROM_TIME: Final = sql.SQL(
    "CASE WHEN {x} = 86400000000 THEN time '24:00:00' ELSE time '00:00' + {x} * interval '1 microsecond' END"
)
#: An array staged as the integers of its elements, turned into the array of their values
#: (x: the staged column; convert: an expression of one element, `_ELEMENT`), order and NULLs kept.
_ELEMENTWISE: Final = sql.SQL(
    "CASE WHEN {x} IS NULL THEN NULL "
    "ELSE ARRAY(SELECT {convert} FROM unnest({x}) WITH ORDINALITY AS _cdc_elements(_cdc_element, _cdc_ordinal) "
    "ORDER BY _cdc_ordinal) END"
)
#: One element of `_ELEMENTWISE` (source columns cannot be named ``_cdc_*``, so no name clashes).
_ELEMENT: Final = sql.Identifier("_cdc_element")


class PostgresEngine:
    """One PostgreSQL database as a target, for `WarehouseSink` (see `sinks.warehouse.merge.Engine`)."""

    dialect = POSTGRES
    errors: tuple[type[BaseException], ...] = (psycopg.Error,)
    placeholder: sql.Composable = sql.Placeholder()

    def __init__(self, dsn: str, *, connect_timeout_s: int = 10, use_merge: bool | None = None) -> None:
        """`use_merge`: None applies with MERGE when the server has it (15+); False never does."""
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._use_merge = use_merge
        self.merge = False
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    def describe(self) -> str:
        try:
            parts = conninfo_to_dict(self._dsn)
        except psycopg.ProgrammingError:
            return "the PostgreSQL target (unparsable dsn)"
        host = parts.get("host") or "localhost"
        return f"PostgreSQL database {parts.get('dbname') or '(default)'} on {host}:{parts.get('port') or 5432}"

    @property
    def conn(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None:
            raise psycopg.InterfaceError("the PostgreSQL target is not connected")
        return self._conn

    def connect(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, connect_timeout=self._connect_timeout_s, autocommit=True)
            self._conn.execute("SET timezone = 'UTC'")
            self.merge = self._use_merge is not False and self._conn.info.server_version >= MERGE_VERSION

    def execute(self, statement: sql.Composed, params: Sequence[object] = ()) -> None:
        self.conn.execute(statement, list(params) or None)

    def query(self, statement: sql.Composed, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(statement, list(params) or None).fetchall()

    def begin(self) -> None:
        self.conn.execute("BEGIN")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def lock_catalog(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))

    def rollback(self) -> None:
        conn = self._conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):  # no transaction, or a broken connection: nothing to undo
                conn.execute("ROLLBACK")

    def columns(self, schema: str, table: str) -> dict[str, str] | None:
        rows = self.conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0 "
            "AND NOT a.attisdropped ORDER BY a.attnum",
            (schema, table),
        ).fetchall()
        return {name: type_name for name, type_name in rows} or None

    def stage(self, rows: pa.Table) -> sql.Composable:
        conn = self.conn
        columns: list[sql.Composable] = []
        oids: list[int] = []
        values: list[list[Any]] = []
        select: list[sql.Composable] = []
        for f, column in zip(rows.schema, rows.columns, strict=True):
            ident = sql.Identifier(f.name)
            staged, expr = _staged_type(f.type, ident)
            columns.append(sql.SQL("{} {}").format(ident, sql.SQL(self.dialect.type_name(staged))))
            oids.append(_oid(staged))
            values.append((pc.cast(column, staged) if staged != f.type else column).to_pylist())
            select.append(sql.SQL("{} AS {}").format(expr, ident))
        conn.execute(sql.SQL("CREATE TEMPORARY TABLE {} ({})").format(
            sql.Identifier(STAGE), sql.SQL(", ").join(columns)))
        with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(sql.Identifier(STAGE))) as copy:
            copy.set_types(oids)
            for row in zip(*values, strict=True):
                copy.write_row(row)
        return sql.SQL("(SELECT {} FROM {})").format(sql.SQL(", ").join(select), sql.Identifier(STAGE))

    def unstage(self) -> None:
        self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(STAGE)))

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


def _staged_type(arrow: pa.DataType, x: sql.Composable) -> tuple[pa.DataType, sql.Composable]:
    """The type a column is staged as, and the SQL that turns the staged column `x` into the value."""
    if pa.types.is_timestamp(arrow):
        t = sql.SQL("timestamptz" if arrow.tz is not None else "timestamp")
        return pa.int64(), _FROM_MICROS.format(x=x, t=t, day=_DAY_US)
    if pa.types.is_date32(arrow):
        return pa.int32(), _FROM_DAYS.format(x=x)
    if pa.types.is_time64(arrow):
        return pa.int64(), _FROM_TIME.format(x=x)
    if pa.types.is_duration(arrow):  # MySQL's TIME (up to 838 hours) as microseconds, exact
        return pa.int64(), sql.SQL("{x} * interval '1 microsecond'").format(x=x)
    if pa.types.is_list(arrow):
        element, convert = _staged_type(arrow.value_type, _ELEMENT)
        if convert is not _ELEMENT:  # elements staged as integers: converted one by one
            return pa.list_(element), _ELEMENTWISE.format(x=x, convert=convert)
    return POSTGRES.stored(arrow), x  # 1-byte and unsigned integers as the wider type holding them


def _oid(arrow: pa.DataType) -> int:
    """The type OID binary COPY sends a staged Arrow type as."""
    if pa.types.is_decimal128(arrow):
        info = pg_types.get("numeric")
    elif pa.types.is_list(arrow):
        element = pg_types.get("numeric" if pa.types.is_decimal128(arrow.value_type) else _COPY_TYPES[arrow.value_type])
        assert element is not None
        return element.array_oid
    else:
        info = pg_types.get(_COPY_TYPES[arrow])
    assert info is not None
    return info.oid


def postgres_sink(
    name: str, dsn: str, *, job: str, names: TargetNames | None = None, soft_deletes: bool = False,
    primary_key: bool = True, connect_timeout_s: int = 10, use_merge: bool | None = None,
) -> WarehouseSink:
    """A warehouse sink writing into the PostgreSQL database `dsn` names (`use_merge`: see `PostgresEngine`)."""
    engine = PostgresEngine(dsn, connect_timeout_s=connect_timeout_s, use_merge=use_merge)
    return WarehouseSink(name, engine, job=job, names=names, soft_deletes=soft_deletes, primary_key=primary_key)
