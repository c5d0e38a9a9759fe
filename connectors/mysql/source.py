"""The MySQL/MariaDB source: the row binlog into `ChangeBatch`es of whole transactions.

Start-up (`start`) checks the server (connectors/mysql/catalog.py), selects the tables,
and decides where to read: from the sinks' position (connectors/mysql/positions.py),
from a fresh consistent snapshot (connectors/mysql/snapshot.py), or from the server's
current position, by the GTID state the sinks hold (``resume_by: gtid``) or by binlog
file and position. Streaming (`batches`) reads `BinlogRecord`s from the adapter
(connectors/mysql/binlog.py, the only module that imports python-mysql-replication) in a
worker thread, through a bounded queue, and appends normalised rows into per-table
buffers of the open batch. The checkpoint only moves at a commit (XID) or after a
statement of its own (DDL); a giant transaction is cut into chunks whose positions
name the last event in them.

A table's schema and codec come from its table map (column names, types, signedness,
primary key: ``binlog_row_metadata=FULL``) refined by the catalog (MariaDB's JSON, UUID,
INET6), cached by the table's name and table-map columns, never by table id, and
forgotten after every DDL statement, so an ``ALTER TABLE`` mid-stream shows in the next
events' schema. A ``TRUNCATE`` of a captured table (a statement in the binlog, read by
connectors/mysql/statements.py) is an ``op: "t"`` event at its place in the log instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pymysql
import structlog

from cdc.checkpoints import write_state
from cdc.config import MySqlSourceConfig, TablesConfig
from cdc.errors import (
    CdcError,
    CheckpointError,
    DecodeError,
    MissingTableError,
    SourceConnectionError,
    SourceSetupError,
    first_line,
)
from cdc.events import ChangeBatch, Column, Position, RawRow, RowChange, TableId, TableSchema, Transaction
from cdc.sink import SourceInfo
from cdc.source import BatchPolicy, OpenBatch
from connectors.mysql import catalog
from connectors.mysql import positions as pos
from connectors.mysql.binlog import (
    EMPTY_SET,
    ZERO_DATE,
    BinlogConnectionLost,
    BinlogGone,
    BinlogReader,
    BinlogRecord,
    Idle,
    Rotate,
    Rows,
    Statement,
    TableMap,
    TxCommit,
    TxStart,
)
from connectors.mysql.gtid import GtidState
from connectors.mysql.rows import ChangeDecoder, RowColumn, compile_change_decoder
from connectors.mysql.snapshot import Chunk, SnapshotReader, SnapshotTable, binlog_type, choose_method, describe_table
from connectors.mysql.statements import UnreadableStatement, truncated_table
from connectors.mysql.types import MySqlRowCodec, compile_normaliser
from connectors.mysql.watermark import StreamFilter, WatermarkReader, load_marks, save_marks

log = structlog.get_logger(__name__)

#: Records queued between the reader thread and the event loop (each at most one rows event).
_QUEUE_RECORDS = 2_000
#: Rows decoded (on the event loop) between two chances for other tasks to run (about 30 ms).
_ROWS_PER_PAUSE = 10_000
#: Yielded batches whose GTID state is remembered until acknowledged (older ones are dropped, never guessed).
_GTID_PENDING = 10_000
#: The GTID record is rewritten at most this often (and at close).
_GTID_WRITE_S = 1.0


class BinlogPurgedError(SourceSetupError):
    """The binlog file the job must resume from is gone from the server."""


class BinlogRewoundError(SourceSetupError):
    """The job's position lies past the server's end of binlog (numbering restarted, another server)."""


@dataclass(slots=True)
class _Table:
    schema: TableSchema
    codec: MySqlRowCodec
    #: The table's `compile_normaliser` function (None: every value as the adapter gives it).
    normalise: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None
    append: Callable[[RowChange], None] | None = None
    #: The table map shape `decode` was compiled for, and the decoder of row bytes into changes.
    shape: tuple[RowColumn, ...] | None = None
    decode: ChangeDecoder | None = None


#: Seconds between two `zero_date_as_null` warnings of the same column.
_ZERO_DATE_LOG_S: Final = 10.0


class _Pump:
    """Runs the blocking `BinlogReader` in a thread, into a bounded queue."""

    def __init__(self, reader: BinlogReader) -> None:
        self.reader = reader
        self.queue: queue.Queue[BinlogRecord | BaseException] = queue.Queue(_QUEUE_RECORDS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cdc-binlog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for record in self.reader.records():
                while not self._stop.is_set():
                    try:
                        self.queue.put(record, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as err:  # handed to the event loop, which raises it
            if not self._stop.is_set():
                self.queue.put(err)

    def take(self, max_records: int, timeout: float) -> list[BinlogRecord | BaseException]:
        """Up to `max_records` records, waiting at most `timeout` s for the first (blocking)."""
        try:
            out = [self.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(out) < max_records:
            try:
                out.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        self._stop.set()
        self.reader.close()
        self._thread.join(timeout=5)


class MySqlSource:
    """`{type: mysql, host, port, user, password, server_id}`: see the module docstring."""

    def __init__(
        self,
        name: str,
        config: MySqlSourceConfig,
        tables: TablesConfig,
        *,
        state_dir: Path | None = None,
        snapshot: str = "never",
        snapshot_chunk_rows: int = 50_000,
        snapshot_workers: int = 1,
    ) -> None:
        self.name = name
        self._workers = snapshot_workers
        self._config = config
        self._tables_config = tables
        self.where = f"job {name}: mysql {config.host}:{config.port}"
        databases = sorted({p.split(".", 1)[0] for p in tables.include})
        self.info = SourceInfo("mysql", name, databases[0] if len(databases) == 1 and "*" not in databases[0] else "")
        state = state_dir if state_dir is not None else Path(tempfile.gettempdir()) / "cdc-state"
        #: Where the job first started streaming (used until a sink holds a position).
        self._bookmark = state / f"{name}.mysql-start.json"
        #: The GTID state every sink holds and its position: where ``resume_by: gtid`` restarts (docs/mysql.md).
        self._gtid_file = state / f"{name}.mysql-gtid.json"
        #: The GTIDs of every transaction up to the stream's position (None: unknown, not recorded).
        self._gtid_state: GtidState | None = None
        #: The GTID state the dump starts after (None: by file and position, at `_start`).
        self._dump_gtids: str | None = None
        #: (commit, GTID state up to it) per yielded batch, until acknowledged.
        self._gtids: deque[tuple[int, str]] = deque(maxlen=_GTID_PENDING)
        self._gtid_acked: tuple[int, str] | None = None
        self._gtid_written_at = 0.0
        self._server = catalog.Server("", True, 0)  # what `start` learns of the server
        #: MySQL's ``Executed_Gtid_Set`` at the bookmark ("": none, or MariaDB).
        self._bookmark_gtids = ""
        self._snapshot_mode = snapshot
        self._chunk_rows = snapshot_chunk_rows
        self._selected: set[tuple[str, str]] = set()
        self._tables: dict[tuple[str, str, tuple[tuple[str, int], ...]], _Table] = {}
        self._base = ""
        self._start: tuple[int, int] = (0, 0)  # (file index, offset) the dump starts at
        self._snapshot: SnapshotReader | WatermarkReader | None = None
        #: The watermark snapshot's chunk marks (``<job>.mysql-watermark.json``) and the filter built from them.
        self._marks_file = state / f"{name}.mysql-watermark.json"
        self._watermark: StreamFilter | None = None
        self._snapshot_tables: list[tuple[str, str]] = []
        self._snapshot_truncates = False
        self._pump: _Pump | None = None
        self._ctl: pymysql.connections.Connection[Any] | None = None
        self.zero_dates = 0  # zero dates delivered as NULL (a counter for metrics)
        self._zero_dates_logged: dict[tuple[str, int], float] = {}  # (table, column) -> last warning time
        #: Snapshot progress per table (rows, rows/s, done), for /status.
        self.snapshot_status: dict[str, dict[str, Any]] = {}
        self._log = log.bind(job=name, source="mysql")

    def _read_bookmark(self) -> tuple[int, int] | None:
        try:
            doc = json.loads(self._bookmark.read_bytes())
            self._bookmark_gtids = str(doc.get("gtids") or "")
            return int(doc["index"]), int(doc["offset"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SourceSetupError(f"{self.where}: unreadable {self._bookmark} ({err}); delete it to start "
                                   "from the current binlog position") from err

    def _write_bookmark(self, start: tuple[int, int], gtids: str) -> None:
        write_state(self._bookmark, json.dumps({"index": start[0], "offset": start[1], "gtids": gtids}).encode(),
                    "the binlog start bookmark")

    def _connect(self) -> pymysql.connections.Connection[Any]:
        c = self._config
        return catalog.connect(c.host, c.port, c.user, c.password.get_secret_value(), c.connect_timeout_s, self.where)

    # -- start-up ---------------------------------------------------------------------

    async def start(self, resume_from: Position | None) -> None:
        await asyncio.to_thread(self._start_blocking, resume_from)

    def _start_blocking(self, resume_from: Position | None) -> None:
        cfg = self._config
        conn = self._connect()
        self._ctl = conn
        try:
            snapshots = self._snapshot_mode in ("initial", "initial_only")
            may_snapshot = snapshots or cfg.on_binlog_gone == "resnapshot"
            server = self._server = catalog.check_server(conn, self.where, cfg.server_id,
                                                         may_snapshot and cfg.snapshot_method == "flush")
            tables = catalog.select_tables(conn, self._tables_config.include, self._tables_config.exclude, self.where)
            if not tables:
                raise MissingTableError(
                    f"{self.where}: no table matches tables.include {self._tables_config.include}; "
                    "name tables as <database>.<table> globs"
                )
            self._selected = set(tables)
            logs = catalog.binary_logs(conn)
            if not logs:
                raise SourceSetupError(f"{self.where}: the server lists no binary logs; is log_bin on?")
            self._base = logs[0].rpartition(".")[0]
            have = {pos.file_index(n) for n in logs}
            mid_snapshot = resume_from is not None and not resume_from.whole and resume_from.commit & 1 == 1
            if (resume_from is None and snapshots) or mid_snapshot:
                # A job killed mid-snapshot (an initial one, or a re-snapshot after a purged binlog)
                # takes a new snapshot whatever its `snapshot` mode.
                self._begin_snapshot(server, tables, truncates=resume_from is not None)
                return
            if resume_from is None:
                # The sinks hold nothing yet: start where the first run started (the source's
                # bookmark, as a slot would keep it), so a retry before the first durable
                # batch loses nothing written since.
                bookmark = self._read_bookmark()
                if bookmark is None:
                    file, offset, self._bookmark_gtids = catalog.binlog_status(conn)
                    bookmark = (pos.file_index(file), offset)
                    self._write_bookmark(bookmark, self._bookmark_gtids)
                self._start = bookmark
                if self._start[0] not in have:
                    if cfg.on_binlog_gone == "resnapshot":
                        self._log.warning("binlog_gone_resnapshotting", needed=pos.file_name(self._base, bookmark[0]),
                                          oldest=logs[0], offset=bookmark[1])
                        self._bookmark.unlink(missing_ok=True)
                        self._begin_snapshot(server, tables, truncates=False)
                        return
                    raise BinlogPurgedError(
                        f"{self.where}: the job started at binlog {pos.file_name(self._base, self._start[0])}, "
                        f"which the server has purged (oldest: {logs[0]}); delete {self._bookmark} to start "
                        "from the current position (changes since the first start are lost to this job), "
                        "or set on_binlog_gone: resnapshot"
                    )
            else:
                self._start = pos.resume_point(resume_from)
                self._check_not_rewound(conn, max(have))
                kept = load_marks(self._marks_file, resume_from.commit)
                # A watermark snapshot's stream filter.
                self._watermark = StreamFilter(kept[1], kept[0]) if kept is not None and kept[1] else None
                if self._start[0] not in have:
                    if cfg.on_binlog_gone == "resnapshot":
                        self._log.warning("binlog_gone_resnapshotting", oldest=logs[0], offset=self._start[1],
                                          needed=pos.file_name(self._base, self._start[0]))
                        self._begin_snapshot(server, tables, truncates=True)
                        return
                    raise BinlogPurgedError(
                        f"{self.where}: the sinks need binlog {pos.file_name(self._base, self._start[0])} at "
                        f"{self._start[1]}, which the server has purged (oldest: {logs[0]}); changes since are "
                        "lost to this job: set on_binlog_gone: resnapshot to re-snapshot every table, or delete "
                        "the sinks' data and the job's state; keep binlogs longer (binlog_expire_logs_seconds)"
                    )
            self._begin_stream(conn, server, resume_from, have, tables)
        except pymysql.Error as err:
            raise SourceConnectionError(f"{self.where}: {first_line(err)}") from err

    def _check_not_rewound(self, conn: pymysql.connections.Connection[Any], newest: int) -> None:
        """Refuse a resume point past the server's end of binlog: its numbering restarted (``RESET
        MASTER``) or this is another server, and every change it sends, even a re-snapshot's,
        would lie below what the sinks hold and be skipped as held."""
        index, offset = self._start
        if index < newest:
            return
        file, end, _ = catalog.binlog_status(conn)
        if (index, offset) <= (pos.file_index(file), end):
            return
        raise BinlogRewoundError(
            f"{self.where}: the sinks hold binlog {pos.file_name(self._base, index)} at {offset}, past the server's "
            f"end of binlog ({file} at {end}): its numbering restarted (RESET MASTER?) or this is another server; "
            "positions cannot go back: delete the sinks' data and the job's state to start over with a new snapshot"
        )

    def _begin_stream(self, conn: pymysql.connections.Connection[Any], server: catalog.Server,
                      resume_from: Position | None, have: set[int], tables: list[tuple[str, str]]) -> None:
        """Open the binlog dump for sinks holding `resume_from` (`_start` is its file and offset).

        ``resume_by: gtid``: after the recorded GTID state when its commit is at or below
        `resume_from` and its binlog file is still there (the sinks skip what they hold
        again); otherwise by file and position, with the state at `_start` when the server
        can tell it. A start the server refuses (error 1236: the GTID state or the file is
        gone) is a purged binlog: fail, or re-snapshot with ``on_binlog_gone: resnapshot``.
        """
        cfg = self._config
        record = self._read_gtid_record(server.mariadb) if resume_from is not None and server.gtids \
            and cfg.resume_by == "gtid" else None
        if record is not None and resume_from is not None:
            commit, state = record
            if commit > resume_from.commit or pos.resume_point(Position(commit))[0] not in have:
                self._log.info("gtid_record_unused", gtids=str(state), position=pos.describe(commit),
                               resume_from=pos.describe(resume_from.commit))
            else:
                self._gtid_state, self._dump_gtids = state, str(state)
                self._start = pos.resume_point(Position(commit))
        if self._dump_gtids is None:
            self._gtid_state = self._gtid_state_at(conn, self._start, self._bookmark_gtids)
        try:
            self._open_stream()
        except BinlogGone as err:
            where = f"GTID state {self._dump_gtids}" if self._dump_gtids else \
                f"position {pos.file_name(self._base, self._start[0])}:{self._start[1]}"
            if cfg.on_binlog_gone == "resnapshot":
                self._log.warning("binlog_gone_resnapshotting", needed=where, error=str(err))
                self._bookmark.unlink(missing_ok=True)
                self._begin_snapshot(server, tables, truncates=resume_from is not None)
                return
            raise BinlogPurgedError(
                f"{self.where}: the server cannot send the binlog from the {where} "
                f"({first_line(err)}); changes since are lost to this job: set on_binlog_gone: resnapshot "
                "to re-snapshot every table, or delete the sinks' data and the job's state"
            ) from err
        except BinlogConnectionLost as err:
            raise SourceConnectionError(f"{self.where}: cannot start the binlog dump: {first_line(err)}") from err

    def _gtid_state_at(self, conn: pymysql.connections.Connection[Any], start: tuple[int, int],
                       executed: str) -> GtidState | None:
        """The GTID state at binlog `start` (MariaDB: ``BINLOG_GTID_POS``; MySQL: `executed`, the
        ``Executed_Gtid_Set`` read with that position, if any); None if unknown."""
        server = self._server
        if not server.gtids:
            return None
        text = catalog.gtid_state_at(conn, pos.file_name(self._base, start[0]), start[1]) if server.mariadb \
            else executed or None
        if text is None:
            return None
        try:
            return GtidState(server.mariadb, text)
        except ValueError as err:
            self._log.warning("gtid_state_unusable", gtids=text, error=str(err))
            return None

    def _read_gtid_record(self, mariadb: bool) -> tuple[int, GtidState] | None:
        """The recorded (commit, GTID state) every sink held, if any (a record without a state,
        as written before GTID resume, is ignored)."""
        try:
            doc = json.loads(self._gtid_file.read_bytes())
            text, commit = doc.get("gtids"), int(doc["commit"])
            if not text or doc.get("server") != ("mariadb" if mariadb else "mysql"):
                return None
            return commit, GtidState(mariadb, str(text))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            self._log.warning("gtid_record_unreadable", path=str(self._gtid_file), error=str(err))
            return None

    def _begin_snapshot(self, server: catalog.Server, tables: list[tuple[str, str]], *, truncates: bool) -> None:
        """Open a consistent snapshot of `tables` (the method: `choose_method`); streaming then
        starts at its position (the watermark method: its first low watermark).

        `truncates`: the sinks may hold rows of an older point (an interrupted snapshot, or a
        stream whose binlog was purged), so each table's snapshot starts with an ``op: "t"``
        event and rows deleted since do not survive in mirrors.
        """
        cfg = self._config
        method, reason = choose_method(cfg.snapshot_method, mariadb=server.mariadb, reload=server.reload)
        if method == "consistent" and not server.mariadb:
            raise SourceSetupError(f"{self.where}: snapshot_method: consistent needs MariaDB (binlog_snapshot_file); "
                                   "MySQL has no lock-free consistent position: use auto, flush or watermark")
        self._log.info("snapshot_method", method=method, reason=reason)
        self._marks_file.unlink(missing_ok=True)
        self._watermark = None
        if method == "watermark":
            self._snapshot = WatermarkReader(self._connect, self._window_reader, workers=self._workers,
                                             zero_dates=cfg.zero_dates)
        else:
            self._snapshot = SnapshotReader(self._connect, mariadb=server.mariadb, workers=self._workers,
                                            lock=method == "flush")
        self._snapshot_tables = sorted(tables)
        self._snapshot_truncates = truncates
        self._start = (pos.file_index(self._snapshot.file), self._snapshot.position)
        self._snapshot_gtids()
        self._log.info("snapshot_started", mode=self._snapshot_mode, tables=len(tables),
                       consistent_point=f"{self._snapshot.file}:{self._snapshot.position}")

    def _snapshot_gtids(self) -> None:
        """The GTID state at the snapshot's consistent point; the old record is void (a re-snapshot)."""
        assert self._snapshot is not None and self._ctl is not None
        self._gtid_file.unlink(missing_ok=True)
        self._dump_gtids = None
        self._gtid_state = self._gtid_state_at(self._ctl, self._start, self._snapshot.gtids)

    def _window_reader(self, file: str, offset: int) -> BinlogReader:
        """A binlog dump for one watermark window (the stream's settings, a short heartbeat)."""
        return self._binlog_reader(file, offset, heartbeat_s=0.2)

    def _binlog_reader(self, file: str, offset: int, *, heartbeat_s: float, gtids: str | None = None) -> BinlogReader:
        """A binlog dump of the selected databases from (`file`, `offset`), or after `gtids`."""
        cfg = self._config
        return BinlogReader(
            host=cfg.host, port=cfg.port, user=cfg.user, password=cfg.password.get_secret_value(),
            server_id=cfg.server_id, log_file=file, log_pos=offset, schemas=sorted({d for d, _ in self._selected}),
            heartbeat_s=heartbeat_s, read_timeout_s=cfg.read_timeout_s, connect_timeout_s=cfg.connect_timeout_s,
            gtids=gtids, mariadb=self._server.mariadb,
        )

    def _open_stream(self) -> None:
        """Open the dump at `_start`, or after `_dump_gtids` (`BinlogGone` if the server refuses)."""
        index, offset = self._start
        reader = self._binlog_reader(pos.file_name(self._base, index), offset,
                                     heartbeat_s=self._config.heartbeat_interval_s, gtids=self._dump_gtids)
        try:
            reader.open()
        except BaseException:
            reader.close()
            raise
        self._pump = _Pump(reader)
        self._log.info("replication_started", binlog=pos.file_name(self._base, index), offset=offset,
                       tables=len(self._selected), resume_by="gtid" if self._dump_gtids else "position",
                       gtids=str(self._gtid_state) if self._gtid_state is not None else None)

    # -- snapshot ---------------------------------------------------------------------

    async def _snapshot_batches(self, policy: BatchPolicy, stop: asyncio.Event) -> AsyncIterator[ChangeBatch]:
        """The snapshot's rows as ``op=r`` at ``Position(before(consistent point), n)``.

        One thread per snapshot connection reads chunks (primary-key ranges) from a shared
        list into a bounded queue; this loop appends them to batches in arrival order.
        """
        reader = self._snapshot
        assert reader is not None and self._ctl is not None
        point = pos.before(*self._start)
        tx = Transaction(0, point, datetime.now(UTC))
        seq = 0
        b = OpenBatch()
        fetch_rows = min(self._chunk_rows, policy.max_events)
        halt = threading.Event()
        out: queue.Queue[tuple[Chunk, list[RawRow] | None] | BaseException | None] = queue.Queue(
            2 * len(reader.connections))
        threads: list[threading.Thread] = []
        try:
            tables: list[SnapshotTable] = []
            rels: dict[str, _Table] = {}
            for database, table in self._snapshot_tables:
                st = await asyncio.to_thread(describe_table, self._ctl, self.name, database, table)
                tables.append(st)
                rel = rels[str(st.schema.table)] = _Table(st.schema, st.codec, None)
                if self._snapshot_truncates:
                    seq += 1
                    # A transaction object of its own: envelopes mark the reads of `tx` as snapshot reads.
                    truncate = Transaction(0, point, tx.commit_ts)
                    (rel.append or b.segment(rel))(("t", truncate, seq, point, None, None))
                    b.events += 1
            work: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
            pending: dict[str, int] = {}
            for st in tables:
                chunks = await asyncio.to_thread(reader.plan, st, self._chunk_rows)
                pending[str(st.schema.table)] = len(chunks)
                for chunk in chunks:
                    work.put(chunk)

            def deliver(item: tuple[Chunk, list[RawRow] | None] | BaseException | None) -> None:
                while not halt.is_set():  # once halted nobody reads: drop it
                    try:
                        out.put(item, timeout=0.2)
                        return
                    except queue.Full:
                        continue

            def read(worker: int) -> None:
                try:
                    while not halt.is_set():
                        try:
                            chunk = work.get_nowait()
                        except queue.Empty:
                            return
                        for rows in reader.rows(chunk, fetch_rows, worker):
                            deliver((chunk, rows))
                            if halt.is_set():
                                return
                        deliver((chunk, None))
                except BaseException as err:  # handed to the event loop, which raises it
                    deliver(err)
                finally:
                    deliver(None)

            threads = [threading.Thread(target=read, args=(n,), name=f"cdc-snapshot-{n}", daemon=True)
                       for n in range(len(reader.connections))]
            for thread in threads:
                thread.start()
            running = len(threads)
            started = shown = time.monotonic()
            self._log.info("snapshot_reading", tables=len(tables), chunks=sum(pending.values()), workers=running)
            while running:
                item = await asyncio.to_thread(out.get)
                if item is None:
                    running -= 1
                    continue
                if isinstance(item, BaseException):
                    if isinstance(item, pymysql.Error):
                        raise SourceConnectionError(f"{self.where}: snapshot: {first_line(item)}") from item
                    raise item
                chunk, rows = item
                st = chunk.table
                name = str(st.schema.table)
                if rows is None:
                    pending[name] -= 1
                    if not pending[name]:
                        elapsed = time.monotonic() - started
                        done = {"rows": st.rows, "rows_per_s": round(st.rows / elapsed) if elapsed > 0 else None,
                                "done": True}
                        self.snapshot_status[name] = done
                        self._log.info("snapshot_table_done", table=name, **done)
                    continue
                rel = rels[name]
                append = rel.append or b.segment(rel)
                for row in rows:
                    seq += 1
                    append(("r", tx, seq, point, None, row))
                b.events += len(rows)
                b.nbytes += 64 * len(rows) * max(len(st.schema.columns), 1)
                st.rows += len(rows)
                if time.monotonic() - shown >= 2:
                    shown = time.monotonic()
                    for t in tables:
                        if not self.snapshot_status.get(str(t.schema.table), {}).get("done"):
                            progress = {"rows": t.rows, "rows_per_s": round(t.rows / (shown - started)),
                                        "done": False}
                            self.snapshot_status[str(t.schema.table)] = progress
                            self._log.info("snapshot_progress", table=str(t.schema.table), **progress)
                if b.full(policy.max_events, policy.max_bytes):
                    yield b.cut(tx.position(seq))
                if stop.is_set():
                    if b.events:
                        yield b.cut(tx.position(seq))
                    return
            if isinstance(reader, WatermarkReader):
                # Kept before the snapshot's last batch: a restart streaming from it filters the same changes.
                await asyncio.to_thread(save_marks, self._marks_file, point, reader.marks)
                self._watermark = StreamFilter(reader.marks, point)
                self._log.info("snapshot_watermarks", chunks=len(reader.marks), window_changes=reader.window_changes,
                               until=pos.describe(self._watermark.until))
            yield b.cut(tx.position())
        except pymysql.Error as err:
            raise SourceConnectionError(f"{self.where}: snapshot: {first_line(err)}") from err
        finally:
            halt.set()
            while True:  # unblock readers waiting on a full queue
                try:
                    out.get_nowait()
                except queue.Empty:
                    break
            for thread in threads:
                await asyncio.to_thread(thread.join, 5)
            self._snapshot = None
            await asyncio.to_thread(reader.close)

    # -- streaming --------------------------------------------------------------------

    async def batches(self, policy: BatchPolicy, stop: asyncio.Event) -> AsyncIterator[ChangeBatch]:
        if self._snapshot is not None:
            async for batch in self._snapshot_batches(policy, stop):
                yield batch
            if self._snapshot_mode == "initial_only" or stop.is_set():
                return
        if self._pump is None:  # after a snapshot (a resume opened it in `start`)
            await asyncio.to_thread(self._open_stream)
        pump = self._pump
        assert pump is not None
        max_events, max_bytes, max_wait = policy.max_events, policy.max_bytes, policy.max_wait_s
        b = OpenBatch()
        index = self._start[0]
        last_yielded = Position(pos.before(*self._start))
        tx: Transaction | None = None
        seq = 0
        gtid: str | None = None
        decoded = 0  # rows since the last pause

        def emit(position: Position) -> ChangeBatch:
            nonlocal last_yielded
            last_yielded = position
            if self._gtid_state is not None and position.whole:
                self._gtids.append((position.commit, str(self._gtid_state)))
            return b.cut(position)

        while not stop.is_set():
            wait = max_wait if not b.events else max(0.001, max_wait - (time.monotonic() - b.opened))
            records = await asyncio.to_thread(pump.take, 512, min(wait, 0.5))
            for rec in records:
                if isinstance(rec, BaseException):
                    if isinstance(rec, BinlogConnectionLost):
                        raise SourceConnectionError(
                            f"{self.where}: binlog connection lost ({rec}); restarting from the last checkpoint"
                        ) from rec
                    if isinstance(rec, CdcError):
                        raise rec
                    raise DecodeError(f"{self.where}: cannot decode the binlog: {first_line(rec)}") from rec
                if isinstance(rec, Rows):
                    if tx is None:
                        continue  # rows outside a transaction (cannot happen with a row binlog)
                    key = (rec.table.database, rec.table.table)
                    if key not in self._selected:
                        continue
                    rel = await self._table(rec.table)
                    first = seq
                    # A watermark snapshot's rows already hold some changes after the stream's start.
                    for part in [rec] if self._watermark is None else self._watermark.admit(rec, tx.commit):
                        seq = self._append_rows(b, rel, part, tx, seq, index)
                    if b.full(max_events, max_bytes):
                        yield emit(tx.position(seq))  # a chunk of a giant transaction
                    decoded += seq - first
                    if decoded >= _ROWS_PER_PAUSE:
                        # Rows are decoded on the event loop: let the other jobs and /metrics run.
                        decoded = 0
                        await asyncio.sleep(0)
                elif isinstance(rec, TxStart):
                    index = pos.file_index(rec.file)
                    tx = Transaction(0, pos.transaction_commit(index, rec.start),
                                     datetime.fromtimestamp(rec.timestamp, UTC))
                    seq = 0
                    gtid = rec.gtid
                elif isinstance(rec, TxCommit):
                    if tx is not None:
                        tx.xid = rec.xid
                        self._hold(gtid)
                        tx.commit_ts = datetime.fromtimestamp(rec.timestamp, UTC)
                        b.complete, tx = tx.position(), None
                        if b.full(max_events, max_bytes) or time.monotonic() - b.opened >= max_wait:
                            yield emit(b.complete)
                elif isinstance(rec, Statement):
                    # DDL (or any statement of its own): refresh schemas; the checkpoint may move past it.
                    # A TRUNCATE of a captured table is its op "t" event instead (no schema change).
                    commit = tx.commit if tx is not None else pos.transaction_commit(index, rec.start)
                    truncated = self._truncated(rec, commit)
                    if truncated is None:
                        self._tables.clear()
                    else:
                        await self._append_truncate(b, truncated, rec, commit, index)
                    tx = None
                    self._hold(gtid)
                    b.complete = Position(commit)
                    self._log.info("binlog_statement", database=rec.database, gtid=gtid,
                                   position=pos.describe(commit), statement=rec.query.split(None, 3)[:3])
                    if not b.events:
                        yield emit(b.complete)
                elif isinstance(rec, Rotate):
                    index = pos.file_index(rec.file)
                elif isinstance(rec, Idle) and tx is None and not b.events and b.complete is None:
                    here = Position(pos.before(pos.file_index(rec.file), rec.end))
                    if here > last_yielded:
                        yield emit(here)  # a heartbeat: nothing in flight, the position moves on
            if b.complete is not None and tx is None and time.monotonic() - b.opened >= max_wait:
                yield emit(b.complete)
        self._log.info("replication_stopping", position=pos.describe(last_yielded.commit))

    def _truncated(self, rec: Statement, commit: int) -> tuple[str, str] | None:
        """The captured table `rec` empties (a ``TRUNCATE``), as the job selected it; None for any
        other statement. `DecodeError` for a TRUNCATE whose table cannot be read from its text."""
        try:
            named = truncated_table(rec.query, rec.database)
        except UnreadableStatement as err:
            raise DecodeError(f"{self.where}: binlog {pos.describe(commit)}: {err}; its rows cannot be removed "
                              "from the sinks: delete the sinks' data and the job's state to start over with a new "
                              "snapshot") from err
        if named is None:
            return None
        if named in self._selected:
            return named
        if self._server.names_ignore_case:  # lower_case_table_names: the server matched the name so
            folded = (named[0].lower(), named[1].lower())
            return next((t for t in sorted(self._selected) if (t[0].lower(), t[1].lower()) == folded), None)
        return None

    async def _append_truncate(self, b: OpenBatch, table: tuple[str, str], rec: Statement, commit: int,
                               index: int) -> None:
        """Append the ``op: "t"`` event of `table`, emptied by statement `rec` (the transaction at
        `commit`), in log order: into the table's open buffer when its rows have one (the schema
        of its last table map), else a new one with the catalog's schema (as the snapshot reads
        it). A table already dropped again has no schema: logged (``truncate_of_dropped_table``),
        nothing appended (a drop is not propagated either)."""
        database, name = table
        rel = next((r for (d, n, _), r in reversed(self._tables.items()) if (d, n) == table), None)
        if rel is None:
            assert self._ctl is not None
            try:
                st = await asyncio.to_thread(describe_table, self._ctl, self.name, database, name)
            except pymysql.Error as err:
                raise SourceConnectionError(f"{self.where}: cannot read the catalog: {first_line(err)}") from err
            if not st.schema.columns:
                self._log.warning("truncate_of_dropped_table", table=f"{database}.{name}",
                                  position=pos.describe(commit))
                return
            rel = _Table(st.schema, st.codec, None)
        if self._watermark is not None:
            marks = self._watermark.truncated(database, name, commit)
            if marks is not None:  # the filter's new state, kept before the truncate can be durable
                await asyncio.to_thread(save_marks, self._marks_file, self._watermark.point, marks)
        if not b.events:
            b.opened = time.monotonic()
        truncate = Transaction(0, commit, datetime.fromtimestamp(rec.timestamp, UTC))
        (rel.append or b.segment(rel))(("t", truncate, 1, (index << 32) | rec.end, None, None))
        b.events += 1
        b.nbytes += 64

    def _zero_date(self, rel: _Table, col: int) -> None:
        """A zero date in column `col`: stop (``zero_dates: fail``) or count it and deliver NULL."""
        if self._config.zero_dates == "fail":
            raise DecodeError(
                f"{self.where}: zero date in {rel.schema.table}.{rel.schema.columns[col].name}; "
                "set zero_dates: null to deliver them as NULL"
            )
        self.zero_dates += 1
        # The first per column, then at most one warning per column every 10 s: a legacy
        # table full of zero dates must not flood the log.
        where, now = (str(rel.schema.table), col), time.monotonic()
        if now - self._zero_dates_logged.get(where, -_ZERO_DATE_LOG_S) >= _ZERO_DATE_LOG_S:
            self._zero_dates_logged[where] = now
            self._log.warning("zero_date_as_null", table=where[0], column=rel.schema.columns[col].name,
                              count=self.zero_dates)

    def _hold(self, gtid: str | None) -> None:
        """Count the committed transaction `gtid` in the GTID state (a GTID it cannot read stops
        the tracking: the job then resumes by position)."""
        state = self._gtid_state
        if gtid is None or state is None:
            return
        try:
            state.add(gtid)
        except ValueError as err:
            self._gtid_state = None
            self._log.warning("gtid_tracking_stopped", gtid=gtid, error=str(err))

    def _append_rows(self, b: OpenBatch, rel: _Table, rec: Rows, tx: Transaction, seq: int, index: int) -> int:
        if not b.events:
            b.opened = time.monotonic()  # the batch's wait starts with its first event
        append = rel.append or b.segment(rel)
        lsn = (index << 32) | rec.end
        body = rec.body
        if body is not None:
            shape = rec.table.shape
            if shape is not rel.shape:
                rel.shape, rel.decode = shape, None if shape is None else compile_change_decoder(
                    shape, rel.codec.types)
            decode = rel.decode
            if decode is not None:
                # Row bytes straight into normalised changes (connectors/mysql/rows.py).
                last = decode(body, rec.op, tx, seq, lsn, append, lambda col: self._zero_date(rel, col))
                b.events += last - seq
                b.nbytes += 64 * (last - seq) * max(len(rel.schema.columns), 1)
                return last
        normalise = rel.normalise
        flagged: dict[tuple[int, int], set[int]] = {}
        for n, side, col, source in rec.flags:
            if source == EMPTY_SET:
                flagged.setdefault((n, side), set()).add(col)
            elif source in ZERO_DATE:
                self._zero_date(rel, col)

        def fixed(image: tuple[Any, ...], n: int, side: int) -> RawRow:
            out = image if normalise is None else normalise(image)
            empty = flagged.get((n, side))
            if empty:
                values = list(out)
                for i in empty:
                    values[i] = []
                return tuple(values)
            return out

        op = rec.op
        if flagged:
            for n, (before, after) in enumerate(rec.images):
                seq += 1
                append((op, tx, seq, lsn, None if before is None else fixed(before, n, 0),
                        None if after is None else fixed(after, n, 1)))
        elif normalise is None:
            for before, after in rec.images:
                seq += 1
                append((op, tx, seq, lsn, before, after))
        else:
            for before, after in rec.images:
                seq += 1
                append((op, tx, seq, lsn, None if before is None else normalise(before),
                        None if after is None else normalise(after)))
        b.events += len(rec.images)
        b.nbytes += 64 * len(rec.images) * max(len(rel.schema.columns), 1)
        return seq

    async def _table(self, table: TableMap) -> _Table:
        """The schema and codec of a table map's rows (cached by name and columns, never by id)."""
        key = (table.database, table.table, tuple((c.name, c.type_code) for c in table.columns))
        rel = self._tables.get(key)
        if rel is not None:
            return rel
        assert self._ctl is not None
        try:
            cat = {c.name: c for c in await asyncio.to_thread(catalog.table_columns, self._ctl, table.database,
                                                                  table.table)}
        except pymysql.Error as err:
            raise SourceConnectionError(f"{self.where}: cannot read the catalog: {first_line(err)}") from err
        types = []
        columns = []
        for c in table.columns:
            ty = binlog_type(c, cat.get(c.name))
            types.append(ty)
            columns.append(Column(c.name, ty.name, c.type_code, -1, c.primary))
        schema = TableSchema(TableId(self.name, table.database, table.table), tuple(columns))
        rel = _Table(schema, MySqlRowCodec(columns, types), compile_normaliser(types))
        self._tables[key] = rel
        self._log.info("relation", table=str(schema.table), columns=len(columns), key=list(schema.key))
        return rel

    # -- acknowledgement --------------------------------------------------------------

    async def acknowledge(self, position: Position) -> None:
        """Nothing to tell the server: a binlog has no slot. Retention is the server's
        (binlog_expire_logs_seconds); a purged position fails the next start clearly.

        Records the GTID state every sink holds, with its position (``<job>.mysql-gtid.json``,
        at most once a second and at close): where ``resume_by: gtid`` restarts (docs/mysql.md)."""
        pending = self._gtids
        while pending and pending[0][0] <= position.commit:
            self._gtid_acked = pending.popleft()
        if self._gtid_acked is not None and time.monotonic() - self._gtid_written_at >= _GTID_WRITE_S:
            await asyncio.to_thread(self._write_gtid)

    def _write_gtid(self) -> None:
        acked = self._gtid_acked
        if acked is None:
            return
        self._gtid_written_at = time.monotonic()
        commit, gtids = acked
        write_state(self._gtid_file, json.dumps({
            "gtids": gtids, "server": "mariadb" if self._server.mariadb else "mysql",
            "position": pos.describe(commit), "commit": commit}).encode(), "the GTID state the sinks hold")

    async def close(self) -> None:
        try:
            await asyncio.to_thread(self._write_gtid)
        except CheckpointError as err:  # the file lags (a resume by GTID re-reads more); close the rest
            self._log.warning("gtid_state_not_written", error=str(err))
        pump, self._pump = self._pump, None
        if pump is not None:
            await asyncio.to_thread(pump.close)
        snap, self._snapshot = self._snapshot, None
        if snap is not None:
            await asyncio.to_thread(snap.close)
        ctl, self._ctl = self._ctl, None
        if ctl is not None:
            with contextlib.suppress(pymysql.Error):
                ctl.close()
