"""PostgreSQL type mapping: a value's text form to event JSON, Python and Arrow.

One code path for the stream and the snapshot: both hand a `PgRowCodec` the text form
PostgreSQL's output function prints for each value (pgoutput sends it as is; a COPY in
text format sends it with COPY's own escapes, which the snapshot removes first), under
the session settings the source pins (``datestyle=ISO, timezone=UTC,
extra_float_digits=3, intervalstyle=postgres``, see `catalog.SESSION_OPTIONS`).

docs/types.md is the single source of truth for the mapping (one table: PostgreSQL type,
event JSON, Python, Arrow, notes); this module implements it and the tests in
tests/test_types.py and integration/test_type_zoo.py hold both to it. In short: numbers
stay numbers (numeric as an exact decimal string), temporal values become ISO-8601
strings (timestamptz in UTC with ``Z``; BC and years past 9999 in ISO-8601's expanded,
astronomical form; ``infinity`` as is), intervals ISO-8601 durations, bytea base64,
arrays JSON arrays of their elements' renderings, json/jsonb their exact text as a
string, and every other type its text form as a string.

A column's type is known by OID. Built-in types and arrays of them need nothing more;
enums, domains, composites, ranges, extension types and arrays of them are resolved
through a `PgTypeCatalog`, read once with `TYPE_CATALOG_SQL`.
"""

from __future__ import annotations

import binascii
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cdc.events import UNCHANGED, Column, RawRow

# Built-in type OIDs (pg_type.dat); stable across PostgreSQL versions.
BOOL: Final = 16
BYTEA: Final = 17
CHAR: Final = 18
NAME: Final = 19
INT8: Final = 20
INT2: Final = 21
INT4: Final = 23
TEXT: Final = 25
OID: Final = 26
JSON: Final = 114
XML: Final = 142
POINT: Final = 600
BOX: Final = 603
CIDR: Final = 650
FLOAT4: Final = 700
FLOAT8: Final = 701
MACADDR8: Final = 774
MONEY: Final = 790
MACADDR: Final = 829
INET: Final = 869
BPCHAR: Final = 1042
VARCHAR: Final = 1043
DATE: Final = 1082
TIME: Final = 1083
TIMESTAMP: Final = 1114
TIMESTAMPTZ: Final = 1184
INTERVAL: Final = 1186
TIMETZ: Final = 1266
BIT: Final = 1560
VARBIT: Final = 1562
NUMERIC: Final = 1700
UUID: Final = 2950
TSVECTOR: Final = 3614
JSONB: Final = 3802
INT4RANGE: Final = 3904

# Arrays of built-in types: array OID -> element OID (so a codec needs no catalog for them).
INT4_ARRAY: Final = 1007
TEXT_ARRAY: Final = 1009
BOX_ARRAY: Final = 1020
_BUILTIN_ARRAYS: Final[dict[int, int]] = {
    1000: BOOL, 1001: BYTEA, 1002: CHAR, 1003: NAME, 1016: INT8, 1005: INT2, INT4_ARRAY: INT4,
    TEXT_ARRAY: TEXT, 1028: OID, 1010: 27, 1011: 28, 1012: 29, 199: JSON, 143: XML, 1017: POINT,
    1018: 601, 1019: 602, BOX_ARRAY: BOX, 1027: 604, 629: 628, 651: CIDR, 1021: FLOAT4, 1022: FLOAT8,
    719: 718, 775: MACADDR8, 791: MONEY, 1040: MACADDR, 1041: INET, 1014: BPCHAR, 1015: VARCHAR,
    1182: DATE, 1183: TIME, 1115: TIMESTAMP, 1185: TIMESTAMPTZ, 1187: INTERVAL, 1270: TIMETZ,
    1561: BIT, 1563: VARBIT, 1231: NUMERIC, 2210: 2205, 2211: 2206, 2287: 2249, 2951: UUID,
    3221: 3220, 3643: TSVECTOR, 3645: 3615, 3807: JSONB, 3905: INT4RANGE, 3907: 3906, 3909: 3908,
    3911: 3910, 3913: 3912, 3927: 3926, 4073: 4072, 6150: 4451, 6151: 4532, 6152: 4533, 6153: 4534,
    6155: 4535, 6157: 4536, 271: 5069,
}
#: Array element delimiters other than ',' (pg_type.typdelim): box's text holds commas.
_BUILTIN_DELIMITERS: Final[dict[int, bytes]] = {BOX: b";"}

