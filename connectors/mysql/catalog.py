"""What the MySQL source asks the server on an ordinary connection (PyMySQL).

Start-up checks (`check_server`), the binlog files it has (`binary_logs`), the current
write position, table selection by glob, and the catalog types the binlog cannot tell
(MariaDB's JSON is a LONGTEXT with a ``json_valid`` check; UUID and INET6 are BINARY(16)).
Every check fails with one line naming the setting and saying what to do. SQL never
formats identifiers or values into text: parameters only.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pymysql

from cdc.errors import SourceSetupError, SourceUnreachableError, first_line


@dataclass(frozen=True, slots=True)
class Server:
    """What the checks learnt about the server."""

    version: str
    mariadb: bool
    server_id: int
    #: Every transaction has a GTID (always on MariaDB; MySQL with ``gtid_mode=ON``).
    gtids: bool = True
    #: Whether the user may take FLUSH TABLES WITH READ LOCK (RELOAD or ALL PRIVILEGES on *.*).
    reload: bool = False
    #: ``lower_case_table_names`` is not 0: the server compares table and database names case-insensitively.
    names_ignore_case: bool = False


#: Server error numbers of a refused login: access denied (to the server or the database),
#: host not allowed, an authentication plugin the client lacks, an expired password, a
#: server requiring TLS. Retrying cannot heal them.
LOGIN_REFUSED = frozenset({1044, 1045, 1130, 1251, 1698, 1820, 1862, 3159})


def connect(host: str, port: int, user: str, password: str, timeout: int, where: str,
            database: str | None = None) -> pymysql.connections.Connection[Any]:
    """An autocommit utf8mb4 connection; one line if none: a refused login (`LOGIN_REFUSED`)
    is a `SourceSetupError` (never retried, also for a job that streamed before), anything
    else (refused connection, unknown host, timeout, a restarting server) `SourceUnreachableError`."""
    try:
        return pymysql.connect(host=host, port=port, user=user, password=password, connect_timeout=timeout,
                               autocommit=True, charset="utf8mb4", database=database, read_timeout=600)
    except pymysql.Error as err:
        if err.args and err.args[0] in LOGIN_REFUSED:
            raise SourceSetupError(f"{where}: cannot connect: {first_line(err)}; fix the user or password of the "
                                   "job's source, or its grants on the server") from err
        raise SourceUnreachableError(f"{where}: cannot connect: {first_line(err)}") from err


def _variables(cur: Any, names: Sequence[str]) -> dict[str, str]:
    cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN (" + ",".join(["%s"] * len(names)) + ")", list(names))
    return {str(k).lower(): str(v) for k, v in cur.fetchall()}


_PRIVILEGE = re.compile(r"^GRANT (.+?) ON (\S+) TO ", re.IGNORECASE)


def _grants(cur: Any) -> tuple[set[str], set[str]]:
    """The user's global privileges and those on any database (upper case)."""
    cur.execute("SHOW GRANTS")
    global_privs: set[str] = set()
    any_db: set[str] = set()
    for (line,) in cur.fetchall():
        m = _PRIVILEGE.match(str(line))
        if m is None:
            continue
        privs = {p.strip().upper() for p in m.group(1).split(",")}
        (global_privs if m.group(2) == "*.*" else any_db).update(privs)
    return global_privs, any_db


def check_server(conn: pymysql.connections.Connection[Any], where: str, server_id: int,
                 reload: bool = False) -> Server:
    """Every setting the binlog source needs; raise `SourceSetupError` naming the first one missing.

    `reload`: the job's snapshot must take ``FLUSH TABLES WITH READ LOCK`` (``snapshot_method:
    flush``), so RELOAD is required. Otherwise `Server.reload` says whether it is granted
    (``snapshot_method: auto`` on MySQL falls back to the watermark method without it).
    """
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION(), @@server_id")
        row = cur.fetchone()
        assert row is not None
        version, own_id = str(row[0]), int(row[1])
        mariadb = "mariadb" in version.lower()
        v = _variables(cur, ["log_bin", "binlog_format", "binlog_row_image", "binlog_row_metadata",
                             "log_bin_compress", "binlog_transaction_compression", "gtid_mode",
                             "lower_case_table_names"])
        if v.get("log_bin", "OFF").upper() not in ("ON", "1"):
            raise SourceSetupError(f"{where}: the binary log is off (log_bin=OFF); start the server with "
                                   "--log-bin (a restart is needed)")
        fmt = v.get("binlog_format", "").upper()
        if fmt != "ROW":
            raise SourceSetupError(f"{where}: binlog_format is {fmt or 'unset'}, not ROW; run "
                                   "SET GLOBAL binlog_format = 'ROW' and set it in the server's config")
        image = v.get("binlog_row_image", "").upper()
        if image != "FULL":
            raise SourceSetupError(f"{where}: binlog_row_image is {image or 'unset'}, not FULL; run "
                                   "SET GLOBAL binlog_row_image = 'FULL' and set it in the server's config")
        metadata = v.get("binlog_row_metadata", "").upper()
        if metadata != "FULL":
            raise SourceSetupError(
                f"{where}: binlog_row_metadata is {metadata or 'not supported'}, not FULL (without it column "
                "names, ENUM/SET values and signedness are missing from the binlog); run SET GLOBAL "
                "binlog_row_metadata = 'FULL' (MariaDB >= 10.5, MySQL >= 8.0.14)"
            )
        if v.get("log_bin_compress", "OFF").upper() in ("ON", "1"):
            raise SourceSetupError(f"{where}: log_bin_compress is ON: compressed binlog events cannot be decoded; "
                                   "run SET GLOBAL log_bin_compress = OFF")
        if v.get("binlog_transaction_compression", "OFF").upper() in ("ON", "1"):
            raise SourceSetupError(f"{where}: binlog_transaction_compression is ON: compressed transactions cannot "
                                   "be decoded; run SET GLOBAL binlog_transaction_compression = OFF")
        if own_id == server_id:
            raise SourceSetupError(f"{where}: server_id {server_id} is the server's own server_id; give the job a "
                                   "server_id no server or replica of this topology uses")
        global_privs, any_db = _grants(cur)
        if "ALL PRIVILEGES" not in global_privs:
            monitor = "BINLOG MONITOR" if mariadb else "REPLICATION CLIENT"
            needed = ["REPLICATION SLAVE", monitor]
            alternatives = {"BINLOG MONITOR": {"BINLOG MONITOR", "REPLICATION CLIENT", "SUPER"},
                            "REPLICATION CLIENT": {"REPLICATION CLIENT", "SUPER"},
                            "REPLICATION SLAVE": {"REPLICATION SLAVE", "REPLICATION REPLICA"}}
            missing = [p for p in needed if not alternatives[p] & global_privs]
            if "SELECT" not in global_privs | any_db and "ALL PRIVILEGES" not in any_db:
                missing.append("SELECT")
            if reload and "RELOAD" not in global_privs:
                missing.append("RELOAD")  # FLUSH TABLES WITH READ LOCK for the snapshot
            if missing:
                raise SourceSetupError(
                    f"{where}: the user lacks {', '.join(missing)}; run GRANT {', '.join(missing)} ON *.* TO "
                    "the job's user (SELECT may be limited to the captured databases)"
                )
    return Server(version, mariadb, own_id, gtids=mariadb or v.get("gtid_mode", "OFF").upper() == "ON",
                  reload=bool({"RELOAD", "ALL PRIVILEGES"} & global_privs),
                  names_ignore_case=v.get("lower_case_table_names", "0") != "0")


