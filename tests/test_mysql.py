"""MySQL connector pieces that need no server: positions, float32 rendering, TIME text, the codec."""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.config import parse_config
from cdc.errors import ConfigError
from cdc.events import UNCHANGED, WHOLE_TRANSACTION, Column, Position
from connectors.mysql import positions as pos
from connectors.mysql import types as t
from connectors.mysql.binlog import BinlogColumn
from connectors.mysql.catalog import CatalogColumn
from connectors.mysql.snapshot import binlog_type, catalog_type
from connectors.mysql.types import MySqlColumnType, MySqlRowCodec, float32_shortest, time_text

coords = st.tuples(st.integers(1, 999_999), st.integers(4, (1 << 32) - 1))


@given(coords, coords)
def test_positions_order_like_the_binlog(a: tuple[int, int], b: tuple[int, int]) -> None:
    """Transaction starts and "before" marks order like (file index, offset); a start sits after its mark."""
    assert (pos.transaction_commit(*a) < pos.transaction_commit(*b)) == (a < b)
    assert pos.before(*a) < pos.transaction_commit(*a)
    if a < b:
        assert pos.transaction_commit(*a) < pos.before(*b)


@given(coords, st.integers(1, WHOLE_TRANSACTION))
def test_resume_point_is_where_the_position_was_taken(c: tuple[int, int], seq: int) -> None:
    """A transaction (whole or chunk) resumes at its start; a "before" mark at its offset."""
    assert pos.resume_point(Position(pos.transaction_commit(*c), seq)) == c
    assert pos.resume_point(Position(pos.before(*c))) == c


def test_file_names_round_trip() -> None:
    """mysql-bin.000042 is index 42 and back; a name without a number is a one-line error."""
    assert pos.file_index("mysql-bin.000042") == 42
    assert pos.file_name("mysql-bin", 42) == "mysql-bin.000042"
    assert pos.file_index(pos.file_name("b", 1_234_567)) == 1_234_567
    with pytest.raises(Exception, match="unexpected binlog file name"):
        pos.file_index("mysql-bin")


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_shortest_reads_back_as_the_same_float32(value: float) -> None:
    """The rendering is the shortest text that reads back to the same 4 bytes."""
    short = float32_shortest(value)
    assert struct.pack("<f", short) == struct.pack("<f", value)
    assert significant_digits(short) <= significant_digits(value)


def significant_digits(value: float) -> int:
    """Digits of the shortest text of `value` that reads back to it, without exponent or padding zeros
    (1e12 has 1, where ``repr`` prints 13 digits and a fraction)."""
    return len(Decimal(repr(value)).normalize().as_tuple().digits)


def test_float32_shortest_compares_digits_not_text_length() -> None:
    """999999995904.0 (a float32) is 1e12 in shortest form: fewer digits, though a longer repr."""
    assert float32_shortest(999999995904.0) == 1e12
    assert significant_digits(1e12) == 1


def test_float32_examples() -> None:
    """0.1 stored as FLOAT is 0.1, not 0.10000000149011612."""
    widened = struct.unpack("<f", struct.pack("<f", 0.1))[0]
    assert float32_shortest(widened) == 0.1
    assert float32_shortest(struct.unpack("<f", struct.pack("<f", 3.40282e38))[0]) == 3.40282e38


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(hours=-838, minutes=-59, seconds=-59), "-838:59:59"),
        (timedelta(microseconds=-500_000), "-00:00:00.5"),
        (timedelta(hours=12, minutes=34, seconds=56, microseconds=789_000), "12:34:56.789"),
        (timedelta(0), "00:00:00"),
    ],
)
def test_time_text(value: timedelta, text: str) -> None:
    """TIME renders as MySQL prints it, negative values and fractions exact."""
    assert time_text(value) == text


def codec() -> MySqlRowCodec:
    types = [
        MySqlColumnType(t.LONG, unsigned=True),
        MySqlColumnType(t.NEWDECIMAL, precision=12, scale=2),
        MySqlColumnType(t.TIMESTAMP2, fsp=6),
        MySqlColumnType(t.DATETIME2, fsp=6),
        MySqlColumnType(t.TIME2, fsp=6),
        MySqlColumnType(t.SET, set_values=("x", "y")),
        MySqlColumnType(t.BLOB, binary=True),
        MySqlColumnType(t.DATE),
        MySqlColumnType(t.LONGLONG, unsigned=True),
    ]
    names = ["id", "d", "ts", "dt", "tm", "s", "b", "dd", "u"]
    columns = [Column(n, ty.name, ty.type_code, -1, n == "id") for n, ty in zip(names, types, strict=True)]
    return MySqlRowCodec(columns, types)


ROW = (7, Decimal("-1.50"), datetime(2024, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC), datetime(2024, 2, 29, 23, 59, 59, 1),
       timedelta(microseconds=-1), [], b"\x00\xff", date(2024, 3, 1), 2**64 - 1)