#: Debezium's placeholder for a value the source did not send (unchanged TOAST).
UNAVAILABLE_JSON: Final = b'"__debezium_unavailable_value"'

#: One query, run by the source at start (and again when a relation names an OID the
#: catalog lacks), that yields the rows `PgTypeCatalog.from_rows` takes. An array is a
#: type whose text form comes from array_out (int2vector and oidvector, whose elements
#: are space-separated, are not), so its element OID is 0 otherwise.
TYPE_CATALOG_SQL: Final = """\
SELECT t.oid::int8, format_type(t.oid, NULL), t.typtype::text, t.typcategory::text,
       CASE WHEN t.typoutput = 'array_out'::regproc THEN t.typelem::int8 ELSE 0 END,
       t.typbasetype::int8, t.typtypmod, t.typdelim::text
FROM pg_catalog.pg_type t"""


# -- the catalog -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PgType:
    """One row of `TYPE_CATALOG_SQL`: what the codec needs to know about a type."""

    oid: int
    name: str
    #: pg_type.typtype: b base, c composite, d domain, e enum, p pseudo, r range, m multirange.
    kind: str = "b"
    #: pg_type.typcategory (A array, N numeric, S string, U user-defined, ...).
    category: str = "U"
    #: The element type when the text form is an array literal, else 0.
    element: int = 0
    #: The base type of a domain, else 0.
    base: int = 0
    #: The type modifier a domain puts on its base type (numeric(10,2) -> its typmod), else -1.
    base_modifier: int = -1
    #: The delimiter between elements of an array of this type (box: ';').
    delimiter: str = ","


class PgTypeCatalog:
    """The types of one database, by OID, as `TYPE_CATALOG_SQL` reads them.

    Built-in types need no catalog; a codec without one renders a non-built-in type
    (enum, domain, composite, range of a user type, extension type, array of any of
    these) as its plain text form, so the source should always pass one.
    """

    __slots__ = ("_types",)

    def __init__(self, types: Iterable[PgType] = ()) -> None:
        self._types: dict[int, PgType] = {t.oid: t for t in types}

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]]) -> PgTypeCatalog:
        """A catalog from the rows of `TYPE_CATALOG_SQL`, in its column order."""
        return cls(
            PgType(int(oid), str(name), str(kind), str(category), int(element or 0), int(base or 0),
                   int(-1 if modifier is None else modifier), str(delimiter or ","))
            for oid, name, kind, category, element, base, modifier, delimiter in rows
        )

    def get(self, oid: int) -> PgType | None:
        return self._types.get(oid)

    def __contains__(self, oid: object) -> bool:
        return oid in self._types

    def __len__(self) -> int:
        return len(self._types)

    def name(self, oid: int) -> str:
        """``format_type(oid, NULL)`` as read, or the OID as text for a type not in the catalog."""
        t = self._types.get(oid)
        return t.name if t is not None else str(oid)

    def missing(self, oids: Iterable[int]) -> set[int]:
        """The OIDs (of a relation's columns) the catalog does not know: reload it first."""
        return {oid for oid in oids if oid not in self._types}


# -- JSON renderers: text form (bytes) -> JSON literal (bytes) --------------------------

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


def _json_jsonb(value: bytes) -> bytes:
    # jsonb_out never prints control characters (they are escaped inside strings, and the
    # only whitespace between tokens is ' '), so escaping '\' and '"' is exact.
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _json_timestamptz(value: bytes) -> bytes:
    # "2026-01-02 03:04:05.123456+00" (timezone=UTC); BC, years past 9999 and infinity
    # take the slow path.
    if value[10:11] == b" " and value[-3:] == b"+00" and value[4:5] == b"-":
        return b'"' + value[:10] + b"T" + value[11:-3] + b'Z"'
    return b'"' + iso_datetime(value).encode() + b'"'


def _json_timestamp(value: bytes) -> bytes:
    if value[10:11] == b" " and value[-3:] != b" BC":
        return b'"' + value[:10] + b"T" + value[11:] + b'"'
    return b'"' + iso_datetime(value).encode() + b'"'


def _json_date(value: bytes) -> bytes:
    if len(value) == 10:
        return b'"' + value + b'"'
    return b'"' + iso_datetime(value).encode() + b'"'


def _json_bytea(value: bytes) -> bytes:
    return b'"' + binascii.b2a_base64(_bytea(value), newline=False) + b'"'


def _json_interval(value: bytes) -> bytes:
    return b'"' + iso_interval(value).encode() + b'"'


