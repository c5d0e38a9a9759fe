"""The compiled row decoder (connectors/mysql/rows.py) against MySQL's documented binary formats."""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cdc.events import RowChange, Transaction
from connectors.mysql import types as t
from connectors.mysql.rows import (
    EMPTY_SET,
    RowColumn,
    compile_change_decoder,
    compile_decoder,
    decimal_size,
    decode_datetime2,
    decode_decimal,
    decode_time2,
)
from connectors.mysql.types import MySqlColumnType, compile_normaliser

_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def encode_decimal(unscaled: int, precision: int, scale: int) -> bytes:
    """MySQL's decimal2bin of ``unscaled * 10**-scale``, written from its description."""
    negative = unscaled < 0
    digits = str(abs(unscaled)).zfill(scale + 1)
    whole, frac = (digits[:-scale], digits[-scale:]) if scale else (digits, "")
    intg = precision - scale
    whole = whole.zfill(intg)
    out = bytearray()
    lead = intg % 9
    if lead:
        out += int(whole[:lead]).to_bytes(_DIG2BYTES[lead], "big")
    for k in range(lead, intg, 9):
        out += int(whole[k:k + 9]).to_bytes(4, "big")
    for k in range(0, scale - scale % 9, 9):
        out += int(frac[k:k + 9]).to_bytes(4, "big")
    if scale % 9:
        out += int(frac[scale - scale % 9:]).to_bytes(_DIG2BYTES[scale % 9], "big")
    out[0] ^= 0x80
    if negative:
        out = bytearray(b ^ 0xFF for b in out)
    return bytes(out)


@given(st.integers(1, 65).flatmap(lambda p: st.tuples(st.just(p), st.integers(0, min(p, 30)))), st.data())
def test_decimal_round_trips(shape: tuple[int, int], data: st.DataObject) -> None:
    """Any DECIMAL(p,s) value decodes exactly, with its scale."""
    precision, scale = shape
    unscaled = data.draw(st.integers(-(10**precision) + 1, 10**precision - 1))
    value = Decimal((int(unscaled < 0), tuple(int(d) for d in str(abs(unscaled))), -scale))
    raw = encode_decimal(unscaled, precision, scale)
    assert len(raw) == decimal_size(precision, scale)
    got = decode_decimal(raw, precision, scale)
    assert got == value and got.as_tuple().exponent == -scale


def test_decimal_negative_zero_keeps_its_sign() -> None:
    """A negative zero (every bit of a zero inverted) decodes as the library's Decimal('-0.00')."""
    raw = bytes(b ^ 0xFF for b in encode_decimal(0, 12, 2))
    got = decode_decimal(raw, 12, 2)
    assert got.as_tuple() == Decimal("-0.00").as_tuple()


