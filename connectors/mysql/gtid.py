"""The GTID state a job holds: where a GTID binlog dump resumes (docs/mysql.md, *Positions*).

* **MariaDB**: the last GTID (``domain-server-seq``) per replication domain, as
  ``@slave_connect_state`` takes it: ``0-1-42,1-2-7``. A later GTID of a domain replaces
  the earlier one; MariaDB numbers a domain's transactions in binlog order.
* **MySQL**: a GTID set, intervals of transaction numbers per server uuid, as
  ``Executed_Gtid_Set`` prints it and ``COM_BINLOG_DUMP_GTID`` takes it:
  ``3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7``.

Pure (no I/O): `GtidState.add` runs once per committed transaction.
"""

from __future__ import annotations

import bisect
import re

_MARIADB = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


class GtidState:
    """The GTIDs of every transaction up to a binlog position (MariaDB or MySQL form).

    Only ever grows; `str` gives the form the server takes to start a dump after them.
    """

    __slots__ = ("_domains", "_sets", "mariadb")

    def __init__(self, mariadb: bool, text: str = "") -> None:
        """`text`: a state as the server prints it (``BINLOG_GTID_POS``, ``Executed_Gtid_Set``);
        `ValueError` if it is not one."""
        self.mariadb = mariadb
        self._domains: dict[int, tuple[int, int]] = {}  # MariaDB: domain -> (server id, seq)
        self._sets: dict[str, list[list[int]]] = {}  # MySQL: uuid -> sorted disjoint [first, last]
        for part in text.replace("\n", "").split(","):
            part = part.strip()
            if not part:
                continue
            if mariadb:
                self.add(part)
                continue
            uuid, _, ranges = part.partition(":")
            if not _UUID.match(uuid) or not ranges:
                raise ValueError(f"not a MySQL GTID set member: {part!r}")
            for span in ranges.split(":"):
                first, _, last = span.partition("-")
                if not first.isdigit() or (last and not last.isdigit()) or int(last or first) < int(first):
                    raise ValueError(f"not a MySQL GTID interval: {span!r} in {part!r}")
                self._add_interval(uuid.lower(), int(first), int(last or first))

    def add(self, gtid: str) -> None:
        """Count transaction `gtid` (``0-1-42``; MySQL ``uuid:42``) as held; `ValueError` if it is
        not one (MySQL 8.4's tagged GTIDs, ``uuid:tag:42``, are not supported)."""
        if self.mariadb:
            m = _MARIADB.match(gtid)
            if m is None:
                raise ValueError(f"not a MariaDB GTID: {gtid!r} (expected domain-server-seq)")
            self._domains[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
            return
        uuid, _, number = gtid.rpartition(":")
        if not _UUID.match(uuid) or not number.isdigit():
            raise ValueError(f"not a MySQL GTID: {gtid!r} (expected uuid:number)")
        self._add_mysql(uuid.lower(), int(number))

    def _add_mysql(self, uuid: str, n: int) -> None:
        spans = self._sets.get(uuid)
        if spans and spans[-1][1] + 1 == n:  # the usual case: the next number of the last interval
            spans[-1][1] = n
            return
        self._add_interval(uuid, n, n)

    def _add_interval(self, uuid: str, first: int, last: int) -> None:
        spans = self._sets.setdefault(uuid, [])
        bisect.insort(spans, [first, last])
        merged: list[list[int]] = []
        for span in spans:  # few intervals per uuid: merge those that touch or overlap
            if merged and span[0] <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], span[1])
            else:
                merged.append(span)
        spans[:] = merged

    def __bool__(self) -> bool:
        return bool(self._domains or self._sets)

    def __str__(self) -> str:
        if self.mariadb:
            return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(self._domains.items()))
        return ",".join(
            uuid + "".join(f":{a}" if a == b else f":{a}-{b}" for a, b in spans)
            for uuid, spans in sorted(self._sets.items())
        )

    def __repr__(self) -> str:
        return f"GtidState({'mariadb' if self.mariadb else 'mysql'}, {str(self)!r})"
