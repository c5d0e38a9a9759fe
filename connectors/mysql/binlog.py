"""The one adapter around python-mysql-replication (`pymysqlreplication`).

Nothing else in cdc imports the library. `BinlogReader` opens a binlog dump at a
binlog file and position, or after a GTID state, and turns the library's events into
the small typed records below; everything the library gets wrong or does silently is
handled here:

* **File and position: never ``is_mariadb=True``.** With it the library ignores
  `log_file`/`log_pos` and replays from the first binlog; a dump by file and position
  uses ``is_mariadb=False``, ``resume_stream=True``, which MariaDB and MySQL both serve.
* **GTID dumps with a correct packet.** The library's MariaDB GTID dump (``SET
  @slave_connect_state`` then ``COM_BINLOG_DUMP``) declares 14 bytes but sends 15: the
  server drops the connection while catching up on a backlog, and the library then
  reconnects from the original GTID (over 100k duplicate transactions in 15 s). Its
  MySQL ``COM_BINLOG_DUMP_GTID`` is sized right but names a file of three NUL bytes. The
  stream connection rewrites both with `corrected_dump_packet` before they leave (the
  MySQL one with an empty name, **untested here**). Events of a GTID dump carry the same
  binlog file and positions as a dump by file and position.
* **No silent reconnects.** The library reconnects on errors 2006/2013 from wherever
  its own mutable `log_pos` (or its original GTID) points, which can be mid-transaction
  or far behind, and replays or skips events without telling anyone. The stream
  connection here raises `BinlogConnectionLost` instead, so the source fails with a
  retryable error and the daemon restarts it from its own committed position. A dump
  the server refuses (error 1236: the GTID state or file is gone) raises `BinlogGone`.
* **Schemas by table map, never by table id across a rotate.** Table ids are not
  stable across server restarts; the reader forgets every table map on a rotate.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pymysql.connections
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import FIELD_TYPE, NONE_SOURCE
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import DeleteRowsEvent, RowsEvent, TableMapEvent, UpdateRowsEvent, WriteRowsEvent

from connectors.mysql.rows import RowColumn, RowDecoder, compile_decoder, text_encoding

#: The client error codes of a lost connection (CR_SERVER_GONE_ERROR, CR_SERVER_LOST).
_LOST = frozenset({2006, 2013})
#: ER_MASTER_FATAL_ERROR_READING_BINLOG: the server cannot send what the dump asked for.
_FATAL_READING_BINLOG = 1236
COM_BINLOG_DUMP = 0x12
COM_BINLOG_DUMP_GTID = 0x1E
#: COM_BINLOG_DUMP_GTID flag: the dump starts after the GTID set in its data.
BINLOG_THROUGH_GTID = 0x04


class BinlogConnectionLost(Exception):
    """The binlog dump connection dropped; the caller restarts from its own position."""


class BinlogGone(BinlogConnectionLost):
    """The server refused the dump's start (error 1236): its GTID state or binlog file is gone.

    The server's message says which (MariaDB: ``Could not find GTID state requested by
    slave in any binlog files``; MySQL: ``... the master has purged binary logs containing
    GTIDs that the slave requires``)."""


def _packet(payload: bytes) -> bytes:
    """`payload` behind the 4-byte header of a client command (3-byte length, sequence id 0)."""
    return struct.pack("<I", len(payload))[:3] + b"\x00" + payload


def binlog_dump_packet(*, server_id: int, file: str, position: int, flags: int = 0) -> bytes:
    """``COM_BINLOG_DUMP``: 1 command byte, position (4), flags (2), server id (4), file name
    (the rest; empty for a MariaDB GTID dump, which starts after ``@slave_connect_state``)."""
    return _packet(struct.pack("<BIHI", COM_BINLOG_DUMP, position, flags, server_id) + file.encode())


def gtid_dump_packet(*, server_id: int, gtid_set: bytes, flags: int = 0, file: str = "", position: int = 4) -> bytes:
    """MySQL's ``COM_BINLOG_DUMP_GTID``: 1 command byte, flags (2), server id (4), file name
    size (4) and name, position (8), data size (4) and the encoded GTID set (data)."""
    name = file.encode()
    return _packet(struct.pack("<BHII", COM_BINLOG_DUMP_GTID, flags | BINLOG_THROUGH_GTID, server_id, len(name))
                   + name + struct.pack("<QI", position, len(gtid_set)) + gtid_set)


def corrected_dump_packet(data: bytes) -> bytes:
    """`data` (a client packet with its header) with a binlog dump command rebuilt right.

    The library's MariaDB GTID dump declares 14 bytes and sends 15 (the file name is four
    NUL bytes); its MySQL ``COM_BINLOG_DUMP_GTID`` names a file of three NUL bytes (name
    size 3). Both are rebuilt from their fields, NUL file names as empty ones, with the
    length they have; every other packet (a dump by file and position too) comes out as is.
    """
    if len(data) < 5 or data[3] != 0 or data[4] not in (COM_BINLOG_DUMP, COM_BINLOG_DUMP_GTID):
        return data
    body = data[5:]
    if data[4] == COM_BINLOG_DUMP:
        if len(body) < 10:
            return data
        position, flags, server_id = struct.unpack_from("<IHI", body)
        file = body[10:].rstrip(b"\x00").decode()
        return binlog_dump_packet(server_id=server_id, file=file, position=position, flags=flags)
    if len(body) < 10:
        return data
    flags, server_id, name_size = struct.unpack_from("<HII", body)
    name = body[10:10 + name_size]
    rest = body[10 + name_size:]
    if len(rest) < 12:
        return data
    position, size = struct.unpack_from("<QI", rest)
    return gtid_dump_packet(server_id=server_id, gtid_set=rest[12:12 + size], flags=flags,
                            file=name.rstrip(b"\x00").decode(), position=position)


class _NoSilentReconnect(pymysql.connections.Connection):
    """A connection whose lost-connection errors the library cannot swallow.

    Binlog dump commands leave through `corrected_dump_packet`. It also takes the
    library's deprecated ``db`` keyword as ``database`` (PyMySQL warns).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "db" in kwargs:
            kwargs["database"] = kwargs.pop("db")
        super().__init__(*args, **kwargs)

    def _read_packet(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._read_packet(*args, **kwargs)  # type: ignore[no-untyped-call]
        except pymysql.OperationalError as err:
            if err.args and err.args[0] in _LOST:
                raise BinlogConnectionLost(str(err.args[-1])) from err
            if err.args and err.args[0] == _FATAL_READING_BINLOG:
                raise BinlogGone(str(err.args[-1])) from err
            raise

    def _write_bytes(self, data: bytes) -> None:
        super()._write_bytes(corrected_dump_packet(data))  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class BinlogColumn:
    """One column of a table map, with the metadata ``binlog_row_metadata=FULL`` sends."""

    name: str
    type_code: int
    unsigned: bool = False
    primary: bool = False
    precision: int = 0  # DECIMAL
    scale: int = 0  # DECIMAL
    fsp: int = 0  # DATETIME2, TIMESTAMP2, TIME2 fractional digits
    bits: int = 0  # BIT(n)
    binary: bool = False  # BINARY/VARBINARY/BLOB (charset 'binary')
    enum_values: tuple[str, ...] = ()
    set_values: tuple[str, ...] = ()


#: One row image: column values in table-map order.
Image = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class TableMap:
    """A table as a table map event describes it (the schema of the rows that follow).

    `shape` is what the compiled row decoders need (connectors/mysql/rows.py), None when
    they do not know a column type (the library decodes that table's rows); `decoder` is
    the compiled decoder of the library's values for it.
    """

    database: str
    table: str
    columns: tuple[BinlogColumn, ...]
    shape: tuple[RowColumn, ...] | None = None
    decoder: RowDecoder | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TxStart:
    """A transaction begins (a GTID event, or ``BEGIN`` without one) at `start`."""

    start: int  # binlog position of its first event in `file`
    file: str
    gtid: str | None
    timestamp: int


class Rows:
    """The rows of one rows event of `table`.

    `images` gives ``(before, after)`` per row, in order, each a tuple of column values in
    table-map order as the library decodes them; `flags` the values the library returns
    as None for a reason other than NULL (``(row, side, column, source)``, side 0 before
    and 1 after: zero dates, the empty SET).

    When every column is present and `table.shape` is known, the reader hands over only
    `body`, the row images' bytes: the source decodes them straight into its changes
    (`rows.compile_change_decoder`), and `images`/`flags` are decoded from them (by
    `table.decoder`, the library's values) only when asked for.
    """

    __slots__ = ("_flags", "_images", "body", "end", "op", "table")

    def __init__(self, op: str, table: TableMap, images: list[tuple[Image | None, Image | None]] | None,
                 flags: list[tuple[int, int, int, str]] | None, end: int, body: bytes | None = None) -> None:
        self.op = op  # "c", "u", "d"
        self.table = table
        self.end = end  # binlog position after the event
        self.body = body
        self._images = images
        self._flags = flags

    @property
    def images(self) -> list[tuple[Image | None, Image | None]]:
        if self._images is None:
            self._decode()
        assert self._images is not None
        return self._images

    @property
    def flags(self) -> list[tuple[int, int, int, str]]:
        if self._flags is None:
            self._decode()
        assert self._flags is not None
        return self._flags

    def _decode(self) -> None:
        assert self.body is not None and self.table.decoder is not None
        self._images, self._flags = self.table.decoder(self.body, self.op)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rows):
            return NotImplemented
        return (self.op, self.table, self.end, self.images, self.flags) == \
            (other.op, other.table, other.end, other.images, other.flags)

    __hash__ = None  # type: ignore[assignment]  # mutable (the watermark filter appends to parts)

    def __repr__(self) -> str:
        return f"Rows({self.op!r}, {self.table.database}.{self.table.table}, {len(self.images)} rows, end={self.end})"


