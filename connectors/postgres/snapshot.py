"""Snapshots of PostgreSQL tables: the consistent initial load and incremental chunks.

Tables are read in chunks of heap pages (``ctid`` ranges; PostgreSQL 14+ scans a TID
range directly), so every table splits evenly whether or not it has a usable key, and
rows come out of ``COPY ... TO STDOUT`` in the text format pgoutput also uses: both go
through the same `PgRowCodec` (connectors/postgres/copytext.py).

Two ways to read a chunk:

* **Initial** (`InitialSnapshot`): the slot is created with ``(SNAPSHOT 'export')``; N
  worker connections import that snapshot (``SET TRANSACTION SNAPSHOT``) and copy chunks in
  parallel. Rows are emitted before the stream, which starts at the slot's consistent
  point: no gap, no overlap. Each worker holds an AccessShare lock on the tables it has
  read until the snapshot ends, which blocks upstream ``TRUNCATE`` and DDL meanwhile.
* **Incremental** (`IncrementalSnapshot`, the DBLog watermark method): while the stream
  flows, a chunk is bracketed by a low and a high watermark written into the WAL with
  ``pg_logical_emit_message``; when the stream reaches the high watermark, chunk rows whose
  key changed between the watermarks are dropped (the stream carries a newer state) and
  the rest are emitted there as ``op=r``. Used to resume an interrupted initial snapshot
  (an exported snapshot dies with its connection), for tables added to a running job, and
  for ``cdc snapshot`` requests.

Which chunks are durable in every sink is recorded in ``<state_dir>/<job>.snapshot.json``
(`SnapshotProgress`), so a crash resumes mid-table.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import select
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import orjson
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import structlog
from psycopg import pq, sql

from cdc.checkpoints import write_state
from cdc.errors import CheckpointError, SourceConnectionError, SourceSetupError, first_line
from cdc.events import Column, RawRow, TableId, TableSchema
from connectors.postgres.catalog import SESSION_OPTIONS, connect_error
from connectors.postgres.copytext import CopyTextParser
from connectors.postgres.types import PgRowCodec, PgTypeCatalog

log = structlog.get_logger(__name__)

#: Prefix of the watermark messages of incremental snapshots (never passed to sinks).
WATERMARK_PREFIX: Final = "cdc_watermark"
#: Longest wait for in-flight commits to become visible after a low watermark.
SETTLE_S: Final = 0.25


@dataclass(frozen=True, slots=True)
class Chunk:
    """Heap pages ``[first, end)`` of one table; `end` None means to the end of the table.

    `after` (a ``ctid`` text such as ``(12,7)``) skips the rows up to and including that
    tuple: the part of the chunk an interrupted initial snapshot already made durable.
    """

    number: int
    first: int
    end: int | None
    after: str | None = None


@dataclass(slots=True)
class SnapshotTable:
    """One table to snapshot: its schema as the stream describes it, and its chunk plan."""

    schema: TableSchema
    codec: PgRowCodec
    chunks: list[Chunk]
    rows_estimate: int
    done: set[int] = field(default_factory=set)
    rows: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return str(self.schema.table)

    def remaining(self) -> list[Chunk]:
        return [c for c in self.chunks if c.number not in self.done]

    def copy_query(self, chunk: Chunk, *, csv: bool = False, with_ctid: bool = False) -> sql.Composed:
        """``COPY`` of the chunk's rows in heap order; `with_ctid` appends each row's ``ctid``
        as a last column (where the initial snapshot notes how far a chunk got)."""
        t = self.schema.table
        names: list[sql.Composable] = [sql.Identifier(c.name) for c in self.schema.columns]
        if with_ctid:
            names.append(sql.SQL("ctid"))
        where = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({chunk.first},0)"))
        if chunk.end is not None:
            where = sql.SQL("{} AND ctid < {}::tid").format(where, sql.Literal(f"({chunk.end},0)"))
        if chunk.after is not None:
            where = sql.SQL("{} AND ctid > {}::tid").format(where, sql.Literal(chunk.after))
        return sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT{}").format(
            sql.SQL(", ").join(names), sql.Identifier(t.schema, t.table), where,
            sql.SQL(" (FORMAT csv)") if csv else sql.SQL(""),
        )


# -- catalog ------------------------------------------------------------------------------

_COLUMNS_SQL: Final = """
SELECT c.oid::bigint, a.attname, a.atttypid::bigint, a.atttypmod, c.relreplident,
       coalesce(a.attnum = ANY(pk.indkey), false) AS in_pk,
       coalesce(a.attnum = ANY(ri.indkey), false) AS in_replident,
       (pg_relation_size(c.oid) / current_setting('block_size')::int)::bigint AS pages,
       greatest(c.reltuples, 0)::bigint AS tuples
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary
LEFT JOIN pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident
WHERE n.nspname = %s AND c.relname = %s
ORDER BY a.attnum
"""


def key_flags(replident: str, in_pk: Sequence[bool], in_replident: Sequence[bool]) -> list[bool]:
    """Which columns identify a row, as cdc reports them (`TableSchema.key`).

    pgoutput flags the replica identity: the primary key (DEFAULT), the index (USING
    INDEX), or every column (FULL). Under FULL cdc reports the primary key when there is
    one, since every column is no key a sink can merge on.
    """
    if replident == "i":
        return list(in_replident)
    if replident == "f":
        return list(in_pk) if any(in_pk) else [True] * len(in_pk)
    if replident == "d":
        return list(in_pk)
    return [False] * len(in_pk)


async def describe_tables(
    conn: psycopg.AsyncConnection[Any],
    source: str,
    tables: Sequence[tuple[str, str]],
    types: PgTypeCatalog,
    chunk_rows: int,
) -> list[SnapshotTable]:
    """Schema (as the stream will describe it) and a page-chunk plan for each table."""
    out = []
    for schema_name, table_name in tables:
        cur = await conn.execute(_COLUMNS_SQL, (schema_name, table_name))
        rows = await cur.fetchall()
        if not rows:
            raise SourceSetupError(f"table {schema_name}.{table_name} has no columns to snapshot")
        replident = str(rows[0][4])
        keys = key_flags(replident, [bool(r[5]) for r in rows], [bool(r[6]) for r in rows])
        columns = tuple(
            Column(str(r[1]), types.name(int(r[2])), int(r[2]), int(r[3]), k)
            for r, k in zip(rows, keys, strict=True)
        )
        pages, tuples = int(rows[0][7]), int(rows[0][8])
        schema = TableSchema(TableId(source, schema_name, table_name), columns)
        out.append(SnapshotTable(schema, PgRowCodec(columns, types), plan_chunks(pages, tuples, chunk_rows), tuples))
    return out


def plan_chunks(pages: int, tuples: int, chunk_rows: int) -> list[Chunk]:
    """Page ranges of about `chunk_rows` rows each; the last is open-ended."""
    per_page = tuples / pages if pages and tuples else 100.0
    step = max(1, int(chunk_rows / max(per_page, 1.0)))
    count = max(1, math.ceil(pages / step))
    return [Chunk(i, i * step, (i + 1) * step if i < count - 1 else None) for i in range(count)]


# -- progress -----------------------------------------------------------------------------


class SnapshotProgress:
    """Which chunks of which tables are durable in every sink: ``<state_dir>/<job>.snapshot.json``.

    A table is `done` once every chunk is; a table with chunks left resumes with the
    incremental method. Written atomically; only the source's acknowledgement moves it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tables: dict[str, dict[str, Any]] = {}
        self.requested: list[str] = []

    def load(self) -> SnapshotProgress:
        try:
            doc = orjson.loads(self.path.read_bytes())
            self.tables = dict(doc.get("tables", {}))
        except FileNotFoundError:
            self.tables = {}
        except (orjson.JSONDecodeError, AttributeError, TypeError) as err:
            raise CheckpointError(f"{self.path}: unreadable snapshot progress ({err}); move it away") from err
        return self

    def save(self) -> None:
        write_state(self.path, orjson.dumps({"tables": self.tables}, option=orjson.OPT_INDENT_2), "snapshot progress")

    def known(self, table: str) -> bool:
        return table in self.tables

    def is_done(self, table: str) -> bool:
        entry = self.tables.get(table)
        return entry is not None and entry.get("status") == "done"

    def start(self, t: SnapshotTable, held: tuple[int, int] | None = None) -> None:
        """Record a table's chunk plan (keeping chunks already done under the same plan).

        Resuming, `held` is the snapshot position ``(commit, seq)`` every sink holds: a chunk
        whose rows the initial snapshot made durable only in part resumes after its last
        durable row (`Chunk.after`), so no row is written twice under another event id; a
        chunk whose end is durable is done. Marks of rows no sink holds are dropped from the
        entry (the caller saves it), so a later resume cannot take them for held.
        """
        entry = self.tables.get(t.name)
        if entry is not None and entry.get("status") == "running":
            plan = [Chunk(int(n), int(a), None if b is None else int(b)) for n, a, b in entry["chunks"]]
            t.done = {int(n) for n in entry.get("done", [])}
            t.rows = int(entry.get("rows", 0))
            pieces: dict[str, list[list[Any]]] = entry.get("pieces", {})
            point = entry.get("point")
            for i, c in enumerate(plan):
                marks = pieces.get(str(c.number), [])
                if c.number in t.done or point is None or not marks:
                    continue
                durable = [] if held is None else [m for m in marks if (int(point), int(m[0])) <= held]
                # Forget the marks of rows no sink holds: a later resume, whose sinks hold a
                # streaming position past every snapshot position, must not take them for held.
                if durable:
                    pieces[str(c.number)] = durable
                else:
                    del pieces[str(c.number)]
                if any(m[1] is None for m in durable):  # its end mark: every row is held
                    self.chunk_done(t, c.number, sum(int(m[2]) for m in durable))
                    t.done.add(c.number)
                    t.rows = int(entry.get("rows", 0))
                elif durable:
                    plan[i] = replace(c, after=str(durable[-1][1]))
            t.chunks = plan
            return
        self.tables[t.name] = {
            "status": "running",
            "chunks": [[c.number, c.first, c.end] for c in t.chunks],
            "done": [],
            "rows": 0,
        }

    def piece(self, t: SnapshotTable, point: int, chunk: int, last_seq: int, ctid: str | None, rows: int) -> None:
        """Note that the initial snapshot's rows of `chunk` up to tuple `ctid` sit at or below
        ``Position(point, last_seq)`` (`ctid` None: the chunk's end). Saved before the batch
        holding them goes to the sinks, so a resume knows what they hold (`start`)."""
        entry = self.tables[t.name]
        entry["point"] = point
        entry.setdefault("pieces", {}).setdefault(str(chunk), []).append([last_seq, ctid, rows])

    def chunk_done(self, t: SnapshotTable, chunk: int, rows: int) -> None:
        entry = self.tables[t.name]
        entry.get("pieces", {}).pop(str(chunk), None)
        if chunk not in entry["done"]:
            entry["done"].append(chunk)
            entry["rows"] = int(entry.get("rows", 0)) + rows
        if len(entry["done"]) == len(entry["chunks"]):
            entry["status"] = "done"


