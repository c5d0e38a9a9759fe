"""The lock-free watermark snapshot (``snapshot_method: watermark``, MySQL's fallback without
RELOAD) on MariaDB, under concurrent writes across the whole key range."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from integration import mysql
from integration.conftest import MariaDatabase
from integration.daemon import (
    MYSQL_ITEMS_DDL,
    Daemons,
    JobFiles,
    Row,
    assert_clean_log,
    assert_no_duplicate_ids,
    envelopes,
    mysql_job_config,
    rebuild,
    run_cdc,
    wait_until,
    write_config,
)
from integration.test_errors import assert_user_error

SEEDED = 24_000  # even ids 2..48000
TOP = 52_000  # writers use ids 0..TOP: below, inside and above the seeded range
WRITERS = 4


def _writer(db: MariaDatabase, n: int, stop: threading.Event, errors: list[BaseException]) -> None:
    """Transactions of 1-4 inserts, updates, key moves and deletes on the ids ``≡ n (mod 4)``
    (no two writers touch a key), anywhere in ``0..TOP``; writer 0 also changes `labels`."""
    rng = random.Random(n)
    live = {k for k in range(2, 2 * SEEDED + 1, 2) if k % WRITERS == n}
    try:
        with mysql.connect(db, autocommit=False) as conn, conn.cursor() as cur:
            while not stop.is_set():
                for _ in range(rng.randint(1, 4)):
                    k = rng.randrange(n, TOP, WRITERS)
                    updated = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randint(0, 10**13))
                    values = (f"w{n} {rng.random()}", rng.randint(-1000, 1000),
                              Decimal(rng.randint(-10**6, 10**6)) / 100, updated)
                    if k not in live:
                        cur.execute("INSERT INTO items VALUES (%s, %s, %s, %s, %s)", (k, *values))
                        live.add(k)
                        continue
                    roll = rng.random()
                    if roll < 0.55:
                        cur.execute("UPDATE items SET name = %s, qty = %s, price = %s, updated = %s WHERE id = %s",
                                    (*values, k))
                    elif roll < 0.8:
                        to = rng.randrange(n, TOP, WRITERS)
                        if to not in live:  # a key moving, often to another chunk
                            cur.execute("UPDATE items SET id = %s, qty = qty + 1 WHERE id = %s", (to, k))
                            live.discard(k)
                            live.add(to)
                    else:
                        cur.execute("DELETE FROM items WHERE id = %s", (k,))
                        live.discard(k)
                if n == 0:
                    code = f"c{rng.randrange(300)}"
                    cur.execute("INSERT INTO labels VALUES (%s, 1) ON DUPLICATE KEY UPDATE n = n + 1", (code,))
                    cur.execute("DELETE FROM labels WHERE code = %s", (f"c{rng.randrange(300)}",))
                conn.commit()
                time.sleep(0.002)
    except BaseException as err:
        errors.append(err)


def _replay_strictly(files: JobFiles, keys: Mapping[str, str]) -> dict[str, dict[Any, Row]]:
    """Apply the sink's events in order, asserting that each one starts from the state the ones
    before it made: a snapshot read or an insert of a key not held, an update or delete whose
    full `before` image is the row held. A change the snapshot already held (overlap) or one
    missing from both (gap) breaks it."""
    state: dict[str, dict[Any, Row]] = {}
    for env in envelopes(files.sink):
        table = f"{env['source']['schema']}.{env['source']['table']}"
        rows = state.setdefault(table, {})
        op, before, after, key = env["op"], env["before"], env["after"], keys[table]
        where = f"{op} at {env['source'].get('lsn')} in {table}"
        if before is not None:
            assert rows.get(before[key]) == before, f"{where}: before {before} but held {rows.get(before[key])}"
            del rows[before[key]]
        if after is not None:
            assert after[key] not in rows, f"{where}: {after} but already held {rows[after[key]]}"
            rows[after[key]] = after
    return state


def test_watermark_snapshot_under_four_writers_equals_the_source_with_no_overlap(
    mariadb: MariaDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """4 writers insert, update, move and delete keys across every chunk while the watermark snapshot
    runs: the rebuilt sink equals the source, and every stream event applies to exactly the row the
    events before it left (no change both in a chunk and in the stream, none in neither)."""
    db = mariadb
    mysql.execute(
        db,
        MYSQL_ITEMS_DDL,
        "CREATE TABLE labels (code varchar(20) PRIMARY KEY, n int)",
        "CREATE PROCEDURE seed(n INT) BEGIN DECLARE i INT DEFAULT 1; START TRANSACTION; "
        "WHILE i <= n DO INSERT INTO items VALUES (2 * i, CONCAT('seed ', i), i, i / 100, NULL); SET i = i + 1; "
        "END WHILE; INSERT INTO labels VALUES ('c1', 1), ('c2', 2); COMMIT; END",
        f"CALL seed({SEEDED})",
    )
    files = JobFiles(tmp_path / "job")
    document = mysql_job_config(files, host=db.host, port=db.port, user=db.user, password=db.password,
                                database=db.dbname, snapshot="initial", snapshot_method="watermark")
    document["jobs"][0].update(snapshot_workers=2, snapshot_chunk_rows=800)
    write_config(files, document)
    stop = threading.Event()
    errors: list[BaseException] = []
    writers = [threading.Thread(target=_writer, args=(db, n, stop, errors), daemon=True) for n in range(WRITERS)]
    for w in writers:
        w.start()
    time.sleep(0.3)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    try:
        method = daemon.wait_for("snapshot_method")
        daemon.wait_for("replication_started", timeout=60)
        time.sleep(1.0)
    finally:
        stop.set()
        for w in writers:
            w.join(10)
    assert not errors, errors
    items = mysql.source_rows(db, "items", utc=("updated",))
    labels = mysql.source_rows(db, "labels", key="code")
    keys = {f"{db.dbname}.labels": ("code",)}
    expected = {f"{db.dbname}.items": items, f"{db.dbname}.labels": labels}
    try:
        wait_until(lambda: rebuild(files.sink, keys) == expected, 60, "the sink to match the source")
    except AssertionError:
        assert rebuild(files.sink, keys) == expected, daemon.tail()
    assert daemon.terminate(10.0) == 0
    assert_clean_log(daemon)
    assert_no_duplicate_ids(files)
    assert method["method"] == "watermark" and method["reason"] == "configured"
    marks = daemon.wait_for("snapshot_watermarks")
    assert marks["chunks"] >= 30 and marks["window_changes"] > 100, marks  # the windows had work to do
    replayed = _replay_strictly(files, {f"{db.dbname}.items": "id", f"{db.dbname}.labels": "code"})
    assert {(k,): v for k, v in replayed[f"{db.dbname}.items"].items()} == items
    assert {(k,): v for k, v in replayed[f"{db.dbname}.labels"].items()} == labels


def test_watermark_snapshot_refuses_a_table_without_a_primary_key(mariadb: MariaDatabase, tmp_path: Path) -> None:
    """A table without a primary key cannot be matched with the binlog: one line naming it and the fix, exit 2."""
    mysql.execute(mariadb, "CREATE TABLE nokey (v int)", "INSERT INTO nokey VALUES (1)")
    files = mysql.make_job(mariadb, tmp_path, snapshot="initial", snapshot_method="watermark")
    result = run_cdc("run", files.config, timeout=60)
    assert_user_error(result, files, f"{mariadb.dbname}.nokey", "needs a primary key", "snapshot_method: flush")
