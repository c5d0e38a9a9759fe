"""Tests of the job pipeline (cdc/pipeline.py) with in-memory fake sources, sinks and checkpoint stores."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from cdc.checkpoints import Checkpoint
from cdc.errors import SinkWriteError, SourceConnectionError
from cdc.events import ChangeBatch, Column, Position, RowChange, TableChanges, TableId, TableSchema, Transaction
from cdc.pipeline import BatchBuffer, Pipeline
from cdc.source import BatchPolicy
from connectors.postgres import types as pg
from connectors.postgres.types import PgRowCodec

TS = datetime(2026, 1, 2, tzinfo=UTC)
ORDERS = TableSchema(TableId("shop", "public", "orders"), (Column("id", "int4", pg.INT4, key=True),))


def batch(commit: int, events: int = 1, nbytes: int = 10) -> ChangeBatch:
    """One transaction at `commit` with `events` inserts (a heartbeat when 0)."""
    if events == 0:
        return ChangeBatch(Position(commit), nbytes=nbytes)
    tx = Transaction(commit, commit, TS)
    changes: list[RowChange] = [("c", tx, s, s, None, (b"%d" % s,)) for s in range(1, events + 1)]
    return ChangeBatch(Position(commit), [TableChanges(ORDERS, PgRowCodec(ORDERS.columns), changes)], nbytes)


class FakeSource:
    """Yields prepared batches; optionally sets `stop` itself after `stop_after` batches, then waits for it."""

    def __init__(self, batches: list[ChangeBatch], *, stop_after: int | None = None,
                 fail_after: int | None = None, wait_for_stop: bool = False) -> None:
        self.name = "fake"
        self.prepared = batches
        self.stop_after = stop_after
        self.fail_after = fail_after
        self.wait_for_stop = wait_for_stop
        self.resumed_from: list[Position | None] = []
        self.yielded: list[ChangeBatch] = []
        self.acks: list[Position] = []
        self.closed = 0

    async def start(self, resume_from: Position | None) -> None:
        self.resumed_from.append(resume_from)

    async def batches(self, policy: BatchPolicy, stop: asyncio.Event) -> AsyncIterator[ChangeBatch]:
        for b in self.prepared:
            if stop.is_set():
                return
            if self.fail_after is not None and len(self.yielded) == self.fail_after:
                raise SourceConnectionError("source went away")
            self.yielded.append(b)
            yield b
            if self.stop_after is not None and len(self.yielded) == self.stop_after:
                stop.set()
        if self.wait_for_stop:
            await stop.wait()

    async def acknowledge(self, position: Position) -> None:
        self.acks.append(position)

    async def close(self) -> None:
        self.closed += 1


class FakeSink:
    """Keeps written batches in memory; durable at once, or `lag` batches behind, or failing on one write."""

    def __init__(self, name: str, *, held: Position | None = None, lag: int = 0, fail_on: int | None = None,
                 on_write: Callable[[ChangeBatch], None] | None = None, delay: float = 0) -> None:
        self.name = name
        self.held = held
        self.lag = lag
        self.fail_on = fail_on
        self.on_write = on_write
        self.delay = delay
        self.written: list[ChangeBatch] = []
        self.opened = 0
        self.closed = 0

    async def open(self) -> None:
        self.opened += 1

    def position(self) -> Position | None:
        if len(self.written) > self.lag:
            return self.written[-1 - self.lag].position
        return self.held

    async def write(self, b: ChangeBatch) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_on is not None and len(self.written) + 1 == self.fail_on:
            raise SinkWriteError(f"sink {self.name} is full")
        self.written.append(b)
        if self.on_write is not None:
            self.on_write(b)

    async def close(self) -> None:
        self.closed += 1


class MemoryCheckpoints:
    """A checkpoint store that keeps every saved checkpoint."""

    def __init__(self) -> None:
        self.saved: list[tuple[str, Checkpoint]] = []

    def load(self, job: str) -> Checkpoint | None:
        return next((cp for j, cp in reversed(self.saved) if j == job), None)

    def save(self, job: str, checkpoint: Checkpoint) -> None:
        self.saved.append((job, checkpoint))


def run(source: FakeSource, sinks: list[FakeSink], store: MemoryCheckpoints | None = None,
        stop: asyncio.Event | None = None, **buffer: int) -> Pipeline:
    """Run a pipeline of job 'j' to its end (with a 5 s guard) and return it."""
    pipeline = Pipeline("j", source, list(sinks), BatchPolicy(), store or MemoryCheckpoints(), **buffer)

    async def go() -> None:
        await asyncio.wait_for(pipeline.run(stop or asyncio.Event()), timeout=5)

    asyncio.run(go())
    return pipeline


# ---------------------------------------------------------------- flow and acknowledgement


def test_batches_reach_every_sink_in_order() -> None:
    """Every batch, heartbeats included, reaches every sink once, in source order."""
    batches = [batch(100), batch(200, events=3), batch(300, events=0), batch(400)]
    source = FakeSource(batches)
    a, b = FakeSink("a"), FakeSink("b", delay=0.001)
    pipeline = run(source, [a, b], max_buffered_batches=1)
    assert a.written == batches
    assert b.written == batches
    assert (a.opened, b.opened) == (1, 1)
    assert pipeline.stats.events == 5
    assert pipeline.stats.batches == 4
    assert pipeline.stats.acknowledged == Position(400)


def test_source_starts_at_the_minimum_sink_position() -> None:
    """The source resumes from the lowest position the sinks hold; None if any sink holds nothing."""
    source = FakeSource([])
    run(source, [FakeSink("a", held=Position(500)), FakeSink("b", held=Position(300, 2))])
    assert source.resumed_from == [Position(300, 2)]
    source = FakeSource([])
    run(source, [FakeSink("a", held=Position(500)), FakeSink("b")])
    assert source.resumed_from == [None]


def test_acknowledges_the_minimum_over_sinks() -> None:
    """After each batch the source is acknowledged with the minimum durable position over sinks."""
    source = FakeSource([batch(100), batch(200), batch(300)])
    store = MemoryCheckpoints()
    run(source, [FakeSink("fast"), FakeSink("slow", lag=1)], store)
    assert source.acks == [Position(100), Position(200)]
    assert store.saved == [
        ("j", Checkpoint(Position(100), {"fast": Position(200), "slow": Position(100)})),
        ("j", Checkpoint(Position(200), {"fast": Position(300), "slow": Position(200)})),
    ]


def test_acknowledgement_is_saved_before_the_source_hears_it() -> None:
    """Each acknowledgement is in the checkpoint store before the source receives it."""
    source = FakeSource([batch(100), batch(200)])
    store = MemoryCheckpoints()
    seen: list[tuple[Position, Position | None]] = []
    acknowledge = source.acknowledge

    async def checked(position: Position) -> None:
        cp = store.load("j")
        seen.append((position, cp.source if cp else None))
        await acknowledge(position)

    source.acknowledge = checked  # type: ignore[method-assign]
    run(source, [FakeSink("a")], store)
    assert seen == [(Position(100), Position(100)), (Position(200), Position(200))]


def test_no_ack_while_a_sink_holds_nothing() -> None:
    """While any sink holds nothing yet, neither the checkpoint nor the source moves."""
    source = FakeSource([batch(100), batch(200)])
    store = MemoryCheckpoints()
    run(source, [FakeSink("a"), FakeSink("b", lag=5)], store)
    assert source.acks == []
    assert store.saved == []


# ---------------------------------------------------------------- failure and stop


def test_sink_error_propagates_and_closes_everything() -> None:
    """A sink's write error leaves run() and closes the source and every sink; the failed batch is not acked."""
    source = FakeSource([batch(100), batch(200), batch(300), batch(400)])
    good, bad = FakeSink("good"), FakeSink("bad", fail_on=2)
    store = MemoryCheckpoints()
    with pytest.raises(SinkWriteError, match="bad is full"):
        run(source, [good, bad], store, max_buffered_batches=1)
    assert source.closed == 1
    assert (good.closed, bad.closed) == (1, 1)
    assert source.acks == [Position(100)]
    assert [cp.source for _, cp in store.saved] == [Position(100)]


