"""Change events, positions and the batches that carry them through the pipeline.

Per-event Python work is the main cost of a Python CDC tool, so the unit that moves is a
`ChangeBatch` of whole transactions whose rows stay in the source's raw form (for
PostgreSQL: pgoutput text values) until a sink asks for them in the form it loads:
JSON fragments (event logs), Python values (`ChangeBatch.events()`), or Arrow columns.
`ChangeEvent` objects are only built on request.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from cdc.errors import CheckpointError

if TYPE_CHECKING:
    import pyarrow as pa


class Op(enum.StrEnum):
    """Debezium's operation codes."""

    READ = "r"
    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    TRUNCATE = "t"
    MESSAGE = "m"


#: The `seq` of a position that covers a whole transaction (its commit).
WHOLE_TRANSACTION: Final = (1 << 63) - 1


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A point in one source's log, totally ordered within that source.

    `commit` orders transactions: the commit LSN for PostgreSQL. `seq` is the 1-based
    ordinal of an event inside its transaction, or `WHOLE_TRANSACTION` for the point
    just after the transaction's commit. An event at ``Position(c, s)`` is already held
    by a sink whose durable position is ``>= Position(c, s)``.
    """

    commit: int
    seq: int = WHOLE_TRANSACTION

    @property
    def whole(self) -> bool:
        """True when the position covers the whole transaction, not part of it."""
        return self.seq == WHOLE_TRANSACTION

    def to_json(self) -> dict[str, int]:
        """A small JSON-ready dict; `from_json` reads it back."""
        if self.whole:
            return {"commit": self.commit}
        return {"commit": self.commit, "seq": self.seq}

    @classmethod
    def from_json(cls, data: object) -> Position:
        """Read a position written by `to_json`; raise `CheckpointError` if malformed."""
        if isinstance(data, dict):
            commit = data.get("commit")
            seq = data.get("seq", WHOLE_TRANSACTION)
            if (
                isinstance(commit, int) and isinstance(seq, int)
                and not isinstance(commit, bool) and not isinstance(seq, bool)
                and commit >= 0 and seq >= 0
            ):
                return cls(commit, seq)
        raise CheckpointError(f"malformed position {data!r}: expected {{'commit': int, 'seq': int}}")

    def __str__(self) -> str:
        return str(self.commit) if self.whole else f"{self.commit}:{self.seq}"


class _Unchanged:
    """The value of a column the source did not send (e.g. an unchanged TOASTed value)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"


#: Stands for a column whose value the source did not send; sinks keep the stored value.
UNCHANGED: Final = _Unchanged()

#: A row as the source sent it: one raw value per column of its `TableSchema`, in order.
#: For PostgreSQL a value is the pgoutput text (`bytes`), `None` for NULL, or `UNCHANGED`.
RawRow = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class TableId:
    """A captured table: the source's name, its schema (or database), and the table."""

    source: str
    schema: str
    table: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table at one point of the log."""

    name: str
    type_name: str
    type_oid: int = 0
    type_modifier: int = -1
    key: bool = False


@dataclass(frozen=True, slots=True)
class TableSchema:
    """The column list and types of a table at one point of the log.

    `key` names the columns that identify a row (the primary key or replica identity);
    it is empty when the table has none.
    """

    table: TableId
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.key)


class RowCodec(Protocol):
    """Turns a source's raw rows of one `TableSchema` into the forms sinks load.

    Each source builds one codec per table schema; every method maps the same documented
    type mapping, so a value reads the same in JSON, Python and Arrow.
    """

    def to_python(self, row: RawRow) -> tuple[Any, ...]:
        """Python values in column order; `UNCHANGED` stays `UNCHANGED`."""
        ...

    def to_json(self, row: RawRow) -> bytes:
        """A JSON object of every column; unchanged columns carry Debezium's placeholder."""
        ...

    def key_json(self, row: RawRow) -> bytes:
        """A JSON object of the key columns, or ``null`` when the table has no key."""
        ...

    def arrow_schema(self) -> pa.Schema:
        """The Arrow type of every column, in column order (the documented mapping)."""
        ...

    def to_arrow(self, rows: Sequence[RawRow | None]) -> list[pa.Array]:
        """One Arrow array per column over `rows`, converted per column, not per value.

        A None row, a NULL value and an `UNCHANGED` value are all null here; callers that
        must tell them apart (mirror sinks keep unchanged values) check `UNCHANGED` themselves.
        """
        ...


