"""Every MariaDB misconfiguration the binlog source checks stops ``cdc run`` with one line, exit 2.

These tests change server-wide settings (SET GLOBAL, users, purged binlogs), so they run
on a MariaDB server of their own, never the session's shared one.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc.sandbox import DisposableMariaDB
from integration import mysql
from integration.conftest import MariaDatabase, database_name
from integration.daemon import (
    Daemons,
    JobFiles,
    envelopes,
    mysql_job_config,
    rebuild,
    run_cdc,
    sink_position,
    wait_until,
    write_config,
)
from integration.test_errors import assert_user_error


@pytest.fixture(scope="module")
def own_server() -> Iterator[DisposableMariaDB]:
    """A MariaDB server for this module only (its global settings get changed)."""
    with DisposableMariaDB() as server:
        yield server


@pytest.fixture
def db(own_server: DisposableMariaDB, request: pytest.FixtureRequest) -> Iterator[MariaDatabase]:
    name = database_name(request.node.name)
    own_server.create_database(name)
    own_server.execute("CREATE TABLE t (id int PRIMARY KEY, v int)", database=name)
    try:
        yield MariaDatabase(own_server, name, own_server.host, own_server.port, own_server.user, own_server.password)
    finally:
        own_server.drop_database(name)


def run_job(db: MariaDatabase, tmp_path: Path, **source: Any) -> tuple[JobFiles, subprocess.CompletedProcess[str]]:
    """Write a one-job config (mysql source on `db`, these source settings) and run ``cdc run`` on it."""
    files = JobFiles(tmp_path / "job")
    options = {"host": db.host, "port": db.port, "user": db.user, "password": db.password, **source}
    write_config(files, mysql_job_config(files, database=db.dbname, **options))
    result = run_cdc("run", files.config, timeout=60)
    return files, result


@pytest.mark.parametrize(
    ("setting", "value", "needle"),
    [
        ("binlog_format", "'STATEMENT'", "binlog_format is STATEMENT, not ROW"),
        ("binlog_format", "'MIXED'", "binlog_format is MIXED, not ROW"),
        ("binlog_row_image", "'MINIMAL'", "binlog_row_image is MINIMAL, not FULL"),
        ("binlog_row_metadata", "'MINIMAL'", "binlog_row_metadata is MINIMAL, not FULL"),
        ("log_bin_compress", "ON", "log_bin_compress is ON"),
    ],
)
def test_server_setting_refused(
    db: MariaDatabase, tmp_path: Path, setting: str, value: str, needle: str
) -> None:
    """A server setting the binlog source cannot work with: one line naming it, exit 2, no checkpoint."""
    default = db.server.query(f"SELECT @@GLOBAL.{setting}")[0][0]
    db.server.execute(f"SET GLOBAL {setting} = {value}")
    try:
        files, result = run_job(db, tmp_path)
    finally:
        db.server.execute(f"SET GLOBAL {setting} = {default if default.isdigit() else repr(default)}")
    assert_user_error(result, files, needle, "SET GLOBAL")


def test_own_server_id_refused(db: MariaDatabase, tmp_path: Path) -> None:
    """A job whose server_id is the server's own: one line, exit 2."""
    files, result = run_job(db, tmp_path, server_id=1)
    assert_user_error(result, files, "server_id 1 is the server's own")


def test_missing_replication_privilege_refused(db: MariaDatabase, tmp_path: Path) -> None:
    """A user without REPLICATION SLAVE and BINLOG MONITOR: one line naming both, exit 2."""
    user = db.dbname[-20:]
    db.server.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'; GRANT SELECT ON *.* TO '{user}'@'%'")
    try:
        files, result = run_job(db, tmp_path, user=user, password="pw")
    finally:
        db.server.execute(f"DROP USER '{user}'@'%'")
    assert_user_error(result, files, "lacks REPLICATION SLAVE, BINLOG MONITOR")


