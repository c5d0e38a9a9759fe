"""The databases of a differential run: the source (written by the plan), and the oracles
that cdc's code has no part in.

PostgreSQL: `PgSide` creates the plan's tables in the source and in a subscriber database on
a second server, subscribes the subscriber to the source with PostgreSQL's native logical
replication (``CREATE SUBSCRIPTION ... WITH (copy_data = true)``), executes the plan's
statements, and reads any of these databases as *PostgreSQL text*: each value as its output
function prints it under fixed session settings (ISO dates, UTC, shortest floats, ISO-8601
intervals), arrays as nested JSON lists of their elements' texts. `MySide` does the same for
MariaDB, whose oracle is its own ``SELECT`` (PyMySQL values).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
import pymysql
from psycopg import sql

from integration.differential.families import PG_TYPES_DDL
from integration.differential.workload import ADDED_COLUMN, ADDED_TYPE, BIG_COLUMN, Plan, Statement, Transaction

#: The session settings of every oracle read: the forms docs/types.md starts from.
ORACLE_OPTIONS = ("-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3 -c intervalstyle=iso_8601 "
                  "-c synchronous_commit=on")

Rows = dict[int, dict[str, Any]]


def pg_connect(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10, options=ORACLE_OPTIONS)


def pg_column_types(plan: Plan, table: str, added: bool) -> dict[str, str]:
    """Column -> SQL type of `table` in `plan` (with the ADD COLUMN once it happened)."""
    types = {"id": "int4", **{f.column: f.column_type for f in plan.tables[table]}, BIG_COLUMN: "text"}
    if added:
        types[ADDED_COLUMN] = ADDED_TYPE["pg"]
    return types


def pg_table_ddl(plan: Plan, table: str) -> list[sql.Composed]:
    """CREATE TABLE of `table` (the key ``id``; ``c_big`` out of line; ``t_full`` REPLICA IDENTITY FULL)."""
    columns = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
               for c, t in pg_column_types(plan, table, False).items()]
    out: list[sql.Composed] = [
        sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY (id))").format(sql.Identifier(table), sql.SQL(", ").join(columns)),
        sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STORAGE EXTERNAL").format(
            sql.Identifier(table), sql.Identifier(BIG_COLUMN)),
    ]
    if table.endswith("_full"):
        out.append(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(table)))
    return out


def pg_statement(types: Mapping[str, str], table: str, st: Statement) -> tuple[sql.Composed, list[Any]]:
    """The SQL and parameters of one plan statement; every value a text literal cast to its column type."""
    ident = sql.Identifier(table)

    def cast(column: str) -> sql.Composable:
        return sql.SQL("{}::{}").format(sql.Placeholder(), sql.SQL(types[column]))

    if st.kind == "insert":
        names = list(st.values)
        return (sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            ident, sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL(", ").join(cast(c) for c in names)),
            [_text(st.values[c]) for c in names])
    if st.kind in ("update", "key_update"):
        names = list(st.values)
        sets = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), cast(c)) for c in names)
        return (sql.SQL("UPDATE {} SET {} WHERE id = %s").format(ident, sets),
                [*(_text(st.values[c]) for c in names), st.key])
    if st.kind == "delete":
        return sql.SQL("DELETE FROM {} WHERE id = %s").format(ident), [st.key]
    if st.kind == "truncate":
        return sql.SQL("TRUNCATE {}").format(ident), []
    raise ValueError(st.kind)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class PgSide:
    """The PostgreSQL source database and its native subscriber (the oracle)."""

    def __init__(self, plan: Plan, source_dsn: str, subscriber_dsn: str, name: str) -> None:
        self.plan = plan
        self.source_dsn = source_dsn
        self.subscriber_dsn = subscriber_dsn
        self.subscription = f"{name}_native"
        self.publication = f"{name}_native"
        self.added: set[str] = set()

    def create(self) -> None:
        for dsn in (self.source_dsn, self.subscriber_dsn):
            with pg_connect(dsn) as conn:
                conn.execute(PG_TYPES_DDL)
                for table in self.plan.tables:
                    for statement in pg_table_ddl(self.plan, table):
                        conn.execute(statement)

    def subscribe(self) -> None:
        """The native subscription: a publication on the source, a subscription (with the initial copy)
        on the subscriber."""
        tables = sql.SQL(", ").join(map(sql.Identifier, self.plan.tables))
        with pg_connect(self.source_dsn) as conn:
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(self.publication), tables))
        with pg_connect(self.subscriber_dsn) as conn:
            conn.execute(sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = true)").format(
                sql.Identifier(self.subscription), sql.Literal(self.source_dsn), sql.Identifier(self.publication)))

    def unsubscribe(self) -> None:
        with pg_connect(self.subscriber_dsn) as conn:
            conn.execute(sql.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(sql.Identifier(self.subscription)))

    def add_column(self, table: str) -> None:
        """ADD COLUMN on the subscriber first (its apply worker needs it), then on the source."""
        for dsn in (self.subscriber_dsn, self.source_dsn):
            with pg_connect(dsn) as conn:
                conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                    sql.Identifier(table), sql.Identifier(ADDED_COLUMN), sql.SQL(ADDED_TYPE["pg"])))
        self.added.add(table)

    def execute(self, tx: Transaction) -> None:
        """Commit `tx` on the source (runs of inserts with the same columns go through executemany)."""
        with pg_connect(self.source_dsn) as conn, conn.transaction(), conn.cursor() as cur:
            run: list[list[Any]] = []
            run_sql: sql.Composed | None = None
            for st in tx.statements:
                query, params = pg_statement(pg_column_types(self.plan, st.table, st.table in self.added), st.table, st)
                if st.kind == "insert" and run_sql is not None and query == run_sql:
                    run.append(params)
                    continue
                if run_sql is not None:
                    cur.executemany(run_sql, run)
                run_sql, run = (query, [params]) if st.kind == "insert" else (None, [])
                if run_sql is None:
                    cur.execute(query, params)
            if run_sql is not None:
                cur.executemany(run_sql, run)

    def wal_lsn(self) -> int:
        with pg_connect(self.source_dsn) as conn:
            row = conn.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint").fetchone()
        assert row is not None
        return int(row[0])

    def slot_flushed(self, slot: str) -> int | None:
        with pg_connect(self.source_dsn) as conn:
            row = conn.execute("SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots "
                               "WHERE slot_name = %s", (slot,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])


def pg_read(dsn: str, schema: str, table: str, columns: Iterable[str], arrays: Iterable[str]) -> Rows | None:
    """`schema.table` as ``{id: {column: PostgreSQL text}}`` (arrays: nested JSON lists of element
    texts; absent columns left out); None when the table does not exist."""
    listed = set(arrays)
    with pg_connect(dsn) as conn:
        present = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (schema, table)).fetchall()}
        if not present:
            return None
        wanted = [c for c in columns if c in present]
        exprs = []
        for c in wanted:
            ident = sql.Identifier(c)
            if c in listed:
                exprs.append(sql.SQL("to_json({}::text[])").format(ident))
            else:
                # num_nulls, not IS NULL: a composite whose fields are all NULL, '(,)', IS NULL in SQL.
                exprs.append(sql.SQL("CASE WHEN num_nulls({}) = 1 THEN NULL ELSE format('%s', {}) END").format(
                    ident, ident))
        query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(exprs), sql.Identifier(schema, table))
        rows = conn.execute(query).fetchall()
    out: Rows = {}
    for row in rows:
        values = dict(zip(wanted, row, strict=True))
        out[int(values["id"])] = values
    return out


# -- MariaDB --------------------------------------------------------------------------------------------


def my_quote(name: str) -> str:
    """A MySQL identifier in backticks (embedded backticks doubled)."""
    return "`" + name.replace("`", "``") + "`"


class MySide:
    """The MariaDB source database: DDL, the plan's statements, and its own SELECT (the oracle)."""

    def __init__(self, plan: Plan, host: str, port: int, user: str, password: str, database: str) -> None:
        self.plan = plan
        self.host, self.port, self.user, self.password = host, port, user, password
        self.database = database
        self.added: set[str] = set()

    def connect(self) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               database=self.database, charset="utf8mb4", autocommit=False,
                               init_command="SET time_zone='+00:00'")

    def create(self) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            for table, families in self.plan.tables.items():
                columns = ", ".join(f"{my_quote(f.column)} {f.sql_type}" for f in families)
                cur.execute(f"CREATE TABLE {my_quote(table)} (id INT PRIMARY KEY, {columns}, "
                            f"{my_quote(BIG_COLUMN)} LONGTEXT)")
            cur.execute(f"CREATE TABLE {my_quote(self.MARK_TABLE)} (id INT PRIMARY KEY)")
            conn.commit()

    def add_column(self, table: str) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"ALTER TABLE {my_quote(table)} ADD COLUMN {my_quote(ADDED_COLUMN)} {ADDED_TYPE['mysql']}")
            conn.commit()
        self.added.add(table)

    def execute(self, tx: Transaction) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            for st in tx.statements:
                table = my_quote(st.table)
                names = list(st.values)
                if st.kind == "insert":
                    cur.execute(f"INSERT INTO {table} ({', '.join(map(my_quote, names))}) "  # noqa: S608 - identifiers by my_quote, values as parameters
                                f"VALUES ({', '.join(['%s'] * len(names))})", [st.values[c] for c in names])
                elif st.kind in ("update", "key_update"):
                    sets = ", ".join(f"{my_quote(c)} = %s" for c in names)
                    cur.execute(f"UPDATE {table} SET {sets} WHERE id = %s", [*(st.values[c] for c in names), st.key])  # noqa: S608 - identifiers by my_quote, values as parameters
                elif st.kind == "delete":
                    cur.execute(f"DELETE FROM {table} WHERE id = %s", [st.key])  # noqa: S608 - identifiers by my_quote, values as parameters
                elif st.kind == "truncate":
                    cur.execute(f"TRUNCATE TABLE {table}")
            conn.commit()

    #: A captured table outside the plan: one row committed after the workload tells when a sink caught up.
    MARK_TABLE = "t_mark"

    def mark(self) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO {my_quote(self.MARK_TABLE)} VALUES (1)")  # noqa: S608 - a constant name
            conn.commit()

    def read(self, table: str, columns: Sequence[str], selects: Sequence[str]) -> Rows:
        """``SELECT selects`` of `table` as ``{id: {column: PyMySQL value}}`` (UTC session)."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT {', '.join(selects)} FROM {my_quote(table)}")  # noqa: S608 - identifiers by my_quote, values as parameters
            return {int(row[0]): dict(zip(columns, row, strict=True)) for row in cur.fetchall()}
