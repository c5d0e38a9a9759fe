"""User mistakes stop ``cdc run`` with one actionable line, exit code 2 and no checkpoint.

Each test runs the real CLI as a subprocess against a real (or deliberately absent)
server and checks the contract of ARCHITECTURE.md 1.7: a line starting ``cdc: error:``
that names the problem, no traceback, and nothing under the state dir's checkpoints.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from cdc import __version__
from cdc.sandbox import DisposablePostgres, free_port
from integration.conftest import PgDatabase, unique_name
from integration.daemon import ITEMS_DDL, Daemons, JobFiles, job_config, rebuild, run_cdc, wait_until, write_config


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("cdc: error:")]


def assert_user_error(result: subprocess.CompletedProcess[str], files: JobFiles, *needles: str) -> str:
    """Exit 2, one ``cdc: error:`` line containing every needle, no traceback, no checkpoint."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert files.checkpoints() == []
    return lines[0]


def run_job(files: JobFiles, **source: Any) -> subprocess.CompletedProcess[str]:
    """Write a one-job config with these source settings and run ``cdc run`` on it."""
    write_config(files, job_config(files, **source))
    return run_cdc("run", files.config, timeout=60)


def slots_named(pg: PgDatabase, slot: str) -> list[tuple[Any, ...]]:
    return pg.query("SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s", (slot,))


_SINK_TYPO = """\
state_dir: {state}
jobs:
  - name: typo
    source: {{type: postgres, dsn: "postgresql://cdc@127.0.0.1:1/shop", slot: s1, publication: p1}}
    sinks:
      - type: file
        pth: {sink}
"""

_SINK_EXTRA = """\
state_dir: {state}
jobs:
  - name: extra
    source: {{type: postgres, dsn: "postgresql://cdc@127.0.0.1:1/shop", slot: s1, publication: p1}}
    sinks:
      - type: file
        path: {sink}
        pth: {sink}
"""


@pytest.mark.parametrize("command", ["run", "validate"])
def test_unknown_key_names_file_line_and_key(tmp_path: Path, command: str) -> None:
    """An unknown key beside valid ones fails run and validate with file:line and the key."""
    files = JobFiles(tmp_path)
    write_config(files, _SINK_EXTRA.format(state=files.state_dir, sink=files.sink))
    result = run_cdc(command, files.config)
    assert_user_error(result, files, f"{files.config}:8:", "unknown key 'pth'")
    assert not files.sink.exists()


@pytest.mark.parametrize("command", ["run", "validate"])
def test_misspelt_key_names_the_unknown_key(tmp_path: Path, command: str) -> None:
    """A misspelt required key (pth: for path:) is reported as the unknown key, with its line."""
    files = JobFiles(tmp_path)
    write_config(files, _SINK_TYPO.format(state=files.state_dir, sink=files.sink))
    result = run_cdc(command, files.config)
    assert_user_error(result, files, f"{files.config}:7:", "unknown key 'pth'")


def test_unreachable_dsn(tmp_path: Path) -> None:
    """A DSN pointing at a closed port fails at once with 'cannot connect' and the address."""
    files = JobFiles(tmp_path)
    port = free_port()
    result = run_job(files, dsn=f"postgresql://cdc@127.0.0.1:{port}/shop", slot="s1", publication="p1",
                     connect_timeout_s=2)
    assert_user_error(result, files, "cannot connect", f"127.0.0.1:{port}/shop")


def test_wal_level_replica(tmp_path: Path) -> None:
    """A server with wal_level=replica is refused with a message saying wal_level must be logical."""
    files = JobFiles(tmp_path / "job")
    # The server's files go to a fresh /tmp/cdc-pg-* directory (the default), not tmp_path: the
    # postgres system user must traverse its parents, and pytest keeps /tmp/pytest-of-<user> private.
    with DisposablePostgres(settings={"wal_level": "replica"}) as server:
        server.create_database("shop")
        result = run_job(files, dsn=server.dsn("shop"), slot="s1", publication="p1")
        line = assert_user_error(result, files, "wal_level", "logical")
        assert "'replica'" in line
        with server.connect("shop") as conn:
            assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchall() == [(0,)]
            assert conn.execute("SELECT count(*) FROM pg_publication").fetchall() == [(0,)]


