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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cdc import metrics, progress
from cdc.config import PostgresSourceConfig, TablesConfig
from cdc.errors import (
    CdcError,
    DecodeError,
    SlotInvalidatedError,
    SourceConnectionError,
    SourceSetupError,
    SourceUnreachableError,
    first_line,
)
from cdc.events import (
    UNCHANGED,
    ChangeBatch,
    Column,
    Position,
    RawRow,
    RowBlock,
    RowChange,
    TableId,
    TableSchema,
    Transaction,
)
from cdc.sink import SourceInfo
from cdc.source import BatchPolicy, OpenBatch
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
    parse_lsn,
    pg_timestamp_to_datetime,
    tuple_reader,
)
from connectors.postgres.snapshot import (
    WATERMARK_PREFIX,
    IncrementalSnapshot,
    InitialSnapshot,
    SnapshotProgress,
    SnapshotTable,
    Window,
    describe_tables,
    progress_fields,
)
from connectors.postgres.spool import TransactionSpool
from connectors.postgres.stream import ReplicationStream
from connectors.postgres.types import TYPE_CATALOG_SQL, PgRowCodec, PgTypeCatalog

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
    window: Window | None = None  # an incremental snapshot chunk between its watermarks
    window_key: tuple[int, ...] = ()  # where the window's key columns sit in this schema's rows

    def track(self, *images: RawRow | None) -> None:
        """Note the keys an open snapshot window must drop (a change between its watermarks)."""
        assert self.window is not None
        for image in images:
            if image is not None:
                self.window.changed.add(tuple(image[i] for i in self.window_key))


_NO_TS = datetime.min.replace(tzinfo=UTC)


def with_old_values(msg: Update) -> RawRow:
    """The new row of `msg` with every unchanged (TOASTed, not sent) value taken from the old row
    when the old row is a full image (REPLICA IDENTITY FULL, ``'O'``), also when the key changed.

    pgoutput marks a TOASTed value the update did not touch as 'u' in the new tuple; under FULL
    the old tuple carries it detoasted, so the event's `after` (and every sink) gets the real
    value and `unchanged` does not name the column. Under DEFAULT or USING INDEX the old tuple
    holds key columns only: the value stays `UNCHANGED`.
    """
    new, old = msg.new, msg.old
    if msg.old_kind != "O" or old is None or len(old) != len(new) or not any(v is UNCHANGED for v in new):
        return new
    return tuple(o if v is UNCHANGED else v for v, o in zip(new, old, strict=True))


