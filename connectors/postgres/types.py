"""PostgreSQL type mapping: pgoutput text values to JSON, Python and Arrow.

One code path for the stream and (later) the snapshot: both hand over the text form
PostgreSQL prints for a value under the session settings the source pins
(``datestyle=ISO, timezone=UTC, extra_float_digits=3, intervalstyle=postgres``).
The full mapping is documented in docs/types.md; in short:

=====================  =============================  ===========================
source type            event JSON value               Python value
=====================  =============================  ===========================
int2, int4, int8, oid  number                         int
float4, float8         number; "NaN", "Infinity",     float
                       "-Infinity" as strings
numeric                decimal string ("12.50")       decimal.Decimal
bool                   true / false                   bool
timestamptz            ISO-8601 UTC string "...Z"     tz-aware datetime (UTC)
timestamp              ISO-8601 string, no zone       naive datetime
date                   "YYYY-MM-DD"                   datetime.date
bytea                  base64 string                  bytes
uuid                   string                         uuid.UUID
json, jsonb            the JSON text, as a string     str (the JSON text)
everything else        PostgreSQL's text form         str
=====================  =============================  ===========================

Values that Python's types cannot hold (``infinity`` timestamps, BC dates) keep
PostgreSQL's text form as a string in both JSON and Python.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cdc.events import UNCHANGED, Column, RawRow

# Built-in type OIDs (pg_type.dat); stable across PostgreSQL versions.
BOOL: Final = 16
BYTEA: Final = 17
INT8: Final = 20
INT2: Final = 21
INT4: Final = 23
TEXT: Final = 25
OID: Final = 26
JSON: Final = 114
FLOAT4: Final = 700
FLOAT8: Final = 701
BPCHAR: Final = 1042
VARCHAR: Final = 1043
DATE: Final = 1082
TIMESTAMP: Final = 1114
TIMESTAMPTZ: Final = 1184
NUMERIC: Final = 1700
UUID: Final = 2950
JSONB: Final = 3802
TIME: Final = 1083
TIMETZ: Final = 1266
INTERVAL: Final = 1186
INET: Final = 869
CIDR: Final = 650
MACADDR: Final = 829
MACADDR8: Final = 774

#: Debezium's placeholder for a value the source did not send (unchanged TOAST).
UNAVAILABLE_JSON: Final = b'"__debezium_unavailable_value"'

_NEEDS_ESCAPE: Final = re.compile(rb'[\x00-\x1f"\\]')
_FLOAT_SPECIAL: Final = {b"NaN": b'"NaN"', b"Infinity": b'"Infinity"', b"-Infinity": b'"-Infinity"'}


def json_string(value: bytes) -> bytes:
    """A JSON string literal of UTF-8 text; the common case needs no escaping."""
    if _NEEDS_ESCAPE.search(value) is None:
        return b'"' + value + b'"'
    return orjson.dumps(value.decode())


def _json_raw(value: bytes) -> bytes:
    return value


def _json_float(value: bytes) -> bytes:
    return _FLOAT_SPECIAL.get(value, value)


def _json_bool(value: bytes) -> bytes:
    return b"true" if value == b"t" else b"false"


def _json_quoted(value: bytes) -> bytes:
    """A string of a type whose text never holds quotes, backslashes or control characters."""
    return b'"' + value + b'"'


def _json_timestamptz(value: bytes) -> bytes:
    # "2026-01-02 03:04:05.123456+00" (timezone=UTC); anything else (infinity, BC, years
    # past 9999) keeps PostgreSQL's text.
    if value[10:11] == b" " and value[-3:] == b"+00" and value[4:5] == b"-":
        return b'"' + value[:10] + b"T" + value[11:-3] + b'Z"'
    return json_string(value)


def _json_timestamp(value: bytes) -> bytes:
    if value[10:11] == b" " and value[4:5] == b"-" and value[-1:].isdigit():
        return b'"' + value[:10] + b"T" + value[11:] + b'"'
    return json_string(value)


def _json_bytea(value: bytes) -> bytes:
    return b'"' + base64.b64encode(bytes.fromhex(value[2:].decode())) + b'"'


def _py_bool(text: str) -> bool:
    return text == "t"


def _py_timestamptz(text: str) -> datetime | str:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return text  # infinity, BC


def _py_timestamp(text: str) -> datetime | str:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return text


def _py_date(text: str) -> date | str:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return text


def _py_bytea(text: str) -> bytes:
    return bytes.fromhex(text[2:])


_JsonRender = Callable[[bytes], bytes]
_PyConvert = Callable[[str], Any]

_JSON: Final[dict[int, _JsonRender]] = {
    INT2: _json_raw,
    INT4: _json_raw,
    INT8: _json_raw,
    OID: _json_raw,
    FLOAT4: _json_float,
    FLOAT8: _json_float,
    BOOL: _json_bool,
    TIMESTAMPTZ: _json_timestamptz,
    TIMESTAMP: _json_timestamp,
    BYTEA: _json_bytea,
    NUMERIC: _json_quoted,
    UUID: _json_quoted,
    DATE: _json_quoted,
    TIME: _json_quoted,
    TIMETZ: _json_quoted,
    INTERVAL: _json_quoted,
    INET: _json_quoted,
    CIDR: _json_quoted,
    MACADDR: _json_quoted,
    MACADDR8: _json_quoted,
}

_PYTHON: Final[dict[int, _PyConvert]] = {
    INT2: int,
    INT4: int,
    INT8: int,
    OID: int,
    FLOAT4: float,
    FLOAT8: float,
    NUMERIC: Decimal,
    BOOL: _py_bool,
    TIMESTAMPTZ: _py_timestamptz,
    TIMESTAMP: _py_timestamp,
    DATE: _py_date,
    BYTEA: _py_bytea,
    UUID: uuid.UUID,
}

#: Arrow types of the columns whose text casts exactly; every other type is a string.
_ARROW: Final[dict[int, pa.DataType]] = {
    INT2: pa.int16(),
    INT4: pa.int32(),
    INT8: pa.int64(),
    OID: pa.int64(),
    FLOAT4: pa.float32(),
    FLOAT8: pa.float64(),
    BOOL: pa.bool_(),
}

#: Types whose text form is already a JSON literal (never NULL-free, never TOASTed).
_INLINE_JSON: Final = frozenset({INT2, INT4, INT8, OID})


#: Inline expressions for the generated row renderer, by the renderer they stand for.
_INLINE_TEMPLATES: Final[dict[_JsonRender, str]] = {
    json_string: "(Q + {v} + Q if ESC({v}) is None else J({v}))",
    _json_quoted: "Q + {v} + Q",
    _json_bool: "(T if {v} == b't' else F)",
    _json_float: "FS({v}, {v})",
    _json_timestamptz: "(Q + {v}[:10] + TQ + {v}[11:-3] + ZQ if {v}[-3:] == P00 and {v}[10:11] == SP else TZ({v}))",
}


def _json_special(value: object) -> bytes:
    """JSON for a value that is not text: NULL or a value the source did not send."""
    return b"null" if value is None else UNAVAILABLE_JSON


class PgRowCodec:
    """The `RowCodec` of one PostgreSQL table schema (see cdc.events.RowCodec).

    `to_json` is generated once per schema as straight-line code: one expression per
    column, no per-column loop or dict, because it runs for every row of the stream.
    """

    __slots__ = ("_columns", "_python", "key_json", "to_json")

    def __init__(self, columns: Sequence[Column]) -> None:
        self._columns = tuple(columns)
        self._python: tuple[_PyConvert, ...] = tuple(_PYTHON.get(c.type_oid, str) for c in columns)
        width = len(self._columns)
        self.to_json: Callable[[RawRow], bytes] = _compile_json(self._columns, range(width), width)
        key = [i for i, c in enumerate(self._columns) if c.key]
        if key:
            key_of = _compile_json([self._columns[i] for i in key], key, width)
            self.key_json: Callable[[RawRow], bytes] = key_of
        else:
            self.key_json = _null_key

    def arrow_schema(self) -> pa.Schema:
        """The Arrow type of every column (see `_ARROW`; text for unmapped types)."""
        return pa.schema([pa.field(c.name, _ARROW.get(c.type_oid, pa.string())) for c in self._columns])

    def to_arrow(self, rows: Sequence[RawRow | None]) -> list[pa.Array]:
        """Per column: gather the text values (UNCHANGED and missing rows as null), then one cast."""
        out = []
        for i, field in enumerate(self.arrow_schema()):
            texts = [
                None if row is None or (v := row[i]) is None or v is UNCHANGED else v
                for row in rows
            ]
            raw = pa.array(texts, pa.binary())
            if field.type == pa.bool_():
                out.append(pc.equal(raw.cast(pa.string()), "t"))
            else:
                out.append(raw.cast(pa.string()).cast(field.type))
        return out

    def to_python(self, row: RawRow) -> tuple[Any, ...]:
        """Python values in column order; NULL is None and `UNCHANGED` stays `UNCHANGED`."""
        return tuple(
            v if v is None or v is UNCHANGED else convert(v.decode())  # type: ignore[attr-defined]
            for convert, v in zip(self._python, row, strict=True)
        )


def _null_key(row: RawRow) -> bytes:
    return b"null"


def _compile_json(columns: Sequence[Column], idx: Sequence[int], width: int) -> Callable[[RawRow], bytes]:
    """Generate ``row -> b'{"col":value,...}'`` for `columns`, found at `idx` of a row of `width`.

    Only indexes and fixed names enter the generated source; column names and render
    functions are passed in as constants, so no source name can inject code. The row is
    unpacked once, so a row of the wrong width fails loudly instead of shifting columns.
    """
    names = [orjson.dumps(c.name) for c in columns]
    consts: dict[str, object] = {
        "S": _json_special, "Q": b'"', "ESC": _NEEDS_ESCAPE.search, "J": json_string, "T": b"true", "F": b"false",
        "FS": _FLOAT_SPECIAL.get, "P00": b"+00", "SP": b" ", "TQ": b"T", "ZQ": b'Z"', "TZ": _json_timestamptz,
    }
    parts: list[str] = []
    for n, (i, col) in enumerate(zip(idx, columns, strict=True)):
        consts[f"K{n}"] = (b"{" if n == 0 else b",") + names[n] + b":"
        parts.append(f"K{n}")
        v = f"v{i}"
        # Common types are rendered inline (C-level calls only): a Python call per value
        # costs as much as the rendering itself.
        template = _INLINE_TEMPLATES.get(_JSON.get(col.type_oid, json_string))
        if col.type_oid in _INLINE_JSON:
            template = "{v}"
        if template is None:
            consts[f"R{n}"] = _JSON.get(col.type_oid, json_string)
            template = f"R{n}({{v}})"
        parts.append(f"({template.format(v=v)} if {v}.__class__ is bytes else S({v}))")
    if not parts:
        return lambda r: b"{}"
    unpack = "".join(f"v{i}, " for i in range(width))
    src = f"def to_json(r):\n    ({unpack}) = r\n    return b''.join((" + ", ".join(parts) + ", b'}'))\n"
    namespace: dict[str, Any] = dict(consts)
    exec(compile(src, "<pgoutput row codec>", "exec"), namespace)
    fn: Callable[[RawRow], bytes] = namespace["to_json"]
    return fn
