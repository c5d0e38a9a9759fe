"""The pipeline of one job: source -> bounded buffer -> every sink -> acknowledge.

The source builds batches (whole transactions, cut by the `BatchPolicy`) and puts them
into a buffer bounded by batch count and bytes: when sinks fall behind, the source stops
reading and the server holds the data (backpressure, bounded memory). The consumer
writes each batch to every sink concurrently, then records the job's checkpoint and
acknowledges the source with the minimum durable position over the sinks: never more
than every sink holds, never backwards.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import structlog

from cdc import metrics
from cdc.checkpoints import Checkpoint, CheckpointStore
from cdc.events import ChangeBatch, Position, min_position
from cdc.sink import Sink
from cdc.source import BatchPolicy, Source

log = structlog.get_logger(__name__)


class BatchBuffer:
    """A FIFO of batches bounded by count and by bytes (one batch always fits)."""

    def __init__(self, max_batches: int, max_bytes: int, gauges: metrics.BufferGauges | None = None) -> None:
        self._max_batches = max_batches
        self._max_bytes = max_bytes
        self._items: deque[ChangeBatch | None] = deque()
        self._bytes = 0
        self._changed = asyncio.Condition()
        self._gauges = gauges

    def _full(self) -> bool:
        return bool(self._items) and (len(self._items) >= self._max_batches or self._bytes >= self._max_bytes)

    async def put(self, batch: ChangeBatch | None) -> None:
        """Append `batch` (None marks the end), waiting while the buffer is full."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._full() or batch is None)
            self._items.append(batch)
            self._bytes += batch.nbytes if batch is not None else 0
            self._measure()
            self._changed.notify_all()

    async def get(self) -> ChangeBatch | None:
        """The oldest batch, or None once the producer has ended."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            batch = self._items.popleft()
            self._bytes -= batch.nbytes if batch is not None else 0
            self._measure()
            self._changed.notify_all()
            return batch

    def _measure(self) -> None:
        if self._gauges is not None:
            self._gauges.set(sum(1 for b in self._items if b is not None), self._bytes)


@dataclass(slots=True)
class JobStats:
    """Counters of one job's run, read by progress logs (and later the metrics endpoint)."""

    events: int = 0
    batches: int = 0
    streaming: bool = False  # the source started: later failures are not setup mistakes
    acknowledged: Position | None = None
    started: float = field(default_factory=time.monotonic)
    #: Each sink's durable position after the last write (for ``/status``).
    sink_positions: dict[str, Position | None] = field(default_factory=dict)
    #: `time.monotonic()` of the last checkpointed batch, None before the first.
    last_batch_at: float | None = None


