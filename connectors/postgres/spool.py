"""Disk spool for transactions PostgreSQL streams before they commit (protocol 2).

With ``streaming 'on'`` the server sends a large in-progress transaction in blocks
(Stream Start ... Stream Stop) as soon as it outgrows ``logical_decoding_work_mem``, and
later a Stream Commit or Stream Abort. Nothing of it may reach a sink before the commit,
and memory must not grow with its size, so each block's messages go to a file per
top-level transaction and are read back, in order, at the commit.

A Stream Abort of a subtransaction drops that subtransaction and everything after its
first change (later changes of the transaction belong to subtransactions nested in it or
started after it, which an abort of the parent discards too), the way PostgreSQL's own
apply worker does: the file is cut at the offset where the subtransaction first appeared.

A spool file the OS cannot create, write, cut or read back (disk full, read-only file
system, permissions) is a `CheckpointError` naming the file and the reason, in one line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from cdc.checkpoints import state_write_error
from cdc.errors import CheckpointError

_HEADER: Final = struct.Struct(">QI")  # lsn, payload length
_READ_SIZE: Final = 1 << 20


@dataclass(slots=True)
class _Spooled:
    path: Path
    handle: BinaryIO
    subxacts: dict[int, int] = field(default_factory=dict)  # subxid -> offset of its first change
    messages: int = 0


class TransactionSpool:
    """One directory of per-transaction spool files; `clear()` it at start-up."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._open: dict[int, _Spooled] = {}

    def clear(self) -> None:
        """Forget everything: after a restart the server streams open transactions again."""
        for spooled in self._open.values():
            with contextlib.suppress(OSError):
                spooled.handle.close()
        self._open.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise state_write_error(self.directory, "the transaction spool", err) from err

    @property
    def open_transactions(self) -> int:
        return len(self._open)

    def append(self, xid: int, subxid: int, lsn: int, payload: bytes | memoryview) -> None:
        """Spool one message of a stream block; `subxid` is the xid the message carries."""
        spooled = self._open.get(xid)
        path = spooled.path if spooled is not None else self.directory / f"{xid}.spool"
        try:
            if spooled is None:
                spooled = self._open[xid] = _Spooled(path, open(path, "w+b"))  # noqa: SIM115 - kept open
            if subxid not in spooled.subxacts:
                spooled.subxacts[subxid] = spooled.handle.tell()
            spooled.handle.write(_HEADER.pack(lsn, len(payload)))
            spooled.handle.write(payload)
        except OSError as err:
            raise _spool_error(path, xid, err) from err
        spooled.messages += 1

    def abort(self, xid: int, subxid: int) -> None:
        """Drop a whole transaction (``subxid == xid``) or one subtransaction of it."""
        spooled = self._open.get(xid)
        if spooled is None:
            return
        if subxid == xid:
            self._discard(xid)
            return
        offset = spooled.subxacts.get(subxid)
        if offset is None:
            return  # the subtransaction made no change we saw
        try:
            spooled.handle.truncate(offset)
            spooled.handle.seek(offset)
        except OSError as err:
            raise _spool_error(spooled.path, xid, err) from err
        spooled.subxacts = {s: o for s, o in spooled.subxacts.items() if o < offset}

    def commit(self, xid: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(lsn, payload)`` of every spooled message in order, then delete the file."""
        spooled = self._open.get(xid)
        if spooled is None:
            return
        handle = spooled.handle
        try:
            handle.flush()
            handle.seek(0)
        except OSError as err:
            self._discard(xid)
            raise _spool_error(spooled.path, xid, err) from err
        try:
            buffer = b""
            while True:
                try:
                    chunk = handle.read(_READ_SIZE)
                except OSError as err:
                    raise _spool_error(spooled.path, xid, err) from err
                if not chunk and len(buffer) < _HEADER.size:
                    break
                buffer += chunk
                pos = 0
                while len(buffer) - pos >= _HEADER.size:
                    lsn, length = _HEADER.unpack_from(buffer, pos)
                    end = pos + _HEADER.size + length
                    if end > len(buffer):
                        break
                    yield lsn, buffer[pos + _HEADER.size : end]
                    pos = end
                buffer = buffer[pos:]
                if not chunk:
                    break
        finally:
            self._discard(xid)

    def _discard(self, xid: int) -> None:
        spooled = self._open.pop(xid, None)
        if spooled is not None:
            with contextlib.suppress(OSError):  # closing flushes: a full disk refuses it again
                spooled.handle.close()
            with contextlib.suppress(OSError):  # clear() removes the directory at the next start
                os.unlink(spooled.path)

    def close(self) -> None:
        for xid in list(self._open):
            self._discard(xid)


def _spool_error(path: Path, xid: int, err: OSError) -> CheckpointError:
    return state_write_error(path, f"the spool of in-progress transaction {xid}", err)
