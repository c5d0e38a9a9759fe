"""Benchmark: the Kafka, NATS JetStream and Redis Streams sinks against plain clients, same run.

Builds N change events of the 10-column table of bench/pg_stream.py (int8, text,
numeric, timestamptz, jsonb, bool, uuid, float8, int4, varchar) as the PostgreSQL
source hands them to sinks: pgoutput text values in `ChangeBatch`es of whole
transactions (100 events each) cut at ``--batch-events`` (the pipeline's default
``max_batch_events``). For each backend it measures, alternating and best of
``--rounds``:

- sink: ``sink.write(batch)`` for every batch, serialization included (render the
  Debezium envelopes, keys, ids; publish; wait until durable);
- plain: the backend's own client publishing the same bytes (topic, key, value and
  event-id header, rendered beforehand and not timed) with the same durability point,
  the end of each batch:
  Kafka: confluent-kafka ``produce`` with the sink's producer settings (idempotent,
  acks=all), ``flush()`` per batch; NATS: nats-py ``js.publish_async`` (window
  ``max_pending_acks``) with the same headers, all acknowledgements awaited per batch,
  and ``nats_core``: the stricter hand-rolled pipelining on ``nc.publish`` with one
  acknowledgement subscription (what the sink itself does, without its bookkeeping);
  Redis: redis-py (hiredis) ``XADD`` in one MULTI/EXEC per batch with a ``SET``.

Servers: a private nats-server and redis-server (cdc.sandbox), and librdkafka's mock
cluster for Kafka (no broker can be installed here; it runs in this process and speaks
the Kafka protocol, so both sides pay the same broker). Prints one JSON document with
events/s per side and the ratio sink/plain per backend (goal: >= 0.8).

    .venv/bin/python bench/eventlog_sinks.py [--events 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Producer

from cdc import __version__
from cdc.checkpoints import no_position
from cdc.config import KafkaSinkConfig, NatsSinkConfig, RedisSinkConfig
from cdc.events import ChangeBatch, Column, Position, RowChange, TableChanges, TableId, TableSchema, Transaction
from cdc.logs import configure_logging
from cdc.sandbox import DisposableNats, DisposableRedis
from cdc.sink import SourceInfo
from connectors.postgres import types as pg
from connectors.postgres.types import PgRowCodec
from sinks.eventlog.kafka import KafkaSink
from sinks.eventlog.nats_jetstream import NatsJetStreamSink
from sinks.eventlog.records import RecordRenderer, Records
from sinks.eventlog.redis_streams import RedisStreamsSink
from sinks.eventlog.routing import Routing, kafka_name

INFO = SourceInfo(connector="postgresql", name="bench", database="bench")
SCHEMA = TableSchema(TableId("bench", "public", "bench"), (
    Column("id", "int8", pg.INT8, key=True), Column("name", "text", pg.TEXT),
    Column("amount", "numeric", pg.NUMERIC, type_modifier=(12 << 16 | 2) + 4),
    Column("created", "timestamptz", pg.TIMESTAMPTZ), Column("doc", "jsonb", pg.JSONB), Column("flag", "bool", pg.BOOL),
    Column("ref", "uuid", pg.UUID), Column("score", "float8", pg.FLOAT8), Column("qty", "int4", pg.INT4),
    Column("code", "varchar", pg.VARCHAR),
))
TX_EVENTS = 100
WINDOW = 1000


def make_batches(events: int, batch_events: int) -> list[ChangeBatch]:
    """`events` inserts as pgoutput text rows, in transactions of 100, batches of `batch_events`."""
    codec = PgRowCodec(SCHEMA.columns)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    batches = []
    for start in range(0, events, batch_events):
        changes: list[RowChange] = []
        tx = Transaction(0, 0, base)
        for i in range(start, min(start + batch_events, events)):
            if (i - start) % TX_EVENTS == 0:
                commit = 1_000_000 + i
                tx = Transaction(700 + i // TX_EVENTS, commit, base + timedelta(seconds=i))
            row = (b"%d" % i, b"name-%d" % i, b"%d.%02d" % (i % 1000, i % 100),
                   (base + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.123456+00").encode(),
                   b'{"k": %d, "tag": "x%d"}' % (i, i % 7), b"t" if i % 2 else b"f",
                   b"%08x-0000-4000-8000-%012x" % (i, i), b"%r" % (i / 7), b"%d" % (i % 1000), b"code-%d" % (i % 97))
            changes.append(("c", tx, (i - start) % TX_EVENTS + 1, 5000 + i, None, row))
        batches.append(ChangeBatch(Position(tx.commit), [TableChanges(SCHEMA, codec, changes)], nbytes=0))
    return batches


def render(batches: list[ChangeBatch], prefix: str) -> list[list[Records]]:
    """What the sinks publish for `batches`, rendered once for the plain clients."""
    routing = Routing(table_template="{prefix}.{schema}.{table}", transaction_template="{prefix}.transaction",
                      prefix=prefix, source=INFO.name, database=INFO.database, safe=kafka_name)
    renderer = RecordRenderer(INFO, routing)
    return [renderer.render(b, 1) for b in batches]


async def timed(run: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await run()
    return time.perf_counter() - started


# -- Kafka ------------------------------------------------------------------------------


async def kafka_round(bootstrap: str, batches: list[ChangeBatch], n: int) -> tuple[float, float]:
    cfg = KafkaSinkConfig(type="kafka", brokers=bootstrap)
    sink = KafkaSink("kafka", cfg, INFO, prefix=f"sink{n}", stored=no_position)
    await sink.open()

    async def sink_run() -> None:
        for b in batches:
            await sink.write(b)

    sink_s = await timed(sink_run)
    conf = {k: v for k, v in sink.producer_config().items() if k != "logger"}
    await sink.close()
    records = render(batches, f"plain{n}")
    producer = Producer(conf)

    def plain() -> None:
        failed = 0

        def report(err: Any, msg: Any) -> None:
            nonlocal failed
            failed += err is not None

        for batch in records:
            for r in batch:
                for key, value, event_id in zip(r.keys, r.values, r.ids, strict=True):
                    while True:
                        try:
                            producer.produce(r.topic, value, key, on_delivery=report,
                                             headers=[("cdc-event-id", event_id)])
                            break
                        except BufferError:
                            producer.poll(0.05)
                producer.poll(0)
            producer.flush()
        assert failed == 0

    plain_s = await timed(lambda: asyncio.to_thread(plain))
    return sink_s, plain_s


# -- NATS -------------------------------------------------------------------------------


async def nats_round(url: str, batches: list[ChangeBatch], n: int) -> tuple[float, float]:
    import nats

    cfg = NatsSinkConfig(type="nats", servers=[url], max_pending_acks=WINDOW)
    sink = NatsJetStreamSink("nats", cfg, INFO, prefix=f"sink{n}", stored=no_position)
    await sink.open()

    async def sink_run() -> None:
        for b in batches:
            await sink.write(b)

    sink_s = await timed(sink_run)
    await sink.close()
    records = render(batches, f"plain{n}")
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=WINDOW)
    await js.add_stream(name=f"plain{n}", subjects=[f"plain{n}.>"])

    async def plain() -> None:
        for batch in records:
            futures = []
            for r in batch:
                for key, value, event_id in zip(r.keys, r.values, r.ids, strict=True):
                    ident = event_id.decode()
                    headers = {"Nats-Msg-Id": ident, "cdc-event-id": ident}
                    if key is not None:
                        headers["cdc-key"] = key.decode()
                    futures.append(await js.publish_async(r.topic, value or b"", headers=headers))
            await asyncio.gather(*futures)

    plain_s = await timed(plain)
    await nc.close()
    return sink_s, plain_s


async def nats_core_round(url: str, batches: list[ChangeBatch], n: int) -> tuple[float, float]:
    """The strict NATS baseline: hand-rolled pipelining on the core client (``nc.publish`` with a
    reply inbox, one subscription counting acknowledgements, window `WINDOW`), no futures."""
    import nats

    sink_s, _ = await nats_round(url, batches, n + 100)
    records = render(batches, f"core{n}")
    nc = await nats.connect(url)
    await nc.jetstream().add_stream(name=f"core{n}", subjects=[f"core{n}.>"])
    acked = 0
    progress = asyncio.Event()

    async def on_ack(msg: Any) -> None:
        nonlocal acked
        assert b'"error"' not in msg.data, msg.data
        acked += 1
        progress.set()

    inbox = nc.new_inbox()
    await nc.subscribe(inbox + ".*", cb=on_ack)

    async def plain() -> None:
        sent = 0
        for batch in records:
            for r in batch:
                for key, value, event_id in zip(r.keys, r.values, r.ids, strict=True):
                    while sent - acked >= WINDOW:
                        progress.clear()
                        await progress.wait()
                    ident = event_id.decode()
                    headers = {"Nats-Msg-Id": ident, "cdc-event-id": ident}
                    if key is not None:
                        headers["cdc-key"] = key.decode()
                    await nc.publish(r.topic, value or b"", reply=f"{inbox}.{sent}", headers=headers)
                    sent += 1
            while acked < sent:
                progress.clear()
                await progress.wait()

    plain_s = await timed(plain)
    await nc.close()
    return sink_s, plain_s


# -- Redis ------------------------------------------------------------------------------


async def redis_round(url: str, batches: list[ChangeBatch], n: int) -> tuple[float, float]:
    from redis.asyncio import Redis

    cfg = RedisSinkConfig(type="redis", url=url)
    sink = RedisStreamsSink("redis", cfg, INFO, prefix=f"sink{n}")
    await sink.open()

    async def sink_run() -> None:
        for b in batches:
            await sink.write(b)

    sink_s = await timed(sink_run)
    await sink.close()
    records = render(batches, f"plain{n}")
    client = Redis.from_url(url)

    async def plain() -> None:
        for i, batch in enumerate(records):
            pipe = client.pipeline(transaction=True)
            for r in batch:
                for key, value, event_id in zip(r.keys, r.values, r.ids, strict=True):
                    pipe.execute_command("XADD", r.topic, "*", "cdc-event-id", event_id, "key", key, "value", value)
            pipe.execute_command("SET", f"plain{n}:position", i)
            await pipe.execute()

    plain_s = await timed(plain)
    await client.aclose()
    return sink_s, plain_s


# -- main -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="kafka,nats,nats_core,redis")
    args = parser.parse_args()
    configure_logging("warning", "json")  # logs to stderr: stdout carries only the JSON result
    batches = make_batches(args.events, args.batch_events)
    value_bytes = sum(len(v or b"") for r in render(batches[:1], "x")[0] for v in r.values) / len(batches[0])
    results: dict[str, Any] = {}
    with DisposableNats() as nats_server, DisposableRedis() as redis_server:
        mock = Producer({"test.mock.num.brokers": 1, "log_level": 4})
        bootstrap = ",".join(f"{b.host}:{b.port}" for b in mock.list_topics(timeout=10).brokers.values())
        rounds: dict[str, Callable[[int], Awaitable[tuple[float, float]]]] = {
            "kafka": lambda n: kafka_round(bootstrap, batches, n),
            "nats": lambda n: nats_round(nats_server.url, batches, n),
            "nats_core": lambda n: nats_core_round(nats_server.url, batches, n),
            "redis": lambda n: redis_round(redis_server.url, batches, n),
        }
        for name in args.backends.split(","):
            sink_best = plain_best = float("inf")
            for n in range(args.rounds):
                sink_s, plain_s = asyncio.run(rounds[name](n))
                sink_best, plain_best = min(sink_best, sink_s), min(plain_best, plain_s)
            results[name] = {
                "sink_events_per_s": round(args.events / sink_best),
                "plain_client_events_per_s": round(args.events / plain_best),
                "ratio": round(plain_best / sink_best, 2),
            }
        del mock
    print(json.dumps({
        "benchmark": "eventlog_sinks",
        "cdc_version": __version__,
        "events": args.events,
        "batch_events": args.batch_events,
        "transaction_events": TX_EVENTS,
        "avg_value_bytes": round(value_bytes),
        "rounds": args.rounds,
        "backends": results,
        "plain_clients": {
            "kafka": "confluent-kafka produce + flush per batch, same producer settings (mock cluster in process)",
            "nats": f"nats-py js.publish_async (its pipelined API), window {WINDOW}, acks awaited per batch",
            "nats_core": f"nats-py core nc.publish + one ack subscription, window {WINDOW} (hand-rolled, stricter)",
            "redis": "redis-py (hiredis) XADD per event in one MULTI/EXEC per batch",
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }, indent=2))


if __name__ == "__main__":
    main()
