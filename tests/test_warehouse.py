"""Warehouse sinks without a server: type mapping, schema evolution, and the DuckDB sink end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from psycopg import sql

from cdc.config import DuckDBSinkConfig, PostgresSinkConfig, PostgresSourceConfig, parse_config
from cdc.errors import ConfigError, SinkError
from cdc.events import UNCHANGED, ChangeBatch, Column, Position, RowChange, TableId, TableSchema, Transaction
from connectors.postgres import types as pg
from sinks.warehouse.duckdb import DuckDBEngine, duckdb_sink
from sinks.warehouse.postgres import _staged_type
from sinks.warehouse.schema import DUCKDB, POSTGRES, Change, TargetNames, evolve
from tests.builders import ORDERS, TS, table, write_all
from tests.test_columnar import key_move_batches

ARROW_TYPES = [
    pa.bool_(), pa.int16(), pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.string(), pa.binary(),
    pa.date32(), pa.time64("us"), pa.timestamp("us"), pa.timestamp("us", tz="UTC"), pa.decimal128(12, 2),
    pa.decimal128(38, 0), pa.list_(pa.int32()), pa.list_(pa.string()), pa.list_(pa.decimal128(5, 1)),
]


def numeric(p: int, s: int) -> int:
    """The atttypmod of numeric(p, s)."""
    return ((p << 16) | s) + 4


def tx(n: int) -> Transaction:
    return Transaction(n, n * 100, TS)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path))
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def orders(*changes: RowChange) -> list[Any]:
    return [table(ORDERS, list(changes))]


@pytest.mark.parametrize("arrow", ARROW_TYPES, ids=str)
def test_duckdb_type_names_read_back_from_the_catalog(arrow: pa.DataType, tmp_path: Path) -> None:
    """Every mapped Arrow type creates a DuckDB column whose catalog type maps back to it."""
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t (c {DUCKDB.type_name(arrow)})")  # the mapping's own constant text
    [(name,)] = con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 't'").fetchall()
    assert DUCKDB.arrow_type(name) == arrow


@pytest.mark.parametrize("arrow", ARROW_TYPES, ids=str)
def test_postgres_type_names_map_back(arrow: pa.DataType) -> None:
    """The PostgreSQL dialect reads its own type names back (format_type spelling; integration checks the server)."""
    assert POSTGRES.arrow_type(POSTGRES.type_name(arrow)) == arrow


@pytest.mark.parametrize(
    ("target", "new", "change", "result"),
    [
        (pa.int32(), pa.int64(), Change.WIDEN, pa.int64()),
        (pa.int64(), pa.int16(), Change.NONE, pa.int64()),
        (pa.float32(), pa.float64(), Change.WIDEN, pa.float64()),
        (pa.decimal128(10, 2), pa.decimal128(12, 2), Change.WIDEN, pa.decimal128(12, 2)),
        (pa.decimal128(10, 2), pa.decimal128(10, 4), Change.WIDEN, pa.decimal128(12, 4)),
        (pa.decimal128(12, 4), pa.decimal128(10, 2), Change.NONE, pa.decimal128(12, 4)),
        (pa.decimal128(38, 0), pa.decimal128(38, 10), Change.INCOMPATIBLE, pa.decimal128(38, 10)),
        (pa.int32(), pa.string(), Change.INCOMPATIBLE, pa.string()),
        (pa.timestamp("us"), pa.timestamp("us", tz="UTC"), Change.INCOMPATIBLE, pa.timestamp("us", tz="UTC")),
        (None, pa.string(), Change.NONE, pa.string()),
    ],
)
def test_evolve_widens_or_refuses(target: pa.DataType | None, new: pa.DataType, change: Change,
                                  result: pa.DataType) -> None:
    """A new type narrower than the target needs nothing, a wider one widens, others are refused."""
    assert evolve(target, new) == (change, result)


def test_upserts_deletes_and_unchanged_values(tmp_path: Path) -> None:
    """Inserts, updates and deletes land per key; an unchanged (TOAST) value keeps the stored one."""
    path = tmp_path / "w.duckdb"
    write_all(
        duckdb_sink("duckdb", path, job="j"),
        ChangeBatch(Position(100), orders(("c", tx(1), 1, 0, None, (b"1", b"2.50", b"long text")),
                                          ("c", tx(1), 2, 0, None, (b"2", b"3", b"b")),
                                          ("c", tx(1), 3, 0, None, (b"3", b"4", b"c")))),
        ChangeBatch(Position(200), orders(("u", tx(2), 1, 0, None, (b"1", b"9.50", UNCHANGED)),
                                          ("d", tx(2), 2, 0, (b"2", None, None), None),
                                          ("u", tx(2), 3, 0, (b"3", None, None), (b"4", b"5", b"moved")))),
    )
    assert rows(path, "SELECT * FROM public.orders ORDER BY id") == [(1, "9.50", "long text"), (4, "5", "moved")]
    assert rows(path, "SELECT job, sink, position FROM _cdc_checkpoints") == [("j", "duckdb", '{"commit":200}')]


def test_key_change_moves_unchanged_values_with_the_key(tmp_path: Path) -> None:
    """Updates of the key with an unchanged TOAST value keep the value stored under the old key: in chains
    within a batch and across batches, and with a same-key update after the move."""
    batches, expected = key_move_batches()
    path = tmp_path / "w.duckdb"
    write_all(duckdb_sink("duckdb", path, job="j"), *batches)
    assert rows(path, "SELECT * FROM public.orders ORDER BY id") == expected


def test_replay_is_skipped_and_heartbeats_move_the_position(tmp_path: Path) -> None:
    """After a reopen the position is read back; replayed events are skipped; a heartbeat only moves it."""
    path = tmp_path / "w.duckdb"
    first = ChangeBatch(Position(100), orders(("c", tx(1), 1, 0, None, (b"1", b"1", b"a"))))
    write_all(duckdb_sink("duckdb", path, job="j"), first)
    sink = duckdb_sink("duckdb", path, job="j")
    replay = ChangeBatch(Position(200), orders(("c", tx(1), 1, 0, None, (b"1", b"1", b"a")),
                                               ("u", tx(2), 1, 0, None, (b"1", b"2", UNCHANGED))))

    async def go() -> list[Position | None]:
        await sink.open()
        seen = [sink.position()]
        await sink.write(first)  # all held: nothing happens
        await sink.write(replay)  # the first change is held, the second applies
        await sink.write(ChangeBatch(Position(300)))  # heartbeat
        seen.append(sink.position())
        await sink.close()
        return seen

    assert run(go()) == [Position(100), Position(300)]
    assert rows(path, "SELECT * FROM public.orders") == [(1, "2", "a")]
    assert rows(path, "SELECT position FROM _cdc_checkpoints") == [('{"commit":300}',)]


def test_truncate_and_soft_deletes(tmp_path: Path) -> None:
    """Soft deletes mark rows instead of removing them; a truncate marks every row; rows come back alive."""
    path = tmp_path / "w.duckdb"
    write_all(
        duckdb_sink("duckdb", path, job="j", soft_deletes=True),
        ChangeBatch(Position(100), orders(("c", tx(1), 1, 0, None, (b"1", b"1", b"a")),
                                          ("c", tx(1), 2, 0, None, (b"2", b"2", b"b")))),
        ChangeBatch(Position(200), orders(("d", tx(2), 1, 0, (b"1", None, None), None))),
        ChangeBatch(Position(300), orders(("t", tx(3), 1, 0, None, None),
                                          ("c", tx(3), 2, 0, None, (b"3", b"3", b"c")))),
        ChangeBatch(Position(400), orders(("c", tx(4), 1, 0, None, (b"1", b"7", b"again")))),
    )
    got = rows(path, "SELECT id, total, note, _cdc_deleted, _cdc_synced_at IS NOT NULL FROM public.orders ORDER BY id")
    assert got == [(1, "7", "again", False, True), (2, "2", "b", True, True), (3, "3", "c", False, True)]
    hard = tmp_path / "hard.duckdb"
    write_all(
        duckdb_sink("duckdb", hard, job="j"),
        ChangeBatch(Position(100), orders(("c", tx(1), 1, 0, None, (b"1", b"1", b"a")))),
        ChangeBatch(Position(300), orders(("t", tx(3), 1, 0, None, None),
                                          ("c", tx(3), 2, 0, None, (b"3", b"3", b"c")))),
    )
    assert rows(hard, "SELECT id FROM public.orders") == [(3,)]


def test_added_columns_widenings_and_incompatible_changes(tmp_path: Path) -> None:
    """A new source column is added, int4 -> int8 widens, int8 -> text stops with one line and moves nothing."""
    path = tmp_path / "w.duckdb"
    tid = TableId("shop", "public", "evolving")
    v1 = TableSchema(tid, (Column("id", "int4", pg.INT4, key=True), Column("n", "int4", pg.INT4)))
    v2 = TableSchema(tid, (*v1.columns[:1], Column("n", "int8", pg.INT8),
                           Column("price", "numeric", pg.NUMERIC, numeric(10, 2))))
    v3 = TableSchema(tid, (*v2.columns[:1], Column("n", "text", pg.TEXT), v2.columns[2]))
    write_all(
        duckdb_sink("duckdb", path, job="j"),
        ChangeBatch(Position(100), [table(v1, [("c", tx(1), 1, 0, None, (b"1", b"5"))])]),
        ChangeBatch(Position(200), [table(v2, [("c", tx(2), 1, 0, None, (b"2", b"9000000000", b"1.25"))])]),
    )
    assert rows(path, "SELECT * FROM public.evolving ORDER BY id") == [
        (1, 5, None), (2, 9000000000, pytest.approx(1.25))]
    assert rows(path, "SELECT data_type FROM information_schema.columns WHERE table_name = 'evolving'") == [
        ("INTEGER",), ("BIGINT",), ("DECIMAL(10,2)",)]
    with pytest.raises(SinkError, match=r"column n of public.evolving changed to VARCHAR, which the target column "
                                        r"public.evolving.n \(BIGINT\) cannot hold.*alter or drop that target column"):
        write_all(duckdb_sink("duckdb", path, job="j"),
                  ChangeBatch(Position(300), [table(v3, [("c", tx(3), 1, 0, None, (b"3", b"x", b"1"))])]))
    assert rows(path, "SELECT position FROM _cdc_checkpoints") == [('{"commit":200}',)]


def test_hostile_identifiers_are_quoted(tmp_path: Path) -> None:
    """A table called `weird "name"; drop table x;--` with a column `select` replicates and drops nothing."""
    path = tmp_path / "w.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE x (keep INTEGER)")
    con.close()
    hostile = TableSchema(TableId("shop", 'we"ird', 'weird "name"; drop table x;--'),
                          (Column("id", "int4", pg.INT4, key=True), Column("select", "text", pg.TEXT)))
    names = TargetNames(schema="{schema}", table="{table}")
    write_all(
        duckdb_sink("duckdb", path, job="j", names=names),
        ChangeBatch(Position(100), [table(hostile, [("c", tx(1), 1, 0, None, (b"1", b"'; drop table x;--"))])]),
        ChangeBatch(Position(200), [table(hostile, [("u", tx(2), 1, 0, None, (b"1", UNCHANGED))])]),
    )
    assert rows(path, 'SELECT "select" FROM "we""ird"."weird ""name""; drop table x;--"') == [("'; drop table x;--",)]
    assert rows(path, "SELECT count(*) FROM x") == [(0,)]


def test_special_values_reach_duckdb_exactly(tmp_path: Path) -> None:
    """Infinite dates and timestamps, 24:00:00, NULLs and arrays arrive as DuckDB's own values."""
    path = tmp_path / "w.duckdb"
    schema = TableSchema(TableId("shop", "public", "special"), (
        Column("id", "int4", pg.INT4, key=True), Column("ts", "timestamptz", pg.TIMESTAMPTZ),
        Column("d", "date", pg.DATE), Column("t", "time", pg.TIME), Column("a", "int4[]", pg.INT4_ARRAY),
        Column("b", "bytea", pg.BYTEA)))
    write_all(duckdb_sink("duckdb", path, job="j"), ChangeBatch(Position(100), [table(schema, [
        ("c", tx(1), 1, 0, None, (b"1", b"infinity", b"infinity", b"24:00:00", b"{1,NULL}", b"\\x00ff")),
        ("c", tx(1), 2, 0, None, (b"2", b"-infinity", b"-infinity", b"00:00:00", b"{}", None)),
        ("c", tx(1), 3, 0, None, (b"3", b"2026-01-02 03:04:05.123456+00", b"2026-01-02", b"12:34:56.000001", None,
                                  b"\\x")),
    ])]))
    got = rows(path, "SELECT id, ts::VARCHAR, d::VARCHAR, t::VARCHAR, a, b FROM public.special ORDER BY id")
    assert got == [
        (1, "infinity", "infinity", "24:00:00", [1, None], b"\x00\xff"),
        (2, "-infinity", "-infinity", "00:00:00", [], None),
        (3, "2026-01-02 03:04:05.123456+00", "2026-01-02", "12:34:56.000001", None, b""),
    ]


