"""Warehouse sinks against real servers: a PostgreSQL source replicated by the real daemon into
a DuckDB file and into a PostgreSQL target database, compared with the source row by row.

The DuckDB file is locked by the daemon while it runs, so DuckDB is read after a kill or a
SIGTERM; the PostgreSQL target is read while the daemon runs to know when it caught up (the
pipeline writes every batch to both sinks before the next one).
"""

from __future__ import annotations

import random
import string
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
import psycopg
import pytest
from psycopg import sql

from cdc.events import UNCHANGED, ChangeBatch, Column, Position, TableId, TableSchema, Transaction
from connectors.postgres import types as pgt
from integration.brokers import broker_job, checkpoint_of
from integration.conftest import PgDatabase
from integration.daemon import (
    ITEMS_DDL,
    ChangeWriter,
    Daemon,
    Daemons,
    JobFiles,
    assert_clean_log,
    run_cdc,
    slot_confirmed_flush,
    wait_until,
)
from sinks.warehouse.postgres import postgres_sink
from sinks.warehouse.schema import POSTGRES
from tests.builders import TS, table, write_all
from tests.test_columnar import key_move_batches

CATCH_UP_S = 40.0
HOSTILE = 'weird "name"; drop table x;--'

Rows = list[tuple[Any, ...]]



def select_all(schema: str, name: str, key: str = "id") -> sql.Composed:
    return sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.Identifier(schema, name), sql.Identifier(key))


def pg_rows(db: PgDatabase, schema: str, name: str) -> Rows:
    with db.connect() as conn:
        return conn.execute(select_all(schema, name)).fetchall()


def duckdb_rows(path: Path, schema: str, name: str) -> Rows:
    con = duckdb.connect(str(path), read_only=True)
    try:
        found = con.sql(select_all(schema, name).as_string(None)).to_arrow_table()
        return [tuple(r.values()) for r in found.to_pylist()]
    finally:
        con.close()


def pg_position(db: PgDatabase, sink: str) -> int | None:
    try:
        found = db.query("SELECT position FROM _cdc_checkpoints WHERE sink = %s", (sink,))
    except psycopg.errors.UndefinedTable:
        return None
    return int(orjson.loads(found[0][0])["commit"]) if found else None


def duckdb_position(path: Path, sink: str) -> int | None:
    con = duckdb.connect(str(path), read_only=True)
    try:
        found = con.execute("SELECT position FROM _cdc_checkpoints WHERE sink = ?", [sink]).fetchall()
    finally:
        con.close()
    return int(orjson.loads(found[0][0])["commit"]) if found else None


def warehouse_job(pg: PgDatabase, target: PgDatabase, root: Path, **options: Any) -> tuple[JobFiles, str, Path]:
    duck = root / "warehouse.duckdb"
    files, slot = broker_job(pg, root, [
        {"type": "duckdb", "path": str(duck)},
        {"type": "postgres", "dsn": target.dsn},
    ], **options)
    return files, slot, duck


def wait_target_equal(pg: PgDatabase, target: PgDatabase, daemon: Daemon, schema: str, name: str) -> Rows:
    """Wait until the PostgreSQL target's table equals the source's; return the source rows."""
    expected = pg_rows(pg, schema, name)

    def equal() -> bool:
        try:
            return pg_rows(target, schema, name) == expected
        except psycopg.errors.UndefinedTable:
            return False

    try:
        wait_until(equal, CATCH_UP_S, f"the PostgreSQL target's {schema}.{name} to match the source")
    except AssertionError:
        assert pg_rows(target, schema, name) == expected, daemon.tail()
    return expected


