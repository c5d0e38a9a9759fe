"""MySQL/MariaDB type mapping: one normalised Python value per column, rendered per sink.

A raw row of the MySQL source (`cdc.events.RawRow`) holds the *normalised* Python value
of every column: the binlog adapter and the snapshot reader each hand their values to
`MySqlColumnType.normalise_binlog` / `normalise_snapshot`, which make them identical
(the float32 shortest rendering, SETs as lists, BIT as int, zero dates as None, UTC
timestamps, UUID/INET6/INET4 as text). The codec then maps those values to JSON and Arrow.
docs/mysql.md has the table; this module is its only implementation.
"""

from __future__ import annotations

import base64
import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa

from cdc.events import UNCHANGED, Column, RawRow

# Binlog column type codes (MySQL's enum_field_types).
TINY, SHORT, LONG, FLOAT, DOUBLE, TIMESTAMP, LONGLONG, INT24 = 1, 2, 3, 4, 5, 7, 8, 9
DATE, TIME, DATETIME, YEAR, VARCHAR, BIT, TIMESTAMP2, DATETIME2, TIME2 = 10, 11, 12, 13, 15, 16, 17, 18, 19
JSON, NEWDECIMAL, ENUM, SET, BLOB, VAR_STRING, STRING, GEOMETRY = 245, 246, 247, 248, 252, 253, 254, 255

_INT_ARROW = {
    (TINY, False): pa.int8(), (TINY, True): pa.uint8(), (SHORT, False): pa.int16(), (SHORT, True): pa.uint16(),
    (INT24, False): pa.int32(), (INT24, True): pa.uint32(), (LONG, False): pa.int32(), (LONG, True): pa.uint32(),
    (LONGLONG, False): pa.int64(), (LONGLONG, True): pa.uint64(),
}
_INT_NAMES = {TINY: "tinyint", SHORT: "smallint", INT24: "mediumint", LONG: "int", LONGLONG: "bigint"}
_F32 = struct.Struct("<f")


def float32_shortest(value: float) -> float:
    """The double nearest the shortest decimal text that reads back as the same float32.

    The binlog carries FLOAT as 4 bytes; widening gives 0.10000000149011612 for 0.1.
    """
    packed = _F32.pack(value)
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        try:
            if _F32.pack(float(text)) == packed:
                return float(text)
        except OverflowError:  # rounded past float32's range: more digits
            continue
    return value


def _iso_fraction(us: int) -> str:
    return "" if not us else "." + f"{us:06d}".rstrip("0")


