"""A compiled decoder for the row images of binlog rows events (pure: bytes in, tuples out).

python-mysql-replication decodes every column of every row through a chain of Python
calls and branches on the column type each time; that is almost all of its cost. Here
one function is generated per table map (its column types and metadata are fixed), with
the type dispatch done once at generation: per row the code only slices and unpacks.

The values are the ones the library gives for the same bytes (so the source's
normalisation, connectors/mysql/types.py, applies unchanged): ints, floats as widened
doubles, `Decimal`, naive `datetime` (TIMESTAMP in UTC), `timedelta` for TIME, `date`,
YEAR as the year (1900 for 0000), BIT as its bit string, ENUM as its label, SET as a
`set` (None with an ``empty set`` flag when empty), zero dates as None with an ``out of
... range`` flag, text decoded in the column's character set, binary data as `bytes`.
Column types it does not know (MySQL's binary JSON, pre-5.6 temporal types) make
`compile_decoder` return None: the adapter then uses the library for that table.
`tests/test_mysql_rows.py` checks it against the format; `integration/test_mysql_binlog.py`
against the library on the type zoo.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal
from typing import Any

from cdc.events import RowChange, Transaction
from connectors.mysql import types as t

#: ``(before, after)`` images per row, and ``(row, side, column, reason)`` flags.
Decoded = tuple[list[tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]], list[tuple[int, int, int, str]]]
#: ``decode(data, op)``: the rows of one rows event body (after its column bitmaps).
RowDecoder = Callable[[bytes, str], Decoded]
#: ``decode(data, op, tx, seq, lsn, append, zero)``: appends one `RowChange` per row of the body
#: (``seq`` counted on from the given one) and returns the last seq; ``zero(column)`` is called
#: for every zero date, which the change holds as None.
ChangeDecoder = Callable[[bytes, str, Transaction, int, int, Callable[[RowChange], None], Callable[[int], None]], int]

ZERO_DATE = "out of date range"
ZERO_DATETIME2 = "out of datetime2 range"
EMPTY_SET = "empty set"
_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_EXACT = Context(prec=100)  # wider than DECIMAL's 65 digits: scaling never rounds
_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
_FRAC_SCALE = {0: 0, 1: 10_000, 2: 100, 3: 1}  # microseconds per unit of a 1, 2, 3-byte fraction


@dataclass(frozen=True, slots=True)
class RowColumn:
    """What decoding one column needs from its table map."""

    type_code: int
    unsigned: bool = False
    max_length: int = 0  # VARCHAR, CHAR/BINARY: the length prefix is 2 bytes above 255
    length_size: int = 0  # BLOB, GEOMETRY: bytes of the length prefix
    size: int = 0  # ENUM, SET: bytes of the value
    fsp: int = 0
    precision: int = 0
    scale: int = 0
    bits: int = 0
    encoding: str | None = None  # None: binary (bytes)
    enum_values: tuple[str, ...] = ()  # with "" at index 0, as the library keeps them
    set_values: tuple[str, ...] = ()


def decimal_size(precision: int, scale: int) -> int:
    intg = precision - scale
    return (intg // 9) * 4 + _DIG2BYTES[intg % 9] + (scale // 9) * 4 + _DIG2BYTES[scale % 9]


def decimal_decoder(precision: int, scale: int) -> Callable[[bytes], Decimal]:
    """A decoder of MySQL's binary DECIMAL(precision, scale): groups of 9 digits in 4 bytes
    (fewer for the leading and trailing digits), big-endian, the sign in the top bit and
    negative values with every bit inverted. The groups' shifts are unrolled into one generated function."""
    lines = ["def decode(data):", *("    " + line for line in _decimal_code(precision, scale, "data", "v")),
             "    return v"]
    code = "\n".join(lines)
    env: dict[str, Any] = {"from_bytes": int.from_bytes, "Decimal": Decimal, "EXACT": _EXACT}
    exec(compile(code, f"<decimal({precision},{scale}) decoder>", "exec"), env)
    decode: Callable[[bytes], Decimal] = env["decode"]
    return decode