# -- reading chunks -------------------------------------------------------------------------


#: Rows handed over at a time while copying a chunk (bounds the initial snapshot's memory).
PIECE_ROWS: Final = 10_000


async def copy_pieces(
    conn: psycopg.AsyncConnection[Any], t: SnapshotTable, chunk: Chunk
) -> AsyncIterator[list[RawRow]]:
    """The rows of `chunk` as raw text rows, in pieces of about `PIECE_ROWS`."""
    parser = CopyTextParser(len(t.schema.columns), f"snapshot of {t.name} chunk {chunk.number}")
    rows: list[RawRow] = []
    async with conn.cursor() as cur, cur.copy(t.copy_query(chunk)) as copy:
        async for block in copy:
            rows.extend(parser.feed(bytes(block)))
            if len(rows) >= PIECE_ROWS:
                yield rows
                rows = []
    parser.close()
    yield rows


async def copy_chunk(conn: psycopg.AsyncConnection[Any], t: SnapshotTable, chunk: Chunk) -> list[RawRow]:
    """Every row of `chunk` at once (incremental windows need them all; chunk size bounds it)."""
    rows: list[RawRow] = []
    async for piece in copy_pieces(conn, t, chunk):
        rows.extend(piece)
    return rows


async def connect(conninfo: str, timeout: int) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, options=SESSION_OPTIONS, client_encoding="UTF8", connect_timeout=timeout
    )


