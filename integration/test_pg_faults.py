"""Faults around the PostgreSQL source: missing grants, a snapshot worker failing, lost connections.

Each test runs the real ``cdc run`` against a real server (integration/conftest.py) and checks
the job either stops with one actionable line (a user mistake) or retries and catches up
(a lost connection), never hangs, and never blocks the server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from psycopg import sql

from connectors.postgres.stream import ReplicationStream
from integration.brokers import checkpoint_of, source_rows
from integration.conftest import PgDatabase, unique_name
from integration.daemon import (
    Daemon,
    Daemons,
    JobFiles,
    job_config,
    rebuild,
    run_cdc,
    wait_until,
    write_config,
)

CATCH_UP_S = 60.0


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cdc: error:")]


@pytest.fixture
def cdc_role(pg: PgDatabase) -> Iterator[str]:
    """A LOGIN REPLICATION role without superuser and without any table grant; dropped at teardown."""
    role = unique_name("cdcrole")
    pg.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with pg.server.connect() as conn:
            for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity WHERE usename = %s", (role,)).fetchall():
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        pg.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with pg.server.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def snapshot_as(pg: PgDatabase, role: str, files: JobFiles, slot: str) -> str:
    """A snapshot job over public.* run as `role` (the publication made beforehand by a superuser)."""
    publication = pg.name("pub")
    pg.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE open_t, secret_t").format(sql.Identifier(publication)))
    doc = job_config(files, dsn=pg.server.dsn(pg.dbname, user=role), slot=slot, publication=publication)
    doc["jobs"][0]["snapshot"] = "initial"
    write_config(files, doc)
    return publication


def test_snapshot_without_select_grant_stops_before_the_slot(pg: PgDatabase, cdc_role: str, tmp_path: Path) -> None:
    """A role lacking SELECT on a captured table stops at once with one line naming the table and the
    GRANT; no slot is left holding WAL and no checkpoint is written."""
    pg.execute("CREATE TABLE open_t (id int PRIMARY KEY); CREATE TABLE secret_t (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO open_t SELECT generate_series(1, 100); INSERT INTO secret_t VALUES (1, 'x')")
    pg.execute(sql.SQL("GRANT SELECT ON open_t TO {}").format(sql.Identifier(cdc_role)))
    files = JobFiles(tmp_path)
    slot = pg.name("slot")
    snapshot_as(pg, cdc_role, files, slot)
    result = run_cdc("run", files.config, timeout=45)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert "public.secret_t" in lines[0] and f"GRANT SELECT ON \"public\".\"secret_t\" TO \"{cdc_role}\"" in lines[0]
    assert pg.query("SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == []
    assert files.checkpoints() == []


def test_snapshot_worker_error_stops_the_job(pg: PgDatabase, cdc_role: str, tmp_path: Path) -> None:
    """An error in a snapshot worker's COPY (here a row-level security policy that raises) stops the
    job with one line naming the table, instead of hanging after snapshot_started."""
    pg.execute("CREATE TABLE open_t (id int PRIMARY KEY); CREATE TABLE secret_t (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO open_t SELECT generate_series(1, 100); INSERT INTO secret_t VALUES (1, 'x')")
    pg.execute("CREATE FUNCTION refuse() RETURNS boolean LANGUAGE plpgsql AS "
               "$$ BEGIN RAISE EXCEPTION 'rows of secret_t are off limits'; END $$")
    pg.execute("ALTER TABLE secret_t ENABLE ROW LEVEL SECURITY; CREATE POLICY p ON secret_t USING (refuse())")
    pg.execute(sql.SQL("GRANT SELECT ON open_t, secret_t TO {}").format(sql.Identifier(cdc_role)))
    files = JobFiles(tmp_path)
    snapshot_as(pg, cdc_role, files, pg.name("slot"))
    result = run_cdc("run", files.config, timeout=45)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert "snapshot of public.secret_t" in lines[0] and "off limits" in lines[0], lines[0]
    assert files.checkpoints() == []


# -- lost connections: the job retries and catches up ---------------------------------------------


def faulty_job(pg: PgDatabase, root: Path, sinks: list[dict[str, Any]], **pipeline: Any) -> tuple[JobFiles, str]:
    """A streaming job over public.* into `sinks` (and the file sink), retrying fast."""
    files = JobFiles(root)
    slot = pg.name("slot")
    doc = job_config(files, dsn=pg.dsn, slot=slot, publication=pg.name("pub"))
    doc["jobs"][0]["sinks"] = [*doc["jobs"][0]["sinks"], *sinks]
    doc["jobs"][0]["pipeline"].update(pipeline)
    write_config(files, doc)
    return files, slot


def count(daemon: Daemon, event: str) -> int:
    return sum(1 for e in daemon.events() if e.get("event") == event)


def terminate_walsender(pg: PgDatabase, slot: str) -> None:
    """Terminate the walsender of `slot` once it is active (what an operator or a failover does)."""
    def killed() -> bool:
        rows = pg.query("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                        "WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,))
        return bool(rows) and bool(rows[0][0])

    wait_until(killed, 30, f"the walsender of {slot}", interval=0.02)


def wal_lsn(pg: PgDatabase) -> int:
    return int(pg.query("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")[0][0])


def wait_checkpoint(files: JobFiles, daemon: Daemon, sink: str, lsn: int) -> None:
    """Wait until the job's checkpoint for `sink` holds WAL position `lsn` (fail with the log tail)."""
    try:
        wait_until(lambda: (checkpoint_of(files, sink) or {}).get("commit", 0) >= lsn, CATCH_UP_S,
                   f"{sink} to hold {lsn}", interval=0.2)
    except AssertionError:
        raise AssertionError(daemon.tail()) from None


