"""Columnar views of row changes: the changelog table and the mirror's last change per key."""

from __future__ import annotations

import pytest

from cdc.columnar import (
    META_COLUMNS,
    KeylessTableError,
    changelog_table,
    keep_column,
    mirror_steps,
    origin_column,
    position_text,
)
from cdc.events import UNCHANGED, ChangeBatch, Position, RowChange, Transaction
from tests.builders import ORDERS, TS, USERS, table

TX1 = Transaction(7, 100, TS)
TX2 = Transaction(8, 200, TS)


def test_changelog_keeps_every_change_in_order_with_metadata() -> None:
    """Every change is a row: after image, before image for deletes, metadata after the data."""
    tc = table(ORDERS, [
        ("c", TX1, 1, 90, None, (b"1", b"2.50", b"a")),
        ("u", TX1, 2, 91, None, (b"1", b"3.00", UNCHANGED)),
        ("d", TX2, 1, 150, (b"1", None, None), None),
        ("t", TX2, 2, 151, None, None),
    ])
    t = changelog_table(tc)
    assert t.column_names == ["id", "total", "note", *META_COLUMNS]
    assert t.column("id").to_pylist() == [1, 1, 1, None]
    assert t.column("note").to_pylist() == ["a", None, None, None]
    assert t.column("_cdc_op").to_pylist() == ["c", "u", "d", "t"]
    assert t.column("_cdc_position").to_pylist() == [
        position_text(100, 1), position_text(100, 2), position_text(200, 1), position_text(200, 2)]
    assert t.column("_cdc_tx_id").to_pylist() == [7, 7, 8, 8]
    assert t.column("_cdc_commit_ts").to_pylist() == [TS] * 4


def test_position_text_sorts_like_positions() -> None:
    """Positions compare as (commit, seq); their text compares the same way."""
    pairs = [(9, 2**63 - 1), (10, 1), (10, 2), (2**64 - 1, 5)]
    texts = [position_text(c, s) for c, s in pairs]
    assert texts == sorted(texts)


def test_mirror_keeps_the_last_change_per_key() -> None:
    """Inserts, updates and deletes of one key fold into its last change."""
    tc = table(ORDERS, [
        ("c", TX1, 1, 0, None, (b"1", b"1", b"a")),
        ("c", TX1, 2, 0, None, (b"2", b"2", b"b")),
        ("u", TX2, 1, 0, None, (b"1", b"5", b"z")),
        ("d", TX2, 2, 0, (b"2", None, None), None),
    ])
    [step] = mirror_steps(tc)
    assert not step.truncate and step.changes is not None
    rows = step.changes.select(["id", "total", "note", "_cdc_op"]).to_pylist()
    assert [(r["id"], str(r["total"]), r["note"], r["_cdc_op"]) for r in rows] == [
        (1, "5", "z", "u"), (2, "None", None, "d")]


def test_mirror_fills_unchanged_values_from_the_same_run_and_flags_the_rest() -> None:
    """An unchanged column takes the run's earlier value of its key, else is flagged to keep."""
    tc = table(ORDERS, [
        ("c", TX1, 1, 0, None, (b"1", b"1", b"long")),
        ("u", TX1, 2, 0, None, (b"1", b"2", UNCHANGED)),
        ("u", TX2, 1, 0, None, (b"9", b"3", UNCHANGED)),
    ])
    [step] = mirror_steps(tc)
    assert step.changes is not None
    assert step.changes.column("note").to_pylist() == ["long", None]
    assert step.changes.column(keep_column(2)).to_pylist() == [False, True]
    assert keep_column(1) not in step.changes.column_names


def test_mirror_update_of_the_key_deletes_the_old_key() -> None:
    """An update that moves a row to a new key deletes the old one."""
    tc = table(ORDERS, [("u", TX1, 1, 0, (b"1", None, None), (b"2", b"1", b"a"))])
    [step] = mirror_steps(tc)
    assert step.changes is not None
    assert step.changes.select(["id", "_cdc_op"]).to_pylist() == [
        {"id": 1, "_cdc_op": "d"}, {"id": 2, "_cdc_op": "u"}]


def moved(changes: list[RowChange]) -> list[dict[str, object]]:
    """The mirror step of ORDERS `changes` as rows: id, note, op, the keep flag of note, the origin key."""
    [step] = mirror_steps(table(ORDERS, changes))
    assert step.changes is not None
    return [{"id": r["id"], "note": r["note"], "op": r["_cdc_op"], "keep": r.get(keep_column(2)),
             "origin": r.get(origin_column(0))} for r in step.changes.to_pylist()]


def test_mirror_key_change_keeps_unchanged_values_of_the_old_key() -> None:
    """An update of the key with an unchanged value keeps the value the target stores under the OLD key."""
    rows = moved([("u", TX1, 1, 0, (b"1", None, None), (b"2", b"5", UNCHANGED))])
    assert rows == [
        {"id": 1, "note": None, "op": "d", "keep": False, "origin": None},
        {"id": 2, "note": None, "op": "u", "keep": True, "origin": 1},
    ]


def test_mirror_key_change_takes_unchanged_values_from_the_old_keys_earlier_change() -> None:
    """An update of the key with an unchanged value takes it from the run's earlier change of the old key."""
    rows = moved([
        ("c", TX1, 1, 0, None, (b"1", b"1", b"long")),
        ("u", TX2, 1, 0, (b"1", None, None), (b"2", b"5", UNCHANGED)),
    ])
    assert rows == [
        {"id": 1, "note": None, "op": "d", "keep": None, "origin": None},
        {"id": 2, "note": "long", "op": "u", "keep": None, "origin": None},
    ]


