"""The type families the differential workload writes: per family a column type, its edge
values and a random value, for PostgreSQL and for MySQL/MariaDB.

PostgreSQL values are the text literals PostgreSQL parses (cast to the column type in the
statement), so infinities, ``24:00:00``, BC and far dates are written as users write them.
MySQL values are PyMySQL parameters (str, int, bytes). Every edge value appears in every
seed (the generator writes each at least once); random values fill the rest.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

Gen = Callable[[random.Random], object]

#: Characters of random text: ASCII, accents, an emoji, quotes, backslash, control characters.
TEXT_CHARS = string.ascii_letters + string.digits + " ,{}\"'\\\n\t\x01éü€😀漢"


def rand_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(TEXT_CHARS) for _ in range(n))


def incompressible(rng: random.Random, n: int) -> str:
    """`n` random letters: out-of-line TOAST once a row passes 2 kB (the column is STORAGE EXTERNAL)."""
    return "".join(rng.choices(string.ascii_letters + string.digits, k=n))


@dataclass(frozen=True)
class PgFamily:
    """A column ``c_<name> <sql_type>`` of the PostgreSQL workload.

    `kind` names the documented mapping (see `compare`): int, float4, float8, numeric (p <= 38,
    decimal128 in Arrow), numeric_text (no typmod: text in Arrow), bool, text (every type whose
    Arrow form is its text), bytea, date, time, timestamp, timestamptz; with `array` the column is
    ``<sql_type>[]`` of that element kind. `full_ok`: the type has an equality operator, which
    the native subscriber needs to apply UPDATE/DELETE under REPLICA IDENTITY FULL.
    """

    name: str
    sql_type: str
    kind: str
    edges: tuple[str, ...]
    rand: Gen
    array: bool = False
    full_ok: bool = True

    @property
    def column(self) -> str:
        return f"c_{self.name}"

    @property
    def column_type(self) -> str:
        return self.sql_type + ("[]" if self.array else "")


def _int(bits: int) -> Gen:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return lambda r: str(r.randint(low, high) if r.random() < 0.3 else r.randint(-99, 999))


def _decimal(p: int, s: int) -> Gen:
    def gen(r: random.Random) -> str:
        digits = r.randint(1, p)
        unscaled = r.randint(-(10**digits) + 1, 10**digits - 1)
        return str(Decimal(unscaled).scaleb(-s))
    return gen


def _numeric_text(r: random.Random) -> str:
    whole = r.randint(0, 10 ** r.randint(1, 45))
    frac = "".join(r.choice(string.digits) for _ in range(r.randint(0, 42)))
    return f"{r.choice('-+')}{whole}" + (f".{frac}" if frac else "")


def _date(r: random.Random) -> str:
    if r.random() < 0.05:  # PostgreSQL's dates begin in 4713 BC
        return f"{r.randint(1, 4712):04d}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} BC"
    return f"{r.randint(1, 9999):04d}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"


def _clock(r: random.Random) -> str:
    fraction = f"{r.randint(0, 999999):06d}"[: r.randint(1, 6)]
    return f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}.{fraction}"


def _timestamp(r: random.Random) -> str:
    return f"{_date(r).removesuffix(' BC')} {_clock(r)}"


def _tz(r: random.Random) -> str:
    return r.choice(["+00", "+05:30", "-08", "+14", "-15:59", "+01"])


def _uuid(r: random.Random) -> str:
    """A random version-4 UUID (MariaDB refuses other variants)."""
    h = f"{r.getrandbits(128):032x}"
    h = h[:12] + "4" + h[13:16] + "89ab"[int(h[16], 16) % 4] + h[17:]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _pg_array(element: Callable[[random.Random], str]) -> Gen:
    """A random one-dimensional array literal of 0-3 elements, each double-quoted (``"0044-03-15 BC"``)."""
    return lambda r: "{" + ",".join(f'"{element(r)}"' for _ in range(r.randint(0, 3))) + "}"


def _pg_text_literal(text: str) -> str:
    """An element of a text[] literal: double-quoted with backslash escapes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


