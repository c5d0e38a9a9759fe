"""The lock-free watermark snapshot of MySQL/MariaDB tables: no RELOAD, no lock, no writes.

The fallback for MySQL users without RELOAD (no ``FLUSH TABLES WITH READ LOCK``), and
selectable everywhere with ``snapshot_method: watermark`` (Flink CDC's and DBLog's
method, with binlog positions as the watermarks). Each chunk (a primary-key range of
`plan_chunks`, or a whole table) is read on its own:

1. **low**: a binlog position read at least `SETTLE_S` before the chunk's read view
   (read when the worker finished its previous chunk, or when the snapshot started: a
   window stays short whatever the write rate);
2. ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` (InnoDB takes the read view at once),
   then **high**: the current binlog position (``SHOW BINARY LOG STATUS`` / ``SHOW MASTER
   STATUS``). Every transaction the read view sees was written to the binlog before
   high; every one it misses was written after low (see `SETTLE_S` for the one race);
3. the binlog from low to high (a `BinlogReader`, windows one at a time: they share the
   job's server_id), keeping for each key of the chunk its **last** image in the window
   (None for a delete; an update moving a key deletes the old one);
4. the chunk's rows through an unbuffered ``SELECT`` in that read view, each key the
   window touched replaced by its last image (or dropped), then the keys the window
   inserted: the chunk exactly as it was at high (`reconcile`). Memory: the window's
   changed keys, never the chunk.

The stream then starts at the snapshot's first low and, until it passes the largest
high, drops every change to a key of a chunk that lies before that chunk's high
(`StreamFilter`, a bisect over the chunk bounds: memory O(chunks)). A DDL statement on a
table during its windows, or a catalog change between its chunks, raises the retryable
`SchemaChangedDuringSnapshot`: the job restarts and takes a new snapshot.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter
from pathlib import Path
from typing import Any

import pymysql

from cdc.checkpoints import write_state
from cdc.errors import DecodeError, SourceError
from cdc.events import RawRow
from connectors.mysql import positions as pos
from connectors.mysql.binlog import (
    EMPTY_SET,
    ZERO_DATE,
    BinlogReader,
    Idle,
    Rotate,
    Rows,
    Statement,
    TableMap,
    TxCommit,
    TxStart,
)
from connectors.mysql.catalog import binlog_status, current_position, table_columns
from connectors.mysql.snapshot import Chunk, SnapshotTable, begin_snapshot, binlog_type, plan_chunks, select_rows
from connectors.mysql.types import compile_normaliser

#: Seconds between reading a chunk's low watermark and opening its read view. The server
#: writes a transaction to the binlog a moment before InnoDB makes it visible; a low read
#: in that moment would name a position after a transaction the read view cannot see yet
#: (and the window would not hold it). Waiting this long after reading low closes that
#: gap unless a commit stalls between the binlog write and the engine commit for longer.
SETTLE_S = 0.1

Image = tuple[Any, ...]
#: A binlog coordinate as (file index, offset): ordered like the log.
Coordinate = tuple[int, int]


class SchemaChangedDuringSnapshot(SourceError):
    """A table changed (DDL) while its watermark snapshot was read: the job restarts and
    takes a new snapshot."""

    retryable = True


@dataclass(frozen=True, slots=True)
class ChunkMark:
    """A chunk read by the watermark method: its key range and its high watermark.

    `key` is the single integer key column of a ranged table (None: the chunk is the whole
    table); `low`/`high_key` the range ``[low, high_key)`` (None: open); `high` the
    `Position.commit` of the first transaction the chunk's rows do **not** hold
    (`positions.transaction_commit` of the high watermark).
    """

    database: str
    table: str
    key: str | None
    low: int | None
    high_key: int | None
    high: int


def apply_change(changes: dict[Any, Image | None], before: Image | None, after: Image | None,
                 key_of: Callable[[Image], Any], inside: Callable[[Any], bool]) -> None:
    """Fold one row change (full images, normalised) into the window's last image per key.

    A key moved by an update is deleted at its old value; keys outside the chunk are ignored.
    """
    if before is not None:
        old = key_of(before)
        if inside(old) and (after is None or key_of(after) != old):
            changes[old] = None
    if after is not None:
        new = key_of(after)
        if inside(new):
            changes[new] = after


def reconcile(rows: Iterable[list[RawRow]], changes: dict[Any, Image | None], key_of: Callable[[Image], Any],
              chunk_rows: int) -> Iterator[list[RawRow]]:
    """The chunk at its high watermark: the ``SELECT``'s rows (read between low and high)
    with every key the window changed replaced by its last image or dropped (a delete),
    then the keys only the window has. Consumes `changes`."""
    for batch in rows:
        if changes:
            out: list[RawRow] = []
            for row in batch:
                k = key_of(row)
                if k in changes:
                    last = changes.pop(k)
                    if last is None:
                        continue
                    row = last
                out.append(row)
            batch = out
        if batch:
            yield batch
    rest = [image for image in changes.values() if image is not None]
    changes.clear()
    with contextlib.suppress(TypeError):  # keys of mixed types (NULL-free keys cannot be): arrival order
        rest.sort(key=key_of)
    for i in range(0, len(rest), chunk_rows):
        yield rest[i:i + chunk_rows]


@dataclass(slots=True)
class _TableMarks:
    key: str | None
    lows: list[int]  # the lower bounds of chunks 2..n, ascending (chunk 1 is open below)
    highs: list[int]  # per chunk, in key order
    until: int


class StreamFilter:
    """Drops the stream's changes that a watermark snapshot's chunks already hold.

    A change of transaction position `commit` to key k of table T is dropped when
    ``commit < high`` of the chunk of T holding k (the chunks cover every key). An update
    moving a key between chunks is split where only one side is held: its delete half or
    its insert half goes on alone. Once the stream is at or past the largest high, every
    change passes (one comparison).

    A ``TRUNCATE`` of T at `commit` (`truncated`) empties T in the sinks, snapshot rows
    included, so every later change of T must pass: T's highs are lowered to `commit`.
    """

    def __init__(self, marks: Iterable[ChunkMark], point: int = 0) -> None:
        """`point`: the snapshot's consistent point, as `save_marks` keeps it."""
        self.point = point
        self.marks = list(marks)
        grouped: dict[tuple[str, str], list[ChunkMark]] = {}
        for m in self.marks:
            grouped.setdefault((m.database, m.table), []).append(m)
        self._tables: dict[tuple[str, str], _TableMarks] = {}
        for name, ms in grouped.items():
            ms.sort(key=lambda m: (m.low is not None, m.low or 0))
            key = ms[0].key if len(ms) > 1 or ms[0].low is not None or ms[0].high_key is not None else None
            self._tables[name] = _TableMarks(key, [m.low for m in ms[1:] if m.low is not None],
                                             [m.high for m in ms], max(m.high for m in ms))
        #: The stream position from which every change passes.
        self.until = max((t.until for t in self._tables.values()), default=0)

    def truncated(self, database: str, table: str, commit: int) -> list[ChunkMark] | None:
        """Table `database`.`table` is truncated by the transaction at `commit`: from there on
        every change of it passes (the truncate empties the chunks' rows in the sinks, those
        read after it too). Returns the marks to keep (`save_marks`) when they changed, None
        when the filter already let every change of the table at `commit` pass."""
        t = self._tables.get((database, table))
        if t is None or commit >= t.until:
            return None
        self.marks = [replace(m, high=min(m.high, commit)) if (m.database, m.table) == (database, table) else m
                      for m in self.marks]
        t.highs = [min(h, commit) for h in t.highs]
        t.until = commit
        self.until = max((x.until for x in self._tables.values()), default=0)
        return self.marks

    def admit(self, rec: Rows, commit: int) -> list[Rows]:
        """What of `rec` (a rows event of the transaction at `commit`) the stream delivers."""
        if commit >= self.until:
            return [rec]
        t = self._tables.get((rec.table.database, rec.table.table))
        if t is None or commit >= t.until:
            return [rec]
        if t.key is None:
            return []  # one chunk: everything before its high is in it
        names = [c.name for c in rec.table.columns]
        if t.key not in names:
            raise SchemaChangedDuringSnapshot(
                f"{rec.table.database}.{rec.table.table}: key column {t.key} gone during the watermark snapshot"
            )
        i = names.index(t.key)
        lows, highs = t.lows, t.highs

        def held(image: Image | None) -> bool:
            return image is not None and commit < highs[bisect_right(lows, image[i])]

        parts: list[Rows] = []
        flags: dict[int, list[tuple[int, int, str]]] = {}
        for n, side, col, source in rec.flags:
            flags.setdefault(n, []).append((side, col, source))
        changed = False
        for n, (before, after) in enumerate(rec.images):
            keep_before, keep_after = before is not None and not held(before), after is not None and not held(after)
            if rec.op == "u" and keep_before and keep_after:
                op, image = "u", (before, after)
            elif keep_after:
                op, image = "c", (None, after)
            elif keep_before:
                op, image = "d", (before, None)
            else:
                changed = True
                continue
            changed = changed or op != rec.op
            if not parts or parts[-1].op != op:
                parts.append(Rows(op, rec.table, [], [], rec.end))
            part = parts[-1]
            for side, col, source in flags.get(n, ()):
                if image[side] is not None:
                    part.flags.append((len(part.images), side, col, source))
            part.images.append(image)
        return parts if changed else [rec]