def test_source_error_propagates_and_closes_everything() -> None:
    """A source error leaves run() after closing the source and every sink."""
    source = FakeSource([batch(100), batch(200)], fail_after=1)
    sink = FakeSink("a")
    with pytest.raises(SourceConnectionError):
        run(source, [sink])
    assert source.closed == 1
    assert sink.closed == 1


def test_open_error_closes_everything() -> None:
    """A sink that fails to open stops run() before the source starts, and everything is closed."""
    source = FakeSource([batch(100)])
    broken = FakeSink("broken")

    async def fail() -> None:
        raise SinkWriteError("cannot open")

    broken.open = fail  # type: ignore[method-assign]
    other = FakeSink("other")
    with pytest.raises(SinkWriteError):
        run(source, [other, broken])
    assert source.resumed_from == []
    assert source.closed == 1
    assert (other.closed, broken.closed) == (1, 1)


def test_stop_drains_what_was_produced() -> None:
    """Once stop is set the source ends; run() returns after every produced batch is written and acked."""
    source = FakeSource([batch(n * 100) for n in range(1, 20)], stop_after=5, wait_for_stop=True)
    sink = FakeSink("a", delay=0.002)
    pipeline = run(source, [sink], max_buffered_batches=10)
    assert len(source.yielded) == 5
    assert sink.written == source.yielded
    assert source.acks[-1] == Position(500)
    assert pipeline.stats.acknowledged == Position(500)
    assert source.closed == 1
    assert sink.closed == 1


