"""The real daemon streams PostgreSQL into the file sink across kill -9, SIGTERM and restarts.

Every test runs ``cdc run`` as a subprocess (integration/daemon.py), writes to the source
while it streams, and at the end compares the table rebuilt from the sink's JSONL files
with a ``SELECT`` of the source, row by row, with values in the documented JSON rendering
(connectors/postgres/types.py).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from integration.brokers import source_rows
from integration.conftest import PgDatabase
from integration.daemon import (
    ITEMS_DDL,
    ChangeWriter,
    Daemon,
    Daemons,
    JobFiles,
    Key,
    Row,
    assert_clean_log,
    assert_no_duplicate_ids,
    envelopes,
    job_config,
    rebuild,
    sink_position,
    sink_rows,
    slot_confirmed_flush,
    wait_sink_equal,
    wait_until,
    write_config,
)

ITEMS = "public.items"
CATCH_UP_S = 30.0


def wait_caught_up(pg: PgDatabase, files: JobFiles, daemon: Daemon, table: str = ITEMS) -> dict[Key, Row]:
    """Wait until the sink's durable state equals the source table; return the source rows."""
    return wait_sink_equal(files, daemon, table, source_rows(pg, table), CATCH_UP_S)


@pytest.fixture
def items(pg: PgDatabase) -> PgDatabase:
    """The source table of the streaming tests (REPLICA IDENTITY DEFAULT, primary key id)."""
    pg.execute(ITEMS_DDL)
    return pg


def make_job(pg: PgDatabase, tmp_path: Path, **options: Any) -> tuple[JobFiles, str]:
    files = JobFiles(tmp_path / "job")
    slot = pg.name("slot")
    write_config(files, job_config(files, dsn=pg.dsn, slot=slot, publication=pg.name("pub"), **options))
    return files, slot