def test_codec_json_and_key() -> None:
    """The documented JSON rendering of each normalised value, and the key object."""
    c = codec()
    assert orjson.loads(c.to_json(ROW)) == {
        "id": 7, "d": "-1.50", "ts": "2024-01-01T00:00:00.5Z", "dt": "2024-02-29T23:59:59.000001",
        "tm": "-00:00:00.000001", "s": [], "b": "AP8=", "dd": "2024-03-01", "u": 2**64 - 1,
    }
    assert orjson.loads(c.key_json(ROW)) == {"id": 7}


_REFERENCE_TYPES = [
    MySqlColumnType(t.LONGLONG), MySqlColumnType(t.NEWDECIMAL, precision=12, scale=2),
    MySqlColumnType(t.TIMESTAMP2, fsp=6), MySqlColumnType(t.DATETIME2, fsp=6), MySqlColumnType(t.TIME2, fsp=6),
    MySqlColumnType(t.DATE), MySqlColumnType(t.BLOB, binary=True), MySqlColumnType(t.VARCHAR),
    MySqlColumnType(t.STRING, sql_type="uuid", binary=True), MySqlColumnType(t.FLOAT),
]
_naive = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999))
_REFERENCE_VALUES = [
    st.integers(-(2**63), 2**63 - 1), st.decimals(places=2, allow_nan=False, allow_infinity=False,
                                                  min_value=-10**9, max_value=10**9),
    _naive.map(lambda v: v.replace(tzinfo=UTC)), _naive, st.timedeltas(timedelta(hours=-838), timedelta(hours=838)),
    st.dates(), st.binary(max_size=8), st.text(max_size=8), st.text(max_size=8), st.floats(allow_nan=False),
]


@given(st.tuples(*[st.one_of(st.none(), st.just(UNCHANGED), v) for v in _REFERENCE_VALUES]))
def test_compiled_to_json_equals_the_per_column_rendering(row: tuple[object, ...]) -> None:
    """The generated per-table `to_json` gives the bytes of rendering each column by `_json_value`."""
    c = MySqlRowCodec([Column(f"c{i}", ty.name) for i, ty in enumerate(_REFERENCE_TYPES)], _REFERENCE_TYPES)
    reference = orjson.dumps({f"c{i}": c._json_value(i, v) for i, v in enumerate(row)})
    assert c.to_json(row) == reference


@given(st.decimals(allow_nan=False, allow_infinity=False) | st.decimals(places=8, allow_nan=False,
                                                                         allow_infinity=False))
def test_decimal_json_is_its_fixed_point_text(v: Decimal) -> None:
    """A DECIMAL renders as format(v, "f") whatever its exponent (the inlined str() falls back on an "E")."""
    c = MySqlRowCodec([Column("d", "decimal(65,30)")], [MySqlColumnType(t.NEWDECIMAL, precision=65, scale=30)])
    assert c.to_json((v,)) == orjson.dumps({"d": format(v, "f")})


@given(_naive, st.booleans())
def test_datetime_rendering_equals_the_field_by_field_text(v: datetime, utc: bool) -> None:
    """The isoformat-based datetime text equals ``YYYY-MM-DDTHH:MM:SS`` plus the trimmed fraction (and Z)."""
    expected = f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    expected += ("." + f"{v.microsecond:06d}".rstrip("0") if v.microsecond else "") + ("Z" if utc else "")
    assert t._json_datetime(v.replace(tzinfo=UTC) if utc else v) == expected


@given(st.tuples(st.none() | st.integers(0, 2**31), st.none() | _naive, st.none() | st.binary(max_size=16),
                 st.none() | st.floats(allow_nan=False, width=32), st.none() | st.text(max_size=4)))
def test_compiled_normaliser_equals_each_columns_normalisation(image: tuple[object, ...]) -> None:
    """`compile_normaliser` applies each column's `normalise_binlog` to its non-NULL values (NULL stays)."""
    types = [MySqlColumnType(t.LONG), MySqlColumnType(t.TIMESTAMP2, fsp=6),
             MySqlColumnType(t.STRING, sql_type="uuid", binary=True), MySqlColumnType(t.FLOAT),
             MySqlColumnType(t.VARCHAR)]
    normalise = t.compile_normaliser(types)
    assert normalise is not None
    expected = []
    for ty, v in zip(types, image, strict=True):
        f = ty.normalise_binlog()
        expected.append(v if v is None or f is None else f(v))
    assert normalise(image) == tuple(expected)
    assert t.compile_normaliser([MySqlColumnType(t.LONG), MySqlColumnType(t.VARCHAR)]) is None


def test_codec_arrow_types_and_values() -> None:
    """Arrow columns carry the documented types and the exact values (NULL and missing rows as null)."""
    c = codec()
    arrays = c.to_arrow([ROW, None])
    assert [a.type for a in arrays] == [
        pa.uint32(), pa.decimal128(12, 2), pa.timestamp("us", tz="UTC"), pa.timestamp("us"), pa.duration("us"),
        pa.list_(pa.string()), pa.binary(), pa.date32(), pa.uint64(),
    ]
    assert [a[0].as_py() for a in arrays] == list(ROW)
    assert all(a[1].as_py() is None for a in arrays)
    assert c.arrow_schema().names == ["id", "d", "ts", "dt", "tm", "s", "b", "dd", "u"]


