"""Tests of positions, change batches and event materialisation (cdc/events.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cdc.errors import CheckpointError
from cdc.events import (
    UNCHANGED,
    WHOLE_TRANSACTION,
    ChangeBatch,
    Op,
    Position,
    RowChange,
    Transaction,
    min_position,
)
from tests.builders import ORDERS, TS, USERS, table


def two_transactions() -> ChangeBatch:
    """Transaction 100 (orders seq 1, 2; users seq 3) then transaction 200 (orders seq 1)."""
    t1, t2 = Transaction(7, 100, TS), Transaction(8, 200, TS)
    orders = table(ORDERS, [
        ("c", t1, 1, 90, None, (b"1", b"1.50", b"a")),
        ("c", t1, 2, 91, None, (b"2", b"2.50", b"b")),
        ("u", t2, 1, 190, None, (b"1", b"3.00", UNCHANGED)),
    ])
    users = table(USERS, [("c", t1, 3, 92, None, (b"ann",))])
    return ChangeBatch(Position(200), [orders, users], nbytes=123)


def kept(batch: ChangeBatch) -> list[tuple[int, int]]:
    """(commit, seq) of every event of a batch, sorted."""
    return sorted((c[1].commit, c[2]) for t in batch.tables for c in t.changes)


# ---------------------------------------------------------------- Position


def test_position_orders_by_commit_then_seq() -> None:
    """Positions order by commit, then by seq, and a whole transaction is above all its events."""
    assert Position(1, 5) < Position(2, 1)
    assert Position(2, 1) < Position(2, 2) < Position(2)
    assert Position(2) < Position(3, 1)
    assert Position(2) == Position(2, WHOLE_TRANSACTION)
    assert sorted([Position(3), Position(1, 2), Position(1)]) == [Position(1, 2), Position(1), Position(3)]


@pytest.mark.parametrize("p", [Position(0), Position(123456789), Position(5, 1), Position(5, 0)])
def test_position_json_round_trip(p: Position) -> None:
    """to_json and from_json read back the same position."""
    assert Position.from_json(p.to_json()) == p


def test_whole_position_json_is_small() -> None:
    """A whole-transaction position serialises as its commit only."""
    assert Position(9).to_json() == {"commit": 9}
    assert Position(9, 2).to_json() == {"commit": 9, "seq": 2}
    assert str(Position(9)) == "9"
    assert str(Position(9, 2)) == "9:2"


@pytest.mark.parametrize(
    "data",
    [None, 5, "5", [], {}, {"seq": 1}, {"commit": "5"}, {"commit": -1}, {"commit": 5, "seq": -2},
     {"commit": 5, "seq": 1.5}, {"commit": 5.0}],
)
def test_malformed_position_is_a_checkpoint_error(data: object) -> None:
    """Anything but {'commit': int >= 0, 'seq': int >= 0} is refused with CheckpointError."""
    with pytest.raises(CheckpointError, match="malformed position"):
        Position.from_json(data)


# ---------------------------------------------------------------- ChangeBatch


def test_len_and_first() -> None:
    """len() counts events over tables; first is the lowest event position over tables."""
    batch = two_transactions()
    assert len(batch) == 4
    assert batch.first == Position(100, 1)
    later = ChangeBatch(Position(200), [batch.tables[1], table(ORDERS, batch.tables[0].changes[2:])])
    assert later.first == Position(100, 3)


def test_heartbeat_has_no_first() -> None:
    """A batch without tables (or with empty tables) is a heartbeat: first is None."""
    assert ChangeBatch(Position(5)).first is None
    assert ChangeBatch(Position(5), [table(ORDERS, [])]).first is None
    assert len(ChangeBatch(Position(5))) == 0


def test_after_none_keeps_everything() -> None:
    """after(None) keeps every event: the sink holds nothing."""
    batch = two_transactions()
    assert batch.after(None) is batch


def test_after_below_first_keeps_everything() -> None:
    """after() a position below the first event keeps the batch as it is."""
    batch = two_transactions()
    assert kept(batch.after(Position(99))) == kept(batch)
    assert kept(batch.after(Position(100, 0))) == kept(batch)


def test_after_whole_transaction_drops_it() -> None:
    """after() a commit drops every event of that transaction and keeps the later ones."""
    out = two_transactions().after(Position(100))
    assert kept(out) == [(200, 1)]
    assert out.position == Position(200)
    assert [t.schema.table.table for t in out.tables] == ["orders"]


def test_after_mid_transaction_position() -> None:
    """after() a (commit, seq) inside a transaction drops events at or below that seq only."""
    batch = two_transactions()
    assert kept(batch.after(Position(100, 1))) == [(100, 2), (100, 3), (200, 1)]
    assert kept(batch.after(Position(100, 2))) == [(100, 3), (200, 1)]
    assert kept(batch.after(Position(100, 3))) == [(200, 1)]


def test_after_everything_held_is_empty() -> None:
    """after() the batch's own position leaves no event but keeps the position."""
    for held in (Position(200), Position(200, 1), Position(300)):
        out = two_transactions().after(held)
        assert len(out) == 0
        assert out.tables == []
        assert out.position == Position(200)


