"""The type zoo: a table with every PostgreSQL type docs/types.md maps, streamed as documented.

One table holds a scalar column and an array column of every type (built-in, enum,
domain, composite, range, multirange, geometric, and the citext/hstore/ltree extension
types when this PostgreSQL build has them; PostGIS is not installed here, see
docs/types.md), plus a stored generated column. Rows carry the edge values: NULLs, NULL
array elements, empty and two-dimensional arrays, NaN and the infinities, 38-digit
numerics, BC and far-future dates, ``24:00:00``, unicode and control characters, a
1 MiB bytea.

`test_type_zoo_streams_every_type_as_documented` runs the real daemon into the file sink
and checks every value of every event against the documented rendering of what
PostgreSQL itself returns for that row (``col::text``, computed again here, independently
of connectors/postgres/types.py), and against PostgreSQL's own JSON (``to_json``) and
ISO-8601 interval output where those coincide with the documented form.

`test_type_zoo_python_and_arrow_values` decodes the same rows from a pgoutput slot read
with SQL, builds the codec with the catalog that `TYPE_CATALOG_SQL` reads, and checks the
Python and Arrow values (Arrow temporal values against PostgreSQL's ``extract(epoch)``).
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from cdc.events import Column
from connectors.postgres.catalog import SESSION_OPTIONS
from connectors.postgres.copytext import CopyTextParser
from connectors.postgres.pgoutput import Insert, Relation, decode_message
from connectors.postgres.snapshot import parse_csv_block
from connectors.postgres.types import TYPE_CATALOG_SQL, PgRowCodec, PgTypeCatalog
from integration.conftest import PgDatabase
from integration.daemon import Daemons, JobFiles, envelopes, job_config, run_cdc, wait_until, write_config

CATCH_UP_S = 15.0
ROW_IDS = (1, 2, 3, 4, 5, 6)  # 1: every column NULL; 2..6: the values below
MIB = 1 << 20
BIG_BYTEA = (
    "(SELECT decode(string_agg(lpad(to_hex((i * 7919::int8) % 256), 2, '0'), ''), 'hex') "
    "FROM generate_series(1, 1048576) AS i)"
)


@dataclass(frozen=True)
class Spec:
    """A zoo column pair: ``c_<name> <sql_type>`` and ``a_<name> <sql_type>[]``."""

    name: str
    sql_type: str
    #: The documented rendering: int, float, numeric, bool, bytea, date, timestamp,
    #: timestamptz, time, timetz, interval, uuid, or text (the text form as a string).
    kind: str
    #: SQL expressions of the values of rows 2..6.
    values: tuple[str, str, str, str, str]
    extension: str | None = None
    #: PostgreSQL's own to_json(value) is the documented rendering too.
    native_json: bool = False


SPECS: tuple[Spec, ...] = (
    Spec("int2", "int2", "int", ("'0'", "'-32768'", "'32767'", "'7'", "'-1'"), native_json=True),
    Spec("int4", "int4", "int", ("'42'", "'-2147483648'", "'2147483647'", "'0'", "'-7'"), native_json=True),
    Spec("int8", "int8", "int", ("'-1'", "'-9223372036854775808'", "'9223372036854775807'", "'1234567890123'", "'0'"),
         native_json=True),
    Spec("oid", "oid", "int", ("'0'", "'4294967295'", "'12345'", "'1'", "'2'")),
    Spec("numeric", "numeric", "numeric",
         ("'12.50'", "'NaN'", "'Infinity'", "'-Infinity'",
          "'-123456789012345678901234567890.000000000000000000000000000000000000001'")),
    Spec("numeric_10_2", "numeric(10,2)", "numeric", ("'12.5'", "'NaN'", "'-99999999.99'", "'0'", "'0.01'")),
    Spec("numeric_38", "numeric(38,0)", "numeric",
         ("'99999999999999999999999999999999999999'", "'-99999999999999999999999999999999999999'", "'0'",
          "'12345678901234567890123456789012345678'", "'-1'")),
    Spec("numeric_38_10", "numeric(38,10)", "numeric",
         ("'1234567890123456789012345678.0123456789'", "'-0.0000000001'", "'NaN'", "'0'", "'1e10'")),
    Spec("float4", "float4", "float", ("'0.1'", "'NaN'", "'Infinity'", "'-Infinity'", "'3.4028235e+38'"),
         native_json=True),
    Spec("float8", "float8", "float",
         ("'0.30000000000000004'", "'NaN'", "'Infinity'", "'-Infinity'", "'5e-324'"), native_json=True),
    Spec("float8_b", "float8", "float",
         ("'1e+300'", "'-2.5e-05'", "'1.7976931348623157e+308'", "'123456789.125'", "'-0.5'"), native_json=True),
    Spec("bool", "bool", "bool", ("true", "false", "true", "false", "true"), native_json=True),
    Spec("text", "text", "text",
         ("'plain'", "E'tab\\there\\nnew \"quoted\" back\\\\slash \\u00fc \\U0001F600 \\x01 \\x7f'", "''",
          "'NULL'", "'{braces}, commas and spaces'"), native_json=True),
    Spec("varchar", "varchar(20)", "text", ("'abc'", "'ünïcödé'", "''", "'a\"b'", "'x'"), native_json=True),
    Spec("char", "char(5)", "text", ("'ab'", "'abcde'", "''", "'ü'", "' '"), native_json=True),
    Spec("name", "name", "text", ("'pg_name'", "'ünï'", "'a b'", "'n'", "'NULL'"), native_json=True),
    Spec("citext", "citext", "text", ("'MixedCase'", "'ÜBER'", "''", "'a,b'", "'c'"), "citext", native_json=True),
    Spec("bytea", "bytea", "bytea", ("'\\x0001ff'", BIG_BYTEA, "''", "'\\x00'", "'abc'")),
    Spec("uuid", "uuid", "uuid",
         ("'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'00000000-0000-0000-0000-000000000000'",
          "'ffffffff-ffff-ffff-ffff-ffffffffffff'", "'123e4567-e89b-12d3-a456-426614174000'",
          "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12'")),
    Spec("json", "json", "text",
         ("'{\"b\": 1, \"a\": [1.0, 2e5, 12345678901234567890.000]}'",
          "E'{\\n  \"x\" : \"\\\\u00fc\\\\n\",\\n \"y\":null}'", "'[]'", "'\"str\"'", "'123.450'")),
    Spec("jsonb", "jsonb", "text",
         ("'{\"b\": 1, \"a\": [1.0, 2e5, 12345678901234567890.000]}'",
          r"""'{"ü": "\"quoted\" \\ back", "z": "\u0001"}'""", "'[]'", "'null'", "'-0.0'")),
    Spec("date", "date", "date",
         ("'2026-01-02'", "'0044-03-15 BC'", "'infinity'", "'-infinity'", "'5874897-12-31'")),
    Spec("time", "time", "time",
         ("'03:04:05.123456'", "'00:00:00'", "'24:00:00'", "'23:59:59.999999'", "'12:00:00.5'")),
    Spec("timetz", "timetz", "timetz",
         ("'03:04:05.123456+02'", "'00:00:00+00'", "'24:00:00-15:59'", "'23:59:59.999999+05:30'", "'12:00:00-08'")),
    Spec("timestamp", "timestamp", "timestamp",
         ("'2026-01-02 03:04:05.123456'", "'0044-03-15 12:00:00 BC'", "'infinity'", "'-infinity'",
          "'294276-12-31 23:59:59.999999'")),
    Spec("timestamptz", "timestamptz", "timestamptz",
         ("'2026-01-02 03:04:05.5+02'", "'0044-03-15 12:00:00+00 BC'", "'infinity'", "'-infinity'",
          "'4714-11-24 00:00:00+00 BC'")),
    Spec("interval", "interval", "interval",
         ("'1 year 2 mons 3 days 04:05:06.789'", "'-1 years -2 mons +3 days -04:05:06'", "'0'",
          "'-00:00:00.000001'", "'178956970 years 7 months 2147483647 days 2562047788:00:54.775807'")),
    Spec("mood", "mood", "text", ("'sad'", "'NULL'", "'with \"quote\", comma'", "'ünï'", "'ok'")),
    Spec("price", "price", "numeric", ("'12.5'", "'NaN'", "'0'", "'99999999.99'", "'1'")),
    Spec("posint", "posint", "int", ("'1'", "'2147483647'", "'5'", "'6'", "'7'")),
    Spec("pair", "pair", "text",
         ("ROW(1, 'a b')", "ROW(NULL, 'with \"quote\"')", "ROW(0, '')", "ROW(-1, NULL)", "ROW(2, 'ü,{}')")),
    Spec("inet", "inet", "text", ("'192.168.1.5/24'", "'::1'", "'10.0.0.1'", "'2001:db8::1/64'", "'0.0.0.0/0'")),
    Spec("cidr", "cidr", "text", ("'10.0.0.0/8'", "'2001:db8::/32'", "'192.168.0.0/16'", "'::/0'", "'1.2.3.4/32'")),
    Spec("macaddr", "macaddr", "text",
         ("'08:00:2b:01:02:03'", "'ff:ff:ff:ff:ff:ff'", "'00:00:00:00:00:00'", "'08002b010204'",
          "'01:02:03:04:05:06'")),
    Spec("macaddr8", "macaddr8", "text",
         ("'08:00:2b:01:02:03:04:05'", "'ff:ff:ff:ff:ff:ff:ff:ff'", "'00:00:00:00:00:00:00:00'",
          "'08:00:2b:01:02:03'", "'01:02:03:04:05:06:07:08'")),
    Spec("money", "money", "text",
         ("1234.56::numeric::money", "(-12.5)::numeric::money", "0::numeric::money", "0.01::numeric::money",
          "1000000::numeric::money")),
    Spec("bit", "bit(4)", "text", ("B'1010'", "B'0000'", "B'1111'", "B'0101'", "B'1000'")),
    Spec("varbit", "varbit(16)", "text", ("B'1'", "B''", "B'1010101010101010'", "B'0'", "B'01'")),
    Spec("tsvector", "tsvector", "text",
         ("'a fat cat'", "'''ü'':1 ''with space'':2A'", "''", "'x'", "'y:1,2'")),
    Spec("tsquery", "tsquery", "text", ("'fat & cat'", "'!a | b'", "'''with space'''", "'x:*'", "'y'")),
    Spec("xml", "xml", "text",
         ("'<a b=\"1\">x &amp; y</a>'", "'<ü/>'", "'text only'", "'<r>{braces},\"q\"</r>'", "''")),
    Spec("int4range", "int4range", "text", ("'[1,5)'", "'empty'", "'(,)'", "'[-2147483648,0)'", "'[3,4]'")),
    Spec("numrange", "numrange", "text", ("'[1.5,2.25]'", "'empty'", "'(,0)'", "'(-1,)'", "'[0,1)'")),
    Spec("tstzrange", "tstzrange", "text",
         ("'[2026-01-01 00:00+00,infinity)'", "'empty'", "'(,)'", "'[2026-01-01,2026-01-02)'",
          "'(-infinity,2026-01-01 00:00:00.5+00]'")),
    Spec("daterange", "daterange", "text",
         ("'[2026-01-01,2026-02-01)'", "'empty'", "'(,)'", "'[0044-03-15 BC,2026-01-01]'", "'[infinity,)'")),
    Spec("int4multirange", "int4multirange", "text",
         ("'{[1,3), [5,7)}'", "'{}'", "'{(,)}'", "'{[1,2]}'", "'{[-5,-1), [10,)}'")),
    Spec("point", "point", "text", ("'(1,2)'", "'(-1.5,2.25)'", "'(0,0)'", "'(1e+300,-1e-300)'", "'(3,4)'")),
    Spec("line", "line", "text", ("'{1,2,3}'", "'{-1,0,0.5}'", "'{0,1,0}'", "'{1,-1,0}'", "'{2,3,4}'")),
    Spec("lseg", "lseg", "text",
         ("'[(0,0),(1,1)]'", "'[(-1,-1),(1,1)]'", "'[(0,0),(0,0)]'", "'[(1.5,2),(3,4)]'", "'[(5,5),(6,6)]'")),
    Spec("box", "box", "text",
         ("'(1,1),(0,0)'", "'(3,3),(2,2)'", "'(0,0),(0,0)'", "'(-1,-1),(-2,-2)'", "'(5,6),(1,2)'")),
    Spec("path", "path", "text",
         ("'((0,0),(1,1),(2,0))'", "'[(0,0),(1,1)]'", "'((0,0))'", "'[(1,2),(3,4),(5,6)]'", "'((1,1),(2,2))'")),
    Spec("polygon", "polygon", "text",
         ("'((0,0),(1,1),(2,0))'", "'((0,0))'", "'((-1,-1),(1,1),(1,-1))'", "'((1,2),(3,4))'", "'((5,5),(6,6))'")),
    Spec("circle", "circle", "text", ("'<(0,0),1>'", "'<(-1.5,2),0.5>'", "'<(0,0),0>'", "'<(1,1),10>'", "'<(2,2),3>'")),
    Spec("hstore", "hstore", "text",
         ("'\"a\"=>\"1\", \"b\"=>NULL'", "''", r"""'"ü"=>"with \"quote\""'""", "'k=>v'", "'\"x,y\"=>\"{}\"'"),
         "hstore"),
    Spec("ltree", "ltree", "text", ("'Top.Science.Astronomy'", "''", "'a'", "'a.b_c.d1'", "'x'"), "ltree"),
)

#: Array columns of special shapes: explicit lower bounds, and texts that need quoting.
SPECIAL_ARRAYS: dict[str, tuple[str, str, str]] = {
    "a_bounds": ("int4[]", "'[0:2]={1,2,3}'", "'[-1:0][1:2]={{1,2},{3,4}}'"),
    "a_quoting": (
        "text[]",
        "ARRAY['', 'NULL', NULL, 'a \"q\" \\ b', '{}', 'a,b', ' lead', 'ü😀', E'tab\\there', 'null']",
        "ARRAY[ARRAY['x\"', NULL], ARRAY['\\\\', '}{']]",
    ),
}


def array_expr(column: str, spec: Spec) -> str:
    """The array of row `id` built from its scalar: 1-D with a NULL, 2-D, one element, 2-D, empty."""
    v = f"substr({column}, 1, 8)" if spec.kind == "bytea" else column
    return (
        f"CASE id WHEN 1 THEN NULL WHEN 2 THEN ARRAY[{v}, NULL, {v}] WHEN 3 THEN ARRAY[ARRAY[{v}, NULL], "
        f"ARRAY[{v}, {v}]] WHEN 4 THEN ARRAY[{v}] WHEN 5 THEN ARRAY[ARRAY[{v}], ARRAY[{v}]] "
        f"ELSE ARRAY[]::{spec.sql_type}[] END"
    )


def connect(pg: PgDatabase) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection printing values under the settings the source pins for its stream.

    Commits wait for their WAL to be flushed (the sandbox's default is off), so SQL
    decoding of a slot sees them at once.
    """
    return psycopg.connect(pg.dsn, autocommit=True, options=f"{SESSION_OPTIONS} -c synchronous_commit=on")


