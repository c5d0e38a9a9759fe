"""The daemon streams PostgreSQL into Delta Lake mirrors and changelogs, on disk and on S3 (moto).

Each test compares the Delta tables, read back with deltalake, with a ``SELECT`` of the
source: the mirror row for row, the changelog by folding its history in position order
(and by checking no change is in it twice).
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from integration.conftest import PgDatabase
from integration.daemon import (
    ITEMS_DDL,
    ChangeWriter,
    Daemon,
    Daemons,
    JobFiles,
    job_config,
    sink_rows,
    wait_until,
    write_config,
    write_with_two_kills,
)

CATCH_UP_S = 60.0
DATA = ("id", "name", "qty", "price", "updated")


def source_rows(pg: PgDatabase, table: str = "items", columns: tuple[str, ...] = DATA) -> list[tuple[Any, ...]]:
    """The source table's rows (Python values from psycopg), sorted by id."""
    with pg.connect() as conn:
        cols = ", ".join(columns)
        return [tuple(r) for r in conn.execute(f"SELECT {cols} FROM {table} ORDER BY id").fetchall()]  # noqa: S608


def delta_rows(uri: str, columns: tuple[str, ...] = DATA, options: dict[str, str] | None = None) -> list[Any]:
    """A mirror's rows (the same columns), sorted by id; [] while the table does not exist."""
    try:
        dt = DeltaTable(uri, storage_options=options)
    except TableNotFoundError:  # not created yet
        return []
    if not set(columns) <= set(pa.schema(dt.schema().to_arrow()).names):
        return []  # a column the daemon has not added yet
    table = dt.to_pyarrow_table(columns=list(columns))
    return sorted((tuple(r[c] for c in columns) for r in table.to_pylist()), key=lambda r: r[0])


def folded_changelog(uri: str, columns: tuple[str, ...] = DATA, options: dict[str, str] | None = None) -> list[Any]:
    """The changelog replayed in position order into a table; asserts no change appears twice."""
    table = DeltaTable(uri, storage_options=options).to_pyarrow_table()
    changes = table.to_pylist()
    seen = Counter((c["_cdc_position"], c["_cdc_op"]) for c in changes)
    repeated = [k for k, n in seen.items() if n > 1]
    assert not repeated, f"changes in the changelog more than once: {repeated[:5]}"
    state: dict[Any, tuple[Any, ...]] = {}
    for c in sorted(changes, key=lambda c: (c["_cdc_position"], c["_cdc_op"] != "d")):
        if c["_cdc_op"] == "d":
            state.pop(c["id"], None)
        elif c["_cdc_op"] == "t":
            state.clear()
        else:
            state[c["id"]] = tuple(c[n] for n in columns)
    return sorted(state.values(), key=lambda r: r[0])


def delta_job(pg: PgDatabase, root: Path, sinks: list[dict[str, Any]]) -> JobFiles:
    files = JobFiles(root)
    document = job_config(files, dsn=pg.dsn, slot=pg.name("slot"), publication=pg.name("pub"))
    document["jobs"][0]["sinks"] = sinks
    write_config(files, document)
    return files


def wait_equal(pg: PgDatabase, read: Any, daemon: Daemon, what: str) -> list[Any]:
    expected = source_rows(pg)
    try:
        wait_until(lambda: read() == expected, CATCH_UP_S, what)
    except AssertionError:
        assert read() == expected, daemon.tail()
    return expected


def run_with_two_kills(pg: PgDatabase, files: JobFiles, daemon: Daemon, sink: str) -> None:
    """Stream 40 transactions of ChangeWriter, SIGKILLing the daemon twice once `sink` made progress."""
    daemon.start().wait_for("replication_started", timeout=30)
    write_with_two_kills(ChangeWriter(pg, seed=5150), files, daemon, sink, timeout=CATCH_UP_S)


