"""The Source contract: what every connector (connectors/) provides to the pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from cdc.events import ChangeBatch, Position


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
