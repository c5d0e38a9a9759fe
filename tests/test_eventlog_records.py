"""Tests of what the broker sinks publish: envelopes, keys, ids, tombstones, transactions, schemas, topics, config."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc.checkpoints import Checkpoint, FileCheckpointStore
from cdc.config import KafkaSinkConfig, NatsSinkConfig, RedisSinkConfig, parse_config
from cdc.errors import ConfigError
from cdc.events import UNCHANGED, ChangeBatch, Column, Position, RowChange, TableId, TableSchema, Transaction
from cdc.job import build_sink
from cdc.sink import SourceInfo
from connectors.postgres import types as pg
from sinks.eventlog.kafka import KafkaSink
from sinks.eventlog.nats_jetstream import NatsJetStreamSink, default_stream_name
from sinks.eventlog.records import RecordRenderer, Records, flatten
from sinks.eventlog.redis_streams import RedisStreamsSink
from sinks.eventlog.routing import Routing, kafka_name, nats_token, redis_name
from tests.builders import ORDERS, TS, USERS, table

INFO = SourceInfo(connector="postgresql", name="shop", database="shopdb")
TS_MS = 1767323045123

#: Debezium's documented envelope (https://debezium.io/documentation/reference/connectors/postgresql.html,
#: "Change event values"): the payload fields and the source fields every PostgreSQL event has.
DEBEZIUM_ENVELOPE = ["before", "after", "source", "op", "ts_ms"]
DEBEZIUM_SOURCE = {"version", "connector", "name", "ts_ms", "snapshot", "db", "schema", "table", "txId", "lsn"}


def renderer(prefix: str = "shop", safe: Any = kafka_name, **options: bool) -> RecordRenderer:
    routing = Routing(table_template="{prefix}.{schema}.{table}", transaction_template="{prefix}.transaction",
                      prefix=prefix, source=INFO.name, database=INFO.database, safe=safe)
    return RecordRenderer(INFO, routing, **options)


def mixed() -> ChangeBatch:
    """Tx 1000: insert order 1, insert user; tx 2000: update order 1 (TOAST unchanged), delete order 1."""
    t1, t2 = Transaction(7, 1000, TS), Transaction(8, 2000, TS)
    orders = table(ORDERS, [
        ("c", t1, 1, 900, None, (b"1", b"1.50", b'say "hi"')),
        ("u", t2, 1, 1900, None, (b"1", b"2.00", UNCHANGED)),
        ("d", t2, 2, 1901, (b"1", None, None), None),
    ])
    users = table(USERS, [("c", t1, 2, 901, None, (b"ann",))])
    return ChangeBatch(Position(2000), [orders, users], nbytes=100)


def messages(records: list[Records]) -> list[tuple[str, Any, Any, str]]:
    """(topic, key, value, id) with key and value parsed from JSON."""
    return [(t, k and orjson.loads(k), v and orjson.loads(v), i.decode()) for t, k, v, i in flatten(records)]


def test_values_are_debezium_envelopes_keyed_by_primary_key() -> None:
    """Value: Debezium's envelope fields in order; key: the primary key as JSON, null without one."""
    out = messages(renderer().render(mixed(), TS_MS))
    assert [(t, k, i) for t, k, _, i in out] == [
        ("shop.public.orders", {"id": 1}, "shop:1000:1"),
        ("shop.public.orders", {"id": 1}, "shop:2000:1"),
        ("shop.public.orders", {"id": 1}, "shop:2000:2"),
        ("shop.public.users", None, "shop:1000:2"),
    ]
    for _, _, value, _ in out:
        assert list(value) == DEBEZIUM_ENVELOPE
        assert set(value["source"]) == DEBEZIUM_SOURCE
        assert value["source"]["snapshot"] == "false" and value["ts_ms"] == TS_MS
        assert value["source"]["ts_ms"] == TS_MS  # the commit time
    created, updated, deleted = (v for _, _, v, _ in out[:3])
    assert (created["op"], created["before"], created["after"]) == ("c", None, {"id": 1, "total": "1.50",
                                                                             "note": 'say "hi"'})
    assert updated["after"]["note"] == "__debezium_unavailable_value"
    assert (deleted["op"], deleted["before"], deleted["after"]) == ("d", {"id": 1, "total": None, "note": None}, None)
    assert (created["source"]["txId"], created["source"]["lsn"], deleted["source"]["lsn"]) == (7, 900, 1901)


def test_tombstone_follows_each_delete_of_a_keyed_table() -> None:
    """With tombstones: a null-valued record with the delete's key and id + ':tombstone' right after it."""
    t = Transaction(9, 3000, TS)
    users = table(USERS, [("d", t, 2, 2, (b"ann",), None)])
    orders = table(ORDERS, [("d", t, 1, 1, (b"5", None, None), None)])
    out = messages(renderer(tombstones=True).render(ChangeBatch(Position(3000), [orders, users]), TS_MS))
    assert [(k, v is None, i) for _, k, v, i in out] == [
        ({"id": 5}, False, "shop:3000:1"),
        ({"id": 5}, True, "shop:3000:1:tombstone"),
        (None, False, "shop:3000:2"),  # no key, no tombstone (a compacted topic refuses null keys)
    ]