# -- temporal values ---------------------------------------------------------------------

_DATETIME: Final = re.compile(
    rb"(\d{4,})-(\d\d)-(\d\d)(?: (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?)?([+-]\d\d(?::\d\d){0,2})?( BC)?"
)
_INFINITY: Final = (b"infinity", b"-infinity")


def iso_datetime(text: bytes) -> str:
    """A date, timestamp or timestamptz text form as ISO-8601 (the slow path of the renderers).

    ``infinity`` and ``-infinity`` stay as they are. Years use ISO-8601's astronomical
    numbering: 1 BC is ``0000``, 44 BC is ``-0043``, and years past 9999 get a ``+``
    (``+10000-01-01``). An offset of ``+00`` becomes ``Z``; others keep PostgreSQL's form.
    """
    if text in _INFINITY:
        return text.decode()
    m = _DATETIME.fullmatch(text)
    if m is None:
        return text.decode()  # not a form the pinned session settings print: as is
    year_text, month, day, hh, mi, ss, frac, offset, bc = m.groups()
    year = int(year_text)
    if bc:
        year = 1 - year
    if year > 9999:
        out = f"+{year}"
    elif year < 0:
        out = f"-{-year:04d}"
    else:
        out = f"{year:04d}"
    out += f"-{month.decode()}-{day.decode()}"
    if hh is not None:
        out += f"T{hh.decode()}:{mi.decode()}:{ss.decode()}"
        if frac:
            out += "." + frac.decode()
    if offset is not None:
        out += "Z" if offset == b"+00" else offset.decode()
    return out


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date; `year` is astronomical (1 BC = 0)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


#: Arrow stand-ins for ``infinity`` and ``-infinity`` (the extremes of the storage type).
_DATE_INFINITY: Final = {b"infinity": 2**31 - 1, b"-infinity": -(2**31)}
_TIMESTAMP_INFINITY: Final = {b"infinity": 2**63 - 1, b"-infinity": -(2**63)}


def _epoch_days(text: bytes) -> int:
    if text in _DATE_INFINITY:
        return _DATE_INFINITY[text]
    m = _DATETIME.fullmatch(text)
    if m is None:
        raise ValueError(f"not a date: {text!r}")
    year = int(m[1])
    return _days_from_civil(1 - year if m[9] else year, int(m[2]), int(m[3]))


def _epoch_micros(text: bytes) -> int | None:
    if text in _TIMESTAMP_INFINITY:
        return _TIMESTAMP_INFINITY[text]
    m = _DATETIME.fullmatch(text)
    if m is None or m[4] is None:
        raise ValueError(f"not a timestamp: {text!r}")
    year = int(m[1])
    days = _days_from_civil(1 - year if m[9] else year, int(m[2]), int(m[3]))
    seconds = days * 86400 + int(m[4]) * 3600 + int(m[5]) * 60 + int(m[6])
    if m[8] is not None:
        sign = -1 if m[8][:1] == b"-" else 1
        parts = [int(p) for p in m[8][1:].split(b":")] + [0, 0]
        seconds -= sign * (parts[0] * 3600 + parts[1] * 60 + parts[2])
    micros = seconds * 1_000_000 + int((m[7] or b"").ljust(6, b"0"))
    # PostgreSQL's last ~30 years (after 294247-01-10) do not fit int64 microseconds since 1970.
    return micros if -(2**63) < micros < 2**63 - 1 else None


def _time_micros(text: bytes) -> int:
    hh, mi, rest = text.split(b":", 2)
    ss, _, frac = rest.partition(b".")
    return (int(hh) * 3600 + int(mi) * 60 + int(ss)) * 1_000_000 + int(frac.ljust(6, b"0"))


_POSTGRES_INTERVAL: Final = re.compile(
    rb"(?:([+-]?\d+) years? ?)?(?:([+-]?\d+) mons? ?)?(?:([+-]?\d+) days? ?)?"
    rb"(?:([+-])?(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?)?"
)


