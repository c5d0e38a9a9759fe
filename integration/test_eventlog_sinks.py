"""The NATS JetStream and Redis Streams sinks against real servers: streams, replays, outages, refusals.

Each test starts its own server (cdc.sandbox) on a random loopback port; outages stop
the server process and start it again on the same port with its files kept.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import nats
import pytest
import redis

from cdc.config import NatsSinkConfig, RedisSinkConfig
from cdc.errors import SinkError
from cdc.events import ChangeBatch, Position, Transaction
from cdc.sandbox import DisposableNats, DisposableRedis
from cdc.sink import SourceInfo
from integration.brokers import read_nats, read_redis
from sinks.eventlog.nats_jetstream import NatsJetStreamSink
from sinks.eventlog.redis_streams import RedisStreamsSink
from tests.builders import ORDERS, TS, table

INFO = SourceInfo(connector="postgresql", name="shop", database="shopdb")
FAST = {"retry_backoff_s": 0.1, "retry_max_backoff_s": 0.5, "write_timeout_s": 30.0}


def batch(commit: int, ids: range, *, first_seq: int = 1, whole: bool = True) -> ChangeBatch:
    """One transaction (or a chunk of it) inserting an order per id."""
    tx = Transaction(7, commit, TS)
    changes = [("c", tx, s, s, None, (b"%d" % i, b"1.00", b"x")) for s, i in enumerate(ids, first_seq)]
    end = Position(commit) if whole else Position(commit, first_seq + len(ids) - 1)
    return ChangeBatch(end, [table(ORDERS, changes)])  # type: ignore[arg-type]


def ids_of(b: ChangeBatch) -> list[str]:
    return [f"shop:{tx.commit}:{seq}" for t in b.tables for _, tx, seq, *_ in t.changes]


def nats_sink(server: DisposableNats, **options: Any) -> NatsJetStreamSink:
    cfg = NatsSinkConfig(type="nats", servers=[server.url], ack_timeout_s=1.0, **{**FAST, **options})
    return NatsJetStreamSink("nats", cfg, INFO, prefix="shop", stored=lambda: None)


def redis_sink(server: DisposableRedis, **options: Any) -> RedisStreamsSink:
    cfg = RedisSinkConfig(type="redis", url=server.url, **{**FAST, **options})
    return RedisStreamsSink("redis", cfg, INFO, prefix="shop")


async def _stream_config(url: str, stream: str) -> Any:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).config
    finally:
        await nc.close()


def test_nats_creates_the_stream_and_drops_replayed_ids(nats_server: DisposableNats) -> None:
    """The stream is created (subjects shop.>, file storage); a replay is dropped by Nats-Msg-Id."""
    b = batch(100, range(1, 101))

    async def go() -> None:
        for _ in range(2):  # the second sink has no position: a replay after a lost checkpoint
            s = nats_sink(nats_server, duplicate_window_s=60)
            await s.open()
            await s.write(b)
            assert s.position() == Position(100)
            await s.close()

    asyncio.run(go())
    config = asyncio.run(_stream_config(nats_server.url, "shop"))
    assert (config.subjects, config.storage, config.duplicate_window) == (["shop.>"], "file", 60.0)
    messages = read_nats(nats_server.url, "shop")
    assert [m.event_id for m in messages] == ids_of(b)
    assert {m.topic for m in messages} == {"shop.public.orders"}
    assert json.loads(messages[0].headers["cdc-key"]) == {"id": 1}


def test_nats_missing_stream_is_a_setup_error(nats_server: DisposableNats) -> None:
    """With create_stream: false a missing stream stops the job with one actionable line."""
    s = nats_sink(nats_server, create_stream=False)

    async def go() -> None:
        with pytest.raises(SinkError, match=r"stream shop does not exist; create it \(subjects shop\.>\)"):
            await s.open()
        await s.close()

    asyncio.run(go())


def test_nats_outage_mid_batch_loses_nothing_and_keeps_order(nats_server: DisposableNats) -> None:
    """The server stops and restarts while a batch is in flight: the stream holds the batch once, in order."""
    b = batch(100, range(1, 30_001))
    s = nats_sink(nats_server, max_pending_acks=500)

    async def go() -> None:
        await s.open()
        write = asyncio.create_task(s.write(b))
        while s._flight is None or s._flight.acked.count(1) < 2000:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(nats_server.halt)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(nats_server.resume)
        await write
        await s.close()

    asyncio.run(go())
    assert [m.event_id for m in read_nats(nats_server.url, "shop")] == ids_of(b)


def test_redis_keeps_its_position_with_the_batch_and_skips_replays(redis_server: DisposableRedis) -> None:
    """The position key moves in the batch's MULTI/EXEC; a reopened sink skips what it holds."""
    client = redis.Redis.from_url(redis_server.url)

    async def go() -> None:
        s = redis_sink(redis_server)
        await s.open()
        assert s.position() is None
        await s.write(batch(100, range(1, 11)))
        await s.write(batch(200, range(11, 14), whole=False))  # a chunk: seq 1..3 of 200
        await s.close()
        again = redis_sink(redis_server)
        await again.open()
        assert again.position() == Position(200, 3)
        await again.write(batch(100, range(1, 11)))  # held
        await again.write(batch(200, range(11, 16)))  # seq 4..5 are new
        await again.close()

    asyncio.run(go())
    assert json.loads(client.get("shop:cdc-position:redis") or b"") == {"commit": 200}
    entries = read_redis(redis_server.url, "shop.*")
    assert [m.event_id for m in entries] == [*ids_of(batch(100, range(1, 11))), *ids_of(batch(200, range(11, 16)))]
    assert json.loads(entries[0].key or b"") == {"id": 1} and json.loads(entries[0].value or b"")["op"] == "c"
    client.close()