# ---------------------------------------------------------------- events()


def test_events_materialise_python_values() -> None:
    """events() builds ChangeEvents with Python values, key dict and transaction metadata."""
    events = list(two_transactions().events())
    assert [(e.table.table, e.position) for e in events] == [
        ("orders", Position(100, 1)), ("orders", Position(100, 2)), ("orders", Position(200, 1)),
        ("users", Position(100, 3)),
    ]
    first = events[0]
    assert first.op is Op.CREATE
    assert first.key == {"id": 1}
    assert first.before is None
    assert first.after == {"id": 1, "total": Decimal("1.50"), "note": "a"}
    assert first.unchanged == frozenset()
    assert (first.lsn, first.tx_id, first.commit_ts, first.schema) == (90, 7, TS, ORDERS)
    assert events[3].key is None


def test_events_mark_unchanged_columns() -> None:
    """An UNCHANGED value stays UNCHANGED in `after` and is named in `unchanged`."""
    event = list(two_transactions().events())[2]
    assert event.op is Op.UPDATE
    assert event.after == {"id": 1, "total": Decimal("3.00"), "note": UNCHANGED}
    assert event.unchanged == frozenset({"note"})


def test_delete_event_takes_key_from_before() -> None:
    """A delete has no `after`; its key comes from the before image (key-only under DEFAULT)."""
    tx = Transaction(9, 300, TS)
    batch = ChangeBatch(Position(300), [table(ORDERS, [("d", tx, 1, 290, (b"4", None, None), None)])])
    (event,) = batch.events()
    assert event.op is Op.DELETE
    assert event.key == {"id": 4}
    assert event.before == {"id": 4, "total": None, "note": None}
    assert event.after is None
    assert event.unchanged == frozenset()


def test_update_with_full_before_image() -> None:
    """An update under REPLICA IDENTITY FULL carries both images; the key comes from `after`."""
    tx = Transaction(9, 300, TS)
    change: RowChange = ("u", tx, 1, 290, (b"4", b"1", b"old"), (b"5", b"2", b"new"))
    (event,) = ChangeBatch(Position(300), [table(ORDERS, [change])]).events()
    assert event.before == {"id": 4, "total": Decimal(1), "note": "old"}
    assert event.after == {"id": 5, "total": Decimal(2), "note": "new"}
    assert event.key == {"id": 5}


# ---------------------------------------------------------------- min_position


def test_min_position() -> None:
    """min_position is the lowest position, None when any sink holds nothing or there are none."""
    assert min_position([Position(5), Position(3, 2), Position(4)]) == Position(3, 2)
    assert min_position([Position(5)]) == Position(5)
    assert min_position([Position(5), None]) is None
    assert min_position([None]) is None
    assert min_position([]) is None