def test_negative_infinity_inside_arrays_reaches_duckdb_as_its_own(tmp_path: Path) -> None:
    """-infinity (and infinity) as elements of date, timestamp and timestamptz arrays are DuckDB's own
    infinities, never its lowest value; 24:00:00 and NULL elements stay as they are."""
    path = tmp_path / "w.duckdb"
    schema = TableSchema(TableId("shop", "public", "special"), (
        Column("id", "int4", pg.INT4, key=True), Column("d", "date[]", 1182), Column("ts", "timestamp[]", 1115),
        Column("tz", "timestamptz[]", 1185), Column("t", "time[]", 1183)))
    write_all(duckdb_sink("duckdb", path, job="j"), ChangeBatch(Position(100), [table(schema, [
        ("c", tx(1), 1, 0, None, (b"1", b"{-infinity,infinity,NULL}", b"{-infinity,infinity}",
                                  b"{{-infinity},{NULL}}", b"{24:00:00,NULL}")),
        ("c", tx(1), 2, 0, None, (b"2", b"{2026-01-02}", None, b"{}", b"{00:00:00}")),
    ])]))
    got = rows(path, "SELECT id, d::VARCHAR[], ts::VARCHAR[], tz::VARCHAR[], t::VARCHAR[] FROM public.special "
                     "ORDER BY id")
    assert got == [
        (1, ["-infinity", "infinity", None], ["-infinity", "infinity"], ["-infinity", None], ["24:00:00", None]),
        (2, ["2026-01-02"], None, [], ["00:00:00"]),
    ]


