"""The real daemon streams MariaDB's row binlog into the file sink across kill -9 and restarts.

Every test runs ``cdc run`` as a subprocess (integration/daemon.py), writes to the source
while it streams, and compares the table rebuilt from the sink's JSONL files with a
``SELECT`` of the source, row by row, in the documented JSON rendering (docs/mysql.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cdc.events import Position
from integration import mysql
from integration.conftest import MariaDatabase
from integration.daemon import (
    MYSQL_ITEMS_DDL,
    ChangeWriter,
    Daemon,
    Daemons,
    JobFiles,
    Key,
    Row,
    assert_clean_log,
    assert_no_duplicate_ids,
    mysql_job_config,
    sink_position,
    sink_rows,
    wait_sink_equal,
    wait_until,
    write_config,
)

CATCH_UP_S = 30.0


def items_table(db: MariaDatabase) -> str:
    return f"{db.dbname}.items"


def wait_caught_up(db: MariaDatabase, files: JobFiles, daemon: Daemon, table: str = "items") -> dict[Key, Row]:
    """Wait until the sink's durable state equals the source table; return the source rows."""
    expected = mysql.source_rows(db, table, utc=("updated",))
    return wait_sink_equal(files, daemon, f"{db.dbname}.{table}", expected, CATCH_UP_S)


@pytest.fixture
def items(mariadb: MariaDatabase) -> MariaDatabase:
    mysql.execute(mariadb, MYSQL_ITEMS_DDL)
    return mariadb


@pytest.mark.parametrize("resume_by", ["gtid", "position"])
def test_kill_9_twice_mid_stream_loses_and_doubles_nothing(
    items: MariaDatabase, tmp_path: Path, daemons: Daemons, resume_by: str
) -> None:
    """Two SIGKILLs mid-stream, resuming by GTID or by position: the sink still equals the
    source row by row, no event id twice."""
    db = items
    files = mysql.make_job(db, tmp_path, resume_by=resume_by)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    writer = ChangeWriter(None, seed=20240601, mysql=db)
    durable: dict[str, int] | None = None
    try:
        for tx in range(1, 51):
            if tx in (15, 32):
                wait_until(lambda last=durable: sink_position(files.sink) not in (None, last), CATCH_UP_S,
                           "the daemon to make a batch durable")
            writer.transaction()
            time.sleep(0.01)
            if tx in (15, 32):
                assert daemon.kill() == -9
                durable = sink_position(files.sink)
                assert durable is not None
            if tx in (20, 32):
                daemon.start()
    finally:
        writer.close()
    expected = wait_caught_up(db, files, daemon)
    assert len(expected) > 20
    assert_no_duplicate_ids(files)
    assert daemon.terminate(10.0) == 0
    assert_clean_log(daemon)
    assert sink_rows(files, items_table(db), durable_only=False) == expected
    ids = assert_no_duplicate_ids(files)
    assert len(ids) >= writer.transactions * 2
    assert files.checkpoints(), "the job never saved a checkpoint"
    starts = [e for e in daemon.events(all_runs=True) if e.get("event") == "replication_started"]
    assert [e["resume_by"] for e in starts] == ["position", resume_by, resume_by], starts