def test_mirror_chain_of_key_changes_keeps_values_of_the_first_key() -> None:
    """1 -> 2 -> 3, then an update of 3, with the value unchanged throughout: it comes from the stored row 1."""
    rows = moved([
        ("u", TX1, 1, 0, (b"1", None, None), (b"2", b"5", UNCHANGED)),
        ("u", TX1, 2, 0, (b"2", None, None), (b"3", b"6", UNCHANGED)),
        ("u", TX2, 1, 0, None, (b"3", b"7", UNCHANGED)),
        ("u", TX2, 2, 0, None, (b"4", b"1", UNCHANGED)),
    ])
    assert rows == [
        {"id": 1, "note": None, "op": "d", "keep": False, "origin": None},
        {"id": 2, "note": None, "op": "d", "keep": False, "origin": None},
        {"id": 3, "note": None, "op": "u", "keep": True, "origin": 1},
        {"id": 4, "note": None, "op": "u", "keep": True, "origin": None},
    ]


def test_mirror_key_swapped_back_keeps_its_own_stored_value() -> None:
    """1 -> 2 -> 1 with the value unchanged: row 1 keeps what the target stores under 1; no origin is needed."""
    rows = moved([
        ("u", TX1, 1, 0, (b"1", None, None), (b"2", b"5", UNCHANGED)),
        ("u", TX1, 2, 0, (b"2", None, None), (b"1", b"6", UNCHANGED)),
    ])
    assert rows == [
        {"id": 2, "note": None, "op": "d", "keep": False, "origin": None},
        {"id": 1, "note": None, "op": "u", "keep": True, "origin": None},
    ]


def key_move_batches() -> tuple[list[ChangeBatch], list[tuple[int, str, str]]]:
    """Batches of ORDERS whose updates change keys with `note` unchanged (as pgoutput sends a TOASTed value),
    and the rows (id, total, note) a mirror must hold after them: 1 -> 3 -> 4 and 2 -> 6 then an update of 6
    in one batch, 4 -> 7 in the next, 5 -> 8 -> 9 across two batches, 10 -> 11 after an update of 10."""

    def tx(n: int) -> Transaction:
        return Transaction(n, n * 100, TS)

    def move(t: int, seq: int, old: bytes | None, new: bytes, total: bytes) -> RowChange:
        return ("u", tx(t), seq, 0, None if old is None else (old, None, None), (new, total, UNCHANGED))

    batches = [
        [("c", tx(1), i, 0, None, (k, b"0", note)) for i, (k, note) in enumerate(
            [(b"1", b"one"), (b"2", b"two"), (b"5", b"five"), (b"10", b"ten")], 1)],
        [move(2, 1, b"1", b"3", b"1"), move(2, 2, b"3", b"4", b"2"), move(2, 3, b"2", b"6", b"3"),
         move(2, 4, None, b"6", b"4"), move(2, 5, b"5", b"8", b"5"), move(2, 6, None, b"10", b"6"),
         move(2, 7, b"10", b"11", b"7")],
        [move(3, 1, b"4", b"7", b"8"), move(3, 2, b"8", b"9", b"9")],
    ]
    return ([ChangeBatch(Position(changes[-1][1].commit), [table(ORDERS, changes)]) for changes in batches],
            [(6, "4", "two"), (7, "8", "one"), (9, "9", "five"), (11, "7", "ten")])


def test_mirror_truncate_drops_what_came_before() -> None:
    """Changes before a truncate are wiped by it: the step truncates, then applies the rest."""
    tc = table(ORDERS, [
        ("c", TX1, 1, 0, None, (b"1", b"1", b"a")),
        ("t", TX1, 2, 0, None, None),
        ("c", TX2, 1, 0, None, (b"3", b"1", b"c")),
    ])
    [step] = mirror_steps(tc)
    assert step.truncate and step.changes is not None
    assert step.changes.column("id").to_pylist() == [3]
    [only] = mirror_steps(table(ORDERS, [("t", TX1, 1, 0, None, None)]))
    assert only.truncate and only.changes is None


def test_mirror_refuses_a_table_without_key() -> None:
    """A keyless table cannot be mirrored: the error names it and says what to do."""
    with pytest.raises(KeylessTableError, match=r"public\.users .*mode: changelog"):
        mirror_steps(table(USERS, [("c", TX1, 1, 0, None, (b"x",))]))


def test_changelog_splits_an_update_of_the_key() -> None:
    """An update that moves a row to a new key is a delete of the old key, then the update."""
    t = changelog_table(table(ORDERS, [("u", TX1, 1, 0, (b"1", None, None), (b"2", b"1", b"a"))]))
    assert t.select(["id", "_cdc_op", "_cdc_position"]).to_pylist() == [
        {"id": 1, "_cdc_op": "d", "_cdc_position": position_text(100, 1)},
        {"id": 2, "_cdc_op": "u", "_cdc_position": position_text(100, 1)},
    ]


def test_logical_messages_are_no_table_rows() -> None:
    """A logical-message pseudo-table (no key) yields no mirror step and no changelog row, without an error."""
    messages = table(USERS, [("m", TX1, 1, 0, None, (b"app",))])
    assert mirror_steps(messages) == []
    assert changelog_table(messages).num_rows == 0