def test_negative_infinity_inside_nested_and_sliced_lists_reaches_duckdb(tmp_path: Path) -> None:
    """Lists of lists and sliced lists (offsets not at zero) get -infinity moved too, nulls and lengths kept."""
    low_day, low_us = -(2**31), -(2**63)
    days = pa.array([[[0], None], [[low_day, None]], None, [[], [low_day]]], pa.list_(pa.list_(pa.int32())))
    micros = pa.array([[1], [low_us, 0], None, []], pa.list_(pa.int64()))
    staged = pa.table({
        "d": days.cast(pa.list_(pa.list_(pa.date32()))).slice(1),
        "ts": micros.cast(pa.list_(pa.timestamp("us"))).slice(1),
    })
    engine = DuckDBEngine(tmp_path / "w.duckdb")
    engine.connect()
    try:
        relation = engine.stage(staged).as_string(None)
        got = engine.con.execute(f"SELECT d::VARCHAR[][], ts::VARCHAR[] FROM {relation}").fetchall()  # noqa: S608
    finally:
        engine.close()
    assert got == [([["-infinity", None]], ["-infinity", "1970-01-01 00:00:00"]), (None, None),
                   ([[], ["-infinity"]], [])]


@pytest.mark.parametrize(("arrow", "low", "high"), [
    (pa.date32(), -(2**31), 2**31 - 1),
    (pa.timestamp("us"), -(2**63), 2**63 - 1),
    (pa.timestamp("us", tz="UTC"), -(2**63), 2**63 - 1),
    (pa.time64("us"), 0, 86_400_000_000),
], ids=str)
def test_postgres_target_stages_temporal_arrays_as_integers(arrow: pa.DataType, low: int, high: int) -> None:
    """Arrays of dates, times and timestamps reach COPY as their integers (infinities, 24:00:00 and years
    Python cannot hold included), to be converted element by element in SQL."""
    storage = pa.int32() if pa.types.is_date32(arrow) else pa.int64()
    column = pa.array([[low, high, None], None, []], pa.list_(storage)).cast(pa.list_(arrow))
    staged, _ = _staged_type(column.type, sql.Identifier("c"))
    assert staged == pa.list_(storage)
    assert pc.cast(column, staged).to_pylist() == [[low, high, None], None, []]


