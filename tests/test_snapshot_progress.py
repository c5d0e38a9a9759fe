"""The PostgreSQL initial snapshot's progress file across resumes (connectors/postgres/snapshot.py)."""

from __future__ import annotations

from pathlib import Path

from connectors.postgres.snapshot import Chunk, SnapshotProgress, SnapshotTable
from connectors.postgres.types import PgRowCodec
from tests.builders import ORDERS

POINT = 1000


def orders(chunks: int = 2) -> SnapshotTable:
    plan = [Chunk(n, n * 10, (n + 1) * 10 if n < chunks - 1 else None) for n in range(chunks)]
    return SnapshotTable(ORDERS, PgRowCodec(ORDERS.columns), plan, rows_estimate=100)


def resumed(path: Path, held: tuple[int, int] | None) -> SnapshotTable:
    """A new process's view of the table: the file loaded, the plan started with what the sinks hold, saved."""
    progress = SnapshotProgress(path).load()
    t = orders()
    progress.start(t, held)
    progress.save()
    return t


def test_pieces_no_sink_held_are_forgotten_at_the_first_resume(tmp_path: Path) -> None:
    """A kill during the initial snapshot, then a second kill once the job streams: the second resume still
    re-reads the rows the first run never made durable (found by the differential harness, seeds 10 and 25:
    the marks of undelivered batches stayed in the file, and a streaming position made them look held)."""
    path = tmp_path / "job.snapshot.json"
    first = SnapshotProgress(path)
    t = orders()
    first.start(t)
    first.piece(t, POINT - 1, 0, 100, "(3,5)", 100)   # delivered: the sinks hold seq 100
    first.piece(t, POINT - 1, 0, 200, "(6,1)", 100)   # handed to the sinks, killed before durable
    first.save()
    after_first = resumed(path, (POINT - 1, 100))
    assert after_first.chunks[0].after == "(3,5)" and 0 not in after_first.done
    # the job streamed meanwhile: the sinks hold a streaming position, far past the snapshot's point
    after_second = resumed(path, (POINT + 5000, 3))
    assert after_second.chunks[0].after == "(3,5)", "rows after (3,5) were never durable"
    assert 0 not in after_second.done


def test_nothing_held_forgets_every_piece(tmp_path: Path) -> None:
    """Sinks that hold nothing at the first resume: the chunk is read whole, also at a later resume."""
    path = tmp_path / "job.snapshot.json"
    first = SnapshotProgress(path)
    t = orders()
    first.start(t)
    first.piece(t, POINT - 1, 1, 50, None, 50)  # the chunk's end, handed over but never durable
    first.save()
    assert resumed(path, None).chunks[1].after is None
    later = resumed(path, (POINT + 10, 1))
    assert later.chunks[1].after is None and 1 not in later.done


def test_a_chunk_whose_end_is_held_is_done(tmp_path: Path) -> None:
    """The end mark of a chunk at or below the held position: the chunk is done and not read again."""
    path = tmp_path / "job.snapshot.json"
    first = SnapshotProgress(path)
    t = orders()
    first.start(t)
    first.piece(t, POINT - 1, 0, 30, "(1,1)", 30)
    first.piece(t, POINT - 1, 0, 60, None, 30)
    first.save()
    again = resumed(path, (POINT - 1, 60))
    assert 0 in again.done and again.rows == 60
