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
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

from cdc.config import PostgresSourceConfig, TablesConfig
from cdc.errors import DecodeError, SourceSetupError, SourceUnreachableError, first_line
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
from connectors.postgres.pgoutput import (
    Begin,
    Commit,
    Delete,
    MessageType,
    Relation,
    Truncate,
    TupleReader,
    Update,
    decode_message,
    format_lsn,
    pg_timestamp_to_datetime,
    tuple_reader,
)
from connectors.postgres.stream import ReplicationStream
from connectors.postgres.types import PgRowCodec

log = structlog.get_logger(__name__)

_XLOG_DATA = ord("w")
_KEEPALIVE = ord("k")
_HEADER = 25  # 'w' + wal_start + wal_end + send_time
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_INSERT = MessageType.INSERT.value
_BEGIN = MessageType.BEGIN.value
_COMMIT = MessageType.COMMIT.value


@dataclass(slots=True)
class _Relation:
    schema: TableSchema
    codec: PgRowCodec
    read: TupleReader
    append: Callable[[RowChange], None] | None = None  # into the open batch's TableChanges


class PostgresSource:
    """`{type: postgres, dsn, slot, publication}`: see the module docstring."""

    def __init__(self, name: str, config: PostgresSourceConfig, tables: TablesConfig) -> None:
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
        self._sent_lsn = -1
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
            slot = await catalog.ensure_slot(conn, cfg.slot, str(row[0]), self.where, wait_s=cfg.connect_timeout_s)
            cur = await conn.execute("SELECT oid::bigint, format_type(oid, NULL) FROM pg_type")
            self._type_names = {int(o): str(n) for o, n in await cur.fetchall()}
        except psycopg.OperationalError as err:
            raise SourceUnreachableError(f"{self.where}: {first_line(err)}") from err
        finally:
            await conn.close()
        confirmed = slot.confirmed_flush_lsn or 0
        if resume_from is not None and resume_from.commit < confirmed:
            raise SourceSetupError(
                f"{self.where}: the sinks hold changes up to {format_lsn(resume_from.commit)} but slot {cfg.slot} "
                f"was already confirmed to {format_lsn(confirmed)}: the changes between are gone from the slot; "
                "use a new slot (and re-snapshot) or restore the sinks' state"
            )
        if resume_from is None and confirmed and not slot.created:
            self._log.warning("sink_without_position", slot=cfg.slot, starting_at=format_lsn(confirmed))
        self._start_lsn = resume_from.commit if resume_from is not None else confirmed
        self._acked_lsn = max(self._start_lsn - 1, confirmed, 0)
        self._stream = await ReplicationStream.open(
            self._conninfo, cfg.slot, cfg.publication, self._start_lsn, self.where,
            connect_timeout=cfg.connect_timeout_s,
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

        batch: list[TableChanges] = []
        events = nbytes = 0
        opened = time.monotonic()  # when the open batch got its first event
        complete: Position | None = None  # end of the last whole transaction in the open batch
        last_yielded = Position(max(self._start_lsn - 1, 0))
        tx: Transaction | None = None
        seq = 0
        last_status = last_heartbeat = time.monotonic()
        u64, u32 = _U64.unpack_from, _U32.unpack_from

        def segment(rel: _Relation) -> Callable[[RowChange], None]:
            seg = TableChanges(rel.schema, rel.codec)
            batch.append(seg)
            rel.append = seg.changes.append
            return rel.append

        def cut(position: Position) -> ChangeBatch:
            nonlocal batch, events, nbytes, complete
            out = ChangeBatch(position, batch, nbytes)
            for rel in relations.values():
                rel.append = None
            batch, events, nbytes, complete = [], 0, 0, None
            return out

        while not stop.is_set():
            now = time.monotonic()
            wait = max_wait if not events else max(0.0, max_wait - (now - opened))
            frames = await stream.read(min(wait, 1.0) if wait > 0 else 0.001)
            for frame in frames:
                kind = frame[0]
                if kind == _XLOG_DATA:
                    lsn = u64(frame, 1)[0]
                    if frame[_HEADER] == _INSERT and tx is not None:
                        # The hot path: one insert, straight into its table's buffer.
                        rel = relations[u32(frame, 26)[0]]
                        row = rel.read(frame, 31, lsn)[0]
                        seq += 1
                        if not events:
                            opened = time.monotonic()
                        (rel.append or segment(rel))(("c", tx, seq, lsn, None, row))
                        events += 1
                        nbytes += len(frame)
                        if events < max_events and nbytes < max_bytes:
                            continue
                    else:
                        msg = decode_message(memoryview(frame)[_HEADER:], lsn)
                        if isinstance(msg, Begin):
                            tx = Transaction(msg.xid, msg.final_lsn, pg_timestamp_to_datetime(msg.commit_ts))
                            seq = 0
                            continue
                        if isinstance(msg, Commit):
                            if tx is not None:
                                complete = tx.position()
                                tx = None
                                if events >= max_events or nbytes >= max_bytes or time.monotonic() - opened >= max_wait:
                                    last_yielded = complete
                                    yield cut(complete)
                            continue
                        if isinstance(msg, Relation):
                            self._relation(msg)
                            continue
                        if tx is None or not isinstance(msg, Update | Delete | Truncate):
                            continue  # non-transactional messages, origins, types
                        if not events:
                            opened = time.monotonic()
                        for op, oid, before, after in self._row_changes(msg):
                            seq += 1
                            rel = relations[oid]
                            (rel.append or segment(rel))((op, tx, seq, lsn, before, after))
                            events += 1
                        nbytes += len(frame)
                    if tx is not None and (events >= max_events or nbytes >= max_bytes):
                        last_yielded = tx.position(seq)
                        yield cut(last_yielded)  # a chunk of a giant transaction
                elif kind == _KEEPALIVE:
                    wal_end = u64(frame, 1)[0]
                    if frame[17]:
                        await self._send_status()
                        last_status = time.monotonic()
                    idle = tx is None and not events
                    if idle and wal_end - 1 > last_yielded.commit and now - last_heartbeat >= heartbeat_every:
                        last_yielded = Position(wal_end - 1)
                        last_heartbeat = now
                        yield ChangeBatch(last_yielded)
                else:
                    raise DecodeError(f"{self.where}: unexpected replication frame type {kind!r}")
            now = time.monotonic()
            if complete is not None and tx is None and now - opened >= max_wait:
                last_yielded = complete
                yield cut(complete)
            if now - last_status >= status_every:
                await self._send_status()
                last_status = now
        self._log.info("replication_stopping", acked=format_lsn(self._acked_lsn))

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

    def _row_changes(self, msg: Update | Delete | Truncate) -> list[tuple[str, int, RawRow | None, RawRow | None]]:
        if isinstance(msg, Update):
            return [("u", msg.relation_oid, msg.old, msg.new)]
        if isinstance(msg, Delete):
            return [("d", msg.relation_oid, msg.old, None)]
        return [("t", oid, None, None) for oid in msg.relation_oids]

    # -- acknowledgement --------------------------------------------------------------

    async def acknowledge(self, position: Position) -> None:
        lsn = position.commit if position.whole else position.commit - 1
        if lsn > self._acked_lsn:
            self._acked_lsn = lsn
            await self._send_status()

    async def _send_status(self, *, reply: bool = False) -> None:
        if self._stream is not None:
            await self._stream.send_status(self._acked_lsn, reply=reply)
            self._sent_lsn = self._acked_lsn

    async def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with contextlib.suppress(Exception):
                await stream.send_status(self._acked_lsn)
            await stream.close()
