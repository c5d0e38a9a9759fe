"""Tests of the PostgreSQL type mapping: pgoutput text values to event JSON and Python values."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.events import UNCHANGED, Column, RawRow
from connectors.postgres import types as pg
from connectors.postgres.types import PgRowCodec


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
        (b"0044-03-15 12:00:00+00 BC", "0044-03-15 12:00:00+00 BC"),
        (b"10000-01-01 00:00:00+00", "10000-01-01 00:00:00+00"),
    ],
)
def test_timestamptz_is_iso_utc(raw: bytes, expected: str) -> None:
    """Timestamptz renders as ISO-8601 UTC with 'Z'; values outside Python's range keep their text."""
    assert as_json(pg.TIMESTAMPTZ, raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"2026-01-02 03:04:05.123456", "2026-01-02T03:04:05.123456"),
        (b"2026-01-02 03:04:05", "2026-01-02T03:04:05"),
        (b"-infinity", "-infinity"),
        (b"0044-03-15 12:00:00 BC", "0044-03-15 12:00:00 BC"),
        (b"10000-01-01 00:00:00", "10000-01-01 00:00:00"),
    ],
)
def test_timestamp_is_iso_without_zone(raw: bytes, expected: str) -> None:
    """Timestamp renders as ISO-8601 without a zone."""
    assert as_json(pg.TIMESTAMP, raw) == expected


def test_date_keeps_its_text() -> None:
    """Date renders as 'YYYY-MM-DD'."""
    assert as_json(pg.DATE, b"2026-01-02") == "2026-01-02"


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
    """None and UNCHANGED pass through; infinity timestamps and BC dates stay strings."""
    c = PgRowCodec([Column("a", "t", pg.INT4), Column("b", "t", pg.TEXT), Column("c", "t", pg.TIMESTAMPTZ),
                    Column("d", "t", pg.DATE)])
    assert c.to_python((None, UNCHANGED, b"infinity", b"0044-03-15 BC")) == (
        None, UNCHANGED, "infinity", "0044-03-15 BC"
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
