"""Tests of the file event-log sink: layout, envelopes, exactly-once replay, torn-tail recovery, rotation."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from cdc.errors import SinkError
from cdc.events import (
    UNCHANGED,
    ChangeBatch,
    Column,
    Position,
    RowChange,
    TableId,
    TableSchema,
    Transaction,
)
from cdc.sink import SourceInfo
from connectors.postgres import types as pg
from sinks.eventlog.file import STATE_FILE, FileSink, segment_name, table_dir_name
from tests.builders import ORDERS, TS, USERS, table

TS_MS = 1767323045123
INFO = SourceInfo(connector="postgresql", name="shop", database="shopdb")



def orders_batch(commit: int, ids: range, *, xid: int = 7) -> ChangeBatch:
    """One transaction at `commit` inserting one order per id, seq 1.. in order."""
    tx = Transaction(xid, commit, TS)
    changes: list[RowChange] = [("c", tx, seq, commit - 100 + seq, None, (b"%d" % i, b"1.50", b"x"))
                                for seq, i in enumerate(ids, 1)]
    return ChangeBatch(Position(commit), [table(ORDERS, changes)], nbytes=10 * len(changes))


def mixed_batch() -> ChangeBatch:
    """Transaction 1000 (orders insert, users insert) and transaction 2000 (orders update, delete)."""
    t1, t2 = Transaction(7, 1000, TS), Transaction(8, 2000, TS)
    orders = table(ORDERS, [
        ("c", t1, 1, 900, None, (b"1", b"1.50", b'say "hi"')),
        ("u", t2, 1, 1900, None, (b"1", b"2.00", UNCHANGED)),
        ("d", t2, 2, 1901, (b"1", None, None), None),
    ])
    users = table(USERS, [("c", t1, 2, 901, None, (b"ann",))])
    return ChangeBatch(Position(2000), [orders, users], nbytes=100)


Opener = Callable[..., FileSink]


@pytest.fixture
def sink() -> Iterator[Opener]:
    """Opens file sinks named 'file' of the 'shop' source (fsync off); closes them all at teardown."""
    opened: list[FileSink] = []

    def open_sink(path: Path, **kw: int) -> FileSink:
        s = FileSink("file", path, INFO, fsync=False, **kw)  # fsync on: see test_fsync_mode
        opened.append(s)
        asyncio.run(s.open())
        return s

    yield open_sink
    for s in opened:
        asyncio.run(s.close())


def write(s: FileSink, *batches: ChangeBatch) -> None:
    """Write batches in order with asyncio.run."""
    async def go() -> None:
        for b in batches:
            await s.write(b)
    asyncio.run(go())


def lines(path: Path, table_dir: str = "public.orders") -> list[dict[str, object]]:
    """Every envelope of one table directory, over its segments in name order."""
    out = []
    for f in sorted((path / table_dir).iterdir()):
        data = f.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{f} ends in a partial line"
        out.extend(orjson.loads(line) for line in data.splitlines())
    return out


def ids(path: Path, table_dir: str = "public.orders") -> list[object]:
    """The event ids of one table directory, in file order."""
    return [e["id"] for e in lines(path, table_dir)]


# ---------------------------------------------------------------- layout and envelopes


def test_writes_one_jsonl_per_table_with_debezium_envelopes(tmp_path: Path, sink: Opener) -> None:
    """Events land in schema.table/000000000001.jsonl as Debezium envelopes with stable ids."""
    s = sink(tmp_path)
    before = int(time.time() * 1000)
    write(s, mixed_batch())
    after = int(time.time() * 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE, "public.orders", "public.users"]
    assert [p.name for p in (tmp_path / "public.orders").iterdir()] == ["000000000001.jsonl"]

    created, updated, deleted = lines(tmp_path)
    assert created["id"] == "shop:1000:1"
    assert created["op"] == "c"
    assert created["before"] is None
    assert created["after"] == {"id": 1, "total": "1.50", "note": 'say "hi"'}
    assert created["source"] == {
        "version": created["source"]["version"],  # type: ignore[index]
        "connector": "postgresql", "name": "shop", "ts_ms": TS_MS, "snapshot": "false", "db": "shopdb",
        "schema": "public", "table": "orders", "txId": 7, "lsn": 900,
    }
    assert before <= created["ts_ms"] <= after  # type: ignore[operator]
    assert list(created) == ["id", "before", "after", "source", "op", "ts_ms"]

    assert updated["id"] == "shop:2000:1"
    assert updated["op"] == "u"
    assert updated["after"] == {"id": 1, "total": "2.00", "note": "__debezium_unavailable_value"}
    assert updated["source"]["txId"] == 8  # type: ignore[index]
    assert updated["source"]["lsn"] == 1900  # type: ignore[index]

    assert deleted["id"] == "shop:2000:2"
    assert deleted["op"] == "d"
    assert deleted["before"] == {"id": 1, "total": None, "note": None}
    assert deleted["after"] is None

    (user,) = lines(tmp_path, "public.users")
    assert (user["id"], user["after"], user["source"]["table"]) == (  # type: ignore[index]
        "shop:1000:2", {"name": "ann"}, "users")


def test_position_after_write(tmp_path: Path, sink: Opener) -> None:
    """position() is None on a new sink and the batch's position after each write, also after reopen."""
    s = sink(tmp_path)
    assert s.position() is None
    write(s, orders_batch(100, range(1, 3)))
    assert s.position() == Position(100)
    write(s, orders_batch(200, range(3, 4)))
    assert s.position() == Position(200)
    asyncio.run(s.close())
    assert sink(tmp_path).position() == Position(200)