def create_zoo(pg: PgDatabase) -> list[Spec]:
    """The zoo table (and a staging table of its scalars); returns the specs it holds."""
    available = {row[0] for row in pg.query("SELECT name FROM pg_available_extensions")}
    specs = [s for s in SPECS if s.extension is None or s.extension in available]
    with connect(pg) as conn:
        for ext in sorted({s.extension for s in specs if s.extension}):
            conn.execute(sql.SQL("CREATE EXTENSION {}").format(sql.Identifier(ext)))
        conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'NULL', 'with \"quote\", comma', 'ünï')")
        conn.execute("CREATE DOMAIN price AS numeric(10,2) CHECK (VALUE >= 0 OR VALUE = 'NaN')")
        conn.execute("CREATE DOMAIN posint AS int4 CHECK (VALUE > 0)")
        conn.execute("CREATE TYPE pair AS (a int, b text)")
        scalars = ", ".join(f"c_{s.name} {s.sql_type}" for s in specs)
        arrays = ", ".join(f"a_{s.name} {s.sql_type}[]" for s in specs)
        special = ", ".join(f"{name} {t}" for name, (t, _, _) in SPECIAL_ARRAYS.items())
        conn.execute(f"CREATE SCHEMA stage; CREATE TABLE stage.src (id int PRIMARY KEY, {scalars})")
        conn.execute(
            f"CREATE TABLE zoo (id int PRIMARY KEY, {scalars}, {arrays}, {special}, "
            "c_generated int8 GENERATED ALWAYS AS (c_int4::int8 * 2) STORED)"
        )
    return specs


