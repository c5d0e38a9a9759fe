"""PostgreSQL fidelity: TOAST, replica identity, truncate, messages, schema changes,
partitions, a 2M-row transaction, idle slots and server restarts, and the special dates
and times each sink stores (docs/types.md, "Special dates and times").

Each test runs the real daemon into the file sink and compares what the sink rebuilds
with the source table after the run (integration/daemon.py); the special values are read
back from a Delta mirror, a DuckDB file and a PostgreSQL target with their own engines
(one test drives the PostgreSQL target's sink directly, through both of its apply paths).
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import TableNotFoundError

from cdc.events import UNCHANGED, ChangeBatch, Column, Position, TableId, TableSchema, Transaction
from connectors.postgres import types as pgt
from integration.conftest import PgDatabase
from integration.daemon import (
    Daemon,
    Daemons,
    JobFiles,
    envelopes,
    event_ids,
    job_config,
    rebuild,
    sink_position,
    wait_until,
    write_config,
)
from sinks.warehouse.postgres import postgres_sink
from tests.builders import TS, table, write_all


def start_job(pg: PgDatabase, tmp_path: Path, daemons: Daemons, include: list[str], **source: Any) -> tuple[
        JobFiles, Daemon, str]:
    files = JobFiles(tmp_path / "job")
    slot = pg.name("slot")
    doc = job_config(files, dsn=pg.dsn, slot=slot, publication=pg.name("pub"), include=include)
    doc["jobs"][0]["source"].update(source)
    write_config(files, doc)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    return files, daemon, slot


def insert_lsn(pg: PgDatabase) -> int:
    return int(pg.query("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")[0][0])


def wait_caught_up(pg: PgDatabase, files: JobFiles) -> None:
    """Wait until the sink holds everything written so far (the WAL's end, read once: heartbeat
    messages and other databases keep moving it, and a moving target may never be met)."""
    end = insert_lsn(pg)
    wait_until(lambda: caught_up(files, end), 20, "the sink to catch up")


def caught_up(files: JobFiles, lsn: int) -> bool:
    pos = sink_position(files.sink)
    return pos is not None and pos["commit"] >= lsn - 1 and "seq" not in pos


def source_text_rows(pg: PgDatabase, sql: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Rows as ``{(id,): {column: value}}`` with every value as PostgreSQL's text (None for NULL)."""
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute(sql)
        assert cur.description is not None
        names = [d.name for d in cur.description]
        return {(row[0],): dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def test_unchanged_toast_value_is_kept(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """An update of another column sends no TOASTed value: the event marks it unavailable, never NULL."""
    pg.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, n int)")
    pg.execute("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")  # TOAST without compression
    files, daemon, _ = start_job(pg, tmp_path, daemons, ["public.docs"])
    body = "".join(chr(0x41 + i % 26) for i in range(100_000))
    pg.execute("INSERT INTO docs VALUES (1, %s, 0)", (body,))
    pg.execute("UPDATE docs SET n = 1 WHERE id = 1")
    wait_caught_up(pg, files)
    update = [e for e in envelopes(files.sink) if e["op"] == "u"]
    assert len(update) == 1
    assert update[0]["after"]["body"] == "__debezium_unavailable_value"
    assert update[0]["after"]["n"] == 1
    assert rebuild(files.sink)["public.docs"] == {(1,): {"id": 1, "body": body, "n": 1}}
    assert daemon.terminate() == 0


@pytest.mark.parametrize("identity", ["FULL", "USING INDEX docs_code_key", "NOTHING"])
def test_replica_identity_modes(pg: PgDatabase, tmp_path: Path, daemons: Daemons, identity: str) -> None:
    """Before images are as complete as the replica identity makes them; NOTHING publishes inserts only."""
    pg.execute("CREATE TABLE docs (id int PRIMARY KEY, code text NOT NULL UNIQUE, n int)")
    pg.execute(f"ALTER TABLE docs REPLICA IDENTITY {identity}")
    files, daemon, _ = start_job(pg, tmp_path, daemons, ["public.docs"])
    pg.execute("INSERT INTO docs VALUES (1, 'a', 0), (2, 'b', 0)")
    if identity == "NOTHING":
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            pg.execute("UPDATE docs SET n = 1 WHERE id = 1")
        wait_caught_up(pg, files)
        assert [e["op"] for e in envelopes(files.sink)] == ["c", "c"]
        assert daemon.terminate() == 0
        return
    pg.execute("UPDATE docs SET code = 'z', n = 1 WHERE id = 1")
    pg.execute("DELETE FROM docs WHERE id = 2")
    wait_caught_up(pg, files)
    events = list(envelopes(files.sink))
    update, delete = events[2], events[3]
    if identity == "FULL":
        assert update["before"] == {"id": 1, "code": "a", "n": 0}
        assert delete["before"] == {"id": 2, "code": "b", "n": 0}
        key: tuple[str, ...] = ("id",)
    else:  # the index's columns only: they are the events' key
        assert update["before"] == {"id": None, "code": "a", "n": None}
        assert delete["before"] == {"id": None, "code": "b", "n": None}
        key = ("code",)
    rows = rebuild(files.sink, {"public.docs": key})["public.docs"]
    assert list(rows.values()) == [{"id": 1, "code": "z", "n": 1}]
    assert daemon.terminate() == 0


def test_truncate_and_logical_messages(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """TRUNCATE becomes op=t per table; messages with a selected prefix become op=m, others are dropped."""
    pg.execute("CREATE TABLE a (id int PRIMARY KEY)")
    pg.execute("CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a)")
    files, daemon, _ = start_job(pg, tmp_path, daemons, ["public.*"], messages=["audit"])
    pg.execute("INSERT INTO a VALUES (1), (2)")
    pg.execute("INSERT INTO b VALUES (1, 1)")
    with pg.connect() as conn:
        with conn.transaction():
            conn.execute("SELECT pg_logical_emit_message(true, 'audit', 'in tx')")
            conn.execute("SELECT pg_logical_emit_message(true, 'other', 'ignored')")
            conn.execute("INSERT INTO a VALUES (3)")
        conn.execute("SELECT pg_logical_emit_message(false, 'audit', '{\"k\": 1}')")
        conn.execute("TRUNCATE a, b")
    pg.execute("INSERT INTO a VALUES (9)")
    wait_caught_up(pg, files)
    events = list(envelopes(files.sink))
    truncates = sorted(e["source"]["table"] for e in events if e["op"] == "t")
    assert truncates == ["a", "b"]
    messages = [e["after"] for e in events if e["op"] == "m"]
    assert [m["prefix"] for m in messages] == ["audit", "audit"]
    assert [base64.b64decode(m["content"]) for m in messages] == [b"in tx", b'{"k": 1}']
    tables = _rebuild_tables(files)
    assert tables["public.a"] == {(9,): {"id": 9}}
    assert tables.get("public.b", {}) == {}
    assert daemon.terminate() == 0


def _rebuild_tables(files: JobFiles) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """`rebuild` over the table events only (messages are not rows)."""
    state: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    for e in envelopes(files.sink):
        if e["op"] == "m":
            continue
        rows = state.setdefault(f"{e['source']['schema']}.{e['source']['table']}", {})
        if e["op"] == "t":
            rows.clear()
        elif e["op"] == "d":
            rows.pop((e["before"]["id"],), None)
        else:
            rows[(e["after"]["id"],)] = e["after"]
    return state


def test_schema_changes_mid_stream(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """ADD, RENAME, ALTER TYPE and DROP of columns mid-stream: every event carries the shape of its time."""
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, a int, b text)")
    files, daemon, _ = start_job(pg, tmp_path, daemons, ["public.t"])
    pg.execute("INSERT INTO t VALUES (1, 10, 'x')")
    pg.execute("ALTER TABLE t ADD COLUMN c numeric(10,2) DEFAULT 1.5")
    pg.execute("INSERT INTO t VALUES (2, 20, 'y', 2.25)")
    pg.execute("ALTER TABLE t RENAME COLUMN b TO bee")
    pg.execute("UPDATE t SET bee = 'renamed' WHERE id = 1")
    pg.execute("ALTER TABLE t ALTER COLUMN a TYPE bigint")
    pg.execute("INSERT INTO t VALUES (3, 9000000000, 'z', 3)")
    pg.execute("ALTER TABLE t DROP COLUMN c")
    pg.execute("INSERT INTO t VALUES (4, 40, 'w')")
    wait_caught_up(pg, files)
    afters = [e["after"] for e in envelopes(files.sink)]
    assert afters == [
        {"id": 1, "a": 10, "b": "x"},
        {"id": 2, "a": 20, "b": "y", "c": "2.25"},
        {"id": 1, "a": 10, "bee": "renamed", "c": "1.50"},
        {"id": 3, "a": 9000000000, "bee": "z", "c": "3.00"},
        {"id": 4, "a": 40, "bee": "w"},
    ]
    # Rows last written after the rename carry the new shape and equal the source; row 2's
    # last event predates it (a sink that renames columns in place is the warehouse's job).
    source = source_text_rows(pg, "SELECT id, a, bee FROM t WHERE id <> 2 ORDER BY id")
    sink = rebuild(files.sink)["public.t"]
    assert {k: {c: v[c] for c in ("id", "a", "bee")} for k, v in sink.items() if k != (2,)} == source
    assert daemon.terminate() == 0


def test_partitioned_table_arrives_as_its_root(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """Changes to partitions arrive as the partitioned table (publish_via_partition_root)."""
    pg.execute("CREATE TABLE m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region)")
    pg.execute("CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu')")
    pg.execute("CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us')")
    files, daemon, _ = start_job(pg, tmp_path, daemons, ["public.m"])
    pg.execute("INSERT INTO m SELECT i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, i FROM generate_series(1, 50) i")
    pg.execute("UPDATE m SET v = v * 10 WHERE id <= 10")
    pg.execute("UPDATE m SET region = 'eu' WHERE id = 3")  # moves a row across partitions
    pg.execute("DELETE FROM m WHERE id > 40")
    wait_caught_up(pg, files)
    assert {e["source"]["table"] for e in envelopes(files.sink)} == {"m"}
    expected = {(r[0], r[1]): {"id": r[0], "region": r[1], "v": r[2]} for r in pg.query("SELECT id, region, v FROM m")}
    assert rebuild(files.sink, {"public.m": ("id", "region")})["public.m"] == expected
    assert daemon.terminate() == 0


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_two_million_row_transaction_in_bounded_memory(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """One 2,000,000-row transaction streams through (spooled to disk) with peak RSS under 400 MB."""
    pg.execute("CREATE TABLE huge (id int PRIMARY KEY, payload text)")
    files, daemon, _ = start_job(pg, tmp_path, daemons, ["public.huge"])
    pg.execute("INSERT INTO huge SELECT i, md5(i::text) FROM generate_series(1, 2000000) i")
    end = insert_lsn(pg)
    wait_until(lambda: caught_up(files, end), 240, "the 2M-row transaction to reach the sink", interval=0.5)
    rss = _peak_rss_mb(daemon.pid)
    print(f"peak RSS for a 2,000,000-row transaction: {rss:.0f} MB")
    assert rss < 400
    seen = 0
    for n, e in enumerate(envelopes(files.sink), 1):
        after = e["after"]
        assert after["id"] == n, "events out of order, lost or doubled"
        assert after["payload"] == hashlib.md5(str(n).encode()).hexdigest()
        seen = n
    assert seen == 2_000_000
    assert daemon.terminate() == 0


def test_idle_slot_advances_while_another_database_writes(
    pg: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """A second database writes ~200 MB while the captured one is idle: the job's restart_lsn advances."""
    pg.execute("CREATE TABLE quiet (id int PRIMARY KEY)")
    _, daemon, slot = start_job(pg, tmp_path, daemons, ["public.quiet"])
    other = pg.name("busy")
    pg.server.create_database(other)
    try:
        before = pg.query("SELECT (restart_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots "
                          "WHERE slot_name = %s", (slot,))[0][0]
        with psycopg.connect(pg.server.dsn(other), autocommit=True) as conn:
            conn.execute("CREATE TABLE filler (id int, payload text)")
            for _ in range(4):
                conn.execute("INSERT INTO filler SELECT i, repeat('x', 500) FROM generate_series(1, 100000) i")
            conn.execute("CHECKPOINT")
        written = insert_lsn(pg)
        assert written - int(before) > 200 * 1024 * 1024

        def restart_lsn() -> int:
            return int(pg.query("SELECT (restart_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots "
                                "WHERE slot_name = %s", (slot,))[0][0])

        wait_until(lambda: restart_lsn() > int(before) + 100 * 1024 * 1024, 60, "restart_lsn to advance")
    finally:
        pg.server.drop_database(other)
    assert daemon.terminate() == 0


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart_mid_stream(pg: PgDatabase, tmp_path: Path, daemons: Daemons, mode: str) -> None:
    """The server restarts (-m fast / immediate) mid-stream: the job reconnects and loses nothing."""
    pg.execute("CREATE TABLE r (id int PRIMARY KEY, v int)")
    files, daemon, _ = start_job(pg, tmp_path, daemons, ["public.r"])

    def write(lo: int, hi: int) -> None:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = on")
            for i in range(lo, hi):
                conn.execute("INSERT INTO r VALUES (%s, %s)", (i, i))
                if i % 3 == 0:
                    conn.execute("UPDATE r SET v = v + 1 WHERE id = %s", (i - 1,))

    write(1, 200)
    pg.server.restart(mode)
    write(200, 400)
    expected = {(r[0],): {"id": r[0], "v": r[1]} for r in pg.query("SELECT id, v FROM r")}
    wait_until(lambda: rebuild(files.sink).get("public.r") == expected, 60, "the sink to equal the source")
    ids = event_ids(files.sink)
    assert not [i for i, n in Counter(ids).items() if n > 1]
    assert any(e.get("event") == "job_retrying" for e in daemon.events())
    assert daemon.terminate() == 0


def test_lag_is_measured_and_heartbeat_messages_stay_out_of_sinks(
    pg: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """The source logs slot lag in bytes and seconds; its own heartbeat messages never reach a sink."""
    pg.execute("CREATE TABLE q (id int PRIMARY KEY)")
    files, daemon, _ = start_job(pg, tmp_path, daemons, ["public.q"], lag_interval_s=0.3,
                                 heartbeat_message_interval_s=0.2, messages=["cdc_heartbeat", "app"])
    pg.execute("INSERT INTO q VALUES (1)")
    record = daemon.wait_for("source_lag", timeout=20)
    assert isinstance(record["lag_bytes"], int) and record["lag_bytes"] >= 0
    assert isinstance(record["lag_s"], float) and record["lag_s"] >= 0
    wait_caught_up(pg, files)
    assert [e["op"] for e in envelopes(files.sink)] == ["c"]
    assert daemon.terminate() == 0



#: Rows of the special-values table: (id, date, timestamp, timestamptz, time), as SQL literals.
SPECIAL_ROWS = (
    "(1, 'infinity', 'infinity', 'infinity', '24:00:00')",
    "(2, '-infinity', '-infinity', '-infinity', '00:00:00')",
    "(3, '5874897-12-31', '294276-12-31 23:59:59.999999', '294276-12-31 23:59:59.999999+00', '23:59:59.999999')",
    "(4, '4713-01-01 BC', '4713-01-01 00:00:00 BC', '4713-01-01 00:00:00+00 BC', '12:00:00.5')",
    "(5, '262142-12-31', '262142-12-31 23:59:59.999999', '262143-01-01 00:00:00+00', '00:00:00.000001')",
    "(6, '2026-01-02', '2026-01-02 03:04:05.123456', '2026-01-02 03:04:05.5+00', NULL)",
)
#: What deltalake's own engine prints for them: out-of-range dates and timestamps clamped to
#: Delta's range, timestamps past 294247 (not in Arrow's int64 microseconds) NULL, times as text.
DELTA_TEXT = [
    (1, "+262142-12-31", "+262142-12-31T23:59:59.999999", "+262142-12-31T23:59:59.999999Z", "24:00:00.000000"),
    (2, "-262143-01-01", "-262143-01-01T00:00:00", "-262143-01-01T00:00:00Z", "00:00:00.000000"),
    (3, "+262142-12-31", None, None, "23:59:59.999999"),
    (4, "-4712-01-01", "-4712-01-01T00:00:00", "-4712-01-01T00:00:00Z", "12:00:00.500000"),
    (5, "+262142-12-31", "+262142-12-31T23:59:59.999999", "+262142-12-31T23:59:59.999999Z", "00:00:00.000001"),
    (6, "2026-01-02", "2026-01-02T03:04:05.123456", "2026-01-02T03:04:05.500Z", None),
]


def test_special_dates_and_times_in_delta_duckdb_and_a_postgres_target(
    pg: PgDatabase, target: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """infinity, BC, far years and 24:00:00, snapshot and streamed: Delta clamps what it cannot hold (one
    warning per column), DuckDB and the PostgreSQL target store PostgreSQL's own values."""
    pg.execute("CREATE TABLE special (id int PRIMARY KEY, d date, ts timestamp, tz timestamptz, t time)")
    pg.execute("INSERT INTO special VALUES " + ", ".join(SPECIAL_ROWS[:3]))  # noqa: S608 - test constants
    files = JobFiles(tmp_path / "job")
    duck = tmp_path / "special.duckdb"
    doc = job_config(files, dsn=pg.dsn, slot=pg.name("slot"), publication=pg.name("pub"), include=["public.special"])
    doc["jobs"][0]["snapshot"] = "initial"
    doc["jobs"][0]["sinks"] = [
        {"type": "delta", "path": str(tmp_path / "lake"), "mode": "mirror"},
        {"type": "duckdb", "path": str(duck)},
        {"type": "postgres", "dsn": target.dsn},
    ]
    write_config(files, doc)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started", timeout=60)
    pg.execute("INSERT INTO special VALUES " + ", ".join(SPECIAL_ROWS[3:]))  # noqa: S608 - test constants
    n = len(SPECIAL_ROWS)
    lake = str(tmp_path / "lake" / "public" / "special")

    def delta_text() -> list[tuple[Any, ...]]:
        try:
            table = DeltaTable(lake)
        except TableNotFoundError:
            return []
        found = QueryBuilder().register("s", table).execute(
            "SELECT id, CAST(d AS VARCHAR), CAST(ts AS VARCHAR), CAST(tz AS VARCHAR), t FROM s ORDER BY id").read_all()
        return [tuple(r.values()) for r in pa.table(found).to_pylist()]

    def target_count() -> int:
        try:
            return int(target.query("SELECT count(*) FROM public.special")[0][0])
        except psycopg.errors.UndefinedTable:
            return 0

    try:
        wait_until(lambda: len(delta_text()) == n and target_count() == n, 30, "every sink to hold the rows")
    except AssertionError:
        raise AssertionError(daemon.tail()) from None
    assert daemon.terminate(10.0) == 0, daemon.tail()

    assert delta_text() == DELTA_TEXT
    clamped = [(e["table"], e["column"]) for e in daemon.events() if e.get("event") == "delta_value_clamped"]
    assert sorted(clamped) == [("public.special", "d"), ("public.special", "ts"), ("public.special", "tz")]
    assert all("values" in e for e in daemon.events() if e.get("event") == "delta_value_clamped")

    texts = "SELECT id, d::text, ts::text, tz::text, t::text FROM public.special ORDER BY id"
    source = pg.query(texts)
    # Timestamps after 294247-01-10 are NULL in every sink loading Arrow (docs/types.md).
    expected = [r if r[0] != 3 else (*r[:2], None, None, r[4]) for r in source]
    assert target.query(texts) == expected
    con = duckdb.connect(str(duck), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        found = con.execute("SELECT id, CAST(d AS VARCHAR), CAST(ts AS VARCHAR), CAST(tz AS VARCHAR), "
                            "CAST(t AS VARCHAR) FROM public.special ORDER BY id").fetchall()
    finally:
        con.close()
    assert found == [
        (1, "infinity", "infinity", "infinity", "24:00:00"),
        (2, "-infinity", "-infinity", "-infinity", "00:00:00"),
        (3, "5874897-12-31", None, None, "23:59:59.999999"),
        (4, "4713-01-01 (BC)", "4713-01-01 (BC) 00:00:00", "4713-01-01 (BC) 00:00:00+00", "12:00:00.5"),
        (5, "262142-12-31", "262142-12-31 23:59:59.999999", "262143-01-01 00:00:00+00", "00:00:00.000001"),
        (6, "2026-01-02", "2026-01-02 03:04:05.123456", "2026-01-02 03:04:05.5+00", None),
    ]


#: Rows of the special-arrays table: (id, date[], timestamp[], timestamptz[], time[]), as SQL literals.
#: Each is inserted twice: before the daemon starts (snapshot) and with id + 10 while it streams.
SPECIAL_ARRAY_ROWS = (
    (1, "'{infinity,-infinity,NULL}'", "'{infinity,-infinity,NULL}'", "'{infinity,-infinity,NULL}'",
     "'{24:00:00,00:00:00,NULL}'"),
    (2, "'{\"4713-01-01 BC\",5874897-12-31,262142-12-31}'",
     "'{\"4713-01-01 00:00:00 BC\",\"262142-12-31 23:59:59.999999\",\"294276-12-31 23:59:59.999999\"}'",
     "'{\"4713-01-01 00:00:00+00 BC\",\"262143-01-01 00:00:00+00\",\"0044-03-15 12:00:00+00 BC\"}'",
     "'{23:59:59.999999,12:00:00.5,00:00:00.000001}'"),
    (3, "'{}'", "NULL", "'{\"2026-01-02 03:04:05.5+00\"}'", "'{}'"),
    (4, "'{{infinity,2026-01-02},{-infinity,NULL}}'", "'{{-infinity},{\"10000-01-01 00:00:00\"}}'",
     "'{{-infinity,infinity}}'", "'{{24:00:00},{01:02:03}}'"),
)
#: Where a sink loading Arrow cannot store the source's own text (docs/types.md): timestamps after
#: 294247-01-10 are NULL elements, and arrays of more than one dimension are flattened row-major.
ARRAY_TEXT_CHANGES = {
    (2, "ts"): '{"4713-01-01 00:00:00 BC","262142-12-31 23:59:59.999999",NULL}',
    (4, "d"): "{infinity,2026-01-02,-infinity,NULL}",
    (4, "ts"): '{-infinity,"10000-01-01 00:00:00"}',
    (4, "tz"): "{-infinity,infinity}",
    (4, "t"): "{24:00:00,01:02:03}",
}
#: What DuckDB prints for the elements (its own text: BC as "(BC)", a UTC session).
DUCKDB_ARRAY_TEXT = {
    1: (["infinity", "-infinity", None], ["infinity", "-infinity", None], ["infinity", "-infinity", None],
        ["24:00:00", "00:00:00", None]),
    2: (["4713-01-01 (BC)", "5874897-12-31", "262142-12-31"],
        ["4713-01-01 (BC) 00:00:00", "262142-12-31 23:59:59.999999", None],
        ["4713-01-01 (BC) 00:00:00+00", "262143-01-01 00:00:00+00", "0044-03-15 (BC) 12:00:00+00"],
        ["23:59:59.999999", "12:00:00.5", "00:00:00.000001"]),
    3: ([], None, ["2026-01-02 03:04:05.5+00"], []),
    4: (["infinity", "2026-01-02", "-infinity", None], ["-infinity", "10000-01-01 00:00:00"],
        ["-infinity", "infinity"], ["24:00:00", "01:02:03"]),
}


def test_special_dates_and_times_inside_arrays_in_duckdb_and_a_postgres_target(
    pg: PgDatabase, target: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """infinity, -infinity, BC, far years and 24:00:00 as array elements, snapshot and streamed: DuckDB and
    the PostgreSQL target store PostgreSQL's own values (the target prints the source's own text)."""
    pg.execute("CREATE TABLE special_arrays (id int PRIMARY KEY, d date[], ts timestamp[], tz timestamptz[], "
               "t time[])")

    def insert(offset: int) -> None:
        values = ", ".join(f"({i + offset}, {', '.join(row)})" for i, *row in SPECIAL_ARRAY_ROWS)
        pg.execute(f"INSERT INTO special_arrays VALUES {values}")  # noqa: S608 - test constants

    insert(0)
    files = JobFiles(tmp_path / "job")
    duck = tmp_path / "arrays.duckdb"
    doc = job_config(files, dsn=pg.dsn, slot=pg.name("slot"), publication=pg.name("pub"),
                     include=["public.special_arrays"])
    doc["jobs"][0]["snapshot"] = "initial"
    doc["jobs"][0]["sinks"] = [{"type": "duckdb", "path": str(duck)}, {"type": "postgres", "dsn": target.dsn}]
    write_config(files, doc)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started", timeout=60)
    insert(10)
    # Updates carrying the same arrays: the target's update path (MERGE on 15+) converts them too.
    pg.execute("UPDATE special_arrays SET d = d, ts = ts, tz = tz, t = t WHERE id > 10")
    n = 2 * len(SPECIAL_ARRAY_ROWS)

    def target_count() -> int:
        try:
            return int(target.query("SELECT count(*) FROM public.special_arrays")[0][0])
        except psycopg.errors.UndefinedTable:
            return 0

    def written() -> bool:
        if any(e.get("event") == "job_failed" for e in daemon.events()):
            raise AssertionError(daemon.tail())
        return target_count() == n

    try:
        wait_until(written, 30, "the PostgreSQL target to hold the rows")
    except AssertionError:
        raise AssertionError(daemon.tail()) from None
    assert daemon.terminate(10.0) == 0, daemon.tail()

    columns = ("d", "ts", "tz", "t")
    texts = "SELECT id, d::text, ts::text, tz::text, t::text FROM public.special_arrays ORDER BY id"
    expected = [
        (r[0], *(ARRAY_TEXT_CHANGES.get((r[0] % 10, c), text) for c, text in zip(columns, r[1:], strict=True)))
        for r in pg.query(texts)
    ]
    assert target.query(texts) == expected
    con = duckdb.connect(str(duck), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        found = con.execute("SELECT id, CAST(d AS VARCHAR[]), CAST(ts AS VARCHAR[]), CAST(tz AS VARCHAR[]), "
                            "CAST(t AS VARCHAR[]) FROM public.special_arrays ORDER BY id").fetchall()
    finally:
        con.close()
    assert found == [(i + offset, *DUCKDB_ARRAY_TEXT[i]) for offset in (0, 10) for i in sorted(DUCKDB_ARRAY_TEXT)]


@pytest.mark.parametrize("use_merge", [None, False], ids=["merge", "delete-insert"])
def test_postgres_target_keeps_and_updates_special_arrays(target: PgDatabase, use_merge: bool | None) -> None:
    """Arrays holding infinities, BC and 24:00:00 are inserted, kept when unchanged and updated exactly, with
    MERGE and with the DELETE + INSERT of servers before 15."""
    tid = TableId("shop", "public", "arr")
    schema = TableSchema(tid, (Column("id", "int4", pgt.INT4, key=True), Column("n", "int4", pgt.INT4),
                               Column("d", "date[]", 1182), Column("tz", "timestamptz[]", 1185),
                               Column("t", "time[]", 1183)))
    batches = [
        ChangeBatch(Position(100), [table(schema, [("c", Transaction(1, 100, TS), 1, 0, None, (
            b"1", b"0", b"{infinity,-infinity,NULL}", b'{"4713-01-01 00:00:00+00 BC",infinity}', b"{24:00:00}"))])]),
        ChangeBatch(Position(200), [table(schema, [("u", Transaction(2, 200, TS), 1, 0, None, (
            b"1", b"1", UNCHANGED, UNCHANGED, UNCHANGED))])]),
        ChangeBatch(Position(300), [table(schema, [("u", Transaction(3, 300, TS), 1, 0, None, (
            b"1", b"2", b"{-infinity,5874897-12-31}", UNCHANGED, b"{NULL,00:00:00,24:00:00}"))])]),
    ]
    write_all(postgres_sink("postgres", target.dsn, job="j", use_merge=use_merge), *batches[:2])
    assert target.query("SELECT n, d::text, tz::text, t::text FROM public.arr") == [
        (1, "{infinity,-infinity,NULL}", '{"4713-01-01 00:00:00+00 BC",infinity}', "{24:00:00}")]
    write_all(postgres_sink("postgres", target.dsn, job="j", use_merge=use_merge), batches[2])
    assert target.query("SELECT n, d::text, tz::text, t::text FROM public.arr") == [
        (2, "{-infinity,5874897-12-31}", '{"4713-01-01 00:00:00+00 BC",infinity}', "{NULL,00:00:00,24:00:00}")]


def test_postgres_target_keeps_24_00_inside_time_arrays(target: PgDatabase) -> None:
    """A time[] holding 24:00:00 arrives as 24:00:00, never as 00:00:00 (Python's time cannot hold it)."""
    schema = TableSchema(TableId("shop", "public", "clock"), (
        Column("id", "int4", pgt.INT4, key=True), Column("t", "time[]", 1183)))
    write_all(postgres_sink("postgres", target.dsn, job="j"), ChangeBatch(Position(100), [table(schema, [
        ("c", Transaction(1, 100, TS), 1, 0, None, (b"1", b"{24:00:00,00:00:00,23:59:59.999999}"))])]))
    assert target.query("SELECT t::text FROM public.clock") == [("{24:00:00,00:00:00,23:59:59.999999}",)]