def _json_datetime(v: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS[.f]`` (the fraction without trailing zeros), ``Z`` when in UTC."""
    tz = v.tzinfo
    if tz is None:
        text = v.isoformat()  # C code; the same digits (4-digit year, 6-digit fraction when not 0)
        return text.rstrip("0") if v.microsecond else text
    if tz is UTC:
        text = v.isoformat()[:-6]  # without "+00:00"
        return (text.rstrip("0") if v.microsecond else text) + "Z"
    base = f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    return base + _iso_fraction(v.microsecond) + "Z"


def time_text(v: timedelta) -> str:
    """A TIME as MySQL prints it: ``[-]HH:MM:SS[.ffffff]`` (hours up to 838)."""
    us = (v.days * 86_400 + v.seconds) * 1_000_000 + v.microseconds
    sign = "-" if us < 0 else ""
    us = abs(us)
    seconds, frac = divmod(us, 1_000_000)
    return f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" + _iso_fraction(frac)


_EPOCH_NAIVE = datetime(1970, 1, 1)


def _uuid_text(value: bytes | str) -> str:
    """MariaDB's UUID (16 bytes in the binlog, trailing zero bytes dropped) as its text."""
    h = _bytes(value).ljust(16, b"\x00").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _bytes(value: bytes | str) -> bytes:
    """A binary value; the library returns an empty one as ``''``."""
    return value.encode() if isinstance(value, str) else value


def _inet4_text(value: bytes | str) -> str:
    """MariaDB's INET4 (4 bytes in the binlog, big-endian) as the dotted text its ``SELECT`` prints."""
    return str(ipaddress.IPv4Address(_bytes(value).ljust(4, b"\x00")))


def _inet6_text(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw.ljust(16, b"\x00"))
    mapped = addr.ipv4_mapped
    return f"::ffff:{mapped}" if mapped is not None else str(addr)


@dataclass(frozen=True, slots=True)
class MySqlColumnType:
    """Everything the mapping needs about one column (from a table map or the catalog).

    `type_code` is the binlog type; `sql_type` refines it where the binlog cannot tell
    (``json``, ``uuid``, ``inet6`` on MariaDB are strings or BINARY(16) in the binlog).
    """

    type_code: int
    sql_type: str = ""
    unsigned: bool = False
    precision: int = 0
    scale: int = 0
    fsp: int = 0
    bits: int = 0
    binary: bool = False
    length: int = 0  # BINARY(n): n, to restore the trailing zero bytes the binlog drops
    set_values: tuple[str, ...] = ()  # SET labels in definition order: the table map's (the snapshot needs none)

    @property
    def name(self) -> str:
        """The SQL type name used in `cdc.events.Column.type_name`."""
        t = self.type_code
        if self.sql_type in ("json", "uuid", "inet6", "inet4"):
            return self.sql_type
        if t in _INT_NAMES:
            return _INT_NAMES[t] + (" unsigned" if self.unsigned else "")
        return {
            NEWDECIMAL: f"decimal({self.precision},{self.scale})", FLOAT: "float", DOUBLE: "double",
            DATE: "date", TIME2: f"time({self.fsp})", TIME: "time", DATETIME2: f"datetime({self.fsp})",
            DATETIME: "datetime", TIMESTAMP2: f"timestamp({self.fsp})", TIMESTAMP: "timestamp", YEAR: "year",
            BIT: f"bit({self.bits})", ENUM: "enum", SET: "set", JSON: "json", GEOMETRY: "geometry",
            BLOB: "blob" if self.binary else "text",
            VARCHAR: "varbinary" if self.binary else "varchar", VAR_STRING: "varbinary" if self.binary else "varchar",
            STRING: f"binary({self.length})" if self.binary else "char",
        }.get(t, f"type{t}")

    def arrow(self) -> pa.DataType:
        t = self.type_code
        if self.sql_type in ("json", "uuid", "inet6", "inet4"):
            return pa.string()
        if t in _INT_NAMES:
            return _INT_ARROW[t, self.unsigned]
        if t == NEWDECIMAL:
            return pa.decimal128(self.precision, self.scale) if self.precision <= 38 else pa.string()
        if t in (DATETIME, DATETIME2):
            return pa.timestamp("us")
        if t in (TIMESTAMP, TIMESTAMP2):
            return pa.timestamp("us", tz="UTC")
        if t in (TIME, TIME2):
            return pa.duration("us")
        simple: dict[int, pa.DataType] = {
            FLOAT: pa.float32(), DOUBLE: pa.float64(), DATE: pa.date32(), YEAR: pa.int16(), BIT: pa.uint64(),
            ENUM: pa.string(), SET: pa.list_(pa.string()), JSON: pa.string(), GEOMETRY: pa.binary(),
        }
        if t in simple:
            return simple[t]
        return pa.binary() if self.binary else pa.string()

    # -- normalisation (raw values) --------------------------------------------------------

    def normalise_binlog(self) -> Callable[[Any], Any] | None:
        """How to turn the binlog adapter's value into the normalised one (None: as is)."""
        t, st = self.type_code, self.sql_type
        if st == "uuid":
            return _uuid_text
        if st == "inet6":
            return lambda v: _inet6_text(_bytes(v))
        if st == "inet4":
            return _inet4_text
        if st == "json" and t == BLOB:
            return lambda v: v.decode() if isinstance(v, bytes) else v
        if t == FLOAT:
            return float32_shortest
        if t in (TIMESTAMP, TIMESTAMP2):
            # TIMESTAMP 0 (1970-01-01 00:00:00, below the type's range) is MySQL's zero timestamp.
            return lambda v: None if v == _EPOCH_NAIVE else v.replace(tzinfo=UTC)
        if t == SET:
            order = {name: i for i, name in enumerate(self.set_values)}
            return lambda v: sorted(v, key=order.__getitem__)
        if t == BIT:
            return lambda v: int(v, 2) if v else 0
        if t == YEAR:
            return lambda v: 0 if v == 1900 else v  # YEAR 0000: the library adds 1900 to 0
        if t == JSON:
            return _mysql_json_text
        if t == STRING and self.binary and self.length:
            n = self.length
            return lambda v: _bytes(v).ljust(n, b"\x00")
        if self.binary:
            return _bytes
        return None

    def normalise_snapshot(self) -> Callable[[Any], Any] | None:
        """How to turn PyMySQL's value (a ``SELECT`` under time_zone UTC) into the normalised one."""
        t, st = self.type_code, self.sql_type
        if st in ("uuid", "inet6", "inet4", "json"):
            return lambda v: v.decode() if isinstance(v, bytes) else v
        if t == FLOAT:
            return float32_shortest
        if t in (TIMESTAMP, TIMESTAMP2):
            return lambda v: v.replace(tzinfo=UTC) if isinstance(v, datetime) else None
        if t in (DATE, DATETIME, DATETIME2):
            return lambda v: v if isinstance(v, date) else None  # zero dates arrive as text
        if t == SET:
            return _set_members
        if t == BIT:
            return lambda v: int.from_bytes(v, "big")
        if t == JSON:
            return lambda v: v.decode() if isinstance(v, bytes) else v
        if t in (VARCHAR, VAR_STRING, STRING, BLOB, ENUM) and not self.binary:
            return lambda v: v.decode() if isinstance(v, bytes) else v
        return None

    # -- rendering -------------------------------------------------------------------------

    def json(self) -> Callable[[Any], Any] | None:
        """How a normalised value becomes a JSON-native one (None: as is)."""
        t = self.type_code
        if self.sql_type in ("json", "uuid", "inet6", "inet4"):
            return None
        if t == NEWDECIMAL:
            return lambda v: format(v, "f")
        if t in (DATETIME, DATETIME2, TIMESTAMP, TIMESTAMP2):
            return _json_datetime
        if t == DATE:
            return lambda v: v.isoformat()
        if t in (TIME, TIME2):
            return time_text
        if self.binary or t == GEOMETRY:
            return lambda v: base64.b64encode(v).decode()
        return None


def _set_members(value: str | bytes) -> list[str]:
    """A SET as the snapshot reads it (``<mask>,<text>``, connectors/mysql/snapshot.py) as its
    chosen labels in definition order, the order the server prints them in.

    No label holds a comma (the server refuses one), so the text splits exactly, except
    that an empty-string member chosen first leaves no trace in it (``SET('', 'a')``
    prints 3 as ``a``, 1 as the empty text): one member fewer than the mask has bits
    is that member, first.
    """
    text = value.decode() if isinstance(value, bytes) else value
    mask, _, chosen = text.partition(",")
    members = chosen.split(",") if chosen else []
    if len(members) < int(mask).bit_count():
        members.insert(0, "")
    return members


def compile_normaliser(types: Sequence[MySqlColumnType]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]] | None:
    """One function per table applying `normalise_binlog` to every non-NULL value of an image.

    None when no column needs it. A TIMESTAMP's conversion is inlined (the common case); the
    others call their `normalise_binlog` function.
    """
    env: dict[str, Any] = {"EPOCH": _EPOCH_NAIVE, "UTC": UTC}
    items = []
    for i, ty in enumerate(types):
        f = ty.normalise_binlog()
        v = f"v{i}"
        if f is None:
            items.append(v)
        elif ty.type_code in (TIMESTAMP, TIMESTAMP2) and not ty.sql_type:
            items.append(f"None if {v} is None or {v} == EPOCH else {v}.replace(tzinfo=UTC)")
        else:
            env[f"f{i}"] = f
            items.append(f"None if {v} is None else f{i}({v})")
    if all(item.startswith("v") for item in items):
        return None
    unpack = ", ".join(f"v{i}" for i in range(len(types))) + ("," if len(types) == 1 else "")
    code = f"def normalise(image):\n    {unpack} = image\n    return ({', '.join(items)},)\n"
    exec(compile(code, "<mysql row normaliser>", "exec"), env)
    out: Callable[[tuple[Any, ...]], tuple[Any, ...]] = env["normalise"]
    return out