@dataclass(slots=True, eq=False)
class Transaction:
    """One source transaction, shared by every row change of it in a batch."""

    xid: int
    commit: int
    commit_ts: datetime

    def position(self, seq: int = WHOLE_TRANSACTION) -> Position:
        return Position(self.commit, seq)


#: One row change as it moves: ``(op, transaction, seq, lsn, before, after)``.
#: `lsn` is the change's own place in the source log (PostgreSQL: the WAL record of the
#: change); `before` is a full image under REPLICA IDENTITY FULL, key columns only (the
#: others None) under DEFAULT, or None when the source sent none.
RowChange = tuple[str, Transaction, int, int, "RawRow | None", "RawRow | None"]


@dataclass(frozen=True, slots=True)
class RowBlock:
    """Snapshot rows (``op=r``) of one table kept in columnar form, as the source read them.

    `raw` holds one Arrow column per schema column with the source's raw values (PostgreSQL:
    each value's text as binary; null for NULL), so sinks that load Arrow convert whole
    columns (`to_arrow`) and never touch a row; sinks that render rows get them from `rows`.
    Row ``i`` sits at ``Position(tx.commit, first_seq + i)`` with change LSN `lsn`.
    """

    tx: Transaction
    first_seq: int
    lsn: int
    raw: pa.Table
    #: The source's column converter: raw columns -> the documented Arrow mapping.
    convert: Callable[[Sequence[pa.Array]], list[pa.Array]]

    def __len__(self) -> int:
        return int(self.raw.num_rows)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self) - 1

    def to_arrow(self) -> list[pa.Array]:
        """One array per column in the documented Arrow mapping (as `RowCodec.to_arrow`)."""
        return self.convert([c.combine_chunks() for c in self.raw.columns])

    def rows(self) -> list[RawRow]:
        """The rows as raw tuples (what `RowCodec` methods take)."""
        columns = [c.to_pylist() for c in self.raw.columns]
        return list(zip(*columns, strict=True)) if columns else [() for _ in range(len(self))]

    def after(self, seq: int) -> RowBlock | None:
        """The rows past `seq` (None when none are left)."""
        skip = seq - self.first_seq + 1
        if skip <= 0:
            return self
        if skip >= len(self):
            return None
        return RowBlock(self.tx, seq + 1, self.lsn, self.raw.slice(skip), self.convert)