class Pipeline:
    """Runs one job until its source ends or `stop` is set, then drains and returns."""

    def __init__(
        self,
        job: str,
        source: Source,
        sinks: list[Sink],
        policy: BatchPolicy,
        checkpoints: CheckpointStore,
        *,
        max_buffered_batches: int = 4,
        max_buffered_bytes: int = 256 << 20,
    ) -> None:
        self.job = job
        self.source = source
        self.sinks = sinks
        self.policy = policy
        self.checkpoints = checkpoints
        self.stats = JobStats()
        self._buffer = BatchBuffer(max_buffered_batches, max_buffered_bytes,
                                   metrics.BufferGauges(job, max_buffered_batches, max_buffered_bytes))
        self._meters = {s.name: metrics.SinkMeter(job, s.name, metrics.LAG) for s in sinks}
        self._log = log.bind(job=job)
        self._writes: asyncio.Future[list[BaseException | None]] | None = None  # the batch being written

    async def run(self, stop: asyncio.Event) -> None:
        """Open sinks, start the source at their minimum position, move batches until stopped.

        Any error stops both sides and propagates (the daemon decides on retry); sources
        and sinks are closed in every case, but never under a write still running (a sink
        write in a worker thread ends first), and an error while closing never hides the
        error that stopped the job.
        """
        try:
            for sink in self.sinks:
                await sink.open()
            held = {s.name: s.position() for s in self.sinks}
            self.stats.sink_positions = dict(held)
            resume = min_position(list(held.values()))
            self._log.info("job_starting", resume_from=str(resume) if resume else None,
                           sinks={k: str(v) if v else None for k, v in held.items()})
            await self.source.start(resume)
            self.stats.streaming = True
            producer = asyncio.create_task(self._produce(stop), name=f"{self.job}-source")
            consumer = asyncio.create_task(self._consume(), name=f"{self.job}-sinks")
            try:
                done, _ = await asyncio.wait({producer, consumer}, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
                await consumer
            finally:
                producer.cancel()
                try:
                    await self._writes_ended()
                finally:
                    consumer.cancel()
                    await asyncio.gather(producer, consumer, return_exceptions=True)
        finally:
            await self._close(failing=sys.exc_info()[1] is not None)
        self._log.info("job_stopped", events=self.stats.events, position=str(self.stats.acknowledged))

    async def _close(self, *, failing: bool) -> None:
        """Close the source, then every sink; with `failing` (an error is on its way to the
        supervisor) a close error is logged instead of replacing it."""
        first: Exception | None = None
        for name, close in [("source", self.source.close), *((s.name, s.close) for s in self.sinks)]:
            try:
                await close()
            except Exception as err:
                if not failing and first is None:
                    first = err
                else:
                    self._log.warning("close_failed", side=name, error_class=type(err).__name__)
        if first is not None:
            raise first

    async def _writes_ended(self) -> None:
        """Wait for the sink writes in flight to end, unless this job itself is being cancelled
        (the shutdown grace is over).

        A write in a worker thread cannot be cancelled: closing its sink under it (the source
        failed meanwhile) would replace the source's retryable error with the sink's complaint.
        """
        writes, me = self._writes, asyncio.current_task()
        if writes is None or writes.done() or (me is not None and me.cancelling()):
            return
        self._log.info("sink_writes_finishing", sinks=[s.name for s in self.sinks])
        await asyncio.wait({writes})

    async def _produce(self, stop: asyncio.Event) -> None:
        try:
            async for batch in self.source.batches(self.policy, stop):
                await self._buffer.put(batch)
        finally:
            await self._buffer.put(None)

    async def _consume(self) -> None:
        last_log = time.monotonic()
        while (batch := await self._buffer.get()) is not None:
            # Wait for every write to end before raising, so no sink is closed mid-write; also
            # when cancelled (the source failed): a write in a worker thread cannot be
            # cancelled, and closing its sink under it would replace the source's error.
            ops = metrics.batch_ops(batch)
            self._writes = asyncio.gather(*(self._write(sink, batch, ops) for sink in self.sinks),
                                          return_exceptions=True)
            for result in await self._writes:
                if isinstance(result, BaseException):
                    raise result
            positions = {s.name: s.position() for s in self.sinks}
            self.stats.sink_positions = positions
            ack = min_position(list(positions.values()))
            if ack is None:
                continue
            self.checkpoints.save(
                self.job, Checkpoint(ack, {k: v for k, v in positions.items() if v is not None})
            )
            await self.source.acknowledge(ack)
            self.stats.events += len(batch)
            self.stats.batches += 1
            self.stats.acknowledged = ack
            now = self.stats.last_batch_at = time.monotonic()
            if now - last_log >= 10:
                self._log.info("job_progress", events=self.stats.events, batches=self.stats.batches,
                               position=str(ack))
                last_log = now

    async def _write(self, sink: Sink, batch: ChangeBatch, ops: dict[str, int]) -> None:
        """`sink.write(batch)`, timed and counted in the sink's metrics."""
        meter = self._meters[sink.name]
        started = time.perf_counter()
        try:
            await sink.write(batch)
        except Exception as err:
            meter.failed(err)
            raise
        meter.written(batch, ops, time.perf_counter() - started)
