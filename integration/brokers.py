"""Brokers for the event-log sink tests: servers, a Kafka mock cluster, consumers, a source workload.

- Servers: tests start a private ``nats-server -js`` / ``redis-server`` each
  (`cdc.sandbox.DisposableNats` / `DisposableRedis`), on a random loopback port with its
  own store directory, so a test may stop it (`halt`) and start it again (`resume`).
  Fixtures live in the test modules (one ``with`` each), not here: a module imported
  by tests cannot also be registered as a pytest plugin.
- `MockKafkaCluster`: no Kafka broker can be installed here, so the
  Kafka tests use librdkafka's built-in mock cluster (``test.mock.num.brokers``). It
  lives in a producer handle of the test process, listens on a loopback port and speaks
  the real Kafka protocol, so the daemon (a subprocess) reaches it like any cluster.
- Consumers written against the plain clients (not the sinks' code): they read
  everything a sink published, as `Message`s in each stream's (partition's) order.
- `rebuild`: the table state a Debezium consumer derives from the messages, dropping
  repeated event ids first; `source_rows` is the same table read from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from integration.conftest import PgDatabase
from integration.daemon import JobFiles, apply_envelope, job_config, write_config

Row = dict[str, Any]
Key = tuple[Any, ...]
UNAVAILABLE = "__debezium_unavailable_value"


class MockKafkaCluster:
    """librdkafka's mock cluster, hosted by a producer handle of this process."""

    def __init__(self, brokers: int = 1) -> None:
        # log_level 4: the mock's notice "Mock cluster enabled" is not a test failure.
        self._host = Producer({"test.mock.num.brokers": brokers, "log_level": 4, "client.id": "mock-host"})
        metadata = self._host.list_topics(timeout=10)
        self.bootstrap = ",".join(f"{b.host}:{b.port}" for b in metadata.brokers.values())

    def close(self) -> None:
        self._host.flush(0)
        del self._host


# -- messages as consumers see them -------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One published message: where it went, its key, value and headers (bytes)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes]

    @property
    def event_id(self) -> str:
        return self.headers["cdc-event-id"].decode()


def read_kafka(bootstrap: str, topics: Sequence[str], timeout: float = 20.0) -> list[Message]:
    """Every message of `topics` up to their current end, partition by partition in offset order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "cdc-test-reader", "enable.auto.commit": False,
                         "log_level": 4})
    try:
        metadata = consumer.list_topics(timeout=10)
        ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            for partition in sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                if high > low:
                    ends[(topic, partition)] = high
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
        read: dict[tuple[str, int], list[tuple[int, Message]]] = {tp: [] for tp in ends}
        done = {tp for tp, high in ends.items() if high == 0}
        deadline = time.monotonic() + timeout
        while len(done) < len(ends):
            assert time.monotonic() < deadline, f"could not read {sorted(set(ends) - done)} within {timeout:g}s"
            for m in consumer.consume(1000, 0.2):
                error = m.error()
                assert error is None, error
                tp = (m.topic() or "", m.partition() or 0)
                offset = m.offset() or 0
                headers = {k: v or b"" for k, v in m.headers() or []}
                read[tp].append((offset, Message(tp[0], m.key(), m.value(), headers)))
                if offset + 1 >= ends[tp]:
                    done.add(tp)
        return [m for tp in sorted(read) for _, m in sorted(read[tp], key=lambda x: x[0])]
    finally:
        consumer.close()


def kafka_topics(bootstrap: str) -> list[str]:
    """The topics the cluster knows."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "cdc-test-lister", "log_level": 4})
    try:
        return sorted(consumer.list_topics(timeout=10).topics)
    finally:
        consumer.close()


async def _read_nats(url: str, stream: str) -> list[Message]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(stream)).state.messages
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30)
        sub = await js.pull_subscribe(">", stream=stream, config=config)
        out: list[Message] = []
        while len(out) < total:
            for m in await sub.fetch(min(1000, total - len(out)), timeout=5):
                headers = {k: v.encode() for k, v in (m.headers or {}).items()}
                out.append(Message(m.subject, headers.get("cdc-key"), m.data or None, headers))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def read_nats(url: str, stream: str) -> list[Message]:
    """Every message of the JetStream `stream`, in stream order (an empty payload is a tombstone)."""
    return asyncio.run(_read_nats(url, stream))


