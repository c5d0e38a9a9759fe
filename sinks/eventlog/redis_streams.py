"""The Redis Streams event-log sink (redis-py, asyncio, hiredis parser when installed).

``{type: redis, url: "redis://host:6379/0", ...}``: every change is one entry
(``XADD <stream> [MAXLEN ~ max_len] *``) on the stream key ``<prefix>.<schema>.<table>``
(a template) with the fields

- ``cdc-event-id``: the event id (always present),
- ``key``: the primary key as JSON (absent for tables without one),
- ``value``: the Debezium envelope (absent in a tombstone).

**Exactly once in Redis.** A batch is one MULTI/EXEC: every XADD plus a ``SET`` of the
sink's position key (``position_key``), so Redis holds the entries of a batch and the
position that covers them, or neither. `open` reads the position back and `write`
skips what it covers, so a replay after a crash (or after a connection lost while EXEC
was in flight: the sink reads the position again before retrying) writes nothing
twice. Redis applies a transaction without rolling back a failed command, so stream
keys are checked once per session to be streams (or absent) before the first write,
and a transaction that still reports an error has its position put back and stops
the job.

Durability is Redis's own: use ``appendonly yes`` with ``appendfsync always`` for an
acknowledged batch to survive a Redis crash (the sink warns at `open` when the server
says otherwise). While Redis is unreachable the sink retries with backoff for up to
``write_timeout_s`` (broker.py).

The transaction is written in the Redis protocol directly (one ``%``-format per entry)
on a connection of redis-py's pool and its replies read back one by one: redis-py's
per-command packing and per-read timeouts would otherwise cost more than rendering the
events. One ``write_timeout_s`` bounds each attempt instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cdc.config import RedisSinkConfig
from cdc.errors import CheckpointError, SinkError, SinkWriteError
from cdc.events import ChangeBatch, Position
from cdc.sink import SourceInfo
from sinks.eventlog.broker import RetryClock, now_ms
from sinks.eventlog.records import RecordRenderer, Records
from sinks.eventlog.routing import Routing, redis_name

log = structlog.get_logger(__name__)

EVENT_ID_FIELD: Final = b"cdc-event-id"
KEY_FIELD: Final = b"key"
VALUE_FIELD: Final = b"value"
_TRANSIENT: Final = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisStreamsSink:
    """``{type: redis}``: see the module docstring."""

    def __init__(self, name: str, config: RedisSinkConfig, source: SourceInfo, *, prefix: str) -> None:
        self.name = name
        self._config = config
        self._log = log.bind(sink=name)
        routing = Routing(
            table_template=config.topic, transaction_template=config.transaction_topic, prefix=prefix,
            source=source.name, database=source.database, safe=redis_name,
        )
        self._renderer = RecordRenderer(
            source, routing, tombstones=config.tombstones, transaction_metadata=config.transaction_metadata,
            schemas=config.schemas,
        )
        self.position_key = config.position_key.format(prefix=prefix, source=source.name, sink=name)
        self._redis: Redis | None = None
        self._checked: set[str] = set()
        self._position: Position | None = None

    def position(self) -> Position | None:
        return self._position

    async def open(self) -> None:
        """Connect, read the position key, and warn when Redis would lose acknowledged writes."""
        c = self._config
        self._redis = Redis.from_url(
            c.url.get_secret_value(), socket_connect_timeout=c.connect_timeout_s, retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        try:
            self._position = await self._read_position()
            await self._check_durability()
        except BaseException as err:
            await self.close()
            if isinstance(err, _TRANSIENT):
                raise SinkWriteError(f"redis sink {self.name}: cannot connect: {err}") from err
            if isinstance(err, ResponseError):
                raise SinkError(f"redis sink {self.name}: {err}") from err
            raise

    async def _read_position(self) -> Position | None:
        assert self._redis is not None
        data = await self._redis.get(self.position_key)
        if data is None:
            return None
        try:
            return Position.from_json(orjson.loads(data))
        except (orjson.JSONDecodeError, CheckpointError) as err:
            raise SinkError(
                f"redis sink {self.name}: key {self.position_key} does not hold a position ({data[:80]!r}); "
                "delete it to start over or choose another position_key"
            ) from err

    async def _check_durability(self) -> None:
        assert self._redis is not None
        try:
            appendonly = await self._redis.config_get("appendonly")
            appendfsync = await self._redis.config_get("appendfsync")
        except ResponseError:
            return  # CONFIG is disabled (managed services): nothing to check
        aof, fsync = appendonly.get("appendonly"), appendfsync.get("appendfsync")
        if aof != "yes" or fsync != "always":
            self._log.warning(
                "redis_not_durable", appendonly=aof, appendfsync=fsync,
                hint="acknowledged batches survive a Redis crash only with appendonly yes and appendfsync always",
            )

    async def close(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await client.aclose()

    async def write(self, batch: ChangeBatch) -> None:
        """Return once Redis executed the batch's XADDs and position update as one transaction."""
        held = self._position
        if held is not None and batch.position <= held:
            return
        records = self._renderer.render(batch.after(held), now_ms())
        c = self._config
        clock = RetryClock(f"redis sink {self.name}", self._log, initial_s=c.retry_backoff_s,
                           max_s=c.retry_max_backoff_s, timeout_s=c.write_timeout_s)
        while True:
            try:
                if clock.attempts:
                    # The last EXEC may have been applied before the connection broke.
                    stored = await self._read_position()
                    if stored is not None and stored >= batch.position:
                        break
                async with asyncio.timeout(c.write_timeout_s):
                    await self._check_streams(records)
                    await self._execute(records, batch.position, held)
                break
            except TimeoutError as err:
                await clock.failed(f"no reply within {c.write_timeout_s:g}s ({err})")
            except _TRANSIENT as err:
                await clock.failed(f"{type(err).__name__}: {err}")
            except ResponseError as err:
                if "WRONGTYPE" in str(err) or "NOPERM" in str(err):
                    raise SinkError(f"redis sink {self.name}: {err}") from err
                await clock.failed(f"{type(err).__name__}: {err}")  # OOM, MISCONF, LOADING, READONLY: may heal
        clock.recovered()
        self._position = batch.position

    async def _check_streams(self, records: list[Records]) -> None:
        """Refuse stream keys that hold something else (Redis would not roll the batch back)."""
        assert self._redis is not None
        for r in records:
            if r.topic in self._checked:
                continue
            kind = await self._redis.type(r.topic)
            if kind not in (b"none", b"stream"):
                raise SinkError(
                    f"redis sink {self.name}: key {r.topic} is a {kind.decode()}, not a stream; "
                    "rename it or change the sink's topic template"
                )
            self._checked.add(r.topic)

    async def _execute(self, records: list[Records], position: Position, held: Position | None) -> None:
        """MULTI, an XADD per record, SET position, EXEC; raise unless every command succeeded."""
        assert self._redis is not None
        commands = [_MULTI]
        append = commands.append
        trim = _bulks(("MAXLEN", "~", str(self._config.max_len))) if self._config.max_len else b""
        trim_args = 3 if self._config.max_len else 0
        for r in records:
            head = _XADD + _bulk(r.topic.encode()) + trim + _STAR
            full = b"*%d\r\n" % (9 + trim_args) + head  # event id, key and value
            for key, value, event_id in zip(r.keys, r.values, r.ids, strict=True):
                if key is not None and value is not None:
                    append(b"%s%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n" % (
                        full, _EVENT_ID, len(event_id), event_id, _KEY, len(key), key, _VALUE, len(value), value))
                else:
                    fields = [_EVENT_ID, _bulk(event_id)]
                    if key is not None:
                        fields += (_KEY, _bulk(key))
                    if value is not None:
                        fields += (_VALUE, _bulk(value))
                    append(b"*%d\r\n" % (3 + trim_args + len(fields)) + head + b"".join(fields))
        append(b"*3\r\n$3\r\nSET\r\n" + _bulk(self.position_key.encode()) + _bulk(orjson.dumps(position.to_json())))
        append(_EXEC)
        pool = self._redis.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(commands, check_health=False)
            # MULTI's +OK, a +QUEUED per command, then EXEC's array. A refused command
            # raises here (EXECABORT: nothing was applied) and the connection is dropped.
            for _ in range(len(commands) - 1):
                await conn.read_response(disable_decoding=True)
            results = await conn.read_response(disable_decoding=True)
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
        failed = [r for r in results if isinstance(r, Exception)] if isinstance(results, list) else [results]
        if failed:
            # EXEC ran the other commands (Redis does not roll back): restore the old position.
            with contextlib.suppress(RedisError, OSError):
                if held is None:
                    await self._redis.delete(self.position_key)
                else:
                    await self._redis.set(self.position_key, orjson.dumps(held.to_json()))
            raise SinkError(f"redis sink {self.name}: {len(failed)} command(s) of the batch failed: {failed[0]}")


def _bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _bulks(args: tuple[str, ...]) -> bytes:
    return b"".join(_bulk(a.encode()) for a in args)


_MULTI: Final = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC: Final = b"*1\r\n$4\r\nEXEC\r\n"
_XADD: Final = b"$4\r\nXADD\r\n"
_STAR: Final = b"$1\r\n*\r\n"
_EVENT_ID: Final = _bulk(EVENT_ID_FIELD)
_KEY: Final = _bulk(KEY_FIELD)
_VALUE: Final = _bulk(VALUE_FIELD)