PG_FAMILIES: tuple[PgFamily, ...] = (
    PgFamily("int2", "int2", "int", ("0", "-32768", "32767"), _int(16)),
    PgFamily("int4", "int4", "int", ("-2147483648", "2147483647"), _int(32)),
    PgFamily("int8", "int8", "int", ("-9223372036854775808", "9223372036854775807"), _int(64)),
    PgFamily("numeric", "numeric", "numeric_text",
             ("NaN", "Infinity", "-Infinity", "-0.0000000001",
              "123456789012345678901234567890.000000000000000000000000000000000000001"), _numeric_text),
    PgFamily("num_10_2", "numeric(10,2)", "numeric", ("NaN", "-99999999.99", "0.01", "0"), _decimal(10, 2)),
    PgFamily("num_38_10", "numeric(38,10)", "numeric",
             ("1234567890123456789012345678.0123456789", "-9999999999999999999999999999.9999999999", "NaN"),
             _decimal(38, 10)),
    PgFamily("float4", "float4", "float4", ("NaN", "Infinity", "-Infinity", "3.4028235e+38", "1e-45", "-0", "0.1"),
             lambda r: repr(r.uniform(-1e6, 1e6))),
    PgFamily("float8", "float8", "float8",
             ("NaN", "Infinity", "-Infinity", "5e-324", "1.7976931348623157e+308", "-0", "0.30000000000000004"),
             lambda r: repr(r.uniform(-1e12, 1e12))),
    PgFamily("bool", "bool", "bool", ("true", "false"), lambda r: r.choice(["true", "false"])),
    PgFamily("text", "text", "text", ("", "NULL", "😀 emoji", 'a "q" \\ b', "tab\there\nnew\x01"),
             lambda r: rand_text(r, r.randint(0, 40))),
    PgFamily("varchar", "varchar(20)", "text", ("", "ünïcödé😀"), lambda r: rand_text(r, r.randint(0, 20))),
    PgFamily("bytea", "bytea", "bytea", ("\\x", "\\x00", "\\x00ff10"),
             lambda r: "\\x" + r.randbytes(r.randint(0, 64)).hex()),
    PgFamily("uuid", "uuid", "text", ("00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"),
             _uuid),
    PgFamily("json", "json", "text", ('{"b": 1, "a": [1.0, 2e5, 12345678901234567890.000]}', "[]", '"😀"'),
             lambda r: f'{{"k": {r.randint(-9, 10**20)}, "s": "{r.choice("abc")}"}}', full_ok=False),
    PgFamily("jsonb", "jsonb", "text", ('{"b": 1, "a": [1.0, 2e5]}', "null", '{"ü": "\\"q\\""}'),
             lambda r: f'{{"k": {r.randint(-9, 10**20)}, "e": "😀"}}'),
    PgFamily("date", "date", "date",
             ("infinity", "-infinity", "0044-03-15 BC", "4714-11-24 BC", "9999-12-31", "0001-01-01",
              "262142-12-31", "262143-01-01", "300000-01-01", "5874897-12-31"), _date),
    PgFamily("time", "time", "time", ("24:00:00", "00:00:00", "23:59:59.999999"), _clock),
    PgFamily("timetz", "timetz", "text", ("24:00:00-15:59", "00:00:00+00", "03:04:05.123456+05:30"),
             lambda r: _clock(r) + _tz(r)),
    PgFamily("ts", "timestamp", "timestamp",
             ("infinity", "-infinity", "0044-03-15 12:00:00 BC", "294276-12-31 23:59:59.999999",
              "262142-12-31 23:59:59.999999", "262143-01-01 00:00:00", "270000-06-15 12:00:00",
              "1970-01-01 00:00:00", "2038-01-19 03:14:07.999999"), _timestamp),
    PgFamily("tstz", "timestamptz", "timestamptz",
             ("infinity", "-infinity", "4714-11-24 00:00:00+00 BC", "294276-12-31 23:59:59.999999+00",
              "262143-01-01 01:00:00+02", "270000-06-15 12:00:00+00", "2026-01-02 03:04:05.5+02"),
             lambda r: _timestamp(r) + _tz(r)),
    PgFamily("interval", "interval", "text",
             ("0", "-00:00:00.000001", "1 year 2 mons 3 days 04:05:06.789",
              "178956970 years 7 months 2147483647 days 2562047788:00:54.775807"),
             lambda r: f"{r.randint(-99, 99)} days {r.randint(0, 99)}:{r.randint(0, 59)}:{r.randint(0, 59)}."
                       f"{r.randint(0, 999999)}"),
    PgFamily("int4_arr", "int4", "int", ("{}", "{1,NULL,3}", "{{1,2},{3,4}}", "{-2147483648}"),
             lambda r: "{" + ",".join(str(r.randint(-9, 9)) for _ in range(r.randint(0, 4))) + "}", array=True),
    PgFamily("text_arr", "text", "text", ('{"",NULL,"a,b","😀","NULL"}', "{}"),
             lambda r: "{" + ",".join(_pg_text_literal(rand_text(r, 5)) for _ in range(r.randint(0, 3))) + "}",
             array=True),
    PgFamily("date_arr", "date", "date",
             ("{infinity,-infinity,NULL}", '{"5874897-12-31","4714-11-24 BC","262143-01-01","262142-12-31"}',
              "{{infinity,2026-01-02},{-infinity,NULL}}"), _pg_array(_date), array=True),
    PgFamily("ts_arr", "timestamp", "timestamp",
             ('{infinity,-infinity,"294276-12-31 23:59:59.999999","270000-06-15 12:00:00"}',
              '{"0044-03-15 12:00:00 BC",NULL}'), _pg_array(_timestamp), array=True),
    PgFamily("tstz_arr", "timestamptz", "timestamptz",
             ('{infinity,-infinity,"2026-01-02 03:04:05.5+02","262143-01-01 00:00:00+00"}',
              '{"4714-11-24 00:00:00+00 BC",NULL}'), _pg_array(lambda r: _timestamp(r) + _tz(r)), array=True),
    PgFamily("time_arr", "time", "time", ("{24:00:00,00:00:00,NULL}", '{"23:59:59.999999"}'), _pg_array(_clock),
             array=True),
    PgFamily("mood", "mood", "text", ("sad", "with \"quote\", comma", "ünï"), lambda r: r.choice(["sad", "ok"])),
    PgFamily("inet", "inet", "text", ("::1", "192.168.1.5/24", "2001:db8::1/64"),
             lambda r: ".".join(str(r.randint(0, 255)) for _ in range(4))),
    PgFamily("range", "int4range", "text", ("empty", "(,)", "[-2147483648,0)"),
             lambda r: f"[{r.randint(-9, 0)},{r.randint(1, 9)})"),
    PgFamily("point", "point", "text", ("(1e+300,-1e-300)", "(0,0)"),
             lambda r: f"({r.randint(-99, 99)},{r.uniform(-1, 1)!r})", full_ok=False),
    PgFamily("varbit", "varbit(16)", "text", ("", "1010101010101010"),
             lambda r: "".join(r.choice("01") for _ in range(r.randint(0, 16)))),
    PgFamily("bit4", "bit(4)", "text", ("0000", "1111"), lambda r: "".join(r.choice("01") for _ in range(4))),
    PgFamily("oid", "oid", "int", ("0", "4294967295"), lambda r: str(r.randint(0, 2**32 - 1))),
    PgFamily("char", "char(5)", "text", ("", "ab", "ü😀"), lambda r: rand_text(r, r.randint(0, 5)).rstrip(" ")),
    PgFamily("macaddr", "macaddr", "text", ("08:00:2b:01:02:03", "ff:ff:ff:ff:ff:ff"),
             lambda r: ":".join(f"{r.randint(0, 255):02x}" for _ in range(6))),
    PgFamily("cidr", "cidr", "text", ("10.0.0.0/8", "::/0"), lambda r: f"10.{r.randint(0, 255)}.0.0/16"),
    PgFamily("money", "money", "text", ("0", "-12.5", "92233720368547758.07"),
             lambda r: f"{r.randint(-10**6, 10**6)}.{r.randint(0, 99):02d}"),
    PgFamily("tsvector", "tsvector", "text", ("a fat cat", "", "'with space':2A"),
             lambda r: " ".join(r.choice(["cat", "dog", "ü", "x:1"]) for _ in range(r.randint(0, 3)))),
    PgFamily("xml", "xml", "text", ('<a b="1">x &amp; y</a>', "text only"), lambda r: f"<r>{r.randint(0, 99)}</r>",
             full_ok=False),
    PgFamily("box", "box", "text", ("(1,1),(0,0)", "(0,0),(0,0)"),
             lambda r: f"({r.randint(0, 9)},{r.randint(0, 9)}),({r.randint(-9, 0)},{r.randint(-9, 0)})", full_ok=False),
    PgFamily("price", "price", "numeric", ("NaN", "99999999.99"), _decimal(10, 2)),
    PgFamily("pair", "pair", "text", ('(1,"a b")', "(,)", '(-1,"with ""quote""")'),
             lambda r: f'({r.randint(-9, 9)},"{r.choice("abc")}")'),
    PgFamily("multirange", "int4multirange", "text", ("{[1,3), [5,7)}", "{}"),
             lambda r: f"{{[{r.randint(-9, 0)},{r.randint(1, 9)})}}"),
    PgFamily("daterange", "daterange", "text", ("[2026-01-01,2026-02-01)", "empty", "(,)"),
             lambda r: f"[2026-01-{r.randint(1, 9):02d},2026-02-01)"),
)

