"""MariaDB snapshot then stream into a Delta Lake mirror and changelog across two SIGKILLs."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Any

from integration import mysql
from integration.conftest import MariaDatabase
from integration.daemon import (
    ChangeWriter,
    Daemons,
    JobFiles,
    mysql_job_config,
    wait_until,
    write_config,
    write_with_two_kills,
)
from integration.test_delta_sink import DATA, delta_rows, folded_changelog
from integration.test_mysql_snapshot import seed

CATCH_UP_S = 60.0


def source_rows(db: MariaDatabase) -> list[tuple[Any, ...]]:
    """The source's rows as Arrow gives them back from Delta (TIMESTAMP as UTC-aware datetimes)."""
    with mysql.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, name, qty, price, updated FROM items ORDER BY id")
        return [(*r[:4], None if r[4] is None else r[4].replace(tzinfo=UTC)) for r in cur.fetchall()]


def test_snapshot_and_stream_into_a_delta_mirror_across_two_kills(
    mariadb: MariaDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """Seeded rows (snapshot) and 40 streamed transactions with two SIGKILLs: mirror and changelog exact."""
    db = mariadb
    seed(db, 500)
    lake = tmp_path / "lake"
    files = JobFiles(tmp_path / "job")
    document = mysql_job_config(files, host=db.host, port=db.port, user=db.user, password=db.password,
                                database=db.dbname, snapshot="initial")
    document["jobs"][0]["sinks"] = [
        {"type": "delta", "name": "mirror", "path": str(lake / "mirror"), "mode": "mirror"},
        {"type": "delta", "name": "log", "path": str(lake / "log"), "mode": "changelog"},
    ]
    write_config(files, document)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started", timeout=60)
    writer = ChangeWriter(None, seed=5150, mysql=db)
    writer.next_id = 1000
    writer.live = list(range(1, 501))
    write_with_two_kills(writer, files, daemon, "mirror")
    mirror = str(lake / "mirror" / db.dbname / "items")
    log = str(lake / "log" / db.dbname / "items")
    expected = source_rows(db)
    try:
        wait_until(lambda: delta_rows(mirror) == expected, CATCH_UP_S, "the mirror to equal the source")
    except AssertionError:
        assert delta_rows(mirror) == expected, daemon.tail()
    assert daemon.terminate(10.0) == 0
    assert len(expected) >= 500
    assert delta_rows(mirror, DATA) == expected
    assert folded_changelog(log) == expected
