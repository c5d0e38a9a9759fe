"""Tests of the pure pgoutput decoder: a test-side encoder builds each message per the docs."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.errors import DecodeError
from cdc.events import UNCHANGED, RawRow
from connectors.postgres.pgoutput import (
    PG_EPOCH_UNIX_US,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    MessageType,
    Origin,
    PrimaryKeepalive,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeMessage,
    Update,
    XLogData,
    decode_message,
    decode_tuple,
    format_lsn,
    parse_copy_data,
    parse_lsn,
    pg_now_us,
    pg_timestamp_to_datetime,
    standby_status_update,
)
from connectors.postgres.source import with_old_values

LSN = 0x16B3748
LSN_TEXT = "0/16B3748"

# ---------------------------------------------------------------- test-side encoder


def enc_str(text: str) -> bytes:
    """A NUL-terminated UTF-8 string."""
    return text.encode() + b"\0"


def enc_tuple(row: RawRow, kinds: str | None = None) -> bytes:
    """TupleData; `kinds` may force 'b' for some bytes values (default 't')."""
    out = [struct.pack(">H", len(row))]
    for i, value in enumerate(row):
        if value is None:
            out.append(b"n")
        elif value is UNCHANGED:
            out.append(b"u")
        else:
            assert isinstance(value, bytes)
            kind = kinds[i] if kinds else "t"
            out.append(kind.encode() + struct.pack(">I", len(value)) + value)
    return b"".join(out)


def enc_xid(xid: int | None) -> bytes:
    """The streamed-transaction xid, present only inside a stream."""
    return b"" if xid is None else struct.pack(">I", xid)


def encode(msg: Message) -> bytes:
    """The pgoutput bytes of `msg`; an xid that is not None means 'inside a stream'."""
    match msg:
        case Begin():
            return b"B" + struct.pack(">QqI", msg.final_lsn, msg.commit_ts, msg.xid)
        case Commit():
            return b"C" + struct.pack(">BQQq", msg.flags, msg.commit_lsn, msg.end_lsn, msg.commit_ts)
        case Origin():
            return b"O" + struct.pack(">Q", msg.commit_lsn) + enc_str(msg.name)
        case Relation():
            cols = b"".join(
                struct.pack(">B", c.flags) + enc_str(c.name) + struct.pack(">Ii", c.type_oid, c.type_modifier)
                for c in msg.columns
            )
            return (
                b"R"
                + enc_xid(msg.xid)
                + struct.pack(">I", msg.oid)
                + enc_str(msg.namespace)
                + enc_str(msg.name)
                + msg.replica_identity.encode()
                + struct.pack(">H", len(msg.columns))
                + cols
            )
        case TypeMessage():
            return (
                b"Y"
                + enc_xid(msg.xid)
                + struct.pack(">I", msg.oid)
                + enc_str(msg.namespace)
                + enc_str(msg.name)
            )
        case Insert():
            return b"I" + enc_xid(msg.xid) + struct.pack(">I", msg.relation_oid) + b"N" + enc_tuple(msg.new)
        case Update():
            old = b""
            if msg.old is not None and msg.old_kind is not None:
                old = msg.old_kind.encode() + enc_tuple(msg.old)
            return (
                b"U"
                + enc_xid(msg.xid)
                + struct.pack(">I", msg.relation_oid)
                + old
                + b"N"
                + enc_tuple(msg.new)
            )
        case Delete():
            return (
                b"D"
                + enc_xid(msg.xid)
                + struct.pack(">I", msg.relation_oid)
                + msg.old_kind.encode()
                + enc_tuple(msg.old)
            )
        case Truncate():
            options = (1 if msg.cascade else 0) | (2 if msg.restart_identity else 0)
            n = len(msg.relation_oids)
            return b"T" + enc_xid(msg.xid) + struct.pack(f">IB{n}I", n, options, *msg.relation_oids)
        case LogicalMessage():
            return (
                b"M"
                + enc_xid(msg.xid)
                + struct.pack(">BQ", 1 if msg.transactional else 0, msg.lsn)
                + enc_str(msg.prefix)
                + struct.pack(">I", len(msg.content))
                + msg.content
            )
        case StreamStart():
            return b"S" + struct.pack(">IB", msg.xid, 1 if msg.first_segment else 0)
        case StreamStop():
            return b"E"
        case StreamCommit():
            return b"c" + struct.pack(
                ">IBQQq", msg.xid, msg.flags, msg.commit_lsn, msg.end_lsn, msg.commit_ts
            )
        case StreamAbort():
            tail = b"" if msg.abort_lsn is None else struct.pack(">Qq", msg.abort_lsn, msg.abort_ts or 0)
            return b"A" + struct.pack(">II", msg.xid, msg.subxid) + tail
    raise AssertionError(f"no encoder for {msg!r}")


def in_stream(msg: Message) -> bool:
    """Whether `msg` was encoded with a streamed-transaction xid."""
    return (
        isinstance(msg, Relation | TypeMessage | Insert | Update | Delete | Truncate | LogicalMessage)
        and msg.xid is not None
    )


COLUMNS = (
    RelationColumn(1, "id", 23, -1),
    RelationColumn(0, "name", 1043, 68),
    RelationColumn(0, "ts", 1184, -1),
)
ROW: RawRow = (b"1", b"alice", None)


def samples(xid: int | None) -> list[Message]:
    """One message of every type; xid-bearing ones carry `xid` (None: protocol 1)."""
    return [
        Begin(0x1_0000_0010, 770_000_000_000_000, 742),
        Commit(0, 0x1_0000_0010, 0x1_0000_0040, 770_000_000_000_000),
        Origin(0xFFFF_FFFF_FFFF_FFFF, "nœud-ノード"),
        Relation(xid, 16384, "public", "users", "d", COLUMNS),
        Relation(xid, 16385, "s", "empty", "n", ()),
        TypeMessage(xid, 90001, "public", "mood"),
        Insert(xid, 16384, ROW),
        Update(xid, 16384, None, None, (b"1", UNCHANGED, b"")),
        Update(xid, 16384, (b"1", None, None), "K", (b"2", b"bob", None)),
        Update(xid, 16384, ROW, "O", (b"1", b"bob", None)),
        Delete(xid, 16384, (b"1", None, None), "K"),
        Delete(xid, 16384, ROW, "O"),
        Truncate(xid, (16384, 16385), True, False),
        Truncate(xid, (16384,), False, True),
        LogicalMessage(xid, True, 0x2_0000_0000, "cdc", b"\x00\xffpayload"),
        LogicalMessage(xid, False, 1, "", b""),
        StreamStart(742, True),
        StreamStart(742, False),
        StreamStop(),
        StreamCommit(742, 0, 0x1_0000_0010, 0x1_0000_0040, -5),
        StreamAbort(742, 743),
        StreamAbort(742, 742, 0x1_0000_0050, 770_000_000_000_001),
    ]


ALL_SAMPLES = samples(None) + [m for m in samples(742) if in_stream(m)]


def sample_id(msg: Message) -> str:
    """A readable pytest id."""
    return f"{type(msg).__name__}{'-stream' if in_stream(msg) else ''}"


# ------------------------------------------------------------------------ LSN and time


def test_format_lsn() -> None:
    """LSNs print as PostgreSQL prints them: uppercase hex halves, no padding."""
    assert format_lsn(LSN) == LSN_TEXT
    assert format_lsn(0) == "0/0"
    assert format_lsn((0x16 << 32) | 0xB374D848) == "16/B374D848"
    assert format_lsn(2**64 - 1) == "FFFFFFFF/FFFFFFFF"
    with pytest.raises(ValueError):
        format_lsn(-1)
    with pytest.raises(ValueError):
        format_lsn(2**64)


def test_parse_lsn() -> None:
    """parse_lsn reads what format_lsn writes, in any hex case, and rejects anything else."""
    assert parse_lsn("16/b374d848") == (0x16 << 32) | 0xB374D848
    assert parse_lsn("0/0") == 0
    for lsn in (0, 1, LSN, 2**32, 2**64 - 1):
        assert parse_lsn(format_lsn(lsn)) == lsn
    for bad in ("", "0", "0/", "/0", " 0/0", "0/0\n", "0x1/0", "+1/0", "1_0/0", "123456789/0", "0/g", "٣/0"):
        with pytest.raises(ValueError):
            parse_lsn(bad)


def test_pg_timestamps() -> None:
    """PostgreSQL timestamps count microseconds from 2000-01-01 UTC."""
    assert pg_timestamp_to_datetime(0) == datetime(2000, 1, 1, tzinfo=UTC)
    assert pg_timestamp_to_datetime(-1) == datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert pg_timestamp_to_datetime(1).tzinfo is UTC
    assert datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1_000_000 == PG_EPOCH_UNIX_US
    now = datetime.now(UTC)
    assert abs((pg_timestamp_to_datetime(pg_now_us()) - now).total_seconds()) < 5
    with pytest.raises(OverflowError):
        pg_timestamp_to_datetime(2**63 - 1)


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize("msg", ALL_SAMPLES, ids=sample_id)
def test_decode_each_message(msg: Message) -> None:
    """Every message type decodes to the dataclass it was encoded from."""
    assert decode_message(encode(msg), LSN, in_stream=in_stream(msg)) == msg


@pytest.mark.parametrize("msg", ALL_SAMPLES, ids=sample_id)
def test_decode_memoryview(msg: Message) -> None:
    """A memoryview (as XLogData carries) decodes like bytes, and values come out as bytes."""
    data = b"junk" + encode(msg)
    decoded = decode_message(memoryview(data)[4:], LSN, in_stream=in_stream(msg))
    assert decoded == msg
    for row in (getattr(decoded, "new", None), getattr(decoded, "old", None)):
        assert row is None or all(v is None or v is UNCHANGED or type(v) is bytes for v in row)


def test_decode_golden_bytes() -> None:
    """Hand-written bytes from the documented layouts decode as expected."""
    begin = bytes.fromhex("4200000000016B37480000000000000064000002E6")
    assert decode_message(begin, LSN) == Begin(LSN, 100, 742)
    insert = bytes.fromhex("49000040004E00027400000001316E")
    assert decode_message(insert, LSN) == Insert(None, 16384, (b"1", None))
    streamed = bytes.fromhex("49000002E6000040004E000175")
    assert decode_message(streamed, LSN, in_stream=True) == Insert(742, 16384, (UNCHANGED,))
    relation = b"R\x00\x00@\x00public\x00t\x00f\x00\x01" + b"\x01id\x00" + struct.pack(">Ii", 23, -1)
    decoded = decode_message(relation, LSN)
    assert isinstance(decoded, Relation)
    assert decoded.replica_identity == "f"
    assert decoded.columns == (RelationColumn(1, "id", 23, -1),)
    assert decoded.columns[0].key


def test_relation_column_key_flag() -> None:
    """Only flag bit 1 marks a key column."""
    assert RelationColumn(1, "a", 23, -1).key
    assert RelationColumn(3, "a", 23, -1).key
    assert not RelationColumn(0, "a", 23, -1).key
    assert not RelationColumn(2, "a", 23, -1).key


def test_message_type_enum() -> None:
    """The enum values are the documented type bytes."""
    assert ord("I") == MessageType.INSERT
    assert ord("c") == MessageType.STREAM_COMMIT
    assert len({int(t) for t in MessageType}) == len(MessageType) == 14


# ----------------------------------------------------------------------------- tuples


def test_tuple_kinds() -> None:
    """n, u, t and b columns decode to None, UNCHANGED and bytes."""
    row: RawRow = (None, UNCHANGED, b"text", b"\x00\x01\xff")
    data = b"xx" + enc_tuple(row, kinds="nutb") + b"rest"
    assert decode_tuple(data, 2, LSN) == (row, len(data) - 4)


def test_unchanged_values_come_from_a_full_old_row() -> None:
    """Under REPLICA IDENTITY FULL an unchanged (TOASTed) value of the new row is the old row's value,
    also when the key changes; a key-only old row leaves it UNCHANGED."""
    body = b"x" * 10_000
    update = decode_message(encode(Update(None, 7, (b"1", body, b"0"), "O", (b"2", UNCHANGED, b"5"))), LSN)
    assert isinstance(update, Update)
    assert with_old_values(update) == (b"2", body, b"5")
    keyed = Update(None, 7, (b"1", None, None), "K", (b"2", UNCHANGED, b"5"))
    assert with_old_values(keyed) == (b"2", UNCHANGED, b"5")
    assert with_old_values(Update(None, 7, None, None, (b"1", UNCHANGED, b"5"))) == (b"1", UNCHANGED, b"5")


def test_tuple_empty_and_unicode() -> None:
    """Empty strings, zero columns and multi-byte UTF-8 (emoji) survive as raw bytes."""
    emoji = "héllo 🐘 wörld".encode()
    row: RawRow = (b"", emoji, b"")
    data = enc_tuple(row)
    assert decode_tuple(data, 0, LSN) == (row, len(data))
    assert decode_tuple(b"\x00\x00", 0, LSN) == ((), 2)
    msg = Insert(None, 1, row)
    assert decode_message(encode(msg), LSN) == msg


def test_tuple_large_value() -> None:
    """A 1 MB value decodes whole, as bytes, from bytes and from a memoryview."""
    big = bytes(range(256)) * 4096
    row: RawRow = (b"1", big, None)
    data = enc_tuple(row)
    assert decode_tuple(data, 0, LSN) == (row, len(data))
    (decoded, end) = decode_tuple(memoryview(b"ab" + data), 2, LSN)
    assert decoded == row and end == len(data) + 2
    assert type(decoded[1]) is bytes
    msg = Update(None, 7, row, "O", row)
    assert decode_message(memoryview(encode(msg)), LSN) == msg


def test_tuple_errors() -> None:
    """A bad tuple kind, a truncated value or a negative offset raise DecodeError naming the LSN."""
    for data, offset in (
        (b"\x00\x01x", 0),
        (b"\x00\x01t\x00\x00\x00\x05abc", 0),
        (b"\x00\x02n", 0),
        (b"\x00", 0),
        (b"\x00\x00", 3),
        (b"\x00\x00", -1),
    ):
        with pytest.raises(DecodeError, match=LSN_TEXT):
            decode_tuple(data, offset, LSN)


# ---------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("msg", ALL_SAMPLES, ids=sample_id)
def test_every_truncation_raises(msg: Message) -> None:
    """Every proper prefix of a valid message raises DecodeError naming the type and LSN."""
    data = encode(msg)
    for cut in range(len(data)):
        prefix = data[:cut]
        if isinstance(msg, StreamAbort) and cut == 9:
            # A protocol-4 abort cut before its optional fields is a valid protocol-2 abort.
            assert decode_message(prefix, LSN) == StreamAbort(msg.xid, msg.subxid)
            continue
        with pytest.raises(DecodeError, match=LSN_TEXT) as info:
            decode_message(prefix, LSN, in_stream=in_stream(msg))
        if cut:
            assert MessageType(data[0]).name in str(info.value)
        assert not isinstance(info.value.__cause__, DecodeError)


@pytest.mark.parametrize("msg", ALL_SAMPLES, ids=sample_id)
def test_trailing_bytes_rejected(msg: Message) -> None:
    """Bytes after the end of a message are rejected, not ignored."""
    with pytest.raises(DecodeError, match=LSN_TEXT) as info:
        decode_message(encode(msg) + b"\x00", LSN, in_stream=in_stream(msg))
    # One byte after a protocol-2 Stream Abort reads as a truncated protocol-4 one.
    if not (isinstance(msg, StreamAbort) and msg.abort_lsn is None):
        assert "trailing" in str(info.value)


@pytest.mark.parametrize("code", [b"z", b"b", b"P", b"K", b"r", b"p", b"\x00", b"\xff"])
def test_unknown_type_byte(code: bytes) -> None:
    """Unknown type bytes (including protocol 3's two-phase messages) raise DecodeError."""
    with pytest.raises(DecodeError, match=f"unknown pgoutput message type.*{LSN_TEXT}"):
        decode_message(code + b"\x00" * 30, LSN)


def test_malformed_fields() -> None:
    """Bad UTF-8, bad markers, bad replica identity and overlong lengths raise DecodeError."""
    cases = [
        b"O" + struct.pack(">Q", 1) + b"\xff\xfe\x00",  # not UTF-8
        b"O" + struct.pack(">Q", 1) + b"abc",  # no NUL terminator
        b"I" + struct.pack(">I", 1) + b"X" + enc_tuple(ROW),  # not 'N'
        b"U" + struct.pack(">I", 1) + b"Z" + enc_tuple(ROW),  # neither K, O nor N
        b"U" + struct.pack(">I", 1) + b"K" + enc_tuple(ROW) + b"K" + enc_tuple(ROW),  # new not 'N'
        b"D" + struct.pack(">I", 1) + b"N" + enc_tuple(ROW),  # delete needs K or O
        b"R" + struct.pack(">I", 1) + b"s\x00t\x00x\x00\x00",  # replica identity 'x'
        b"T" + struct.pack(">IB", 2**30, 0) + b"\x00" * 8,  # too many OIDs
        b"M" + struct.pack(">BQ", 1, 1) + b"p\x00" + struct.pack(">I", 2**31) + b"abc",
        b"I" + struct.pack(">I", 1) + b"N" + b"\x00\x01t\xff\xff\xff\xffabc",  # huge length
        b"",
    ]
    for data in cases:
        with pytest.raises(DecodeError, match=LSN_TEXT):
            decode_message(data, LSN)
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_message(cases[0], LSN)


def test_error_with_odd_lsn() -> None:
    """An out-of-range LSN argument still yields a DecodeError, not a formatting error."""
    with pytest.raises(DecodeError, match="-1"):
        decode_message(b"I", -1)


# ------------------------------------------------------------------- CopyData framing


def test_xlogdata_frame() -> None:
    """A 'w' frame gives its header and a zero-copy payload that decodes."""
    payload = encode(Insert(None, 16384, ROW))
    frame = b"w" + struct.pack(">QQq", LSN, LSN + 100, 12345) + payload
    parsed = parse_copy_data(frame)
    assert isinstance(parsed, XLogData)
    assert (parsed.wal_start, parsed.wal_end, parsed.send_time) == (LSN, LSN + 100, 12345)
    assert isinstance(parsed.payload, memoryview)
    assert parsed.payload.obj is frame
    assert decode_message(parsed.payload, parsed.wal_start) == Insert(None, 16384, ROW)
    empty = parse_copy_data(memoryview(b"w" + b"\x00" * 24))
    assert isinstance(empty, XLogData) and bytes(empty.payload) == b""


def test_keepalive_frame() -> None:
    """A 'k' frame gives the server's WAL end, send time and reply request."""
    assert parse_copy_data(b"k" + struct.pack(">QqB", LSN, 99, 1)) == PrimaryKeepalive(LSN, 99, True)
    assert parse_copy_data(b"k" + struct.pack(">QqB", LSN, -1, 0)) == PrimaryKeepalive(LSN, -1, False)


def test_copy_data_errors() -> None:
    """Empty, truncated, oversized keepalive and unknown frames raise DecodeError."""
    keepalive = b"k" + struct.pack(">QqB", LSN, 99, 1)
    xlog = b"w" + struct.pack(">QQq", LSN, LSN, 0)
    bad = [b"", b"x", b"r" + b"\x00" * 33, keepalive + b"\x00"]
    bad += [keepalive[:cut] for cut in range(1, len(keepalive))]
    bad += [xlog[:cut] for cut in range(1, len(xlog))]
    for frame in bad:
        with pytest.raises(DecodeError):
            parse_copy_data(frame)


def test_standby_status_update() -> None:
    """The status update is 'r', four int64 and a reply byte: 34 bytes."""
    msg = standby_status_update(3, 2, 1, 99, reply=True)
    assert msg == b"r" + struct.pack(">QQQqB", 3, 2, 1, 99, 1)
    assert len(standby_status_update(0, 0, 0, -1)) == 34
    assert standby_status_update(0, 0, 0, 0)[-1] == 0
    with pytest.raises(ValueError):
        standby_status_update(-1, 0, 0, 0)
    with pytest.raises(ValueError):
        standby_status_update(2**64, 0, 0, 0)


# ------------------------------------------------------------------ property tests

TYPE_BYTES = st.sampled_from([bytes([t]) for t in MessageType] + [b"z"])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64) | st.tuples(TYPE_BYTES, st.binary(max_size=64)).map(b"".join))
def test_fuzz_decode_message(data: bytes) -> None:
    """Arbitrary bytes either decode to a message or raise DecodeError, never anything else."""
    for stream in (False, True):
        try:
            decode_message(data, LSN, in_stream=stream)
        except DecodeError as err:
            assert LSN_TEXT in str(err)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=40), offset=st.integers(-3, 45))
