"""The disposable servers and the per-test database fixtures behave as the other tests assume."""

from __future__ import annotations

import re

import pytest

from integration.conftest import MariaDatabase, PgDatabase

#: Database names seen by `test_each_test_gets_its_own_database`, in run order.
_seen_databases: list[str] = []


def test_postgres_database_supports_logical_decoding(pg: PgDatabase) -> None:
    """The fixture's database runs with wal_level=logical and accepts a pgoutput slot."""
    assert pg.query("SHOW wal_level") == [("logical",)]
    assert pg.query("SELECT current_database()") == [(pg.dbname,)]
    slot = pg.name("cdc_slot")
    assert re.fullmatch(r"[a-z0-9_]{1,63}", slot)
    pg.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    assert pg.query("SELECT plugin, database FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == [
        ("pgoutput", pg.dbname)
    ]


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_gets_its_own_database(pg: PgDatabase, run: str) -> None:
    """Each test gets a new database, and the previous test's database is gone."""
    assert re.fullmatch(r"t_[a-z0-9_]{1,60}", pg.dbname)
    assert run in pg.dbname
    assert pg.dbname not in _seen_databases
    for earlier in _seen_databases:
        assert pg.query("SELECT count(*) FROM pg_database WHERE datname = %s", (earlier,)) == [(0,)]
    _seen_databases.append(pg.dbname)


def test_drop_database_releases_active_slots(pg: PgDatabase) -> None:
    """drop_database removes a database whose slots are held by a live session."""
    server = pg.server
    dbname = pg.name("t_drop")
    server.create_database(dbname)
    holder = server.connect(dbname)
    try:
        holder.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (pg.name("kept"),))
        holder.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput', true)", (pg.name("tmp"),))
        server.drop_database(dbname)
    finally:
        holder.close()
    assert pg.query("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (dbname,)) == []
    assert pg.query("SELECT datname FROM pg_database WHERE datname = %s", (dbname,)) == []


def test_immediate_restart_keeps_committed_data(pg: PgDatabase) -> None:
    """A crash-like restart("immediate") keeps data committed with synchronous_commit=on."""
    # The sandbox runs with synchronous_commit=off: an immediate shutdown may lose the last
    # few hundred milliseconds of async commits, so this session commits synchronously.
    pg.execute(
        "SET synchronous_commit = on;"
        " CREATE TABLE kept (id int PRIMARY KEY, note text);"
        " INSERT INTO kept VALUES (1, 'before crash')"
    )
    pg.server.restart("immediate")
    assert pg.query("SELECT id, note FROM kept") == [(1, "before crash")]


def test_mariadb_writes_full_row_binlog(mariadb: MariaDatabase) -> None:
    """The MariaDB fixture has log_bin=ON, binlog_format=ROW and binlog_row_metadata=FULL."""
    rows = mariadb.query(
        "SHOW VARIABLES WHERE Variable_name IN"
        " ('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata')"
    )
    variables = {name: value for name, value in rows}
    assert variables == {
        "log_bin": "ON",
        "binlog_format": "ROW",
        "binlog_row_image": "FULL",
        "binlog_row_metadata": "FULL",
    }
    assert mariadb.execute("SHOW VARIABLES LIKE 'binlog_format'") == "binlog_format\tROW\n"


def test_mariadb_database_is_usable(mariadb: MariaDatabase) -> None:
    """The per-test MariaDB database exists, is the default schema, and takes writes."""
    mariadb.execute("CREATE TABLE t (id INT PRIMARY KEY, note VARCHAR(20)); INSERT INTO t VALUES (1, 'x')")
    assert mariadb.query("SELECT DATABASE(), COUNT(*) FROM t") == [(mariadb.dbname, "1")]