def binary_logs(conn: pymysql.connections.Connection[Any]) -> list[str]:
    """The binlog files the server still has, oldest first."""
    with conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        return [str(r[0]) for r in cur.fetchall()]


def current_position(conn: pymysql.connections.Connection[Any]) -> tuple[str, int]:
    """Where the server writes next: ``SHOW BINARY LOG STATUS`` (MySQL 8.2+) or ``SHOW MASTER STATUS``."""
    return binlog_status(conn)[:2]


def binlog_status(conn: pymysql.connections.Connection[Any]) -> tuple[str, int, str]:
    """Where the server writes next, and MySQL's ``Executed_Gtid_Set`` there (MariaDB: "")."""
    with conn.cursor() as cur:
        try:
            cur.execute("SHOW BINARY LOG STATUS")
        except pymysql.err.ProgrammingError:
            cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    if row is None:
        raise SourceSetupError("the server reports no binary log position; is log_bin on?")
    return str(row[0]), int(row[1]), str(row[4] or "") if len(row) > 4 else ""


def gtid_state_at(conn: pymysql.connections.Connection[Any], file: str, offset: int) -> str | None:
    """MariaDB: the GTID state (last GTID per domain) at binlog (`file`, `offset`), an event
    boundary (``BINLOG_GTID_POS``); None if the server cannot tell."""
    with conn.cursor() as cur:
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, offset))
        row = cur.fetchone()
    return None if row is None or row[0] is None else str(row[0])


def select_tables(conn: pymysql.connections.Connection[Any], include: Sequence[str], exclude: Sequence[str],
                  where: str) -> list[tuple[str, str]]:
    """Base tables whose ``database.table`` matches an include glob and no exclude glob."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') "
            "ORDER BY table_schema, table_name"
        )
        rows = [(str(s), str(t)) for s, t in cur.fetchall()]
    return [
        (s, t) for s, t in rows
        if any(fnmatch.fnmatchcase(f"{s}.{t}", p) for p in include)
        and not any(fnmatch.fnmatchcase(f"{s}.{t}", p) for p in exclude)
    ]


@dataclass(frozen=True, slots=True)
class CatalogColumn:
    """One column as information_schema describes it."""

    name: str
    data_type: str  # lower case: int, decimal, json, uuid, inet6, longtext, ...
    column_type: str  # with length, unsigned, enum/set values
    precision: int
    scale: int
    fsp: int
    charset: str | None
    max_length: int
    key: bool
    json_checked: bool  # MariaDB: LONGTEXT with a json_valid() check (how it stores JSON)


def table_columns(conn: pymysql.connections.Connection[Any], database: str, table: str) -> list[CatalogColumn]:
    """The table's columns in order, with the JSON checks MariaDB keeps."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, LOWER(data_type), LOWER(column_type), numeric_precision, numeric_scale, "
            "datetime_precision, character_set_name, character_maximum_length, column_key "
            "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (database, table),
        )
        rows = cur.fetchall()
        checked: set[str] = set()
        try:
            cur.execute(
                "SELECT check_clause FROM information_schema.check_constraints "
                "WHERE constraint_schema = %s AND table_name = %s",
                (database, table),
            )
            for (clause,) in cur.fetchall():
                m = re.fullmatch(r"\s*json_valid\(`((?:[^`]|``)+)`\)\s*", str(clause), re.IGNORECASE)
                if m:
                    checked.add(m.group(1).replace("``", "`"))
        except pymysql.Error:
            pass  # no check_constraints view (old servers): JSON shows as longtext
    return [
        CatalogColumn(str(r[0]), str(r[1]), str(r[2]), int(r[3] or 0), int(r[4] or 0), int(r[5] or 0),
                      None if r[6] is None else str(r[6]), int(r[7] or 0), str(r[8]) == "PRI", str(r[0]) in checked)
        for r in rows
    ]
