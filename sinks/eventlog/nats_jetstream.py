"""The NATS JetStream event-log sink (nats-py).

``{type: nats, servers: [...], ...}``: every change is published to the subject
``<prefix>.<schema>.<table>`` (a template) with the Debezium envelope as payload and
headers ``Nats-Msg-Id`` and ``cdc-event-id`` (the event id) and ``cdc-key`` (the primary
key as JSON; absent for tables without one). Tombstones have an empty payload.

**Stream.** At `open` the stream (``stream``, by default the prefix with dots as
underscores) is created when missing with subjects ``<prefix>.>``, file storage and
the configured duplicate window, or, with ``create_stream: false``, must exist.

**Pipelined publishing.** Awaiting each acknowledgement caps a client near 5k msg/s;
the sink keeps up to ``max_pending_acks`` publishes in flight (replies to its own inbox,
one subscription) and returns from `write` once every message of the batch was
acknowledged as stored (or as a duplicate). It writes the HPUB frames into nats-py's
outgoing buffer itself (``_send_command``/``_flush_pending``, stable across nats-py 2.x):
building headers through `publish` costs more than rendering the events.

**No loss, no reordering, across reconnects.** A message lost on a broken connection
while later ones reach the server (nats-py resends its buffer after a reconnect) would
put events out of order. So every message after the first of an attempt carries
``Nats-Expected-Last-Msg-Id: <previous event id>``: the server stores it only right
after its predecessor, and rejects the rest of the attempt after a gap. What was
stored is therefore always a prefix of the attempt; the next attempt starts at the
first unacknowledged message, and the server drops those it already holds by
``Nats-Msg-Id`` (checked before the expectation). The stream's subjects must belong to
this sink alone: another publisher between two of its messages breaks the chain (the
sink then retries from that message, one message per attempt).

While the server is unreachable the sink retries with backoff for up to
``write_timeout_s`` without progress (broker.py). Its position lives in the job's
checkpoint store; a replay after a crash is dropped by the server within the
duplicate window and by consumers by event id after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig

from cdc.checkpoints import StoredPosition
from cdc.config import NatsSinkConfig
from cdc.errors import SinkError, SinkWriteError
from cdc.events import ChangeBatch, Position
from cdc.sink import SourceInfo
from sinks.eventlog.broker import RetryClock, now_ms
from sinks.eventlog.records import RecordRenderer, Records
from sinks.eventlog.routing import Routing, nats_token

log = structlog.get_logger(__name__)

MSG_ID: Final = "Nats-Msg-Id"
EXPECTED_LAST_MSG_ID: Final = "Nats-Expected-Last-Msg-Id"
EVENT_ID_HEADER: Final = "cdc-event-id"
KEY_HEADER: Final = "cdc-key"
#: Header lines of a message, written as NATS's wire format (HPUB).
_HEAD: Final = b"NATS/1.0\r\n" + MSG_ID.encode() + b": %s\r\n" + EVENT_ID_HEADER.encode() + b": %s\r\n"
_KEY: Final = KEY_HEADER.encode() + b": %s\r\n"
_EXPECT: Final = EXPECTED_LAST_MSG_ID.encode() + b": %s\r\n"
_STREAM_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
#: A publishable subject: dot-separated non-empty tokens without wildcards or whitespace.
_SUBJECT: Final = re.compile(r"[^\s.*>]+(\.[^\s.*>]+)*")


def default_stream_name(prefix: str) -> str:
    """The stream of a prefix when ``stream`` is not set: ``shop.eu`` -> ``shop_eu``."""
    return _STREAM_UNSAFE.sub("_", prefix)


class _Flight:
    """Acknowledgements of the batch being published, over all its attempts."""

    __slots__ = ("acked", "attempt", "batch", "changed", "error", "replies")

    def __init__(self, batch: int, size: int) -> None:
        self.batch = batch
        self.attempt = 0
        self.acked = bytearray(size)
        self.replies = 0  # acknowledgements and errors of the current attempt
        self.error: str | None = None  # the current attempt's first error
        self.changed = asyncio.Event()

    def next_attempt(self) -> int:
        """Start a new attempt: its replies and error count from zero."""
        self.attempt += 1
        self.replies = 0
        self.error = None
        return self.attempt

    async def wait(self, timeout: float) -> bool:
        """Wait for the next reply; False when none came within `timeout` seconds."""
        self.changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.changed.wait()
        except TimeoutError:
            return False
        return True


class NatsJetStreamSink:
    """``{type: nats}``: see the module docstring."""

    def __init__(self, name: str, config: NatsSinkConfig, source: SourceInfo, *, prefix: str,
                 stored: StoredPosition) -> None:
        self.name = name
        self._config = config
        self._stored = stored
        self._prefix = prefix
        self._log = log.bind(sink=name)
        self.stream = config.stream or default_stream_name(prefix)
        routing = Routing(
            table_template=config.topic, transaction_template=config.transaction_topic, prefix=prefix,
            source=source.name, database=source.database, safe=nats_token,
        )
        self._renderer = RecordRenderer(
            source, routing, tombstones=config.tombstones, transaction_metadata=config.transaction_metadata,
            schemas=config.schemas,
        )
        self._nc: Client | None = None
        self._connected = asyncio.Event()
        self._inbox = ""
        self._flight: _Flight | None = None
        self._batches = 0
        self._subjects: dict[str, bytes] = {}
        self._closing = False
        self._error_logged = False
        self._position: Position | None = None

    def position(self) -> Position | None:
        return self._position

    # -- open / close ----------------------------------------------------------------------

    async def open(self) -> None:
        """Load the position from the checkpoint store, connect, and make sure the stream exists."""
        self._position = self._stored()
        c = self._config
        servers = ", ".join(c.servers)
        options: dict[str, Any] = {
            "name": f"cdc {self.name}",
            "connect_timeout": c.connect_timeout_s,
            "reconnect_time_wait": max(0.1, c.retry_backoff_s),
            "max_reconnect_attempts": -1,
            "allow_reconnect": True,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if c.user is not None:
            options["user"] = c.user
        if c.password is not None:
            options["password"] = c.password.get_secret_value()
        if c.token is not None:
            options["token"] = c.token.get_secret_value()
        if c.creds_file is not None:
            options["user_credentials"] = str(c.creds_file)
        try:
            self._nc = await nats.connect(c.servers, **options)
        except (nats.errors.Error, OSError, TimeoutError) as err:
            raise SinkWriteError(f"nats sink {self.name}: cannot connect to {servers}: {err or type(err).__name__}") \
                from err
        self._connected.set()
        try:
            await self._ensure_stream()
            self._inbox = self._nc.new_inbox()
            await self._nc.subscribe(self._inbox + ".>", cb=self._on_ack)
        except BaseException:
            await self.close()
            raise

    async def _ensure_stream(self) -> None:
        assert self._nc is not None
        c = self._config
        js = self._nc.jetstream(timeout=c.connect_timeout_s)
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            if not c.create_stream:
                raise SinkError(
                    f"nats sink {self.name}: stream {self.stream} does not exist; create it "
                    f"(subjects {self._prefix}.>) or set create_stream: true"
                ) from None
            storage = StorageType.FILE if c.storage == "file" else StorageType.MEMORY
            try:
                await js.add_stream(StreamConfig(
                    name=self.stream, subjects=[f"{self._prefix}.>"], storage=storage, num_replicas=c.replicas,
                    duplicate_window=c.duplicate_window_s,
                ))
            except nats.js.errors.APIError as err:
                raise SinkError(f"nats sink {self.name}: cannot create stream {self.stream}: {err}") from err
            self._log.info("nats_stream_created", stream=self.stream, subjects=[f"{self._prefix}.>"],
                           storage=c.storage)
            return
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as err:
            raise SinkError(f"nats sink {self.name}: JetStream is not enabled on the server ({err})") from err
        except (nats.errors.Error, TimeoutError) as err:
            raise SinkWriteError(f"nats sink {self.name}: cannot read stream {self.stream}: {err}") from err
        window = (info.config.duplicate_window or 0) / 1e9 if info.config.duplicate_window else 0.0
        self._log.info("nats_stream_found", stream=self.stream, subjects=info.config.subjects,
                       duplicate_window_s=window)

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        self._flight = None
        self._closing = True
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await nc.close()

    # -- client callbacks ------------------------------------------------------------------

    async def _on_error(self, err: Exception) -> None:
        # Once per disconnection: reconnect attempts fail every retry_backoff_s meanwhile.
        level = "debug" if self._error_logged else "warning"
        self._error_logged = not self._connected.is_set()
        getattr(self._log, level)("nats_client_error", error=str(err) or type(err).__name__)

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        if not self._closing:
            self._log.warning("nats_disconnected")

    async def _on_reconnected(self) -> None:
        self._connected.set()
        self._error_logged = False
        self._log.info("nats_reconnected")

    async def _on_ack(self, msg: Msg) -> None:
        """A reply to ``<inbox>.<batch>.<attempt>.<index>``: a PubAck, an error, or 503."""
        flight = self._flight
        if flight is None:
            return
        batch, attempt, index = msg.subject[len(self._inbox) + 1:].split(".")
        if int(batch) != flight.batch:
            return
        i = int(index)
        data = msg.data
        error: str | None = None
        if msg.headers and msg.headers.get("Status") == "503":
            error = f"no stream takes subject of message {i} (503 no responders)"
        elif b'"error"' in data:
            try:
                error = str(orjson.loads(data)["error"].get("description", data.decode()))
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
                error = data.decode(errors="replace")
        else:
            flight.acked[i] = 1
        if int(attempt) == flight.attempt:
            flight.replies += 1
            if error is not None and flight.error is None:
                flight.error = error
            flight.changed.set()

    # -- writing ---------------------------------------------------------------------------

    async def write(self, batch: ChangeBatch) -> None:
        """Return once JetStream acknowledged every message of the batch as stored."""
        held = self._position
        if held is not None and batch.position <= held:
            return
        records = self._renderer.render(batch.after(held), now_ms())
        if records:
            await self._publish(records)
        self._position = batch.position

    async def _publish(self, records: list[Records]) -> None:
        subjects: list[bytes] = []
        for r in records:
            subjects.extend([self._subject(r.topic)] * len(r))
        keys = [k for r in records for k in r.keys]
        values = [v for r in records for v in r.values]
        ids = [i for r in records for i in r.ids]
        self._batches += 1
        flight = self._flight = _Flight(self._batches, len(ids))
        c = self._config
        clock = RetryClock(f"nats sink {self.name}", self._log, initial_s=c.retry_backoff_s,
                           max_s=c.retry_max_backoff_s, timeout_s=c.write_timeout_s)
        start = 0
        try:
            while True:
                reason = await self._attempt(flight, start, subjects, keys, values, ids)
                first = flight.acked.find(0, start)
                if first < 0:
                    clock.recovered()
                    return
                if first > start:
                    clock.progress()
                start = first
                await clock.failed(reason or f"message {first} of {len(ids)} not acknowledged")
                await self._wait_connected(clock)
        finally:
            self._flight = None

    def _subject(self, topic: str) -> bytes:
        """`topic` as a subject, checked once (a template may hold characters NATS refuses)."""
        subject = self._subjects.get(topic)
        if subject is None:
            if not _SUBJECT.fullmatch(topic):
                raise SinkError(f"nats sink {self.name}: {topic!r} is not a valid NATS subject; check topic templates")
            subject = self._subjects[topic] = topic.encode()
        return subject

    async def _attempt(self, flight: _Flight, start: int, subjects: list[bytes], keys: list[bytes | None],
                       values: list[bytes | None], ids: list[bytes]) -> str | None:
        """Publish from `start` on within the ack window; return why it stopped short, if it did.

        Messages are written as HPUB frames into the client's outgoing buffer directly
        (nats-py's `publish` builds headers from a dict per message: most of its cost),
        and the buffer is flushed before each wait for acknowledgements.
        """
        nc = self._nc
        if nc is None:
            raise SinkWriteError(f"nats sink {self.name}: write before open")
        attempt = flight.next_attempt()
        window = self._config.max_pending_acks
        low_water = window // 2
        timeout = self._config.ack_timeout_s
        reply_prefix = b"%s.%d.%d." % (self._inbox.encode(), flight.batch, attempt)
        max_payload = nc.max_payload
        send = nc._send_command
        sent = 0
        previous = b""
        try:
            for i in range(start, len(ids)):
                if flight.error is not None:
                    return flight.error  # the chain rejects everything after a failed message
                if not nc.is_connected:
                    return "disconnected"  # nothing more into the client's buffer until it reconnects
                if sent - flight.replies >= window:
                    await nc._flush_pending()
                    while sent - flight.replies > low_water:
                        if not await flight.wait(timeout):
                            return f"no acknowledgement within {timeout:g}s"
                event_id = ids[i]
                key = keys[i]
                headers = _HEAD % (event_id, event_id)
                if key is not None:
                    headers += _KEY % key
                if previous:
                    headers += _EXPECT % previous
                headers += b"\r\n"
                payload = values[i] or b""
                if len(payload) > max_payload:
                    raise nats.errors.MaxPayloadError
                await send(b"HPUB %s %s%d %d %d\r\n%s%s\r\n" % (
                    subjects[i], reply_prefix, i, len(headers), len(headers) + len(payload), headers, payload))
                previous = event_id
                sent += 1
            await nc._flush_pending()
            while flight.replies < sent:
                if not await flight.wait(timeout):
                    return f"no acknowledgement within {timeout:g}s"
        except nats.errors.MaxPayloadError as err:
            raise SinkError(
                f"nats sink {self.name}: an event is larger than the server's max_payload ({max_payload} bytes)"
            ) from err
        except nats.errors.Error as err:
            return f"{type(err).__name__}: {err}"
        return flight.error

    async def _wait_connected(self, clock: RetryClock) -> None:
        if not self._connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(clock.remaining_s):
                    await self._connected.wait()