def test_mirror_and_changelog_exact_across_two_kills(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """SIGKILL twice mid-stream: the mirror equals the source, the changelog holds each change once."""
    pg.execute(ITEMS_DDL)
    lake = tmp_path / "lake"
    files = delta_job(pg, tmp_path / "job", [
        {"type": "delta", "name": "mirror", "path": str(lake / "mirror"), "mode": "mirror"},
        {"type": "delta", "name": "log", "path": str(lake / "log"), "mode": "changelog"},
    ])
    daemon = daemons.new(files.config, tmp_path / "cdc.log")
    run_with_two_kills(pg, files, daemon, "mirror")
    mirror, log = str(lake / "mirror/public/items"), str(lake / "log/public/items")
    expected = wait_equal(pg, lambda: delta_rows(mirror), daemon, "the mirror to equal the source")
    wait_equal(pg, lambda: folded_changelog(log), daemon, "the changelog to fold into the source")
    assert len(expected) > 10
    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.stderr(all_runs=True)
    assert delta_rows(mirror) == expected and folded_changelog(log) == expected


def test_added_and_widened_columns_reach_the_mirror(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """ALTER TABLE ADD COLUMN and int -> bigint mid-stream: the mirror takes the source's new shape."""
    pg.execute("CREATE TABLE items (id int PRIMARY KEY, qty int, name text)")
    pg.execute("INSERT INTO items VALUES (1, 1, 'a'), (2, 2, 'b')")
    lake = tmp_path / "lake"
    files = delta_job(pg, tmp_path / "job", [{"type": "delta", "name": "mirror", "path": str(lake)}])
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started", timeout=30)
    pg.execute("UPDATE items SET qty = 10 WHERE id = 1")
    uri = str(lake / "public/items")
    wait_until(lambda: delta_rows(uri, ("id", "qty")) == [(1, 10)], CATCH_UP_S, "the first update")
    pg.execute("ALTER TABLE items ADD COLUMN note text, ALTER COLUMN qty TYPE bigint")
    pg.execute("INSERT INTO items VALUES (3, 9000000000, 'c', 'new')")
    pg.execute("UPDATE items SET note = 'x' WHERE id = 1")
    columns = ("id", "qty", "name", "note")
    expected = source_rows(pg, columns=("id", "qty", "name", "note"))
    expected = [r for r in expected if r[0] in (1, 3)]  # row 2 was never changed: not in the stream
    wait_until(lambda: delta_rows(uri, columns) == expected, CATCH_UP_S, "the evolved rows")
    schema = DeltaTable(uri).schema().to_arrow()
    assert pa.schema(schema).field("qty").type == pa.int64()
    assert daemon.terminate() == 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process `pid` used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_reserved_column_added_mid_stream_stops_only_its_job_with_one_line(
    pg: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """ALTER TABLE ADD COLUMN "_CDC_Op" mid-stream: the job with the Delta mirror and changelog stops with one
    line naming job, sink, table and column (the mirror keeps its rows); its event-log sink and the daemon's other
    job go on, and the daemon does not spin (under a quarter of a core) while that job runs on."""
    pg.execute("CREATE TABLE docs (id int PRIMARY KEY, v text)")
    pg.execute("CREATE TABLE other (id int PRIMARY KEY, v text)")
    lake = tmp_path / "lake"
    files = delta_job(pg, tmp_path / "job", [
        {"type": "delta", "name": "mirror", "path": str(lake / "mirror")},
        {"type": "delta", "name": "log", "path": str(lake / "log"), "mode": "changelog"},
    ])
    document = yaml.safe_load(files.config.read_text())
    [job] = document["jobs"]
    job["tables"] = {"include": ["public.docs"]}
    other = copy.deepcopy(job)
    other["name"], other["tables"] = "other", {"include": ["public.other"]}
    other["source"]["slot"], other["source"]["publication"] = pg.name("slot"), pg.name("pub")
    other_files = JobFiles(tmp_path / "other", job="other")
    other["sinks"] = [{"type": "file", "path": str(other_files.sink)}]
    document["jobs"].append(other)
    write_config(files, document)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    wait_until(lambda: sum(e.get("event") == "replication_started" for e in daemon.events()) == 2, CATCH_UP_S,
               "both jobs to stream")
    pg.execute("INSERT INTO docs VALUES (1, 'a')")
    uri = str(lake / "mirror/public/docs")
    wait_until(lambda: delta_rows(uri, ("id", "v")) == [(1, "a")], CATCH_UP_S, "the first row in the mirror")
    pg.execute('ALTER TABLE docs ADD COLUMN "_CDC_Op" text')
    pg.execute("INSERT INTO docs VALUES (2, 'b', 'x')")
    failed = daemon.wait_for("job_failed", timeout=CATCH_UP_S)
    assert failed["job"] == files.job and failed["error_class"] == "ReservedColumnError", failed
    cpu, wall = cpu_seconds(daemon.pid), time.monotonic()
    for i in range(1, 11):  # the other job goes on, one transaction at a time
        pg.execute("INSERT INTO other VALUES (%s, 'o')", (i,))
        wait_until(lambda n=i: len(sink_rows(other_files, "public.other")) == n, CATCH_UP_S, "the other job's rows")
    used, elapsed = cpu_seconds(daemon.pid) - cpu, time.monotonic() - wall
    assert used < 0.25 * elapsed, f"the daemon used {used:.2f} s of CPU in {elapsed:.2f} s: it spins"
    assert delta_rows(uri, ("id", "v")) == [(1, "a")]
    assert sorted(r["_cdc_op"] for r in DeltaTable(str(lake / "log/public/docs")).to_pyarrow_table().to_pylist()) == [
        "c"]
    assert daemon.terminate() == 2
    stderr = daemon.stderr()
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("cdc: error:")]
    assert lines == [
        f"cdc: error: job {files.job}, sink mirror: table public.docs has a column named _CDC_Op, but names starting "
        "with _cdc_ are reserved for cdc's own columns in Delta Lake and warehouse tables; rename the column, or "
        "leave the table out of this job (tables.exclude) or send it to an event-log sink"], stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def s3() -> Iterator[dict[str, str]]:
    """moto's S3 server on a random loopback port with a bucket ``lake``; its storage options."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ALLOW_HTTP": "true"}
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="lake")
        yield options
    finally:
        server.stop()


def test_mirror_on_s3_exact_across_two_kills(pg: PgDatabase, tmp_path: Path, daemons: Daemons,
                                             s3: dict[str, str]) -> None:
    """The same crash test with the lake on an S3 store (moto): mirror and changelog exact."""
    pg.execute(ITEMS_DDL)
    files = delta_job(pg, tmp_path / "job", [
        {"type": "delta", "name": "mirror", "path": "s3://lake/mirror", "storage_options": s3},
        {"type": "delta", "name": "log", "path": "s3://lake/log", "mode": "changelog", "storage_options": s3},
    ])
    daemon = daemons.new(files.config, tmp_path / "cdc.log")
    run_with_two_kills(pg, files, daemon, "mirror")
    expected = wait_equal(pg, lambda: delta_rows("s3://lake/mirror/public/items", options=s3), daemon,
                          "the S3 mirror to equal the source")
    wait_equal(pg, lambda: folded_changelog("s3://lake/log/public/items", options=s3), daemon,
               "the S3 changelog to fold into the source")
    assert len(expected) > 10
    assert daemon.terminate() == 0
