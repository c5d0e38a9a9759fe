"""Server checks, table selection, publications and slots for the PostgreSQL source.

Runs on an ordinary (non-replication) connection before streaming starts. Every user
mistake becomes one actionable line; nothing is created until every check passed.
All SQL is composed with `psycopg.sql`, never by string formatting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from cdc.errors import (
    MissingTableError,
    SlotInUseError,
    SlotInvalidatedError,
    SourceError,
    SourceSetupError,
    SourceUnreachableError,
    first_line,
)

#: Session settings the source pins: pgoutput prints values under the walsender's settings.
SESSION_OPTIONS = "-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3 -c intervalstyle=postgres"


#: What libpq and the server say (in English) when a login is refused: retrying cannot help.
#: A connection error carries no SQLSTATE, so the text is all there is.
_LOGIN_REFUSED = re.compile(
    r"password authentication failed|authentication failed for user|no password supplied"
    r"|no pg_hba\.conf entry|pg_hba\.conf rejects connection|role \".*\" does not exist"
    r"|is not permitted to log in|does not have CONNECT privilege|permission denied for database",
    re.IGNORECASE,
)
#: ... and when the TLS handshake or the server's certificate is refused.
_TLS_REFUSED = re.compile(
    r"certificate|server does not support SSL|does not match host name|alert unknown ca|alert handshake failure"
    r"|channel binding|SSL is not enabled|unsupported protocol|wrong version number",
    re.IGNORECASE,
)


def connect_error(what: str, err: psycopg.OperationalError,
                  otherwise: type[SourceError] = SourceUnreachableError) -> SourceError:
    """The error for a connection attempt (`what`, e.g. ``job J: postgres h:p/db: cannot connect``)
    that failed with `err`.

    A refused login (wrong password or user, pg_hba.conf) or a refused TLS handshake
    (certificate verification, sslmode the server cannot serve) is a `SourceSetupError`:
    it never heals by retrying, also for a job that streamed before, so the job stops with
    one line saying what to fix. Anything else (refused connection, unknown host, timeout,
    a server starting or shutting down, too many clients) is `otherwise`: retryable.
    """
    text = str(err)
    if _LOGIN_REFUSED.search(text):
        return SourceSetupError(f"{what}: {first_line(err)}; fix the user or password of the job's source, "
                                "or the server's pg_hba.conf")
    if _TLS_REFUSED.search(text):
        return SourceSetupError(f"{what}: {first_line(err)}; fix the job's TLS settings (sslmode, sslrootcert, "
                                "sslcert) or the server's certificate")
    return otherwise(f"{what}: {first_line(err)}")


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    plugin: str
    database: str
    active_pid: int | None
    confirmed_flush_lsn: int | None
    wal_status: str | None
    #: True when `ensure_slot` created the slot in this call (it holds nothing older).
    created: bool = False


def _glob_chars(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


async def check_server(conn: psycopg.AsyncConnection[tuple[object, ...]], where: str) -> None:
    """wal_level must be logical and the role must be allowed to replicate."""
    cur = await conn.execute("SELECT current_setting('wal_level'), r.rolreplication, r.rolsuper, current_user "
                             "FROM pg_roles r WHERE r.rolname = current_user")
    row = await cur.fetchone()
    assert row is not None
    wal_level, can_replicate, is_super, user = row
    if wal_level != "logical":
        raise SourceSetupError(
            f"{where}: wal_level is '{wal_level}'; logical replication needs wal_level = logical "
            "(set it in postgresql.conf or ALTER SYSTEM SET wal_level = logical, then restart the server)"
        )
    if not (can_replicate or is_super):
        raise SourceSetupError(
            f"{where}: role {user} may not replicate; grant it with ALTER ROLE {user} WITH REPLICATION"
        )


async def select_tables(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    include: Sequence[str],
    exclude: Sequence[str],
    where: str,
) -> list[tuple[str, str]]:
    """The ``(schema, table)`` pairs the job captures, in name order.

    Patterns are ``schema.table`` globs. A pattern without glob characters that matches
    no table is a `MissingTableError`, as is a selection that matches nothing.
    """
    cur = await conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
        "ORDER BY 1, 2"
    )
    tables = [(str(s), str(t)) for s, t in await cur.fetchall()]
    names = {f"{s}.{t}": (s, t) for s, t in tables}
    for pattern in include:
        if not _glob_chars(pattern) and pattern not in names:
            raise MissingTableError(
                f"{where}: table {pattern} named in tables.include does not exist "
                "(create it, or fix the name: patterns are schema.table)"
            )
    chosen = [
        pair
        for name, pair in names.items()
        if any(fnmatch.fnmatchcase(name, p) for p in include)
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    ]
    if not chosen:
        raise MissingTableError(
            f"{where}: tables.include {list(include)} matches no table (exclude: {list(exclude)})"
        )
    return chosen


async def ensure_publication(
    conn: psycopg.AsyncConnection[tuple[object, ...]], name: str, tables: Sequence[tuple[str, str]], where: str
) -> None:
    """Create the publication for `tables`, or add the tables it lacks.

    Partitioned tables publish through their root (``publish_via_partition_root``), so
    changes to partitions arrive as the parent table.
    """
    cur = await conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (name,))
    row = await cur.fetchone()
    idents = sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)
    try:
        if row is None:
            await conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)").format(
                    sql.Identifier(name), idents
                )
            )
            return
        if row[0]:
            return  # FOR ALL TABLES publishes everything already
        cur = await conn.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                                 (name,))
        have = {(str(s), str(t)) for s, t in await cur.fetchall()}
        missing = [pair for pair in tables if pair not in have]
        if missing:
            await conn.execute(
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(s, t) for s, t in missing)
                )
            )
    except psycopg.errors.InsufficientPrivilege as err:
        raise SourceSetupError(
            f"{where}: cannot create or alter publication {name}: {first_line(err)} "
            "(the role needs CREATE on the database and ownership of the tables, or create the publication "
            "yourself)"
        ) from err


async def check_select(
    conn: psycopg.AsyncConnection[tuple[object, ...]], tables: Sequence[tuple[str, str]], where: str
) -> None:
    """The role must be allowed to read every table a snapshot will copy (called before any slot
    exists, so a missing grant costs nothing to fix).

    SELECT on the table, or on each of its columns, is enough. Raises `SourceSetupError`
    naming the first table it cannot read and the GRANT that fixes it.
    """
    if not tables:
        return
    cur = await conn.execute(
        "SELECT t.schema_name, t.table_name, current_user FROM unnest(%s::text[], %s::text[]) AS t(schema_name, "
        "table_name) JOIN pg_namespace n ON n.nspname = t.schema_name "
        "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name "
        "WHERE NOT has_table_privilege(c.oid, 'SELECT') AND EXISTS (SELECT FROM pg_attribute a "
        "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "AND NOT has_column_privilege(c.oid, a.attnum, 'SELECT')) ORDER BY 1, 2",
        ([s for s, _ in tables], [t for _, t in tables]),
    )
    denied = await cur.fetchall()
    if denied:
        schema, table, user = (str(v) for v in denied[0])
        ident = sql.Identifier(schema, table).as_string(conn)
        role = sql.Identifier(user).as_string(conn)
        more = f" (and {len(denied) - 1} more table(s))" if len(denied) > 1 else ""
        raise SourceSetupError(
            f"{where}: role {user} may not read table {schema}.{table}{more}, which the snapshot copies; "
            f"grant it with GRANT SELECT ON {ident} TO {role}, or leave the table out of tables.include"
        )


async def primary_keys(
    conn: psycopg.AsyncConnection[tuple[object, ...]], tables: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, ...]]:
    """The primary-key columns of each table (in key order); tables without one are absent."""
    cur = await conn.execute(
        "SELECT n.nspname, c.relname, array_agg(a.attname::text ORDER BY k.ord) "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
        "WHERE i.indisprimary GROUP BY 1, 2"
    )
    wanted = set(tables)
    out: dict[tuple[str, str], tuple[str, ...]] = {}
    for schema, table, cols in await cur.fetchall():
        if (schema, table) in wanted and isinstance(cols, list):
            out[(str(schema), str(table))] = tuple(str(c) for c in cols)
    return out


async def slot_info(conn: psycopg.AsyncConnection[tuple[object, ...]], slot: str) -> SlotInfo | None:
    cur = await conn.execute(
        "SELECT slot_name, plugin, database, active_pid, "
        "(confirmed_flush_lsn - '0/0'::pg_lsn)::bigint, wal_status "
        "FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    name, plugin, database, pid, flushed, wal_status = row
    return SlotInfo(
        str(name), str(plugin), str(database), pid if isinstance(pid, int) else None,
        flushed if isinstance(flushed, int) else None, str(wal_status) if wal_status is not None else None,
    )


async def ensure_slot(
    conn: psycopg.AsyncConnection[tuple[object, ...]], slot: str, database: str, where: str,
    *, wait_s: float = 15.0, create: bool = True,
) -> SlotInfo | None:
    """Create the logical slot (pgoutput) if missing and `create`; check it belongs to this database.

    Returns None when the slot is missing and `create` is false (it was dropped under a job
    whose sinks hold data: a new slot would silently skip the changes in between).

    A slot held by another process is waited for up to `wait_s` (a killed daemon's
    walsender takes a moment to notice), then a `SlotInUseError`.
    """
    info = await slot_info(conn, slot)
    created = False
    if info is None and not create:
        return None
    if info is None:
        try:
            await conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            created = True
        except psycopg.errors.DuplicateObject:
            pass  # created concurrently: inspect below
        except psycopg.errors.ConfigurationLimitExceeded as err:
            raise SourceSetupError(f"{where}: cannot create slot {slot}: {first_line(err)}") from err
        info = await slot_info(conn, slot)
        assert info is not None
    if info.plugin != "pgoutput" or info.database != database:
        raise SourceSetupError(
            f"{where}: replication slot {slot} exists for plugin {info.plugin} on database {info.database}; "
            f"cdc needs a pgoutput slot on {database}: choose another slot name"
        )
    if info.wal_status == "lost":
        raise SlotInvalidatedError(
            f"{where}: replication slot {slot} was invalidated (the WAL it needed is gone); "
            "drop it and start the job again with a new snapshot"
        )
    deadline = asyncio.get_running_loop().time() + wait_s
    while info.active_pid is not None:
        if asyncio.get_running_loop().time() >= deadline:
            raise SlotInUseError(
                f"{where}: replication slot {slot} is in use by server process {info.active_pid} "
                "(another cdc daemon or replication client?); stop it or choose another slot name"
            )
        await asyncio.sleep(0.2)
        refreshed = await slot_info(conn, slot)
        if refreshed is None:
            raise SlotInvalidatedError(f"{where}: replication slot {slot} was dropped while starting")
        info = refreshed
    return dataclasses.replace(info, created=created)