def test_key_change_becomes_delete_then_create() -> None:
    """An update that moves the primary key is a delete of the old key and a create of the new one."""
    t = Transaction(9, 3000, TS)
    orders = table(ORDERS, [
        ("u", t, 1, 10, (b"1", None, None), (b"2", b"3.00", b"x")),  # key 1 -> 2
        ("u", t, 2, 11, (b"2", b"3.00", b"x"), (b"2", b"4.00", b"x")),  # FULL image, same key
    ])
    out = messages(renderer(tombstones=True).render(ChangeBatch(Position(3000), [orders]), TS_MS))
    assert [(k, v and v["op"], v and v["before"], v and v["after"], i) for _, k, v, i in out] == [
        ({"id": 1}, "d", {"id": 1, "total": None, "note": None}, None, "shop:3000:1:delete"),
        ({"id": 1}, None, None, None, "shop:3000:1:delete:tombstone"),
        ({"id": 2}, "c", None, {"id": 2, "total": "3.00", "note": "x"}, "shop:3000:1"),
        ({"id": 2}, "u", {"id": 2, "total": "3.00", "note": "x"}, {"id": 2, "total": "4.00", "note": "x"},
         "shop:3000:2"),
    ]


def test_transaction_metadata_block_and_boundaries() -> None:
    """Debezium's transaction block per event; BEGIN before and END after, with exact counts."""
    out = messages(renderer(transaction_metadata=True).render(mixed(), TS_MS))
    topics = [t for t, *_ in out]
    assert topics[:2] == ["shop.transaction"] * 2 and topics[-2:] == ["shop.transaction"] * 2
    begin1, begin2, o1, o2, o3, u1, end1, end2 = out
    assert begin1[1:] == ({"id": "7:1000"}, {"status": "BEGIN", "id": "7:1000", "ts_ms": TS_MS, "event_count": None,
                                             "data_collections": None}, "shop:1000:0")
    assert begin2[3] == "shop:2000:0"
    assert end1[1:] == ({"id": "7:1000"}, {"status": "END", "id": "7:1000", "ts_ms": TS_MS, "event_count": 2,
                                           "data_collections": [{"data_collection": "public.orders", "event_count": 1},
                                                                {"data_collection": "public.users", "event_count": 1}]},
                        "shop:1000")
    assert end2[2]["event_count"] == 2 and end2[3] == "shop:2000"
    blocks = [m[2]["transaction"] for m in (o1, o2, o3, u1)]
    assert blocks == [
        {"id": "7:1000", "total_order": 1, "data_collection_order": 1},
        {"id": "8:2000", "total_order": 1, "data_collection_order": 1},
        {"id": "8:2000", "total_order": 2, "data_collection_order": 2},
        {"id": "7:1000", "total_order": 2, "data_collection_order": 1},
    ]
    assert list(o1[2]) == [*DEBEZIUM_ENVELOPE, "transaction"]


def test_transaction_split_over_chunks_begins_once_and_ends_once() -> None:
    """A transaction cut into two batches: BEGIN in the first, END in the last with the whole count."""
    r = renderer(transaction_metadata=True)
    t = Transaction(5, 4000, TS)
    first = ChangeBatch(Position(4000, 2), [table(ORDERS, [("c", t, s, s, None, (b"%d" % s, b"1", b"x"))
                                                           for s in (1, 2)])])
    second = ChangeBatch(Position(4000), [table(ORDERS, [("c", t, 3, 3, None, (b"3", b"1", b"x"))]),
                                          table(USERS, [("c", t, 4, 4, None, (b"bob",))])])
    out1, out2 = messages(r.render(first, TS_MS)), messages(r.render(second, TS_MS))
    assert [i for *_, i in out1] == ["shop:4000:0", "shop:4000:1", "shop:4000:2"]
    assert [i for *_, i in out2] == ["shop:4000:3", "shop:4000:4", "shop:4000"]
    assert out2[0][2]["transaction"]["data_collection_order"] == 3
    assert out2[-1][2]["event_count"] == 4
    assert out2[-1][2]["data_collections"] == [{"data_collection": "public.orders", "event_count": 3},
                                               {"data_collection": "public.users", "event_count": 1}]


