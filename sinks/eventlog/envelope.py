"""The Debezium-compatible JSON envelope: one serializer for every event-log sink.

A value looks like Debezium's (https://debezium.io/documentation/reference/connectors/postgresql.html)::

    {"id": "shop:23456:3",                       # only when include_id (file sink)
     "before": null | {...}, "after": null | {...},
     "source": {"version": "0.1.0", "connector": "postgresql", "name": "shop",
                "ts_ms": <commit ms>, "snapshot": "false", "db": "shop",
                "schema": "public", "table": "orders", "txId": 771, "lsn": 23400},
     "op": "c", "ts_ms": <ms when cdc wrote it>}

The event id ``<source name>:<commit>:<seq>`` is stable across replays, so consumers
drop repeats by it. Serialization works per table and per transaction: everything but
the row images and the change's LSN is rendered once, then joined per event.

With transaction metadata (Debezium's ``provide.transaction.metadata``) each value ends
with ``"transaction": {"id": "<txId>:<commit>", "total_order": <seq>,
"data_collection_order": <n>}``: `total_order` is the event's 1-based place in its
transaction, `data_collection_order` its place among the transaction's events of the
same table. The broker sinks use it; the file sink does not (its lines stay as above).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import orjson

from cdc import __version__
from cdc.events import TableChanges, Transaction

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)
_OP_TAIL: Final = {op: b'},"op":"' + op.encode() + b'","ts_ms":' for op in "rcudtm"}


class EnvelopeSerializer:
    """Renders `TableChanges` as Debezium envelopes (one JSON object per event)."""

    def __init__(self, *, connector: str, source_name: str, database: str, include_id: bool) -> None:
        self._connector = connector
        self._source_name = source_name
        self._database = database
        self._include_id = include_id
        self._id_prefix = source_name.encode() + b":"

    def event_id(self, tx: Transaction, seq: int) -> bytes:
        """``<source name>:<commit>:<seq>``: the same on every replay of the event."""
        return b"%s%d:%d" % (self._id_prefix, tx.commit, seq)

    def _source_prefix(self, table: TableChanges, tx: Transaction, snapshot: bool) -> bytes:
        """The source block up to ``"lsn":``; `snapshot` marks snapshot reads (op ``r``)."""
        tid = table.schema.table
        block = orjson.dumps(
            {
                "version": __version__,
                "connector": self._connector,
                "name": self._source_name,
                "ts_ms": (tx.commit_ts - _EPOCH) // _MILLISECOND,
                "snapshot": "true" if snapshot else "false",
                "db": self._database,
                "schema": tid.schema,
                "table": tid.table,
                "txId": tx.xid,
            }
        )
        return b',"source":' + block[:-1] + b',"lsn":'

    def values(self, table: TableChanges, ts_ms: int, collection_orders: Sequence[int] | None = None) -> list[bytes]:
        """The envelope JSON of every change of the table, in order.

        The hot path of every event-log sink: what depends only on the transaction (id
        prefix, source block) is rendered once per transaction; per event it is one join.
        With `collection_orders` (each change's ``data_collection_order``), every value
        carries Debezium's ``transaction`` block after ``ts_ms``.
        """
        if collection_orders is not None:
            return self._values_with_transaction(table, ts_ms, collection_orders)
        to_json = table.codec.to_json
        tails = {op: tail + b"%d}" % ts_ms for op, tail in _OP_TAIL.items()}
        out: list[bytes] = []
        append = out.append
        last_tx: Transaction | None = None
        head = source = b""
        for op, tx, seq, lsn, before, after in table.changes:
            if tx is not last_tx:
                source = self._source_prefix(table, tx, op == "r")
                head = (b'{"id":"%s%d:' % (self._id_prefix, tx.commit)) if self._include_id else b""
                last_tx = tx
            append(
                b"".join(
                    (
                        head + b'%d","before":' % seq if head else b'{"before":',
                        b"null" if before is None else to_json(before),
                        b',"after":',
                        b"null" if after is None else to_json(after),
                        source,
                        b"%d" % lsn,
                        tails[op],
                    )
                )
            )
        return out

    def _values_with_transaction(self, table: TableChanges, ts_ms: int, orders: Sequence[int]) -> list[bytes]:
        to_json = table.codec.to_json
        tails = {op: tail + b'%d,"transaction":{"id":"' % ts_ms for op, tail in _OP_TAIL.items()}
        out: list[bytes] = []
        append = out.append
        last_tx: Transaction | None = None
        head = source = tx_id = b""
        for (op, tx, seq, lsn, before, after), order in zip(table.changes, orders, strict=True):
            if tx is not last_tx:
                source = self._source_prefix(table, tx, op == "r")
                head = (b'{"id":"%s%d:' % (self._id_prefix, tx.commit)) if self._include_id else b""
                tx_id = self.transaction_id(tx) + b'","total_order":'
                last_tx = tx
            append(
                b"".join(
                    (
                        head + b'%d","before":' % seq if head else b'{"before":',
                        b"null" if before is None else to_json(before),
                        b',"after":',
                        b"null" if after is None else to_json(after),
                        source,
                        b"%d" % lsn,
                        tails[op],
                        tx_id,
                        b'%d,"data_collection_order":%d}}' % (seq, order),
                    )
                )
            )
        return out

    @staticmethod
    def transaction_id(tx: Transaction) -> bytes:
        """Debezium's PostgreSQL transaction id, ``<txId>:<commit LSN>``: the same on every replay."""
        return b"%d:%d" % (tx.xid, tx.commit)

    @staticmethod
    def commit_ms(tx: Transaction) -> int:
        """The commit time in milliseconds since the epoch (``source.ts_ms``)."""
        return (tx.commit_ts - _EPOCH) // _MILLISECOND

    def event_ids(self, table: TableChanges) -> list[bytes]:
        """The event id of every change of the table, in order."""
        prefix = self._id_prefix
        return [b"%s%d:%d" % (prefix, tx.commit, seq) for _, tx, seq, *_ in table.changes]

    def keys(self, table: TableChanges) -> Iterator[bytes]:
        """The message key of every change: the key columns as JSON, or ``null``."""
        key_json = table.codec.key_json
        for _, _, _, _, before, after in table.changes:
            image = after if after is not None else before
            yield b"null" if image is None else key_json(image)