def insert_rows(pg: PgDatabase, specs: list[Spec]) -> None:
    """Rows 1..6 in one transaction: staged scalars, then one INSERT ... SELECT building the arrays."""
    names = [f"c_{s.name}" for s in specs]
    with connect(pg) as conn, conn.transaction():
        conn.execute("INSERT INTO stage.src (id) VALUES (1)")
        for n in range(5):
            values = ", ".join(s.values[n] for s in specs)
            conn.execute(f"INSERT INTO stage.src (id, {', '.join(names)}) VALUES ({n + 2}, {values})")  # noqa: S608
        special_cols = ", ".join(SPECIAL_ARRAYS)
        special_exprs = ", ".join(
            f"CASE id WHEN 2 THEN ({first})::{t} WHEN 3 THEN ({second})::{t} END"
            for t, first, second in SPECIAL_ARRAYS.values()
        )
        arrays = ", ".join(f"a_{s.name}" for s in specs)
        array_exprs = ", ".join(array_expr(f"c_{s.name}", s) for s in specs)
        conn.execute(
            f"INSERT INTO zoo (id, {', '.join(names)}, {arrays}, {special_cols}) "  # noqa: S608 - test constants
            f"SELECT id, {', '.join(names)}, {array_exprs}, {special_exprs} FROM stage.src ORDER BY id"
        )