def test_wide_decimal_is_a_string_in_arrow() -> None:
    """DECIMAL(65,30) does not fit decimal128: Arrow gets its exact text."""
    ty = MySqlColumnType(t.NEWDECIMAL, precision=65, scale=30)
    c = MySqlRowCodec([Column("d", ty.name)], [ty])
    value = Decimal("12345678901234567890123456789012345.123456789012345678901234567891")
    assert c.to_arrow([(value,)])[0].to_pylist() == [format(value, "f")]



@pytest.mark.parametrize(("binlog", "text"), [
    (b"\xc0\xa8\x01\x05", "192.168.1.5"), (b"\n", "10.0.0.0"), (b"", "0.0.0.0"), ("", "0.0.0.0"),
    (b"\xff\xff\xff\xff", "255.255.255.255"),
])
def test_inet4_from_the_binlog_is_the_dotted_text(binlog: bytes | str, text: str) -> None:
    """MariaDB's INET4 arrives as 4 bytes (trailing zero bytes dropped) and is the text a SELECT gives."""
    catalog = CatalogColumn("a", "inet4", "inet4", 0, 0, 0, None, 0, False, False)
    stream = binlog_type(BinlogColumn("a", t.STRING, binary=True), catalog)
    snapshot = catalog_type(catalog)
    assert (stream.name, stream.type_code, stream.arrow()) == (snapshot.name, snapshot.type_code, snapshot.arrow())
    assert (stream.name, stream.arrow()) == ("inet4", pa.string())
    normalise = stream.normalise_binlog()
    assert normalise is not None and normalise(binlog) == text
    row = (normalise(binlog),)
    assert orjson.loads(MySqlRowCodec([Column("a", stream.name)], [stream]).to_json(row)) == {"a": text}


@pytest.mark.parametrize(("selected", "members"), [
    ("0,", []), ("1,", [""]), ("3,a", ["", "a"]), ("7,a,,b", ["a", "", "b"]), ("2,", [""]),
    ("5,😀,it's", ["😀", "it's"]), ("9,b\\s,x\"y", ["b\\s", 'x"y']), (b"2,\xf0\x9f\x98\x80", ["😀"]),
])
def test_a_snapshot_set_is_its_labels_from_mask_and_text(selected: str | bytes, members: list[str]) -> None:
    """The snapshot's ``<mask>,<text>`` of a SET is its labels in definition order, needing no catalog labels
    (utf8mb3 there); an empty-string member chosen first, absent from the text, comes back from the mask."""
    catalog = CatalogColumn("s", "set", "set('?','a')", 0, 0, 0, "utf8mb4", 0, False, False)
    snapshot = catalog_type(catalog)
    assert (snapshot.name, snapshot.arrow(), snapshot.set_values) == ("set", pa.list_(pa.string()), ())
    normalise = snapshot.normalise_snapshot()
    assert normalise is not None and normalise(selected) == members


_MYSQL_JOB = """\
jobs:
  - name: shop
    source: {{type: mysql, host: db, user: cdc, password: secret, server_id: {server_id}}}
    tables: {{include: ["shop.*"]}}
    sinks: [{{type: file, path: ./out}}]
"""


def test_mysql_source_config() -> None:
    """type: mysql parses with defaults; the password is a secret; server_id is required and positive."""
    cfg = parse_config(_MYSQL_JOB.format(server_id=5401), "x.yaml", {})
    source = cfg.jobs[0].source
    assert source.type == "mysql" and source.port == 3306 and source.server_id == 5401
    assert "secret" not in repr(source)
    with pytest.raises(ConfigError, match=r"x.yaml:3: jobs\[0\].source.server_id"):
        parse_config(_MYSQL_JOB.format(server_id=0), "x.yaml", {})


def test_mysql_source_from_a_dsn() -> None:
    """dsn: mysql://user[:password]@host[:port]/db sets host, port, user (and password); mixing is an error."""
    text = _MYSQL_JOB.replace("host: db, user: cdc, password: secret", "dsn: 'mysql://cdc%40x:p%3Aw@db:3307/shop'")
    source = parse_config(text.format(server_id=7), "x.yaml", {}).jobs[0].source
    assert (source.host, source.port, source.user, source.password.get_secret_value()) == ("db", 3307, "cdc@x", "p:w")
    text = _MYSQL_JOB.replace("host: db, user: cdc", "dsn: 'mysql://cdc@db/shop'")
    source = parse_config(text.format(server_id=7), "x.yaml", {}).jobs[0].source
    assert (source.host, source.port, source.password.get_secret_value()) == ("db", 3306, "secret")
    with pytest.raises(ConfigError, match="either dsn or host"):
        parse_config(_MYSQL_JOB.replace("user: cdc", "dsn: 'mysql://cdc@db'").format(server_id=7), "x.yaml", {})
    with pytest.raises(ConfigError, match="mysql://user"):
        parse_config(_MYSQL_JOB.replace("host: db, user: cdc", "dsn: 'postgresql://cdc@db'").format(server_id=7),
                     "x.yaml", {})