@dataclass(slots=True)
class ChunkRows:
    """Rows of one chunk (or a piece of it), handed from a reader to the source's batch builder."""

    table: SnapshotTable
    chunk: Chunk
    rows: list[RawRow]
    last: bool = True  # the chunk's last piece
    block: pa.Table | None = None  # the piece's rows in columns (the initial snapshot), instead of `rows`
    last_ctid: str | None = None  # the ctid of the piece's last row (the initial snapshot)


#: CSV bytes gathered from COPY before they are parsed into one Arrow block, shared by the
#: workers (each gathers ``CSV_BLOCK_BYTES / workers``, at least `MIN_BLOCK_BYTES`): what
#: a snapshot holds in flight does not grow with its workers.
CSV_BLOCK_BYTES: Final = 2 << 20
MIN_BLOCK_BYTES: Final = 512 << 10


def copy_out(conn: psycopg.Connection[Any], query: sql.Composable, block_bytes: int,
             stopping: threading.Event) -> Iterator[bytearray]:
    """The output of ``COPY ... TO STDOUT`` `query` in blocks of about `block_bytes`, whole rows each.

    Drives libpq through psycopg's `PGconn`: one C call and one append per row, where
    iterating psycopg's `Copy` runs a generator, a lock and a wait loop per row and holds
    the interpreter lock several times as long (measured: the daemon's CPU time for a 1M-row
    snapshot into Delta fell from 6.3 s to 3.5 s, `bench/pg_snapshot.py`).
    Raises `SnapshotStopped` when `stopping` is set while waiting for the server.
    """
    pgconn = conn.pgconn
    pgconn.send_query(query.as_bytes(conn))
    result = _next_result(pgconn, stopping)
    if result is None or result.status != pq.ExecStatus.COPY_OUT:
        _drain(pgconn, stopping)
        raise _result_error(conn, result, "COPY did not start")
    get, consume, fd = pgconn.get_copy_data, pgconn.consume_input, pgconn.socket
    buf = bytearray()
    while True:
        nbytes, data = get(1)
        if nbytes > 0:
            buf += data
            if len(buf) >= block_bytes:
                yield buf
                buf = bytearray()
        elif nbytes == 0:
            _readable(fd, stopping)
            consume()
        else:
            break
    final = _next_result(pgconn, stopping)
    _drain(pgconn, stopping)
    if final is None or final.status != pq.ExecStatus.COMMAND_OK:
        raise _result_error(conn, final, "COPY failed")
    if buf:
        yield buf