def test_kill_9_twice_mid_stream_loses_and_doubles_nothing(
    items: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """Two SIGKILLs mid-stream: the sink still equals the source row by row, no event id twice."""
    pg = items
    files, slot = make_job(pg, tmp_path)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    writer = ChangeWriter(pg, seed=20240601)
    durable: dict[str, int] | None = None  # the sink's position when the daemon was last killed
    try:
        for tx in range(1, 51):
            if tx in (15, 32):
                # Kill only once this run has made something durable, so the restart resumes
                # from the sink's position while later transactions are still in flight.
                wait_until(lambda last=durable: sink_position(files.sink) not in (None, last), CATCH_UP_S,
                           "the daemon to make a batch durable")
            writer.transaction()
            time.sleep(0.01)  # pace the writer so batches are being written when the kill lands
            if tx in (15, 32):
                assert daemon.kill() == -9
                durable = sink_position(files.sink)
                assert durable is not None
                assert slot_confirmed_flush(pg, slot) <= durable["commit"], "slot acknowledged past the sink"
            if tx in (20, 32):
                daemon.start()  # the writer goes on while the daemon starts up
    finally:
        writer.close()
    expected = wait_caught_up(pg, files, daemon)
    assert len(expected) > 20
    assert_no_duplicate_ids(files)
    assert daemon.terminate(10.0) == 0
    assert_clean_log(daemon)
    # After a clean stop every line on disk is durable: all files read the same.
    assert sink_rows(files, ITEMS, durable_only=False) == expected
    ids = assert_no_duplicate_ids(files)
    assert len(ids) >= writer.transactions * 2
    assert files.checkpoints(), "the job never saved a checkpoint"


def test_sigterm_drains_and_restart_resumes(items: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """SIGTERM mid-stream exits 0 within 10 s; a restart resumes with no loss and no repeats."""
    pg = items
    files, _ = make_job(pg, tmp_path)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    writer = ChangeWriter(pg, seed=7)
    try:
        for _ in range(10):
            writer.transaction()
        assert daemon.terminate(10.0) == 0
        assert any(e.get("event") == "job_stopped" for e in daemon.events())
        for _ in range(10):
            writer.transaction()  # while the daemon is down: the slot keeps them
        daemon.start()
        daemon.wait_for("replication_started")
        for _ in range(10):
            writer.transaction()
    finally:
        writer.close()
    expected = wait_caught_up(pg, files, daemon)
    assert_no_duplicate_ids(files)
    assert daemon.terminate(10.0) == 0
    assert_clean_log(daemon)
    assert sink_rows(files, ITEMS, durable_only=False) == expected


def _changes(files: JobFiles, table: str) -> list[tuple[str, Any, Any]]:
    """``(op, before, after)`` of every event of `table` in the sink, in order."""
    schema, name = table.split(".")
    return [
        (e["op"], e["before"], e["after"])
        for e in envelopes(files.sink)
        if e["source"]["schema"] == schema and e["source"]["table"] == name
    ]


@pytest.mark.parametrize("identity", ["default", "full"])
def test_replica_identity_decides_the_before_image(
    pg: PgDatabase, tmp_path: Path, daemons: Daemons, identity: str
) -> None:
    """DEFAULT: deletes and key moves carry the key only (others null); FULL: the whole old row."""
    pg.execute("CREATE TABLE notes (id int PRIMARY KEY, body text, n int)")
    if identity == "full":
        pg.execute("ALTER TABLE notes REPLICA IDENTITY FULL")
    files, _ = make_job(pg, tmp_path)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    pg.execute("INSERT INTO notes VALUES (1, 'one', 10), (2, 'two', 20), (3, 'three', 30)")
    pg.execute("UPDATE notes SET n = 11 WHERE id = 1")
    pg.execute("UPDATE notes SET id = 4 WHERE id = 2")
    pg.execute("DELETE FROM notes WHERE id = 1")
    expected = source_rows(pg, "public.notes")
    wait_until(lambda: len(_changes(files, "public.notes")) == 6, CATCH_UP_S, "six events of notes")
    assert daemon.terminate(10.0) == 0
    assert_clean_log(daemon)
    assert rebuild(files.sink).get("public.notes") == expected

    def old(id_: int, body: str, n: int) -> dict[str, Any]:
        return {"id": id_, "body": body, "n": n} if identity == "full" else {"id": id_, "body": None, "n": None}

    assert _changes(files, "public.notes") == [
        ("c", None, {"id": 1, "body": "one", "n": 10}),
        ("c", None, {"id": 2, "body": "two", "n": 20}),
        ("c", None, {"id": 3, "body": "three", "n": 30}),
        ("u", old(1, "one", 10) if identity == "full" else None, {"id": 1, "body": "one", "n": 11}),
        ("u", old(2, "two", 20), {"id": 4, "body": "two", "n": 20}),
        ("d", old(1, "one", 11), None),
    ]


def test_full_identity_fills_unchanged_toast_from_the_old_row(
    pg: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """REPLICA IDENTITY FULL: an unchanged TOASTed value is written in `after` (from `before`), never the
    unavailable placeholder, for an update of another column and for a key change."""
    pg.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, n int)")
    pg.execute("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")  # TOASTed, not compressed
    pg.execute("ALTER TABLE docs REPLICA IDENTITY FULL")
    files, _ = make_job(pg, tmp_path)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    body = secrets.token_hex(5_000)  # 10 kB of random hex: TOASTed out of line
    pg.execute("INSERT INTO docs VALUES (1, %s, 0)", (body,))
    pg.execute("UPDATE docs SET n = 1 WHERE id = 1")
    pg.execute("UPDATE docs SET id = 2, n = 2 WHERE id = 1")
    wait_until(lambda: len(_changes(files, "public.docs")) == 3, CATCH_UP_S, "three events of docs")
    assert daemon.terminate(10.0) == 0
    assert_clean_log(daemon)
    assert _changes(files, "public.docs") == [
        ("c", None, {"id": 1, "body": body, "n": 0}),
        ("u", {"id": 1, "body": body, "n": 0}, {"id": 1, "body": body, "n": 1}),
        ("u", {"id": 1, "body": body, "n": 1}, {"id": 2, "body": body, "n": 2}),
    ]
