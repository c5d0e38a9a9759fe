"""The watermark snapshot's pure parts (connectors/mysql/watermark.py): a chunk reconciled with its
binlog window, the stream filter over chunk high watermarks, the method choice, the kept marks."""

from __future__ import annotations

import random
from operator import itemgetter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cdc.config import MySqlSourceConfig
from connectors.mysql.binlog import EMPTY_SET, BinlogColumn, Rows, TableMap
from connectors.mysql.snapshot import choose_method
from connectors.mysql.watermark import (
    ChunkMark,
    SchemaChangedDuringSnapshot,
    StreamFilter,
    apply_change,
    load_marks,
    reconcile,
)

key_of = itemgetter(0)
TABLE = TableMap("shop", "items", (BinlogColumn("id", 3, primary=True), BinlogColumn("v", 3)))


def in_range(low: int | None, high: int | None) -> Any:
    return lambda k: (low is None or k >= low) and (high is None or k < high)


def test_a_chunk_reconciled_with_its_window_is_the_chunk_at_the_high_watermark() -> None:
    """Random windows over a chunk [100, 200): SELECT rows + the window's last image per key equal
    the table at high, in key order, whatever the read view saw of the window's changes."""
    rng = random.Random(7)
    for _ in range(300):
        table = {k: (k, rng.randrange(10)) for k in range(80, 220) if rng.random() < 0.5}
        log: list[tuple[tuple[int, int] | None, tuple[int, int] | None]] = []
        for _ in range(rng.randrange(30)):  # the window: inserts, updates, key moves, deletes
            k = rng.randrange(80, 220)
            if k not in table:
                log.append((None, (k, rng.randrange(10))))
                table[k] = log[-1][1]  # type: ignore[assignment]
            elif rng.random() < 0.3:
                to = rng.randrange(80, 220)
                if to not in table:
                    log.append((table.pop(k), (to, table.get(to, (0, 0))[1] + 1)))
                    table[to] = log[-1][1]  # type: ignore[assignment]
            elif rng.random() < 0.5:
                log.append((table.pop(k), None))
            else:
                log.append((table[k], (k, table[k][1] + 1)))
                table[k] = log[-1][1]  # type: ignore[assignment]
        # the read view sees a prefix of the window (it opened between low and high)
        seen = rng.randrange(len(log) + 1)
        at_view = {k: v for k, v in table.items()}
        for before, after in reversed(log[seen:]):  # undo what the read view did not see
            if after is not None:
                del at_view[after[0]]
            if before is not None:
                at_view[before[0]] = before
        select = [[v for k, v in sorted(at_view.items()) if 100 <= k < 200]]
        changes: dict[Any, Any] = {}
        for before, after in log:
            apply_change(changes, before, after, key_of, in_range(100, 200))
        got = [row for batch in reconcile(select, changes, key_of, 4) for row in batch]
        assert sorted(got) == [v for k, v in sorted(table.items()) if 100 <= k < 200]
        assert not changes


def test_reconcile_keeps_batches_bounded_and_drops_deleted_keys() -> None:
    """Window inserts come after the SELECT's rows in lists of at most `chunk_rows`; a deleted key is gone."""
    changes: dict[Any, Any] = {2: None, 3: (3, "new"), 7: (7, "x"), 8: (8, "y"), 9: (9, "z")}
    out = list(reconcile([[(1, "a"), (2, "b"), (3, "c")]], changes, key_of, 2))
    assert out == [[(1, "a"), (3, "new")], [(7, "x"), (8, "y")], [(9, "z")]]


def rows(op: str, *images: tuple[Any, Any], flags: list[tuple[int, int, int, str]] | None = None) -> Rows:
    return Rows(op, TABLE, list(images), flags or [], 99)


MARKS = [  # three chunks of shop.items: [.., 100) held to 10, [100, 200) to 20, [200, ..) to 30; one whole table
    ChunkMark("shop", "items", "id", 100, 200, 20),
    ChunkMark("shop", "items", "id", None, 100, 10),
    ChunkMark("shop", "items", "id", 200, None, 30),
    ChunkMark("shop", "tags", None, None, None, 15),
]


@pytest.mark.parametrize(("commit", "key", "kept"), [
    (9, 5, False), (10, 5, True), (19, 150, False), (20, 150, True), (10, 99, True), (10, 100, False),
    (29, 10**12, False), (29, -10**12, True), (30, 150, True),
])
def test_the_stream_drops_a_change_only_before_the_high_of_its_keys_chunk(commit: int, key: int, kept: bool) -> None:
    """A change at `commit` to `key` passes iff commit >= the high of the chunk holding the key."""
    f = StreamFilter(MARKS)
    assert f.until == 30
    assert f.admit(rows("c", (None, (key, 1))), commit) == ([rows("c", (None, (key, 1)))] if kept else [])
    assert f.admit(rows("d", ((key, 1), None)), commit) == ([rows("d", ((key, 1), None))] if kept else [])