def test_fsync_mode(tmp_path: Path) -> None:
    """With fsync on (the default) writes and recovery behave the same."""
    s = FileSink("file", tmp_path, INFO)
    asyncio.run(s.open())
    try:
        write(s, orders_batch(100, range(1, 3)))
    finally:
        asyncio.run(s.close())
    assert ids(tmp_path) == ["shop:100:1", "shop:100:2"]


def test_unreadable_state_is_a_sink_error(tmp_path: Path) -> None:
    """A corrupt state file stops open() with SinkError naming it instead of guessing."""
    (tmp_path / STATE_FILE).write_bytes(b"{torn")
    s = FileSink("file", tmp_path, INFO)
    with pytest.raises(SinkError, match=STATE_FILE):
        asyncio.run(s.open())


# ---------------------------------------------------------------- replay


def test_replay_after_reopen_writes_nothing_twice(tmp_path: Path, sink: Opener) -> None:
    """A reopened sink given the same batches again skips every event it already holds."""
    s = sink(tmp_path)
    write(s, orders_batch(100, range(1, 3)), orders_batch(200, range(3, 5)))
    asyncio.run(s.close())
    s = sink(tmp_path)
    write(s, orders_batch(100, range(1, 3)), orders_batch(200, range(3, 5)), orders_batch(300, range(5, 6)))
    assert ids(tmp_path) == ["shop:100:1", "shop:100:2", "shop:200:1", "shop:200:2", "shop:300:1"]
    assert s.position() == Position(300)


def test_replay_skips_the_held_part_of_a_batch(tmp_path: Path, sink: Opener) -> None:
    """A replayed batch that is partly held writes only the events above the sink's position."""
    s = sink(tmp_path)
    write(s, orders_batch(100, range(1, 3)))
    both = ChangeBatch(Position(200), orders_batch(100, range(1, 3)).tables + orders_batch(200, range(3, 4)).tables)
    write(s, both)
    assert ids(tmp_path) == ["shop:100:1", "shop:100:2", "shop:200:1"]


