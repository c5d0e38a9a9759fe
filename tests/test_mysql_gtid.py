"""GTID resume without a server: the dump packets byte by byte, the GTID state, the config key."""

from __future__ import annotations

import itertools
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.config import parse_config
from cdc.errors import ConfigError
from connectors.mysql.binlog import _NoSilentReconnect, binlog_dump_packet, corrected_dump_packet, gtid_dump_packet
from connectors.mysql.gtid import GtidState

#: What mysql-replication 1.0.17 writes for a MariaDB GTID dump (server id 5, blocking): a
#: header declaring 14 bytes (0x0e), then 15: COM_BINLOG_DUMP, position 4, flags 0, server
#: id 5 and a file name of four NUL bytes.
LIBRARY_MARIADB_GTID_DUMP = bytes.fromhex("0e000000" "12" "04000000" "0000" "05000000" "00000000")
#: Its MySQL COM_BINLOG_DUMP_GTID for ``3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5`` (server id 5):
#: flags BINLOG_THROUGH_GTID, a file name of size 3 (three NUL bytes), position 4, 48 bytes of set.
UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
ENCODED_SET = (struct.pack("<Q", 1) + bytes.fromhex(UUID.replace("-", "")) + struct.pack("<Q", 1)
               + struct.pack("<QQ", 1, 6))
LIBRARY_MYSQL_GTID_DUMP = (bytes.fromhex("4a000000" "1e" "0400" "05000000" "03000000" "000000")
                           + struct.pack("<QI", 4, 48) + ENCODED_SET)


def declared(packet: bytes) -> int:
    """The payload length a packet's header declares."""
    return int.from_bytes(packet[:3], "little")


def test_the_librarys_mariadb_gtid_dump_is_rebuilt_with_the_length_it_has() -> None:
    """14 declared, 15 sent becomes 11 declared and sent: command, position 4, flags, server id, empty name."""
    assert declared(LIBRARY_MARIADB_GTID_DUMP) == 14 and len(LIBRARY_MARIADB_GTID_DUMP) - 4 == 15
    fixed = corrected_dump_packet(LIBRARY_MARIADB_GTID_DUMP)
    assert fixed == bytes.fromhex("0b000000" "12" "04000000" "0000" "05000000")
    assert declared(fixed) == len(fixed) - 4 == 11
    assert fixed == binlog_dump_packet(server_id=5, file="", position=4)


def test_the_librarys_mysql_gtid_dump_is_rebuilt_without_a_nul_file_name() -> None:
    """COM_BINLOG_DUMP_GTID: name size 0 and no name bytes, position 4, then the set; length as sent."""
    assert declared(LIBRARY_MYSQL_GTID_DUMP) == len(LIBRARY_MYSQL_GTID_DUMP) - 4
    fixed = corrected_dump_packet(LIBRARY_MYSQL_GTID_DUMP)
    expected = (bytes.fromhex("47000000" "1e" "0400" "05000000" "00000000") + struct.pack("<QI", 4, 48)
                + ENCODED_SET)
    assert fixed == expected and declared(fixed) == len(fixed) - 4 == 1 + 2 + 4 + 4 + 8 + 4 + 48
    assert fixed == gtid_dump_packet(server_id=5, gtid_set=ENCODED_SET)


def test_a_dump_by_file_and_position_and_other_packets_pass_unchanged() -> None:
    """The library's COM_BINLOG_DUMP by file and position is already right; queries and handshakes are not dumps."""
    by_position = struct.pack("<i", len("mysql-bin.000042") + 11) + bytes([0x12]) + struct.pack("<IHI", 1234, 0, 7) \
        + b"mysql-bin.000042"
    assert corrected_dump_packet(by_position) == by_position
    assert by_position == binlog_dump_packet(server_id=7, file="mysql-bin.000042", position=1234)
    query = struct.pack("<i", 9) + b"\x03SELECT 1"
    assert corrected_dump_packet(query) == query
    handshake = bytes.fromhex("20000001") + bytes([0x12]) + bytes(31)  # sequence id 1: not a command
    assert corrected_dump_packet(handshake) == handshake