def test_stop_set_from_outside() -> None:
    """An idle source waiting for more data ends when stop is set from outside, and run() returns."""
    stop = asyncio.Event()
    source = FakeSource([batch(100), batch(200)], wait_for_stop=True)
    sink = FakeSink("a", on_write=lambda b: stop.set() if b.position == Position(200) else None)
    run(source, [sink], stop=stop)
    assert sink.written == source.prepared
    assert source.acks == [Position(100), Position(200)]


def test_logs_start_and_stop_with_job() -> None:
    """The pipeline logs job_starting and job_stopped events bound to the job."""
    with capture_logs() as logs:
        run(FakeSource([batch(100)]), [FakeSink("a", held=Position(50))])
    events = {e["event"]: e for e in logs}
    assert events["job_starting"]["job"] == "j"
    assert events["job_starting"]["resume_from"] == "50"
    assert events["job_stopped"]["position"] == "100"


# ---------------------------------------------------------------- BatchBuffer


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_buffer_is_fifo_and_ends_with_none() -> None:
    """Batches come out in the order they went in; None marks the end."""
    async def go() -> None:
        buf = BatchBuffer(max_batches=10, max_bytes=1000)
        items = [batch(1), batch(2), batch(3)]
        for b in items:
            await buf.put(b)
        await buf.put(None)
        assert [await buf.get() for _ in range(4)] == [*items, None]
    asyncio.run(go())


def test_buffer_blocks_by_count() -> None:
    """A put waits while max_batches are buffered and proceeds once one is taken."""
    async def go() -> None:
        buf = BatchBuffer(max_batches=2, max_bytes=1 << 30)
        await buf.put(batch(1))
        await buf.put(batch(2))
        third = asyncio.create_task(buf.put(batch(3)))
        await settle()
        assert not third.done()
        assert (await buf.get()).position == Position(1)  # type: ignore[union-attr]
        await settle()
        assert third.done()
        await third
    asyncio.run(go())