def test_a_killed_dump_connection_resumes_from_the_committed_position(
    items: MariaDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """KILL of the daemon's binlog dump mid-stream: the job retries from its checkpoint, no loss, no repeats."""
    db = items
    user = f"cdc_{db.dbname[-6:]}"
    db.server.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'; "
                      f"GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT ON *.* TO '{user}'@'%'")
    try:
        files = JobFiles(tmp_path / "job")
        write_config(files, mysql_job_config(files, host=db.host, port=db.port, user=user, password="pw",
                                             database=db.dbname))
        daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
        daemon.wait_for("replication_started")
        writer = ChangeWriter(None, seed=99, mysql=db)
        try:
            for n in range(40):
                writer.transaction()
                if n in (10, 25):
                    dumps: list[tuple[str, ...]] = []

                    def dumping(dumps: list[tuple[str, ...]] = dumps) -> bool:
                        dumps[:] = [r for r in db.server.query("SHOW PROCESSLIST")
                                    if r[1] == user and r[4] == "Binlog Dump"]
                        return bool(dumps)

                    wait_until(dumping, CATCH_UP_S, "the job's binlog dump")
                    db.server.execute(f"KILL {max(int(r[0]) for r in dumps)}")
        finally:
            writer.close()
        expected = wait_caught_up(db, files, daemon)
        assert daemon.terminate(10.0) == 0
    finally:
        db.server.execute(f"DROP USER '{user}'@'%'")
    assert_no_duplicate_ids(files)
    assert sink_rows(files, items_table(db), durable_only=False) == expected
    retries = [e for e in daemon.events(all_runs=True) if e.get("event") == "job_retrying"]
    # a KILL can also land while the dump starts ("cannot start the binlog dump"): a connection error as well
    assert len(retries) >= 2 and all(e["error_class"] == "SourceConnectionError" for e in retries)
    assert any("binlog connection lost" in e["error"] for e in retries)


def test_gtid_catch_up_over_a_backlog_of_100k_transactions_repeats_nothing(
    mariadb: MariaDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """SIGKILL, 100k transactions while the daemon is down, restart by GTID: each arrives once, no reconnect."""
    db = mariadb
    mysql.execute(db, "CREATE TABLE backlog (id int PRIMARY KEY, v int)")
    files = mysql.make_job(db, tmp_path)
    record = files.state_dir / f"{files.job}.mysql-gtid.json"
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    mysql.execute(db, "INSERT INTO backlog VALUES (0, 0)")
    wait_until(lambda: sink_position(files.sink) is not None and record.exists(), CATCH_UP_S,
               "a durable batch and its GTID record")
    assert daemon.kill() == -9
    mysql.execute(
        db,
        "CREATE PROCEDURE fill() BEGIN DECLARE i INT DEFAULT 1; "
        "WHILE i <= 100000 DO INSERT INTO backlog VALUES (i, i); SET i = i + 1; END WHILE; END"
    )
    mysql.execute(db, "CALL fill()")  # autocommit: one transaction per row
    daemon.start()
    assert daemon.wait_for("replication_started")["resume_by"] == "gtid"
    name = f"{db.dbname}.backlog"
    wait_until(lambda: len(sink_rows(files, name)) == 100_001, 120, "the backlog", interval=1.0)
    assert daemon.terminate(10.0) == 0
    assert_clean_log(daemon)
    ids = assert_no_duplicate_ids(files)
    assert len(ids) == 100_001
    assert sink_rows(files, name) == mysql.source_rows(db, "backlog")
    names = [e.get("event") for e in daemon.events(all_runs=True)]
    assert "job_retrying" not in names and names.count("replication_started") == 2, names


def test_the_gtid_state_the_sinks_hold_is_recorded(
    items: MariaDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """``<job>.mysql-gtid.json`` holds the server's GTID state once the sink holds everything."""
    db = items
    files = mysql.make_job(db, tmp_path)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    with mysql.connect(db) as conn, conn.cursor() as cur:
        for n in range(1, 6):  # five transactions
            cur.execute("INSERT INTO items (id, name) VALUES (%s, %s)", (n, f"gtid {n}"))
    last = db.server.query("SELECT @@gtid_binlog_pos")[0][0]
    wait_caught_up(db, files, daemon)
    record = files.state_dir / f"{files.job}.mysql-gtid.json"
    wait_until(lambda: record.exists() and json.loads(record.read_text())["gtids"] == last, 10,
               f"the recorded GTID state to reach {last}")
    assert daemon.terminate(10.0) == 0
    doc = json.loads(record.read_text())
    assert doc["gtids"] == last and doc["server"] == "mariadb"
    assert doc["commit"] <= Position.from_json(sink_position(files.sink)).commit
    assert_clean_log(daemon)
