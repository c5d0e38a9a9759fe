"""Fixtures for integration tests that run against real, disposable database servers.

Three layers:

1. `cdc.sandbox` starts and stops the servers themselves (`DisposablePostgres`,
   `DisposableMariaDB`): private processes on 127.0.0.1 in temporary directories,
   configured for change data capture.
2. Session-scoped `pg_server` and `mariadb_server` start one server of each kind for
   the whole test session, lazily (only if some test asks for it), and always stop
   it at the end. Starting a server costs about a second; a database costs
   milliseconds, so tests share servers and isolate themselves by database.
3. Function-scoped `pg` and `mariadb` give each test a fresh database with a unique
   name on the shared server and drop it at teardown, whatever the test did
   (PostgreSQL replication slots of that database included, even active ones).

Tests must not change server-wide state (``ALTER SYSTEM``, roles they do not drop)
and must leave the server running: `pg_server.restart()` is fine, `stop()` is not.
Name server-wide objects (replication slots, publications are per database but
slots are not) with `PgDatabase.name` so concurrent or repeated tests never collide.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.abc import Params, QueryNoTemplate

from cdc.sandbox import DisposableMariaDB, DisposableNats, DisposablePostgres, DisposableRedis
from integration.daemon import Daemons

#: PostgreSQL truncates identifiers to 63 bytes; MariaDB database names allow 64.
MAX_IDENTIFIER = 63


def _identifier(text: str) -> str:
    """Lowercase `text` and squeeze everything outside [a-z0-9_] into single underscores."""
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "x"


def unique_name(prefix: str) -> str:
    """Return ``<prefix>_<8 hex>``: a fresh lowercase [a-z0-9_] identifier of at most 63 chars."""
    suffix = secrets.token_hex(4)
    return f"{_identifier(prefix)[: MAX_IDENTIFIER - len(suffix) - 1]}_{suffix}"


def database_name(test_name: str) -> str:
    """Return ``t_<test name>_<6 hex>`` sanitized to [a-z0-9_] and at most 63 chars."""
    suffix = secrets.token_hex(3)
    stem = f"t_{_identifier(test_name)}"[: MAX_IDENTIFIER - len(suffix) - 1]
    return f"{stem}_{suffix}"


@dataclass(frozen=True)
class PgDatabase:
    """A fresh PostgreSQL database for one test, on the session's server."""

    server: DisposablePostgres
    dbname: str
    dsn: str

    def name(self, prefix: str) -> str:
        """Return a unique lowercase identifier (<= 63 chars, [a-z0-9_]) for slots, publications..."""
        return unique_name(prefix)

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        """Open a new autocommit superuser connection to this database; the caller closes it."""
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)

    def execute(self, sql: QueryNoTemplate, params: Params | None = None) -> None:
        """Run SQL on a new autocommit connection (several ``;``-separated statements if no params)."""
        with self.connect() as conn:
            conn.execute(sql, params)

    def query(self, sql: QueryNoTemplate, params: Params | None = None) -> list[tuple[Any, ...]]:
        """Run one query on a new autocommit connection and return all its rows."""
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()


@dataclass(frozen=True)
class MariaDatabase:
    """A fresh MariaDB database for one test, on the session's server."""

    server: DisposableMariaDB
    dbname: str
    host: str
    port: int
    user: str
    password: str

    def execute(self, sql: str) -> str:
        """Run SQL statements in this database with the ``mariadb`` client; return its batch output."""
        return self.server.execute(sql, database=self.dbname)

    def query(self, sql: str) -> list[tuple[str, ...]]:
        """Run one query in this database and return its rows as text (see `DisposableMariaDB.query`)."""
        return self.server.query(sql, database=self.dbname)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[DisposablePostgres]:
    """One PostgreSQL server for the whole session, always stopped at the end."""
    with DisposablePostgres() as server:
        yield server


@pytest.fixture
def pg(pg_server: DisposablePostgres, request: pytest.FixtureRequest) -> Iterator[PgDatabase]:
    """A fresh database for this test; dropped with its replication slots at teardown."""
    dbname = database_name(request.node.name)
    pg_server.create_database(dbname)
    try:
        yield PgDatabase(server=pg_server, dbname=dbname, dsn=pg_server.dsn(dbname))
    finally:
        pg_server.drop_database(dbname)


@pytest.fixture
def target(pg_server: DisposablePostgres, request: pytest.FixtureRequest) -> Iterator[PgDatabase]:
    """A second fresh database on the session's server: a PostgreSQL warehouse target."""
    dbname = database_name(f"wh_{request.node.name}")
    pg_server.create_database(dbname)
    try:
        yield PgDatabase(server=pg_server, dbname=dbname, dsn=pg_server.dsn(dbname))
    finally:
        pg_server.drop_database(dbname)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[DisposableMariaDB]:
    """One MariaDB server for the whole session, always stopped at the end."""
    with DisposableMariaDB() as server:
        yield server


@pytest.fixture
def mariadb(mariadb_server: DisposableMariaDB, request: pytest.FixtureRequest) -> Iterator[MariaDatabase]:
    """A fresh database for this test; dropped at teardown."""
    dbname = database_name(request.node.name)
    mariadb_server.create_database(dbname)
    try:
        yield MariaDatabase(
            server=mariadb_server,
            dbname=dbname,
            host=mariadb_server.host,
            port=mariadb_server.port,
            user=mariadb_server.user,
            password=mariadb_server.password,
        )
    finally:
        mariadb_server.drop_database(dbname)


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    """Every daemon the test starts; any still running at teardown is killed."""
    group = Daemons()
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def nats_server() -> Iterator[DisposableNats]:
    """A private nats-server with JetStream for this test."""
    with DisposableNats() as server:
        yield server


@pytest.fixture
def redis_server() -> Iterator[DisposableRedis]:
    """A private redis-server (append-only file, fsync always) for this test."""
    with DisposableRedis() as server:
        yield server