class PostgresSource:
    """`{type: postgres, dsn, slot, publication}`: see the module docstring."""

    def __init__(
        self,
        name: str,
        config: PostgresSourceConfig,
        tables: TablesConfig,
        *,
        state_dir: Path | None = None,
        snapshot: str = "never",
        snapshot_workers: int = 1,
        snapshot_chunk_rows: int = 50_000,
    ) -> None:
        self.name = name
        self._config = config
        self._tables = tables
        self._conninfo = config.conninfo()
        params = conninfo_to_dict(self._conninfo)
        host, port, db = params.get("host", "localhost"), params.get("port", 5432), params.get("dbname", "")
        self.where = f"job {name}: postgres {host}:{port}/{db}"
        self.info = SourceInfo("postgresql", name, str(db))
        self._stream: ReplicationStream | None = None
        self._types = PgTypeCatalog()
        self._relations: dict[int, _Relation] = {}
        self._start_lsn = 0
        self._acked_lsn = 0
        self._streaming = False
        state = state_dir if state_dir is not None else Path(tempfile.gettempdir()) / "cdc-state"
        self._spool = TransactionSpool(state / "spool" / name)
        self._snapshot_mode = snapshot
        self._snapshot_workers = snapshot_workers
        self._chunk_rows = snapshot_chunk_rows
        self._progress = SnapshotProgress(state / f"{name}.snapshot.json")
        self._request_path = state / f"{name}.snapshot-request.json"
        self._initial: tuple[InitialSnapshot, psycopg.AsyncConnection[Any] | None, int] | None = None
        self._incremental: list[SnapshotTable] = []  # tables waiting for an incremental snapshot
        self._chunk_marks: deque[tuple[Position, SnapshotTable, int, int]] = deque()
        self._primary_keys: dict[tuple[str, str], tuple[str, ...]] = {}
        self._publication_tables: list[tuple[str, str]] = []
        self._snapshot: IncrementalSnapshot | None = None
        self._windows: dict[str, Window] = {}  # table -> its open snapshot window
        self._snapshot_rels: dict[str, _Relation] = {}
        #: Snapshot progress per table (rows, rows/s, ETA), for logs and metrics.
        self.snapshot_status: dict[str, dict[str, Any]] = {}
        self._messages: dict[str, _Relation] = {}  # selected logical-message prefix -> pseudo-table
        self._commit_ts: deque[tuple[Position, datetime]] = deque()  # yielded, not yet acknowledged
        self._acked_ts: datetime | None = None
        self._heartbeat: tuple[Position, int] | None = None  # last heartbeat and the wal_end it stands for
        self._monitor: asyncio.Task[None] | None = None
        self._snapshotting: asyncio.Task[None] | None = None  # the incremental snapshot running now
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
            raise catalog.connect_error(f"{self.where}: cannot connect", err) from err
        try:
            await catalog.check_server(conn, self.where)
            tables = await catalog.select_tables(conn, self._tables.include, self._tables.exclude, self.where)
            await catalog.ensure_publication(conn, cfg.publication, tables, self.where)
            self._publication_tables = list(tables)
            cur = await conn.execute("SELECT current_database()")
            row = await cur.fetchone()
            assert row is not None
            database = str(row[0])
            recreate = False
            try:
                slot = await catalog.ensure_slot(conn, cfg.slot, database, self.where,
                                                 wait_s=cfg.connect_timeout_s, create=False)
            except SlotInvalidatedError:
                if cfg.on_slot_lost != "recreate":
                    raise
                await conn.execute("SELECT pg_drop_replication_slot(%s)", (cfg.slot,))
                slot = None
            if slot is None and resume_from is not None:
                if cfg.on_slot_lost != "recreate":
                    raise SlotInvalidatedError(
                        f"{self.where}: replication slot {cfg.slot} is gone, but the sinks hold changes up to "
                        f"{format_lsn(resume_from.commit)}: the changes since are lost to this slot; set "
                        "on_slot_lost: recreate to re-snapshot every table, or re-create the job's sinks"
                    )
                recreate = True
                self._log.warning("slot_lost_recreating", slot=cfg.slot, sinks_hold=format_lsn(resume_from.commit))
            self._streaming = cfg.streaming and conn.info.server_version >= 140000
            cur = await conn.execute(TYPE_CATALOG_SQL)
            self._types = PgTypeCatalog.from_rows(await cur.fetchall())
            self._primary_keys = await catalog.primary_keys(conn, tables)
            self._progress.load()
            if recreate:
                self._progress.tables = {}  # every table again, from the new slot's snapshot
            mode = self._snapshot_mode
            initial = mode == "initial_only" or ((mode == "initial" or recreate) and slot is None)
            if initial or mode == "initial":
                pending = [t for t in tables if not self._progress.is_done(f"{t[0]}.{t[1]}")]
            else:  # snapshot: never still finishes what a `cdc snapshot` request started before a restart
                pending = [t for t in tables if self._progress.known(f"{t[0]}.{t[1]}")
                           and not self._progress.is_done(f"{t[0]}.{t[1]}")]
            if pending:
                await catalog.check_select(conn, pending, self.where)
                planned = await describe_tables(conn, self.name, pending, self._types, self._chunk_rows)
                held = (resume_from.commit, resume_from.seq) if resume_from is not None else None
                for t in planned:
                    self._progress.start(t, held)
                    metrics.snapshot_chunks_planned(self.name, t.name).set(len(t.chunks))
                self._progress.save()
            else:
                planned = []
            if mode == "initial_only":
                self._initial = await self._export_snapshot(conn, planned)
                self._log.info("snapshot_started", mode=mode, tables=len(planned))
                return
            if slot is None:
                if initial:
                    self._initial = await self._create_slot_exported(planned)
                    self._start_lsn = self._initial[2]
                    self._acked_lsn = max(self._start_lsn - 1, 0)
                    self._log.info("snapshot_started", mode="initial", tables=len(planned),
                                   consistent_point=format_lsn(self._start_lsn))
                    return
                slot = await catalog.ensure_slot(conn, cfg.slot, database, self.where, wait_s=cfg.connect_timeout_s)
                assert slot is not None
            self._incremental = [t for t in planned if t.remaining()]
        except psycopg.OperationalError as err:
            raise SourceUnreachableError(f"{self.where}: {first_line(err)}") from err
        finally:
            await conn.close()
        confirmed = slot.confirmed_flush_lsn or 0
        # The server resends transactions committing at or after `confirmed`; sinks holding
        # position C need everything after C (a heartbeat's wal_end is C + 1).
        if resume_from is not None and confirmed > resume_from.commit + 1:
            raise SourceSetupError(
                f"{self.where}: the sinks hold changes up to {format_lsn(resume_from.commit)} but slot {cfg.slot} "
                f"was already confirmed to {format_lsn(confirmed)}: the changes between are gone from the slot; "
                "use a new slot (and re-snapshot) or restore the sinks' state"
            )
        if resume_from is None and confirmed and not slot.created and self._snapshot_mode == "never":
            self._log.warning("sink_without_position", slot=cfg.slot, starting_at=format_lsn(confirmed))
        self._start_lsn = resume_from.commit if resume_from is not None else confirmed
        self._acked_lsn = max(self._start_lsn - 1, confirmed, 0)
        await self._open_stream()
        if self._incremental:
            self._log.info("snapshot_resuming", tables=[t.name for t in self._incremental],
                           chunks_done={t.name: len(t.done) for t in self._incremental},
                           chunks={t.name: len(t.chunks) for t in self._incremental})

    async def _open_stream(self) -> None:
        cfg = self._config
        self._spool.clear()
        self._messages = {
            prefix: self._message_relation(prefix)
            for prefix in cfg.messages if prefix not in (HEARTBEAT_PREFIX, WATERMARK_PREFIX)
        }
        self._stream = await ReplicationStream.open(
            self._conninfo, cfg.slot, cfg.publication, self._start_lsn, self.where,
            connect_timeout=cfg.connect_timeout_s, protocol=2 if self._streaming else 1,
            streaming=self._streaming, messages=True,
        )
        self._log.info("replication_started", slot=cfg.slot, publication=cfg.publication,
                       start_lsn=format_lsn(self._start_lsn), tables=len(self._publication_tables))

    async def _create_slot_exported(
        self, tables: list[SnapshotTable]
    ) -> tuple[InitialSnapshot, psycopg.AsyncConnection[Any] | None, int]:
        """Create the slot with an exported snapshot; the creating connection stays open
        (idle) until every snapshot worker has imported it."""
        cfg = self._config
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, replication="database", autocommit=True, options=catalog.SESSION_OPTIONS,
                connect_timeout=cfg.connect_timeout_s,
            )
            cur = await conn.execute(
                sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')").format(
                    sql.Identifier(cfg.slot)
                )
            )
            row = await cur.fetchone()
        except psycopg.OperationalError as err:
            raise catalog.connect_error(f"{self.where}: cannot create slot {cfg.slot}", err) from err
        assert row is not None
        consistent_point, snapshot_name = parse_lsn(str(row[1])), str(row[2])
        reader = InitialSnapshot(self._conninfo, snapshot_name, tables, self._snapshot_workers, cfg.connect_timeout_s,
                                 self.where)
        return reader, conn, consistent_point

    async def _export_snapshot(
        self, conn: psycopg.AsyncConnection[Any], tables: list[SnapshotTable]
    ) -> tuple[InitialSnapshot, psycopg.AsyncConnection[Any] | None, int]:
        """`initial_only`: a snapshot exported from a plain transaction; no slot at all."""
        try:
            leader = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=self._config.connect_timeout_s
            )
            await leader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur = await leader.execute("SELECT pg_export_snapshot(), (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
            row = await cur.fetchone()
        except psycopg.OperationalError as err:
            raise catalog.connect_error(f"{self.where}: cannot export a snapshot", err) from err
        assert row is not None
        reader = InitialSnapshot(self._conninfo, str(row[0]), tables, self._snapshot_workers,
                                 self._config.connect_timeout_s, self.where)
        return reader, leader, int(row[1])

    # -- streaming --------------------------------------------------------------------

    async def batches(self, policy: BatchPolicy, stop: asyncio.Event) -> AsyncIterator[ChangeBatch]:
        if self._initial is not None:
            async for batch in self._initial_batches(policy, stop):
                yield batch
            if self._snapshot_mode == "initial_only" or stop.is_set():
                return
            await self._open_stream()
        stream = self._stream
        assert stream is not None, "start() first"
        relations = self._relations
        status_every = self._config.status_interval_s
        heartbeat_every = self._config.heartbeat_interval_s
        max_events, max_bytes, max_wait = policy.max_events, policy.max_bytes, policy.max_wait_s
        self._monitor = asyncio.create_task(self._watch(), name=f"{self.name}-source-monitor")
        b = OpenBatch()
        last_yielded = Position(max(self._start_lsn - 1, 0))
        tx: Transaction | None = None
        seq = 0
        in_stream: int | None = None  # top-level xid of the open stream block (protocol 2)
        last_status = last_heartbeat = time.monotonic()
        u64, u32 = _U64.unpack_from, _U32.unpack_from

        def emit(position: Position) -> ChangeBatch:
            nonlocal last_yielded
            last_yielded = position
            return self._cut(b, position)

        me = asyncio.current_task()
        while not stop.is_set():
            if me is not None and me.cancelling():
                # A cancel that an inner await swallowed (PITFALLS.md): stop reading now, so the
                # replication connection closes and a stopping server is not held up by replies.
                raise asyncio.CancelledError
            if self._snapshotting is not None and self._snapshotting.done():
                done, self._snapshotting, self._snapshot = self._snapshotting, None, None
                done.result()  # raises what the snapshot raised
            if self._snapshotting is None and self._incremental:
                self._snapshot = IncrementalSnapshot(self._conninfo, self._incremental, self._config.connect_timeout_s,
                                                     self.where)
                self._incremental = []
                self._snapshotting = asyncio.create_task(self._snapshot.run(), name=f"{self.name}-snapshot")
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
                        if rel.window is not None:
                            rel.track(row)
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
                        await self._ensure_types(msg)
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
                            if isinstance(part, Relation):
                                await self._ensure_types(part)
                            n = self._apply(b, part, streamed, n, spooled_lsn, len(payload))
                            if b.full(max_events, max_bytes):
                                yield emit(streamed.position(n))
                        b.complete = streamed.position()
                        if b.full(max_events, max_bytes) or time.monotonic() - b.opened >= max_wait:
                            yield emit(b.complete)
                    elif isinstance(msg, LogicalMessage) and tx is None and not msg.transactional:
                        # A non-transactional message's LSN is where its record ends, which can be
                        # the commit LSN of the very next transaction: it sits at LSN - 1.
                        if msg.prefix == WATERMARK_PREFIX:
                            if self._watermark(b, msg, lsn - 1):
                                b.complete = Position(lsn - 1)
                                if b.full(max_events, max_bytes):
                                    yield emit(b.complete)
                        elif msg.prefix in self._messages:
                            alone = Transaction(0, lsn - 1, datetime.now(UTC))  # a transaction of its own
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
        await self._stop_snapshotting()
        self._log.info("replication_stopping", acked=format_lsn(self._acked_lsn))

    async def _initial_batches(self, policy: BatchPolicy, stop: asyncio.Event) -> AsyncIterator[ChangeBatch]:
        """The initial snapshot's rows as ``op=r`` batches, before any streamed change.

        Every row sits at ``Position(consistent_point - 1, n)``: after nothing the stream
        holds, before everything it will bring.
        """
        assert self._initial is not None
        reader, holder, point = self._initial
        self._initial = None
        reading = asyncio.create_task(reader.run(), name=f"{self.name}-snapshot")
        try:
            imported = asyncio.create_task(reader.imported.wait())
            await asyncio.wait({reading, imported}, return_when=asyncio.FIRST_COMPLETED)
            imported.cancel()
            if reading.done():
                reading.result()
            if holder is not None:
                await holder.close()  # every worker holds the snapshot now
            tx = Transaction(0, max(point - 1, 0), datetime.now(UTC))
            rels: dict[str, _Relation] = {}
            chunk_rows: dict[tuple[int, str], int] = {}
            b = OpenBatch()
            seq = 0
            shown = time.monotonic()
            while (item := await reader.next_item(reading)) is not None:
                t = item.table
                rel = rels.get(t.name)
                if rel is None:
                    rel = rels[t.name] = _Relation(t.schema, t.codec, tuple_reader(len(t.schema.columns)))
                count = len(item.rows)
                if item.block is not None and item.block.num_rows:
                    # Columnar rows: one TableChanges holding the block; streamed rows (and the
                    # next block) open buffers after it.
                    count = item.block.num_rows
                    block = RowBlock(tx, seq + 1, point, item.block, t.codec.columns_to_arrow)
                    b.add_block(t.schema, t.codec, block)
                    rel.append = None
                    seq += count
                    b.nbytes += item.block.nbytes
                    if item.last_ctid is not None:
                        self._progress.piece(t, tx.commit, item.chunk.number, seq, item.last_ctid, count)
                elif item.rows:
                    append = rel.append or b.segment(rel)
                    for row in item.rows:
                        seq += 1
                        append(("r", tx, seq, point, None, row))
                    b.nbytes += 64 * count * max(len(t.schema.columns), 1)
                b.events += count
                t.rows += count
                chunk_rows[item.chunk.number, t.name] = chunk_rows.get((item.chunk.number, t.name), 0) + count
                if item.last:
                    rows = chunk_rows.pop((item.chunk.number, t.name), 0)
                    self._chunk_marks.append((tx.position(seq), t, item.chunk.number, rows))
                    self._progress.piece(t, tx.commit, item.chunk.number, seq, None, 0)
                if b.full(policy.max_events, policy.max_bytes):
                    self._progress.save()  # what the batch holds, before any sink has it
                    yield self._cut(b, tx.position(seq))
                if time.monotonic() - shown >= 2:
                    self._show_progress(reader.tables)
                    shown = time.monotonic()
                if stop.is_set():
                    break
            self._progress.save()
            if not stop.is_set():
                reading.result()
                self._show_progress(reader.tables)
                yield self._cut(b, tx.position())
            elif b.events:
                yield self._cut(b, tx.position(seq))
        finally:
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, CdcError, psycopg.Error):
                    await reading

    def _cut(self, b: OpenBatch, position: Position) -> ChangeBatch:
        out = b.cut(position)
        last = next((end for t in reversed(out.tables) if (end := t.last) is not None), None)
        self._commit_ts.append((position, last[0].commit_ts if last is not None else _NO_TS))
        return out

    def _watermark(self, b: OpenBatch, msg: LogicalMessage, lsn: int) -> bool:
        """A watermark of the running incremental snapshot; True when chunk rows were added."""
        kind, _, wid = msg.content.decode(errors="replace").partition(" ")
        window = self._snapshot.windows.get(wid) if self._snapshot is not None else None
        if window is None:
            return False  # a watermark of an earlier run
        t = window.chunk.table
        stream_rel = next((r for r in self._relations.values() if r.schema.table == t.schema.table), None)
        if kind == "low":
            window.open = True
            self._windows[t.name] = window
            if stream_rel is not None:
                self._attach(stream_rel, window)
            return False
        self._windows.pop(t.name, None)
        if stream_rel is not None:
            stream_rel.window = None
        rows = window.surviving()
        rel = self._snapshot_rels.get(t.name)
        if rel is None or rel.schema != t.schema:
            rel = self._snapshot_rels[t.name] = _Relation(t.schema, t.codec, tuple_reader(len(t.schema.columns)))
        tx = Transaction(0, lsn, datetime.now(UTC))
        if not b.events:
            b.opened = time.monotonic()
        if rows:
            append = rel.append or b.segment(rel)
            for n, row in enumerate(rows, 1):
                append(("r", tx, n, lsn, None, row))
            # The chunk's rows sit in their own buffer: the table's next streamed change must
            # open a buffer after it, or it would be written before rows older than itself.
            rel.append = None
            if stream_rel is not None:
                stream_rel.append = None
        b.events += len(rows)
        b.nbytes += 64 * len(rows) * max(len(t.schema.columns), 1)
        t.rows += len(rows)
        self._chunk_marks.append((tx.position(), t, window.chunk.chunk.number, len(rows)))
        window.consumed.set()
        return True

    @staticmethod
    def _attach(rel: _Relation, window: Window) -> None:
        names = rel.schema.names
        wanted = [c.name for c in window.chunk.table.schema.columns if c.key]
        rel.window = window
        rel.window_key = tuple(names.index(n) for n in wanted) if all(n in names for n in wanted) else ()
        if not rel.window_key:
            window.truncated = True  # the key is gone from the table: keep nothing of this chunk

    def _show_progress(self, tables: Sequence[SnapshotTable]) -> None:
        for t in tables:
            fields = progress_fields(t)
            self.snapshot_status[t.name] = fields
            if progress.enabled():
                progress.show(fields)
            else:
                self._log.info("snapshot_progress", **fields)

    def _apply(self, b: OpenBatch, msg: Message, tx: Transaction, seq: int, lsn: int, size: int) -> int:
        """Append the row changes of one decoded message of `tx`; return the last seq used."""
        changes: list[tuple[str, _Relation, RawRow | None, RawRow | None]]
        if isinstance(msg, Relation):
            self._relation(msg)
            return seq
        if isinstance(msg, Insert):
            changes = [("c", self._relations[msg.relation_oid], None, msg.new)]
        elif isinstance(msg, Update):
            changes = [("u", self._relations[msg.relation_oid], msg.old, with_old_values(msg))]
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
            if rel.window is not None:
                if op == "t":
                    rel.window.truncated = True
                else:
                    rel.track(before, after)
            seq += 1
            (rel.append or b.segment(rel))((op, tx, seq, lsn, before, after))
            b.events += 1
        b.nbytes += size
        return seq

    async def _ensure_types(self, msg: Relation) -> None:
        """Reload the type catalog when a relation names a type created after start-up."""
        if not self._types.missing(c.type_oid for c in msg.columns):
            return
        try:
            async with await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=self._config.connect_timeout_s
            ) as conn:
                cur = await conn.execute(TYPE_CATALOG_SQL)
                self._types = PgTypeCatalog.from_rows(await cur.fetchall())
        except psycopg.OperationalError as err:
            raise catalog.connect_error(f"{self.where}: cannot load types", err, SourceConnectionError) from err

    def _message_relation(self, prefix: str) -> _Relation:
        columns = (Column("prefix", "text", pgtypes.TEXT), Column("content", "bytea", pgtypes.BYTEA))
        schema = TableSchema(TableId(self.name, _MESSAGE_SCHEMA, prefix), columns)
        return _Relation(schema, PgRowCodec(columns), tuple_reader(len(columns)))

    def _relation(self, msg: Relation) -> None:
        pk = self._primary_keys.get((msg.namespace, msg.name), ())
        if msg.replica_identity == "f" and pk:
            keys = [c.name in pk for c in msg.columns]  # FULL flags every column; the primary key identifies
        else:
            keys = [c.key for c in msg.columns]
        columns = tuple(
            Column(c.name, self._types.name(c.type_oid), c.type_oid, c.type_modifier, k)
            for c, k in zip(msg.columns, keys, strict=True)
        )
        known = self._relations.get(msg.oid)
        table = TableId(self.name, msg.namespace, msg.name)
        if known is not None and known.schema.table == table and known.schema.columns == columns:
            return
        schema = TableSchema(table, columns)
        rel = self._relations[msg.oid] = _Relation(schema, PgRowCodec(columns, self._types), tuple_reader(len(columns)))
        window = self._windows.get(str(table))
        if window is not None:
            self._attach(rel, window)
        self._log.info("relation", table=str(table), columns=len(columns), key=list(schema.key))

    # -- acknowledgement --------------------------------------------------------------

    async def acknowledge(self, position: Position) -> None:
        finished = False
        while self._chunk_marks and self._chunk_marks[0][0] <= position:
            _, t, chunk, rows = self._chunk_marks.popleft()
            self._progress.chunk_done(t, chunk, rows)
            t.done.add(chunk)
            metrics.snapshot_rows(self.name, t.name).inc(rows)
            metrics.snapshot_chunks(self.name, t.name).inc()
            finished = True
            if self._progress.is_done(t.name):
                self._log.info("snapshot_table_done", **progress_fields(t))
                progress.show(progress_fields(t), done=True)
        if finished:
            self._progress.save()
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
        every `heartbeat_message_interval_s`: a ``pg_logical_emit_message`` heartbeat; every
        second: a ``cdc snapshot`` request for this job."""
        cfg = self._config
        beat = cfg.heartbeat_message_interval_s
        tick = min(cfg.lag_interval_s, beat or cfg.lag_interval_s, 1.0)
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
                    if self._request_path.exists():
                        await self._take_request(conn)
                except CdcError as err:
                    self._log.error("snapshot_request_refused", error=str(err))
                    self._request_path.unlink(missing_ok=True)
                except psycopg.Error as err:
                    self._log.warning("source_monitor_failed", error=first_line(err))
                    if conn is not None:
                        await conn.close()
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    async def _take_request(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """Queue the tables a ``cdc snapshot`` request names for an incremental snapshot."""
        try:
            doc = orjson.loads(self._request_path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as err:
            raise SourceSetupError(f"{self._request_path}: unreadable snapshot request ({err})") from err
        names = [str(n) for n in doc.get("tables") or []] or [f"{s}.{t}" for s, t in self._publication_tables]
        pairs = await catalog.select_tables(conn, names, [], self.where)
        await catalog.check_select(conn, pairs, self.where)
        missing = [p for p in pairs if p not in self._publication_tables]
        if missing:
            await catalog.ensure_publication(conn, self._config.publication, missing, self.where)
            self._publication_tables.extend(missing)
            self._primary_keys.update(await catalog.primary_keys(conn, missing))
        planned = await describe_tables(conn, self.name, pairs, self._types, self._chunk_rows)
        for t in planned:
            self._progress.tables.pop(t.name, None)
            self._progress.start(t)
            metrics.snapshot_chunks_planned(self.name, t.name).set(len(t.chunks))
        self._progress.save()
        self._incremental.extend(planned)
        self._request_path.unlink(missing_ok=True)
        self._log.info("snapshot_requested", tables=[t.name for t in planned])

    async def _measure_lag(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        cur = await conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (self._config.slot,),
        )
        row = await cur.fetchone()
        value = row[0] if row is not None else None
        self.lag_bytes = value if isinstance(value, int) else None
        if self.lag_bytes is not None:
            metrics.source_lag_bytes(self.name).set(self.lag_bytes)
        acked = self._acked_ts
        self.lag_seconds = 0.0 if acked is None else (datetime.now(UTC) - acked).total_seconds()
        self._log.info("source_lag", lag_bytes=self.lag_bytes, lag_s=round(self.lag_seconds, 3),
                       acked=format_lsn(self._acked_lsn), spooled_transactions=self._spool.open_transactions)

    async def _stop_snapshotting(self) -> None:
        """Cancel the incremental snapshot and wait for it, its error retrieved: the stream's
        own error (or the stop) is what ends the job."""
        task, self._snapshotting = self._snapshotting, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, CdcError):
            pass
        except Exception as err:  # the job already ends on another error: keep that one
            self._log.warning("incremental_snapshot_failed", error_class=type(err).__name__)

    async def close(self) -> None:
        await self._stop_snapshotting()  # also when the stream failed before its loop could
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
