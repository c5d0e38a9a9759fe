"""The Source contract: what every connector (connectors/) provides to the pipeline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from cdc.events import ChangeBatch, Position, RowBlock, RowChange, RowCodec, TableChanges, TableSchema


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When a source closes a batch: whichever limit comes first, cutting only at commits.

    A transaction larger than the limits is cut into chunks of about `max_events` events
    or `max_bytes` bytes; the checkpoint then only moves to its commit with the last chunk.
    """

    max_events: int = 50_000
    max_bytes: int = 64 << 20
    max_wait_s: float = 0.5


class Source(Protocol):
    """A change stream from one database.

    Lifecycle: `start` once, then iterate `batches`; call `acknowledge` with the minimum
    durable position over the job's sinks after every write; `close` always.
    """

    name: str

    async def start(self, resume_from: Position | None) -> None:
        """Check the server, create what is missing (slot, publication) and connect.

        `resume_from` is the lowest position every sink holds, or None when a sink holds
        nothing (start where the source's own bookmark is). Raises a `CdcError` with one
        actionable line for every user mistake; nothing is acknowledged before `batches`.
        """
        ...

    def batches(self, policy: BatchPolicy, stop: asyncio.Event) -> AsyncIterator[ChangeBatch]:
        """Batches of whole transactions in commit order, from `resume_from` on.

        An empty batch is a heartbeat: the source is idle and its position moved. Ends,
        without yielding a partial transaction, soon after `stop` is set.
        """
        ...

    async def acknowledge(self, position: Position) -> None:
        """Everything at or below `position` is durable in every sink: let the server free it."""
        ...

    async def close(self) -> None:
        """Release connections; safe to call more than once and after a failed `start`."""
        ...


class Buffered(Protocol):
    """A source table as a batch builder sees it: its schema, codec, and open buffer's append."""

    append: Callable[[RowChange], None] | None

    @property
    def schema(self) -> TableSchema: ...

    @property
    def codec(self) -> RowCodec: ...


class OpenBatch:
    """The batch a source is filling: per-table buffers in log order, counts, and its last commit.

    A table's changes go into its current buffer (`segment` opens one, `Buffered.append`
    points at it) until the batch is cut; a source that must keep log order across buffers
    of one table (snapshot rows between streamed changes) sets the table's `append` to None
    so its next change opens a new buffer after the others.
    """

    __slots__ = ("complete", "events", "filling", "nbytes", "opened", "tables")

    def __init__(self) -> None:
        self.filling: list[Buffered] = []  # tables with a buffer in this batch
        self.tables: list[TableChanges] = []
        self.events = 0
        self.nbytes = 0
        self.opened = time.monotonic()  # when the batch got its first event
        self.complete: Position | None = None  # end of the last whole transaction in it

    def segment(self, table: Buffered) -> Callable[[RowChange], None]:
        """Open `table`'s buffer in this batch; return its append."""
        seg = TableChanges(table.schema, table.codec)
        self.tables.append(seg)
        self.filling.append(table)
        table.append = seg.changes.append
        return table.append

    def add_block(self, schema: TableSchema, codec: RowCodec, block: RowBlock) -> None:
        """Append snapshot rows in columns. A block that continues the batch's last one (the same
        table, schema and snapshot, the next sequence number) joins it, so a columnar sink
        writes each table once per batch (one Delta commit, not one per block read)."""
        last = self.tables[-1] if self.tables else None
        prev = last.block if last is not None else None
        if (last is not None and prev is not None and last.codec is codec and last.schema == schema
                and prev.tx == block.tx and prev.lsn == block.lsn and prev.last_seq + 1 == block.first_seq):
            joined = RowBlock(prev.tx, prev.first_seq, prev.lsn, pa.concat_tables([prev.raw, block.raw]), prev.convert)
            self.tables[-1] = TableChanges(schema, codec, block=joined)
        else:
            self.tables.append(TableChanges(schema, codec, block=block))

    def full(self, max_events: int, max_bytes: int) -> bool:
        return self.events >= max_events or self.nbytes >= max_bytes

    def cut(self, position: Position) -> ChangeBatch:
        """The batch so far, ending at `position`; the builder starts empty again."""
        out = ChangeBatch(position, self.tables, self.nbytes)
        for table in self.filling:
            table.append = None
        self.filling = []
        self.tables, self.events, self.nbytes, self.complete = [], 0, 0, None
        return out