TYPES = TableSchema(TableId("shop", "public", "types"), (
    Column("id", "int4", pg.INT4, key=True), Column("big", "int8", pg.INT8), Column("small", "int2", pg.INT2),
    Column("f4", "float4", pg.FLOAT4), Column("f8", "float8", pg.FLOAT8), Column("ok", "bool", pg.BOOL),
    Column("amount", "numeric", pg.NUMERIC, type_modifier=(12 << 16 | 2) + 4),
    Column("at", "timestamptz", pg.TIMESTAMPTZ), Column("day", "date", pg.DATE), Column("raw", "bytea", pg.BYTEA),
    Column("tags", "_int4", pg.INT4_ARRAY), Column("doc", "jsonb", pg.JSONB),
))


def test_schema_enabled_json_wraps_key_and_value_for_kafka_connect() -> None:
    """schemas: true gives {schema, payload} with Connect types matching what the JSON holds."""
    t = Transaction(1, 100, TS)
    row = (b"1", b"9000000000", b"-3", b"1.5", b"NaN", b"t", b"12.50", b"2026-01-02 03:04:05.5+00", b"2026-01-02",
           b"\\x00ff", b"{1,2}", b'{"a": 1}')
    batch = ChangeBatch(Position(100), [table(TYPES, [("c", t, 1, 1, None, row)])])
    plain = messages(renderer().render(batch, TS_MS))[0]
    topic, key, value, _ = messages(renderer(schemas=True).render(batch, TS_MS))[0]
    assert value["payload"] == plain[2] and key["payload"] == plain[1] == {"id": 1}
    schema = value["schema"]
    assert (schema["type"], schema["name"], schema["optional"]) == ("struct", f"{topic}.Envelope", False)
    assert [f["field"] for f in schema["fields"]] == DEBEZIUM_ENVELOPE
    before, after, source = schema["fields"][:3]
    assert before["name"] == after["name"] == f"{topic}.Value" and before["optional"]
    assert source["name"] == "io.debezium.connector.postgresql.Source"
    types = {f["field"]: {k: v for k, v in f.items() if k not in ("field", "optional")} for f in after["fields"]}
    assert types == {
        "id": {"type": "int32"}, "big": {"type": "int64"}, "small": {"type": "int16"}, "f4": {"type": "float"},
        "f8": {"type": "double"}, "ok": {"type": "boolean"}, "amount": {"type": "string"},
        "at": {"type": "string", "name": "io.debezium.time.ZonedTimestamp", "version": 1}, "day": {"type": "string"},
        "raw": {"type": "bytes"}, "tags": {"type": "array", "items": {"type": "int32", "optional": True}},
        "doc": {"type": "string"},
    }
    assert [f["optional"] for f in after["fields"]][:2] == [False, True]  # key columns are required
    assert base64.b64decode(value["payload"]["after"]["raw"]) == b"\x00\xff"  # bytes: base64, as JsonConverter
    assert key["schema"] == {"type": "struct", "fields": [{"type": "int32", "optional": False, "field": "id"}],
                             "optional": False, "name": f"{topic}.Key"}


def test_routing_templates_and_broker_safe_names() -> None:
    """Topics fill the template per table; names are made legal for Kafka and NATS, kept for Redis."""
    odd = TableId("shop", "my schema", "a.b*c")

    def route(safe: Any, template: str = "{prefix}.{schema}.{table}") -> Routing:
        return Routing(table_template=template, transaction_template="{prefix}.tx.{source}", prefix="p.x",
                       source="shop", database="db", safe=safe)

    assert route(kafka_name).topic(odd) == "p.x.my_schema.a.b_c"
    assert route(nats_token).topic(odd) == "p.x.my_schema.a_b_c"
    assert route(redis_name).topic(odd) == "p.x.my schema.a.b*c"
    assert route(kafka_name, "cdc-{database}-{table}").topic(ORDERS.table) == "cdc-db-orders"
    assert route(kafka_name).transaction_topic == "p.x.tx.shop"
    assert default_stream_name("shop.eu-1") == "shop_eu-1"


def yaml_job(sink: str) -> str:
    return ("jobs:\n  - name: shop\n    source: {type: postgres, dsn: 'host=x', slot: s, publication: p}\n"
            f"    sinks:\n      - {sink}\n")


@pytest.mark.parametrize(("sink", "message"), [
    ("{type: kafka, brokers: 'k:9092', options: {acks: '1'}}", "options may not set 'acks'"),
    ("{type: kafka, brokers: 'k:9092', options: {linger.ms: 5}}", "use linger_ms"),
    ("{type: kafka, brokers: 'k:9092', max_in_flight: 6}", "max_in_flight"),
    ("{type: nats, servers: 'nats://n:4222', topic: '{prefix}.{tabel}'}", "unknown placeholder(s) {tabel}"),
    ("{type: redis, url: 'redis://r', position_key: '{table}'}", "unknown placeholder(s) {table}"),
    ("{type: redis, url: 'redis://r', maxlen: 5}", "unknown key 'maxlen'"),
    ("{type: nats, servers: []}", "servers"),
])
def test_config_errors_name_the_key(sink: str, message: str) -> None:
    """Broker sink mistakes are one-line config errors naming the key."""
    with pytest.raises(ConfigError, match=r"^x\.yaml:5: ") as err:
        parse_config(yaml_job(sink), "x.yaml", {})
    assert message in str(err.value)