def test_replay_of_a_chunked_transaction(tmp_path: Path, sink: Opener) -> None:
    """A chunk of a transaction moves the position mid-transaction; a replay of it is skipped."""
    tx = Transaction(7, 500, TS)
    rows: list[RowChange] = [("c", tx, seq, seq, None, (b"%d" % seq, b"1", b"x")) for seq in range(1, 5)]
    first = ChangeBatch(Position(500, 2), [table(ORDERS, rows[:2])])
    rest = ChangeBatch(Position(500), [table(ORDERS, rows)])  # a replay from the transaction's start
    s = sink(tmp_path)
    write(s, first)
    assert s.position() == Position(500, 2)
    asyncio.run(s.close())
    s = sink(tmp_path)
    write(s, rest)
    assert ids(tmp_path) == ["shop:500:1", "shop:500:2", "shop:500:3", "shop:500:4"]
    assert s.position() == Position(500)


def test_heartbeat_only_moves_the_position(tmp_path: Path, sink: Opener) -> None:
    """A batch without tables writes no event file but records the new position durably."""
    s = sink(tmp_path)
    write(s, ChangeBatch(Position(300)))
    assert s.position() == Position(300)
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]
    asyncio.run(s.close())
    s = sink(tmp_path)
    assert s.position() == Position(300)
    write(s, orders_batch(200, range(1, 2)), ChangeBatch(Position(250)))
    assert s.position() == Position(300)
    assert not (tmp_path / "public.orders").exists()


# ---------------------------------------------------------------- torn tails


def test_torn_tail_is_cut_on_open(tmp_path: Path, sink: Opener) -> None:
    """Bytes past the recorded offset, newer segments and unknown table directories are removed on open."""
    s = sink(tmp_path)
    write(s, orders_batch(100, range(1, 3)))
    asyncio.run(s.close())
    seg = tmp_path / "public.orders" / segment_name(1)
    good = seg.read_bytes()
    with seg.open("ab") as f:
        f.write(b'{"id":"shop:200:1","befo')
    (tmp_path / "public.orders" / segment_name(2)).write_bytes(b'{"id":"shop:300:1"}\n')
    (tmp_path / "public.users").mkdir()
    (tmp_path / "public.users" / segment_name(1)).write_bytes(b'{"id":"shop:200:2"}\n')

    s = sink(tmp_path)
    assert seg.read_bytes() == good
    assert [p.name for p in (tmp_path / "public.orders").iterdir()] == [segment_name(1)]
    assert list((tmp_path / "public.users").iterdir()) == []
    write(s, mixed_batch())
    assert ids(tmp_path) == ["shop:100:1", "shop:100:2", "shop:1000:1", "shop:2000:1", "shop:2000:2"]
    assert ids(tmp_path, "public.users") == ["shop:1000:2"]


def test_crash_between_data_and_state_writes_each_event_once(tmp_path: Path, sink: Opener) -> None:
    """Data written but not recorded in the state (a crash) is cut, and the replay writes it once."""
    s = sink(tmp_path, max_segment_bytes=1)
    write(s, orders_batch(100, range(1, 3)))
    state = (tmp_path / STATE_FILE).read_bytes()
    write(s, orders_batch(200, range(3, 5)), orders_batch(300, range(5, 6)))
    asyncio.run(s.close())
    (tmp_path / STATE_FILE).write_bytes(state)  # as if the process died before recording 200 and 300

    s = sink(tmp_path, max_segment_bytes=1)
    assert s.position() == Position(100)
    assert ids(tmp_path) == ["shop:100:1", "shop:100:2"]
    write(s, orders_batch(200, range(3, 5)), orders_batch(300, range(5, 6)))
    assert ids(tmp_path) == ["shop:100:1", "shop:100:2", "shop:200:1", "shop:200:2", "shop:300:1"]


# ---------------------------------------------------------------- rotation


