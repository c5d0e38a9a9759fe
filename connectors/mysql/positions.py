"""How a binlog coordinate maps onto `cdc.events.Position` (an ordered pair of ints).

A binlog coordinate is (file index, byte offset): ``mysql-bin.000042`` at 1234 is
``(42, 1234)``. Packed as ``v = index << 32 | offset`` it orders like the log (an offset
is below 2^32: max_binlog_size is at most 1 GiB). `Position.commit` is then:

* ``2v`` for a transaction that **starts** at ``v`` (its GTID event, or ``BEGIN``):
  every event of it is ``Position(2v, seq)``, the whole of it ``Position(2v)``. The
  commit's own offset is not known until the XID event, while a chunk of a giant
  transaction needs a position before then; the start is known at once.
* ``2v - 1`` for "everything before offset ``v`` is done" (an idle heartbeat at ``v``,
  the consistent point ``v`` of a snapshot): lower than the transaction starting at
  ``v``, higher than every one before.

Resuming from a position: an even commit restarts the dump at the transaction's start
(``v``) and the sinks skip what they hold of it (at or below their position); an odd one
restarts at ``v``. GTIDs are not part of the position: the source keeps the GTID state
every sink holds beside it (``<job>.mysql-gtid.json``, connectors/mysql/gtid.py) and,
with ``resume_by: gtid``, restarts the dump after that state; the events it then sends
carry these same coordinates (see docs/mysql.md, *Positions*).
"""

from __future__ import annotations

from cdc.errors import SourceSetupError
from cdc.events import Position

_OFFSET_BITS = 32
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1


def file_index(name: str) -> int:
    """The number of binlog file `name` (``mysql-bin.000042`` -> 42)."""
    stem, _, number = name.rpartition(".")
    if not stem or not number.isdigit():
        raise SourceSetupError(f"unexpected binlog file name {name!r}: expected <base>.<number>")
    return int(number)


def file_name(base: str, index: int) -> str:
    """The binlog file of `index` under `base` (MySQL and MariaDB pad to six digits)."""
    return f"{base}.{index:06d}"


def transaction_commit(index: int, offset: int) -> int:
    """`Position.commit` of the transaction starting at (`index`, `offset`)."""
    return ((index << _OFFSET_BITS) | offset) << 1


def before(index: int, offset: int) -> int:
    """`Position.commit` meaning "everything before (`index`, `offset`)"."""
    return transaction_commit(index, offset) - 1


def resume_point(position: Position) -> tuple[int, int]:
    """The (file index, offset) to restart the dump at for sinks holding `position`."""
    c = position.commit
    v = (c + 1) >> 1 if c & 1 else c >> 1
    return v >> _OFFSET_BITS, v & _OFFSET_MASK


def describe(commit: int) -> str:
    """A log-friendly form: ``42:1234`` (a transaction start) or ``<42:1234`` (before)."""
    index, offset = resume_point(Position(commit))
    return f"{'<' if commit & 1 else ''}{index}:{offset}"