def _decimal_code(precision: int, scale: int, data: str, v: str) -> list[str]:
    """The lines decoding DECIMAL(precision, scale) bytes `data` into `v` (see `decimal_decoder`)."""
    intg = precision - scale
    widths = [intg % 9] + [9] * (intg // 9) + [9] * (scale // 9) + [scale % 9]
    pieces = [(_DIG2BYTES[w], w) for w in widths if w]
    size = sum(n for n, _ in pieces)
    top = 1 << (8 * size - 1)
    mask = (1 << (8 * size)) - 1
    # The unscaled integer as one expression over the groups (most significant first).
    expr = ""
    shift = 8 * size
    for nbytes, width in pieces:
        shift -= 8 * nbytes
        group = f"((d >> {shift}) & {(1 << (8 * nbytes)) - 1})" if shift else f"(d & {(1 << (8 * nbytes)) - 1})"
        expr = f"({expr}) * {10**width} + {group}" if expr else group
    # The unscaled integer scaled by 10**-scale in a context wide enough for any DECIMAL (exact,
    # the scale kept: 0 is 0.00); a negative zero as "-0e-<scale>" (scaleb would drop its sign).
    positive = f"Decimal({expr}).scaleb(-{scale}, EXACT)" if scale else f"Decimal({expr})"
    negative = f"Decimal(-d).scaleb(-{scale}, EXACT) if d else Decimal('-0e-{scale}')" if scale else "Decimal(-d)"
    return [
        f"d = from_bytes({data}, 'big')",
        f"if d & {top}:",
        f"    d ^= {top}",
        f"    {v} = {positive}",
        "else:",
        f"    d ^= {mask ^ top}",
        f"    d = {expr or '0'}",
        f"    {v} = {negative}",
    ]


def decode_decimal(data: bytes, precision: int, scale: int) -> Decimal:
    """One DECIMAL value (see `decimal_decoder`, which the compiled decoder uses)."""
    return decimal_decoder(precision, scale)(data)


def _fraction(data: bytes, off: int, nbytes: int) -> int:
    return int.from_bytes(data[off:off + nbytes], "big") * _FRAC_SCALE[nbytes] if nbytes else 0


def decode_datetime2(data: bytes, off: int, nbytes: int) -> datetime | None:
    v = int.from_bytes(data[off:off + 5], "big") - 0x8000000000
    ymd, hms = v >> 17, v & 0x1FFFF
    ym = ymd >> 5
    try:
        return datetime(ym // 13, ym % 13, ymd & 31, hms >> 12, (hms >> 6) & 63, hms & 63,
                        _fraction(data, off + 5, nbytes))
    except ValueError:
        return None  # a zero date (or zero month/day)


def decode_time2(data: bytes, off: int, nbytes: int) -> timedelta:
    n = 3 + nbytes
    value = int.from_bytes(data[off:off + n], "big") - (0x800000 << (8 * nbytes))
    negative = value < 0
    value = -value if negative else value
    hms, frac = value >> (8 * nbytes), value & ((1 << (8 * nbytes)) - 1)
    out = timedelta(hours=(hms >> 12) & 0x3FF, minutes=(hms >> 6) & 63, seconds=hms & 63,
                    microseconds=frac * _FRAC_SCALE[nbytes] if nbytes else 0)
    return -out if negative else out


def decode_date(v: int) -> date | None:
    try:
        return date(v >> 9, (v >> 5) & 15, v & 31)
    except ValueError:
        return None


def _fsp_bytes(fsp: int) -> int:
    return (fsp + 1) // 2


def _int_code(c: RowColumn) -> tuple[str, int] | None:
    fmt = {t.TINY: "b", t.SHORT: "h", t.LONG: "i", t.LONGLONG: "q"}.get(c.type_code)
    if fmt is None:
        return None
    size = {"b": 1, "h": 2, "i": 4, "q": 8}[fmt]
    return ("<" + (fmt.upper() if c.unsigned else fmt)), size


def compile_decoder(columns: Sequence[RowColumn]) -> RowDecoder | None:
    """A decoder for full row images of these columns, or None when a type is not supported."""
    env: dict[str, Any] = {
        "decode_datetime2": decode_datetime2,
        "decode_time2": decode_time2, "decode_date": decode_date,
        "from_bytes": int.from_bytes, "ZERO_DATE": ZERO_DATE, "ZERO_DATETIME2": ZERO_DATETIME2,
        "EMPTY_SET": EMPTY_SET, "EPOCH": _EPOCH, "timedelta": timedelta,
    }
    n = len(columns)
    nb = (n + 7) // 8
    lines = ["def image(buf, off, row, side, flags):", f"    nb = buf[off:off + {nb}]", f"    off += {nb}"]
    for i, c in enumerate(columns):
        v = f"v{i}"
        lines.append(f"    if nb[{i >> 3}] & {1 << (i & 7)}:")
        lines.append(f"        {v} = None")
        lines.append("    else:")
        body = _column_code(i, c, v, env)
        if body is None:
            return None
        lines.extend("        " + line for line in body)
    lines.append(f"    return ({', '.join(f'v{i}' for i in range(n))}{',' if n == 1 else ''}), off")
    lines += [
        "def decode(buf, op):",
        "    images = []",
        "    flags = []",
        "    off = 0",
        "    end = len(buf)",
        "    row = 0",
        "    while off < end:",
        "        if op == 'u':",
        "            before, off = image(buf, off, row, 0, flags)",
        "            after, off = image(buf, off, row, 1, flags)",
        "            images.append((before, after))",
        "        elif op == 'c':",
        "            after, off = image(buf, off, row, 1, flags)",
        "            images.append((None, after))",
        "        else:",
        "            before, off = image(buf, off, row, 0, flags)",
        "            images.append((before, None))",
        "        row += 1",
        "    return images, flags",
    ]
    exec(compile("\n".join(lines), "<mysql row decoder>", "exec"), env)
    decoder: RowDecoder = env["decode"]
    return decoder


def compile_change_decoder(columns: Sequence[RowColumn], types: Sequence[t.MySqlColumnType]) -> ChangeDecoder | None:
    """A decoder of full row images straight into the source's normalised `RowChange`s.

    The values are `compile_decoder`'s (the library's) after `MySqlColumnType.normalise_binlog`,
    with the source's fixes for values the library flags: the empty SET as ``[]``, a zero
    date as None after ``zero(column)`` (which may raise). So one generated function does
    what the adapter's decoder, the table's normaliser and the source's flag handling do
    one after the other; TIMESTAMP decodes to an aware `datetime`, SET to its label list,
    BIT to its integer, YEAR and MariaDB's UUID to their values directly, and columns
    whose normalisation has no inline form call their `normalise_binlog` function. None
    when `compile_decoder` would be None.
    `tests/test_mysql_rows.py` checks it against `compile_decoder` plus the normalisation.
    """
    if len(columns) != len(types) or compile_decoder(columns) is None:
        return None
    env: dict[str, Any] = {
        "decode_datetime2": decode_datetime2, "decode_time2": decode_time2, "decode_date": decode_date,
        "from_bytes": int.from_bytes, "EPOCH": _EPOCH, "EPOCH_UTC": _EPOCH_UTC, "timedelta": timedelta,
        "fromtimestamp": datetime.fromtimestamp, "UTC": UTC,
    }
    n = len(columns)
    nb = (n + 7) // 8
    bodies: list[list[str]] = []
    for i, (c, ty) in enumerate(zip(columns, types, strict=True)):
        body = _fused_code(i, c, ty, f"v{i}", env)
        if body is None:
            return None
        bodies.append(body)
    values = f"({', '.join(f'v{i}' for i in range(n))}{',' if n == 1 else ''})"
    # Any row: a NULL check per column.
    lines = ["def image(buf, off, zero):"]
    lines += [f"    n{k} = buf[off + {k}]" for k in range(nb)]
    lines.append(f"    off += {nb}")
    for i, body in enumerate(bodies):
        lines.append(f"    if n{i >> 3} & {1 << (i & 7)}:")
        lines.append(f"        v{i} = None")
        lines.append("    else:")
        lines.extend("        " + line for line in body)
    lines.append(f"    return {values}, off")
    # The common row without a NULL: straight-line code inlined in the loops, with runs of
    # fixed-size little-endian columns read by one struct each. Bits past the last column are
    # 1 in MySQL's null bitmaps: the masks keep the columns'.
    masks = [0xFF] * (n // 8) + ([(1 << (n % 8)) - 1] if n % 8 else [])
    straight = _straight_code(columns, types, bodies, env)

    def row(name: str, indent: str) -> list[str]:
        out = [f"n{k} = buf[off + {k}]" for k in range(nb)]
        out.append(f"if {' or '.join(f'n{k} & {m}' for k, m in enumerate(masks))}:")
        out.append(f"    {name}, off = image(buf, off, zero)")
        out.append("else:")
        out.append(f"    off += {nb}")
        out.extend("    " + line for line in straight)
        out.append(f"    {name} = {values}")
        return [indent + line for line in out]

    lines += [
        "def decode(buf, op, tx, seq, lsn, append, zero):",
        "    off = 0",
        "    end = len(buf)",
        "    if op == 'c':",
        "        while off < end:",
        *row("after", "            "),
        "            seq += 1",
        "            append(('c', tx, seq, lsn, None, after))",
        "    elif op == 'u':",
        "        while off < end:",
        *row("before", "            "),
        *row("after", "            "),
        "            seq += 1",
        "            append(('u', tx, seq, lsn, before, after))",
        "    else:",
        "        while off < end:",
        *row("before", "            "),
        "            seq += 1",
        "            append((op, tx, seq, lsn, before, None))",
        "    return seq",
    ]
    exec(compile("\n".join(lines), "<mysql change decoder>", "exec"), env)
    decoder: ChangeDecoder = env["decode"]
    return decoder


_STRUCT_FORMATS = {t.TINY: "b", t.SHORT: "h", t.LONG: "i", t.LONGLONG: "q", t.FLOAT: "f", t.DOUBLE: "d"}


def _straight_code(columns: Sequence[RowColumn], types: Sequence[t.MySqlColumnType], bodies: list[list[str]],
                   env: dict[str, Any]) -> list[str]:
    """The columns' `bodies` one after the other, where no value is NULL: a run of two or more
    integer and floating-point columns is read by one struct (FLOAT then normalised as usual)."""
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if len(run) > 1:
            fmt = "<" + "".join(_STRUCT_FORMATS[columns[i].type_code].upper() if columns[i].unsigned
                                else _STRUCT_FORMATS[columns[i].type_code] for i in run)
            packed = struct.Struct(fmt)
            env[f"s{run[0]}"] = packed.unpack_from
            out.append(f"{', '.join(f'v{i}' for i in run)}, = s{run[0]}(buf, off)")
            out.append(f"off += {packed.size}")
            for i in run:
                if columns[i].type_code == t.FLOAT:
                    env[f"f{i}"] = types[i].normalise_binlog()
                    out.append(f"v{i} = f{i}(v{i})")
        else:
            for i in run:
                out.extend(bodies[i])
        run.clear()

    for i, c in enumerate(columns):
        if c.type_code in _STRUCT_FORMATS and not types[i].sql_type:
            run.append(i)
        else:
            flush()
            out.extend(bodies[i])
    flush()
    return out


def _timestamp2(fb: int) -> list[str]:
    """`sec` and `us` of a TIMESTAMP(fsp) at `off`: big-endian seconds, then `fb` bytes of fraction."""
    if not fb:
        return ["sec = from_bytes(buf[off:off + 4], 'big')", "us = 0"]
    scale = f" * {_FRAC_SCALE[fb]}" if _FRAC_SCALE[fb] != 1 else ""
    return [f"sec = from_bytes(buf[off:off + {4 + fb}], 'big')", f"us = (sec & {(1 << (8 * fb)) - 1}){scale}",
            f"sec >>= {8 * fb}"]


def _zero(i: int, v: str, reason: str) -> str:
    # A zero date is delivered as None (or stops the job: the source's `zero`); an empty SET is [].
    return f"if {v} is None: {v} = []" if reason == "EMPTY_SET" else f"if {v} is None: zero({i})"


def _fused_code(i: int, c: RowColumn, ty: t.MySqlColumnType, v: str, env: dict[str, Any]) -> list[str] | None:
    """The lines decoding column `i` into its normalised value (see `compile_change_decoder`)."""
    code, st = c.type_code, ty.sql_type
    if code == t.TIMESTAMP2 and not st:
        # MySQL's zero timestamp (0 s, no fraction) is None; the others aware, in UTC.
        fb = _fsp_bytes(c.fsp)
        # fromtimestamp (C) for whole seconds; the exact sum with a fraction (no float rounding).
        return [*_timestamp2(fb), f"{v} = (EPOCH_UTC + timedelta(0, sec, us) if us else fromtimestamp(sec, UTC)) "
                                  "if sec or us else None",
                f"off += {4 + fb}"]
    if code == t.YEAR and not st:
        return [f"{v} = buf[off]", f"{v} = {v} + 1900 if {v} else 0", "off += 1"]
    if code == t.BIT and not st:
        size = (c.bits + 7) // 8
        return [f"{v} = from_bytes(buf[off:off + {size}], 'big')", f"off += {size}"]
    if code == t.SET and not st and len(set(c.set_values)) == len(c.set_values) and c.set_values == ty.set_values:
        env[f"labels{i}"] = c.set_values
        return [f"mask = from_bytes(buf[off:off + {c.size}], 'little')", f"off += {c.size}",
                f"{v} = [x for k, x in enumerate(labels{i}) if mask >> k & 1]"]
    if st == "uuid" and c.encoding is None and code in (t.STRING, t.VARCHAR, t.VAR_STRING):
        # As types._uuid_text: the 16 bytes (trailing zero bytes dropped in the binlog) in hex, 8-4-4-4-12.
        body = _column_code(i, c, v, env, _zero)
        if body is None:
            return None
        return [*body, f"{v} = {v}.ljust(16, b'\\x00').hex()",
                f"{v} = '-'.join(({v}[:8], {v}[8:12], {v}[12:16], {v}[16:20], {v}[20:]))"]
    body = _column_code(i, c, v, env, _zero)
    if body is None:
        return None
    normalise = ty.normalise_binlog()
    if normalise is None:
        return body
    if c.encoding is None and (st == "" and ty.binary and not (code == t.STRING and ty.length)):
        return body  # binary data is already `bytes` here (the library's '' for empty is not)
    if st == "json" and code == t.BLOB and c.encoding is not None:
        return body  # already text
    env[f"f{i}"] = normalise
    return [*body, f"{v} = None if {v} is None else f{i}({v})"]


def _text(i: int, c: RowColumn, v: str, env: dict[str, Any]) -> str:
    """The expression turning the slice `v` into the column's value."""
    if c.encoding is None:
        return v
    env[f"enc{i}"] = c.encoding
    return f"{v}.decode(enc{i})"


def _decoded(v: str, text: str) -> list[str]:
    return [] if text == v else [f"{v} = {text}"]


def _flag(i: int, v: str, reason: str) -> str:
    """The line recording that column `i`'s None is not SQL NULL (the library's none source)."""
    return f"if {v} is None: flags.append((row, side, {i}, {reason}))"


def _column_code(i: int, c: RowColumn, v: str, env: dict[str, Any],
                 flag: Callable[[int, str, str], str] = _flag) -> list[str] | None:
    """The lines decoding column `i` at `off` into `v` (and moving `off` past it); `flag`
    renders what happens when a value is None for a reason (``ZERO_DATE``, ``ZERO_DATETIME2``,
    ``EMPTY_SET``)."""
    code = c.type_code
    if code == t.TINY:
        return [f"{v} = buf[off]", "off += 1"] if c.unsigned else \
            [f"{v} = buf[off]", f"if {v} > 127: {v} -= 256", "off += 1"]
    ints = _int_code(c)
    if ints is not None:
        fmt, size = ints
        env[f"u{i}"] = struct.Struct(fmt).unpack_from
        return [f"{v} = u{i}(buf, off)[0]", f"off += {size}"]
    if code == t.INT24:
        signed = "False" if c.unsigned else "True"
        return [f"{v} = from_bytes(buf[off:off + 3], 'little', signed={signed})", "off += 3"]
    if code in (t.FLOAT, t.DOUBLE):
        env[f"u{i}"] = struct.Struct("<f" if code == t.FLOAT else "<d").unpack_from
        return [f"{v} = u{i}(buf, off)[0]", f"off += {4 if code == t.FLOAT else 8}"]
    if code == t.YEAR:
        return [f"{v} = buf[off] + 1900", "off += 1"]
    if code == t.NEWDECIMAL:
        size = decimal_size(c.precision, c.scale)
        env["Decimal"], env["EXACT"] = Decimal, _EXACT
        return [*_decimal_code(c.precision, c.scale, f"buf[off:off + {size}]", v), f"off += {size}"]
    if code == t.DATETIME2:
        fb = _fsp_bytes(c.fsp)
        return [f"{v} = decode_datetime2(buf, off, {fb})", f"off += {5 + fb}", flag(i, v, "ZERO_DATETIME2")]
    if code == t.TIMESTAMP2:
        fb = _fsp_bytes(c.fsp)
        return [*_timestamp2(fb), f"{v} = EPOCH + timedelta(0, sec, us)", f"off += {4 + fb}"]
    if code == t.TIME2:
        fb = _fsp_bytes(c.fsp)
        return [f"{v} = decode_time2(buf, off, {fb})", f"off += {3 + fb}"]
    if code == t.DATE:
        return [f"{v} = decode_date(from_bytes(buf[off:off + 3], 'little'))", "off += 3", flag(i, v, "ZERO_DATE")]
    if code in (t.VARCHAR, t.VAR_STRING, t.STRING):
        prefix = ["ln = buf[off]", "off += 1"] if c.max_length <= 255 else \
            ["ln = buf[off] | buf[off + 1] << 8", "off += 2"]
        return [*prefix, f"{v} = buf[off:off + ln]", "off += ln", *_decoded(v, _text(i, c, v, env))]
    if code in (t.BLOB, t.GEOMETRY):
        ls = c.length_size
        if not 1 <= ls <= 4:
            return None
        text = _text(i, c, v, env) if code == t.BLOB else v
        return [f"ln = from_bytes(buf[off:off + {ls}], 'little')", f"off += {ls}", f"{v} = buf[off:off + ln]",
                "off += ln", *_decoded(v, text)]
    if code == t.ENUM:
        env[f"labels{i}"] = c.enum_values
        return [f"{v} = labels{i}[from_bytes(buf[off:off + {c.size}], 'little')]", f"off += {c.size}"]
    if code == t.SET:
        env[f"labels{i}"] = c.set_values
        return [f"mask = from_bytes(buf[off:off + {c.size}], 'little')", f"off += {c.size}",
                f"{v} = {{x for k, x in enumerate(labels{i}) if mask >> k & 1}} or None", flag(i, v, "EMPTY_SET")]
    if code == t.BIT:
        size = (c.bits + 7) // 8
        return [f"{v} = format(from_bytes(buf[off:off + {size}], 'big'), '0{c.bits}b')", f"off += {size}"]
    return None


def text_encoding(name: str | None) -> str | None:
    """A Python codec for a MySQL character set's encoding name, or None for binary data."""
    if name is None or name == "binary":
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None
