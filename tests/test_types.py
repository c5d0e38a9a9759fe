"""Tests of the PostgreSQL type mapping (docs/types.md): text values to event JSON, Python and Arrow values,
and how the Delta and warehouse sinks store the values their engines cannot hold as Arrow gives them."""

from __future__ import annotations

import base64
import math
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.events import UNCHANGED, Column, RawRow
from connectors.postgres import types as pg
from connectors.postgres.types import PgRowCodec, PgTypeCatalog
from sinks.delta.schema import DATE_MAX, DATE_MIN, TIMESTAMP_MAX, TIMESTAMP_MIN, conform
from sinks.warehouse.schema import DUCKDB, POSTGRES, Change, evolve


def codec(type_oid: int, *, name: str = "v") -> PgRowCodec:
    """A codec of a one-column table of the given type."""
    return PgRowCodec([Column(name, "t", type_oid)])


def as_json(type_oid: int, raw: object) -> object:
    """The JSON value one raw value of a type renders to, parsed back."""
    doc = orjson.loads(codec(type_oid).to_json((raw,)))
    assert list(doc) == ["v"]
    return doc["v"]


def as_python(type_oid: int, raw: object) -> object:
    """The Python value one raw value of a type converts to."""
    (value,) = codec(type_oid).to_python((raw,))
    return value


# ---------------------------------------------------------------- to_json per type


@pytest.mark.parametrize("oid", [pg.INT2, pg.INT4, pg.INT8, pg.OID])
def test_integers_are_json_numbers(oid: int) -> None:
    """Integer types render as JSON numbers, copied from the text form without conversion."""
    assert as_json(oid, b"-9223372036854775808") == -9223372036854775808
    assert codec(oid).to_json((b"42",)) == b'{"v":42}'


@pytest.mark.parametrize("oid", [pg.FLOAT4, pg.FLOAT8])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"1.5", 1.5), (b"-2.25e-05", -2.25e-05), (b"1e+30", 1e30), (b"NaN", "NaN"),
     (b"Infinity", "Infinity"), (b"-Infinity", "-Infinity")],
)
def test_floats_are_numbers_and_specials_are_strings(oid: int, raw: bytes, expected: object) -> None:
    """Floats render as JSON numbers; NaN and the infinities, which JSON lacks, as strings."""
    assert as_json(oid, raw) == expected


def test_bool_is_json_bool() -> None:
    """pgoutput's 't' and 'f' render as true and false."""
    assert as_json(pg.BOOL, b"t") is True
    assert as_json(pg.BOOL, b"f") is False


def test_numeric_is_a_decimal_string() -> None:
    """Numeric keeps its exact digits as a string, trailing zeros included."""
    assert as_json(pg.NUMERIC, b"12.50") == "12.50"
    assert as_json(pg.NUMERIC, b"-123456789012345678901234567890.000000001") == (
        "-123456789012345678901234567890.000000001"
    )
    assert as_json(pg.NUMERIC, b"NaN") == "NaN"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"2026-01-02 03:04:05.123456+00", "2026-01-02T03:04:05.123456Z"),
        (b"2026-01-02 03:04:05+00", "2026-01-02T03:04:05Z"),
        (b"2026-01-02 03:04:05.5+00", "2026-01-02T03:04:05.5Z"),
        (b"infinity", "infinity"),
        (b"-infinity", "-infinity"),
        (b"0044-03-15 12:00:00+00 BC", "-0043-03-15T12:00:00Z"),
        (b"0001-01-01 00:00:00+00 BC", "0000-01-01T00:00:00Z"),
        (b"4714-11-24 00:00:00+00 BC", "-4713-11-24T00:00:00Z"),
        (b"10000-01-01 00:00:00+00", "+10000-01-01T00:00:00Z"),
        (b"294276-12-31 23:59:59.999999+00", "+294276-12-31T23:59:59.999999Z"),
        (b"0099-01-01 00:00:00+00", "0099-01-01T00:00:00Z"),
    ],
)
def test_timestamptz_is_iso_utc(raw: bytes, expected: str) -> None:
    """Timestamptz renders as ISO-8601 UTC with 'Z'; BC and years past 9999 in ISO's expanded astronomical form."""
    assert as_json(pg.TIMESTAMPTZ, raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"2026-01-02 03:04:05.123456", "2026-01-02T03:04:05.123456"),
        (b"2026-01-02 03:04:05", "2026-01-02T03:04:05"),
        (b"-infinity", "-infinity"),
        (b"0044-03-15 12:00:00 BC", "-0043-03-15T12:00:00"),
        (b"10000-01-01 00:00:00", "+10000-01-01T00:00:00"),
    ],
)
def test_timestamp_is_iso_without_zone(raw: bytes, expected: str) -> None:
    """Timestamp renders as ISO-8601 without a zone."""
    assert as_json(pg.TIMESTAMP, raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"2026-01-02", "2026-01-02"), (b"0001-01-01 BC", "0000-01-01"), (b"0044-03-15 BC", "-0043-03-15"),
     (b"5874897-12-31", "+5874897-12-31"), (b"infinity", "infinity"), (b"-infinity", "-infinity")],
)
def test_date_is_iso(raw: bytes, expected: str) -> None:
    """Date renders as 'YYYY-MM-DD'; BC and years past 9999 as ISO's expanded astronomical years."""
    assert as_json(pg.DATE, raw) == expected