def test_config_defaults_and_secrets() -> None:
    """Defaults are as documented; librdkafka options are text and never shown."""
    sink = "{type: kafka, brokers: 'k:9092', options: {sasl.password: 98765, enable.ssl.x: true}}"
    cfg = parse_config(yaml_job(sink), "x.yaml", {}).jobs[0].sinks[0]
    assert isinstance(cfg, KafkaSinkConfig)
    assert (cfg.topic, cfg.transaction_topic, cfg.compression, cfg.max_in_flight, cfg.write_timeout_s) == (
        "{prefix}.{schema}.{table}", "{prefix}.transaction", "none", 5, 120.0)
    options = {k: v.get_secret_value() for k, v in cfg.options.items()}
    assert options == {"sasl.password": "98765", "enable.ssl.x": "true"}
    assert "98765" not in repr(cfg)
    nats = parse_config(yaml_job("{type: nats, servers: 'nats://a:4222, nats://b:4222'}"), "x.yaml", {})
    cfg_n = nats.jobs[0].sinks[0]
    assert isinstance(cfg_n, NatsSinkConfig) and cfg_n.servers == ["nats://a:4222", "nats://b:4222"]
    redis = parse_config(yaml_job("{type: redis, url: 'redis://:pw@r:6379/0'}"), "x.yaml", {})
    assert "pw" not in repr(redis)


def test_build_sink_dispatch_prefix_and_stored_position(tmp_path: Path) -> None:
    """build_sink makes each broker sink, prefixing topics with the job name, and Kafka/NATS read their
    position back from the job's checkpoint store."""
    store = FileCheckpointStore(tmp_path)
    store.save("shop", Checkpoint(Position(500), {"kafka": Position(500), "nats": Position(400)}))
    kafka = build_sink(KafkaSinkConfig(type="kafka", brokers="k:1"), "kafka", INFO, job="shop", checkpoints=store)
    nats = build_sink(NatsSinkConfig(type="nats", servers=["nats://n:1"], topic_prefix="eu.shop"), "nats", INFO,
                      job="shop", checkpoints=store)
    redis = build_sink(RedisSinkConfig(type="redis", url="redis://r:1"), "redis", INFO, job="shop", checkpoints=store)
    assert isinstance(kafka, KafkaSink) and isinstance(nats, NatsJetStreamSink) and isinstance(redis, RedisStreamsSink)
    assert kafka._stored() == Position(500) and nats._stored() == Position(400)
    assert nats.stream == "eu_shop"
    assert redis.position_key == "shop:cdc-position:redis"
    assert kafka._renderer.routing.topic(ORDERS.table) == "shop.public.orders"
    assert nats._renderer.routing.topic(ORDERS.table) == "eu.shop.public.orders"


def test_kafka_producer_is_idempotent_with_acks_all() -> None:
    """The producer config: idempotence, acks=all, bounded in-flight and queue, timeout from write_timeout_s."""
    cfg = KafkaSinkConfig(type="kafka", brokers="k:1", compression="zstd", max_in_flight=3, write_timeout_s=30,
                          max_queued_messages=5000)
    conf = KafkaSink("kafka", cfg, INFO, prefix="shop", stored=lambda: None).producer_config()
    assert {k: conf[k] for k in ("enable.idempotence", "acks", "max.in.flight.requests.per.connection",
                                 "compression.type", "message.timeout.ms", "queue.buffering.max.messages")} == {
        "enable.idempotence": True, "acks": "all", "max.in.flight.requests.per.connection": 3,
        "compression.type": "zstd", "message.timeout.ms": 30000, "queue.buffering.max.messages": 5000}


def test_batch_ts_and_commit_time() -> None:
    """source.ts_ms is the commit time in ms; the top-level ts_ms is when cdc wrote the event."""
    t = Transaction(1, 10, datetime(2026, 1, 2, 3, 4, 5, 999_999, tzinfo=UTC))
    batch = ChangeBatch(Position(10), [table(USERS, [("c", t, 1, 1, None, (b"x",))])])
    ((_, _, value, _),) = messages(renderer().render(batch, 42))
    assert (value["source"]["ts_ms"], value["ts_ms"]) == (1767323045999, 42)


def test_heartbeat_renders_nothing() -> None:
    """A heartbeat batch has no records (the sink only moves its position)."""
    changes: list[RowChange] = []
    assert renderer(transaction_metadata=True).render(ChangeBatch(Position(5), [table(USERS, changes)]), 1) == []