@dataclass(frozen=True, slots=True)
class TxCommit:
    """The transaction commits (an XID event, or a ``COMMIT`` query)."""

    xid: int
    timestamp: int
    end: int


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement outside any transaction (DDL): a transaction of its own."""

    database: str
    query: str
    start: int
    end: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class Rotate:
    """The dump moves to binlog `file` at `position` (also sent first on every connect)."""

    file: str
    position: int


@dataclass(frozen=True, slots=True)
class Idle:
    """A heartbeat: the server has nothing more right now; `end` is where the dump is."""

    file: str
    end: int


BinlogRecord = TxStart | Rows | TxCommit | Statement | Rotate | Idle

#: Values the library reports as None that are not SQL NULL.
EMPTY_SET = NONE_SOURCE.EMPTY_SET
ZERO_DATE = frozenset({NONE_SOURCE.OUT_OF_DATE_RANGE, NONE_SOURCE.OUT_OF_DATETIME_RANGE,
                       NONE_SOURCE.OUT_OF_DATETIME2_RANGE})

_EVENTS = [GtidEvent, MariadbGtidEvent, QueryEvent, XidEvent, RotateEvent, HeartbeatLogEvent,
           TableMapEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent]
_BINARY_CHARSETS = frozenset({"binary", None})
_TEXT_TYPES = frozenset({FIELD_TYPE.VARCHAR, FIELD_TYPE.STRING, FIELD_TYPE.VAR_STRING, FIELD_TYPE.BLOB})


def _row_column(col: Any) -> RowColumn:
    """What the compiled row decoder (connectors/mysql/rows.py) needs of a library column."""
    name = col.character_set_name
    encoding = text_encoding(RowsEvent.charset_to_encoding(name) if name is not None else "utf-8") \
        if col.type in _TEXT_TYPES else None
    return RowColumn(
        type_code=int(col.type), unsigned=bool(col.unsigned), max_length=int(getattr(col, "max_length", 0) or 0),
        length_size=int(getattr(col, "length_size", 0) or 0), size=int(getattr(col, "size", 0) or 0),
        fsp=int(getattr(col, "fsp", 0) or 0), precision=int(getattr(col, "precision", 0) or 0),
        scale=int(getattr(col, "decimals", 0) or 0), bits=int(getattr(col, "bits", 0) or 0), encoding=encoding,
        enum_values=tuple(col.enum_values or ()), set_values=tuple(col.set_values or ()),
    )


def _column(col: Any) -> BinlogColumn:
    binary = col.type in _TEXT_TYPES and (col.character_set_name in _BINARY_CHARSETS
                                          or col.collation_name == "binary")
    return BinlogColumn(
        name=str(col.name),
        type_code=int(col.type),
        unsigned=bool(col.unsigned),
        primary=bool(col.is_primary),
        precision=int(getattr(col, "precision", 0) or 0),
        scale=int(getattr(col, "decimals", 0) or 0),
        fsp=int(getattr(col, "fsp", 0) or 0),
        bits=int(getattr(col, "bits", 0) or 0),
        binary=binary,
        enum_values=tuple(col.enum_values[1:]) if col.enum_values else (),
        set_values=tuple(col.set_values or ()),
    )


@contextlib.contextmanager
def _lost_on_error() -> Iterator[None]:
    """Any other failure of the dump connection as `BinlogConnectionLost` (the source restarts
    from its own position)."""
    try:
        yield
    except pymysql.OperationalError as err:
        raise BinlogConnectionLost(str(err.args[-1]) if err.args else str(err)) from err
    except (OSError, struct.error) as err:
        raise BinlogConnectionLost(str(err)) from err


class BinlogReader:
    """A binlog dump from (`log_file`, `log_pos`) on, or after the GTID state `gtids`, as
    `BinlogRecord`s.

    `gtids`: MariaDB (`mariadb`) ``@slave_connect_state``, the last GTID per domain
    (``0-1-42,1-2-7``, strict mode); MySQL a GTID set (``uuid:1-42``, **untested here**).
    The server then finds the binlog file itself and sends what follows the state; the
    first record is a `Rotate` to that file, and every position is the event's own, as a
    dump by file and position gives. Blocking (run it in a worker thread). The server
    sends a heartbeat every `heartbeat_s` when idle, which comes out as `Idle`; a
    connection silent for `read_timeout_s` is dead and raises `BinlogConnectionLost`, as
    does any drop.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        user: str,
        password: str,
        server_id: int,
        log_file: str,
        log_pos: int,
        schemas: list[str] | None,
        heartbeat_s: float = 1.0,
        read_timeout_s: float = 30.0,
        connect_timeout_s: int = 10,
        compiled_rows: bool = True,
        gtids: str | None = None,
        mariadb: bool = True,
    ) -> None:
        """`compiled_rows`: decode row images with connectors/mysql/rows.py where it knows every
        column type (the library decodes the rest)."""
        self.compiled_rows = compiled_rows
        settings = {
            "host": host, "port": port, "user": user, "password": password,
            "connect_timeout": connect_timeout_s, "read_timeout": read_timeout_s,
            "charset": "utf8mb4",
        }
        self._reader = BinLogStreamReader(
            connection_settings=settings,
            server_id=server_id,
            resume_stream=True,
            blocking=True,
            log_file=log_file,
            log_pos=log_pos,
            # By file and position: never is_mariadb=True (see the module docstring). By GTID:
            # the library's own dump commands, which the connection corrects as they leave.
            auto_position=gtids or None,
            is_mariadb=mariadb and bool(gtids),
            only_events=_EVENTS,
            only_schemas=schemas,
            slave_heartbeat=heartbeat_s,
            pymysql_wrapper=_NoSilentReconnect,
            enable_logging=False,
        )
        self._file = log_file
        self._maps: dict[int, TableMap] = {}  # table id -> map, within the current binlog file only
        #: By column types, across files; the key is the one shape object handed out for them.
        self._compiled: dict[tuple[RowColumn, ...], tuple[tuple[RowColumn, ...], RowDecoder | None]] = {}
        #: Rows events decoded by the compiled decoder and by the library (for tests and logs).
        self.decoded = {"compiled": 0, "library": 0}
        self._in_tx = False
        self._opened: Rotate | None = None

    @property
    def file(self) -> str:
        return self._file

    @property
    def connection_id(self) -> int | None:
        """The server's id of the dump connection (``SHOW PROCESSLIST``), once connected."""
        conn = getattr(self._reader, "_stream_connection", None)
        return int(conn.thread_id()) if conn is not None and conn.open else None

    def close(self) -> None:
        with contextlib.suppress(pymysql.Error, OSError, BinlogConnectionLost):
            self._reader.close()

    def open(self) -> None:
        """Start the dump now and read its first event (the server's `Rotate` to the file it
        starts in): `BinlogGone` if the server refuses where it starts, `BinlogConnectionLost`
        if the connection fails. `records` yields that `Rotate` first."""
        with _lost_on_error():
            event = self._reader.fetchone()
        if not isinstance(event, RotateEvent):
            raise BinlogConnectionLost(f"the binlog dump began with {type(event).__name__}, not a rotate event")
        self._opened = self._rotate(event)

    def records(self) -> Iterator[BinlogRecord]:
        """Records in binlog order, forever (until the connection is lost or closed)."""
        with _lost_on_error():
            if self._opened is not None:
                opened, self._opened = self._opened, None
                yield opened
            yield from self._records()

    def _rotate(self, event: Any) -> Rotate:
        self._file = str(event.next_binlog)
        self._maps.clear()
        return Rotate(self._file, int(event.position))

    def _records(self) -> Iterator[BinlogRecord]:
        while True:
            event = self._reader.fetchone()
            if event is None:
                raise BinlogConnectionLost("the server ended the binlog dump")
            packet = event.packet
            end = int(packet.log_pos)
            if isinstance(event, RotateEvent):
                yield self._rotate(event)
            elif isinstance(event, TableMapEvent):
                shape, decoder = self._decoder(event.columns)
                self._maps[int(event.table_id)] = TableMap(
                    str(event.schema), str(event.table), tuple(_column(c) for c in event.columns),
                    shape if decoder is not None else None, decoder,
                )
            elif isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
                yield self._rows(event, end)
            elif isinstance(event, MariadbGtidEvent | GtidEvent):
                self._in_tx = True
                yield TxStart(end - int(packet.event_size), self._file, str(event.gtid), int(event.timestamp))
            elif isinstance(event, XidEvent):
                self._in_tx = False
                yield TxCommit(int(event.xid), int(event.timestamp), end)
            elif isinstance(event, QueryEvent):
                query = str(event.query).strip()
                word = query[:9].upper()
                if word.startswith("BEGIN") or word.startswith("XA START"):
                    if not self._in_tx:  # no GTID event came first (MySQL without GTIDs)
                        yield TxStart(end - int(packet.event_size), self._file, None, int(event.timestamp))
                    self._in_tx = True
                elif word.startswith("COMMIT") or word.startswith("XA END"):
                    self._in_tx = False
                    yield TxCommit(0, int(event.timestamp), end)
                else:
                    start = end - int(packet.event_size)
                    database = event.schema.decode("utf-8", "replace") if isinstance(event.schema, bytes) \
                        else str(event.schema)
                    self._in_tx = False
                    yield Statement(database, query, start, end, int(event.timestamp))
            elif isinstance(event, HeartbeatLogEvent) and not self._in_tx:
                yield Idle(self._file, end)

    def _decoder(self, columns: Any) -> tuple[tuple[RowColumn, ...] | None, RowDecoder | None]:
        if not self.compiled_rows:
            return None, None
        shape = tuple(_row_column(c) for c in columns)
        known = self._compiled.get(shape)
        if known is None:
            known = self._compiled[shape] = (shape, compile_decoder(shape))
        return known

    def _rows(self, event: Any, end: int) -> Rows:
        table = self._maps.get(int(event.table_id))
        if table is None:
            raise BinlogConnectionLost(f"rows of table id {event.table_id} without a table map")
        full = b"\xff" * (len(table.columns) // 8) + (bytes([(1 << (len(table.columns) % 8)) - 1])
                                                       if len(table.columns) % 8 else b"")
        if (
            table.decoder is not None
            and event.columns_present_bitmap == full
            and getattr(event, "columns_present_bitmap2", full) == full
        ):
            op = "u" if isinstance(event, UpdateRowsEvent) else "c" if isinstance(event, WriteRowsEvent) else "d"
            packet = event.packet
            self.decoded["compiled"] += 1
            return Rows(op, table, None, None, end, body=packet.read(event.event_size - packet.read_bytes))
        self.decoded["library"] += 1
        images: list[tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]] = []
        flags: list[tuple[int, int, int, str]] = []
        names = [c.name for c in table.columns]
        if isinstance(event, UpdateRowsEvent):
            op = "u"
            for n, row in enumerate(event.rows):
                before, after = row["before_values"], row["after_values"]
                images.append((tuple(before.values()), tuple(after.values())))
                for side, key in enumerate(("before_none_sources", "after_none_sources")):
                    for name, source in row[key].items():
                        if source != NONE_SOURCE.NULL:
                            flags.append((n, side, names.index(name), source))
        else:
            op = "c" if isinstance(event, WriteRowsEvent) else "d"
            for n, row in enumerate(event.rows):
                image = tuple(row["values"].values())
                images.append((None, image) if op == "c" else (image, None))
                for name, source in row["none_sources"].items():
                    if source != NONE_SOURCE.NULL:
                        flags.append((n, 1 if op == "c" else 0, names.index(name), source))
        return Rows(op, table, images, flags, end)


def plain_row_iteration(*, host: str, port: int, user: str, password: str, server_id: int, log_file: str,
                        log_pos: int, end_file: str, end_pos: int) -> int:
    """The library's own row iteration from (`log_file`, `log_pos`) to (`end_file`, `end_pos`):
    every row of every rows event decoded, nothing else done; returns the row count.

    The benchmark's floor (bench/mysql_stream.py): what python-mysql-replication costs alone.
    """
    reader = BinLogStreamReader(
        connection_settings={"host": host, "port": port, "user": user, "password": password},
        server_id=server_id, resume_stream=True, blocking=False, log_file=log_file, log_pos=log_pos,
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, RotateEvent],
        pymysql_wrapper=_NoSilentReconnect, enable_logging=False,
    )
    rows = 0
    try:
        for event in reader:
            if isinstance(event, RotateEvent):
                continue
            rows += len(event.rows)
            if reader.log_file == end_file and reader.log_pos >= end_pos:
                break
    finally:
        reader.close()
    return rows
