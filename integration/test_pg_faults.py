"""Faults around the PostgreSQL source: missing grants, a snapshot worker failing, lost connections.

Each test runs the real ``cdc run`` against a real server (integration/conftest.py) and checks
the job either stops with one actionable line (a user mistake) or retries and catches up
(a lost connection), never hangs, and never blocks the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from integration.conftest import PgDatabase, unique_name
from integration.daemon import JobFiles, job_config, run_cdc, write_config


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cdc: error:")]


@pytest.fixture
def cdc_role(pg: PgDatabase) -> Iterator[str]:
    """A LOGIN REPLICATION role without superuser and without any table grant; dropped at teardown."""
    role = unique_name("cdcrole")
    pg.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with pg.server.connect() as conn:
            for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity WHERE usename = %s", (role,)).fetchall():
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        pg.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with pg.server.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def snapshot_as(pg: PgDatabase, role: str, files: JobFiles, slot: str) -> str:
    """A snapshot job over public.* run as `role` (the publication made beforehand by a superuser)."""
    publication = pg.name("pub")
    pg.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE open_t, secret_t").format(sql.Identifier(publication)))
    doc = job_config(files, dsn=pg.server.dsn(pg.dbname, user=role), slot=slot, publication=publication)
    doc["jobs"][0]["snapshot"] = "initial"
    write_config(files, doc)
    return publication


def test_snapshot_without_select_grant_stops_before_the_slot(pg: PgDatabase, cdc_role: str, tmp_path: Path) -> None:
    """A role lacking SELECT on a captured table stops at once with one line naming the table and the
    GRANT; no slot is left holding WAL and no checkpoint is written."""
    pg.execute("CREATE TABLE open_t (id int PRIMARY KEY); CREATE TABLE secret_t (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO open_t SELECT generate_series(1, 100); INSERT INTO secret_t VALUES (1, 'x')")
    pg.execute(sql.SQL("GRANT SELECT ON open_t TO {}").format(sql.Identifier(cdc_role)))
    files = JobFiles(tmp_path)
    slot = pg.name("slot")
    snapshot_as(pg, cdc_role, files, slot)
    result = run_cdc("run", files.config, timeout=45)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert "public.secret_t" in lines[0] and f"GRANT SELECT ON \"public\".\"secret_t\" TO \"{cdc_role}\"" in lines[0]
    assert pg.query("SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == []
    assert files.checkpoints() == []


def test_snapshot_worker_error_stops_the_job(pg: PgDatabase, cdc_role: str, tmp_path: Path) -> None:
    """An error in a snapshot worker's COPY (here a row-level security policy that raises) stops the
    job with one line naming the table, instead of hanging after snapshot_started."""
    pg.execute("CREATE TABLE open_t (id int PRIMARY KEY); CREATE TABLE secret_t (id int PRIMARY KEY, v text)")
    pg.execute("INSERT INTO open_t SELECT generate_series(1, 100); INSERT INTO secret_t VALUES (1, 'x')")
    pg.execute("CREATE FUNCTION refuse() RETURNS boolean LANGUAGE plpgsql AS "
               "$$ BEGIN RAISE EXCEPTION 'rows of secret_t are off limits'; END $$")
    pg.execute("ALTER TABLE secret_t ENABLE ROW LEVEL SECURITY; CREATE POLICY p ON secret_t USING (refuse())")
    pg.execute(sql.SQL("GRANT SELECT ON open_t, secret_t TO {}").format(sql.Identifier(cdc_role)))
    files = JobFiles(tmp_path)
    snapshot_as(pg, cdc_role, files, pg.name("slot"))
    result = run_cdc("run", files.config, timeout=45)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert "snapshot of public.secret_t" in lines[0] and "off limits" in lines[0], lines[0]
    assert files.checkpoints() == []
