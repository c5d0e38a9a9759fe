"""The PostgreSQL source: pgoutput logical replication into `ChangeBatch`es.

Start-up (`start`) checks the server and creates the publication and slot on an
ordinary connection; streaming (`batches`) reads frames from a `ReplicationStream`,
decodes control messages one by one with the pure decoder, and appends row changes
straight into per-table buffers of the open batch (the hot path: no per-row objects
beyond one tuple). Batches are cut at commits by the `BatchPolicy`; a transaction
larger than the policy is cut into chunks whose positions name the last event in them.

Positions: ``Position(commit_lsn, seq)``. Acknowledging a whole transaction sends its
commit LSN as the flush LSN, so after a restart the server resends that transaction and
sinks skip it; acknowledging a chunk sends ``commit_lsn - 1`` (everything before the
transaction is durable). Keepalives move an idle job forward through heartbeat batches.

Protocol 2 (PostgreSQL 14+, ``streaming: true``): a transaction the server streams before
it commits goes to a disk spool (connectors/postgres/spool.py) and is emitted at its
Stream Commit like any other, so memory does not grow with transaction size.
Logical messages (``pg_logical_emit_message``) whose prefix the job selects become
``op=m`` events of the pseudo-table ``pg_logical_message.<prefix>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

from cdc.config import PostgresSourceConfig, TablesConfig
from cdc.errors import (
    DecodeError,
    SlotInvalidatedError,
    SourceSetupError,
    SourceUnreachableError,
    first_line,
)
from cdc.events import (
    ChangeBatch,
    Column,
    Position,
    RawRow,
    RowChange,
    TableChanges,
    TableId,
    TableSchema,
    Transaction,
)
from cdc.sink import SourceInfo
from cdc.source import BatchPolicy
from connectors.postgres import catalog
from connectors.postgres import types as pgtypes
from connectors.postgres.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    MessageType,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleReader,
    Update,
    decode_message,
    format_lsn,
    pg_timestamp_to_datetime,
    tuple_reader,
)
from connectors.postgres.spool import TransactionSpool
from connectors.postgres.stream import ReplicationStream
from connectors.postgres.types import PgRowCodec

log = structlog.get_logger(__name__)

_XLOG_DATA = ord("w")
_KEEPALIVE = ord("k")
_HEADER = 25  # 'w' + wal_start + wal_end + send_time
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_INSERT = MessageType.INSERT.value
_STREAM_STOP = MessageType.STREAM_STOP.value
#: Prefix of the heartbeat messages the source emits (never passed to sinks).
HEARTBEAT_PREFIX = "cdc_heartbeat"
_MESSAGE_SCHEMA = "pg_logical_message"


@dataclass(slots=True)
class _Relation:
    schema: TableSchema
    codec: PgRowCodec
    read: TupleReader
    append: Callable[[RowChange], None] | None = None  # into the open batch's TableChanges


_NO_TS = datetime.min.replace(tzinfo=UTC)


class _OpenBatch:
    """The batch being filled: per-table buffers in log order, counts, and its last commit."""

    __slots__ = ("complete", "events", "filling", "nbytes", "opened", "tables")

    def __init__(self) -> None:
        self.filling: list[_Relation] = []  # relations with a buffer in this batch
        self.tables: list[TableChanges] = []
        self.events = 0
        self.nbytes = 0
        self.opened = time.monotonic()  # when the batch got its first event
        self.complete: Position | None = None  # end of the last whole transaction in it

    def segment(self, rel: _Relation) -> Callable[[RowChange], None]:
        """Open `rel`'s buffer in this batch; return its append."""
        seg = TableChanges(rel.schema, rel.codec)
        self.tables.append(seg)
        self.filling.append(rel)
        rel.append = seg.changes.append
        return rel.append

    def full(self, max_events: int, max_bytes: int) -> bool:
        return self.events >= max_events or self.nbytes >= max_bytes

    def cut(self, position: Position) -> ChangeBatch:
        out = ChangeBatch(position, self.tables, self.nbytes)
        for rel in self.filling:
            rel.append = None
        self.filling = []
        self.tables, self.events, self.nbytes, self.complete = [], 0, 0, None
        return out