def test_table_without_key_is_refused(tmp_path: Path) -> None:
    """A keyless table stops the sink with a line naming it; logical messages are not rows and pass."""
    from tests.builders import USERS

    path = tmp_path / "w.duckdb"
    with pytest.raises(SinkError, match=r"table public\.users has no primary key"):
        write_all(duckdb_sink("duckdb", path, job="j"),
                  ChangeBatch(Position(100), [table(USERS, [("c", tx(1), 1, 0, None, (b"x",))])]))
    write_all(duckdb_sink("duckdb", path, job="j"),
              ChangeBatch(Position(100), [table(USERS, [("m", tx(1), 1, 0, None, (b"x",))])]))
    assert rows(path, "SELECT position FROM _cdc_checkpoints") == [('{"commit":100}',)]


@pytest.mark.parametrize("column", ["_cdc_op", "_cdc_deleted", "_CDC_OP"])
def test_a_reserved_column_name_is_refused(tmp_path: Path, column: str) -> None:
    """A source column named _cdc_* (any case) stops the sink with one non-retryable line naming job, sink, table
    and column; nothing of the batch is written and the position stays."""
    from cdc.columnar import ReservedColumnError

    schema = TableSchema(TableId("shop", "public", "t"), (Column("id", "int4", pg.INT4, key=True),
                                                          Column(column, "text", pg.TEXT)))
    path = tmp_path / "w.duckdb"
    batch = ChangeBatch(Position(200), [*orders(("c", tx(2), 1, 0, None, (b"1", b"1", b"a"))),
                                        table(schema, [("c", tx(2), 2, 0, None, (b"1", b"x"))])])
    with pytest.raises(ReservedColumnError, match=(
            rf"^job j: duckdb sink duckdb: table public\.t has a column named {column}, but names starting with "
            r"_cdc_ are reserved")) as caught:
        write_all(duckdb_sink("duckdb", path, job="j", soft_deletes=True), batch)
    assert not caught.value.retryable
    assert rows(path, "SELECT count(*) FROM _cdc_checkpoints") == [(0,)]
    assert rows(path, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'orders'") == [(0,)]


def test_target_names_map_schema_and_table(tmp_path: Path) -> None:
    """target_schema and table_name templates place each table."""
    path = tmp_path / "w.duckdb"
    write_all(duckdb_sink("duckdb", path, job="j", names=TargetNames("raw", "{source}_{schema}_{table}")),
              ChangeBatch(Position(100), orders(("c", tx(1), 1, 0, None, (b"1", b"1", b"a")))))
    assert rows(path, "SELECT id FROM raw.shop_public_orders") == [(1,)]


CONFIG = """
jobs:
  - name: shop
    source: {type: postgres, dsn: "postgresql://src", slot: s, publication: p}
    sinks:
      - {type: duckdb, path: ./shop.duckdb, target_schema: raw, table_name: "{schema}_{table}", soft_deletes: true}
      - {type: postgres, dsn: "postgresql://u:secret@wh/dw"}
"""


def test_config_reads_warehouse_sinks() -> None:
    """Both warehouse sink types parse next to a postgres source; the target dsn is a secret."""
    job = parse_config(CONFIG, "cdc.yaml", {}).jobs[0]
    assert isinstance(job.source, PostgresSourceConfig)
    duck, target = job.sinks
    assert isinstance(duck, DuckDBSinkConfig) and isinstance(target, PostgresSinkConfig)
    assert (duck.target_schema, duck.table_name, duck.soft_deletes) == ("raw", "{schema}_{table}", True)
    assert "secret" not in repr(target)
    assert job.sink_names() == ["duckdb", "postgres"]


def test_config_rejects_unknown_name_placeholders() -> None:
    """A table_name placeholder other than {source}, {schema}, {table} is an error with its line."""
    with pytest.raises(ConfigError, match=r"cdc.yaml:6: jobs\[0\].sinks\[0\].table_name: .*unknown placeholder"):
        parse_config(CONFIG.replace("{schema}_{table}", "{db}"), "cdc.yaml", {})


def test_without_primary_key_one_row_per_key_remains(tmp_path: Path) -> None:
    """primary_key: false creates no constraint, and updates still leave one row per key."""
    path = tmp_path / "w.duckdb"
    write_all(
        duckdb_sink("duckdb", path, job="j", primary_key=False),
        ChangeBatch(Position(100), orders(("c", tx(1), 1, 0, None, (b"1", b"1", b"a")))),
        ChangeBatch(Position(200), orders(("u", tx(2), 1, 0, None, (b"1", b"2", b"b")),
                                          ("c", tx(2), 2, 0, None, (b"2", b"2", b"c")))),
    )
    assert rows(path, "SELECT * FROM public.orders ORDER BY id") == [(1, "2", "b"), (2, "2", "c")]
    assert rows(path, "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'orders' "
                      "AND constraint_type = 'PRIMARY KEY'") == [(0,)]
    with_key = tmp_path / "k.duckdb"
    write_all(duckdb_sink("duckdb", with_key, job="j"),
              ChangeBatch(Position(100), orders(("c", tx(1), 1, 0, None, (b"1", b"1", b"a")))))
    assert rows(with_key, "SELECT constraint_column_names FROM duckdb_constraints() WHERE table_name = 'orders' "
                          "AND constraint_type = 'PRIMARY KEY'") == [(["id"],)]


def test_widening_a_duckdb_key_column_stops_with_what_to_do(tmp_path: Path) -> None:
    """DuckDB cannot retype a primary key column: int4 -> int8 of the key stops with one line, nothing moves."""
    path = tmp_path / "w.duckdb"
    tid = TableId("shop", "public", "k")
    v1 = TableSchema(tid, (Column("id", "int4", pg.INT4, key=True),))
    v2 = TableSchema(tid, (Column("id", "int8", pg.INT8, key=True),))
    write_all(duckdb_sink("duckdb", path, job="j"),
              ChangeBatch(Position(100), [table(v1, [("c", tx(1), 1, 0, None, (b"1",))])]))
    with pytest.raises(SinkError, match=r"cannot widen the target column public\.k\.id from INTEGER to BIGINT .*"
                                        r"alter it yourself or recreate the table"):
        write_all(duckdb_sink("duckdb", path, job="j"),
                  ChangeBatch(Position(200), [table(v2, [("c", tx(2), 1, 0, None, (b"2",))])]))
    assert rows(path, "SELECT position FROM _cdc_checkpoints") == [('{"commit":100}',)]
    assert rows(path, "SELECT id FROM public.k") == [(1,)]


def test_snapshot_blocks_upsert_and_replayed_blocks_are_cut(tmp_path: Path) -> None:
    """Columnar snapshot blocks (op r) upsert by key; a replayed block only applies the rows past the position."""
    from cdc.events import RowBlock, TableChanges

    codec = table(ORDERS, []).codec
    snapshot = Transaction(0, 50, TS)

    def block(first_seq: int, ids: list[int], note: bytes) -> ChangeBatch:
        raw = pa.table({"0": pa.array([str(i).encode() for i in ids], pa.binary()),
                        "1": pa.array([b"1.5"] * len(ids), pa.binary()), "2": pa.array([note] * len(ids), pa.binary())})
        b = RowBlock(snapshot, first_seq, 0, raw, codec.columns_to_arrow)  # type: ignore[attr-defined]
        return ChangeBatch(Position(50, first_seq + len(ids) - 1), [TableChanges(ORDERS, codec, block=b)])

    path = tmp_path / "w.duckdb"
    write_all(duckdb_sink("duckdb", path, job="j"), block(1, [1, 2], b"first"))
    # After a crash the source resends from seq 1: rows 1-2 are held (skipped), row 3 is new.
    write_all(duckdb_sink("duckdb", path, job="j"), block(1, [1, 2, 3], b"again"),
              ChangeBatch(Position(100), orders(("u", tx(1), 1, 0, None, (b"2", b"7", UNCHANGED)))))
    assert rows(path, "SELECT * FROM public.orders ORDER BY id") == [
        (1, "1.5", "first"), (2, "7", "first"), (3, "1.5", "again")]


def test_duckdb_settings_reach_the_connection(tmp_path: Path) -> None:
    """memory_limit and threads from the config are DuckDB's settings on the sink's connection."""
    from sinks.warehouse.duckdb import DuckDBEngine

    engine = DuckDBEngine(tmp_path / "w.duckdb", memory_limit="256MB", threads=1)
    engine.connect()
    try:
        assert engine.con.execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchall() == [
            ("244.1 MiB", 1)]
    finally:
        engine.close()
    job = parse_config(CONFIG.replace("soft_deletes: true}", "soft_deletes: true, memory_limit: 1GB, threads: 2}"),
                       "cdc.yaml", {}).jobs[0]
    assert isinstance(job.sinks[0], DuckDBSinkConfig)
    assert (job.sinks[0].memory_limit, job.sinks[0].threads) == ("1GB", 2)
    with pytest.raises(ConfigError, match=r"cdc.yaml:6: jobs\[0\].sinks\[0\].memory_limit"):
        parse_config(CONFIG.replace("soft_deletes: true}", "soft_deletes: true, memory_limit: lots}"), "cdc.yaml", {})