def _readable(fd: int, stopping: threading.Event) -> None:
    while not select.select([fd], [], [], 0.5)[0]:
        if stopping.is_set():
            raise SnapshotStopped


def _next_result(pgconn: Any, stopping: threading.Event) -> Any:
    pgconn.consume_input()
    while pgconn.is_busy():
        _readable(pgconn.socket, stopping)
        pgconn.consume_input()
    return pgconn.get_result()


def _drain(pgconn: Any, stopping: threading.Event) -> None:
    while _next_result(pgconn, stopping) is not None:
        pass


def _result_error(conn: psycopg.Connection[Any], result: Any, what: str) -> psycopg.Error:
    if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
        return psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
    message = conn.pgconn.error_message.decode(errors="replace").strip()
    return psycopg.OperationalError(f"{what}: {message or 'no result from the server'}")


def parse_csv_block(data: bytes | bytearray, width: int) -> pa.Table:
    """Rows of ``COPY ... (FORMAT csv)`` output as one Arrow binary column per column.

    Values stay the exact text PostgreSQL's output functions print (what pgoutput sends):
    an unquoted empty field is NULL, a quoted one the empty string.
    """
    names = [str(i) for i in range(width)]
    return pacsv.read_csv(
        pa.BufferReader(pa.py_buffer(data)),
        read_options=pacsv.ReadOptions(column_names=names, block_size=max(len(data), 1 << 20)),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.binary() for n in names}, null_values=[""], strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


