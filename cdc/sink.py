"""The Sink contract: where batches become durable (sinks/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cdc.events import ChangeBatch, Position


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What sinks say about where events come from (Debezium's ``source`` block)."""

    connector: str  # "postgresql", "mysql"
    name: str  # the job's logical source name
    database: str


class Sink(Protocol):
    """A destination of one job.

    Lifecycle: `open`, then `write` batches in order, `close` always. Input is
    at-least-once: after a crash the pipeline replays from the minimum position over the
    job's sinks, so `write` must skip what the sink already holds.
    """

    name: str

    async def open(self) -> None:
        """Recover the sink's durable state (cut any torn tail) and load `position()`."""
        ...

    def position(self) -> Position | None:
        """The last durable position this sink holds, or None when it holds nothing."""
        ...

    async def write(self, batch: ChangeBatch) -> None:
        """Return only when every event of the batch is durable and `position()` is the
        batch's position. May be called again with events already written after a crash;
        skip those at or below `position()`. A heartbeat batch only moves the position."""
        ...

    async def close(self) -> None:
        """Release files and connections; safe after a failed `open`."""
        ...
