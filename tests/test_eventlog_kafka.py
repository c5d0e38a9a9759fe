"""Tests of the Kafka sink against librdkafka's in-process mock cluster (the real Kafka protocol)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from cdc.config import KafkaSinkConfig
from cdc.errors import SinkError, SinkWriteError
from cdc.events import ChangeBatch, Position, Transaction
from cdc.sink import SourceInfo
from sinks.eventlog.kafka import KafkaSink
from tests.builders import ORDERS, TS, table

INFO = SourceInfo(connector="postgresql", name="shop", database="shopdb")


class Cluster:
    """A mock cluster hosted by a producer handle; `stop()` takes it down (a broker outage)."""

    def __init__(self) -> None:
        self._host: Producer | None = Producer({"test.mock.num.brokers": 1, "log_level": 4})
        brokers = self._host.list_topics(timeout=10).brokers.values()
        self.bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)

    def stop(self) -> None:
        if self._host is not None:
            self._host.flush(0)
            self._host = None

    def read(self, topic: str) -> list[tuple[int, Any, Any, dict[str, bytes]]]:
        """(partition, key, value, headers) of every record of `topic`, partition by partition."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "t", "log_level": 4})
        try:
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts if ends[p]])
            got: dict[int, list[tuple[int, Any, Any, dict[str, bytes]]]] = {p: [] for p in parts}
            deadline = time.monotonic() + 10
            while sum(len(v) for v in got.values()) < sum(ends.values()) and time.monotonic() < deadline:
                for m in consumer.consume(100, 0.2):
                    assert m.error() is None
                    p = m.partition() or 0
                    got[p].append((p, m.key(), m.value(), dict(m.headers() or [])))
            return [r for p in sorted(got) for r in got[p]]
        finally:
            consumer.close()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A fresh mock cluster per test."""
    c = Cluster()
    yield c
    c.stop()


def batch(commit: int, ids: range, note: bytes = b"x") -> ChangeBatch:
    """One transaction inserting an order per id."""
    tx = Transaction(7, commit, TS)
    return ChangeBatch(Position(commit), [table(ORDERS, [("c", tx, s, s, None, (b"%d" % i, b"1.00", note))
                                                         for s, i in enumerate(ids, 1)])])


def sink(cluster: Cluster, stored: Position | None = None, **options: Any) -> KafkaSink:
    cfg = KafkaSinkConfig(type="kafka", brokers=cluster.bootstrap, linger_ms=1, connect_timeout_s=5, **options)
    return KafkaSink("kafka", cfg, INFO, prefix="shop", stored=lambda: stored)


def test_write_returns_after_delivery_with_key_topic_and_header(cluster: Cluster) -> None:
    """Records are on shop.public.orders, keyed by id, with cdc-event-id; position() is the batch's."""
    s = sink(cluster)

    async def go() -> None:
        await s.open()
        assert s.position() is None
        await s.write(batch(100, range(1, 51)))
        assert s.position() == Position(100)
        await s.close()

    asyncio.run(go())
    records = cluster.read("shop.public.orders")
    assert len(records) == 50
    by_id = {json.loads(k)["id"]: (p, json.loads(v), h) for p, k, v, h in records}
    assert set(by_id) == set(range(1, 51))
    for i, (_, value, headers) in by_id.items():
        assert value["after"]["id"] == i
        assert headers == {"cdc-event-id": b"shop:100:%d" % i}
    assert len({p for p, *_ in by_id.values()}) > 1  # keys spread over partitions


def test_replay_after_restart_skips_what_the_checkpoint_holds(cluster: Cluster) -> None:
    """A sink opened at a stored position writes only the events after it (by commit and seq)."""
    async def go() -> None:
        s = sink(cluster, stored=Position(200, 3))
        await s.open()
        await s.write(batch(100, range(1, 4)))  # all held
        await s.write(batch(200, range(10, 16)))  # seq 1..3 held, 4..6 new
        assert s.position() == Position(200)
        await s.close()

    asyncio.run(go())
    assert sorted(h["cdc-event-id"] for *_, h in cluster.read("shop.public.orders")) == [
        b"shop:200:4", b"shop:200:5", b"shop:200:6"]


def test_failed_delivery_fails_the_batch(cluster: Cluster) -> None:
    """With the cluster gone, write raises SinkWriteError after write_timeout_s and the position stays."""
    s = sink(cluster, write_timeout_s=1.0)

    async def go() -> None:
        await s.open()
        await s.write(batch(100, range(1, 3)))
        cluster.stop()
        started = time.monotonic()
        with pytest.raises(SinkWriteError, match=r"record\(s\) of the batch failed|still missing"):
            await s.write(batch(200, range(3, 5)))
        assert time.monotonic() - started < 30
        assert s.position() == Position(100)
        await s.close()

    asyncio.run(go())


def test_unreachable_brokers_at_open_are_retryable() -> None:
    """No broker at the address: open raises a retryable SinkWriteError naming the brokers."""
    cfg = KafkaSinkConfig(type="kafka", brokers="127.0.0.1:1", connect_timeout_s=1)
    s = KafkaSink("kafka", cfg, INFO, prefix="shop", stored=lambda: None)
    with pytest.raises(SinkWriteError, match=r"cannot reach brokers 127\.0\.0\.1:1"):
        asyncio.run(s.open())
    asyncio.run(s.close())


def test_record_too_large_stops_the_job(cluster: Cluster) -> None:
    """A record over message.max.bytes is a permanent SinkError, not an endless retry."""
    s = sink(cluster)

    async def go() -> None:
        await s.open()
        with pytest.raises(SinkError, match="larger than") as err:
            await s.write(batch(100, range(1, 2), note=b"x" * (2 << 20)))
        assert not isinstance(err.value, SinkWriteError)
        await s.close()

    asyncio.run(go())
