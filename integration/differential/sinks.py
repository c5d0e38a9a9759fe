"""Reading each sink's tables back, with the sink's own reader (never cdc's code).

- file sink: the durable JSONL envelopes applied in order like a Debezium consumer would: a
  column holding the unavailable placeholder keeps the stored value, taken from the row's OLD
  key when the same event moves the key (docs/eventlog-sinks.md, PITFALLS: the value then lives
  under the old key);
- Delta mirror: deltalake's `QueryBuilder` (DataFusion; it reads BC dates, which
  ``to_pyarrow_table`` cannot);
- DuckDB: duckdb's own SELECT, read-only, after the daemon stopped (one process per file);
- PostgreSQL target: the oracle's text reader (`sources.pg_read`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder
from psycopg import sql

from integration.daemon import UNAVAILABLE, envelopes

Rows = dict[int, dict[str, Any]]

#: Columns a sink adds to a mirrored table.
METADATA_PREFIX = "_cdc_"


def file_tables(path: Path) -> tuple[dict[str, Rows], list[str]]:
    """``{"schema.table": {id: after-row}}`` from the file sink's durable events, and the anomalies
    seen on the way: an ``after`` image holding the placeholder under REPLICA IDENTITY FULL (the
    source fills an unchanged TOASTed value from the old row there, also when the key changes)
    or an event id seen twice with different content."""
    state: dict[str, Rows] = {}
    anomalies: list[str] = []
    seen: dict[str, Any] = {}
    for env in envelopes(path):
        source = env["source"]
        table = f"{source['schema']}.{source['table']}"
        rows = state.setdefault(table, {})
        event_id = env.get("id")
        body = (env["op"], env["before"], env["after"])
        if event_id is not None:
            if event_id in seen and seen[event_id] != body:
                anomalies.append(f"file {table}: event id {event_id} written twice with different content")
            seen[event_id] = body
        op, before, after = body
        if op in ("c", "u", "r"):
            key = int(after["id"])
            old = int(before["id"]) if before is not None and before.get("id") is not None else key
            stored = (rows.pop(old, {}) or rows.get(key, {})) if old != key else rows.get(key, {})
            row = {}
            for column, value in after.items():
                if value == UNAVAILABLE:
                    if table.endswith("t_full"):
                        anomalies.append(f"file {table}: {column} is the unavailable placeholder in `after` "
                                         "although under REPLICA IDENTITY FULL the source fills it from the old row")
                    row[column] = stored.get(column)
                else:
                    row[column] = value
            rows[key] = row
        elif op == "d":
            rows.pop(int(before["id"]), None)
        elif op == "t":
            rows.clear()
    return state, anomalies


def _storage_type(t: pa.DataType) -> pa.DataType | None:
    """The integer type Arrow stores a date, time or timestamp (or a list of them) as; None for others."""
    if pa.types.is_date32(t):
        return pa.int32()
    if pa.types.is_timestamp(t) or pa.types.is_time64(t):
        return pa.int64()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _storage_type(t.value_type)
        if inner is None:
            return None
        return pa.large_list(inner) if pa.types.is_large_list(t) else pa.list_(inner)
    return None


def _storage_view(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dates, times and timestamps (also as list elements) as the integers Arrow stores; other
    columns as they are."""
    storage = _storage_type(column.type)
    if storage is None:
        return column
    return pa.chunked_array([c.view(storage) for c in column.chunks], storage)


def arrow_rows(table: pa.Table, *, storage: bool) -> Rows:
    """``{id: {column: value}}`` of an Arrow table, metadata columns left out; with `storage`,
    temporal values as their storage integers."""
    names = [n for n in table.column_names if not n.startswith(METADATA_PREFIX)]
    columns = {n: (_storage_view(table.column(n)) if storage else table.column(n)).to_pylist() for n in names}
    out: Rows = {}
    for i, key in enumerate(columns["id"]):
        out[int(key)] = {n: columns[n][i] for n in names}
    return out


def delta_table(root: Path, schema: str, table: str, *, storage: bool) -> Rows | None:
    """The Delta mirror of `schema.table` under the sink's `root`, or None when it does not exist."""
    path = root / schema / table
    if not (path / "_delta_log").exists():
        return None
    result = pa.table(QueryBuilder().register("t", DeltaTable(str(path))).execute("SELECT * FROM t").read_all())
    return arrow_rows(result, storage=storage)


def duckdb_table(path: Path, schema: str, table: str, *, storage: bool) -> Rows | None:
    """The DuckDB table `schema.table` in the file `path` (read-only), or None when absent."""
    if not path.exists():
        return None
    con = duckdb.connect(str(path), read_only=True)
    try:
        found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                            [schema, table]).fetchall()
        if not found or not found[0][0]:
            return None
        query = sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, table)).as_string(None)
        result = con.sql(query).to_arrow_table()
    finally:
        con.close()
    return arrow_rows(result, storage=storage)