def test_bytea_is_base64() -> None:
    """Bytea's hex form renders as base64 of the same bytes."""
    assert as_json(pg.BYTEA, b"\\x0102") == base64.b64encode(b"\x01\x02").decode()
    assert as_json(pg.BYTEA, b"\\x") == ""


def test_uuid_and_json_are_strings() -> None:
    """Uuid renders as its string; json and jsonb as their JSON text inside a string."""
    assert as_json(pg.UUID, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11") == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert as_json(pg.JSONB, b'{"a": [1, "x\\"y"]}') == '{"a": [1, "x\\"y"]}'


@pytest.mark.parametrize(
    "text",
    ['plain', 'say "hi"', "back\\slash", "tab\tnew\nline\r", "nul\x00bell\x07esc\x1b", "emoji 😀 ü €",
     "del\x7f", "\u2028\u2029"],
)
def test_text_is_escaped(text: str) -> None:
    """Text with quotes, backslashes, control characters or non-ASCII reads back exactly."""
    assert as_json(pg.TEXT, text.encode()) == text
    assert as_json(pg.VARCHAR, text.encode()) == text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_any_text_round_trips(text: str) -> None:
    """Any Unicode text renders as a JSON string that parses back to the same text."""
    assert orjson.loads(codec(pg.TEXT).to_json((text.encode(),))) == {"v": text}


@pytest.mark.parametrize("oid", [pg.INT4, pg.FLOAT8, pg.BOOL, pg.NUMERIC, pg.TIMESTAMPTZ, pg.BYTEA, pg.TEXT])
def test_null_and_unchanged(oid: int) -> None:
    """NULL renders as null and an unsent (TOASTed) value as Debezium's placeholder, for every type."""
    assert as_json(oid, None) is None
    assert as_json(oid, UNCHANGED) == "__debezium_unavailable_value"


def test_row_renders_every_column_in_order() -> None:
    """A row of several columns renders as one object with the columns in schema order."""
    c = PgRowCodec([Column("id", "int8", pg.INT8, key=True), Column("name", "text", pg.TEXT),
                    Column("ok", "bool", pg.BOOL), Column("note", "text", pg.TEXT)])
    out = c.to_json((b"7", b"x", b"t", None))
    assert out == b'{"id":7,"name":"x","ok":true,"note":null}'


# ---------------------------------------------------------------- key_json


def test_key_json_has_key_columns_only() -> None:
    """key_json renders the key columns, in schema order, of a full-width row."""
    c = PgRowCodec([Column("a", "text", pg.TEXT), Column("k2", "int4", pg.INT4, key=True),
                    Column("b", "text", pg.TEXT), Column("k1", "text", pg.TEXT, key=True)])
    assert orjson.loads(c.key_json((b"x", b"5", b"y", b"z"))) == {"k2": 5, "k1": "z"}


def test_key_json_is_null_without_a_key() -> None:
    """A table without key columns has a null message key."""
    assert codec(pg.TEXT).key_json((b"x",)) == b"null"


# ---------------------------------------------------------------- to_python


def test_to_python_types() -> None:
    """Each mapped type converts to its documented Python type and value."""
    cols = [
        (pg.INT8, b"-5", -5),
        (pg.FLOAT8, b"1.5", 1.5),
        (pg.NUMERIC, b"12.50", Decimal("12.50")),
        (pg.BOOL, b"t", True),
        (pg.BOOL, b"f", False),
        (pg.TIMESTAMPTZ, b"2026-01-02 03:04:05.123456+00", datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        (pg.TIMESTAMP, b"2026-01-02 03:04:05", datetime(2026, 1, 2, 3, 4, 5)),
        (pg.DATE, b"2026-01-02", date(2026, 1, 2)),
        (pg.BYTEA, b"\\x01ff", b"\x01\xff"),
        (pg.UUID, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
        (pg.TEXT, "ü😀".encode(), "ü😀"),
        (pg.JSONB, b'{"a": 1}', '{"a": 1}'),
    ]
    c = PgRowCodec([Column(f"c{i}", "t", oid) for i, (oid, _, _) in enumerate(cols)])
    values = c.to_python(tuple(raw for _, raw, _ in cols))
    for value, (_, _, expected) in zip(values, cols, strict=True):
        assert type(value) is type(expected)
        assert value == expected
    ts = values[5]
    assert isinstance(ts, datetime)
    assert ts.utcoffset() is not None
    assert str(values[2]) == "12.50"


def test_to_python_keeps_null_unchanged_and_out_of_range_text() -> None:
    """None and UNCHANGED pass through; values Python cannot hold are their JSON strings."""
    c = PgRowCodec([Column("a", "t", pg.INT4), Column("b", "t", pg.TEXT), Column("c", "t", pg.TIMESTAMPTZ),
                    Column("d", "t", pg.DATE), Column("e", "t", pg.TIMESTAMP), Column("f", "t", pg.TIME)])
    assert c.to_python((None, UNCHANGED, b"infinity", b"0044-03-15 BC", b"10000-01-01 00:00:00", b"24:00:00")) == (
        None, UNCHANGED, "infinity", "-0043-03-15", "+10000-01-01T00:00:00", "24:00:00"
    )


# ---------------------------------------------------------------- hostile names, wrong widths


@pytest.mark.parametrize("name", ['a"b\\c', "select", "x'); import os; ('", "new\nline", "ü"])
def test_hostile_column_names_make_valid_json(name: str) -> None:
    """Any column name, quotes and backslashes included, is escaped as a JSON key."""
    c = PgRowCodec([Column(name, "text", pg.TEXT, key=True), Column("other", "int4", pg.INT4)])
    assert orjson.loads(c.to_json((b"v", b"1"))) == {name: "v", "other": 1}
    assert orjson.loads(c.key_json((b"v", b"1"))) == {name: "v"}


@pytest.mark.parametrize("row", [(b"1",), (b"1", b"2", b"3")])
def test_wrong_width_row_raises(row: RawRow) -> None:
    """A row with more or fewer values than the schema has columns fails instead of shifting."""
    c = PgRowCodec([Column("id", "int4", pg.INT4, key=True), Column("v", "text", pg.TEXT)])
    with pytest.raises(ValueError):
        c.to_json(row)
    with pytest.raises(ValueError):
        c.key_json(row)
    with pytest.raises(ValueError):
        c.to_python(row)


# ---------------------------------------------------------------- every built-in type, one path


#: One sample text form per built-in type, as PostgreSQL prints it under the source's settings.
SAMPLES: list[tuple[int, bytes]] = [
    (pg.INT2, b"-32768"), (pg.INT4, b"7"), (pg.INT8, b"9223372036854775807"), (pg.OID, b"4294967295"),
    (pg.FLOAT4, b"3.4028235e+38"), (pg.FLOAT8, b"NaN"), (pg.FLOAT8, b"-Infinity"), (pg.NUMERIC, b"-0.000"),
    (pg.BOOL, b"f"), (pg.TEXT, b'a "q"'), (pg.VARCHAR, b"v"), (pg.BPCHAR, b"ab   "), (pg.NAME, b"n"),
    (pg.CHAR, b"c"), (pg.BYTEA, b"\\x00ff"), (pg.UUID, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    (pg.JSON, b'{"b": 1,\n "a": 1.0}'), (pg.JSONB, b'{"a": "\\\\ \\"x\\""}'), (pg.DATE, b"2026-01-02"),
    (pg.DATE, b"0044-03-15 BC"), (pg.TIME, b"24:00:00"), (pg.TIMETZ, b"03:04:05.5+05:30"),
    (pg.TIMESTAMP, b"2026-01-02 03:04:05.5"), (pg.TIMESTAMP, b"infinity"),
    (pg.TIMESTAMPTZ, b"2026-01-02 03:04:05+00"), (pg.TIMESTAMPTZ, b"10000-01-01 00:00:00+00"),
    (pg.INTERVAL, b"-1 years -2 mons +3 days -04:05:06"), (pg.INET, b"::1"), (pg.CIDR, b"10.0.0.0/8"),
    (pg.MACADDR, b"08:00:2b:01:02:03"), (pg.MACADDR8, b"08:00:2b:01:02:03:04:05"), (pg.MONEY, b"-$1,234.56"),
    (pg.BIT, b"1010"), (pg.VARBIT, b""), (pg.TSVECTOR, b"'a' 'cat':2"), (pg.XML, b'<a b="1"/>'),
    (pg.POINT, b"(1,2)"), (pg.BOX, b"(1,1),(0,0)"), (pg.INT4RANGE, b"[1,5)"),
]


@pytest.mark.parametrize(("oid", "raw"), SAMPLES)
def test_inline_and_called_renderings_agree(oid: int, raw: bytes) -> None:
    """The generated row renderer's inline expression renders exactly what the type's function does."""
    mapping = pg.type_mapping(oid)
    assert codec(oid).to_json((raw,)) == b'{"v":' + mapping.json(raw) + b"}"
    orjson.loads(mapping.json(raw))  # valid JSON


@pytest.mark.parametrize(
    ("oid", "raw", "expected"),
    [
        (pg.TIME, b"03:04:05.123456", "03:04:05.123456"),
        (pg.TIME, b"24:00:00", "24:00:00"),
        (pg.TIMETZ, b"03:04:05+05:30:15", "03:04:05+05:30:15"),
        (pg.INET, b"192.168.1.5/24", "192.168.1.5/24"),
        (pg.MONEY, b"$1,234.56", "$1,234.56"),
        (pg.BIT, b"0101", "0101"),
        (pg.XML, b'<a b="1">x &amp; y</a>', '<a b="1">x &amp; y</a>'),
        (pg.TSVECTOR, b"'a' 'with space':2A", "'a' 'with space':2A"),
        (pg.BPCHAR, b"ab   ", "ab   "),
        (pg.JSON, b'{"b": 1.0,\n "a": [2e5]}', '{"b": 1.0,\n "a": [2e5]}'),
        (pg.JSONB, b'{"z": "\\u0001", "\xc3\xbc": "\\"q\\" \\\\"}', '{"z": "\\u0001", "ü": "\\"q\\" \\\\"}'),
        (pg.INT4RANGE, b"[1,5)", "[1,5)"),
        (pg.POINT, b"(1e+300,-1.5)", "(1e+300,-1.5)"),
        (12345, b"any extension's text", "any extension's text"),
    ],
)
def test_text_forms_are_strings(oid: int, raw: bytes, expected: str) -> None:
    """time, timetz, inet, money, bit, xml, tsvector, json(b), ranges, geometry, unknown types: their text."""
    assert as_json(oid, raw) == expected


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"))))
def test_jsonb_text_round_trips(text: str) -> None:
    """jsonb's text (never holding control characters) renders as a JSON string of exactly that text."""
    assert orjson.loads(codec(pg.JSONB).to_json((text.encode(),))) == {"v": text}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [  # PostgreSQL 15's own output under IntervalStyle postgres, then iso_8601
        (b"1 year 2 mons 3 days 04:05:06.789", "P1Y2M3DT4H5M6.789S"),
        (b"-10 mons -3 days +04:05:06", "P-10M-3DT4H5M6S"),
        (b"00:00:00", "PT0S"),
        (b"-00:00:01.5", "PT-1.5S"),
        (b"1 day -01:00:00", "P1DT-1H"),
        (b"-1 days", "P-1D"),
        (b"178956970 years 7 mons", "P178956970Y7M"),
        (b"2562047788:00:54.775807", "PT2562047788H54.775807S"),
        (b"-2562047788:00:54.775807", "PT-2562047788H-54.775807S"),
        (b"3 mons", "P3M"),
        (b"1 day 00:00:00.000001", "P1DT0.000001S"),
        (b"-1 mons -00:00:00.000001", "P-1MT-0.000001S"),
        (b"-1 years -2 mons", "P-1Y-2M"),
        (b"10 days 10:00:00", "P10DT10H"),
        (b"-10 days -10:00:00", "P-10DT-10H"),
        (b"P1D", "P1D"),
        (b"infinity", "infinity"),
    ],
)
def test_interval_is_iso_8601_duration(raw: bytes, expected: str) -> None:
    """Interval renders as the ISO-8601 duration PostgreSQL prints under IntervalStyle iso_8601."""
    assert as_json(pg.INTERVAL, raw) == expected
    assert as_python(pg.INTERVAL, raw) == expected


def test_bytea_escape_format_is_read_too() -> None:
    """bytea's old escape output (bytea_output=escape) decodes to the same bytes."""
    assert as_python(pg.BYTEA, b"a\\000\\\\b\\377") == b"a\x00\\b\xff"
    assert as_json(pg.BYTEA, b"a\\000\\\\b\\377") == base64.b64encode(b"a\x00\\b\xff").decode()


def test_to_python_temporal_and_numeric_specials() -> None:
    """NaN and infinities are Decimals; time and timetz are datetime.time; 24:00:00 stays text."""
    assert as_python(pg.NUMERIC, b"NaN").is_nan()  # type: ignore[attr-defined]
    assert as_python(pg.NUMERIC, b"-Infinity") == Decimal("-Infinity")
    assert as_python(pg.TIME, b"03:04:05.5") == time(3, 4, 5, 500000)
    assert as_python(pg.TIMETZ, b"03:04:05-08") == time(3, 4, 5, tzinfo=timezone(timedelta(hours=-8)))
    assert as_python(pg.TIMETZ, b"24:00:00+00") == "24:00:00+00"
    assert as_python(pg.TIMESTAMPTZ, b"2026-01-02 03:04:05.5+00") == datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    assert as_python(pg.FLOAT4, b"-Infinity") == float("-inf")


# ---------------------------------------------------------------- arrays


@pytest.mark.parametrize(
    ("raw", "delim", "expected"),
    [
        (b"{}", b",", []),
        (b"{1,2,NULL}", b",", [b"1", b"2", None]),
        (b"{{1,2},{3,4}}", b",", [[b"1", b"2"], [b"3", b"4"]]),
        (b"{{{1}},{{NULL}}}", b",", [[[b"1"]], [[None]]]),
        (b"[0:1]={1,2}", b",", [b"1", b"2"]),
        (b"[-1:0][1:2]={{1,2},{3,4}}", b",", [[b"1", b"2"], [b"3", b"4"]]),
        (b'{"NULL",NULL,null,"a b",""}', b",", [b"NULL", None, None, b"a b", b""]),
        (b'{"x\\"y","back\\\\slash","{}","a,b"," lead"}', b",", [b'x"y', b"back\\slash", b"{}", b"a,b", b" lead"]),
        (b'{"\\\\x00ff"}', b",", [b"\\x00ff"]),
        (b"{(1,1),(0,0);(3,3),(2,2)}", b";", [b"(1,1),(0,0)", b"(3,3),(2,2)"]),
        (b'{{"a",NULL},{"}{","\\\\"}}', b",", [[b"a", None], [b"}{", b"\\"]]),
        ("{ü,\"😀 x\"}".encode(), b",", ["ü".encode(), "😀 x".encode()]),
    ],
)
def test_parse_array(raw: bytes, delim: bytes, expected: list[object]) -> None:
    """Array literals as array_out prints them parse to nested lists of element texts and None."""
    assert pg.parse_array(raw, delim) == expected


@pytest.mark.parametrize("raw", [b"", b"1,2", b"{1,2", b"{1,2}}", b'{"a}', b"{1}x", b"{{1},2}x", b"{1}{2}"])
def test_parse_array_rejects_malformed_literals(raw: bytes) -> None:
    """Anything that is not one balanced array literal raises ValueError."""
    with pytest.raises(ValueError):
        pg.parse_array(raw)


def array_literal(value: object) -> str:
    """PostgreSQL's array_out for nested lists of str/None (written independently for the property test)."""
    if isinstance(value, list):
        return "{" + ",".join(array_literal(v) for v in value) + "}"
    if value is None:
        return "NULL"
    assert isinstance(value, str)
    if value == "" or value.upper() == "NULL" or any(c in value for c in '{},"\\') or any(c.isspace() for c in value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


_ELEMENT = st.none() | st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@given(st.lists(_ELEMENT, max_size=6) | st.lists(st.lists(_ELEMENT, min_size=2, max_size=2), min_size=1, max_size=4))
def test_text_arrays_round_trip(value: list[object]) -> None:
    """Any text[] (1-D or 2-D, NULLs, quotes, escapes, unicode) renders as the JSON array of its elements."""
    raw = array_literal(value).encode()
    assert orjson.loads(codec(pg.TEXT_ARRAY).to_json((raw,))) == {"v": value}
    assert as_python(pg.TEXT_ARRAY, raw) == value


@given(st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), max_size=8), st.integers(0, 3))
def test_integer_arrays_are_json_numbers(values: list[int | None], rows: int) -> None:
    """Integer arrays (1-D, or 2-D of `rows` rows) render as JSON arrays of numbers and nulls."""
    value: list[object] = [values] * rows if rows and values else list(values)

    def text(v: object) -> object:
        return None if v is None else [text(x) for x in v] if isinstance(v, list) else str(v)

    raw = array_literal(text(value)).encode()
    assert orjson.loads(codec(1016).to_json((raw,))) == {"v": value}
    assert as_python(1016, raw) == value


@pytest.mark.parametrize(
    ("oid", "raw", "json", "python"),
    [
        (1016, b"{1,NULL,-9223372036854775808}", [1, None, -9223372036854775808], [1, None, -9223372036854775808]),
        (1022, b"{1.5,NaN,Infinity,-Infinity}", [1.5, "NaN", "Infinity", "-Infinity"], None),
        (1000, b"{{t,f},{NULL,t}}", [[True, False], [None, True]], [[True, False], [None, True]]),
        (1231, b"{12.50,NaN,NULL}", ["12.50", "NaN", None], None),
        (1185, b'{"2026-01-02 03:04:05+00","0044-03-15 12:00:00+00 BC",infinity}',
         ["2026-01-02T03:04:05Z", "-0043-03-15T12:00:00Z", "infinity"], None),
        (1001, b'{"\\\\x00ff",NULL}', ["AP8=", None], [b"\x00\xff", None]),
        (3807, b'{"{\\"a\\": [1, 2]}",NULL}', ['{"a": [1, 2]}', None], ['{"a": [1, 2]}', None]),
        (2951, b"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
         [uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")]),
        (1187, b'{"1 day",NULL}', ["P1D", None], ["P1D", None]),
        (pg.BOX_ARRAY, b"{(1,1),(0,0);(3,3),(2,2)}", ["(1,1),(0,0)", "(3,3),(2,2)"], ["(1,1),(0,0)", "(3,3),(2,2)"]),
        (1007, b"{}", [], []),
    ],
)
def test_arrays_render_their_elements(oid: int, raw: bytes, json: object, python: object) -> None:
    """Arrays of every kind: a JSON array of the element renderings, a Python list of the element values."""
    assert as_json(oid, raw) == json
    if python is not None:
        assert as_python(oid, raw) == python


# ---------------------------------------------------------------- the catalog


CATALOG_ROWS = [  # as TYPE_CATALOG_SQL returns them
    (16400, "mood", "e", "E", 0, 0, -1, ","),
    (16399, "mood[]", "b", "A", 16400, 0, -1, ","),
    (16410, "price", "d", "N", 0, pg.NUMERIC, (10 << 16 | 2) + 4, ","),
    (16409, "price[]", "b", "A", 16410, 0, -1, ","),
    (16420, "posint", "d", "N", 0, pg.INT4, -1, ","),
    (16421, "small_posint", "d", "N", 0, 16420, -1, ","),
    (16419, "posint[]", "b", "A", 16420, 0, -1, ","),
    (16430, "pair", "c", "C", 0, 0, -1, ","),
    (16429, "pair[]", "b", "A", 16430, 0, -1, ","),
    (16440, "citext", "b", "S", 0, 0, -1, ","),
    (16439, "citext[]", "b", "A", 16440, 0, -1, ","),
    (16450, "semi", "b", "U", 0, 0, -1, ";"),
    (16449, "semi[]", "b", "A", 16450, 0, -1, ","),
    (pg.INT4, "integer", "b", "N", 0, 0, -1, ","),
    (pg.INT4RANGE, "int4range", "r", "R", 0, 0, -1, ","),
]


def catalog_codec(oid: int, modifier: int = -1) -> PgRowCodec:
    return PgRowCodec([Column("v", "t", oid, modifier)], PgTypeCatalog.from_rows(CATALOG_ROWS))


def test_catalog_resolves_user_types() -> None:
    """Enums and composites are text; domains map as their base type; arrays of any of them are lists."""
    assert orjson.loads(catalog_codec(16400).to_json((b"sad",))) == {"v": "sad"}
    assert orjson.loads(catalog_codec(16399).to_json((b'{sad,"NULL",NULL}',))) == {"v": ["sad", "NULL", None]}
    assert orjson.loads(catalog_codec(16420).to_json((b"5",))) == {"v": 5}
    assert orjson.loads(catalog_codec(16421).to_json((b"5",))) == {"v": 5}  # a domain over a domain
    assert orjson.loads(catalog_codec(16419).to_json((b"{1,NULL}",))) == {"v": [1, None]}
    assert catalog_codec(16419).to_python((b"{{1},{2}}",)) == ([[1], [2]],)
    assert orjson.loads(catalog_codec(16409).to_json((b"{12.50,NaN}",))) == {"v": ["12.50", "NaN"]}
    assert orjson.loads(catalog_codec(16429).to_json((b'{"(1,\\"a b\\")",NULL}',))) == {"v": ['(1,"a b")', None]}
    assert orjson.loads(catalog_codec(16439).to_json((b"{A,b}",))) == {"v": ["A", "b"]}
    assert orjson.loads(catalog_codec(16449).to_json((b"{a,b;c}",))) == {"v": ["a,b", "c"]}  # typdelim ';'
    assert orjson.loads(catalog_codec(pg.INT4RANGE).to_json((b"[1,5)",))) == {"v": "[1,5)"}


def test_catalog_domain_modifiers_reach_arrow() -> None:
    """A domain over numeric(10,2) is decimal128(10, 2), as is an array of it (its elements)."""
    assert catalog_codec(16410).arrow_schema().field("v").type == pa.decimal128(10, 2)
    assert catalog_codec(16409).arrow_schema().field("v").type == pa.list_(pa.decimal128(10, 2))
    assert catalog_codec(16420).arrow_schema().field("v").type == pa.int32()


def test_without_a_catalog_user_types_are_text() -> None:
    """A codec without a catalog renders non-built-in types, arrays of them included, as their text."""
    assert as_json(16399, b"{sad,ok}") == "{sad,ok}"
    assert as_json(16420, b"5") == "5"


def test_catalog_names_and_missing_types() -> None:
    """The catalog names types as format_type does and says which OIDs it lacks."""
    catalog = PgTypeCatalog.from_rows(CATALOG_ROWS)
    assert catalog.name(16400) == "mood" and catalog.name(99999) == "99999"
    assert catalog.missing([16400, pg.INT4, 99999]) == {99999}
    assert 16400 in catalog and len(catalog) == len(CATALOG_ROWS)
    assert "array_out" in pg.TYPE_CATALOG_SQL


# ---------------------------------------------------------------- Arrow


def arrow_of(oid: int, values: list[bytes | None], modifier: int = -1) -> pa.Array:
    c = PgRowCodec([Column("v", "t", oid, modifier)])
    (array,) = c.to_arrow([(v,) for v in values])
    assert array.type == c.arrow_schema().field("v").type
    return array


NUMERIC_10_2 = (10 << 16 | 2) + 4


@pytest.mark.parametrize(
    ("oid", "modifier", "arrow_type"),
    [
        (pg.INT2, -1, pa.int16()), (pg.INT4, -1, pa.int32()), (pg.INT8, -1, pa.int64()), (pg.OID, -1, pa.int64()),
        (pg.FLOAT4, -1, pa.float32()), (pg.FLOAT8, -1, pa.float64()), (pg.BOOL, -1, pa.bool_()),
        (pg.NUMERIC, -1, pa.string()), (pg.NUMERIC, NUMERIC_10_2, pa.decimal128(10, 2)),
        (pg.NUMERIC, (38 << 16) + 4, pa.decimal128(38, 0)), (pg.NUMERIC, (50 << 16 | 5) + 4, pa.string()),
        (pg.NUMERIC, (5 << 16 | (-2 & 0x7FF)) + 4, pa.string()), (pg.BYTEA, -1, pa.binary()),
        (pg.DATE, -1, pa.date32()), (pg.TIME, -1, pa.time64("us")), (pg.TIMETZ, -1, pa.string()),
        (pg.TIMESTAMP, -1, pa.timestamp("us")), (pg.TIMESTAMPTZ, -1, pa.timestamp("us", tz="UTC")),
        (pg.INTERVAL, -1, pa.string()), (pg.UUID, -1, pa.string()), (pg.JSONB, -1, pa.string()),
        (pg.TEXT, -1, pa.string()), (pg.INET, -1, pa.string()), (pg.INT4_ARRAY, -1, pa.list_(pa.int32())),
        (1231, NUMERIC_10_2, pa.list_(pa.decimal128(10, 2))), (pg.TEXT_ARRAY, -1, pa.list_(pa.string())),
    ],
)
def test_arrow_types(oid: int, modifier: int, arrow_type: pa.DataType) -> None:
    """Each type has its documented Arrow type."""
    assert PgRowCodec([Column("v", "t", oid, modifier)]).arrow_schema().field("v").type == arrow_type


def test_arrow_values_of_special_forms() -> None:
    """BC, far-future and infinite temporal values, NaN numerics and 24:00:00 as documented in Arrow."""
    ts = arrow_of(pg.TIMESTAMPTZ, [b"2026-01-02 03:04:05.5+00", b"0044-03-15 12:00:00+00 BC", b"infinity",
                                   b"-infinity", b"294276-12-31 23:59:59.999999+00", None])
    # -63517780800 s is what PostgreSQL's extract(epoch) says of 44 BC, March 15th, noon UTC.
    assert [s.value for s in ts] == [1767323045500000, -63517780800000000, 2**63 - 1, -(2**63), None, None]
    days = arrow_of(pg.DATE, [b"1970-01-02", b"0001-01-01 BC", b"infinity", b"-infinity", b"5874897-12-31"])
    # PostgreSQL: SELECT DATE '5874897-12-31' - DATE '1970-01-01' is 2145042905.
    assert [s.value for s in days] == [1, -719528, 2**31 - 1, -(2**31), 2145042905]
    assert [s.value for s in arrow_of(pg.TIME, [b"00:00:00.000001", b"24:00:00"])] == [1, 86_400_000_000]
    assert arrow_of(pg.NUMERIC, [b"12.50", b"NaN", None], NUMERIC_10_2).to_pylist() == [Decimal("12.50"), None, None]
    assert arrow_of(pg.NUMERIC, [b"NaN", b"-Infinity"]).to_pylist() == ["NaN", "-Infinity"]
    floats = arrow_of(pg.FLOAT8, [b"NaN", b"Infinity", b"-Infinity", b"5e-324"]).to_pylist()
    assert math.isnan(floats[0]) and floats[1:] == [math.inf, -math.inf, 5e-324]
    assert arrow_of(pg.FLOAT4, [b"0.1"]).to_pylist() == [pa.scalar(0.1, pa.float32()).as_py()]
    assert arrow_of(pg.BYTEA, [b"\\x00ff", None]).to_pylist() == [b"\x00\xff", None]
    assert arrow_of(pg.INTERVAL, [b"1 day -01:00:00"]).to_pylist() == ["P1DT-1H"]


def test_arrow_arrays_are_lists_with_dimensions_flattened() -> None:
    """Arrays are list<element>: NULL arrays null, NULL elements null, 2-D values flattened row-major."""
    assert arrow_of(pg.INT4_ARRAY, [b"{1,NULL}", None, b"{}", b"{{1,2},{3,4}}", b"[0:0]={9}"]).to_pylist() == [
        [1, None], None, [], [1, 2, 3, 4], [9]
    ]
    days = arrow_of(1182, [b"{1970-01-02,infinity}"])
    assert [s.value for s in days.flatten()] == [1, 2**31 - 1]
    assert arrow_of(1231, [b"{1.50,NaN}"], NUMERIC_10_2).to_pylist() == [[Decimal("1.50"), None]]


def test_to_arrow_nulls_unchanged_and_missing_rows() -> None:
    """NULL values, UNCHANGED values and missing rows are all null in Arrow."""
    c = PgRowCodec([Column("a", "t", pg.INT4), Column("b", "t", pg.TEXT_ARRAY)])
    a, b = c.to_arrow([(b"1", b"{x}"), None, (None, UNCHANGED)])
    assert a.to_pylist() == [1, None, None]
    assert b.to_pylist() == [["x"], None, None]


def test_columns_to_arrow_equals_to_arrow_for_every_type() -> None:
    """The columnar snapshot path (texts already in Arrow columns) converts exactly like the row path."""
    extra = [(pg.NUMERIC, b"NaN", 4 + (10 << 16 | 2)), (pg.NUMERIC, b"12.50", 4 + (10 << 16 | 2)),
             (pg.INT4_ARRAY, b"{1,NULL,3}", -1), (pg.TEXT_ARRAY, b'{"a b",NULL}', -1)]
    for oid, raw, modifier in [(o, r, -1) for o, r in SAMPLES] + extra:
        columns = (Column("v", "t", oid, modifier),)
        c = PgRowCodec(columns)
        rows: list[tuple[object, ...] | None] = [(raw,), (None,), (raw,)]
        expected = c.to_arrow(rows)
        got = c.columns_to_arrow([pa.array([raw, None, raw], pa.binary())])
        assert [a.type for a in got] == [a.type for a in expected]
        assert [str(a) for a in got] == [str(a) for a in expected], (oid, raw)  # str: NaN equals itself


def _delta(values: pa.Array, stored: pa.DataType) -> tuple[pa.Array, list[tuple[str, int]]]:
    clamped: list[tuple[str, int]] = []
    out = conform(pa.table({"c": values}), pa.schema([pa.field("c", stored)]), lambda c, n: clamped.append((c, n)))
    return out.column("c").chunk(0), clamped


def test_delta_clamps_dates_and_timestamps_outside_its_range() -> None:
    """Infinity and dates/timestamps past deltalake's range are its last/first value, counted; NULL stays NULL."""
    days, clamped = _delta(pa.array([2**31 - 1, -(2**31), DATE_MAX + 1, DATE_MIN, 0, None], pa.date32()), pa.date32())
    assert days.view(pa.int32()).to_pylist() == [DATE_MAX, DATE_MIN, DATE_MAX, DATE_MIN, 0, None]
    assert clamped == [("c", 3)]
    for tz in (None, "UTC"):
        ts = pa.timestamp("us", tz=tz)
        micros, clamped = _delta(pa.array([2**63 - 1, -(2**63), TIMESTAMP_MAX, 5, None], ts), ts)
        assert micros.view(pa.int64()).to_pylist() == [TIMESTAMP_MAX, TIMESTAMP_MIN, TIMESTAMP_MAX, 5, None]
        assert clamped == [("c", 2)]
    inner, clamped = _delta(pa.array([[2**31 - 1, None, 1], None, []], pa.list_(pa.date32())), pa.list_(pa.date32()))
    assert inner.values.view(pa.int32()).to_pylist() == [DATE_MAX, None, 1] and inner.null_count == 1
    assert clamped == [("c", 1)]
    assert _delta(pa.array([0, None], pa.date32()), pa.date32())[1] == []


def test_delta_times_are_text_up_to_24_and_838_hours() -> None:
    """time (24:00:00 included) and MySQL's TIME (±838:59:59.999999) are [-]HH:MM:SS.ffffff text in Delta."""
    times, clamped = _delta(pa.array([0, 86_400_000_000, 45_296_789_000, None], pa.time64("us")), pa.string())
    assert times.to_pylist() == ["00:00:00.000000", "24:00:00.000000", "12:34:56.789000", None] and clamped == []
    durations, _ = _delta(pa.array([-3_020_399_000_000, 3_020_399_999_999, -500_000, 1], pa.duration("us")),
                          pa.string())
    assert durations.to_pylist() == ["-838:59:59.000000", "838:59:59.999999", "-00:00:00.500000", "00:00:00.000001"]
    in_lists, _ = _delta(pa.array([[86_400_000_000, None], None], pa.list_(pa.time64("us"))), pa.list_(pa.string()))
    assert in_lists.to_pylist() == [["24:00:00.000000", None], None]


@pytest.mark.parametrize(("arrow", "duck", "postgres"), [
    (pa.int8(), "TINYINT", "smallint"), (pa.uint8(), "UTINYINT", "smallint"), (pa.uint16(), "USMALLINT", "integer"),
    (pa.uint32(), "UINTEGER", "bigint"), (pa.uint64(), "UBIGINT", "numeric(20,0)"),
    (pa.duration("us"), "INTERVAL", "interval"),
])
def test_warehouse_types_of_mysql_integers_and_time(arrow: pa.DataType, duck: str, postgres: str) -> None:
    """MySQL's TINYINT, UNSIGNED integers (BIT too) and TIME have a column type in both engines that holds
    every value, and the type read back from the catalog needs no change."""
    assert (DUCKDB.type_name(arrow), POSTGRES.type_name(arrow)) == (duck, postgres)
    for dialect in (DUCKDB, POSTGRES):
        assert evolve(dialect.arrow_type(dialect.type_name(arrow)), arrow)[0] is Change.NONE


@pytest.mark.parametrize(("stored", "new", "change", "result"), [
    (pa.int16(), pa.uint16(), Change.WIDEN, pa.int32()),
    (pa.uint32(), pa.int32(), Change.WIDEN, pa.int64()),
    (pa.int64(), pa.uint64(), Change.WIDEN, pa.decimal128(20, 0)),
    (pa.uint8(), pa.uint16(), Change.WIDEN, pa.uint16()),
    (pa.int32(), pa.uint16(), Change.NONE, pa.int32()),
    (pa.decimal128(20, 0), pa.uint64(), Change.NONE, pa.decimal128(20, 0)),
    (pa.decimal128(12, 2), pa.uint64(), Change.WIDEN, pa.decimal128(22, 2)),
    (pa.int32(), pa.decimal128(12, 2), Change.WIDEN, pa.decimal128(12, 2)),
    (pa.duration("us"), pa.int64(), Change.INCOMPATIBLE, pa.int64()),
])
def test_evolve_compares_integer_ranges(stored: pa.DataType, new: pa.DataType, change: Change,
                                        result: pa.DataType) -> None:
    """A target column widens to the narrowest type holding the old and the new source type's values."""
    assert evolve(stored, new) == (change, result)