def read_redis(url: str, pattern: str) -> list[Message]:
    """Every entry of the streams whose keys match `pattern`, stream by stream in entry order."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        out = []
        for stream in sorted(k for k in client.scan_iter(match=pattern) if client.type(k) == b"stream"):
            last = "-"
            while True:
                entries = client.xrange(stream, min=last, count=1000)
                for _, fields in entries:
                    out.append(Message(stream.decode(), fields.get(b"key"), fields.get(b"value"),
                                       {"cdc-event-id": fields[b"cdc-event-id"]}))
                if len(entries) < 1000:
                    break
                last = "(" + entries[-1][0].decode()
        return out
    finally:
        client.close()


def deduplicated(messages: Iterable[Message]) -> list[Message]:
    """`messages` without repeats: the first message of each event id wins."""
    seen: set[str] = set()
    out = []
    for m in messages:
        if m.event_id not in seen:
            seen.add(m.event_id)
            out.append(m)
    return out


def envelope(m: Message) -> dict[str, Any] | None:
    """The Debezium envelope of a message (unwrapping ``{schema, payload}``), None for a tombstone."""
    if not m.value:
        return None
    doc: dict[str, Any] = json.loads(m.value)
    return doc["payload"] if "payload" in doc and "schema" in doc else doc


def rebuild(messages: Iterable[Message], keys: Mapping[str, Sequence[str]] | None = None,
            default_key: Sequence[str] = ("id",)) -> dict[str, dict[Key, Row]]:
    """The table state a Debezium consumer derives: ``{"schema.table": {key: row}}``.

    Repeated event ids are dropped first; tombstones and transaction records are
    skipped; ``c``/``u``/``r`` store the after image (Debezium's unavailable placeholder
    keeps the stored value), ``d`` removes the row, ``t`` empties the table. Messages
    apply in the given order, which only has to keep each key's order.
    """
    keys = keys or {}
    state: dict[str, dict[Key, Row]] = {}
    for m in deduplicated(messages):
        env = envelope(m)
        if env is None or "status" in env:
            continue
        apply_envelope(state, env, keys, default_key)
    return state


# -- the source side -----------------------------------------------------------------------


def iso_utc(value: datetime) -> str:
    """A timestamptz as the events render it: ISO-8601 UTC with ``Z``, no trailing zeros."""
    text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def json_value(value: Any) -> Any:
    """A source value as the event JSON holds it."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return iso_utc(value)
    return value


def source_rows(pg: PgDatabase, table: str, key: str = "id") -> dict[Key, Row]:
    """``SELECT *`` of a source table as ``{(key,): {column: JSON value}}``."""
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table} ORDER BY {key}")  # noqa: S608 - test constants
        assert cur.description is not None
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, map(json_value, row), strict=True)) for row in cur.fetchall()]
    return {(row[key],): row for row in rows}


def broker_job(pg: PgDatabase, root: Path, sinks: list[dict[str, Any]], **options: Any) -> tuple[JobFiles, str]:
    """A one-job config (postgres source, `sinks`) written under `root`; returns its files and slot."""
    files = JobFiles(root)
    slot = pg.name("slot")
    document = job_config(files, dsn=pg.dsn, slot=slot, publication=pg.name("pub"), **options)
    document["jobs"][0]["sinks"] = sinks
    write_config(files, document)
    return files, slot


def checkpoint_of(files: JobFiles, sink: str) -> dict[str, int] | None:
    """The position the job's checkpoint records for `sink`, or None."""
    for path in files.checkpoints():
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        position: dict[str, int] | None = doc.get("sinks", {}).get(sink)
        return position
    return None


# -- a Debezium consumer we did not write: Apache Flink's debezium-json format ---------------

#: Runs Flink SQL statements (``;``-separated, from a file) in a local Flink and prints every
#: changelog row of the last query as a JSON array ``[kind, field...]``. The parsing of the
#: Debezium envelopes is Flink's own (flink-json's DebeziumJsonDeserializationSchema).
FLINK_SQL_RUNNER = r"""
import java.nio.file.*;
import java.util.*;
import org.apache.flink.table.api.*;
import org.apache.flink.types.Row;
import org.apache.flink.util.CloseableIterator;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;

public class FlinkSqlRunner {
  public static void main(String[] args) throws Exception {
    TableEnvironment env = TableEnvironment.create(EnvironmentSettings.inStreamingMode());
    env.getConfig().set("parallelism.default", "1");
    String[] statements = new String(Files.readAllBytes(Paths.get(args[0])), "UTF-8").split(";\n");
    ObjectMapper json = new ObjectMapper();
    for (int s = 0; s < statements.length; s++) {
      if (statements[s].isBlank()) continue;
      TableResult result = env.executeSql(statements[s]);
      if (s < statements.length - 1) continue;
      try (CloseableIterator<Row> rows = result.collect()) {
        while (rows.hasNext()) {
          Row row = rows.next();
          List<Object> out = new ArrayList<>();
          out.add(row.getKind().shortString());
          for (int i = 0; i < row.getArity(); i++) {
            Object v = row.getField(i);
            out.add(v instanceof java.math.BigDecimal ? ((java.math.BigDecimal) v).toPlainString() : v);
          }
          System.out.println(json.writeValueAsString(out));
        }
      }
    }
  }
}
"""


def flink_lib_dir() -> Path:
    """The jars of Apache Flink that the ``apache-flink-libraries`` package installs (pyflink/lib)."""
    import importlib.util

    spec = importlib.util.find_spec("pyflink")
    assert spec is not None and spec.submodule_search_locations, "apache-flink-libraries is not installed"
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    assert any(lib.glob("flink-json-*.jar")), f"no flink-json jar in {lib}"
    return lib


def run_flink_sql(statements: Sequence[str], work: Path, timeout: float = 120.0) -> list[list[Any]]:
    """Run `statements` in a local Flink (Java from PATH); the last one's changelog rows."""
    import shutil
    import subprocess

    java = shutil.which("java")
    assert java is not None, "java is not installed"
    work.mkdir(parents=True, exist_ok=True)
    runner = work / "FlinkSqlRunner.java"
    runner.write_text(FLINK_SQL_RUNNER, encoding="utf-8")
    script = work / "statements.sql"
    script.write_text(";\n".join(statements) + ";\n", encoding="utf-8")
    result = subprocess.run(
        [java, "-Xmx512m", "-cp", f"{flink_lib_dir()}/*", str(runner), str(script)],
        cwd=work, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"flink failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("[")]