class TableChanges:
    """The row changes of one table under one schema, in log order.

    Either a list of `RowChange` tuples (`changes`) or, for snapshot rows read in bulk, a
    `RowBlock` (`block`); reading `changes` of a block materialises its tuples once (the
    slow path that row-rendering sinks take), so columnar sinks check `block` first.
    """

    __slots__ = ("_changes", "block", "codec", "schema")

    def __init__(self, schema: TableSchema, codec: RowCodec, changes: list[RowChange] | None = None,
                 block: RowBlock | None = None) -> None:
        self.schema = schema
        self.codec = codec
        self.block = block
        self._changes: list[RowChange] | None = changes if changes is not None or block is not None else []

    @property
    def changes(self) -> list[RowChange]:
        if self._changes is None:
            assert self.block is not None
            b = self.block
            self._changes = [("r", b.tx, b.first_seq + i, b.lsn, None, row) for i, row in enumerate(b.rows())]
        return self._changes

    def __len__(self) -> int:
        if self._changes is None and self.block is not None:
            return len(self.block)
        return len(self.changes)

    def __repr__(self) -> str:
        return f"TableChanges({self.schema.table}, {len(self)} changes{', block' if self.block else ''})"

    @property
    def first(self) -> tuple[Transaction, int] | None:
        """The transaction and seq of the first change, or None when empty."""
        if self._changes is None and self.block is not None:
            return (self.block.tx, self.block.first_seq) if len(self.block) else None
        if not self.changes:
            return None
        _, tx, seq, *_ = self.changes[0]
        return tx, seq

    @property
    def last(self) -> tuple[Transaction, int] | None:
        """The transaction and seq of the last change, or None when empty."""
        if self._changes is None and self.block is not None:
            return (self.block.tx, self.block.last_seq) if len(self.block) else None
        if not self.changes:
            return None
        _, tx, seq, *_ = self.changes[-1]
        return tx, seq

    def after(self, held: Position) -> TableChanges | None:
        """These changes without those at or below `held` (None when nothing is left)."""
        if self._changes is None and self.block is not None:
            b = self.block
            if (b.tx.commit, b.last_seq) <= (held.commit, held.seq):
                return None
            if b.tx.commit > held.commit:
                return self
            rest = b.after(held.seq)
            return TableChanges(self.schema, self.codec, block=rest) if rest is not None else None
        kept = [c for c in self.changes if (c[1].commit, c[2]) > (held.commit, held.seq)]
        return TableChanges(self.schema, self.codec, kept) if kept else None


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change to one row, with Python values (see `ChangeBatch.events`)."""

    op: Op
    table: TableId
    key: dict[str, Any] | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    unchanged: frozenset[str]
    position: Position
    lsn: int
    commit_ts: datetime
    tx_id: int
    schema: TableSchema


@dataclass(slots=True)
class ChangeBatch:
    """A run of whole transactions (or one chunk of a giant one) from one source.

    `position` is where the batch ends: a whole-transaction position when it ends at a
    commit, or the position of its last event when it is a chunk of a transaction that
    goes on in the next batch. A batch with no tables is a heartbeat: it only moves the
    position. `nbytes` is the size of the raw data it holds, for the pipeline's budget.
    """

    position: Position
    tables: list[TableChanges] = field(default_factory=list)
    nbytes: int = 0

    def __len__(self) -> int:
        return sum(len(t) for t in self.tables)

    @property
    def first(self) -> Position | None:
        """Position of the first event, or None for a heartbeat."""
        first: Position | None = None
        for t in self.tables:
            head = t.first
            if head is not None:
                p = Position(head[0].commit, head[1])
                if first is None or p < first:
                    first = p
        return first

    def after(self, held: Position | None) -> ChangeBatch:
        """This batch without the events at or below `held` (what a sink already has)."""
        if held is None:
            return self
        first = self.first
        if first is None or first > held:
            return self
        tables = [kept for t in self.tables if (kept := t.after(held)) is not None]
        return ChangeBatch(self.position, tables, self.nbytes)

    def events(self) -> Iterator[ChangeEvent]:
        """Materialise Python events, table by table (slow path: tests and tools)."""
        for t in self.tables:
            yield from _events_of(t)


def _events_of(t: TableChanges) -> Iterator[ChangeEvent]:
    names = t.schema.names
    key_idx = [i for i, c in enumerate(t.schema.columns) if c.key]
    to_python = t.codec.to_python
    for op, tx, seq, lsn, before, after in t.changes:
        b = dict(zip(names, to_python(before), strict=True)) if before is not None else None
        a = dict(zip(names, to_python(after), strict=True)) if after is not None else None
        image = a if a is not None else b
        key = {names[i]: image[names[i]] for i in key_idx} if image is not None and key_idx else None
        unchanged = frozenset(n for n, v in a.items() if v is UNCHANGED) if a is not None else frozenset()
        yield ChangeEvent(
            op=Op(op),
            table=t.schema.table,
            key=key,
            before=b,
            after=a,
            unchanged=unchanged,
            position=Position(tx.commit, seq),
            lsn=lsn,
            commit_ts=tx.commit_ts,
            tx_id=tx.xid,
            schema=t.schema,
        )


def min_position(positions: Sequence[Position | None]) -> Position | None:
    """The lowest position, or None when any is None (that sink holds nothing yet)."""
    if not positions or any(p is None for p in positions):
        return None
    return min(p for p in positions if p is not None)