class InitialSnapshot:
    """Parallel copy of every chunk under one exported snapshot (see the module docstring).

    Each worker is a blocking connection in its own thread: it reads its chunks with
    ``COPY ... (FORMAT csv)`` and parses every MiB or two into an Arrow block (pyarrow's CSV
    reader, no Python work per value), so a worker costs one message read per row in Python
    and the rest runs in C++ outside the interpreter lock. `run` fills `queue` with
    `ChunkRows` carrying blocks (bounded: workers wait while the source is busy) and puts
    None when every chunk is read. When a worker fails, `run` raises its error (naming the
    table) without the None: a consumer waits on the queue and on `run` at once (`next_item`).
    """

    def __init__(self, conninfo: str, snapshot_name: str, tables: list[SnapshotTable], workers: int,
                 connect_timeout: int, where: str = "postgres") -> None:
        self._where = where
        self._conninfo = conninfo
        self._snapshot = snapshot_name
        self.tables = tables
        self._workers = max(1, workers)
        self._block_bytes = max(MIN_BLOCK_BYTES, CSV_BLOCK_BYTES // self._workers)
        self._timeout = connect_timeout
        self.queue: asyncio.Queue[ChunkRows | None] = asyncio.Queue(maxsize=2)
        self.imported = asyncio.Event()
        self._stopping = threading.Event()

    async def run(self) -> None:
        todo: deque[tuple[SnapshotTable, Chunk]] = deque((t, c) for t in self.tables for c in t.remaining())
        workers = min(self._workers, max(1, len(todo)))
        loop = asyncio.get_running_loop()
        conns: list[psycopg.Connection[Any]] = []
        working = False
        try:
            for _ in range(workers):
                conns.append(await asyncio.to_thread(self._connect))
            self.imported.set()
            working = True  # from here on each worker thread closes its own connection
            # The first failure ends the snapshot: the other workers see `_stopping` (gather
            # retrieves what they raise then).
            await asyncio.gather(*(asyncio.to_thread(self._work, conn, todo, loop) for conn in conns))
        except psycopg.OperationalError as err:
            raise connect_error(f"{self._where}: snapshot", err, SourceConnectionError) from err
        except psycopg.Error as err:
            raise SourceSetupError(f"{self._where}: snapshot failed: {first_line(err)}") from err
        finally:
            self._stopping.set()
            for conn in conns:
                if not working:
                    conn.close()
                elif not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.cancel_safe(timeout=2)  # stop a COPY still running in a worker thread
        await self.queue.put(None)

    async def next_item(self, reading: asyncio.Task[None]) -> ChunkRows | None:
        """The next item of `queue`, or None at the end; raises what `run` (the task `reading`)
        raised once the items it queued are consumed, instead of waiting for ever."""
        if not self.queue.empty() or reading.done():
            if not self.queue.empty():
                return self.queue.get_nowait()
            reading.result()
            return None
        get = asyncio.ensure_future(self.queue.get())
        try:
            await asyncio.wait({get, reading}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            return get.result()
        return await self.next_item(reading)

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._conninfo, autocommit=True, options=SESSION_OPTIONS, client_encoding="UTF8",
                               connect_timeout=self._timeout)
        try:
            conn.execute("SET synchronize_seqscans = off")  # heap order within a chunk (before PG 14)
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self._snapshot)))
        except BaseException:
            conn.close()
            raise
        return conn

    def _work(self, conn: psycopg.Connection[Any], todo: deque[tuple[SnapshotTable, Chunk]],
              loop: asyncio.AbstractEventLoop) -> None:
        """One worker thread: copy chunks until none are left, handing blocks to the event loop."""
        with conn:
            self._copy_chunks(conn, todo, loop)

    def _copy_chunks(self, conn: psycopg.Connection[Any], todo: deque[tuple[SnapshotTable, Chunk]],
                     loop: asyncio.AbstractEventLoop) -> None:
        while not self._stopping.is_set():
            try:
                t, chunk = todo.popleft()
            except IndexError:
                return
            try:
                self._copy_chunk(conn, t, chunk, loop)
            except psycopg.OperationalError as err:
                raise SourceConnectionError(f"{self._where}: snapshot of {t.name}: {first_line(err)}") from err
            except psycopg.errors.InsufficientPrivilege as err:
                raise SourceSetupError(
                    f"{self._where}: snapshot of {t.name} refused: {first_line(err)} "
                    f"(grant SELECT on {t.name} to the job's role)"
                ) from err
            except psycopg.Error as err:
                raise SourceSetupError(f"{self._where}: snapshot of {t.name} failed: {first_line(err)}") from err

    def _copy_chunk(self, conn: psycopg.Connection[Any], t: SnapshotTable, chunk: Chunk,
                    loop: asyncio.AbstractEventLoop) -> None:
        """Copy one chunk, handing its blocks over and then its end mark."""
        width = len(t.schema.columns)
        if width == 0:  # a table without columns: COPY text gives one empty line per row
            for lines in copy_out(conn, t.copy_query(chunk), self._block_bytes, self._stopping):
                self._hand_over(loop, ChunkRows(t, chunk, [() for _ in range(lines.count(b"\n"))], last=False))
        else:
            query = t.copy_query(chunk, csv=True, with_ctid=True)
            for data in copy_out(conn, query, self._block_bytes, self._stopping):
                block = parse_csv_block(data, width + 1)
                ctid = block.column(width)[-1].as_py()
                self._hand_over(loop, ChunkRows(t, chunk, [], last=False, block=block.select(list(range(width))),
                                                last_ctid=ctid.decode() if isinstance(ctid, bytes) else None))
        self._hand_over(loop, ChunkRows(t, chunk, [], last=True))

    def _hand_over(self, loop: asyncio.AbstractEventLoop, item: ChunkRows) -> None:
        """Put `item` on the queue from a worker thread, waiting while it is full; give up on stop."""
        future = asyncio.run_coroutine_threadsafe(self.queue.put(item), loop)
        while True:
            try:
                future.result(timeout=0.5)
                return
            except concurrent.futures.TimeoutError:
                if self._stopping.is_set() or loop.is_closed():
                    future.cancel()
                    raise SnapshotStopped from None