def test_the_stream_connection_sends_the_corrected_packet() -> None:
    """What the library hands the dump connection leaves the socket rebuilt (the library writes raw bytes)."""
    conn = _NoSilentReconnect(host="127.0.0.1", defer_connect=True)
    ours, server = socket.socketpair()
    with ours, server:
        conn._sock, conn._current_timeout = ours, None
        conn._write_bytes(LIBRARY_MARIADB_GTID_DUMP)
        conn._write_bytes(LIBRARY_MYSQL_GTID_DUMP)
        ours.shutdown(socket.SHUT_WR)
        sent = b"".join(iter(lambda: server.recv(4096), b""))
    assert sent == corrected_dump_packet(LIBRARY_MARIADB_GTID_DUMP) + corrected_dump_packet(LIBRARY_MYSQL_GTID_DUMP)


def test_mariadb_state_keeps_the_last_gtid_per_domain() -> None:
    """MariaDB: one GTID per domain, the later one replacing the earlier; printed in domain order."""
    state = GtidState(True, "1-2-7,0-1-42")
    assert str(state) == "0-1-42,1-2-7"
    state.add("0-1-43")
    state.add("5-3-1")
    state.add("1-4-8")
    assert str(state) == "0-1-43,1-4-8,5-3-1"
    assert not GtidState(True, "") and GtidState(True, "0-1-1")
    with pytest.raises(ValueError, match="domain-server-seq"):
        state.add(f"{UUID}:3")


def test_mysql_state_is_a_gtid_set() -> None:
    """MySQL: intervals per server uuid as Executed_Gtid_Set prints them (newlines too), merged as they touch."""
    other = "4e11fa47-71ca-11e1-9e33-c80aa9429562"
    state = GtidState(False, f"{UUID}:1-5:7,\n{other.upper()}:10")
    assert str(state) == f"{UUID}:1-5:7,{other}:10"
    state.add(f"{UUID}:6")
    state.add(f"{UUID}:8")
    state.add(f"{other}:12")
    assert str(state) == f"{UUID}:1-8,{other}:10:12"
    with pytest.raises(ValueError, match="uuid:number"):
        state.add("0-1-42")
    with pytest.raises(ValueError, match="interval"):
        GtidState(False, f"{UUID}:5-3")


@given(st.lists(st.integers(1, 60), max_size=80))
def test_mysql_set_holds_exactly_the_added_numbers(numbers: list[int]) -> None:
    """Adding transaction numbers in any order gives the minimal intervals of exactly those numbers."""
    state = GtidState(False)
    for n in numbers:
        state.add(f"{UUID}:{n}")
    held = set()
    for span in str(state).partition(":")[2].split(":") if numbers else []:
        first, _, last = span.partition("-")
        held.update(range(int(first), int(last or first) + 1))
    assert held == set(numbers)
    assert str(GtidState(False, str(state))) == str(state)
    spans = str(state).split(":")[1:]
    assert all(int(b.split("-")[0]) > int(a.split("-")[-1]) + 1 for a, b in itertools.pairwise(spans))


_JOB = """
jobs:
  - name: shop
    source: {{type: mysql, host: db, user: cdc, server_id: 7{extra}}}
    tables: {{include: ["shop.*"]}}
    sinks: [{{type: file, path: ./events}}]
"""


def test_resume_by_defaults_to_gtid() -> None:
    """``resume_by`` is gtid unless set to position; any other value is a config error."""
    assert parse_config(_JOB.format(extra=""), "x.yaml", {}).jobs[0].source.resume_by == "gtid"  # type: ignore[union-attr]
    source = parse_config(_JOB.format(extra=", resume_by: position"), "x.yaml", {}).jobs[0].source
    assert source.resume_by == "position"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="resume_by"):
        parse_config(_JOB.format(extra=", resume_by: file"), "x.yaml", {})
