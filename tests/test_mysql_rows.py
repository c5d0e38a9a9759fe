"""The compiled row decoder (connectors/mysql/rows.py) against MySQL's documented binary formats."""

from __future__ import annotations

import struct
from datetime import date, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from connectors.mysql import types as t
from connectors.mysql.rows import (
    RowColumn,
    compile_decoder,
    decimal_size,
    decode_datetime2,
    decode_decimal,
    decode_time2,
)

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