def iso_interval(text: bytes) -> str:
    """An interval's text form (IntervalStyle ``postgres``) as an ISO-8601 duration.

    The result is what PostgreSQL itself prints under IntervalStyle ``iso_8601``: fields
    that are zero are left out, each field carries its own sign (``P-1Y-2M3DT-4H``), and
    the zero interval is ``PT0S``. Text already in ISO form, and ``infinity`` (PostgreSQL
    17), pass through.
    """
    if text[:1] == b"P" or text in _INFINITY:
        return text.decode()
    m = _POSTGRES_INTERVAL.fullmatch(text)
    if m is None or not text:
        return text.decode()  # another IntervalStyle: as is
    years, mons, days_text, sign, hh, mi, ss, frac = m.groups()
    months = int(years or 0) * 12 + int(mons or 0)
    days = int(days_text or 0)
    micros = 0
    if hh is not None:
        micros = ((int(hh) * 60 + int(mi)) * 60 + int(ss)) * 1_000_000 + int((frac or b"").ljust(6, b"0"))
        if sign == b"-":
            micros = -micros
    if not months and not days and not micros:
        return "PT0S"
    out = ["P"]
    msign = -1 if months < 0 else 1
    for value, unit in ((msign * (abs(months) // 12), "Y"), (msign * (abs(months) % 12), "M"), (days, "D")):
        if value:
            out.append(f"{value}{unit}")
    if micros:
        out.append("T")
        tsign = -1 if micros < 0 else 1
        hours, rest = divmod(abs(micros), 3_600_000_000)
        minutes, rest = divmod(rest, 60_000_000)
        for value, unit in ((tsign * hours, "H"), (tsign * minutes, "M")):
            if value:
                out.append(f"{value}{unit}")
        if rest:
            seconds, fraction = divmod(rest, 1_000_000)
            out.append(("-" if tsign < 0 else "") + str(seconds))
            if fraction:
                out.append(f".{fraction:06d}".rstrip("0"))
            out.append("S")
    return "".join(out)


# -- bytea -------------------------------------------------------------------------------

_BYTEA_ESCAPE: Final = re.compile(rb"\\(\\|[0-3][0-7]{2})")


def _bytea(text: bytes) -> bytes:
    """The bytes of bytea's text form: hex (``\\x0102``, the default) or the old escape form."""
    if text[:2] == b"\\x":
        return binascii.a2b_hex(memoryview(text)[2:])
    return _BYTEA_ESCAPE.sub(lambda m: b"\\" if m[1] == b"\\" else bytes([int(m[1], 8)]), text)


# -- arrays ------------------------------------------------------------------------------

_ARRAY_PATTERNS: dict[bytes, re.Pattern[bytes]] = {}
_UNESCAPE: Final = re.compile(rb"\\(.)", re.S)


def _array_pattern(delim: bytes) -> re.Pattern[bytes]:
    pattern = _ARRAY_PATTERNS.get(delim)
    if pattern is None:
        d = re.escape(delim)
        pattern = re.compile(
            rb'\s*(?:(\{)|(\})|(' + d + rb')|"([^"\\]*(?:\\.[^"\\]*)*)"|((?:[^{}"\\\s' + d + rb"]|\\.)+))",
            re.S,
        )
        _ARRAY_PATTERNS[delim] = pattern
    return pattern


def _unescape(text: bytes) -> bytes:
    return _UNESCAPE.sub(rb"\1", text) if b"\\" in text else text


def parse_array(text: bytes, delim: bytes = b",") -> list[Any]:
    """PostgreSQL's array literal as nested lists of element texts (bytes) and None.

    Handles what array_out prints: ``{}``, ``{1,2,NULL}``, nested ``{{1,2},{3,4}}``,
    quoted elements with backslash escapes (``"NULL"`` is the text NULL, bare ``NULL`` is
    a null element), a type's own delimiter (box: ``;``), and explicit bounds
    (``[0:1]={1,2}``, which are dropped). Raises ValueError on anything else.
    """
    if text[:1] == b"[":
        text = text[text.index(b"=") + 1 :]
    text = text.strip()
    if text[:1] != b"{" or text[-1:] != b"}":
        raise ValueError(f"not an array literal: {text[:40]!r}")
    if b'"' not in text and b"\\" not in text and text.count(b"{") == 1 and text.count(b"}") == 1:
        inner = text[1:-1].strip()
        if not inner:
            return []
        return [None if item.upper() == b"NULL" else item for item in (i.strip() for i in inner.split(delim))]
    match = _array_pattern(delim).match
    root: list[Any] = []
    stack: list[list[Any]] = []
    pos, end = 0, len(text)
    while pos < end:
        m = match(text, pos)
        if m is None or (not stack and pos):
            raise ValueError(f"malformed array literal at byte {pos}: {text[pos : pos + 40]!r}")
        pos = m.end()
        opening, closing, delimiter, quoted, bare = m.groups()
        if opening:
            nested: list[Any] = []
            (stack[-1] if stack else root).append(nested)
            stack.append(nested)
        elif closing:
            if not stack:
                raise ValueError(f"malformed array literal: unbalanced '}}' at byte {pos}")
            stack.pop()
        elif delimiter:
            continue
        elif not stack:
            raise ValueError(f"malformed array literal: element outside braces at byte {pos}")
        elif quoted is not None:
            stack[-1].append(_unescape(quoted))
        else:
            stack[-1].append(None if bare.upper() == b"NULL" else _unescape(bare))
    if stack or len(root) != 1:
        raise ValueError(f"malformed array literal: {text[:40]!r}")
    outer: list[Any] = root[0]
    return outer


def _flatten(items: list[Any], out: list[bytes | None]) -> None:
    for item in items:
        if item.__class__ is list:
            _flatten(item, out)
        else:
            out.append(item)


# -- the mapping of one type -------------------------------------------------------------

_Texts = list[bytes | None]


@dataclass(frozen=True, slots=True)
class PgTypeMapping:
    """How the values of one column type render (see docs/types.md).

    `json` and `python` take a value's text form (never NULL); `arrow` takes a column of
    them (None for NULL) and returns an array of `arrow_type`. `inline` is the expression
    the generated row renderer uses instead of calling `json` (``{v}`` is the value).
    """

    json: Callable[[bytes], bytes]
    python: Callable[[bytes], Any]
    arrow_type: Any  # pa.DataType
    arrow: Callable[[_Texts], Any]  # -> pa.Array
    inline: str | None = None


#: Builders that also take an Arrow binary/string array of the texts (the columnar snapshot
#: path, `PgRowCodec.columns_to_arrow`); the others take a list.
_COLUMNAR: Final[set[Callable[..., Any]]] = set()


def _columnar(build: Callable[[_Texts], Any]) -> Callable[[_Texts], Any]:
    _COLUMNAR.add(build)
    return build


def _listed(texts: Any) -> _Texts:
    return texts.to_pylist() if isinstance(texts, pa.Array) else texts  # type: ignore[no-any-return]


@_columnar
def _as_strings(texts: _Texts) -> Any:
    if isinstance(texts, pa.Array):
        return texts if texts.type == pa.string() else texts.cast(pa.string())
    return pa.array(texts, pa.binary()).cast(pa.string())


def _cast_to(arrow_type: Any) -> Callable[[_Texts], Any]:
    def build(texts: _Texts) -> Any:
        return _as_strings(texts).cast(arrow_type)

    return _columnar(build)


def _per_value(arrow_type: Any, convert: Callable[[bytes], Any]) -> Callable[[_Texts], Any]:
    def build(texts: _Texts) -> Any:
        return pa.array([None if t is None else convert(t) for t in texts], arrow_type)

    return build


def _cast_or_per_value(
    arrow_type: Any, storage: Any, convert: Callable[[bytes], int | None]
) -> Callable[[_Texts], Any]:
    """Arrow's own cast for the common forms; per value (BC, infinity, ...) when it refuses."""

    def build(texts: _Texts) -> Any:
        try:
            return _as_strings(texts).cast(arrow_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return pa.array([None if t is None else convert(t) for t in _listed(texts)], storage).cast(arrow_type)

    return _columnar(build)


@_columnar
def _bool_array(texts: _Texts) -> Any:
    return pc.equal(_as_strings(texts), "t")


def _decode(value: bytes) -> str:
    return value.decode()


def _py_bool(value: bytes) -> bool:
    return value == b"t"


def _py_numeric(value: bytes) -> Decimal:
    return Decimal(value.decode())


def _py_timestamptz(value: bytes) -> datetime | str:
    if value[10:11] == b" " and value[-3:] == b"+00" and value[4:5] == b"-":
        return datetime.fromisoformat(value.decode())
    return iso_datetime(value)  # infinity, BC, years past 9999


def _py_timestamp(value: bytes) -> datetime | str:
    if value[10:11] == b" " and value[-3:] != b" BC":
        return datetime.fromisoformat(value.decode())
    return iso_datetime(value)


def _py_date(value: bytes) -> date | str:
    if len(value) == 10:
        return date.fromisoformat(value.decode())
    return iso_datetime(value)


def _py_time(value: bytes) -> time | str:
    if value[:2] == b"24":
        return value.decode()  # 24:00:00, which Python's time cannot hold
    return time.fromisoformat(value.decode())


def _py_bytea(value: bytes) -> bytes:
    return _bytea(value)


def _py_uuid(value: bytes) -> uuid.UUID:
    return uuid.UUID(value.decode())


def _py_interval(value: bytes) -> str:
    return iso_interval(value)


_STRING: Final = pa.string()

#: Inline expressions of the generated row renderer; names are constants of `_compile_json`.
_TEXT_INLINE: Final = "(Q + {v} + Q if ESC({v}) is None else J({v}))"
_QUOTED_INLINE: Final = "Q + {v} + Q"


def _text_mapping(json: Callable[[bytes], bytes] = json_string, inline: str | None = _TEXT_INLINE) -> PgTypeMapping:
    return PgTypeMapping(json, _decode, _STRING, _as_strings, inline)


#: A type without a mapping of its own: its text form as a string, everywhere.
TEXT_MAPPING: Final = _text_mapping()
_QUOTED_TEXT: Final = _text_mapping(_json_quoted, _QUOTED_INLINE)

_SCALARS: Final[dict[int, PgTypeMapping]] = {
    INT2: PgTypeMapping(_json_raw, int, pa.int16(), _cast_to(pa.int16()), "{v}"),
    INT4: PgTypeMapping(_json_raw, int, pa.int32(), _cast_to(pa.int32()), "{v}"),
    INT8: PgTypeMapping(_json_raw, int, pa.int64(), _cast_to(pa.int64()), "{v}"),
    OID: PgTypeMapping(_json_raw, int, pa.int64(), _cast_to(pa.int64()), "{v}"),
    FLOAT4: PgTypeMapping(_json_float, float, pa.float32(), _cast_to(pa.float32()), "FS({v}, {v})"),
    FLOAT8: PgTypeMapping(_json_float, float, pa.float64(), _cast_to(pa.float64()), "FS({v}, {v})"),
    BOOL: PgTypeMapping(_json_bool, _py_bool, pa.bool_(), _bool_array, "(T if {v} == TB else F)"),
    TIMESTAMPTZ: PgTypeMapping(
        _json_timestamptz, _py_timestamptz, pa.timestamp("us", tz="UTC"),
        _cast_or_per_value(pa.timestamp("us", tz="UTC"), pa.int64(), _epoch_micros),
        "(Q + {v}[:10] + TQ + {v}[11:-3] + ZQ if {v}[-3:] == P00 and {v}[10:11] == SP else TZ({v}))",
    ),
    TIMESTAMP: PgTypeMapping(
        _json_timestamp, _py_timestamp, pa.timestamp("us"),
        _cast_or_per_value(pa.timestamp("us"), pa.int64(), _epoch_micros),
        "(Q + {v}[:10] + TQ + {v}[11:] + Q if {v}[10:11] == SP and {v}[-3:] != BC else TS({v}))",
    ),
    DATE: PgTypeMapping(
        _json_date, _py_date, pa.date32(), _cast_or_per_value(pa.date32(), pa.int32(), _epoch_days),
        "(Q + {v} + Q if len({v}) == 10 else DT({v}))",
    ),
    TIME: PgTypeMapping(
        _json_quoted, _py_time, pa.time64("us"),
        lambda texts: pa.array([None if t is None else _time_micros(t) for t in texts], pa.int64()).cast(
            pa.time64("us")
        ),
        _QUOTED_INLINE,
    ),
    TIMETZ: PgTypeMapping(_json_quoted, _py_time, _STRING, _as_strings, _QUOTED_INLINE),
    INTERVAL: PgTypeMapping(_json_interval, _py_interval, _STRING, _per_value(_STRING, _py_interval)),
    BYTEA: PgTypeMapping(_json_bytea, _py_bytea, pa.binary(), _per_value(pa.binary(), _bytea)),
    UUID: PgTypeMapping(_json_quoted, _py_uuid, _STRING, _as_strings, _QUOTED_INLINE),
    JSON: TEXT_MAPPING,
    JSONB: _text_mapping(_json_jsonb, "Q + {v}.replace(BS, BS2).replace(DQ, EDQ) + Q"),
    INET: _QUOTED_TEXT,
    CIDR: _QUOTED_TEXT,
    MACADDR: _QUOTED_TEXT,
    MACADDR8: _QUOTED_TEXT,
    BIT: _QUOTED_TEXT,
    VARBIT: _QUOTED_TEXT,
}


def _numeric_mapping(type_modifier: int) -> PgTypeMapping:
    """numeric: an exact decimal string; Arrow decimal128(p, s) when the typmod fits, else string."""
    arrow_type: Any = _STRING
    arrow: Callable[[_Texts], Any] = _as_strings
    if type_modifier >= 4:  # VARHDRSZ + (precision << 16 | scale & 0x7ff)
        precision = ((type_modifier - 4) >> 16) & 0xFFFF
        scale = (((type_modifier - 4) & 0x7FF) ^ 1024) - 1024
        if 1 <= precision <= 38 and 0 <= scale <= precision:
            arrow_type = pa.decimal128(precision, scale)
            arrow = _decimal_builder(arrow_type)
    return PgTypeMapping(_json_quoted, _py_numeric, arrow_type, arrow, _QUOTED_INLINE)


def _decimal_builder(arrow_type: Any) -> Callable[[_Texts], Any]:
    def build(texts: _Texts) -> Any:
        strings = _as_strings(texts)
        finite = pc.if_else(pc.ends_with(strings, "N"), None, strings)  # NaN -> null (the only non-number)
        return finite.cast(arrow_type)

    return _columnar(build)


def _int_array_json(value: bytes) -> bytes:
    # An integer array's text is already JSON but for its braces and NULLs.
    if value[:1] == b"[":
        value = value[value.index(b"=") + 1 :]
    return value.replace(b"{", b"[").replace(b"}", b"]").replace(b"NULL", b"null")


def _array_mapping(element: PgTypeMapping, delim: bytes, integers: bool) -> PgTypeMapping:
    """An array: a JSON array of the element renderings (nested per dimension, null for NULL),
    a (nested) list in Python, and Arrow list<element> with the dimensions flattened."""
    render, convert = element.json, element.python

    def json_items(items: list[Any]) -> bytes:
        return b"[" + b",".join(
            b"null" if x is None else json_items(x) if x.__class__ is list else render(x) for x in items
        ) + b"]"

    def python_items(items: list[Any]) -> list[Any]:
        return [None if x is None else python_items(x) if x.__class__ is list else convert(x) for x in items]

    def build(texts: _Texts) -> Any:
        offsets = [0]
        flat: list[bytes | None] = []
        nulls = []
        for t in texts:
            if t is not None:
                _flatten(parse_array(t, delim), flat)
            nulls.append(t is None)
            offsets.append(len(flat))
        return pa.ListArray.from_arrays(
            pa.array(offsets, pa.int32()), element.arrow(flat), mask=pa.array(nulls, pa.bool_())
        )

    def to_json(value: bytes) -> bytes:
        return json_items(parse_array(value, delim))

    def to_python(value: bytes) -> list[Any]:
        return python_items(parse_array(value, delim))

    return PgTypeMapping(_int_array_json if integers else to_json, to_python, pa.list_(element.arrow_type), build)


_INTEGERS: Final = frozenset({INT2, INT4, INT8, OID})


def type_mapping(type_oid: int, type_modifier: int = -1, catalog: PgTypeCatalog | None = None) -> PgTypeMapping:
    """The mapping of a column of type `type_oid` with `type_modifier` (pg_attribute.atttypmod).

    Domains map as their base type (with the domain's own modifier when the column has
    none); arrays map their element type; built-in types by OID; everything else
    (enums, composites, ranges, multiranges, extension types, unknown OIDs) as text.
    """
    for _ in range(32):  # domains over domains, bounded against a cyclic catalog
        known = catalog.get(type_oid) if catalog is not None else None
        if known is None or known.kind != "d" or not known.base:
            break
        if type_modifier == -1:
            type_modifier = known.base_modifier
        type_oid = known.base
    if type_oid == NUMERIC:
        return _numeric_mapping(type_modifier)
    scalar = _SCALARS.get(type_oid)
    if scalar is not None:
        return scalar
    element = _BUILTIN_ARRAYS.get(type_oid, 0)
    if not element and known is not None:
        element = known.element
    if element:
        # The column's modifier is its elements' (numeric(10,2)[] carries numeric(10,2)'s).
        mapping = type_mapping(element, type_modifier, catalog)
        element_type = catalog.get(element) if catalog is not None else None
        delim = element_type.delimiter.encode() if element_type is not None else _BUILTIN_DELIMITERS.get(element, b",")
        return _array_mapping(mapping, delim, element in _INTEGERS)
    return TEXT_MAPPING


# -- the row codec -----------------------------------------------------------------------


def _json_special(value: object) -> bytes:
    """JSON for a value that is not text: NULL or a value the source did not send."""
    return b"null" if value is None else UNAVAILABLE_JSON


class PgRowCodec:
    """The `RowCodec` of one PostgreSQL table schema (see cdc.events.RowCodec).

    `catalog` resolves types that are not built in (see `PgTypeCatalog`); without it
    those render as their text form. `to_json` is generated once per schema as
    straight-line code: one expression per column, no per-column loop or dict, because
    it runs for every row of the stream.
    """

    __slots__ = ("_columns", "_mappings", "_python", "_schema", "key_json", "to_json")

    def __init__(self, columns: Sequence[Column], catalog: PgTypeCatalog | None = None) -> None:
        self._columns = tuple(columns)
        self._mappings = tuple(type_mapping(c.type_oid, c.type_modifier, catalog) for c in self._columns)
        self._python = tuple(m.python for m in self._mappings)
        self._schema = pa.schema(
            [pa.field(c.name, m.arrow_type) for c, m in zip(self._columns, self._mappings, strict=True)]
        )
        width = len(self._columns)
        self.to_json: Callable[[RawRow], bytes] = _compile_json(self._columns, self._mappings, range(width), width)
        key = [i for i, c in enumerate(self._columns) if c.key]
        if key:
            key_of = _compile_json(
                [self._columns[i] for i in key], [self._mappings[i] for i in key], key, width
            )
            self.key_json: Callable[[RawRow], bytes] = key_of
        else:
            self.key_json = _null_key

    def arrow_schema(self) -> pa.Schema:
        """The Arrow type of every column (docs/types.md)."""
        return self._schema

    def to_arrow(self, rows: Sequence[RawRow | None]) -> list[pa.Array]:
        """Per column: gather the text values (UNCHANGED and missing rows as null), then convert."""
        out = []
        for i, mapping in enumerate(self._mappings):
            texts = [
                None if row is None or (v := row[i]) is None or v is UNCHANGED else v
                for row in rows
            ]
            out.append(mapping.arrow(texts))  # type: ignore[arg-type]
        return out

    def columns_to_arrow(self, columns: Sequence[pa.Array]) -> list[pa.Array]:
        """`to_arrow` for rows already in columns: one Arrow binary (or string) array of texts per
        column (null for NULL), as the columnar snapshot reads them; vectorized where the type allows."""
        out = []
        for mapping, column in zip(self._mappings, columns, strict=True):
            build = mapping.arrow
            out.append(build(column) if build in _COLUMNAR else build(column.to_pylist()))
        return out

    def to_python(self, row: RawRow) -> tuple[Any, ...]:
        """Python values in column order; NULL is None and `UNCHANGED` stays `UNCHANGED`."""
        return tuple(
            v if v is None or v is UNCHANGED else convert(v)  # type: ignore[arg-type]
            for convert, v in zip(self._python, row, strict=True)
        )


def _null_key(row: RawRow) -> bytes:
    return b"null"


#: Constants the inline expressions of `PgTypeMapping.inline` may use.
_INLINE_CONSTANTS: Final[dict[str, object]] = {
    "S": _json_special, "Q": b'"', "ESC": _NEEDS_ESCAPE.search, "J": json_string, "T": b"true", "F": b"false",
    "TB": b"t", "FS": _FLOAT_SPECIAL.get, "P00": b"+00", "SP": b" ", "TQ": b"T", "ZQ": b'Z"', "BC": b" BC",
    "TZ": _json_timestamptz, "TS": _json_timestamp, "DT": _json_date,
    "BS": b"\\", "BS2": b"\\\\", "DQ": b'"', "EDQ": b'\\"',
}


def _compile_json(
    columns: Sequence[Column], mappings: Sequence[PgTypeMapping], idx: Sequence[int], width: int
) -> Callable[[RawRow], bytes]:
    """Generate ``row -> b'{"col":value,...}'`` for `columns`, found at `idx` of a row of `width`.

    Only indexes and fixed names enter the generated source; column names and render
    functions are passed in as constants, so no source name can inject code. The row is
    unpacked once, so a row of the wrong width fails loudly instead of shifting columns.
    """
    consts: dict[str, object] = dict(_INLINE_CONSTANTS)
    parts: list[str] = []
    for n, (i, col, mapping) in enumerate(zip(idx, columns, mappings, strict=True)):
        consts[f"K{n}"] = (b"{" if n == 0 else b",") + orjson.dumps(col.name) + b":"
        parts.append(f"K{n}")
        v = f"v{i}"
        # Common types are rendered inline (C-level calls only): a Python call per value
        # costs as much as the rendering itself.
        template = mapping.inline
        if template is None:
            consts[f"R{n}"] = mapping.json
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
