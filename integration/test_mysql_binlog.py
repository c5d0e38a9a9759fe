"""The binlog adapter (connectors/mysql/binlog.py) against the library traps it wraps.

Each trap test fails with python-mysql-replication's own behaviour: ``is_mariadb=True``
ignoring the requested file and position, and the silent reconnect after a dropped
dump connection; a GTID dump gives the positions of a dump by file and position. They
run on a MariaDB server of their own (they rotate binlogs and kill connections).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from cdc.sandbox import DisposableMariaDB
from connectors.mysql.binlog import (
    BinlogConnectionLost,
    BinlogGone,
    BinlogReader,
    BinlogRecord,
    Idle,
    Rotate,
    Rows,
    Statement,
    TxCommit,
    TxStart,
)
from integration.daemon import wait_until


@pytest.fixture(scope="module")
def server() -> Iterator[DisposableMariaDB]:
    with DisposableMariaDB() as s:
        s.create_database("traps")
        s.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(10))", database="traps")
        yield s


def reader(server: DisposableMariaDB, file: str, offset: int, gtids: str | None = None) -> BinlogReader:
    return BinlogReader(host=server.host, port=server.port, user=server.user, password=server.password,
                        server_id=777, log_file=file, log_pos=offset, schemas=["traps"], heartbeat_s=0.2,
                        read_timeout_s=5, gtids=gtids)


def until_idle(r: BinlogReader) -> list[BinlogRecord]:
    out = []
    for record in r.records():
        if isinstance(record, Idle):
            return out
        out.append(record)
    return out


def test_reading_starts_at_the_requested_file_and_offset(server: DisposableMariaDB) -> None:
    """A dump from (second file, offset) yields only what follows it, never the first binlog again."""
    server.execute("INSERT INTO t VALUES (1, 'old'), (2, 'old')", database="traps")
    server.execute("FLUSH BINARY LOGS")
    file, offset = server.query("SHOW MASTER STATUS")[0][:2]
    server.execute("INSERT INTO t VALUES (3, 'new')", database="traps")
    r = reader(server, file, int(offset))
    try:
        records = until_idle(r)
    finally:
        r.close()
    starts = [rec for rec in records if isinstance(rec, TxStart)]
    assert starts and all(s.file == file and s.start >= int(offset) for s in starts)
    rows = [img for rec in records if isinstance(rec, Rows) for _, img in rec.images]
    assert rows == [(3, "new")]


def test_a_dropped_dump_connection_raises_instead_of_reconnecting(server: DisposableMariaDB) -> None:
    """KILL of the dump thread ends the reader with BinlogConnectionLost (the library would reconnect silently)."""
    file, offset = server.query("SHOW MASTER STATUS")[0][:2]
    r = reader(server, file, int(offset))
    outcome: list[BaseException | None] = []

    def consume() -> None:
        try:
            for _ in r.records():
                pass
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        def dump_running() -> bool:
            ours = str(r.connection_id)
            return any(row[0] == ours and row[4] == "Binlog Dump" for row in server.query("SHOW PROCESSLIST"))

        wait_until(dump_running, 10, "the binlog dump thread")
        server.execute(f"KILL {r.connection_id}")
        thread.join(10)
        assert not thread.is_alive(), "the reader went on after its connection was killed"
        assert len(outcome) == 1 and isinstance(outcome[0], BinlogConnectionLost), outcome
    finally:
        r.close()
        thread.join(5)


def _images(records: list[BinlogRecord]) -> list[tuple[str, object, object, object]]:
    """Every row image (binary columns' empty values as b"": the library gives '' for them)."""
    out: list[tuple[str, object, object, object]] = []
    for rec in records:
        if isinstance(rec, Rows):
            binary = [c.binary for c in rec.table.columns]

            def fix(image: tuple[object, ...] | None, binary: list[bool] = binary) -> object:
                if image is None:
                    return None
                return tuple(b"" if flag and v == "" else v for v, flag in zip(image, binary, strict=True))

            out += [(rec.op, fix(b), fix(a), sorted(rec.flags)) for b, a in rec.images]
    return out


def test_compiled_row_decoder_matches_the_library_on_every_type(server: DisposableMariaDB) -> None:
    """The compiled decoder gives the library's values for every type-zoo row, update, delete and zero date."""
    from integration.test_mysql_types import ZOO_DDL, inserts

    server.execute("CREATE DATABASE zoo_traps CHARACTER SET utf8mb4")
    file, offset = server.query("SHOW MASTER STATUS")[0][:2]
    statements = [
        "SET NAMES utf8mb4", "SET sql_mode = ''", ZOO_DDL, *inserts(), "UPDATE zoo SET id = id + 100",
        "DELETE FROM zoo WHERE id > 102",
        "INSERT INTO zoo (id, dd, dt) VALUES (9, '0000-00-00', '0000-00-00 00:00:00')",
        "UPDATE zoo SET s = '' WHERE id = 9",
    ]
    server.execute(";".join(statements), database="zoo_traps")
    results = []
    for compiled in (True, False):
        r = BinlogReader(host=server.host, port=server.port, user=server.user, password=server.password,
                         server_id=778, log_file=file, log_pos=int(offset), schemas=["zoo_traps"], heartbeat_s=0.2,
                         compiled_rows=compiled)
        try:
            results.append(_images(until_idle(r)))
        finally:
            r.close()
        assert r.decoded["compiled" if compiled else "library"] == 8 and sum(r.decoded.values()) == 8
    assert len(results[0]) == 4 + 4 + 2 + 1 + 1
    assert results[0] == results[1]


def test_a_gtid_dump_gives_the_records_and_positions_of_a_dump_by_file_and_position(
    server: DisposableMariaDB,
) -> None:
    """After the GTID state of (file, offset): the same records, files and positions as a dump from there."""
    server.execute("CREATE TABLE g (id int PRIMARY KEY, v varchar(10)); INSERT INTO g VALUES (1, 'before')",
                   database="traps")
    file, offset = server.query("SHOW MASTER STATUS")[0][:2]
    state = server.query(f"SELECT BINLOG_GTID_POS('{file}', {offset})")[0][0]
    server.execute("INSERT INTO g VALUES (2, 'a'); INSERT INTO g VALUES (3, 'b'); FLUSH BINARY LOGS; "
                   "UPDATE g SET v = 'c' WHERE id = 2; DELETE FROM g WHERE id = 3; "
                   "ALTER TABLE g ADD COLUMN w int; INSERT INTO g VALUES (4, 'd', 4)", database="traps")
    dumps = []
    for gtids in (None, state):
        r = reader(server, file, int(offset), gtids)
        try:
            r.open()
            dumps.append(until_idle(r))
        finally:
            r.close()
    by_position, by_gtid = dumps
    assert by_position[0] == Rotate(file, int(offset)) and by_gtid[0] == Rotate(file, 4)
    assert by_gtid[1:] == by_position[1:]
    kinds = [type(rec).__name__ for rec in by_gtid[1:]]
    assert kinds.count("Rotate") == 2 and kinds.count("Statement") == 1 and kinds.count("TxCommit") == 5, kinds
    assert all(s.file == file and s.start >= int(offset) for s in by_gtid[1:4] if isinstance(s, TxStart))
    assert next(img for rec in by_gtid if isinstance(rec, Rows) for img in rec.images) == (None, (2, "a"))
    assert isinstance(by_gtid[-1], TxCommit) and not isinstance(by_gtid[-2], Statement)


def test_a_gtid_state_the_server_cannot_serve_raises_binlog_gone(server: DisposableMariaDB) -> None:
    """A GTID beyond the server's binlog: `open` raises BinlogGone with the server's message (error 1236)."""
    file, offset = server.query("SHOW MASTER STATUS")[0][:2]
    domain, server_id, seq = server.query("SELECT @@gtid_binlog_pos")[0][0].split(",")[0].split("-")
    r = reader(server, file, int(offset), f"{domain}-{server_id}-{int(seq) + 1000}")
    try:
        with pytest.raises(BinlogGone, match="GTID"):
            r.open()
    finally:
        r.close()