def test_fuzz_decode_tuple(data: bytes, offset: int) -> None:
    """Arbitrary bytes at any offset either decode to a row or raise DecodeError."""
    try:
        row, end = decode_tuple(data, offset, LSN)
    except DecodeError:
        return
    assert offset < end <= len(data)
    assert all(v is None or v is UNCHANGED or type(v) is bytes for v in row)


FRAME_TYPES = st.sampled_from([b"w", b"k"])


@settings(max_examples=200, deadline=None)
@given(frame=st.binary(max_size=40) | st.tuples(FRAME_TYPES, st.binary(max_size=30)).map(b"".join))
def test_fuzz_parse_copy_data(frame: bytes) -> None:
    """Arbitrary frames either parse or raise DecodeError, never anything else."""
    try:
        parsed = parse_copy_data(frame)
    except DecodeError:
        return
    assert isinstance(parsed, XLogData | PrimaryKeepalive)


U32 = st.integers(0, 2**32 - 1)
XIDS = st.none() | U32
VALUES = st.one_of(st.none(), st.just(UNCHANGED), st.binary(max_size=20), st.text(max_size=8).map(str.encode))
ROWS = st.lists(VALUES, max_size=12).map(tuple)
NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


@st.composite
def updates(draw: st.DrawFn) -> Update:
    """An Update with no old row, a key row or a full old row."""
    old_kind = draw(st.sampled_from([None, "K", "O"]))
    old = None if old_kind is None else draw(ROWS)
    return Update(draw(XIDS), draw(U32), old, old_kind, draw(ROWS))


COLUMN_LISTS = st.lists(
    st.builds(RelationColumn, st.integers(0, 255), NAMES, U32, st.integers(-(2**31), 2**31 - 1)), max_size=8
).map(tuple)

MESSAGES = st.one_of(
    st.builds(Insert, XIDS, U32, ROWS),
    updates(),
    st.builds(Delete, XIDS, U32, ROWS, st.sampled_from(["K", "O"])),
    st.builds(Relation, XIDS, U32, NAMES, NAMES, st.sampled_from(["d", "n", "f", "i"]), COLUMN_LISTS),
)


@settings(max_examples=300, deadline=None)
@given(msg=MESSAGES)
def test_round_trip(msg: Message) -> None:
    """Generated Insert, Update, Delete and Relation messages survive encode then decode."""
    assert decode_message(encode(msg), LSN, in_stream=in_stream(msg)) == msg