#: Types the PostgreSQL workload creates before its tables.
PG_TYPES_DDL = ("CREATE TYPE mood AS ENUM ('sad', 'ok', 'with \"quote\", comma', 'ünï'); "
                "CREATE DOMAIN price AS numeric(10,2); CREATE TYPE pair AS (a int, b text)")


@dataclass(frozen=True)
class MyFamily:
    """A column ``c_<name> <sql_type>`` of the MySQL/MariaDB workload.

    `kind` names the documented mapping of docs/mysql.md (see `compare`): int, uint, decimal
    (p <= 38), decimal_text (p > 38), float, double, bit, year, date, datetime, timestamp, time,
    text, binary (with `size` for BINARY(n)), set (with `labels`), inet4.
    """

    name: str
    sql_type: str
    kind: str
    edges: tuple[object, ...]
    rand: Gen
    size: int = 0
    labels: tuple[str, ...] = ()

    @property
    def column(self) -> str:
        return f"c_{self.name}"


def _my_int(lo: int, hi: int) -> Gen:
    return lambda r: r.randint(lo, hi) if r.random() < 0.3 else r.randint(max(lo, -99), min(hi, 999))


def _my_decimal(p: int, s: int) -> Gen:
    def gen(r: random.Random) -> str:
        return str(Decimal(r.randint(-(10 ** (p - 1)), 10 ** (p - 1))).scaleb(-s))
    return gen