def test_a_key_moved_across_chunks_is_split_where_one_side_is_held() -> None:
    """Update 5 -> 150 at 15: chunk [.., 100) (high 10) has not seen it, [100, 200) (high 20) has: only the
    delete of 5 goes on; 150 -> 7 only the insert of 7. Order is kept; flags follow their images."""
    f = StreamFilter(MARKS)
    rec = rows("u", ((5, 1), (150, 1)), ((6, 1), (6, 2)), ((150, 1), (7, 1)),
               flags=[(0, 0, 1, EMPTY_SET), (2, 1, 1, EMPTY_SET), (2, 0, 1, EMPTY_SET)])
    assert f.admit(rec, 15) == [
        rows("d", ((5, 1), None), flags=[(0, 0, 1, EMPTY_SET)]),
        rows("u", ((6, 1), (6, 2))),
        rows("c", (None, (7, 1)), flags=[(0, 1, 1, EMPTY_SET)]),  # numbered within its part
    ]
    assert f.admit(rec, 30) == [rec]
    other = Rows("c", TableMap("shop", "other", TABLE.columns), [(None, (1, 1))], [], 99)
    assert f.admit(other, 0) == [other]


def test_a_whole_table_chunk_holds_every_change_before_its_high() -> None:
    """A table read as one chunk: every change before its high is dropped, none after."""
    tags = TableMap("shop", "tags", (BinlogColumn("code", 15, primary=True),))
    f = StreamFilter(MARKS)
    assert f.admit(Rows("c", tags, [(None, ("a",))], [], 1), 14) == []
    assert len(f.admit(Rows("c", tags, [(None, ("a",))], [], 1), 15)) == 1


def test_a_key_column_gone_mid_filter_restarts_the_snapshot() -> None:
    """A table map without the chunk key (a DDL) raises the retryable SchemaChangedDuringSnapshot."""
    renamed = TableMap("shop", "items", (BinlogColumn("ident", 3, primary=True),))
    with pytest.raises(SchemaChangedDuringSnapshot, match="key column id gone") as err:
        StreamFilter(MARKS).admit(Rows("c", renamed, [(None, (1,))], [], 1), 5)
    assert err.value.retryable


def test_marks_kept_for_a_restart_after_the_snapshot(tmp_path: Path) -> None:
    """The marks round-trip through the state file, and only for a stream at or after the snapshot's point."""
    from connectors.mysql.watermark import save_marks

    path = tmp_path / "job.mysql-watermark.json"
    assert load_marks(path, 100) is None
    save_marks(path, 7, MARKS)
    assert load_marks(path, 6) is None
    assert load_marks(path, 7) == (7, MARKS)
    kept = load_marks(path, 12)
    assert kept is not None and StreamFilter(kept[1], kept[0]).until == 30


def test_a_truncate_mid_filter_lets_every_later_change_of_the_table_pass(tmp_path: Path) -> None:
    """TRUNCATE of shop.items at 15 (chunk highs 10, 20, 30): the sinks drop every snapshot row, so from 15
    on every change of items passes (none before 15 that was dropped passes); the kept marks say so too."""
    from connectors.mysql.watermark import save_marks

    f = StreamFilter(MARKS, 7)
    assert f.admit(rows("c", (None, (250, 1))), 14) == []
    marks = f.truncated("shop", "items", 15)
    assert marks is not None and {m.high for m in marks if m.table == "items"} == {10, 15}
    assert f.truncated("shop", "items", 16) is None and f.truncated("shop", "other", 3) is None
    for filt in (f, StreamFilter(marks, f.point)):
        assert filt.until == 15  # tags: 15 too
        assert filt.admit(rows("c", (None, (250, 1))), 14) == []
        assert filt.admit(rows("c", (None, (5, 1))), 9) == []
        for key in (5, 150, 250):
            assert filt.admit(rows("c", (None, (key, 1))), 15) == [rows("c", (None, (key, 1)))]
    save_marks(tmp_path / "marks.json", f.point, marks)
    assert load_marks(tmp_path / "marks.json", 15) == (7, marks)


@pytest.mark.parametrize(("configured", "mariadb", "reload", "method"), [
    ("auto", True, False, "consistent"),
    ("auto", False, True, "flush"),
    ("auto", False, False, "watermark"),
    ("watermark", True, True, "watermark"),
    ("flush", True, False, "flush"),
])
def test_the_snapshot_method(configured: str, mariadb: bool, reload: bool, method: str) -> None:
    """auto: MariaDB's consistent snapshot; MySQL with RELOAD: FLUSH; without: the watermark method."""
    assert choose_method(configured, mariadb=mariadb, reload=reload)[0] == method
    if method == "watermark" and configured == "auto":
        assert "RELOAD not granted" in choose_method(configured, mariadb=mariadb, reload=reload)[1]


def test_snapshot_lock_flush_is_the_old_spelling_of_snapshot_method_flush() -> None:
    """snapshot_lock: flush still selects FLUSH; with a different snapshot_method it is refused."""
    base: dict[str, Any] = {"type": "mysql", "user": "cdc", "server_id": 5}
    assert MySqlSourceConfig(**base).snapshot_method == "auto"
    assert MySqlSourceConfig(**base, snapshot_lock="flush").snapshot_method == "flush"
    with pytest.raises(ValidationError, match="snapshot_lock: flush contradicts snapshot_method: watermark"):
        MySqlSourceConfig(**base, snapshot_lock="flush", snapshot_method="watermark")