# -- the documented rendering, written again from docs/types.md --------------------------


def iso(text: str) -> str:
    """docs/types.md: dates and timestamps as ISO-8601, astronomical years, UTC as Z."""
    if text in ("infinity", "-infinity"):
        return text
    bc = text.endswith(" BC")
    if bc:
        text = text[: -len(" BC")]
    day, _, clock = text.partition(" ")
    year_text, month, dom = day.rsplit("-", 2)
    year = 1 - int(year_text) if bc else int(year_text)
    year_iso = f"+{year}" if year > 9999 else f"{year:04d}" if year >= 0 else f"-{-year:04d}"
    out = f"{year_iso}-{month}-{dom}"
    if clock:
        out += "T" + (clock[:-3] + "Z" if clock.endswith("+00") else clock)
    return out


def render(kind: str, text: str) -> Any:
    """The event JSON value (as json.loads gives it) of a value PostgreSQL prints as `text`."""
    if kind == "int":
        return int(text)
    if kind == "float":
        return text if text in ("NaN", "Infinity", "-Infinity") else float(text)
    if kind == "bool":  # 't' (the output function) or 'true' (an array element cast to text)
        return {"t": True, "true": True, "f": False, "false": False}[text]
    if kind == "bytea":
        assert text.startswith("\\x")
        return base64.b64encode(bytes.fromhex(text[2:])).decode()
    if kind in ("date", "timestamp", "timestamptz"):
        return iso(text)
    return text  # numeric (exact decimal string), uuid, time, timetz, and every text form