def test_kill_9_twice_both_targets_equal_the_source(
    pg: PgDatabase, target: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """Two SIGKILLs mid-stream: the DuckDB file and the PostgreSQL target each equal the source row by row."""
    pg.execute(ITEMS_DDL)
    files, slot, duck = warehouse_job(pg, target, tmp_path / "job")
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    writer = ChangeWriter(pg, seed=7_2026)
    durable: dict[str, int] | None = None  # the job checkpoint's DuckDB entry at the last kill
    try:
        for tx in range(1, 61):
            if tx in (18, 40):
                # The job checkpoint moves only once both sinks made a batch durable.
                wait_until(lambda last=durable: checkpoint_of(files, "duckdb") not in (None, last), CATCH_UP_S,
                           "the daemon to make a batch durable in both targets")
            writer.transaction()
            time.sleep(0.01)
            if tx in (18, 40):
                assert daemon.kill() == -9
                positions = [duckdb_position(duck, "duckdb"), pg_position(target, "postgres")]
                assert None not in positions
                durable = checkpoint_of(files, "duckdb")
                assert slot_confirmed_flush(pg, slot) <= min(p for p in positions if p is not None), (
                    "the slot was acknowledged past a sink")
            if tx in (24, 40):
                daemon.start()
    finally:
        writer.close()
    expected = wait_target_equal(pg, target, daemon, "public", "items")
    assert len(expected) > 20
    assert daemon.terminate(10.0) == 0
    assert_clean_log(daemon)
    assert duckdb_rows(duck, "public", "items") == expected
    assert pg_rows(target, "public", "items") == expected
    assert len(daemon.events(all_runs=True)) > 0


def test_hostile_names_toast_truncate_and_added_column(
    pg: PgDatabase, target: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """A table called `weird "name"; drop table x;--` with a column `select` replicates (snapshot, then stream)
    into both targets, harming nothing; unchanged TOAST values are kept, a truncate empties, an added column arrives."""
    hostile = sql.Identifier(HOSTILE)
    with pg.connect() as conn:
        conn.execute(sql.SQL('CREATE TABLE {} (id int PRIMARY KEY, "select" text, big text)').format(hostile))
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN big SET STORAGE EXTERNAL").format(hostile))
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, kind text)")
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'snap', 'short'), (2, 'snap', NULL)").format(hostile))
        conn.execute("INSERT INTO events SELECT g, 'old' FROM generate_series(1, 5) g")
    canary = tmp_path / "job" / "warehouse.duckdb"
    canary.parent.mkdir(parents=True)
    con = duckdb.connect(str(canary))
    con.execute("CREATE TABLE x (keep INTEGER); INSERT INTO x VALUES (42)")
    con.close()
    target.execute("CREATE TABLE x (keep int); INSERT INTO x VALUES (42)")
    files, _, duck = warehouse_job(pg, target, tmp_path / "job")
    document = files.config.read_text().replace("snapshot: never", "snapshot: initial")
    files.config.write_text(document)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    big = "".join(f"{i:05d}" for i in range(4000))  # 20 kB, stored out of line (STORAGE EXTERNAL)
    with pg.connect() as conn:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (3, 'a', %s), (4, 'b', %s)").format(hostile), (big, big[::-1]))
        wait_target_equal(pg, target, daemon, "public", HOSTILE)
        # Only "select" changes: PostgreSQL does not send the TOASTed big value.
        conn.execute(sql.SQL('UPDATE {} SET "select" = "select" || \'!\' WHERE id IN (3, 4)').format(hostile))
        conn.execute(sql.SQL('ALTER TABLE {} ADD COLUMN "Added Col" numeric(10,2)').format(hostile))
        conn.execute(sql.SQL('UPDATE {} SET "Added Col" = id * 1.25 WHERE id >= 2').format(hostile))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (5, 'new', 'x', 9.99)").format(hostile))
        conn.execute("INSERT INTO events VALUES (6, 'before truncate')")
        wait_target_equal(pg, target, daemon, "public", "events")
        conn.execute("TRUNCATE events")
        conn.execute("INSERT INTO events VALUES (7, 'after'), (8, 'after')")
    expected = wait_target_equal(pg, target, daemon, "public", HOSTILE)
    assert [r[3] for r in expected] == [None, Decimal("2.50"), Decimal("3.75"), Decimal("5.00"), Decimal("9.99")]
    assert expected[2][2] == big and expected[3][2] == big[::-1]
    events = wait_target_equal(pg, target, daemon, "public", "events")
    assert [r[0] for r in events] == [7, 8]
    assert daemon.terminate(10.0) == 0
    assert_clean_log(daemon)
    for name, rows in ((HOSTILE, expected), ("events", events)):
        assert duckdb_rows(duck, "public", name) == rows
        assert pg_rows(target, "public", name) == rows
    assert target.query("SELECT keep FROM x") == [(42,)]
    con = duckdb.connect(str(duck), read_only=True)
    try:
        assert con.execute("SELECT keep FROM x").fetchall() == [(42,)]
    finally:
        con.close()