def _mysql_json_text(value: Any) -> str:
    """MySQL 8's binary JSON, which the library parses into Python values, as JSON text."""
    if isinstance(value, str | bytes):
        return value.decode() if isinstance(value, bytes) else value

    def fix(v: Any) -> Any:
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
        if isinstance(v, dict):
            return {fix(k): fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, Decimal):
            return float(v)
        return v

    return orjson.dumps(fix(value)).decode()


class MySqlRowCodec:
    """`cdc.events.RowCodec` over normalised MySQL rows (see the module docstring)."""

    def __init__(self, columns: Sequence[Column], types: Sequence[MySqlColumnType]) -> None:
        self.columns = tuple(columns)
        self.types = tuple(types)
        self._names = [c.name for c in self.columns]
        self._json = [t.json() for t in self.types]
        self._to_json = self._compile_to_json()
        self._key = [i for i, c in enumerate(self.columns) if c.key]
        self._schema = pa.schema([pa.field(c.name, t.arrow()) for c, t in zip(self.columns, self.types, strict=True)])
        # Values Arrow takes in another form: a DECIMAL wider than decimal128 as its text.
        self._arrow_form = [
            (lambda v: format(v, "f")) if t.type_code == NEWDECIMAL and t.precision > 38 else None
            for t in self.types
        ]

    def to_python(self, row: RawRow) -> tuple[Any, ...]:
        return tuple(row)

    def _json_value(self, i: int, v: Any) -> Any:
        if v is None:
            return None
        if v is UNCHANGED:
            return "__debezium_unavailable_value"
        f = self._json[i]
        return v if f is None else f(v)

    def to_json(self, row: RawRow) -> bytes:
        return self._to_json(row)

    def _compile_to_json(self) -> Callable[[RawRow], bytes]:
        """One function per table rendering a row's JSON object: no per-column dispatch.

        The same values as `_json_value` per column: None stays null, `UNCHANGED` becomes
        Debezium's placeholder, a column with a JSON form goes through it.
        """
        env: dict[str, Any] = {"dumps": orjson.dumps, "UNCHANGED": UNCHANGED, "UNAV": "__debezium_unavailable_value",
                               "UTC": UTC, "OPT": orjson.OPT_UTC_Z}
        items = []
        for i, (name, f) in enumerate(zip(self._names, self._json, strict=True)):
            env[f"n{i}"] = name
            if f is None:
                items.append(f"n{i}: UNAV if v{i} is UNCHANGED else v{i}")
            else:
                env[f"f{i}"] = f
                ty = self.types[i]
                # DECIMAL's text inlined (the common case): str() is format(v, "f") unless it chose
                # scientific notation (an "E"); others call their rendering.
                call = f"(s if 'E' not in (s := str(v{i})) else format(v{i}, 'f'))" \
                    if ty.type_code == NEWDECIMAL and not ty.sql_type else f"f{i}(v{i})"
                if f is _json_datetime:
                    # orjson renders a datetime in C (OPT_UTC_Z: "Z" for UTC) with all six fraction
                    # digits: the same text unless the fraction has trailing zeros.
                    utc = f"v{i}.tzinfo is UTC and " if ty.type_code in (TIMESTAMP, TIMESTAMP2) else ""
                    call = f"v{i} if {utc}(v{i}.microsecond % 10 or not v{i}.microsecond) else {call}"
                items.append(f"n{i}: None if v{i} is None else UNAV if v{i} is UNCHANGED else {call}")
        n = len(self._names)
        if not n:
            return lambda row: b"{}"
        unpack = ", ".join(f"v{i}" for i in range(n)) + ("," if n == 1 else "")
        code = f"def to_json(row):\n    {unpack} = row\n    return dumps({{{', '.join(items)}}}, option=OPT)\n"
        exec(compile(code, "<mysql row json>", "exec"), env)
        out: Callable[[RawRow], bytes] = env["to_json"]
        return out

    def key_json(self, row: RawRow) -> bytes:
        if not self._key:
            return b"null"
        return orjson.dumps({self._names[i]: self._json_value(i, row[i]) for i in self._key})

    def arrow_schema(self) -> pa.Schema:
        return self._schema

    def to_arrow(self, rows: Sequence[RawRow | None]) -> list[pa.Array]:
        out = []
        for i, field in enumerate(self._schema):
            values = [None if r is None or r[i] is UNCHANGED else r[i] for r in rows]
            form = self._arrow_form[i]
            if form is not None:
                values = [None if v is None else form(v) for v in values]
            out.append(pa.array(values, type=field.type))
        return out