class PostgresSource:
    """`{type: postgres, dsn, slot, publication}`: see the module docstring."""

    def __init__(
        self, name: str, config: PostgresSourceConfig, tables: TablesConfig, *, spool_dir: Path | None = None
    ) -> None:
        self.name = name
        self._config = config
        self._tables = tables
        self._conninfo = config.dsn.get_secret_value()
        params = conninfo_to_dict(self._conninfo)
        host, port, db = params.get("host", "localhost"), params.get("port", 5432), params.get("dbname", "")
        self.where = f"job {name}: postgres {host}:{port}/{db}"
        self.info = SourceInfo("postgresql", name, str(db))
        self._stream: ReplicationStream | None = None
        self._type_names: dict[int, str] = {}
        self._relations: dict[int, _Relation] = {}
        self._start_lsn = 0
        self._acked_lsn = 0
        self._streaming = False
        self._spool = TransactionSpool(spool_dir or Path(tempfile.gettempdir()) / f"cdc-spool-{name}")
        self._messages: dict[str, _Relation] = {}  # selected logical-message prefix -> pseudo-table
        self._commit_ts: deque[tuple[Position, datetime]] = deque()  # yielded, not yet acknowledged
        self._acked_ts: datetime | None = None
        self._heartbeat: tuple[Position, int] | None = None  # last heartbeat and the wal_end it stands for
        self._monitor: asyncio.Task[None] | None = None
        #: Slot lag in bytes and seconds, refreshed every `lag_interval_s` (for metrics).
        self.lag_bytes: int | None = None
        self.lag_seconds: float | None = None
        self._log = log.bind(job=name, source="postgres")

    # -- start-up ---------------------------------------------------------------------

    async def start(self, resume_from: Position | None) -> None:
        cfg = self._config
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=cfg.connect_timeout_s
            )
        except psycopg.OperationalError as err:
            raise SourceUnreachableError(f"{self.where}: cannot connect: {first_line(err)}") from err
        try:
            await catalog.check_server(conn, self.where)
            tables = await catalog.select_tables(conn, self._tables.include, self._tables.exclude, self.where)
            await catalog.ensure_publication(conn, cfg.publication, tables, self.where)
            cur = await conn.execute("SELECT current_database()")
            row = await cur.fetchone()
            assert row is not None
            slot = await catalog.ensure_slot(
                conn, cfg.slot, str(row[0]), self.where, wait_s=cfg.connect_timeout_s, create=resume_from is None
            )
            if slot is None:
                raise SlotInvalidatedError(
                    f"{self.where}: replication slot {cfg.slot} is gone, but the sinks hold changes up to "
                    f"{format_lsn(resume_from.commit) if resume_from else '?'}: the changes since are lost to this "
                    "slot; re-create the job's sinks from a new snapshot (on_slot_lost: fail)"
                )
            self._streaming = cfg.streaming and conn.info.server_version >= 140000
            cur = await conn.execute("SELECT oid::bigint, format_type(oid, NULL) FROM pg_type")
            self._type_names = {int(o): str(n) for o, n in await cur.fetchall()}
        except psycopg.OperationalError as err:
            raise SourceUnreachableError(f"{self.where}: {first_line(err)}") from err
        finally:
            await conn.close()
        confirmed = slot.confirmed_flush_lsn or 0
        # The server resends transactions committing at or after `confirmed`. Sinks holding a
        # whole transaction C need everything from C + 1 (a heartbeat's wal_end is C + 1); sinks
        # holding part of transaction C need C itself again.
        if resume_from is not None and confirmed > resume_from.commit + (1 if resume_from.whole else 0):
            raise SourceSetupError(
                f"{self.where}: the sinks hold changes up to {format_lsn(resume_from.commit)} but slot {cfg.slot} "
                f"was already confirmed to {format_lsn(confirmed)}: the changes between are gone from the slot; "
                "use a new slot (and re-snapshot) or restore the sinks' state"
            )
        if resume_from is None and confirmed and not slot.created:
            self._log.warning("sink_without_position", slot=cfg.slot, starting_at=format_lsn(confirmed))
        self._start_lsn = resume_from.commit if resume_from is not None else confirmed
        self._acked_lsn = max(self._start_lsn - 1, confirmed, 0)
        self._spool.clear()
        self._messages = {
            prefix: self._message_relation(prefix) for prefix in cfg.messages if prefix != HEARTBEAT_PREFIX
        }
        self._stream = await ReplicationStream.open(
            self._conninfo, cfg.slot, cfg.publication, self._start_lsn, self.where,
            connect_timeout=cfg.connect_timeout_s, protocol=2 if self._streaming else 1,
            streaming=self._streaming, messages=bool(self._messages),
        )
        self._log.info("replication_started", slot=cfg.slot, publication=cfg.publication,
                       start_lsn=format_lsn(self._start_lsn), tables=len(tables))

    # -- streaming --------------------------------------------------------------------

    async def batches(self, policy: BatchPolicy, stop: asyncio.Event) -> AsyncIterator[ChangeBatch]:
        stream = self._stream
        assert stream is not None, "start() first"
        relations = self._relations
        status_every = self._config.status_interval_s
        heartbeat_every = self._config.heartbeat_interval_s
        max_events, max_bytes, max_wait = policy.max_events, policy.max_bytes, policy.max_wait_s
        self._monitor = asyncio.create_task(self._watch(), name=f"{self.name}-source-monitor")

        b = _OpenBatch()
        last_yielded = Position(max(self._start_lsn - 1, 0))
        tx: Transaction | None = None
        seq = 0
        in_stream: int | None = None  # top-level xid of the open stream block (protocol 2)
        last_status = last_heartbeat = time.monotonic()
        u64, u32 = _U64.unpack_from, _U32.unpack_from

        def emit(position: Position) -> ChangeBatch:
            nonlocal last_yielded
            last_yielded = position
            out = b.cut(position)
            self._commit_ts.append((position, out.tables[0].changes[-1][1].commit_ts if out.tables else _NO_TS))
            return out

        while not stop.is_set():
            now = time.monotonic()
            wait = max_wait if not b.events else max(0.0, max_wait - (now - b.opened))
            frames = await stream.read(min(wait, 1.0) if wait > 0 else 0.001)
            for frame in frames:
                kind = frame[0]
                if kind == _XLOG_DATA:
                    lsn = u64(frame, 1)[0]
                    mtype = frame[_HEADER]
                    if in_stream is not None and mtype != _STREAM_STOP:
                        # Inside a stream block every message carries its (sub)transaction xid.
                        self._spool.append(in_stream, u32(frame, _HEADER + 1)[0], lsn, memoryview(frame)[_HEADER:])
                        continue
                    if mtype == _INSERT and tx is not None:
                        # The hot path: one insert, straight into its table's buffer.
                        rel = relations[u32(frame, 26)[0]]
                        row = rel.read(frame, 31, lsn)[0]
                        seq += 1
                        if not b.events:
                            b.opened = time.monotonic()
                        (rel.append or b.segment(rel))(("c", tx, seq, lsn, None, row))
                        b.events += 1
                        b.nbytes += len(frame)
                        if b.events < max_events and b.nbytes < max_bytes:
                            continue
                        yield emit(tx.position(seq))  # a chunk of a giant transaction
                        continue
                    msg = decode_message(memoryview(frame)[_HEADER:], lsn)
                    if isinstance(msg, Begin):
                        tx = Transaction(msg.xid, msg.final_lsn, pg_timestamp_to_datetime(msg.commit_ts))
                        seq = 0
                    elif isinstance(msg, Commit):
                        if tx is not None:
                            b.complete, tx = tx.position(), None
                            if b.full(max_events, max_bytes) or time.monotonic() - b.opened >= max_wait:
                                yield emit(b.complete)
                    elif isinstance(msg, Relation):
                        self._relation(msg)
                    elif isinstance(msg, StreamStart):
                        in_stream = msg.xid
                    elif isinstance(msg, StreamStop):
                        in_stream = None
                    elif isinstance(msg, StreamAbort):
                        self._spool.abort(msg.xid, msg.subxid)
                    elif isinstance(msg, StreamCommit):
                        streamed = Transaction(msg.xid, msg.commit_lsn, pg_timestamp_to_datetime(msg.commit_ts))
                        n = 0
                        for spooled_lsn, payload in self._spool.commit(msg.xid):
                            part = decode_message(payload, spooled_lsn, in_stream=True)
                            n = self._apply(b, part, streamed, n, spooled_lsn, len(payload))
                            if b.full(max_events, max_bytes):
                                yield emit(streamed.position(n))
                        b.complete = streamed.position()
                        if b.full(max_events, max_bytes) or time.monotonic() - b.opened >= max_wait:
                            yield emit(b.complete)
                    elif isinstance(msg, LogicalMessage) and tx is None and not msg.transactional:
                        if msg.prefix in self._messages:
                            # A non-transactional message is a transaction of its own, at its LSN.
                            alone = Transaction(0, lsn, datetime.now(UTC))
                            self._apply(b, msg, alone, 0, lsn, len(frame))
                            b.complete = alone.position()
                    elif tx is not None:
                        seq = self._apply(b, msg, tx, seq, lsn, len(frame))
                        if b.full(max_events, max_bytes):
                            yield emit(tx.position(seq))  # a chunk of a giant transaction
                elif kind == _KEEPALIVE:
                    wal_end = u64(frame, 1)[0]
                    reply = bool(frame[17])
                    idle = tx is None and not b.events and wal_end - 1 > last_yielded.commit
                    if idle and (reply or now - last_heartbeat >= heartbeat_every):
                        # A heartbeat: once every sink holds it, the server hears flush = wal_end. A
                        # server waiting for that (a shutdown asks with reply_requested) gets it at once.
                        last_heartbeat = now
                        self._heartbeat = (Position(wal_end - 1), wal_end)
                        yield emit(self._heartbeat[0])
                    elif reply:
                        await self._send_status()
                        last_status = time.monotonic()
                else:
                    raise DecodeError(f"{self.where}: unexpected replication frame type {kind!r}")
            now = time.monotonic()
            if b.complete is not None and tx is None and now - b.opened >= max_wait:
                yield emit(b.complete)
            if now - last_status >= status_every:
                await self._send_status()
                last_status = now
        self._log.info("replication_stopping", acked=format_lsn(self._acked_lsn))

    def _apply(self, b: _OpenBatch, msg: Message, tx: Transaction, seq: int, lsn: int, size: int) -> int:
        """Append the row changes of one decoded message of `tx`; return the last seq used."""
        changes: list[tuple[str, _Relation, RawRow | None, RawRow | None]]
        if isinstance(msg, Relation):
            self._relation(msg)
            return seq
        if isinstance(msg, Insert):
            changes = [("c", self._relations[msg.relation_oid], None, msg.new)]
        elif isinstance(msg, Update):
            changes = [("u", self._relations[msg.relation_oid], msg.old, msg.new)]
        elif isinstance(msg, Delete):
            changes = [("d", self._relations[msg.relation_oid], msg.old, None)]
        elif isinstance(msg, Truncate):
            changes = [("t", self._relations[oid], None, None) for oid in msg.relation_oids]
        elif isinstance(msg, LogicalMessage) and msg.prefix in self._messages:
            content = b"\\x" + msg.content.hex().encode()
            changes = [("m", self._messages[msg.prefix], None, (msg.prefix.encode(), content))]
        else:
            return seq  # origins, types, unselected messages
        if not b.events:
            b.opened = time.monotonic()
        for op, rel, before, after in changes:
            seq += 1
            (rel.append or b.segment(rel))((op, tx, seq, lsn, before, after))
            b.events += 1
        b.nbytes += size
        return seq

    def _message_relation(self, prefix: str) -> _Relation:
        columns = (Column("prefix", "text", pgtypes.TEXT), Column("content", "bytea", pgtypes.BYTEA))
        schema = TableSchema(TableId(self.name, _MESSAGE_SCHEMA, prefix), columns)
        return _Relation(schema, PgRowCodec(columns), tuple_reader(len(columns)))

    def _relation(self, msg: Relation) -> None:
        columns = tuple(
            Column(c.name, self._type_names.get(c.type_oid, str(c.type_oid)), c.type_oid, c.type_modifier, c.key)
            for c in msg.columns
        )
        known = self._relations.get(msg.oid)
        table = TableId(self.name, msg.namespace, msg.name)
        if known is not None and known.schema.table == table and known.schema.columns == columns:
            return
        schema = TableSchema(table, columns)
        self._relations[msg.oid] = _Relation(schema, PgRowCodec(columns), tuple_reader(len(columns)))
        self._log.info("relation", table=str(table), columns=len(columns), key=list(schema.key))

    # -- acknowledgement --------------------------------------------------------------

    async def acknowledge(self, position: Position) -> None:
        while self._commit_ts and self._commit_ts[0][0] <= position:
            ts = self._commit_ts.popleft()[1]
            self._acked_ts = None if ts is _NO_TS else ts  # None: caught up (a heartbeat)
        if self._heartbeat is not None and position == self._heartbeat[0]:
            lsn = self._heartbeat[1]  # idle and every sink caught up: all the server sent is done
        else:
            lsn = position.commit if position.whole else position.commit - 1
        if lsn > self._acked_lsn:
            self._acked_lsn = lsn
            await self._send_status()

    async def _send_status(self, *, reply: bool = False) -> None:
        if self._stream is not None:
            await self._stream.send_status(self._acked_lsn, reply=reply)

    async def _watch(self) -> None:
        """Every `lag_interval_s`: slot lag in bytes and seconds (logged, kept for metrics);
        every `heartbeat_message_interval_s`: a ``pg_logical_emit_message`` heartbeat."""
        cfg = self._config
        beat = cfg.heartbeat_message_interval_s
        tick = min(cfg.lag_interval_s, beat or cfg.lag_interval_s)
        last_lag = last_beat = time.monotonic()
        conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        try:
            while True:
                await asyncio.sleep(tick)
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self._conninfo, autocommit=True, connect_timeout=cfg.connect_timeout_s
                        )
                    now = time.monotonic()
                    if beat is not None and now - last_beat >= beat:
                        await conn.execute("SELECT pg_logical_emit_message(false, %s, '')", (HEARTBEAT_PREFIX,))
                        last_beat = now
                    if now - last_lag >= cfg.lag_interval_s:
                        await self._measure_lag(conn)
                        last_lag = now
                except psycopg.Error as err:
                    self._log.warning("source_monitor_failed", error=first_line(err))
                    if conn is not None:
                        await conn.close()
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    async def _measure_lag(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        cur = await conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (self._config.slot,),
        )
        row = await cur.fetchone()
        value = row[0] if row is not None else None
        self.lag_bytes = value if isinstance(value, int) else None
        acked = self._acked_ts
        self.lag_seconds = 0.0 if acked is None else (datetime.now(UTC) - acked).total_seconds()
        self._log.info("source_lag", lag_bytes=self.lag_bytes, lag_s=round(self.lag_seconds, 3),
                       acked=format_lsn(self._acked_lsn), spooled_transactions=self._spool.open_transactions)

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        self._spool.close()
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with contextlib.suppress(Exception):
                await stream.send_status(self._acked_lsn)
            await stream.close()