def test_missing_table(pg: PgDatabase, tmp_path: Path) -> None:
    """tables.include naming a table that does not exist fails naming it; nothing is created."""
    files = JobFiles(tmp_path)
    slot, publication = pg.name("slot"), pg.name("pub")
    pg.execute("CREATE TABLE present (id int PRIMARY KEY)")
    result = run_job(files, dsn=pg.dsn, slot=slot, publication=publication, include=["public.nope"])
    assert_user_error(result, files, "public.nope", "does not exist")
    assert slots_named(pg, slot) == []
    assert pg.query("SELECT pubname FROM pg_publication WHERE pubname = %s", (publication,)) == []


def test_slot_in_use(pg: PgDatabase, tmp_path: Path) -> None:
    """A slot held by another replication client fails naming the slot and the holder's process."""
    files = JobFiles(tmp_path)
    pg.execute("CREATE TABLE present (id int PRIMARY KEY)")
    slot, publication = pg.name("slot"), pg.name("pub")
    pg.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    pg.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE present").format(sql.Identifier(publication)))
    holder = subprocess.Popen(
        [str(pg.server.bin_dir / "pg_recvlogical"), "-d", pg.dsn, "--slot", slot, "--start", "-f", "/dev/null",
         "-o", "proto_version=1", "-o", f"publication_names={publication}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: pg.query("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
                   == [(True,)], 10, "pg_recvlogical to hold the slot")
        write_config(files, job_config(files, dsn=pg.dsn, slot=slot, publication=publication, connect_timeout_s=1))
        result = run_cdc("run", files.config, timeout=60)
        assert_user_error(result, files, f"replication slot {slot} is in use", "choose another slot name")
    finally:
        holder.terminate()
        holder.wait(10)


@pytest.fixture
def login_role(pg: PgDatabase) -> Iterator[str]:
    """A LOGIN role without REPLICATION, dropped at teardown (roles are server-wide)."""
    role = unique_name("norepl")
    pg.execute(sql.SQL("CREATE ROLE {} LOGIN NOREPLICATION").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with pg.server.connect() as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE usename = %s", (role,)).fetchall()
            for (pid,) in rows:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_role_without_replication(pg: PgDatabase, login_role: str, tmp_path: Path) -> None:
    """A role lacking REPLICATION fails with the ALTER ROLE ... REPLICATION that fixes it."""
    files = JobFiles(tmp_path)
    pg.execute("CREATE TABLE present (id int PRIMARY KEY)")
    slot = pg.name("slot")
    dsn = pg.server.dsn(pg.dbname, user=login_role)
    result = run_job(files, dsn=dsn, slot=slot, publication=pg.name("pub"))
    assert_user_error(result, files, f"ALTER ROLE {login_role}", "REPLICATION")
    assert slots_named(pg, slot) == []


def test_validate_accepts_a_good_config(tmp_path: Path) -> None:
    """cdc validate on a valid config exits 0 without touching the source or the state dir."""
    files = JobFiles(tmp_path)
    write_config(files, job_config(files, dsn=f"postgresql://cdc@127.0.0.1:{free_port()}/shop", slot="s1",
                                   publication="p1"))
    result = run_cdc("validate", files.config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{files.config}: OK (1 job)"
    assert result.stderr == ""
    assert not files.state_dir.exists()


def test_version() -> None:
    """cdc --version prints the package version and exits 0."""
    result = run_cdc("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"cdc {__version__}"


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("dsn", ["postgresql://cdc:{pw}%@127.0.0.1:{port}/shop",
                                 "postgresql://cdc:{pw}@127.0.0.1:{port}/shop?colour=blue",
                                 "host=127.0.0.1 port={port} password='{pw}"],
                         ids=["raw-percent", "unknown-option", "unterminated-quote"])
def test_malformed_dsn_is_one_line_in_run_and_validate(tmp_path: Path, command: str, dsn: str) -> None:
    """A DSN libpq cannot parse fails `cdc run` and `cdc validate` with exit 2 and one line naming file, line
    and job, never the password (it used to make `cdc run` exit 0 silently)."""
    files = JobFiles(tmp_path)
    password = f"pw-{unique_name('x')}"
    result = run_job_with(files, command, dsn=dsn.format(pw=password, port=free_port()), slot="s1",
                          publication="p1")
    line = assert_user_error(result, files, f"{files.config}:", "source.dsn", "not a valid PostgreSQL connection "
                             "string", f"(job {files.job})")
    assert password not in result.stderr and password not in result.stdout, line
    assert not files.state_dir.exists()


def run_job_with(files: JobFiles, command: str, **source: Any) -> subprocess.CompletedProcess[str]:
    """Write a one-job config with these source settings and run ``cdc COMMAND`` on it."""
    write_config(files, job_config(files, **source))
    return run_cdc(command, files.config, timeout=60)


@pytest.mark.parametrize("content", [b"jobs:\n  - name: \xff\xfe\x00\x01\n", b"jobs:\n  - name: a\x00b\n",
                                     b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
                                         f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n".encode()
                                         for p, n in zip("abcdefghi", "bcdefghij", strict=True))],
                         ids=["binary", "nul", "alias-bomb"])
def test_hostile_config_file_is_one_line(tmp_path: Path, content: bytes) -> None:
    """A binary file, a NUL byte or a YAML alias bomb: `cdc validate` exits 2 at once with one line naming the file
    (no traceback, no hang)."""
    files = JobFiles(tmp_path)
    files.root.mkdir(parents=True, exist_ok=True)
    files.config.write_bytes(content)
    result = run_cdc("validate", files.config, timeout=30)
    assert_user_error(result, files, f"{files.config}:")


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_state_dir_that_is_not_a_directory_creates_nothing_on_the_server(
        pg: PgDatabase, tmp_path: Path, where: str) -> None:
    """A file in place of state_dir (or of a parent) fails `cdc run` with one line naming state_dir, before
    the job creates its publication or slot."""
    files = JobFiles(tmp_path / "job")
    files.root.mkdir(parents=True)
    taken = files.root / "taken"
    taken.write_text("a file")
    state = taken if where == "file" else taken / "state"
    pg.execute("CREATE TABLE present (id int PRIMARY KEY)")
    slot, publication = pg.name("slot"), pg.name("pub")
    document = job_config(files, dsn=pg.dsn, slot=slot, publication=publication)
    write_config(files, {**document, "state_dir": str(state)})
    result = run_cdc("run", files.config, timeout=60)
    assert_user_error(result, files, f"state_dir {state}:")
    assert slots_named(pg, slot) == []
    assert pg.query("SELECT pubname FROM pg_publication WHERE pubname = %s", (publication,)) == []


def test_refused_login_of_a_job_that_streamed_before_is_one_line_not_a_retry(tmp_path: Path,
                                                                            daemons: Daemons) -> None:
    """A job with a checkpoint (an unreachable source is retried for it) whose login the server refuses (a
    wrong password) stops ``cdc run`` with exit 2 and one line saying what to fix, without a retry loop,
    and the checkpoint stays where it was."""
    with DisposablePostgres() as server:  # private: its pg_hba.conf is rewritten
        server.create_database("shop")
        hba = server.data_dir / "pg_hba.conf"
        trust = hba.read_text()
        hba.write_text("host all cdcpw 127.0.0.1/32 scram-sha-256\n"
                       "host replication cdcpw 127.0.0.1/32 scram-sha-256\n" + trust)
        with server.connect("shop") as conn:
            conn.autocommit = True
            conn.execute(ITEMS_DDL)
            conn.execute("CREATE ROLE cdcpw LOGIN REPLICATION SUPERUSER PASSWORD 'right-pw'")
            conn.execute("SELECT pg_reload_conf()")
        files = JobFiles(tmp_path / "job")
        dsn = f"postgresql://cdcpw:right-pw@127.0.0.1:{server.port}/shop"
        doc = job_config(files, dsn=dsn, slot="cdc_login", publication="cdc_login")
        write_config(files, doc)
        daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
        daemon.wait_for("replication_started", timeout=30)
        with server.connect("shop") as conn:
            conn.execute("INSERT INTO items VALUES (1, 'a', 1, 1.5, now())")
            conn.commit()
        wait_until(lambda: len(rebuild(files.sink).get("public.items") or {}) == 1, 30, "the first row")
        assert daemon.terminate(10.0) == 0
        held = [p.read_bytes() for p in files.checkpoints()]
        assert held

        doc["jobs"][0]["source"]["dsn"] = dsn.replace("right-pw", "wrong-pw")
        write_config(files, doc)
        result = run_cdc("run", files.config, timeout=30)
        assert result.returncode == 2, result.stderr[-3000:]
        lines = error_lines(result)
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert 'password authentication failed for user "cdcpw"' in lines[0], lines[0]
        assert "fix the user or password of the job's source, or the server's pg_hba.conf" in lines[0]
        assert "wrong-pw" not in result.stderr and "job_retrying" not in result.stderr

        assert [p.read_bytes() for p in files.checkpoints()] == held
