"""Every MariaDB type round-trips exactly through the binlog and the snapshot (docs/mysql.md).

The same rows are inserted before the daemon starts (read by the initial snapshot, op=r)
and while it streams (op=c), and updated once more (op=u); each event's JSON must equal
the documented rendering of the inserted value, the same for both paths. The same rows,
snapshot and streamed, reach a Delta mirror, a DuckDB file and a PostgreSQL target, each
read back with the engine's own reader and compared with MariaDB's own ``SELECT``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import TableNotFoundError
from psycopg import sql

from integration import mysql
from integration.conftest import MariaDatabase, PgDatabase
from integration.daemon import Daemons, JobFiles, envelopes, mysql_job_config, wait_until, write_config

ZOO_DDL = """CREATE TABLE zoo (
  id int unsigned PRIMARY KEY, ti tinyint, tu tinyint unsigned, si smallint, su smallint unsigned,
  mi mediumint, mu mediumint unsigned, i int, bu bigint unsigned, bi bigint,
  d decimal(30,10), d65 decimal(65,30), f float, db double,
  dt datetime(6), dt0 datetime, ts timestamp(6) NULL, dd date, tm time(6), y year,
  b bit(10), b64 bit(64), e enum('small','médium','large'), s set('x','y','z'),
  j json, txt text, vc varchar(20), ch char(5), bl blob, bn binary(4), vb varbinary(10),
  uu uuid, i6 inet6, i4 inet4
) CHARACTER SET utf8mb4"""

COLUMNS = ("id, ti, tu, si, su, mi, mu, i, bu, bi, d, d65, f, db, dt, dt0, ts, dd, tm, y, b, b64, e, s, j, txt, "
           "vc, ch, bl, bn, vb, uu, i6, i4")

#: (SQL values, expected event JSON of the row) per row.
ROWS: list[tuple[str, dict[str, Any]]] = [
    (
        "(1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 18446744073709551615, "
        "-9223372036854775808, -12345678901234567890.0123456789, "
        "12345678901234567890123456789012345.123456789012345678901234567891, 0.1, 0.1, "
        "'2024-02-29 23:59:59.000001', '9999-12-31 23:59:59', '2038-01-19 03:14:07.999999', '1000-01-01', "
        "'-838:59:59.000000', 2155, b'1000000001', "
        "b'1111111111111111111111111111111111111111111111111111111111111111', "
        "'médium', 'x,z', '{\"a\": [1, 2.50, \"é\"], \"n\": 12345678901234567890}', 'Zürich ✓ 😀', "
        "'back\\\\slash', 'ab', "
        "x'00ff10', x'6100', x'000100', '123e4567-e89b-12d3-a456-426614174000', '2001:db8::1', '192.168.1.5')",
        {"id": 1, "ti": -128, "tu": 255, "si": -32768, "su": 65535, "mi": -8388608, "mu": 16777215,
         "i": -2147483648, "bu": 18446744073709551615, "bi": -9223372036854775808,
         "d": "-12345678901234567890.0123456789",
         "d65": "12345678901234567890123456789012345.123456789012345678901234567891", "f": 0.1, "db": 0.1,
         "dt": "2024-02-29T23:59:59.000001", "dt0": "9999-12-31T23:59:59", "ts": "2038-01-19T03:14:07.999999Z",
         "dd": "1000-01-01", "tm": "-838:59:59", "y": 2155, "b": 513, "b64": 18446744073709551615, "e": "médium",
         "s": ["x", "z"], "j": '{"a": [1, 2.50, "é"], "n": 12345678901234567890}', "txt": "Zürich ✓ 😀",
         "vc": "back\\slash", "ch": "ab", "bl": "AP8Q", "bn": "YQAAAA==", "vb": "AAEA",
         "uu": "123e4567-e89b-12d3-a456-426614174000", "i6": "2001:db8::1",
         "i4": "192.168.1.5"},
    ),
    (
        "(2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3.40282e38, 5e-324, '1970-01-01 00:00:00', '2000-01-01 00:00:00', "
        "'1970-01-01 00:00:01', '2000-02-29', '-00:00:00.5', 0, b'0', b'0', 'small', '', '[]', '', '', '', "
        "'', x'00000000', '', 'ffffffff-ffff-4fff-bfff-ffffffffffff', '::ffff:1.2.3.4', '0.0.0.0')",
        {"id": 2, "ti": 0, "tu": 0, "si": 0, "su": 0, "mi": 0, "mu": 0, "i": 0, "bu": 0, "bi": 0,
         "d": "0.0000000000", "d65": "0.000000000000000000000000000000", "f": 3.40282e38, "db": 5e-324,
         "dt": "1970-01-01T00:00:00", "dt0": "2000-01-01T00:00:00", "ts": "1970-01-01T00:00:01Z",
         "dd": "2000-02-29", "tm": "-00:00:00.5", "y": 0, "b": 0, "b64": 0, "e": "small", "s": [], "j": "[]",
         "txt": "", "vc": "", "ch": "", "bl": "", "bn": "AAAAAA==", "vb": "",
         "uu": "ffffffff-ffff-4fff-bfff-ffffffffffff", "i6": "::ffff:1.2.3.4", "i4": "0.0.0.0"},
    ),
    (
        "(3" + ", NULL" * 33 + ")",
        {"id": 3, **{c.strip(): None for c in COLUMNS.split(",")[1:]}},
    ),
    (
        "(4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0.5, 1, -1.17549435e-38, 1.7976931348623157e308, '2024-01-01 00:00:00.5', "
        "'2024-01-01 00:00:00', '2024-06-30 12:00:00.000100', '2024-01-01', '12:34:56.789', 1901, b'1', "
        "b'1000000000000000000000000000000000000000000000000000000000000000', 'large', 'x,y,z', '{}', "
        "'a\\tb\\nc\"', 'x', 'abcde', x'', x'01020304', x'ff', '00000000-0000-0000-0000-000000000000', '::', "
        "'10.0.0.0')",
        {"id": 4, "ti": 1, "tu": 1, "si": 1, "su": 1, "mi": 1, "mu": 1, "i": 1, "bu": 1, "bi": 1,
         "d": "0.5000000000", "d65": "1.000000000000000000000000000000", "f": -1.1754944e-38,
         "db": 1.7976931348623157e308, "dt": "2024-01-01T00:00:00.5", "dt0": "2024-01-01T00:00:00",
         "ts": "2024-06-30T12:00:00.0001Z", "dd": "2024-01-01", "tm": "12:34:56.789", "y": 1901, "b": 1,
         "b64": 9223372036854775808, "e": "large", "s": ["x", "y", "z"], "j": "{}", "txt": 'a\tb\nc"',
         "vc": "x", "ch": "abcde", "bl": "", "bn": "AQIDBA==", "vb": "/w==",
         "uu": "00000000-0000-0000-0000-000000000000", "i6": "::", "i4": "10.0.0.0"},
    ),
]


def inserts() -> list[str]:
    return [f"INSERT INTO zoo ({COLUMNS}) VALUES {values}" for values, _ in ROWS]  # noqa: S608 - test constants


def test_type_zoo_round_trips_exactly_through_snapshot_and_stream(
    mariadb: MariaDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """Snapshot (op=r), insert (op=c) and update (op=u) of every type give the documented JSON."""
    db = mariadb
    mysql.execute(db, ZOO_DDL, "SET SESSION sql_mode = 'STRICT_ALL_TABLES'")
    mysql.execute(db, *inserts())
    files = mysql.make_job(db, tmp_path, snapshot="initial")
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    mysql.execute(db, "DELETE FROM zoo")
    mysql.execute(db, *inserts())
    mysql.execute(db, "UPDATE zoo SET id = id + 100")
    events = lambda: [e for e in envelopes(files.sink) if e["source"]["table"] == "zoo"]  # noqa: E731
    n = len(ROWS)
    wait_until(lambda: len(events()) >= 4 * n, 30, "every zoo event")
    assert daemon.terminate(10.0) == 0
    got = events()
    assert [e["op"] for e in got] == ["r"] * n + ["d"] * n + ["c"] * n + ["u"] * n
    expected = [row for _, row in ROWS]
    assert [e["after"] for e in got[:n]] == expected, "snapshot"
    assert [e["before"] for e in got[n:2 * n]] == expected, "delete"
    assert [e["after"] for e in got[2 * n:3 * n]] == expected, "insert"
    assert [e["before"] for e in got[3 * n:]] == expected, "update before"
    assert [e["after"] for e in got[3 * n:]] == [{**row, "id": row["id"] + 100} for row in expected], "update after"
    assert [e["source"]["snapshot"] for e in got] == ["true"] * n + ["false"] * 3 * n


def test_zero_dates_arrive_as_null_with_a_warning(mariadb: MariaDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """Zero DATE/DATETIME/TIMESTAMP values (sql_mode without NO_ZERO_DATE) are NULL, each counted in a warning."""
    db = mariadb
    mysql.execute(db, "CREATE TABLE zd (id int PRIMARY KEY, dd date, dt datetime(6), ts timestamp(6) NULL, n int)")
    files = mysql.make_job(db, tmp_path)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    mysql.execute(db, "SET SESSION sql_mode = ''",
                  "INSERT INTO zd VALUES (1, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', 7)")
    events = lambda: [e for e in envelopes(files.sink) if e["source"]["table"] == "zd"]  # noqa: E731
    wait_until(lambda: len(events()) == 1, 30, "the zd insert")
    assert daemon.terminate(10.0) == 0
    assert events()[0]["after"] == {"id": 1, "dd": None, "dt": None, "ts": None, "n": 7}
    warnings = [e for e in daemon.events(all_runs=True) if e.get("event") == "zero_date_as_null"]
    assert {w["column"] for w in warnings} >= {"dd", "dt"}



def _float32(v: Any) -> Any:
    return None if v is None else struct.pack("<f", v)


def _time_text(v: timedelta | str | None) -> str | None:
    """MySQL's TIME as docs/delta.md says a Delta table holds it: ``[-]HH:MM:SS.ffffff`` (text as is)."""
    if v is None or isinstance(v, str):
        return v
    us = abs(v // timedelta(microseconds=1))
    sign = "-" if v < timedelta(0) else ""
    seconds, fraction = divmod(us, 1_000_000)
    return f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{fraction:06d}"


def _interval(v: Any) -> timedelta | None:
    """DuckDB's INTERVAL as Arrow gives it (months, days, nanoseconds) as a `timedelta`."""
    if v is None:
        return None
    assert v.months == 0 and v.days == 0, v
    return timedelta(microseconds=v.nanoseconds // 1000)


#: How each engine's value of a zoo column compares with MariaDB's: both sides are mapped
#: through these before comparing (FLOAT as its 4 bytes; MySQL TIME as Delta's text).
_SAME: dict[str, Callable[[Any], Any]] = {"f": _float32}


def mariadb_zoo(db: MariaDatabase) -> list[dict[str, Any]]:
    """The zoo as MariaDB's ``SELECT`` returns it (UTC session), in the engines' Python types."""
    with mysql.connect(db) as conn, conn.cursor() as cur:
        # FLOAT as DOUBLE: MariaDB prints FLOAT with six digits
        exact = COLUMNS.replace(" f,", " CAST(f AS DOUBLE) AS f,")
        cur.execute(f"SELECT {exact} FROM zoo ORDER BY id")  # noqa: S608 - test constants
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    labels = ("x", "y", "z")
    for row in rows:
        for bits in ("b", "b64"):
            row[bits] = None if row[bits] is None else int.from_bytes(row[bits], "big")
        if row["ts"] is not None:
            row["ts"] = row["ts"].replace(tzinfo=UTC)
        if row["s"] is not None:
            chosen = row["s"] if isinstance(row["s"], set) else set(row["s"].split(",")) - {""}
            row["s"] = [x for x in labels if x in chosen]
        row["d65"] = None if row["d65"] is None else format(row["d65"], "f")
        for text in ("j", "txt", "vc", "ch", "e", "uu", "i6", "i4"):
            if isinstance(row[text], bytes):
                row[text] = row[text].decode()
    return rows


def assert_same(engine: str, got: list[dict[str, Any]], expected: list[dict[str, Any]],
                same: dict[str, Callable[[Any], Any]]) -> None:
    assert [r["id"] for r in got] == [r["id"] for r in expected], engine
    for g, e in zip(got, expected, strict=True):
        for name in e:
            conv = same.get(name, lambda v: v)
            assert conv(g[name]) == conv(e[name]), f"{engine}: row {e['id']} column {name}: {g[name]!r} != {e[name]!r}"


def delta_zoo(uri: str) -> list[dict[str, Any]]:
    """The Delta mirror through deltalake's own query engine; [] while it does not exist."""
    try:
        table = DeltaTable(uri)
    except TableNotFoundError:
        return []
    found = QueryBuilder().register("zoo", table).execute(f"SELECT {COLUMNS} FROM zoo ORDER BY id").read_all()  # noqa: S608
    return pa.table(found).to_pylist()


def test_type_zoo_reaches_delta_duckdb_and_a_postgres_target_exactly(
    mariadb: MariaDatabase, target: PgDatabase, tmp_path: Path, daemons: Daemons
) -> None:
    """Every MariaDB type, snapshot and streamed, is stored exactly in Delta, DuckDB and a PostgreSQL target
    (TINYINT, every UNSIGNED up to 18446744073709551615, BIT, TIME to ±838:59:59, INET4 as its text)."""
    db = mariadb
    mysql.execute(db, ZOO_DDL, "SET SESSION sql_mode = 'STRICT_ALL_TABLES'")
    mysql.execute(db, *inserts())
    files = JobFiles(tmp_path / "job")
    duck = tmp_path / "zoo.duckdb"
    lake = tmp_path / "lake" / db.dbname / "zoo"
    document = mysql_job_config(files, host=db.host, port=db.port, user=db.user, password=db.password,
                                database=db.dbname, snapshot="initial")
    document["jobs"][0]["sinks"] = [
        {"type": "delta", "path": str(tmp_path / "lake"), "mode": "mirror"},
        {"type": "duckdb", "path": str(duck)},
        {"type": "postgres", "dsn": target.dsn},
    ]
    write_config(files, document)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started", timeout=60)
    mysql.execute(db, f"INSERT INTO zoo ({COLUMNS}) SELECT id + 100, {COLUMNS.split(', ', 1)[1]} FROM zoo")  # noqa: S608
    expected = mariadb_zoo(db)
    n = len(expected)
    relation = sql.Identifier(db.dbname, "zoo")

    def target_rows() -> int:
        try:
            return int(target.query(sql.SQL("SELECT count(*) FROM {}").format(relation))[0][0])
        except psycopg.errors.UndefinedTable:
            return 0

    try:
        wait_until(lambda: target_rows() == n and len(delta_zoo(str(lake))) == n, 20, "every sink to hold the zoo")
    except AssertionError:
        daemon.terminate(20.0)
        raise AssertionError(f"{target_rows()} {len(delta_zoo(str(lake)))} of {n}\n{daemon.stderr()[-6000:]}") from None
    assert daemon.terminate(10.0) == 0, daemon.tail()

    assert_same("delta", delta_zoo(str(lake)), expected, {**_SAME, "tm": _time_text})
    con = duckdb.connect(str(duck), read_only=True)
    try:
        found = con.sql(f"SELECT {COLUMNS} FROM {db.dbname}.zoo ORDER BY id").to_arrow_table().to_pylist()  # noqa: S608
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'zoo'").fetchall())
    finally:
        con.close()
    assert_same("duckdb", [{**r, "tm": _interval(r["tm"])} for r in found], expected, _SAME)
    assert [types[c] for c in ("ti", "tu", "su", "mu", "bu", "b64", "tm")] == [
        "TINYINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UBIGINT", "INTERVAL"]
    with psycopg.connect(target.dsn) as conn:
        cur = conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY id").format(sql.SQL(COLUMNS), relation))
        names = [d.name for d in cur.description or ()]
        pg_found = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    assert_same("postgres", pg_found, expected, _SAME)
    assert all(isinstance(r["bu"], Decimal) for r in pg_found if r["bu"] is not None)
    assert {r["tm"] for r in pg_found} >= {timedelta(hours=-838, minutes=-59, seconds=-59)}
    assert any(isinstance(r["ts"], datetime) for r in pg_found)


#: SET and ENUM labels the catalog cannot show (information_schema is utf8mb3: a 4-byte
#: character is '?' there), quotes, backslashes, a comma inside an ENUM label, an empty SET member.
LABELS_DDL = """CREATE TABLE labels (
  id int PRIMARY KEY,
  s set('a', '😀', 'it''s', 'b\\\\s', 'x"y', '𝄞 clef'),
  e enum('x,y', '😀', 'q''t', 'b\\\\s', '', 'ü'),
  se set('', 'z')
) CHARACTER SET utf8mb4"""

#: (SQL values after the id, expected event JSON of the row without the id) per row.
LABEL_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("'a,😀', '😀', 'z'", {"s": ["a", "😀"], "e": "😀", "se": ["z"]}),
    ("'𝄞 clef,b\\\\s,it''s,x\"y,a', 'x,y', ',z'",
     {"s": ["a", "it's", "b\\s", 'x"y', "𝄞 clef"], "e": "x,y", "se": ["", "z"]}),
    ("'', 'q''t', ''", {"s": [], "e": "q't", "se": []}),
    ("'b\\\\s', 'b\\\\s', NULL", {"s": ["b\\s"], "e": "b\\s", "se": None}),
    ("'😀,𝄞 clef', '', ','", {"s": ["😀", "𝄞 clef"], "e": "", "se": [""]}),
    ("NULL, NULL, 'z,'", {"s": None, "e": None, "se": ["", "z"]}),
]


def label_inserts(first_id: int) -> list[str]:
    """The label rows as INSERTs (the same SQL text each time: ``INSERT ... SELECT`` would copy a
    SET through its text, which loses an empty member chosen first), ids from `first_id`."""
    return [f"INSERT INTO labels VALUES ({first_id + n}, {values})"  # noqa: S608 - test constants
            for n, (values, _) in enumerate(LABEL_ROWS)]


@pytest.mark.parametrize("method", ["consistent", "watermark"])
def test_set_and_enum_labels_with_any_character_are_the_same_in_snapshot_and_stream(
    mariadb: MariaDatabase, tmp_path: Path, daemons: Daemons, method: str
) -> None:
    """SET/ENUM labels with 4-byte characters, quotes, backslashes, commas (ENUM) and an empty SET member:
    the snapshot (op=r, both MariaDB methods) gives the stream's value (op=c), labels in definition order."""
    db = mariadb
    mysql.execute(db, LABELS_DDL, "SET SESSION sql_mode = 'STRICT_ALL_TABLES'")
    mysql.execute(db, *label_inserts(1))
    files = mysql.make_job(db, tmp_path, snapshot="initial", snapshot_method=method)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    mysql.execute(db, *label_inserts(101))
    events = lambda: [e for e in envelopes(files.sink) if e["source"]["table"] == "labels"]  # noqa: E731
    n = len(LABEL_ROWS)
    wait_until(lambda: len(events()) >= 2 * n, 30, "every labels event")
    assert daemon.terminate(10.0) == 0, daemon.tail()
    got = events()
    assert [e["op"] for e in got] == ["r"] * n + ["c"] * n
    rows = [row for _, row in LABEL_ROWS]
    assert [e["after"] for e in got[:n]] == [{"id": 1 + k, **row} for k, row in enumerate(rows)], "snapshot"
    assert [e["after"] for e in got[n:]] == [{"id": 101 + k, **row} for k, row in enumerate(rows)], "stream"
