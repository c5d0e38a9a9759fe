"""Positions at the edges: a transaction larger than a batch, and an idle job on a busy server.

A transaction bigger than `max_batch_events` is written in chunks whose positions lie
inside the transaction; the slot must not be acknowledged past its commit until the last
chunk is durable, so a SIGKILL between chunks resumes inside it with nothing lost or
doubled. An idle job must still move its slot when the server writes WAL elsewhere.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from integration.conftest import PgDatabase
from integration.daemon import (
    Daemons,
    JobFiles,
    event_ids,
    job_config,
    rebuild,
    sink_position,
    wait_until,
    write_config,
)


def _job(pg: PgDatabase, tmp_path: Path, include: list[str], **pipeline: int) -> tuple[JobFiles, str]:
    files = JobFiles(tmp_path / "job")
    slot = pg.name("slot")
    doc = job_config(files, dsn=pg.dsn, slot=slot, publication=pg.name("pub"), include=include)
    doc["jobs"][0]["pipeline"].update(pipeline)
    write_config(files, doc)
    return files, slot


def _confirmed(pg: PgDatabase, slot: str) -> int:
    rows = pg.query(
        "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    )
    return int(rows[0][0])


def test_kill_9_inside_a_chunked_transaction(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """SIGKILL between chunks of one big transaction: the slot stays before its commit, the sink ends exact."""
    pg.execute("CREATE TABLE big (id int PRIMARY KEY, payload text)")
    files, slot = _job(pg, tmp_path, ["public.big"], max_batch_events=500)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    pg.execute("INSERT INTO big SELECT i, repeat('x', i % 50) || i FROM generate_series(1, 100000) AS i")
    commit = int(pg.query("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")[0][0])

    def inside() -> bool:
        pos = sink_position(files.sink)
        return pos is not None and "seq" in pos

    wait_until(inside, 30, "the sink to hold part of the transaction")
    daemon.kill()
    held = sink_position(files.sink)
    assert held is not None
    assert "seq" in held, "the kill should land between two chunks of the transaction"
    assert _confirmed(pg, slot) < held["commit"] <= commit, "the slot passed a transaction not fully durable"

    daemon.start()
    expected = {(i,): {"id": i, "payload": "x" * (i % 50) + str(i)} for i in range(1, 100001)}
    wait_until(lambda: rebuild(files.sink).get("public.big") == expected, 60, "the sink to hold the whole table")
    ids = Counter(event_ids(files.sink))
    assert len(ids) == 100000 and max(ids.values()) == 1, "an event was lost or written twice"
    assert daemon.terminate() == 0


def test_idle_job_moves_its_slot_while_the_server_is_busy(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """With no change to its tables, the job's slot still advances past WAL written to other tables."""
    pg.execute("CREATE TABLE quiet (id int PRIMARY KEY)")
    pg.execute("CREATE TABLE noisy (id int PRIMARY KEY, payload text)")
    files, slot = _job(pg, tmp_path, ["public.quiet"])
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    start = _confirmed(pg, slot)
    pg.execute("INSERT INTO noisy SELECT i, repeat('y', 200) FROM generate_series(1, 20000) AS i")
    written = int(pg.query("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")[0][0])
    wait_until(lambda: _confirmed(pg, slot) >= written - 1, 30, "the idle slot to move past the other table's WAL")
    assert _confirmed(pg, slot) > start
    assert rebuild(files.sink).get("public.quiet", {}) == {}
    assert daemon.terminate() == 0