def test_rotation_makes_sortable_segments(tmp_path: Path, sink: Opener) -> None:
    """Past max_segment_bytes a new, zero-padded segment starts; name order is event order."""
    s = sink(tmp_path, max_segment_bytes=300)
    batches = [orders_batch(100 * n, range(n, n + 1)) for n in range(1, 13)]
    write(s, *batches)
    names = [p.name for p in (tmp_path / "public.orders").iterdir()]
    assert len(names) >= 3
    assert sorted(names) == [segment_name(n) for n in range(1, len(names) + 1)]
    assert all(len(n) == len("000000000001.jsonl") for n in names)
    assert ids(tmp_path) == [f"shop:{100 * n}:1" for n in range(1, 13)]
    for f in sorted((tmp_path / "public.orders").iterdir())[:-1]:
        assert os.path.getsize(f) >= 300
    asyncio.run(s.close())
    s = sink(tmp_path, max_segment_bytes=300)
    write(s, *batches, orders_batch(1300, range(13, 14)))
    assert ids(tmp_path) == [f"shop:{100 * n}:1" for n in range(1, 14)]


# ---------------------------------------------------------------- table directory names


@pytest.mark.parametrize(
    ("schema", "name"),
    [("public", "../../etc"), ("a/b", "c\\d"), ("..", ".."), ("sch ema", 'ta"ble'), ("ü", "😀")],
)
def test_hostile_table_names_are_one_directory(tmp_path: Path, sink: Opener, schema: str, name: str) -> None:
    """Any schema and table name maps to a single directory component directly under the sink's path."""
    weird = TableSchema(TableId("shop", schema, name), (Column("id", "int4", pg.INT4, key=True),))
    tx = Transaction(1, 10, TS)
    s = sink(tmp_path / "out")
    write(s, ChangeBatch(Position(10), [table(weird, [("c", tx, 1, 1, None, (b"1",))])]))
    dirname = table_dir_name(weird.table)
    assert "/" not in dirname
    assert "\\" not in dirname
    assert dirname not in (".", "..")
    (entry,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert entry.name == dirname
    assert [e["after"] for e in lines(tmp_path / "out", dirname)] == [{"id": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_plain_table_names_stay_readable() -> None:
    """Ordinary names map to schema.table unchanged."""
    assert table_dir_name(TableId("shop", "public", "order_items-2")) == "public.order_items-2"


def test_distinct_tables_get_distinct_directories(tmp_path: Path, sink: Opener) -> None:
    """Two different tables never share a directory, even when their names contain dots."""
    cols = (Column("id", "int4", pg.INT4, key=True),)
    one = TableSchema(TableId("shop", "a.b", "c"), cols)
    two = TableSchema(TableId("shop", "a", "b.c"), cols)
    tx = Transaction(1, 10, TS)
    s = sink(tmp_path)
    write(s, ChangeBatch(Position(10), [table(one, [("c", tx, 1, 1, None, (b"1",))]),
                                         table(two, [("c", tx, 2, 2, None, (b"2",))])]))
    assert table_dir_name(one.table) != table_dir_name(two.table)
    assert ids(tmp_path, table_dir_name(one.table)) == ["shop:10:1"]
    assert ids(tmp_path, table_dir_name(two.table)) == ["shop:10:2"]


@pytest.mark.parametrize(
    ("commit_ts", "ms"),
    [(datetime(2038, 4, 3, 8, 11, 34, 897000, tzinfo=UTC), 2153895094897),
     (datetime(1970, 1, 1, 0, 0, 0, 999, tzinfo=UTC), 0), (TS, TS_MS)],
)
def test_source_ts_ms_is_the_exact_commit_millisecond(tmp_path: Path, sink: Opener, commit_ts: datetime,
                                                      ms: int) -> None:
    """source.ts_ms is the commit time truncated to the millisecond, with no float rounding error."""
    tx = Transaction(1, 10, commit_ts)
    s = sink(tmp_path)
    write(s, ChangeBatch(Position(10), [table(USERS, [("c", tx, 1, 1, None, (b"x",))])]))
    (event,) = lines(tmp_path, "public.users")
    assert event["source"]["ts_ms"] == ms  # type: ignore[index]
