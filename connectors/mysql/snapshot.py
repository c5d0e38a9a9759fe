"""The consistent initial snapshot of MySQL/MariaDB tables, and the column types it shares
with the stream.

MariaDB: ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` then ``SHOW STATUS LIKE
'binlog_snapshot_%'`` gives the binlog coordinate the snapshot is consistent with, with
no lock at all. MySQL 8 has no such status: the reader takes ``FLUSH TABLES WITH READ
LOCK`` only while it opens the snapshot and reads ``SHOW BINARY LOG STATUS`` (needs
RELOAD; **untested here**, no MySQL 8 on the test machine). Rows are read table by table
in primary-key order through an unbuffered cursor, `chunk_rows` at a time, so memory
stays bounded whatever the table size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.cursors

from cdc.events import Column, RawRow, TableId, TableSchema
from connectors.mysql import types as t
from connectors.mysql.binlog import BinlogColumn
from connectors.mysql.catalog import CatalogColumn, binlog_status, table_columns
from connectors.mysql.types import MySqlColumnType, MySqlRowCodec

_CATALOG_TYPES = {
    "tinyint": t.TINY, "smallint": t.SHORT, "mediumint": t.INT24, "int": t.LONG, "bigint": t.LONGLONG,
    "decimal": t.NEWDECIMAL, "float": t.FLOAT, "double": t.DOUBLE, "date": t.DATE, "time": t.TIME2,
    "datetime": t.DATETIME2, "timestamp": t.TIMESTAMP2, "year": t.YEAR, "bit": t.BIT, "enum": t.ENUM,
    "set": t.SET, "json": t.JSON, "char": t.STRING, "varchar": t.VARCHAR, "binary": t.STRING,
    "varbinary": t.VARCHAR, "uuid": t.STRING, "inet6": t.STRING, "inet4": t.STRING,
    "tinytext": t.BLOB, "text": t.BLOB, "mediumtext": t.BLOB, "longtext": t.BLOB,
    "tinyblob": t.BLOB, "blob": t.BLOB, "mediumblob": t.BLOB, "longblob": t.BLOB,
    "geometry": t.GEOMETRY, "point": t.GEOMETRY, "linestring": t.GEOMETRY, "polygon": t.GEOMETRY,
    "multipoint": t.GEOMETRY, "multilinestring": t.GEOMETRY, "multipolygon": t.GEOMETRY,
    "geometrycollection": t.GEOMETRY,
}


def quote_identifier(name: str) -> str:
    """A MySQL identifier in backticks (embedded backticks doubled): the quoting helper."""
    if "\x00" in name:
        raise ValueError("identifiers cannot contain NUL")
    return "`" + name.replace("`", "``") + "`"


def sql_type(c: CatalogColumn) -> str:
    """The refinement the binlog cannot tell: json (MariaDB's checked LONGTEXT), uuid, inet6, inet4."""
    if c.data_type == "json" or c.json_checked:
        return "json"
    return c.data_type if c.data_type in ("uuid", "inet6", "inet4") else ""


def binlog_type(c: BinlogColumn, known: CatalogColumn | None) -> MySqlColumnType:
    """The column type as the stream sees it: the table map's column refined by the catalog's."""
    refined = sql_type(known) if known is not None else ""
    return MySqlColumnType(
        type_code=c.type_code, sql_type=refined, unsigned=c.unsigned, precision=c.precision, scale=c.scale,
        fsp=c.fsp, bits=c.bits, binary=c.binary and not refined,
        length=known.max_length if known is not None and known.data_type == "binary" else 0,
        set_values=c.set_values,
    )


def catalog_type(c: CatalogColumn) -> MySqlColumnType:
    """The column type as the snapshot sees it (the stream builds the same from its table map)."""
    code = _CATALOG_TYPES.get(c.data_type, t.BLOB)
    binary = c.data_type in ("binary", "varbinary", "uuid", "inet6") or c.data_type.endswith("blob") \
        or c.charset == "binary"
    if c.data_type == "json" and c.json_checked:
        code = t.BLOB  # MariaDB's JSON alias is a LONGTEXT; its binlog type is BLOB
    if c.data_type == "longtext" and c.json_checked:
        code = t.BLOB
    return MySqlColumnType(
        type_code=code,
        sql_type=sql_type(c),
        unsigned="unsigned" in c.column_type,
        precision=c.precision,
        scale=c.scale,
        fsp=c.fsp,
        bits=c.precision if code == t.BIT else 0,
        binary=binary and not sql_type(c),
        length=c.max_length if c.data_type == "binary" else 0,
        # No SET labels: information_schema shows them in utf8mb3 (a 4-byte character is '?'),
        # and the snapshot needs none (`select_rows` reads a SET as its mask and its text).
    )


@dataclass(slots=True)
class SnapshotTable:
    """One table of the snapshot: schema and codec from the catalog, rows read so far."""

    schema: TableSchema
    codec: MySqlRowCodec
    normalise: list[tuple[int, Any]]
    rows: int = 0
    #: The catalog's columns when the table was described (the watermark method checks them per chunk).
    catalog: tuple[CatalogColumn, ...] = ()


def describe_table(conn: pymysql.connections.Connection[Any], source: str, database: str,
                   table: str) -> SnapshotTable:
    cols = table_columns(conn, database, table)
    types = [catalog_type(c) for c in cols]
    columns = tuple(Column(c.name, ty.name, ty.type_code, -1, c.key) for c, ty in zip(cols, types, strict=True))
    schema = TableSchema(TableId(source, database, table), columns)
    normalise = [(i, f) for i, ty in enumerate(types) if (f := ty.normalise_snapshot()) is not None]
    return SnapshotTable(schema, MySqlRowCodec(columns, types), normalise, catalog=tuple(cols))


_INTEGER_TYPES = frozenset({t.TINY, t.SHORT, t.INT24, t.LONG, t.LONGLONG})


@dataclass(frozen=True, slots=True)
class Chunk:
    """A primary-key range ``[low, high)`` of one table (None bounds: open; both None: the whole table)."""

    table: SnapshotTable
    number: int
    low: int | None = None
    high: int | None = None


def choose_method(configured: str, *, mariadb: bool, reload: bool) -> tuple[str, str]:
    """The snapshot method (``consistent``, ``flush`` or ``watermark``) and why (docs/mysql.md):
    `configured` unless ``auto``; auto is MariaDB's consistent snapshot, else MySQL's
    FLUSH TABLES WITH READ LOCK when RELOAD is granted, else the lock-free watermark method."""
    if configured != "auto":
        return configured, "configured"
    if mariadb:
        return "consistent", "mariadb has a lock-free consistent snapshot position"
    if reload:
        return "flush", "RELOAD granted"
    return "watermark", "RELOAD not granted (no FLUSH TABLES WITH READ LOCK)"


def begin_snapshot(cur: Any) -> None:
    """Open a consistent read (InnoDB's read view is taken at once) under a UTC session."""
    cur.execute("SET SESSION time_zone = '+00:00'")
    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")


class SnapshotReader:
    """Connections holding one consistent snapshot, and the binlog coordinate it matches.

    Lock-free (MariaDB, the default): one connection, ``START TRANSACTION WITH CONSISTENT
    SNAPSHOT`` and ``SHOW STATUS LIKE 'binlog_snapshot_%'``. With `lock` (MySQL always;
    MariaDB with ``snapshot_lock: flush``): ``FLUSH TABLES WITH READ LOCK`` on a leader
    connection while `workers` connections open their snapshots and the position is read,
    then ``UNLOCK TABLES``: every worker sees the same point, so tables are read in
    parallel by primary-key ranges. Blocking (run in threads, one per connection).
    `gtids` is MySQL's ``Executed_Gtid_Set`` read under the lock ("" on MariaDB, whose
    state at ``file``/``position`` the source asks with ``BINLOG_GTID_POS``).
    """

    def __init__(self, connect: Callable[[], pymysql.connections.Connection[Any]], *, mariadb: bool,
                 workers: int, lock: bool) -> None:
        self.connections: list[pymysql.connections.Connection[Any]] = []
        try:
            if mariadb and not lock:
                conn = connect()
                self.connections.append(conn)
                with conn.cursor() as cur:
                    begin_snapshot(cur)
                    cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
                    status = {str(k).lower(): str(v) for k, v in cur.fetchall()}
                self.file = status["binlog_snapshot_file"]
                self.position = int(status["binlog_snapshot_position"])
                self.gtids = ""
                return
            leader = connect()
            try:
                with leader.cursor() as lcur:
                    lcur.execute("FLUSH TABLES WITH READ LOCK")
                    try:
                        for _ in range(max(workers, 1)):
                            conn = connect()
                            self.connections.append(conn)
                            with conn.cursor() as cur:
                                begin_snapshot(cur)
                        self.file, self.position, self.gtids = binlog_status(leader)  # still under the lock
                    finally:
                        lcur.execute("UNLOCK TABLES")
            finally:
                leader.close()
        except BaseException:
            self.close()
            raise

    def plan(self, table: SnapshotTable, chunk_rows: int) -> list[Chunk]:
        """Primary-key ranges of about `chunk_rows` rows (a single integer key), else the whole table."""
        return plan_chunks(self.connections[0], table, chunk_rows)

    def rows(self, chunk: Chunk, chunk_rows: int, worker: int = 0) -> Iterator[list[RawRow]]:
        """The chunk's rows in primary-key order, normalised, `chunk_rows` per list, on connection `worker`."""
        return select_rows(self.connections[worker], chunk, chunk_rows)

    def close(self) -> None:
        for conn in self.connections:
            try:
                conn.rollback()
                conn.close()
            except pymysql.Error:
                pass
        self.connections = []


def plan_chunks(conn: pymysql.connections.Connection[Any], table: SnapshotTable, chunk_rows: int) -> list[Chunk]:
    """Primary-key ranges ``[low, high)`` of about `chunk_rows` rows (a single integer key), else the whole
    table. The first range is open below and the last open above: together they cover every key."""
    key = [c for c in table.schema.columns if c.key]
    if len(key) != 1 or key[0].type_oid not in _INTEGER_TYPES:
        return [Chunk(table, 1)]
    column = quote_identifier(key[0].name)
    name = f"{quote_identifier(table.schema.table.schema)}.{quote_identifier(table.schema.table.table)}"
    with conn.cursor() as cur:
        cur.execute(f"SELECT MIN({column}), MAX({column}) FROM {name}")  # noqa: S608 - quoted identifiers
        row = cur.fetchone()
        cur.execute(
            "SELECT table_rows FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
            (table.schema.table.schema, table.schema.table.table),
        )
        estimate = cur.fetchone()
    if row is None or row[0] is None:
        return [Chunk(table, 1)]
    low, high = int(row[0]), int(row[1])
    count = max(1, -(-int(estimate[0] if estimate and estimate[0] else 0) // chunk_rows))
    step = max(1, -(-(high - low + 1) // count))
    bounds = list(range(low, high + 1, step))
    return [
        Chunk(table, n, None if n == 1 else b, None if n == len(bounds) else bounds[n])
        for n, b in enumerate(bounds, 1)
    ]


def _select_expression(c: Column) -> str:
    """How `select_rows` reads column `c`: as is, but FLOAT, which the server prints with 6
    digits, as its exact value in a DOUBLE, and SET as ``<mask>,<text>``: the text alone
    loses an empty-string member chosen first (``SET('', 'a')`` prints 3 as ``a``), and
    the labels information_schema shows cannot be trusted (`catalog_type`), so
    `MySqlColumnType.normalise_snapshot` restores that member from the mask."""
    name = quote_identifier(c.name)
    if c.type_oid == t.FLOAT:
        return f"CAST({name} AS DOUBLE)"
    if c.type_oid == t.SET:
        return f"CONCAT({name} + 0, ',', {name})"
    return name


def select_rows(conn: pymysql.connections.Connection[Any], chunk: Chunk, chunk_rows: int) -> Iterator[list[RawRow]]:
    """The chunk's rows in primary-key order, normalised, `chunk_rows` per list, read on `conn` (within
    whatever transaction it has open) through an unbuffered cursor."""
    table = chunk.table
    schema = table.schema
    names = ", ".join(_select_expression(c) for c in schema.columns)
    key = ", ".join(quote_identifier(n) for n in schema.key)
    # Every identifier is quoted by quote_identifier; values are parameters.
    table_name = f"{quote_identifier(schema.table.schema)}.{quote_identifier(schema.table.table)}"
    query = f"SELECT {names} FROM {table_name}"  # noqa: S608
    params: list[int] = []
    bounds = []
    if chunk.low is not None:
        bounds.append(f"{key} >= %s")
        params.append(chunk.low)
    if chunk.high is not None:
        bounds.append(f"{key} < %s")
        params.append(chunk.high)
    if bounds:
        query += " WHERE " + " AND ".join(bounds)
    if key:
        query += f" ORDER BY {key}"
    normalise = table.normalise
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(query, params or None)
        while True:
            fetched = cur.fetchmany(chunk_rows)
            if not fetched:
                return
            out: list[RawRow] = []
            for r in fetched:
                if normalise:
                    values = list(r)
                    for i, f in normalise:
                        if values[i] is not None:
                            values[i] = f(values[i])
                    out.append(tuple(values))
                else:
                    out.append(tuple(r))
            yield out
