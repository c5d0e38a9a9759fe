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

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.cursors

from cdc.events import Column, RawRow, TableId, TableSchema
from connectors.mysql import types as t
from connectors.mysql.catalog import CatalogColumn, table_columns
from connectors.mysql.types import MySqlColumnType, MySqlRowCodec

_CATALOG_TYPES = {
    "tinyint": t.TINY, "smallint": t.SHORT, "mediumint": t.INT24, "int": t.LONG, "bigint": t.LONGLONG,
    "decimal": t.NEWDECIMAL, "float": t.FLOAT, "double": t.DOUBLE, "date": t.DATE, "time": t.TIME2,
    "datetime": t.DATETIME2, "timestamp": t.TIMESTAMP2, "year": t.YEAR, "bit": t.BIT, "enum": t.ENUM,
    "set": t.SET, "json": t.JSON, "char": t.STRING, "varchar": t.VARCHAR, "binary": t.STRING,
    "varbinary": t.VARCHAR, "uuid": t.STRING, "inet6": t.STRING, "inet4": t.LONG,
    "tinytext": t.BLOB, "text": t.BLOB, "mediumtext": t.BLOB, "longtext": t.BLOB,
    "tinyblob": t.BLOB, "blob": t.BLOB, "mediumblob": t.BLOB, "longblob": t.BLOB,
    "geometry": t.GEOMETRY, "point": t.GEOMETRY, "linestring": t.GEOMETRY, "polygon": t.GEOMETRY,
    "multipoint": t.GEOMETRY, "multilinestring": t.GEOMETRY, "multipolygon": t.GEOMETRY,
    "geometrycollection": t.GEOMETRY,
}
_QUOTED = re.compile(r"'((?:[^']|'')*)'")


def quote_identifier(name: str) -> str:
    """A MySQL identifier in backticks (embedded backticks doubled): the quoting helper."""
    if "\x00" in name:
        raise ValueError("identifiers cannot contain NUL")
    return "`" + name.replace("`", "``") + "`"


def sql_type(c: CatalogColumn) -> str:
    """The refinement the binlog cannot tell: json (MariaDB's checked LONGTEXT), uuid, inet6."""
    if c.data_type == "json" or c.json_checked:
        return "json"
    return c.data_type if c.data_type in ("uuid", "inet6", "inet4") else ""


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
        set_values=tuple(v.replace("''", "'") for v in _QUOTED.findall(c.column_type)) if code == t.SET else (),
    )


@dataclass(slots=True)
class SnapshotTable:
    """One table of the snapshot: schema and codec from the catalog, rows read so far."""

    schema: TableSchema
    codec: MySqlRowCodec
    normalise: list[tuple[int, Any]]
    rows: int = 0


def describe_table(conn: pymysql.connections.Connection[Any], source: str, database: str,
                   table: str) -> SnapshotTable:
    cols = table_columns(conn, database, table)
    types = [catalog_type(c) for c in cols]
    columns = tuple(Column(c.name, ty.name, ty.type_code, -1, c.key) for c, ty in zip(cols, types, strict=True))
    schema = TableSchema(TableId(source, database, table), columns)
    normalise = [(i, f) for i, ty in enumerate(types) if (f := ty.normalise_snapshot()) is not None]
    return SnapshotTable(schema, MySqlRowCodec(columns, types), normalise)


class SnapshotReader:
    """One connection holding a consistent snapshot; `rows` reads a table in chunks (blocking)."""

    def __init__(self, conn: pymysql.connections.Connection[Any], mariadb: bool) -> None:
        self._conn = conn
        with conn.cursor() as cur:
            cur.execute("SET SESSION time_zone = '+00:00'")
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            if mariadb:
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
                status = {str(k).lower(): str(v) for k, v in cur.fetchall()}
                self.file = status["binlog_snapshot_file"]
                self.position = int(status["binlog_snapshot_position"])
            else:  # MySQL 8: a brief global read lock while the snapshot opens (untested here)
                cur.execute("FLUSH TABLES WITH READ LOCK")
                try:
                    cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                    try:
                        cur.execute("SHOW BINARY LOG STATUS")
                    except pymysql.err.ProgrammingError:
                        cur.execute("SHOW MASTER STATUS")
                    row = cur.fetchone()
                    assert row is not None
                    self.file, self.position = str(row[0]), int(row[1])
                finally:
                    cur.execute("UNLOCK TABLES")

    def rows(self, table: SnapshotTable, chunk_rows: int) -> Iterator[list[RawRow]]:
        """The table's rows in primary-key order, normalised, `chunk_rows` per list."""
        schema = table.schema
        # FLOAT is printed with 6 digits by the server: read its exact value as a double.
        names = ", ".join(
            f"CAST({quote_identifier(c.name)} AS DOUBLE)" if c.type_oid == t.FLOAT else quote_identifier(c.name)
            for c in schema.columns
        )
        key = ", ".join(quote_identifier(n) for n in schema.key)
        # Every identifier is quoted by quote_identifier; no value is formatted in.
        table_name = f"{quote_identifier(schema.table.schema)}.{quote_identifier(schema.table.table)}"
        query = f"SELECT {names} FROM {table_name}"  # noqa: S608
        if key:
            query += f" ORDER BY {key}"
        normalise = table.normalise
        with self._conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(query)
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

    def close(self) -> None:
        try:
            self._conn.rollback()
            self._conn.close()
        except pymysql.Error:
            pass
