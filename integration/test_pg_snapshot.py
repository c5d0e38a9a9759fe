"""Snapshot then stream: consistent, resumable after SIGKILL, incremental for added tables.

Every test ends by comparing the table rebuilt from the file sink with the source table,
row by row, after concurrent writers changed it during the snapshot.
"""

from __future__ import annotations

import os
import pty
import random
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from integration.conftest import PgDatabase
from integration.daemon import (
    ROOT,
    Daemon,
    Daemons,
    JobFiles,
    cdc_command,
    envelopes,
    job_config,
    rebuild,
    run_cdc,
    sink_position,
    wait_until,
    write_config,
)


class Writers:
    """Background transactions (inserts, updates, deletes) on `big` until stopped."""

    def __init__(self, pg: PgDatabase, rows: int, threads: int = 2) -> None:
        self.pg = pg
        self.rows = rows
        self.stop = threading.Event()
        self.done = 0
        self.errors: list[BaseException] = []
        self._next = [rows + 1 + i * 10_000_000 for i in range(threads)]
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)
        assert not self.errors, self.errors

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        try:
            with psycopg.connect(self.pg.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    with conn.transaction():
                        roll = rng.random()
                        if roll < 0.4:
                            conn.execute("INSERT INTO big VALUES (%s, 'ins', 0)", (self._next[n],))
                            self._next[n] += 1
                        elif roll < 0.8:
                            conn.execute("UPDATE big SET v = v + 1, name = 'upd' WHERE id = %s",
                                         (rng.randint(1, self.rows),))
                        else:
                            conn.execute("DELETE FROM big WHERE id = %s", (rng.randint(1, self.rows),))
                    self.done += 1
                    time.sleep(0.001)
        except BaseException as err:
            self.errors.append(err)


def big_table(pg: PgDatabase, rows: int) -> None:
    pg.execute("CREATE TABLE big (id int PRIMARY KEY, name text, v int)")
    pg.execute("INSERT INTO big SELECT i, 'row ' || i, i FROM generate_series(1, %s) i", (rows,))
    pg.execute("ANALYZE big")


def snapshot_job(pg: PgDatabase, tmp_path: Path, include: list[str], source: dict[str, Any] | None = None,
                 mirror: bool = False, **job: Any) -> tuple[JobFiles, str]:
    """A snapshot job into the file sink and, with `mirror`, a Delta mirror at `lake(files)`."""
    files = JobFiles(tmp_path / "job")
    slot = pg.name("slot")
    doc = job_config(files, dsn=pg.dsn, slot=slot, publication=pg.name("pub"), include=include)
    doc["jobs"][0].update({"snapshot": "initial", **job})
    if mirror:
        doc["jobs"][0]["sinks"].append({"type": "delta", "name": "mirror", "path": str(lake(files))})
    doc["jobs"][0]["source"].update(source or {})
    write_config(files, doc)
    return files, slot


def source_rows(pg: PgDatabase, table: str = "big") -> dict[tuple[Any, ...], dict[str, Any]]:
    return {(r[0],): {"id": r[0], "name": r[1], "v": r[2]} for r in pg.query(f"SELECT id, name, v FROM {table}")}  # noqa: S608


def lake(files: JobFiles) -> Path:
    return files.root / "lake"


def mirror_rows(files: JobFiles, table: str) -> dict[tuple[Any, ...], dict[str, Any]] | None:
    """The Delta mirror of `public.<table>` as {(id,): row}, or None while it does not exist."""
    try:
        data = DeltaTable(str(lake(files) / "public" / table)).to_pyarrow_table(columns=["id", "name", "v"])
    except TableNotFoundError:
        return None
    return {(r["id"],): r for r in data.to_pylist()}


def wait_mirror_equal(pg: PgDatabase, files: JobFiles, daemon: Daemon, table: str = "big",
                      timeout: float = 90) -> None:
    """Wait until the Delta mirror equals the source table row for row."""
    expected = source_rows(pg, table)
    try:
        wait_until(lambda: mirror_rows(files, table) == expected, timeout, f"the mirror to equal public.{table}",
                   interval=0.5)
    except AssertionError:
        got = mirror_rows(files, table) or {}
        differ = [k for k in expected.keys() | got.keys() if got.get(k) != expected.get(k)][:5]
        raise AssertionError(f"mirror differs at {differ}: source {[expected.get(k) for k in differ]} "
                             f"mirror {[got.get(k) for k in differ]}\n{daemon.tail()}") from None


def wait_equal(pg: PgDatabase, files: JobFiles, daemon: Daemon, table: str = "big", timeout: float = 90) -> None:
    expected = source_rows(pg, table)
    try:
        wait_until(lambda: rebuild(files.sink).get(f"public.{table}") == expected, timeout,
                   f"the sink to equal public.{table}", interval=0.5)
    except AssertionError:
        got = rebuild(files.sink).get(f"public.{table}", {})
        missing = [k for k in expected if k not in got][:5]
        extra = [k for k in got if k not in expected][:5]
        differ = [k for k in expected if k in got and got[k] != expected[k]][:5]
        keys = {k[0] for k in missing + extra + differ}
        history = [
            (e["op"], e["id"], e["before"], e["after"])
            for e in envelopes(files.sink)
            if (e["after"] or e["before"] or {}).get("id") in keys
        ]
        raise AssertionError(
            f"missing {missing} extra {extra} differ {differ}\nsource: {[expected.get(k) for k in differ]}\n"
            f"events of those keys: {history}\n{daemon.tail()}"
        ) from None


@pytest.mark.slow
def test_initial_snapshot_under_concurrent_writes(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """A 1M-row table snapshotted while writers change it ends equal to the source, row by row."""
    big_table(pg, 1_000_000)
    files, _ = snapshot_job(pg, tmp_path, ["public.big"], mirror=True, snapshot_workers=2,
                            snapshot_chunk_rows=100_000)
    with Writers(pg, 1_000_000) as writers:
        daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
        daemon.wait_for("snapshot_started", timeout=30)
        daemon.wait_for("replication_started", timeout=120)
        time.sleep(1)
    assert writers.done > 100
    wait_equal(pg, files, daemon)
    wait_mirror_equal(pg, files, daemon)
    assert daemon.terminate() == 0


@pytest.mark.slow
def test_snapshot_resumes_after_kill_9(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """SIGKILL mid-snapshot: the restart resumes from completed chunks (incrementally) and ends equal."""
    big_table(pg, 600_000)
    files, _ = snapshot_job(pg, tmp_path, ["public.big"], mirror=True, snapshot_workers=1,
                            snapshot_chunk_rows=30_000)
    progress = files.state_dir / f"{files.job}.snapshot.json"
    with Writers(pg, 600_000) as writers:
        daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
        daemon.wait_for("snapshot_started", timeout=30)

        def some_chunks_done() -> bool:
            try:
                import json

                done = json.loads(progress.read_text())["tables"]["public.big"]["done"]
            except (OSError, ValueError, KeyError):
                return False
            return len(done) >= 3

        wait_until(some_chunks_done, 60, "some snapshot chunks to be durable", interval=0.02)
        daemon.kill()
        assert sink_position(files.sink) is not None
        daemon.start()
        resumed = daemon.wait_for("snapshot_resuming", timeout=30)
        assert resumed["chunks_done"]["public.big"] >= 3
        assert resumed["chunks_done"]["public.big"] < resumed["chunks"]["public.big"]
        daemon.wait_for("snapshot_table_done", timeout=120)
    assert writers.done > 50
    wait_equal(pg, files, daemon)
    wait_mirror_equal(pg, files, daemon)
    assert daemon.terminate() == 0


def test_requested_snapshot_of_a_new_table_while_streaming(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """`cdc snapshot` backfills a table created after the job started, while the other table keeps streaming."""
    pg.execute("CREATE TABLE live (id int PRIMARY KEY, name text, v int)")
    files, _ = snapshot_job(pg, tmp_path, ["public.*"], snapshot_chunk_rows=5_000)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started", timeout=30)
    pg.execute("CREATE TABLE big (id int PRIMARY KEY, name text, v int)")
    pg.execute("INSERT INTO big SELECT i, 'row ' || i, i FROM generate_series(1, 50000) i")
    with Writers(pg, 50_000, threads=1):
        result = run_cdc("snapshot", files.config, "--job", files.job, "--table", "public.big")
        assert result.returncode == 0, result.stderr
        for i in range(200):
            pg.execute("INSERT INTO live VALUES (%s, 'l', %s)", (i, i))
        daemon.wait_for("snapshot_table_done", timeout=60)
    wait_equal(pg, files, daemon, "big")
    wait_equal(pg, files, daemon, "live")
    assert daemon.terminate() == 0


def test_initial_only_snapshots_and_exits(pg: PgDatabase, tmp_path: Path) -> None:
    """snapshot: initial_only copies the tables and exits 0, leaving no replication slot behind."""
    big_table(pg, 20_000)
    files, slot = snapshot_job(pg, tmp_path, ["public.big"], snapshot="initial_only")
    result = run_cdc("run", files.config, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert rebuild(files.sink)["public.big"] == source_rows(pg)
    assert pg.query("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == [(0,)]


def test_progress_bars_on_a_terminal(pg: PgDatabase, tmp_path: Path) -> None:
    """On a terminal the snapshot shows a rich bar per table (rows, rows/s, ETA) instead of progress lines."""
    big_table(pg, 300_000)
    files, _ = snapshot_job(pg, tmp_path, ["public.big"], snapshot="initial_only", snapshot_workers=1,
                            snapshot_chunk_rows=20_000)
    doc = yaml.safe_load(files.config.read_text())
    doc["log_format"] = "auto"
    write_config(files, doc)
    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    process = subprocess.Popen(cdc_command("run", files.config), cwd=ROOT, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=secondary, env=env)
    os.close(secondary)
    screen = b""
    try:
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not data:
                break
            screen += data
    finally:
        os.close(primary)
        assert process.wait(60) == 0, screen.decode(errors="replace")[-3000:]
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    assert "snapshot public.big" in text and "rows/s" in text and "ETA" in text, text[-3000:]
    assert "━" in text  # the bar itself
    assert re.search(r"300,?000/300,?000 rows", text), text[-3000:]
    assert "snapshot_progress" not in text  # the bars replace the progress log lines
    assert "snapshot_table_done" in text  # other log lines still print (above the bars)
    assert rebuild(files.sink)["public.big"] == source_rows(pg)


@pytest.mark.parametrize("policy", ["fail", "recreate"])
def test_slot_dropped_under_the_job(pg: PgDatabase, tmp_path: Path, daemons: Daemons, policy: str) -> None:
    """A slot dropped while the job is down: fail stops with a message; recreate re-snapshots and ends equal."""
    big_table(pg, 5_000)
    files, slot = snapshot_job(pg, tmp_path, ["public.big"], source={"on_slot_lost": policy})
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started", timeout=30)
    pg.execute("UPDATE big SET v = -v WHERE id <= 10")
    wait_equal(pg, files, daemon)
    assert daemon.terminate() == 0
    pg.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    pg.execute("DELETE FROM big WHERE id <= 100")  # lost to the old slot: only a snapshot brings it back
    if policy == "fail":
        result = run_cdc("run", files.config, timeout=60)
        assert result.returncode == 2
        assert f"replication slot {slot} is gone" in result.stderr and "on_slot_lost: recreate" in result.stderr
        return
    daemon.start()
    daemon.wait_for("slot_lost_recreating", timeout=30)
    daemon.wait_for("replication_started", timeout=60)
    pg.execute("UPDATE big SET v = 7 WHERE id = 500")
    # Deleted rows stay in a file sink rebuilt from events (a snapshot has no deletes): compare the rest.
    expected = source_rows(pg)

    def caught_up() -> bool:
        got = rebuild(files.sink)["public.big"]
        return all(got.get(k) == v for k, v in expected.items())

    wait_until(caught_up, 60, "the re-snapshot and stream to reach the sink", interval=0.5)
    assert daemon.terminate() == 0


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_resumed_snapshot_repeats_no_row_under_another_id(
    pg: PgDatabase, tmp_path: Path, daemons: Daemons, sig: str
) -> None:
    """Stopped mid-snapshot (chunks durable in part): the resume re-reads a chunk only after its last
    durable row, so a snapshot row written twice carries the same event id; the sink equals the source."""
    import json
    from collections import defaultdict

    big_table(pg, 100_000)
    files, _ = snapshot_job(pg, tmp_path, ["public.big"], snapshot_workers=2, snapshot_chunk_rows=15_000,
                            pipeline={"max_batch_events": 1_000, "max_wait_ms": 50})
    progress = files.state_dir / f"{files.job}.snapshot.json"
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("snapshot_started", timeout=30)

    # Batches of 1000 rows, chunks of 15000: the first durable batch holds part of a chunk.
    wait_until(lambda: sink_position(files.sink) is not None, 60, "a snapshot batch to be durable", interval=0.01)
    if sig == "SIGTERM":
        assert daemon.terminate(20.0) == 0
    else:
        daemon.kill()
    entry = json.loads(progress.read_text())["tables"]["public.big"]
    assert len(entry["done"]) < len(entry["chunks"]), "the snapshot ended before the stop: nothing to resume"
    daemon.start()
    daemon.wait_for("snapshot_table_done", timeout=120)
    wait_equal(pg, files, daemon)
    assert daemon.terminate() == 0
    ids: dict[tuple[Any, str], set[str]] = defaultdict(set)
    for e in envelopes(files.sink):
        if e["op"] == "r":
            ids[e["after"]["id"], json.dumps(e["after"], sort_keys=True)].add(e["id"])
    repeated = {k: v for k, v in ids.items() if len(v) > 1}
    assert not repeated, f"{len(repeated)} rows written again under another id: {list(repeated.items())[:3]}"
    assert len(ids) == 100_000
