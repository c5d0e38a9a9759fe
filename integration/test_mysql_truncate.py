"""MariaDB ``TRUNCATE TABLE`` reaches every sink as an ``op: "t"`` event in transaction order
(docs/mysql.md, *TRUNCATE*): the file sink shows it between the inserts around it, and a
Delta mirror and a DuckDB warehouse end equal to the source's ``SELECT``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import TableNotFoundError

from integration import mysql
from integration.conftest import MariaDatabase
from integration.daemon import Daemons, JobFiles, envelopes, mysql_job_config, wait_until, write_config
from sinks.delta.sink import path_segment


def delta_table(uri: Path, table: str) -> list[dict[str, Any]] | None:
    """The Delta mirror's rows (id, v) by id through deltalake's own engine; None while it does not exist."""
    try:
        found = DeltaTable(str(uri))
    except TableNotFoundError:
        return None
    result = QueryBuilder().register(table, found).execute(f"SELECT id, v FROM {table} ORDER BY id")  # noqa: S608
    return pa.table(result.read_all()).to_pylist()


def source_table(db: MariaDatabase, table: str) -> list[dict[str, Any]]:
    with mysql.connect(db) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, v FROM `{table}` ORDER BY id")  # noqa: S608 - test constants
        return [{"id": i, "v": v} for i, v in cur.fetchall()]


def test_truncate_is_a_t_event_in_order_and_empties_mirror_and_warehouse(
    mariadb: MariaDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """``INSERT 1; TRUNCATE TABLE t; INSERT 2`` streams as c, t, c (also ``TRUNCATE`` without TABLE, quoted and
    qualified from another default database, of a table seen only in the snapshot); a truncate of a same-named
    table of another database is no event; Delta mirror and DuckDB equal the source afterwards."""
    db = mariadb
    other = f"other_{db.dbname[-40:]}"  # another database of the same server (names: 64 characters at most)
    mysql.execute(db, "CREATE TABLE t (id int PRIMARY KEY, v varchar(20))",
                  "CREATE TABLE `u v` (id int PRIMARY KEY, v varchar(20))",
                  "INSERT INTO t VALUES (10, 'seed')", "INSERT INTO `u v` VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    db.server.create_database(other)
    try:
        mysql.execute(db, f"CREATE TABLE `{other}`.t (id int PRIMARY KEY, v varchar(20))")
        files = JobFiles(tmp_path / "job")
        document = mysql_job_config(files, host=db.host, port=db.port, user=db.user, password=db.password,
                                    database=db.dbname, snapshot="initial")
        lake = tmp_path / "lake"
        duck = tmp_path / "wh.duckdb"
        document["jobs"][0]["sinks"] += [{"type": "delta", "path": str(lake), "mode": "mirror"},
                                         {"type": "duckdb", "path": str(duck)}]
        write_config(files, document)
        daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
        daemon.wait_for("replication_started", timeout=60)
        mysql.execute(
            db,
            "INSERT INTO t VALUES (1, 'one')",
            "TRUNCATE TABLE t",
            "INSERT INTO t VALUES (2, 'two')",
            "TRUNCATE `u v`",  # only snapshot rows so far
            "INSERT INTO `u v` VALUES (7, 'seven')",
            f"USE `{other}`",
            "INSERT INTO t VALUES (5, 'other')",
            "TRUNCATE TABLE t",  # the other database's t: no event
            f"/* qualified */ TRUNCATE TABLE `{db.dbname}`.t",
            f"INSERT INTO `{db.dbname}`.t VALUES (3, 'three')",  # noqa: S608 - test constants
            f"INSERT INTO `{db.dbname}`.t VALUES (4, 'four')",  # noqa: S608 - test constants
            f"UPDATE `{db.dbname}`.t SET v = 'FOUR' WHERE id = 4",  # noqa: S608 - test constants
        )
        events = lambda table: [(e["op"], (e["after"] or {}).get("id")) for e in envelopes(files.sink)  # noqa: E731
                                if e["source"]["table"] == table]
        wait_until(lambda: len(events("t")) >= 8 and len(events("u v")) >= 5, 30, "every event")
        assert events("t") == [("r", 10), ("c", 1), ("t", None), ("c", 2), ("t", None), ("c", 3), ("c", 4),
                               ("u", 4)]
        assert events("u v") == [("r", 1), ("r", 2), ("r", 3), ("t", None), ("c", 7)]
        truncates = [e for e in envelopes(files.sink) if e["op"] == "t"]
        assert all(e["before"] is None and e["after"] is None and e["source"]["db"] == db.dbname
                   and e["source"]["snapshot"] == "false" for e in truncates)
        expected = {"t": source_table(db, "t"), "u v": source_table(db, "u v")}
        assert expected == {"t": [{"id": 3, "v": "three"}, {"id": 4, "v": "FOUR"}], "u v": [{"id": 7, "v": "seven"}]}
        mirror = lake / path_segment(db.dbname)
        wait_until(lambda: all(delta_table(mirror / path_segment(name), "x") == rows
                               for name, rows in expected.items()), 30, "the Delta mirror to equal the source")
        assert daemon.terminate(10.0) == 0, daemon.tail()
        con = duckdb.connect(str(duck), read_only=True)
        try:
            for name, rows in expected.items():
                found = con.execute(f'SELECT id, v FROM "{db.dbname}"."{name}" ORDER BY id').fetchall()  # noqa: S608
                assert [{"id": i, "v": v} for i, v in found] == rows, name
        finally:
            con.close()
    finally:
        db.server.drop_database(other)