def nested(value: Any, leaf: Any) -> Any:
    """Apply `leaf` to every non-null element of a (nested) list, keeping the shape."""
    if value is None:
        return None
    if isinstance(value, list):
        return [nested(v, leaf) for v in value]
    return leaf(value)


def element_texts(spec: Spec) -> str:
    """SQL for the texts of an array's elements as JSON (nested lists, null for NULL).

    to_json prints most types' elements with their output function; numbers, booleans,
    dates, timestamps, JSON and composites it renders as JSON, so those are cast to text
    first (which is their output function too, but for bool: 'true' instead of 't').
    """
    if spec.kind in ("text", "time", "timetz", "uuid", "bytea", "interval") and spec.name not in NOT_JSON_STRINGS:
        return f"to_json(a_{spec.name})"
    return f"to_json(a_{spec.name}::text[])"


#: Types of the text kind that to_json does not print as a string of their output.
NOT_JSON_STRINGS = frozenset({"json", "jsonb", "pair", "hstore"})  # hstore has a cast to json


def source_texts(pg: PgDatabase, specs: list[Spec], intervalstyle: str = "postgres") -> dict[int, dict[str, Any]]:
    """Per row id: each scalar column's output function text and each array's elements' texts.

    ``format('%s', v)`` calls the output function (a cast to text may not: char(n) drops
    its padding, inet shows its netmask, bool says 'true').
    """
    columns = [f"CASE WHEN num_nonnulls(c_{s.name}) = 1 THEN format('%s', c_{s.name}) END AS c_{s.name}" for s in specs]
    columns += [f"{element_texts(s)} AS a_{s.name}" for s in specs]
    columns += [f"to_json({name}::text[]) AS {name}" for name in SPECIAL_ARRAYS]
    with connect(pg) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SET intervalstyle = {}").format(sql.Literal(intervalstyle)))
        cur.execute(f"SELECT id, {', '.join(columns)} FROM zoo ORDER BY id")  # noqa: S608 - test constants
        assert cur.description is not None
        names = [d.name for d in cur.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def expected_events(pg: PgDatabase, specs: list[Spec]) -> dict[int, dict[str, Any]]:
    """The documented JSON of every row, computed from PostgreSQL's text of it."""
    texts = source_texts(pg, specs)
    iso_intervals = source_texts(pg, [s for s in specs if s.kind == "interval"], "iso_8601")
    out: dict[int, dict[str, Any]] = {}
    for id_, row in texts.items():
        event: dict[str, Any] = {"id": id_}
        for s in specs:
            if s.kind == "interval":  # PostgreSQL's own ISO-8601 output
                event[f"c_{s.name}"] = iso_intervals[id_][f"c_{s.name}"]
                event[f"a_{s.name}"] = iso_intervals[id_][f"a_{s.name}"]
                continue
            text = row[f"c_{s.name}"]
            event[f"c_{s.name}"] = None if text is None else render(s.kind, text)
            event[f"a_{s.name}"] = nested(row[f"a_{s.name}"], lambda t, k=s.kind: render(k, t))
        event["a_bounds"] = nested(row["a_bounds"], int)
        event["a_quoting"] = row["a_quoting"]
        out[id_] = event
    return out


def native_json(pg: PgDatabase, specs: list[Spec]) -> dict[int, dict[str, Any]]:
    """PostgreSQL's own to_json of the columns where it is the documented rendering."""
    native = [s for s in specs if s.native_json]
    columns = [f"to_json(c_{s.name}) AS c_{s.name}, to_json(a_{s.name}) AS a_{s.name}" for s in native]
    columns += ["to_json(a_bounds) AS a_bounds", "to_json(a_quoting) AS a_quoting"]
    with connect(pg) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, {', '.join(columns)} FROM zoo ORDER BY id")  # noqa: S608 - test constants
        assert cur.description is not None
        names = [d.name for d in cur.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def pg_iso_temporal(pg: PgDatabase) -> dict[int, dict[str, str | None]]:
    """PostgreSQL's own ISO-8601 (to_json) of the finite AD dates and timestamps up to year 9999."""
    with connect(pg) as conn:
        rows = conn.execute(
            "SELECT id, to_json(c_date)#>>'{}', to_json(c_timestamp)#>>'{}', to_json(c_timestamptz)#>>'{}' "
            "FROM zoo ORDER BY id"
        ).fetchall()
    out: dict[int, dict[str, str | None]] = {}
    for id_, *values in rows:
        plain = [v if v is not None and v[:1].isdigit() and "BC" not in v and v[4:5] == "-" else None for v in values]
        out[id_] = dict(zip(("c_date", "c_timestamp", "c_timestamptz"), plain, strict=True))
    return out


# -- the tests --------------------------------------------------------------------------


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    """Every daemon the test starts; any still running at teardown is killed."""
    group = Daemons()
    try:
        yield group
    finally:
        group.stop_all()


def test_type_zoo_streams_every_type_as_documented(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """Every value of every type reaches the file sink in the rendering docs/types.md documents."""
    specs = create_zoo(pg)
    files = JobFiles(tmp_path / "job")
    write_config(files, job_config(files, dsn=pg.dsn, slot=pg.name("slot"), publication=pg.name("pub")))
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    insert_rows(pg, specs)

    def events() -> list[dict[str, Any]]:
        return [e for e in envelopes(files.sink) if e["source"]["table"] == "zoo"]

    wait_until(lambda: len(events()) == len(ROW_IDS), CATCH_UP_S, "the zoo's six inserts in the sink")
    assert daemon.terminate(10.0) == 0
    got = {e["after"]["id"]: e["after"] for e in events()}
    assert all(e["op"] == "c" for e in events())
    expected = expected_events(pg, specs)
    assert sorted(got) == list(ROW_IDS)

    # Stored generated columns are not in pgoutput's rows (before PostgreSQL 18's
    # publish_generated_columns): the event leaves them out. Everything else is there.
    for id_ in ROW_IDS:
        assert "c_generated" not in got[id_]
        assert set(got[id_]) == set(expected[id_]), id_
        mismatches = {
            column: (got[id_][column], want) for column, want in expected[id_].items() if got[id_][column] != want
        }
        assert not mismatches, (
            f"row {id_}: event value != documented rendering (arrays of enums, domains, composites and "
            f"extension types need the source to pass a PgTypeCatalog): {mismatches}"
        )

    # Where PostgreSQL's own JSON is the documented form, the events equal it too.
    for id_, row in native_json(pg, specs).items():
        for column, value in row.items():
            if column != "id":
                assert got[id_][column] == value, (id_, column)
    for id_, row in pg_iso_temporal(pg).items():
        for column, value in row.items():
            if value is not None:
                assert got[id_][column] == value.replace("+00:00", "Z"), (id_, column)

    # The edge values really are in the stream.
    assert len(base64.b64decode(got[3]["c_bytea"])) == MIB
    assert got[3]["c_numeric_38"] == "-" + "9" * 38
    assert got[3]["c_float8"] == "NaN" and got[4]["c_float4"] == "Infinity" and got[5]["c_float8"] == "-Infinity"
    assert got[3]["c_timestamptz"] == "-0043-03-15T12:00:00Z" and got[4]["c_timestamp"] == "infinity"
    assert got[6]["a_int4"] == [] and got[3]["a_int4"] == [[-2147483648, None], [-2147483648, -2147483648]]
    assert got[2]["a_box"] == ["(1,1),(0,0)", None, "(1,1),(0,0)"]
    assert got[3]["c_jsonb"] == '{"z": "\\u0001", "ü": "\\"quoted\\" \\\\ back"}'


def expected_python(kind: str, text: str) -> Any:
    """The documented Python value of a value PostgreSQL prints as `text`."""
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "numeric":
        return Decimal(text)
    if kind == "bool":
        return text in ("t", "true")
    if kind == "bytea":
        return bytes.fromhex(text[2:])
    if kind == "uuid":
        return uuid.UUID(text)
    plain = text[:1].isdigit() and not text.endswith(" BC") and text[4:5] == "-"
    if kind == "date":
        return date.fromisoformat(text) if plain and len(text) == 10 else iso(text)
    if kind in ("timestamp", "timestamptz"):
        return datetime.fromisoformat(text) if plain else iso(text)
    if kind in ("time", "timetz"):
        return text if text.startswith("24:") else time.fromisoformat(text)
    return text


def same(a: Any, b: Any) -> bool:
    """Equality that holds NaN equal to NaN (floats and Decimals), element by element."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, Decimal) and isinstance(b, Decimal) and a.is_nan() and b.is_nan():
        return True
    return type(a) is type(b) and bool(a == b)


ARROW_TYPES: dict[str, Any] = {
    "int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64(), "oid": pa.int64(), "posint": pa.int32(),
    "numeric": pa.string(), "numeric_10_2": pa.decimal128(10, 2), "numeric_38": pa.decimal128(38, 0),
    "numeric_38_10": pa.decimal128(38, 10), "price": pa.decimal128(10, 2), "float4": pa.float32(),
    "float8": pa.float64(), "float8_b": pa.float64(), "bool": pa.bool_(), "bytea": pa.binary(),
    "date": pa.date32(), "time": pa.time64("us"), "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
}


def test_type_zoo_python_and_arrow_values(pg: PgDatabase) -> None:
    """With the catalog TYPE_CATALOG_SQL reads, pgoutput's rows convert to the documented Python and Arrow values."""
    specs = create_zoo(pg)
    slot, publication = pg.name("slot"), pg.name("pub")
    with connect(pg) as conn:
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE zoo").format(sql.Identifier(publication)))
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    insert_rows(pg, specs)
    with connect(pg) as conn:
        catalog = PgTypeCatalog.from_rows(conn.execute(TYPE_CATALOG_SQL).fetchall())
        frames = conn.execute(
            "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
            "'publication_names', %s)", (slot, publication),
        ).fetchall()
        epochs = {
            row[0]: row[1:] for row in conn.execute(
                "SELECT id, extract(epoch FROM c_date) / 86400, extract(epoch FROM c_time) * 1000000, "
                "extract(epoch FROM c_timestamp) * 1000000, extract(epoch FROM c_timestamptz) * 1000000 FROM zoo"
            ).fetchall()
        }
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    messages = [decode_message(bytes(data), 0) for (data,) in frames]
    relation = next(m for m in messages if isinstance(m, Relation))
    rows = [m.new for m in messages if isinstance(m, Insert)]
    assert len(rows) == len(ROW_IDS)
    assert "c_generated" not in [c.name for c in relation.columns]
    columns = [Column(c.name, catalog.name(c.type_oid), c.type_oid, c.type_modifier, c.key) for c in relation.columns]
    assert catalog.name(columns[1].type_oid) == "smallint"
    codec = PgRowCodec(columns, catalog)
    names = [c.name for c in columns]
    texts = source_texts(pg, specs)
    iso_intervals = source_texts(pg, [s for s in specs if s.kind == "interval"], "iso_8601")

    # Python: every value as documented.
    for raw in rows:
        values = dict(zip(names, codec.to_python(raw), strict=True))
        id_ = values["id"]
        for s in specs:
            if s.kind == "interval":
                want_scalar, want_array = iso_intervals[id_][f"c_{s.name}"], iso_intervals[id_][f"a_{s.name}"]
            else:
                text = texts[id_][f"c_{s.name}"]
                want_scalar = None if text is None else expected_python(s.kind, text)
                want_array = nested(texts[id_][f"a_{s.name}"], lambda t, k=s.kind: expected_python(k, t))
            assert same(values[f"c_{s.name}"], want_scalar), (id_, s.name, values[f"c_{s.name}"], want_scalar)
            assert same(values[f"a_{s.name}"], want_array), (id_, s.name, values[f"a_{s.name}"], want_array)
        assert values["a_bounds"] == nested(texts[id_]["a_bounds"], int)

    # Arrow: the documented types; arrays are list<element> with the dimensions flattened.
    schema = codec.arrow_schema()
    arrays = dict(zip(names, codec.to_arrow(rows), strict=True))
    ids = arrays["id"].to_pylist()
    for s in specs:
        want_type = ARROW_TYPES.get(s.name, pa.string())
        assert schema.field(f"c_{s.name}").type == want_type, s.name
        assert schema.field(f"a_{s.name}").type == pa.list_(want_type), s.name
        flat = arrays[f"a_{s.name}"].flatten()
        assert len(flat) == sum(len(_flat(texts[i][f"a_{s.name}"])) for i in ids), s.name
    assert schema.field("a_bounds").type == pa.list_(pa.int32())
    assert arrays["a_bounds"].to_pylist()[ids.index(3)] == [1, 2, 3, 4]
    for i, id_ in enumerate(ids):
        python = dict(zip(names, codec.to_python(rows[i]), strict=True))
        for column in ("c_int2", "c_int8", "c_oid", "c_posint", "c_bool", "c_text", "c_bytea", "c_numeric_38",
                       "c_float8_b", "c_mood", "c_json"):
            assert arrays[column][i].as_py() == python[column], (id_, column)
        for column in ("c_numeric", "c_uuid", "c_timetz", "c_inet", "c_pair", "c_box", "c_int4range"):
            assert arrays[column][i].as_py() == texts[id_][column], (id_, column)  # the text form
        assert arrays["c_interval"][i].as_py() == iso_intervals[id_]["c_interval"], id_
        for column in ("a_int4", "a_text", "a_numeric_38", "a_bool", "a_bytea", "a_varchar"):
            want_list = None if python[column] is None else _flat(python[column])
            assert arrays[column][i].as_py() == want_list, (id_, column)
        for column in ("c_numeric_10_2", "c_price"):  # NaN is null in decimal128
            want = python[column]
            assert arrays[column][i].as_py() == (None if want is None or want.is_nan() else want), (id_, column)
        day, micros_of_day, micros, micros_tz = epochs[id_]
        assert _storage(arrays["c_date"][i]) == _arrow_epoch(day, 31), id_
        assert _storage(arrays["c_time"][i]) == _arrow_epoch(micros_of_day, 63), id_
        assert _storage(arrays["c_timestamp"][i]) == _arrow_epoch(micros, 63), id_
        assert _storage(arrays["c_timestamptz"][i]) == _arrow_epoch(micros_tz, 63), id_


def _flat(value: list[Any] | None) -> list[Any]:
    """The elements of a (nested) list in row-major order, NULL elements included; [] for None."""
    if value is None:
        return []
    return [x for v in value for x in (_flat(v) if isinstance(v, list) else [v])]


def _storage(scalar: Any) -> int | None:
    """The integer an Arrow temporal scalar stores (days or microseconds)."""
    return scalar.value if scalar.is_valid else None  # type: ignore[no-any-return]


def _arrow_epoch(value: Decimal | None, bits: int) -> int | None:
    """PostgreSQL's epoch value as Arrow stores it: infinities at the storage's extremes,
    values past its range null."""
    if value is None:
        return None
    if value.is_infinite():
        return (1 << bits) - 1 if value > 0 else -(1 << bits)
    whole = int(value)
    assert whole == value
    return whole if -(1 << bits) < whole < (1 << bits) - 1 else None


def test_type_zoo_snapshot_matches_the_stream(pg: PgDatabase, tmp_path: Path) -> None:
    """The initial snapshot (COPY CSV read into Arrow blocks) renders every type exactly as the stream does,
    and its columnar conversion equals the row-by-row one."""
    specs = create_zoo(pg)
    insert_rows(pg, specs)
    files = JobFiles(tmp_path / "job")
    document = job_config(files, dsn=pg.dsn, slot=pg.name("slot"), publication=pg.name("pub"))
    document["jobs"][0]["snapshot"] = "initial_only"
    write_config(files, document)
    result = run_cdc("run", files.config, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [e for e in envelopes(files.sink) if e["source"]["table"] == "zoo"]
    assert all(e["op"] == "r" for e in events) and sorted(e["after"]["id"] for e in events) == list(ROW_IDS)
    expected = expected_events(pg, specs)
    for e in events:
        got = e["after"]
        mismatches = {c: (got.get(c), want) for c, want in expected[got["id"]].items() if got.get(c) != want}
        assert not mismatches, (got["id"], mismatches)

    # The columnar path (what Delta and warehouse sinks load) equals the row path on the same rows.
    with connect(pg) as conn:
        catalog = PgTypeCatalog.from_rows(conn.execute(TYPE_CATALOG_SQL).fetchall())
        names = [n for n in (d.name for d in conn.execute("SELECT * FROM zoo LIMIT 0").description or ())
                 if n != "c_generated"]
        types = conn.execute(
            "SELECT attname, atttypid, atttypmod FROM pg_attribute WHERE attrelid = 'zoo'::regclass AND attnum > 0 "
            "AND NOT attisdropped"
        ).fetchall()
        by_name = {n: (oid, mod) for n, oid, mod in types}
        select = sql.SQL("COPY (SELECT {} FROM zoo ORDER BY id) TO STDOUT").format(
            sql.SQL(", ").join(map(sql.Identifier, names)))
        with conn.cursor().copy(sql.Composed([select, sql.SQL(" (FORMAT csv)")])) as copy:
            csv_data = b"".join(bytes(b) for b in copy)
        with conn.cursor().copy(select) as copy:
            text_data = b"".join(bytes(b) for b in copy)
    codec = PgRowCodec([Column(n, catalog.name(by_name[n][0]), by_name[n][0], by_name[n][1]) for n in names], catalog)
    parser = CopyTextParser(len(names), "zoo")
    rows = parser.feed(text_data)
    block = parse_csv_block(csv_data, len(names))
    assert [list(r) for r in zip(*(c.to_pylist() for c in block.columns), strict=True)] == [list(r) for r in rows]
    columnar = codec.columns_to_arrow([c.combine_chunks() for c in block.columns])
    by_rows = codec.to_arrow(rows)
    for name, a, b in zip(names, columnar, by_rows, strict=True):
        assert a.type == b.type and str(a) == str(b), name