def stream_then_purge(db: MariaDatabase, tmp_path: Path, daemons: Daemons, **source: Any) -> JobFiles:
    """Stream a few rows into a file sink, stop the daemon, change rows, purge the binlogs the sinks need."""
    files = JobFiles(tmp_path / "job")
    write_config(files, mysql_job_config(files, host=db.host, port=db.port, user=db.user, password=db.password,
                                         database=db.dbname, **source))
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    db.execute("INSERT INTO t VALUES (1, 1), (2, 2), (3, 3)")
    wait_until(lambda: sink_position(files.sink) is not None, 30, "a durable batch")
    assert daemon.terminate(10.0) == 0
    # While the job is down: changes the purge takes away, a delete among them.
    db.execute("INSERT INTO t VALUES (4, 4), (5, 5)")
    db.execute("UPDATE t SET v = 20 WHERE id = 2")
    db.execute("DELETE FROM t WHERE id IN (1, 4)")
    db.server.execute("FLUSH BINARY LOGS; FLUSH BINARY LOGS")
    last = db.server.query("SHOW MASTER STATUS")[0][0]

    def purged() -> bool:  # MariaDB keeps a file until its binlog checkpoint is written
        db.server.execute(f"PURGE BINARY LOGS TO '{last}'")
        return db.server.query("SHOW BINARY LOGS")[0][0] == last

    wait_until(purged, 20, "the old binlogs to be purged", interval=0.5)
    return files


def assert_refused(files: JobFiles, *needles: str) -> None:
    """`cdc run` stops with exit 2 and one ``cdc: error:`` line holding every needle, no
    traceback, and the sinks' position where it was."""
    held = sink_position(files.sink)
    result = run_cdc("run", files.config, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("cdc: error:")]
    assert len(lines) == 1 and all(n in lines[0] for n in needles), result.stderr
    assert "Traceback" not in result.stderr
    assert sink_position(files.sink) == held


