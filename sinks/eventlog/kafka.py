"""The Kafka event-log sink (confluent-kafka / librdkafka).

``{type: kafka, brokers: "host:9092", ...}``: every change becomes one record on
``<prefix>.<schema>.<table>`` (a template), keyed by its primary key as JSON, with the
Debezium envelope as the value and the event id in the ``cdc-event-id`` header (see
records.py for tombstones, transaction records and schema-enabled JSON).

The producer is idempotent with ``acks=all`` and at most ``max_in_flight`` (<= 5)
requests in flight per connection, so librdkafka's own retries neither lose, duplicate
nor reorder records within a partition, and a key always maps to the same partition.
`write` returns only after every delivery report of the batch came back successful.
While brokers are unreachable librdkafka keeps the records queued (at most
``max_queued_messages``: `produce` then waits, which stops the pipeline and so the
source) and retries them for ``write_timeout_s`` (``message.timeout.ms``); a record
that still fails fails the whole batch with `SinkWriteError`: the daemon restarts the
job, which replays the batch from the checkpoint. A record the cluster refuses for good
(too large, not authorised, no such topic) stops the job with `SinkError`.

Blocking librdkafka calls (`produce` when the queue is full, `flush`) run in a worker
thread, one batch at a time. The sink's position lives in the job's checkpoint store
(see broker.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Final

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from cdc.checkpoints import StoredPosition
from cdc.config import KafkaSinkConfig
from cdc.errors import SinkError, SinkWriteError
from cdc.events import ChangeBatch, Position
from cdc.sink import SourceInfo
from sinks.eventlog.broker import now_ms
from sinks.eventlog.records import RecordRenderer, Records
from sinks.eventlog.routing import Routing, kafka_name

log = structlog.get_logger(__name__)

EVENT_ID_HEADER: Final = "cdc-event-id"

#: Delivery errors that no retry can fix: the job stops with the error's message.
_PERMANENT: Final = {
    KafkaError.MSG_SIZE_TOO_LARGE: "a record is larger than the topic's max.message.bytes",
    KafkaError.RECORD_LIST_TOO_LARGE: "a record batch is larger than the broker accepts; lower batch_bytes",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "not authorised to write to the topic",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "not authorised for idempotent writes (IDEMPOTENT_WRITE on the cluster)",
    KafkaError.UNKNOWN_TOPIC_OR_PART: "the topic does not exist: create it or enable auto.create.topics.enable",
    KafkaError._UNKNOWN_TOPIC: "the topic does not exist: create it or enable auto.create.topics.enable",
    KafkaError.TOPIC_EXCEPTION: "the topic name is not valid for this cluster",
}
#: librdkafka's syslog levels; what it reports it also retries, so nothing is above a warning here.
_LEVELS: Final = {0: "warning", 1: "warning", 2: "warning", 3: "warning", 4: "warning", 5: "info", 6: "info",
                  7: "debug"}
#: The same client log line (numbers aside) is logged at most once per this many seconds.
_LOG_EVERY_S: Final = 30.0
_NUMBERS: Final = re.compile(r"\d+")


class _ClientLog:
    """librdkafka's log lines as structured events (its default is raw text on stderr).

    A broker that is down makes librdkafka log a failed connect per retry: the same line
    (numbers aside) is logged once per `_LOG_EVERY_S`, with how many were left out.
    """

    def __init__(self, bound: structlog.typing.FilteringBoundLogger) -> None:
        self._log = bound
        self._last: dict[str, tuple[float, int]] = {}

    def log(self, level: int, fmt: str, *args: Any) -> None:
        message = fmt % args if args else fmt
        shape = _NUMBERS.sub("#", message)
        now = time.monotonic()
        last, skipped = self._last.get(shape, (-_LOG_EVERY_S, 0))
        if now - last < _LOG_EVERY_S:
            self._last[shape] = (last, skipped + 1)
            return
        if len(self._last) > 1000:
            self._last.clear()
        self._last[shape] = (now, 0)
        if level >= logging.DEBUG:  # confluent-kafka maps syslog levels to logging's
            name = "debug" if level < logging.INFO else "info" if level < logging.WARNING else "warning"
        else:
            name = _LEVELS.get(level, "info")
        getattr(self._log, name)("kafka_client_log", message=message, repeated=skipped)


class _Deliveries:
    """Delivery reports of one batch, counted by librdkafka's callback."""

    __slots__ = ("failed", "first_error", "pending")

    def __init__(self, pending: int) -> None:
        self.pending = pending
        self.failed = 0
        self.first_error: KafkaError | None = None

    def report(self, err: KafkaError | None, msg: Message[Any, Any]) -> None:
        self.pending -= 1
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = err