def test_postgres_target_types_and_special_values(target: PgDatabase) -> None:
    """Every mapped type creates the documented PostgreSQL column type; special values arrive exactly."""
    tx = Transaction(1, 100, TS)
    schema = TableSchema(TableId("shop", "public", "special"), (
        Column("id", "int4", pgt.INT4, key=True), Column("ts", "timestamptz", pgt.TIMESTAMPTZ),
        Column("lts", "timestamp", pgt.TIMESTAMP), Column("d", "date", pgt.DATE), Column("t", "time", pgt.TIME),
        Column("a", "int4[]", pgt.INT4_ARRAY), Column("b", "bytea", pgt.BYTEA),
        Column("n", "numeric", pgt.NUMERIC, ((12 << 16) | 2) + 4), Column("f", "float8", pgt.FLOAT8),
        Column("s", "int2", pgt.INT2), Column("r", "float4", pgt.FLOAT4), Column("ok", "bool", pgt.BOOL),
        Column("tags", "text[]", pgt.TEXT_ARRAY), Column("big", "int8", pgt.INT8)))
    write_all(postgres_sink("postgres", target.dsn, job="j"), ChangeBatch(Position(100), [table(schema, [
        ("c", tx, 1, 0, None, (b"1", b"infinity", b"-infinity", b"infinity", b"24:00:00", b"{1,NULL}", b"\\x00ff",
                               b"-12.50", b"NaN", b"-32768", b"0.1", b"t", b'{a,"b c",NULL}', b"9223372036854775807")),
        ("c", tx, 2, 0, None, (b"2", b"-infinity", b"1900-02-03 04:05:06.000001", b"-infinity", b"00:00:00", b"{}",
                               None, None, b"-Infinity", None, None, b"f", b"{}", None)),
        ("c", tx, 3, 0, None, (b"3", b"2026-01-02 03:04:05.123456+00", b"0044-03-15 12:00:00 BC", b"2026-01-02",
                               b"12:34:56.000001", None, b"\\x", b"0", b"1e300", b"7", b"3.5", None, None, b"-1")),
    ])]))
    got = target.query(
        "SELECT id, ts::text, lts::text, d::text, t::text, a, b, n, f::text, s, r, ok, tags, big "
        "FROM public.special ORDER BY id")
    assert got == [
        (1, "infinity", "-infinity", "infinity", "24:00:00", [1, None], b"\x00\xff", Decimal("-12.50"), "NaN",
         -32768, pytest.approx(0.1), True, ["a", "b c", None], 9223372036854775807),
        (2, "-infinity", "1900-02-03 04:05:06.000001", "-infinity", "00:00:00", [], None, None, "-Infinity", None,
         None, False, [], None),
        (3, "2026-01-02 03:04:05.123456+00", "0044-03-15 12:00:00 BC", "2026-01-02", "12:34:56.000001", None, b"",
         Decimal("0.00"), "1e+300", 7, 3.5, None, None, -1),
    ]
    catalog = target.query(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'public.special'::regclass AND attnum > 0 ORDER BY attnum")
    mapping = {name: POSTGRES.arrow_type(type_name) for name, type_name in catalog}
    assert None not in mapping.values(), catalog
    assert dict(catalog)["n"] == "numeric(12,2)" and dict(catalog)["ts"] == "timestamp with time zone"


@pytest.mark.parametrize("use_merge", [None, False], ids=["merge", "delete-insert"])
def test_postgres_target_keeps_unchanged_values_and_widens(target: PgDatabase, use_merge: bool | None) -> None:
    """Unchanged values keep what the target stores; int4 -> int8 widens the target column; replays are skipped
    (with MERGE, and with the DELETE + INSERT of servers before 15)."""
    tid = TableId("shop", "public", "w")
    v1 = TableSchema(tid, (Column("id", "int4", pgt.INT4, key=True), Column("n", "int4", pgt.INT4),
                           Column("body", "text", pgt.TEXT)))
    v2 = TableSchema(tid, (v1.columns[0], Column("n", "int8", pgt.INT8), v1.columns[2]))
    first = ChangeBatch(Position(100), [table(v1, [("c", Transaction(1, 100, TS), 1, 0, None, (b"1", b"1", b"kept"))])])
    second = ChangeBatch(Position(200), [table(v2, [
        ("u", Transaction(2, 200, TS), 1, 0, None, (b"1", b"9000000000", UNCHANGED))])])
    write_all(postgres_sink("postgres", target.dsn, job="j", soft_deletes=True, use_merge=use_merge), first, second)
    write_all(postgres_sink("postgres", target.dsn, job="j", soft_deletes=True, use_merge=use_merge),
             first, second)  # a replay
    assert target.query("SELECT id, n, body, _cdc_deleted FROM public.w") == [(1, 9000000000, "kept", False)]
    assert target.query("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                        "WHERE attrelid = 'public.w'::regclass AND attname = 'n'") == [("bigint",)]
    assert target.query("SELECT position FROM _cdc_checkpoints") == [('{"commit":200}',)]


def test_unreachable_target_stops_the_job_with_one_line(pg: PgDatabase, tmp_path: Path) -> None:
    """A PostgreSQL target that does not exist: `cdc run` exits 2 with one line naming the sink, no checkpoint."""
    pg.execute(ITEMS_DDL)
    files, _ = broker_job(pg, tmp_path / "job", [
        {"type": "postgres", "dsn": pg.server.dsn("no_such_db_" + pg.dbname), "name": "dw"}])
    result = run_cdc("run", files.config, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("cdc: error:")]
    assert len(lines) == 1, result.stderr
    assert "postgres sink dw: cannot open PostgreSQL database no_such_db_" in lines[0]
    assert files.checkpoints() == []


def test_a_refused_statement_reports_its_own_error_and_moves_nothing(target: PgDatabase) -> None:
    """A target table the user gave a NOT NULL column: the batch fails with that error (not a follow-up one),
    retryably, and neither rows nor position move."""
    from cdc.errors import SinkWriteError

    target.execute("CREATE TABLE public.w (id int PRIMARY KEY, n int, extra int NOT NULL)")
    tid = TableId("shop", "public", "w")
    schema = TableSchema(tid, (Column("id", "int4", pgt.INT4, key=True), Column("n", "int4", pgt.INT4)))
    batch = ChangeBatch(Position(100), [table(schema, [("c", Transaction(1, 100, TS), 1, 0, None, (b"1", b"1"))])])
    with pytest.raises(SinkWriteError, match=r"postgres sink postgres: cannot apply the batch ending at 100 to "
                                             r"PostgreSQL database .*violates not-null constraint"):
        write_all(postgres_sink("postgres", target.dsn, job="j"), batch)
    assert target.query("SELECT count(*) FROM public.w") == [(0,)]
    assert target.query("SELECT count(*) FROM _cdc_checkpoints") == [(0,)]


@pytest.mark.parametrize("use_merge", [None, False], ids=["merge", "delete-insert"])
def test_postgres_target_soft_deletes_and_truncate(target: PgDatabase, use_merge: bool | None) -> None:
    """With soft_deletes a delete and a truncate mark rows; a key inserted again comes back alive."""
    tid = TableId("shop", "public", "s")
    schema = TableSchema(tid, (Column("id", "int4", pgt.INT4, key=True), Column("v", "text", pgt.TEXT)))

    def batch(commit: int, *changes: tuple[str, bytes, bytes | None]) -> ChangeBatch:
        t = Transaction(commit, commit, TS)
        rows = [(op, t, i + 1, 0, (k, None) if op == "d" else None, None if op in "dt" else (k, v))
                for i, (op, k, v) in enumerate(changes)]
        return ChangeBatch(Position(commit), [table(schema, rows)])

    write_all(postgres_sink("postgres", target.dsn, job="j", soft_deletes=True, use_merge=use_merge),
             batch(100, ("c", b"1", b"a"), ("c", b"2", b"b"), ("c", b"3", b"c")),
             batch(200, ("d", b"1", None)),
             batch(300, ("t", b"", None), ("c", b"3", b"again")))
    assert target.query("SELECT id, v, _cdc_deleted, _cdc_synced_at IS NOT NULL FROM public.s ORDER BY id") == [
        (1, "a", True, True), (2, "b", True, True), (3, "again", False, True)]


def test_key_changes_keep_unchanged_toast_values_in_every_mirror(
    pg: PgDatabase, target: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """UPDATE of the key with a TOASTed text left unchanged (pgoutput sends it as unchanged): the Delta mirror,
    DuckDB and the PostgreSQL target hold the old row's value under the new key, also for chains of key changes
    in one transaction and across batches and for a same-key update right after a move."""
    from integration.test_delta_sink import delta_rows

    pg.execute("CREATE TABLE docs (id int PRIMARY KEY, title text, body text)")
    pg.execute("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
    lake = tmp_path / "lake"
    duck = tmp_path / "warehouse.duckdb"
    files, _ = broker_job(pg, tmp_path / "job", [
        {"type": "duckdb", "path": str(duck)}, {"type": "postgres", "dsn": target.dsn},
        {"type": "delta", "path": str(lake)}])
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started", timeout=30)
    rng = random.Random(15)
    bodies = ["".join(rng.choices(string.ascii_letters + string.digits, k=10_000)) for _ in range(5)]
    with pg.connect() as conn:
        for i, body in zip((1, 3, 5, 7, 9), bodies, strict=True):
            conn.execute("INSERT INTO docs VALUES (%s, 'new', %s)", (i, body))
        wait_target_equal(pg, target, daemon, "public", "docs")
        assert conn.execute("SELECT count(*) FROM docs WHERE pg_column_size(body) >= 10000").fetchone() == (5,)
        conn.execute("UPDATE docs SET id = 2 WHERE id = 1")  # the statement
        with conn.transaction():  # one transaction, so one batch: a chain, and a move then a same-key update
            conn.execute("UPDATE docs SET id = 30 WHERE id = 3")
            conn.execute("UPDATE docs SET id = 31 WHERE id = 30")
            conn.execute("UPDATE docs SET id = 50 WHERE id = 5")
            conn.execute("UPDATE docs SET title = 'moved' WHERE id = 50")
        conn.execute("UPDATE docs SET id = 70, title = 'first' WHERE id = 7")
        wait_target_equal(pg, target, daemon, "public", "docs")
        conn.execute("UPDATE docs SET id = 71 WHERE id = 70")  # the next batch moves it again
        conn.execute("UPDATE docs SET id = 90 WHERE id = 9")
        conn.execute("UPDATE docs SET id = 9 WHERE id = 90")  # back to its first key
    expected = wait_target_equal(pg, target, daemon, "public", "docs")
    assert [r[0] for r in expected] == [2, 9, 31, 50, 71] and sorted(r[2] for r in expected) == sorted(bodies)
    wait_until(lambda: delta_rows(str(lake / "public/docs"), ("id", "title", "body")) == expected, CATCH_UP_S,
               "the Delta mirror to equal the source")
    assert daemon.terminate(10.0) == 0
    assert_clean_log(daemon)
    assert duckdb_rows(duck, "public", "docs") == expected


@pytest.mark.parametrize("use_merge", [None, False], ids=["merge", "delete-insert"])
def test_postgres_target_moves_unchanged_values_with_the_key(target: PgDatabase, use_merge: bool | None) -> None:
    """Key changes with an unchanged value, in chains within and across batches: the PostgreSQL target keeps the
    value stored under the old key (with MERGE, and with DELETE + INSERT)."""
    batches, expected = key_move_batches()
    write_all(postgres_sink("postgres", target.dsn, job="j", use_merge=use_merge), *batches)
    assert [(i, str(t), n) for i, t, n in target.query("SELECT id, total, note FROM public.orders ORDER BY id")] == (
        expected)


def test_a_reserved_column_stops_the_job_at_start_with_one_line(
    pg: PgDatabase, target: PgDatabase, tmp_path: Path
) -> None:
    """A source table with a column named _cdc_op: `cdc run` (snapshot first) exits 2 with one line naming the
    job, the sink, the table and the column; no traceback, no checkpoint, no target table."""
    pg.execute("CREATE TABLE docs (id int PRIMARY KEY, _cdc_op text)")
    pg.execute("INSERT INTO docs VALUES (1, 'x')")
    files, _, duck = warehouse_job(pg, target, tmp_path / "job")
    files.config.write_text(files.config.read_text().replace("snapshot: never", "snapshot: initial"))
    result = run_cdc("run", files.config, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("cdc: error:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cdc: error: job {files.job}: ") and (
        "table public.docs has a column named _cdc_op, but names starting with _cdc_ are reserved") in lines[0]
    assert files.checkpoints() == []
    assert pg_position(target, "postgres") is None and duckdb_position(duck, "duckdb") is None
    assert target.query("SELECT count(*) FROM information_schema.tables WHERE table_name = 'docs'") == [(0,)]


def test_two_sinks_opening_one_target_at_once_both_start(target: PgDatabase, tmp_path: Path) -> None:
    """Two jobs' sinks (two sink instances in one process) open one PostgreSQL target and one DuckDB file at the
    same moment, 20 times over fresh targets: both open and write, and both checkpoint rows live."""
    import asyncio

    from sinks.warehouse.duckdb import duckdb_sink
    from sinks.warehouse.merge import WarehouseSink

    schema = TableSchema(TableId("shop", "public", "t"), (Column("id", "int4", pgt.INT4, key=True),))

    def batch(n: int) -> ChangeBatch:
        return ChangeBatch(Position(n), [table(schema, [("c", Transaction(n, n, TS), 1, 0, None, (str(n).encode(),))])])

    async def both(sinks: list[WarehouseSink]) -> None:
        try:
            await asyncio.gather(*(s.open() for s in sinks))
            await asyncio.gather(*(s.write(batch(100 + i)) for i, s in enumerate(sinks)))
        finally:
            for s in sinks:
                await s.close()

    for attempt in range(20):
        target.execute("DROP TABLE IF EXISTS _cdc_checkpoints")
        duck = tmp_path / f"w{attempt}.duckdb"
        asyncio.run(both([postgres_sink("postgres", target.dsn, job=f"job{i}") for i in range(2)]
                         + [duckdb_sink("duckdb", duck, job=f"job{i}") for i in range(2)]))
        assert sorted(target.query("SELECT job, position FROM _cdc_checkpoints")) == [
            ("job0", '{"commit":100}'), ("job1", '{"commit":101}')]
        con = duckdb.connect(str(duck), read_only=True)
        try:
            assert sorted(con.execute("SELECT job, position FROM _cdc_checkpoints").fetchall()) == [
                ("job0", '{"commit":102}'), ("job1", '{"commit":103}')]
        finally:
            con.close()