def test_buffer_blocks_by_bytes() -> None:
    """A put waits while max_bytes are buffered, even below max_batches."""
    async def go() -> None:
        buf = BatchBuffer(max_batches=100, max_bytes=100)
        await buf.put(batch(1, nbytes=60))
        await buf.put(batch(2, nbytes=40))
        third = asyncio.create_task(buf.put(batch(3, nbytes=1)))
        await settle()
        assert not third.done()
        await buf.get()
        await settle()
        assert third.done()
        await third
    asyncio.run(go())


def test_buffer_always_admits_one_batch() -> None:
    """A batch larger than max_bytes still enters an empty buffer (no deadlock), and blocks the next."""
    async def go() -> None:
        buf = BatchBuffer(max_batches=1, max_bytes=100)
        await asyncio.wait_for(buf.put(batch(1, nbytes=10_000)), timeout=1)
        second = asyncio.create_task(buf.put(batch(2, nbytes=1)))
        await settle()
        assert not second.done()
        await buf.get()
        await asyncio.wait_for(second, timeout=1)
    asyncio.run(go())


def test_buffer_admits_the_end_marker_when_full() -> None:
    """The end marker None enters even a full buffer, so the producer can always finish."""
    async def go() -> None:
        buf = BatchBuffer(max_batches=1, max_bytes=100)
        await buf.put(batch(1))
        await asyncio.wait_for(buf.put(None), timeout=1)
        assert (await buf.get()) is not None
        assert (await buf.get()) is None
    asyncio.run(go())


def test_get_waits_for_a_batch() -> None:
    """get() waits until the producer puts something."""
    async def go() -> None:
        buf = BatchBuffer(max_batches=1, max_bytes=100)
        getter = asyncio.create_task(buf.get())
        await settle()
        assert not getter.done()
        b = batch(1)
        await buf.put(b)
        assert await asyncio.wait_for(getter, timeout=1) is b
    asyncio.run(go())


def test_no_sink_is_closed_while_its_write_runs() -> None:
    """When one sink fails, the other sinks' writes of that batch finish before any sink is closed."""
    timeline: list[str] = []

    class SlowSink(FakeSink):
        async def write(self, b: ChangeBatch) -> None:
            timeline.append("write started")
            await asyncio.sleep(0.05)
            timeline.append("write done")

        async def close(self) -> None:
            timeline.append("close")
            await super().close()

    with pytest.raises(SinkWriteError):
        run(FakeSource([batch(100)]), [SlowSink("slow"), FakeSink("bad", fail_on=1)])
    assert timeline == ["write started", "write done", "close"]


class ThreadedSink(FakeSink):
    """Writes in a worker thread that runs until released; `close` under a running write raises
    (as DuckDB's ResourceInUseException does)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.started = asyncio.Event()
        self.release = threading.Event()
        self.running = False

    async def write(self, b: ChangeBatch) -> None:
        loop = asyncio.get_running_loop()

        def apply() -> None:
            self.running = True
            loop.call_soon_threadsafe(self.started.set)
            self.release.wait(5)
            self.running = False

        await asyncio.to_thread(apply)
        self.written.append(b)

    async def close(self) -> None:
        if self.running:
            raise RuntimeError("close under a running write")
        await super().close()


def test_source_failure_waits_for_a_threaded_write_before_closing_sinks() -> None:
    """The source fails while a sink applies a batch in a worker thread: the pipeline lets the write
    end before closing the sink, and the source's retryable error is what propagates."""
    sink = ThreadedSink("duck")

    class FailingSource(FakeSource):
        async def batches(self, policy: BatchPolicy, stop: asyncio.Event) -> AsyncIterator[ChangeBatch]:
            yield batch(100)
            await sink.started.wait()
            asyncio.get_running_loop().call_later(0.05, sink.release.set)
            raise SourceConnectionError("replication connection lost")

    source = FailingSource([])
    with pytest.raises(SourceConnectionError, match="replication connection lost"):
        asyncio.run(Pipeline("job", source, [sink], BatchPolicy(), MemoryCheckpoints()).run(asyncio.Event()))
    assert sink.closed == 1 and source.closed == 1
    assert not sink.running