class WatermarkReader:
    """Plain connections reading chunks by the watermark method (module docstring).

    The same surface as `SnapshotReader` (`connections`, `file`/`position`: the
    stream's start, `plan`, `rows`, `close`), plus `marks`: one `ChunkMark` per chunk read
    to the end, for the `StreamFilter`. Blocking (run in threads, one per connection).
    """

    def __init__(self, connect: Callable[[], pymysql.connections.Connection[Any]],
                 open_binlog: Callable[[str, int], BinlogReader], *, workers: int, zero_dates: str) -> None:
        self.connections: list[pymysql.connections.Connection[Any]] = []
        self._open_binlog = open_binlog
        self._zero_dates = zero_dates
        try:
            for _ in range(max(workers, 1)):
                self.connections.append(connect())
            self._catalog = connect()  # used under the window lock only
            #: where the stream starts, and MySQL's executed GTID set there (MariaDB: "")
            self.file, self.position, self.gtids = binlog_status(self.connections[0])
        except BaseException:
            self.close()
            raise
        self._base = self.file.rpartition(".")[0]
        first = ((pos.file_index(self.file), self.position), time.monotonic())
        self._lows: list[tuple[Coordinate, float]] = [first] * len(self.connections)
        self._window_lock = threading.Lock()
        self._marks_lock = threading.Lock()
        self.marks: list[ChunkMark] = []
        self._normalisers: dict[TableMap, Callable[[Image], Image] | None] = {}
        #: Row changes folded into chunks from their windows (for logs and tests).
        self.window_changes = 0

    def plan(self, table: SnapshotTable, chunk_rows: int) -> list[Chunk]:
        if not table.schema.key:
            raise SourceError(
                f"{table.schema.table}: the watermark snapshot needs a primary key (rows without one cannot be "
                "matched with the binlog); add one, or use snapshot_method: flush (needs RELOAD)"
            )
        return plan_chunks(self.connections[0], table, chunk_rows)

    def rows(self, chunk: Chunk, chunk_rows: int, worker: int = 0) -> Iterator[list[RawRow]]:
        """The chunk's rows as they were at its high watermark, normalised, at most `chunk_rows` per list."""
        conn = self.connections[worker]
        st = chunk.table
        schema = st.schema
        low, read_at = self._lows[worker]
        wait = SETTLE_S - (time.monotonic() - read_at)
        if wait > 0:
            time.sleep(wait)
        with conn.cursor() as cur:
            begin_snapshot(cur)
        try:
            if st.catalog and tuple(table_columns(conn, schema.table.schema, schema.table.table)) != st.catalog:
                raise SchemaChangedDuringSnapshot(f"{schema.table}: the table changed during the watermark snapshot")
            file, offset = current_position(conn)
            high = (pos.file_index(file), offset)
            positions = [n for n, c in enumerate(schema.columns) if c.key]
            key_of: Callable[[Image], Any] = itemgetter(*positions)
            ranged = chunk.low is not None or chunk.high is not None
            lo, hi = chunk.low, chunk.high

            def inside(k: Any) -> bool:
                return (lo is None or k >= lo) and (hi is None or k < hi)

            changes = self._window(chunk, low, high, key_of, inside) if low < high else {}
            yield from reconcile(select_rows(conn, chunk, chunk_rows), changes, key_of, chunk_rows)
            file, offset = current_position(conn)
            self._lows[worker] = ((pos.file_index(file), offset), time.monotonic())  # the next chunk's low
            mark = ChunkMark(schema.table.schema, schema.table.table, schema.key[0] if ranged else None, lo, hi,
                             pos.transaction_commit(*high))
            with self._marks_lock:
                self.marks.append(mark)
        finally:
            with contextlib.suppress(pymysql.Error):
                conn.rollback()

    def _window(self, chunk: Chunk, low: Coordinate, high: Coordinate, key_of: Callable[[Image], Any],
                inside: Callable[[Any], bool]) -> dict[Any, Image | None]:
        """The last image per key of the chunk in the binlog from `low` to `high`."""
        schema = chunk.table.schema
        database, table = schema.table.schema, schema.table.table
        names = [c.name for c in schema.columns]
        changes: dict[Any, Image | None] = {}
        with self._window_lock:
            reader = self._open_binlog(pos.file_name(self._base, low[0]), low[1])
            try:
                index = low[0]
                for rec in reader.records():
                    if isinstance(rec, Rows):
                        if rec.table.table != table or rec.table.database != database:
                            continue
                        if [c.name for c in rec.table.columns] != names:
                            raise SchemaChangedDuringSnapshot(
                                f"{schema.table}: the table's columns changed during the watermark snapshot")
                        normalise = self._normaliser(rec.table)
                        for n, (before, after) in enumerate(rec.images):
                            apply_change(changes, self._image(rec, n, 0, before, normalise),
                                         self._image(rec, n, 1, after, normalise), key_of, inside)
                        self.window_changes += len(rec.images)
                    elif isinstance(rec, TxStart):
                        if (pos.file_index(rec.file), rec.start) >= high:
                            break
                    elif isinstance(rec, TxCommit):
                        if (index, rec.end) >= high:
                            break
                    elif isinstance(rec, Statement):
                        if table.lower() in rec.query.lower():
                            raise SchemaChangedDuringSnapshot(
                                f"{schema.table}: a statement changed the table during the watermark snapshot "
                                f"({' '.join(rec.query.split()[:3])} ...)")
                        if (index, rec.end) >= high:
                            break
                    elif isinstance(rec, Rotate):
                        index = pos.file_index(rec.file)
                    elif isinstance(rec, Idle) and (pos.file_index(rec.file), rec.end) >= high:
                        break
            finally:
                reader.close()
        return changes

    def _normaliser(self, table: TableMap) -> Callable[[Image], Image] | None:
        if table not in self._normalisers:
            known = {c.name: c for c in table_columns(self._catalog, table.database, table.table)}
            self._normalisers[table] = compile_normaliser([binlog_type(c, known.get(c.name)) for c in table.columns])
        return self._normalisers[table]

    def _image(self, rec: Rows, n: int, side: int, image: Image | None,
               normalise: Callable[[Image], Image] | None) -> Image | None:
        """One image normalised as the stream does it (the empty SET, zero dates)."""
        if image is None:
            return None
        out = image if normalise is None else normalise(image)
        flagged = [(col, source) for row, s, col, source in rec.flags if row == n and s == side]
        if not flagged:
            return out
        values = list(out)
        for col, source in flagged:
            if source == EMPTY_SET:
                values[col] = []
            elif source in ZERO_DATE:
                if self._zero_dates == "fail":
                    raise DecodeError(f"zero date in {rec.table.database}.{rec.table.table}."
                                      f"{rec.table.columns[col].name}; set zero_dates: null to deliver them as NULL")
                values[col] = None
        return tuple(values)

    def close(self) -> None:
        for conn in [*self.connections, *([self._catalog] if hasattr(self, "_catalog") else [])]:
            with contextlib.suppress(pymysql.Error):
                conn.close()
        self.connections = []


def save_marks(path: Path, point: int, marks: Sequence[ChunkMark]) -> None:
    """Keep the chunk marks of a finished watermark snapshot whose stream starts after `point`
    (``<job>.mysql-watermark.json``), so a restart before the stream passes the last high
    filters the same changes. Atomic (write then rename)."""
    doc = {"point": point, "marks": [[m.database, m.table, m.key, m.low, m.high_key, m.high] for m in marks]}
    write_state(path, json.dumps(doc).encode(), "the watermark snapshot's chunk marks")


def load_marks(path: Path, resume: int) -> tuple[int, list[ChunkMark]] | None:
    """The snapshot's point and the marks `save_marks` kept, when a stream resuming at `resume`
    (a `Position.commit`) comes after that snapshot (None: no file, or a snapshot later than
    `resume`)."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    point = int(doc["point"])
    if point > resume:
        return None
    return point, [ChunkMark(str(d), str(t), k, low, high_key, int(high))
                   for d, t, k, low, high_key, high in doc["marks"]]