def test_purged_binlog_refused(db: MariaDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """The binlog the sinks need was purged while the job was down: one line, exit 2, checkpoint kept."""
    assert_refused(stream_then_purge(db, tmp_path, daemons), "purged", "on_binlog_gone: resnapshot")


def test_purged_binlog_resnapshots(db: MariaDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """``on_binlog_gone: resnapshot``: a warning, a fresh snapshot (truncate first), then streaming on.

    The rebuilt sink equals the source row by row: the rows deleted while the job was down
    are gone, and a change after the re-snapshot streams in.
    """
    files = stream_then_purge(db, tmp_path, daemons, on_binlog_gone="resnapshot")
    assert_resnapshots(db, files, daemons, tmp_path, [(2,), (3,), (5,), (6,)])


def assert_resnapshots(db: MariaDatabase, files: JobFiles, daemons: Daemons, tmp_path: Path,
                       ids: list[tuple[int]]) -> dict[str, Any]:
    """Restart the job: a `binlog_gone_resnapshotting` warning (returned), a truncate and the
    table's rows as ``r``, then a change streamed after it; the rebuilt sink equals the source
    (whose ids are `ids`) row by row."""
    daemon = daemons.new(files.config, tmp_path / "cdc2.log").start()
    warning = daemon.wait_for("binlog_gone_resnapshotting")
    daemon.wait_for("replication_started", timeout=60)
    db.execute("INSERT INTO t VALUES (6, 6)")
    expected = mysql.source_rows(db, "t")
    assert sorted(expected) == ids
    table = f"{db.dbname}.t"
    wait_until(lambda: rebuild(files.sink).get(table) == expected, 30, "the sink to match the source")
    assert daemon.terminate(10.0) == 0
    ops = [e["op"] for e in envelopes(files.sink)]
    assert ops == ["c", "c", "c", "t", "r", "r", "r", "c"], ops
    assert "Traceback" not in daemon.stderr(all_runs=True)
    return warning


def test_binlog_off_refused(tmp_path: Path) -> None:
    """A server without a binary log (log_bin=OFF): one line saying to start it with --log-bin, exit 2."""
    with DisposableMariaDB(settings={"skip-log-bin": "1"}) as server:
        name = database_name("binlog_off")
        server.create_database(name)
        server.execute("CREATE TABLE t (id int PRIMARY KEY)", database=name)
        db = MariaDatabase(server, name, server.host, server.port, server.user, server.password)
        files, result = run_job(db, tmp_path)
    assert_user_error(result, files, "log_bin=OFF", "--log-bin")


def test_flush_snapshot_without_reload_refused(db: MariaDatabase, tmp_path: Path) -> None:
    """snapshot_lock: flush needs RELOAD (FLUSH TABLES WITH READ LOCK): one line naming it, exit 2."""
    user = "r" + db.dbname[-19:]
    db.server.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'; "
                      f"GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT ON *.* TO '{user}'@'%'")
    try:
        files, result = run_job(db, tmp_path, user=user, password="pw", snapshot="initial", snapshot_lock="flush")
    finally:
        db.server.execute(f"DROP USER '{user}'@'%'")
    assert_user_error(result, files, "lacks RELOAD")


def stream_then_reset(db: MariaDatabase, tmp_path: Path, daemons: Daemons, rotate: bool = True,
                      **source: Any) -> JobFiles:
    """Stream into a file sink, stop the daemon, then ``RESET MASTER`` and (`rotate`) rotate past
    the sinks' binlog file name again: their file is there, the GTID state they hold is not (and
    positions after it lie past theirs, so a re-snapshot is not skipped as already held)."""
    files = JobFiles(tmp_path / "job")
    write_config(files, mysql_job_config(files, host=db.host, port=db.port, user=db.user, password=db.password,
                                         database=db.dbname, **source))
    record = files.state_dir / f"{files.job}.mysql-gtid.json"
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    db.execute("INSERT INTO t VALUES (1, 1), (2, 2), (3, 3)")
    wait_until(lambda: sink_position(files.sink) is not None and record.exists(), 30, "a durable batch")
    assert daemon.terminate(10.0) == 0
    needed = json.loads(record.read_text())["position"].split(":")[0]
    db.server.execute("RESET MASTER")
    while rotate and int(db.server.query("SHOW MASTER STATUS")[0][0].rpartition(".")[2]) <= int(needed):
        db.server.execute("FLUSH BINARY LOGS")
    db.execute("DELETE FROM t WHERE id = 1")
    db.execute("INSERT INTO t VALUES (4, 4)")
    return files


def test_gtid_state_gone_refused(db: MariaDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """The server cannot send from the GTID state the sinks hold (RESET MASTER): one line, exit 2."""
    assert_refused(stream_then_reset(db, tmp_path, daemons), "cannot send the binlog from the GTID state",
                   "not in the master's binlog", "on_binlog_gone: resnapshot")


@pytest.mark.parametrize("resume_by", ["gtid", "position"])
def test_rewound_binlog_refused(db: MariaDatabase, tmp_path: Path, daemons: Daemons, resume_by: str) -> None:
    """RESET MASTER without rotations: the sinks' position lies past the server's end of binlog,
    where even a re-snapshot would be skipped as held; one line, exit 2, whatever on_binlog_gone says."""
    files = stream_then_reset(db, tmp_path, daemons, rotate=False, on_binlog_gone="resnapshot", resume_by=resume_by)
    assert_refused(files, "past the server's end of binlog", "RESET MASTER?",
                   "delete the sinks' data and the job's state")


def test_gtid_state_gone_resnapshots(db: MariaDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """``on_binlog_gone: resnapshot`` after a GTID state the server cannot send: a fresh snapshot, then streaming."""
    files = stream_then_reset(db, tmp_path, daemons, on_binlog_gone="resnapshot")
    warning = assert_resnapshots(db, files, daemons, tmp_path, [(2,), (3,), (4,), (6,)])
    assert "GTID state" in warning["needed"]


def test_refused_login_of_a_job_that_streamed_before_is_one_line(
        db: MariaDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """A job with a checkpoint (an unreachable server is retried for it) whose login MariaDB refuses
    (Access denied, errno 1045: a wrong password) stops with exit 2 and one line saying what to fix, without
    a retry loop, and the sinks' position stays where it was."""
    files = JobFiles(tmp_path / "job")
    doc = mysql_job_config(files, host=db.host, port=db.port, user=db.user, password=db.password,
                           database=db.dbname)
    write_config(files, doc)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    db.execute("INSERT INTO t VALUES (1, 1)")
    wait_until(lambda: sink_position(files.sink) is not None, 30, "a durable batch")
    assert daemon.terminate(10.0) == 0
    held = sink_position(files.sink)
    assert files.checkpoints()

    doc["jobs"][0]["source"]["password"] = "not-the-password"
    write_config(files, doc)
    result = run_cdc("run", files.config, timeout=30)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("cdc: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "1045" in lines[0] and "Access denied" in lines[0] and "fix the user or password" in lines[0], lines[0]
    assert "job_retrying" not in result.stderr and "not-the-password" not in result.stderr
    assert sink_position(files.sink) == held