class SnapshotStopped(Exception):
    """A worker thread noticed the snapshot was stopped while it waited to hand over rows."""


@dataclass(slots=True)
class Window:
    """One incremental chunk between its watermarks: the keys the stream changed meanwhile."""

    chunk: ChunkRows
    key_index: tuple[int, ...]
    changed: set[tuple[object, ...]] = field(default_factory=set)
    truncated: bool = False
    open: bool = False
    consumed: asyncio.Event = field(default_factory=asyncio.Event)

    def surviving(self) -> list[RawRow]:
        """Chunk rows the stream did not change between the watermarks."""
        if self.truncated:
            return []
        idx, changed = self.key_index, self.changed
        if not changed:
            return self.chunk.rows
        return [r for r in self.chunk.rows if tuple(r[i] for i in idx) not in changed]


class IncrementalSnapshot:
    """Chunks read one at a time between watermarks while the stream flows.

    `windows` maps a watermark id to its `Window`; the source looks them up when the
    stream brings the watermark messages (``low <id>`` / ``high <id>``). Every error names
    the job (`where`, the source's ``job J: postgres host:port/db``) and the table being
    read (all of them while none is yet).
    """

    def __init__(self, conninfo: str, tables: list[SnapshotTable], connect_timeout: int,
                 where: str = "postgres") -> None:
        self._conninfo = conninfo
        self._tables = tables
        self._timeout = connect_timeout
        self._where = where
        self.windows: dict[str, Window] = {}

    async def run(self) -> None:
        what = f"{self._where}: incremental snapshot of {', '.join(t.name for t in self._tables)}"
        try:
            conn = await connect(self._conninfo, self._timeout)
        except psycopg.OperationalError as err:
            raise connect_error(f"{what}: cannot connect", err, SourceConnectionError) from err
        try:
            # Changes of a transaction that overlapped the publication gaining a table may
            # not be published (PostgreSQL decodes them with the catalog of their start):
            # read nothing before every such transaction has ended.
            await self._settle(conn, None)
            for t in self._tables:
                what = f"{self._where}: incremental snapshot of {t.name}"
                key_index = tuple(i for i, c in enumerate(t.schema.columns) if c.key)
                if not key_index:
                    raise SourceSetupError(
                        f"{self._where}: table {t.name} has no primary key or replica identity index: it cannot be "
                        "snapshotted while streaming; add a key, or start the job over (its initial snapshot needs "
                        "none)"
                    )
                for chunk in t.remaining():
                    wid = uuid.uuid4().hex
                    # Registered before the low watermark exists: the stream may read the
                    # watermark before this connection hears back from the server.
                    window = Window(ChunkRows(t, chunk, []), key_index)
                    self.windows[wid] = window
                    await self._emit(conn, f"low {wid}")
                    await self._settle(conn, SETTLE_S)
                    window.chunk.rows = await copy_chunk(conn, t, chunk)
                    await self._emit(conn, f"high {wid}")
                    await window.consumed.wait()
                    del self.windows[wid]
        except psycopg.OperationalError as err:
            raise SourceConnectionError(f"{what}: {first_line(err)}") from err
        except psycopg.errors.InsufficientPrivilege as err:
            raise SourceSetupError(f"{what} refused: {first_line(err)} (grant SELECT on the table to the job's "
                                   "role)") from err
        except psycopg.Error as err:
            raise SourceSetupError(f"{what} failed: {first_line(err)}") from err
        finally:
            await conn.close()

    @staticmethod
    async def _settle(conn: psycopg.AsyncConnection[Any], limit_s: float | None) -> None:
        """Wait until the transactions running now have ended (at most `limit_s`, if given).

        After a low watermark: PostgreSQL writes a commit record before it shows the
        transaction to new snapshots; a chunk read in between would miss a change the stream
        delivers before the window opens, and resurrect an old row. Transactions still
        running after `SETTLE_S` have not written their commit record and will commit
        inside the window.
        """
        cur = await conn.execute("SELECT array(SELECT pg_snapshot_xip(pg_current_snapshot()))::text")
        row = await cur.fetchone()
        running = row[0] if row is not None else "{}"
        started = time.monotonic()
        told = started
        while running not in ("{}", None) and (limit_s is None or time.monotonic() - started < limit_s):
            await asyncio.sleep(0.002)
            if time.monotonic() - told >= 10:
                log.info("snapshot_waiting_for_transactions", running=running)
                told = time.monotonic()
            cur = await conn.execute(
                "SELECT array(SELECT x FROM unnest(%s::xid8[]) AS x "
                "WHERE x IN (SELECT pg_snapshot_xip(pg_current_snapshot())))::text",
                (running,),
            )
            row = await cur.fetchone()
            running = row[0] if row is not None else "{}"

    @staticmethod
    async def _emit(conn: psycopg.AsyncConnection[Any], content: str) -> None:
        await conn.execute("SELECT pg_logical_emit_message(false, %s, %s)", (WATERMARK_PREFIX, content))


def progress_fields(t: SnapshotTable) -> dict[str, Any]:
    """rows, rows/s and ETA of one table, for logs and metrics."""
    elapsed = max(time.monotonic() - t.started, 1e-6)
    rate = t.rows / elapsed
    done, total = len(t.done), len(t.chunks)
    left = max(t.rows_estimate - t.rows, 0)
    eta = left / rate if rate > 0 and t.rows_estimate else None
    return {"table": t.name, "rows": t.rows, "rows_estimate": t.rows_estimate, "rows_per_s": round(rate),
            "chunks_done": done, "chunks": total, "eta_s": round(eta, 1) if eta is not None else None}
