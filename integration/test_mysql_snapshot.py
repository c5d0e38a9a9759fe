"""Snapshot then stream on MariaDB: the consistent snapshot (no lock) under concurrent writes,
killed mid-snapshot and mid-stream, and schema changes mid-stream."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from integration import mysql
from integration.conftest import MariaDatabase
from integration.daemon import (
    MYSQL_ITEMS_DDL,
    ChangeWriter,
    Daemons,
    JobFiles,
    assert_clean_log,
    assert_no_duplicate_ids,
    envelopes,
    mysql_job_config,
    sink_position,
    sink_rows,
    wait_until,
    write_config,
)
from integration.test_mysql_stream import wait_caught_up


def seed(db: MariaDatabase, rows: int) -> None:
    mysql.execute(
        db,
        MYSQL_ITEMS_DDL,
        "CREATE PROCEDURE seed(n INT) BEGIN DECLARE i INT DEFAULT 1; START TRANSACTION; "
        "WHILE i <= n DO INSERT INTO items VALUES (i, CONCAT('seed ', i), i, i / 100, NULL); SET i = i + 1; "
        "END WHILE; COMMIT; END",
        f"CALL seed({rows})",
    )


@pytest.mark.parametrize(("lock", "workers"), [("none", 1), ("flush", 3)])
def test_snapshot_under_four_concurrent_writers_ends_equal(
    mariadb: MariaDatabase, tmp_path: Path, daemons: Daemons, lock: str, workers: int
) -> None:
    """4 writer threads run through the snapshot and the stream (and a kill -9 mid-way): the sink equals the source.

    Lock-free with one connection (MariaDB's default), and FLUSH TABLES WITH READ LOCK with 3
    workers reading primary-key ranges in parallel (MySQL's method, ``snapshot_lock: flush``).
    """
    db = mariadb
    seed(db, 20_000)
    files = JobFiles(tmp_path / "job")
    document = mysql_job_config(files, host=db.host, port=db.port, user=db.user, password=db.password,
                                database=db.dbname, snapshot="initial", snapshot_lock=lock)
    document["jobs"][0].update(snapshot_workers=workers, snapshot_chunk_rows=3000)
    write_config(files, document)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(n: int) -> None:
        writer = ChangeWriter(None, seed=n, mysql=db)
        writer.next_id = 1_000_000 * (n + 1)  # each writer inserts its own keys
        writer.live = list(range(n * 5000 + 1, n * 5000 + 5001))  # and changes its own seeded rows
        try:
            while not stop.is_set():
                writer.transaction()
                time.sleep(0.002)
        except BaseException as err:
            errors.append(err)
        finally:
            writer.close()

    writers = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(4)]
    for w in writers:
        w.start()
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    try:
        daemon.wait_for("snapshot_started")
        daemon.wait_for("replication_started", timeout=60)
        wait_until(lambda: sink_position(files.sink) is not None, 30, "a durable batch")
        assert daemon.kill() == -9
        daemon.start()
        daemon.wait_for("replication_started", timeout=60)
        time.sleep(1.0)
    finally:
        stop.set()
        for w in writers:
            w.join(10)
    assert not errors, errors
    expected = wait_caught_up(db, files, daemon)
    assert len(expected) >= 20_000
    assert daemon.terminate(10.0) == 0
    assert_clean_log(daemon)
    assert_no_duplicate_ids(files)
    reads = [e for e in envelopes(files.sink) if e["op"] == "r"]
    assert len(reads) >= 20_000 and all(e["source"]["snapshot"] == "true" for e in reads)
    reading = next(e for e in daemon.events(all_runs=True) if e.get("event") == "snapshot_reading")
    assert reading["workers"] == workers and reading["chunks"] >= (7 if workers > 1 else 1)


def test_alter_table_mid_stream_changes_the_schema_of_later_events(
    mariadb: MariaDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """ADD COLUMN and a widening MODIFY mid-stream: later events carry the new columns and values."""
    db = mariadb
    mysql.execute(db, "CREATE TABLE evolve (id int PRIMARY KEY, n smallint, s varchar(5))")
    files = mysql.make_job(db, tmp_path)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    mysql.execute(
        db,
        "INSERT INTO evolve VALUES (1, 1, 'a')",
        "ALTER TABLE evolve ADD COLUMN extra decimal(10,2) DEFAULT 1.50",
        "INSERT INTO evolve VALUES (2, 2, 'b', 2.25)",
        "ALTER TABLE evolve MODIFY n bigint, MODIFY s varchar(50)",
        "INSERT INTO evolve VALUES (3, 9000000000, 'a longer text than before', NULL)",
        "UPDATE evolve SET n = n + 1 WHERE id = 1",
    )
    events = lambda: [e for e in envelopes(files.sink) if e["source"]["table"] == "evolve"]  # noqa: E731
    wait_until(lambda: len(events()) == 4, 30, "four evolve events")
    assert daemon.terminate(10.0) == 0
    assert [e["after"] for e in events()] == [
        {"id": 1, "n": 1, "s": "a"},
        {"id": 2, "n": 2, "s": "b", "extra": "2.25"},
        {"id": 3, "n": 9000000000, "s": "a longer text than before", "extra": None},
        {"id": 1, "n": 2, "s": "a", "extra": "1.50"},
    ]
    assert sink_rows(files, f"{db.dbname}.evolve") == mysql.source_rows(db, "evolve")