def assert_retried(daemon: Daemon, error_class: str) -> None:
    """The job retried after `error_class` and never failed or crashed."""
    log = daemon.stderr(all_runs=True)
    assert "Traceback" not in log and "internal error" not in log and "job_failed" not in log, daemon.tail()
    retries = [e for e in daemon.events() if e.get("event") == "job_retrying"]
    assert any(e.get("error_class") == error_class for e in retries), daemon.tail()


def test_walsender_lost_during_a_duckdb_write_retries(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """The replication connection drops while DuckDB applies a batch in its worker thread: the job
    lets the write end, retries with the connection error (not an internal error), and catches up."""
    pg.execute("CREATE TABLE big (id int PRIMARY KEY, name text, v int)")
    duck = tmp_path / "w.duckdb"
    files, slot = faulty_job(pg, tmp_path / "job", [{"type": "duckdb", "name": "duck", "path": str(duck)}],
                             max_batch_events=1_000_000, max_batch_bytes="512MiB")
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    pg.execute("INSERT INTO big SELECT i, repeat('x', 100) || i, i FROM generate_series(1, 300000) i")
    daemon.wait_for("warehouse_table_created", timeout=CATCH_UP_S)  # the first write of big has begun
    terminate_walsender(pg, slot)
    wait_until(lambda: count(daemon, "replication_started") >= 2, CATCH_UP_S, "the job to reconnect")
    pg.execute("UPDATE big SET v = -v WHERE id <= 1000")
    wait_checkpoint(files, daemon, "duck", wal_lsn(pg))
    assert daemon.terminate(20.0) == 0
    assert_retried(daemon, "SourceConnectionError")
    con = duckdb.connect(str(duck), read_only=True)
    try:
        got = con.execute("SELECT count(*), sum(v), sum(length(name)) FROM public.big").fetchall()
    finally:
        con.close()
    assert got == pg.query("SELECT count(*), sum(v), sum(length(name)) FROM big")


def test_walsender_terminated_mid_stream_retries(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """The walsender terminated three times while changes stream (frames still buffered when the
    stream ends): every time the job retries with a connection error; the sink ends equal."""
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    files, slot = faulty_job(pg, tmp_path / "job", [])
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                conn.execute("INSERT INTO t SELECT g, g FROM generate_series(%s::int, %s::int) g",
                             (n * 200 + 1, n * 200 + 200))
                n += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        for round_ in range(1, 4):
            time.sleep(0.5)  # let changes flow (pacing only; nothing asserts on time)
            terminate_walsender(pg, slot)
            wait_until(lambda r=round_: count(daemon, "replication_started") > r, CATCH_UP_S,
                       "the job to reconnect", interval=0.05)
    finally:
        stop.set()
        writer.join(30)
    wait_until(lambda: rebuild(files.sink).get("public.t") == source_rows(pg, "public.t"), CATCH_UP_S,
               "the sink to equal the source", interval=0.3)
    assert daemon.terminate(20.0) == 0
    assert_retried(daemon, "SourceConnectionError")



def test_fast_restart_with_a_failing_sink_on_the_same_server(
    pg: PgDatabase, target: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """``pg_ctl restart -m fast`` of the source, while the job's warehouse sink on that same server
    fails its write: the server's shutdown is not held up by cdc, and the job retries and catches up."""
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    files, _ = faulty_job(pg, tmp_path / "job", [{"type": "postgres", "name": "wh", "dsn": target.dsn}])
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    pg.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g")
    wait_checkpoint(files, daemon, "wh", wal_lsn(pg))
    for round_ in range(1, 4):
        started = time.monotonic()
        pg.server.restart("fast")  # pg_ctl -w -t 60: returns once the server is up again
        took = time.monotonic() - started
        assert took < 30, f"pg_ctl restart -m fast took {took:.0f}s\n{daemon.tail()}"
        pg.execute("UPDATE t SET v = -v WHERE id <= %s", (round_ * 100,))
        wait_checkpoint(files, daemon, "wh", wal_lsn(pg))
    assert target.query("SELECT count(*), sum(v) FROM public.t") == pg.query("SELECT count(*), sum(v) FROM t")
    assert daemon.terminate(20.0) == 0
    log = daemon.stderr(all_runs=True)
    assert "Traceback" not in log and "internal error" not in log and "job_failed" not in log, daemon.tail()
    assert count(daemon, "job_retrying") >= 1


def test_a_cancelled_read_ends_as_frames_arrive(pg: PgDatabase) -> None:
    """A cancel landing in the same loop iteration as the replication socket turns readable ends the
    read (Python 3.11's wait_for returned the frames instead, and the cancelled reader went on
    answering a stopping walsender, holding up the server's shutdown)."""
    pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
    slot, publication = pg.name("slot"), pg.name("pub")
    pg.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE t").format(sql.Identifier(publication)))
    pg.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))

    async def main() -> bool:
        stream = await ReplicationStream.open(pg.dsn, slot, publication, 0, "test", connect_timeout=5)
        try:
            reads = 0

            async def reader() -> None:
                nonlocal reads
                while True:
                    await stream.read(5.0)
                    reads += 1

            task = asyncio.create_task(reader())
            loop = asyncio.get_running_loop()
            fd = stream._fd  # the test cancels from the stream's own readiness callback

            def readable() -> None:
                stream._readable.set()
                task.cancel()

            loop.remove_reader(fd)
            loop.add_reader(fd, readable)
            await asyncio.sleep(0.2)  # the reader waits on the socket now
            await asyncio.to_thread(pg.execute, "INSERT INTO t VALUES (1)")
            done, _ = await asyncio.wait({task}, timeout=5)
            if not done:
                task.cancel()  # a second cancel: 3.11's wait_for lets this one through
                await asyncio.wait({task}, timeout=5)
            return bool(done) and task.cancelled()
        finally:
            await stream.close()

    assert asyncio.run(main()), "the cancelled reader kept reading"


def test_source_restart_during_an_incremental_snapshot_retries_cleanly(
    pg: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """``pg_ctl restart -m fast`` while a requested (incremental) snapshot runs beside the stream: the stream's
    connection error ends the run, the snapshot's own error is retrieved with it (no asyncio "Task exception was
    never retrieved"), and the job retries, finishes the snapshot and catches up (found by the differential
    harness, seeds 101, 102 and 104)."""
    pg.execute("CREATE TABLE big (id int PRIMARY KEY, name text)")
    files = JobFiles(tmp_path / "job")
    doc = job_config(files, dsn=pg.dsn, slot=pg.name("slot"), publication=pg.name("pub"))
    doc["jobs"][0]["snapshot_chunk_rows"] = 2_000
    write_config(files, doc)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    pg.execute("INSERT INTO big SELECT i, 'row ' || i FROM generate_series(1, 100000) i")
    result = run_cdc("snapshot", files.config, "--job", files.job, "--table", "public.big")
    assert result.returncode == 0, result.stderr
    daemon.wait_for("snapshot_requested", timeout=CATCH_UP_S)
    pg.server.restart("fast")
    pg.execute("UPDATE big SET name = 'changed' WHERE id % 1000 = 0")
    daemon.wait_for("snapshot_table_done", timeout=CATCH_UP_S)
    wait_until(lambda: rebuild(files.sink).get("public.big") == source_rows(pg, "public.big"), CATCH_UP_S,
               "the sink to equal the source", interval=0.5)
    assert daemon.terminate(20.0) == 0
    log = daemon.stderr(all_runs=True)
    assert "never retrieved" not in log, daemon.tail()
    assert_retried(daemon, "SourceConnectionError")