class KafkaSink:
    """``{type: kafka}``: see the module docstring."""

    def __init__(self, name: str, config: KafkaSinkConfig, source: SourceInfo, *, prefix: str,
                 stored: StoredPosition) -> None:
        self.name = name
        self._config = config
        self._stored = stored
        self._log = log.bind(sink=name)
        routing = Routing(
            table_template=config.topic, transaction_template=config.transaction_topic, prefix=prefix,
            source=source.name, database=source.database, safe=kafka_name,
        )
        self._renderer = RecordRenderer(
            source, routing, tombstones=config.tombstones, transaction_metadata=config.transaction_metadata,
            schemas=config.schemas,
        )
        self._client_id = config.client_id or f"cdc-{source.name}-{name}"
        self._producer: Producer | None = None
        self._position: Position | None = None

    def position(self) -> Position | None:
        return self._position

    def producer_config(self) -> dict[str, Any]:
        """The librdkafka configuration of the producer (secrets included: never log it)."""
        c = self._config
        conf: dict[str, Any] = {key: value.get_secret_value() for key, value in c.options.items()}
        conf.update({
            "bootstrap.servers": c.brokers,
            "client.id": self._client_id,
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": c.max_in_flight,
            "compression.type": c.compression,
            "linger.ms": c.linger_ms,
            "batch.size": int(c.batch_bytes),
            "queue.buffering.max.messages": c.max_queued_messages,
            "message.timeout.ms": int(c.write_timeout_s * 1000),
            "socket.connection.setup.timeout.ms": int(c.connect_timeout_s * 1000),
            "logger": _ClientLog(self._log),
        })
        return conf

    async def open(self) -> None:
        """Load the position from the checkpoint store; create the producer and reach the cluster."""
        self._position = self._stored()
        self._producer = await asyncio.to_thread(self._connect)

    def _connect(self) -> Producer:
        try:
            producer = Producer(self.producer_config())
        except KafkaException as err:
            raise SinkError(f"kafka sink {self.name}: invalid producer configuration: {err}") from err
        try:
            producer.list_topics(timeout=self._config.connect_timeout_s)
        except KafkaException as err:
            producer.purge()
            raise SinkWriteError(
                f"kafka sink {self.name}: cannot reach brokers {self._config.brokers} "
                f"within {self._config.connect_timeout_s:g}s: {err.args[0] if err.args else err}"
            ) from err
        return producer

    async def write(self, batch: ChangeBatch) -> None:
        """Return once every record of the batch was acknowledged by all in-sync replicas."""
        held = self._position
        if held is not None and batch.position <= held:
            return
        records = self._renderer.render(batch.after(held), now_ms())
        if records:
            await asyncio.to_thread(self._deliver, records)
        self._position = batch.position

    def _deliver(self, records: list[Records]) -> None:
        producer = self._producer
        if producer is None:
            raise SinkWriteError(f"kafka sink {self.name}: write before open")
        deliveries = _Deliveries(sum(len(r) for r in records))
        report = deliveries.report
        produce = producer.produce
        poll = producer.poll
        deadline = time.monotonic() + self._config.write_timeout_s + 30
        try:
            for r in records:
                topic = r.topic
                for key, value, event_id in zip(r.keys, r.values, r.ids, strict=True):
                    while True:
                        try:
                            produce(topic, value, key, on_delivery=report, headers=[(EVENT_ID_HEADER, event_id)])
                            break
                        except BufferError:
                            # The local queue is full (brokers slow or down): serve reports, wait.
                            poll(0.05)
                            self._check_deadline(deadline, deliveries)
                poll(0)
            while deliveries.pending > 0:
                producer.flush(0.5)
                self._check_deadline(deadline, deliveries)
        except KafkaException as err:
            error = err.args[0] if err.args and isinstance(err.args[0], KafkaError) else None
            reason = _PERMANENT.get(error.code()) if error is not None else None
            if reason is not None:
                raise SinkError(f"kafka sink {self.name}: {reason} ({error.str() if error else err})") from err
            raise SinkWriteError(f"kafka sink {self.name}: cannot produce: {err}") from err
        if deliveries.failed:
            error = deliveries.first_error
            assert error is not None
            reason = _PERMANENT.get(error.code())
            where = f"kafka sink {self.name}: {deliveries.failed} record(s) of the batch failed"
            if reason is not None or error.fatal():
                raise SinkError(f"{where}: {reason or 'fatal producer error'} ({error.str()})")
            raise SinkWriteError(f"{where}: {error.str()}")

    def _check_deadline(self, deadline: float, deliveries: _Deliveries) -> None:
        if time.monotonic() > deadline:
            raise SinkWriteError(
                f"kafka sink {self.name}: {deliveries.pending} delivery report(s) still missing after "
                f"{self._config.write_timeout_s:g}s"
            )

    async def close(self) -> None:
        """Drop what was not delivered (the batch was not acknowledged: it is replayed)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(_discard, producer)


def _discard(producer: Producer) -> None:
    producer.purge(in_queue=True, in_flight=True, blocking=False)
    producer.flush(0)