def _my_datetime(r: random.Random) -> str:
    return f"{r.randint(1000, 9999)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} {_clock(r)}"


MY_FAMILIES: tuple[MyFamily, ...] = (
    MyFamily("tiny", "TINYINT", "int", (-128, 127), _my_int(-128, 127)),
    MyFamily("utiny", "TINYINT UNSIGNED", "uint", (0, 255), _my_int(0, 255)),
    MyFamily("small", "SMALLINT", "int", (-32768, 32767), _my_int(-32768, 32767)),
    MyFamily("usmall", "SMALLINT UNSIGNED", "uint", (0, 65535), _my_int(0, 65535)),
    MyFamily("medium", "MEDIUMINT", "int", (-8388608, 8388607), _my_int(-8388608, 8388607)),
    MyFamily("umedium", "MEDIUMINT UNSIGNED", "uint", (0, 16777215), _my_int(0, 16777215)),
    MyFamily("uint", "INT UNSIGNED", "uint", (0, 4294967295), _my_int(0, 4294967295)),
    MyFamily("bigint", "BIGINT", "int", (-(2**63), 2**63 - 1), _my_int(-(2**63), 2**63 - 1)),
    MyFamily("ubigint", "BIGINT UNSIGNED", "uint", (0, 2**64 - 1), _my_int(0, 2**64 - 1)),
    MyFamily("dec", "DECIMAL(10,2)", "decimal", ("-99999999.99", "0.00"), _my_decimal(10, 2)),
    MyFamily("dec65", "DECIMAL(65,30)", "decimal_text",
             ("-" + "9" * 35 + "." + "9" * 30, "0." + "0" * 29 + "1"), _my_decimal(65, 30)),
    MyFamily("float", "FLOAT", "float", (0.1, -3.4028234e38, 1.17549435e-38), lambda r: round(r.uniform(-1e6, 1e6), 2)),
    MyFamily("double", "DOUBLE", "double", (5e-324, 1.7976931348623157e308, -0.0), lambda r: r.uniform(-1e12, 1e12)),
    MyFamily("bit", "BIT(64)", "bit", (0, 2**64 - 1, 1), lambda r: r.getrandbits(64)),
    MyFamily("year", "YEAR", "year", (1901, 2155, 0), lambda r: r.randint(1901, 2155)),
    MyFamily("date", "DATE", "date", ("1000-01-01", "9999-12-31"),
             lambda r: f"{r.randint(1000, 9999)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"),
    MyFamily("dt", "DATETIME(6)", "datetime", ("1000-01-01 00:00:00", "9999-12-31 23:59:59.999999"), _my_datetime),
    MyFamily("ts", "TIMESTAMP(6) NULL", "timestamp", ("1970-01-01 00:00:01", "2038-01-19 03:14:07.999999"),
             lambda r: f"{r.randint(1971, 2037)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} {_clock(r)}"),
    MyFamily("time", "TIME(6)", "time", ("-838:59:59", "838:59:59", "-00:00:00.5", "00:00:00"),
             lambda r: f"{r.choice(['', '-'])}{r.randint(0, 838)}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}."
                       f"{r.randint(0, 999999):06d}"),
    MyFamily("char", "CHAR(10)", "text", ("", "ü😀"), lambda r: rand_text(r, r.randint(0, 10)).rstrip(" ")),
    MyFamily("varchar", "VARCHAR(40)", "text", ("", "😀 emoji", 'a "q" \\ b'),
             lambda r: rand_text(r, r.randint(0, 40))),
    MyFamily("text", "LONGTEXT", "text", ("",), lambda r: rand_text(r, r.randint(0, 200))),
    MyFamily("bin", "BINARY(4)", "binary", (b"a\x00\x00\x00", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"),
             lambda r: r.randbytes(4), size=4),
    MyFamily("varbin", "VARBINARY(64)", "binary", (b"", b"\x00"), lambda r: r.randbytes(r.randint(0, 64))),
    MyFamily("blob", "BLOB", "binary", (b"",), lambda r: r.randbytes(r.randint(0, 300))),
    MyFamily("enum", "ENUM('x','y','😀')", "text", ("x", "😀"), lambda r: r.choice(["x", "y", "😀"])),
    MyFamily("set", "SET('a','b','cd','😀')", "set", ("", "a,b,cd,😀"),
             lambda r: ",".join(x for x in ("a", "b", "cd", "😀") if r.random() < 0.5), labels=("a", "b", "cd", "😀")),
    MyFamily("json", "JSON", "text", ('{"a": [1, 2.50]}', "[]"), lambda r: f'{{"k": {r.randint(-9, 99)}}}'),
    MyFamily("uuid", "UUID", "text", ("00000000-0000-0000-0000-000000000000",), _uuid),
    MyFamily("inet6", "INET6", "text", ("::", "2001:db8::1", "::ffff:1.2.3.4"),
             lambda r: f"2001:db8::{r.randint(0, 65535):x}"),
    MyFamily("inet4", "INET4", "inet4", ("0.0.0.0", "255.255.255.255"),
             lambda r: ".".join(str(r.randint(0, 255)) for _ in range(4))),
)
