"""Helpers for the MySQL/MariaDB integration tests: jobs on the `mariadb` fixture's database,
PyMySQL connections, and the source's rows in the event JSON rendering (docs/mysql.md)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql

from integration.brokers import iso_utc
from integration.conftest import MariaDatabase
from integration.daemon import JobFiles, Key, Row, mysql_job_config, write_config


def connect(db: MariaDatabase, *, autocommit: bool = True) -> pymysql.connections.Connection[Any]:
    """A PyMySQL connection to the test's database with a UTC session."""
    return pymysql.connect(host=db.host, port=db.port, user=db.user, password=db.password, database=db.dbname,
                           charset="utf8mb4", autocommit=autocommit, init_command="SET time_zone='+00:00'")


def execute(db: MariaDatabase, *statements: str) -> None:
    """Run each statement on one autocommit connection."""
    with connect(db) as conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


def make_job(db: MariaDatabase, tmp_path: Path, **options: Any) -> JobFiles:
    """A one-job config (mysql source on the test's database, file sink) under `tmp_path`."""
    files = JobFiles(tmp_path / "job")
    write_config(files, mysql_job_config(files, host=db.host, port=db.port, user=db.user, password=db.password,
                                         database=db.dbname, **options))
    return files


def json_value(value: Any, utc: bool) -> Any:
    """A PyMySQL value (UTC session) as the event JSON holds it."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return iso_utc(value) if utc else iso_utc(value)[:-1]
    return value


def source_rows(db: MariaDatabase, table: str, *, key: str = "id", utc: Iterable[str] = ()) -> dict[Key, Row]:
    """``SELECT *`` of `table` as ``{(key,): {column: JSON value}}``; `utc` names TIMESTAMP columns."""
    zoned = set(utc)
    with connect(db) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM `{table}` ORDER BY `{key}`")  # noqa: S608 - test constants
        names = [d[0] for d in cur.description]
        rows = [{n: json_value(v, n in zoned) for n, v in zip(names, r, strict=True)} for r in cur.fetchall()]
    return {(row[key],): row for row in rows}