def test_redis_crashes_during_writes_write_each_event_once(redis_server: DisposableRedis) -> None:
    """Redis killed twice while batches stream: every event is in the stream exactly once, in order."""
    batches = [batch(1000 + n, range(n * 2000 + 1, n * 2000 + 2001)) for n in range(20)]
    stop = threading.Event()

    def crash_twice() -> None:
        for _ in range(2):
            if stop.wait(0.4):
                return
            redis_server.halt(kill=True)
            time.sleep(0.5)
            redis_server.resume()

    async def go() -> None:
        s = redis_sink(redis_server)
        await s.open()
        for b in batches:
            await s.write(b)
        await s.close()

    crasher = threading.Thread(target=crash_twice)
    crasher.start()
    try:
        asyncio.run(go())
    finally:
        stop.set()
        crasher.join()
    assert [m.event_id for m in read_redis(redis_server.url, "shop.*")] == [i for b in batches for i in ids_of(b)]


def test_redis_refuses_a_key_that_is_not_a_stream(redis_server: DisposableRedis) -> None:
    """A stream key holding a string stops the job before anything is written or the position moves."""
    client = redis.Redis.from_url(redis_server.url)
    client.set("shop.public.orders", "not a stream")
    s = redis_sink(redis_server)

    async def go() -> None:
        await s.open()
        with pytest.raises(SinkError, match=r"key shop\.public\.orders is a string, not a stream"):
            await s.write(batch(100, range(1, 3)))
        await s.close()

    asyncio.run(go())
    assert client.get("shop:cdc-position:redis") is None
    client.close()


def test_redis_failed_command_in_exec_puts_the_position_back(redis_server: DisposableRedis) -> None:
    """A command failing inside EXEC (Redis does not roll back) restores the old position and stops the job."""
    client = redis.Redis.from_url(redis_server.url)

    async def go() -> None:
        s = redis_sink(redis_server)
        await s.open()
        await s.write(batch(100, range(1, 3)))
        client.delete("shop.public.orders")
        client.set("shop.public.orders", "changed under the sink")  # after the sink checked the key
        with pytest.raises(SinkError, match="WRONGTYPE"):
            await s.write(batch(200, range(3, 5)))
        await s.close()

    asyncio.run(go())
    assert json.loads(client.get("shop:cdc-position:redis") or b"") == {"commit": 100}
    client.close()


def test_redis_max_len_trims_approximately(redis_server: DisposableRedis) -> None:
    """max_len caps each stream with XADD MAXLEN ~."""
    async def go() -> None:
        s = redis_sink(redis_server, max_len=100)
        await s.open()
        for n in range(5):
            await s.write(batch(100 + n, range(n * 1000, n * 1000 + 1000)))
        await s.close()

    asyncio.run(go())
    client = redis.Redis.from_url(redis_server.url)
    assert 100 <= client.xlen("shop.public.orders") < 1000
    client.close()