def test_time2_examples() -> None:
    """TIME(fsp) packed values, negative ones with fractions included (MySQL's my_time_packed_to_binary)."""
    def pack(td: timedelta, nbytes: int) -> bytes:
        us = abs(td // timedelta(microseconds=1))
        seconds, micro = divmod(us, 1_000_000)
        hms = (seconds // 3600) << 12 | (seconds // 60 % 60) << 6 | seconds % 60
        units = micro // {0: 1, 1: 10_000, 2: 100, 3: 1}[nbytes] if nbytes else 0
        packed = hms << (8 * nbytes) | units
        if td < timedelta(0):
            packed = -packed
        return (packed + (0x800000 << (8 * nbytes))).to_bytes(3 + nbytes, "big")

    for td in (timedelta(hours=-838, minutes=-59, seconds=-59), timedelta(microseconds=-500_000),
               timedelta(hours=12, minutes=34, seconds=56, microseconds=789_000), timedelta(0),
               timedelta(hours=-1, microseconds=-10_000)):
        for nbytes in (0, 1, 2, 3):
            step = {0: 1_000_000, 1: 10_000, 2: 100, 3: 1}[nbytes]
            if (td // timedelta(microseconds=1)) % step:
                continue
            assert decode_time2(pack(td, nbytes), 0, nbytes) == td


def test_datetime2_and_zero() -> None:
    """DATETIME(6) bit fields, and the zero date as None."""
    def pack(d: datetime) -> bytes:
        ym = d.year * 13 + d.month
        v = ((ym << 5 | d.day) << 17) | (d.hour << 12 | d.minute << 6 | d.second)
        return (v + 0x8000000000).to_bytes(5, "big") + d.microsecond.to_bytes(3, "big")

    d = datetime(2024, 2, 29, 23, 59, 59, 1)
    assert decode_datetime2(pack(d), 0, 3) == d
    assert decode_datetime2((0x8000000000).to_bytes(5, "big") + bytes(3), 0, 3) is None


def test_compiled_decoder_reads_a_rows_event_body() -> None:
    """Nulls, ints, varchar, enum, set (empty flagged) and dates in one insert of two rows."""
    columns = [
        RowColumn(t.LONG, unsigned=True),
        RowColumn(t.VARCHAR, max_length=80, encoding="utf-8"),
        RowColumn(t.ENUM, size=1, enum_values=("", "a", "b")),
        RowColumn(t.SET, size=1, set_values=("x", "y")),
        RowColumn(t.DATE),
    ]
    decode = compile_decoder(columns)
    assert decode is not None
    text = "é😀".encode()
    row1 = bytes([0]) + struct.pack("<I", 4_000_000_000) + bytes([len(text)]) + text + bytes([2, 0b11]) + \
        (2024 << 9 | 3 << 5 | 1).to_bytes(3, "little")
    row2 = bytes([0b00010010]) + struct.pack("<I", 1) + bytes([1, 0])  # text and date NULL, empty set
    images, flags = decode(row1 + row2, "c")
    assert images == [
        (None, (4_000_000_000, "é😀", "b", {"x", "y"}, date(2024, 3, 1))),
        (None, (1, None, "a", None, None)),
    ]
    assert flags == [(1, 1, 3, "empty set")]


def test_unknown_types_are_left_to_the_library() -> None:
    """A column type the decoder does not know (MySQL's binary JSON) gives no decoder."""
    assert compile_decoder([RowColumn(t.LONG), RowColumn(t.JSON, length_size=4)]) is None


def pack_datetime2(d: datetime, nbytes: int) -> bytes:
    """DATETIME(fsp) as MySQL packs it (the fraction in `nbytes` bytes, in units of its precision)."""
    ym = d.year * 13 + d.month
    v = ((ym << 5 | d.day) << 17) | (d.hour << 12 | d.minute << 6 | d.second)
    unit = {0: 1, 1: 10_000, 2: 100, 3: 1}[nbytes]
    frac = (d.microsecond // unit).to_bytes(nbytes, "big") if nbytes else b""
    return (v + 0x8000000000).to_bytes(5, "big") + frac


def _fixed(fmt: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return values.map(struct.Struct(fmt).pack)


def _prefixed(prefix: int, data: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return data.map(lambda b: len(b).to_bytes(prefix, "little") + b)


_text = st.text(max_size=12).map(str.encode)
_moments = st.datetimes(datetime(1000, 1, 1), datetime(9999, 12, 31))
_finite32 = st.floats(width=32, allow_nan=False)

#: (table map column, catalog-refined type, bytes of one non-NULL value): every shape the change
#: decoder has an inline form for, and others through their `normalise_binlog`.
_ZOO: list[tuple[RowColumn, MySqlColumnType, st.SearchStrategy[bytes]]] = [
    (RowColumn(t.TINY), MySqlColumnType(t.TINY), st.binary(min_size=1, max_size=1)),
    (RowColumn(t.TINY, unsigned=True), MySqlColumnType(t.TINY, unsigned=True), st.binary(min_size=1, max_size=1)),
    (RowColumn(t.SHORT), MySqlColumnType(t.SHORT), st.binary(min_size=2, max_size=2)),
    (RowColumn(t.INT24, unsigned=True), MySqlColumnType(t.INT24, unsigned=True), st.binary(min_size=3, max_size=3)),
    (RowColumn(t.LONG), MySqlColumnType(t.LONG), st.binary(min_size=4, max_size=4)),
    (RowColumn(t.LONGLONG, unsigned=True), MySqlColumnType(t.LONGLONG, unsigned=True),
     st.binary(min_size=8, max_size=8)),
    (RowColumn(t.FLOAT, size=4), MySqlColumnType(t.FLOAT), _fixed("<f", _finite32)),
    (RowColumn(t.DOUBLE, size=8), MySqlColumnType(t.DOUBLE), _fixed("<d", st.floats(allow_nan=False))),
    (RowColumn(t.YEAR), MySqlColumnType(t.YEAR), st.binary(min_size=1, max_size=1)),
    (RowColumn(t.NEWDECIMAL, precision=12, scale=2), MySqlColumnType(t.NEWDECIMAL, precision=12, scale=2),
     st.integers(-(10**12) + 1, 10**12 - 1).map(lambda u: encode_decimal(u, 12, 2))),
    (RowColumn(t.NEWDECIMAL, precision=40, scale=0), MySqlColumnType(t.NEWDECIMAL, precision=40),
     st.integers(-(10**40) + 1, 10**40 - 1).map(lambda u: encode_decimal(u, 40, 0))),
    (RowColumn(t.TIMESTAMP2, fsp=6), MySqlColumnType(t.TIMESTAMP2, fsp=6),
     st.one_of(st.just(bytes(7)), st.binary(min_size=7, max_size=7),
               st.integers(1, 2**32 - 1).map(lambda sec: sec.to_bytes(4, "big") + bytes(3)))),
    (RowColumn(t.TIMESTAMP2, fsp=3), MySqlColumnType(t.TIMESTAMP2, fsp=3),
     st.tuples(st.integers(0, 2**31), st.integers(0, 999)).map(lambda p: p[0].to_bytes(4, "big")
                                                                + (p[1] * 10).to_bytes(2, "big"))),
    (RowColumn(t.TIMESTAMP2), MySqlColumnType(t.TIMESTAMP2), st.binary(min_size=4, max_size=4)),
    (RowColumn(t.DATETIME2, fsp=6), MySqlColumnType(t.DATETIME2, fsp=6),
     st.one_of(_moments.map(lambda d: pack_datetime2(d, 3)), st.just((0x8000000000).to_bytes(5, "big") + bytes(3)))),
    (RowColumn(t.TIME2, fsp=2), MySqlColumnType(t.TIME2, fsp=2),
     st.integers(0x800000 << 8, (0x800000 << 8) + (838 << 20)).map(lambda v: v.to_bytes(4, "big"))),
    (RowColumn(t.DATE), MySqlColumnType(t.DATE),
     st.one_of(st.dates().map(lambda d: (d.year << 9 | d.month << 5 | d.day).to_bytes(3, "little")),
               st.just(bytes(3)))),
    (RowColumn(t.VARCHAR, max_length=400, encoding="utf-8"), MySqlColumnType(t.VARCHAR), _prefixed(2, _text)),
    (RowColumn(t.VARCHAR, max_length=40, encoding="utf-8"), MySqlColumnType(t.VARCHAR), _prefixed(1, _text)),
    (RowColumn(t.VARCHAR, max_length=40), MySqlColumnType(t.VARCHAR, binary=True),
     _prefixed(1, st.binary(max_size=12))),
    (RowColumn(t.STRING, max_length=16), MySqlColumnType(t.STRING, binary=True, length=16),
     _prefixed(1, st.binary(max_size=16))),
    (RowColumn(t.STRING, max_length=16), MySqlColumnType(t.STRING, sql_type="uuid"),
     _prefixed(1, st.binary(max_size=16))),
    (RowColumn(t.STRING, max_length=16), MySqlColumnType(t.STRING, sql_type="inet6"),
     _prefixed(1, st.binary(max_size=16))),
    (RowColumn(t.BLOB, length_size=4, encoding="utf-8"), MySqlColumnType(t.BLOB, sql_type="json"),
     _prefixed(4, _text)),
    (RowColumn(t.BLOB, length_size=2), MySqlColumnType(t.BLOB, binary=True), _prefixed(2, st.binary(max_size=20))),
    (RowColumn(t.ENUM, size=1, enum_values=("", "a", "b")), MySqlColumnType(t.ENUM), st.sampled_from([b"\1", b"\2"])),
    (RowColumn(t.SET, size=1, set_values=("x", "y", "z")), MySqlColumnType(t.SET, set_values=("x", "y", "z")),
     st.integers(0, 7).map(lambda m: bytes([m]))),
    (RowColumn(t.BIT, bits=10), MySqlColumnType(t.BIT, bits=10),
     st.integers(0, 1023).map(lambda v: v.to_bytes(2, "big"))),
]


@st.composite
def _rows_event(draw: st.DrawFn) -> tuple[list[int], str, bytes]:
    """A table (indexes into _ZOO), an op and a rows event body of 1-3 rows of it."""
    cols = draw(st.lists(st.integers(0, len(_ZOO) - 1), min_size=1, max_size=12))
    op = draw(st.sampled_from("cud"))
    body = b""
    for _ in range(draw(st.integers(1, 3)) * (2 if op == "u" else 1)):
        nulls = (1 << (8 * ((len(cols) + 7) // 8))) - 1  # MySQL sets the bits past the last column
        values = b""
        for i, z in enumerate(cols):
            if not draw(st.integers(0, 9)):  # NULL (rows without one take the decoder's straight path)
                continue
            nulls &= ~(1 << i)
            values += draw(_ZOO[z][2])
        body += nulls.to_bytes((len(cols) + 7) // 8, "little") + values
    return cols, op, body


@given(_rows_event())
def test_change_decoder_equals_the_decoder_then_the_normalisation(event: tuple[list[int], str, bytes]) -> None:
    """compile_change_decoder gives what the library's values (compile_decoder) become in the source:
    normalised, the empty SET as [], a zero date as None with one zero() call per value."""
    cols, op, body = event
    shape = [_ZOO[z][0] for z in cols]
    types = [_ZOO[z][1] for z in cols]
    decode, fused = compile_decoder(shape), compile_change_decoder(shape, types)
    assert decode is not None and fused is not None
    normalise = compile_normaliser(types) or (lambda image: image)
    images, flags = decode(body, op)
    expected_zero = [col for _, _, col, reason in flags if reason != EMPTY_SET]
    empty = {(n, side, col) for n, side, col, reason in flags if reason == EMPTY_SET}

    def fixed(image: tuple[Any, ...] | None, n: int, side: int) -> tuple[Any, ...] | None:
        if image is None:
            return None
        return tuple([] if (n, side, i) in empty else v for i, v in enumerate(normalise(image)))

    tx = Transaction(7, 99, datetime(2026, 1, 1, tzinfo=UTC))
    expected = [(op, tx, 10 + n + 1, 5, fixed(b, n, 0), fixed(a, n, 1)) for n, (b, a) in enumerate(images)]
    got: list[RowChange] = []
    zero: list[int] = []
    assert fused(body, op, tx, 10, 5, got.append, zero.append) == 10 + len(images)
    assert got == expected
    assert zero == expected_zero
