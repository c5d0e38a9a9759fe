"""The real daemon streams MariaDB's row binlog into the file sink across kill -9 and restarts.

Every test runs ``cdc run`` as a subprocess (integration/daemon.py), writes to the source
while it streams, and compares the table rebuilt from the sink's JSONL files with a
``SELECT`` of the source, row by row, in the documented JSON rendering (docs/mysql.md).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

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
    event_ids,
    rebuild,
    sink_position,
    wait_until,
)

CATCH_UP_S = 30.0


def items_table(db: MariaDatabase) -> str:
    return f"{db.dbname}.items"


def sink_rows(files: JobFiles, table: str, *, durable_only: bool = True) -> dict[Key, Row]:
    return rebuild(files.sink, durable_only=durable_only).get(table, {})


def wait_caught_up(db: MariaDatabase, files: JobFiles, daemon: Daemon, table: str = "items") -> dict[Key, Row]:
    """Wait until the sink's durable state equals the source table; return the source rows."""
    expected = mysql.source_rows(db, table, utc=("updated",))
    name = f"{db.dbname}.{table}"
    try:
        wait_until(lambda: sink_rows(files, name) == expected, CATCH_UP_S, "the sink to match the source")
    except AssertionError:
        assert sink_rows(files, name) == expected, daemon.tail()
    return expected


def assert_no_duplicate_ids(files: JobFiles) -> list[str]:
    ids = event_ids(files.sink)
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    assert not repeated, f"event ids written more than once: {repeated[:10]}"
    return ids


def assert_clean_log(daemon: Daemon) -> None:
    text = daemon.stderr(all_runs=True)
    assert "Traceback" not in text
    assert "job_failed" not in text, daemon.tail()


@pytest.fixture
def items(mariadb: MariaDatabase) -> MariaDatabase:
    mysql.execute(mariadb, MYSQL_ITEMS_DDL)
    return mariadb


def test_kill_9_twice_mid_stream_loses_and_doubles_nothing(
    items: MariaDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """Two SIGKILLs mid-stream: the sink still equals the source row by row, no event id twice."""
    db = items
    files = mysql.make_job(db, tmp_path)
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
