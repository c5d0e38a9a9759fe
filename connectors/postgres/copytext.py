"""Pure parser of PostgreSQL's COPY ... TO STDOUT text format into pgoutput-style rows.

COPY's text format prints every value with the type's output function, exactly as
pgoutput does, then escapes backslash, tab, newline, carriage return, backspace, form
feed and vertical tab with a backslash, and prints NULL as ``\\N``. Undoing those escapes
gives the same bytes the stream carries, so snapshot rows go through the same
`PgRowCodec` as streamed rows: one type mapping for both.
"""

from __future__ import annotations

import re
from typing import Final

from cdc.errors import DecodeError
from cdc.events import RawRow

_ESCAPE: Final = re.compile(rb"\\(.)", re.DOTALL)
_UNESCAPE: Final = {
    b"\\": b"\\",
    b"t": b"\t",
    b"n": b"\n",
    b"r": b"\r",
    b"b": b"\b",
    b"f": b"\f",
    b"v": b"\v",
}
_NULL: Final = b"\\N"


def _unescape_one(m: re.Match[bytes]) -> bytes:
    ch = m.group(1)
    try:
        return _UNESCAPE[ch]
    except KeyError:
        return ch  # COPY never escapes anything else on output; tolerate it as the character


def unescape(value: bytes) -> bytes:
    """One COPY text field to its raw text (the caller has already mapped ``\\N`` to NULL)."""
    return _ESCAPE.sub(_unescape_one, value) if b"\\" in value else value


class CopyTextParser:
    """Feed COPY data blocks (not aligned to rows); take back complete rows.

    `width` is the number of columns each row must have; a row of another width is a
    `DecodeError` naming `where`.
    """

    __slots__ = ("_pending", "_where", "_width")

    def __init__(self, width: int, where: str) -> None:
        self._width = width
        self._where = where
        self._pending = b""

    def feed(self, data: bytes | memoryview) -> list[RawRow]:
        """The rows completed by `data`, in order."""
        block = self._pending + bytes(data)
        end = block.rfind(b"\n")
        if end < 0:
            self._pending = block
            return []
        self._pending = block[end + 1 :]
        width = self._width
        if width == 0:
            return [() for _ in block[:end].split(b"\n")]
        rows: list[RawRow] = []
        append = rows.append
        for line in block[:end].split(b"\n"):
            fields = line.split(b"\t")
            if len(fields) != width:
                raise DecodeError(f"{self._where}: COPY row has {len(fields)} fields, expected {width}")
            if b"\\" in line:
                append(tuple(None if f == _NULL else unescape(f) for f in fields))
            else:
                append(tuple(fields))
        return rows

    def close(self) -> None:
        """Check that nothing is left half-read."""
        if self._pending:
            raise DecodeError(f"{self._where}: COPY data ended in the middle of a row")
