"""MariaDB outages around a running job: cdc restarted while the server is down, and the server
restarted while cdc streams. Each is retried (the job has a checkpoint) and catches up, with the
sink equal to the source row by row and no event id twice.

Each test stops and starts a MariaDB server of its own on the same port (the job's config is
unchanged), never the session's shared one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc.sandbox import DisposableMariaDB
from integration import mysql
from integration.conftest import MariaDatabase
from integration.daemon import (
    MYSQL_ITEMS_DDL,
    ChangeWriter,
    Daemon,
    Daemons,
    JobFiles,
    assert_no_duplicate_ids,
    wait_sink_equal,
    wait_until,
)

CATCH_UP_S = 60.0


@pytest.fixture
def own_db() -> Iterator[MariaDatabase]:
    """A database with `items` on a MariaDB server of this test only (the test stops and starts it)."""
    with DisposableMariaDB() as server:
        server.create_database("shop")
        db = MariaDatabase(server, "shop", server.host, server.port, server.user, server.password)
        mysql.execute(db, MYSQL_ITEMS_DDL)
        yield db


def write(db: MariaDatabase, seed: int, first_id: int, transactions: int = 10) -> None:
    writer = ChangeWriter(None, seed=seed, mysql=db)
    writer.next_id = first_id
    try:
        for _ in range(transactions):
            writer.transaction()
    finally:
        writer.close()


def caught_up(db: MariaDatabase, files: JobFiles, daemon: Daemon) -> None:
    """Wait until the sink's durable rows equal the source's `items`."""
    wait_sink_equal(files, daemon, "shop.items", mysql.source_rows(db, "items", utc=("updated",)), CATCH_UP_S)


def stop_server(db: MariaDatabase) -> None:
    """Shut MariaDB down (SIGTERM, a clean shutdown), keeping its files and port."""
    db.server._terminate(15.0)


def start_server(db: MariaDatabase) -> None:
    """Start MariaDB again on the same port and data directory."""
    assert db.server._try_start() is None


def retried(daemon: Daemon, times: int) -> bool:
    """Whether the job retried at least `times` times (failing if cdc exited meanwhile)."""
    assert daemon.process is not None and daemon.process.poll() is None, daemon.tail()
    return sum(1 for e in daemon.events() if e.get("event") == "job_retrying") >= times


def assert_clean_retries(daemon: Daemon) -> None:
    """The job retried and never failed, crashed or gave up."""
    log = daemon.stderr(all_runs=True)
    assert "job_failed" not in log and "Traceback" not in log and "internal error" not in log, daemon.tail()


def test_a_restart_during_a_mariadb_outage_retries_until_the_server_is_back(
        own_db: MariaDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """cdc restarted while MariaDB is down (a host reboot during a short outage): a job that streamed
    before retries the unreachable server, and once it is back on the same port the job catches up."""
    db = own_db
    files = mysql.make_job(db, tmp_path, connect_timeout_s=2)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    write(db, seed=31, first_id=1)
    caught_up(db, files, daemon)
    assert daemon.terminate(10.0) == 0

    stop_server(db)
    daemon.start()
    wait_until(lambda: retried(daemon, 2), 30, "the job to retry the unreachable server")
    retries = [e for e in daemon.events() if e.get("event") == "job_retrying"]
    assert {e["error_class"] for e in retries} == {"SourceUnreachableError"}, retries

    start_server(db)
    write(db, seed=32, first_id=10_000)
    caught_up(db, files, daemon)
    assert daemon.terminate(10.0) == 0
    assert_clean_retries(daemon)
    assert_no_duplicate_ids(files)


def test_mariadb_restarted_while_cdc_streams_is_retried_and_caught_up(
        own_db: MariaDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """MariaDB shut down and started again under a streaming job, right after a burst of writes: the job
    retries (the binlog connection is lost, the server refuses connections meanwhile) and catches up with
    what was written before and after the restart, no event id twice."""
    db = own_db
    files = mysql.make_job(db, tmp_path, connect_timeout_s=2)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    write(db, seed=41, first_id=1)
    caught_up(db, files, daemon)
    write(db, seed=43, first_id=5_000)  # the server goes down with these maybe not yet read by cdc

    stop_server(db)
    wait_until(lambda: retried(daemon, 1), 30, "the job to retry the lost server")
    start_server(db)
    write(db, seed=42, first_id=10_000)
    caught_up(db, files, daemon)
    assert daemon.terminate(10.0) == 0
    assert_clean_retries(daemon)
    assert_no_duplicate_ids(files)
