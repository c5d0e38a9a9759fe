"""A batch as broker records: topic, key, value and event id of every message, in order.

What the Kafka, NATS JetStream and Redis Streams sinks publish is the same; only the
client differs. `RecordRenderer.render` turns a `ChangeBatch` into `Records`, one run
per topic, in publish order:

1. with ``transaction_metadata``, a BEGIN record on the transaction topic for every
   transaction that starts in the batch;
2. per table (and schema version), every change as a Debezium envelope keyed by its
   primary key, each delete followed by a tombstone (null value) with ``tombstones``
   (not for tables without a primary key: a compacted topic refuses null keys).
   An update that changes the primary key becomes, as in Debezium, a delete of the old
   key (then its tombstone) and a create of the new one: each half goes to its key's
   partition, after that key's earlier events, so per-key order holds for consumers
   that key by the message key (Kafka Connect sinks, compacted topics);
3. with ``transaction_metadata``, an END record for every transaction that commits in
   the batch.

Event ids (the ``cdc-event-id`` header, ``Nats-Msg-Id``, the Redis entry field) are
``<source>:<commit>:<seq>`` for changes (the create half of a key change included),
``<id>:delete`` for the delete half of a key change, ``<id>:tombstone`` for the
tombstone after the event ``<id>``, ``<source>:<commit>:0`` for BEGIN and
``<source>:<commit>`` for END (a whole-transaction position): all stable across
replays, so consumers drop repeats.

Transaction records follow Debezium: key ``{"id": "<txId>:<commit>"}``, value
``{"status": "BEGIN"|"END", "id", "ts_ms" (commit time), "event_count",
"data_collections": [{"data_collection": "schema.table", "event_count"}]}`` (null
counts in BEGIN). END's ``event_count`` is exact (the last event's ``seq``: a key
change counts once); the per-table counts of a transaction larger than a batch restart
at the resume point when the daemon restarts in the middle of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, cast

import orjson

from cdc.events import ChangeBatch, RowChange, TableChanges, TableSchema, Transaction
from cdc.sink import SourceInfo
from sinks.eventlog import connect_schema
from sinks.eventlog.envelope import EnvelopeSerializer
from sinks.eventlog.routing import Routing

_TOMBSTONE: Final = b":tombstone"
_DELETE_HALF: Final = b":delete"


@dataclass(slots=True)
class Records:
    """The messages of one topic, in publish order (parallel lists).

    A key of None is a null key (a table without a primary key, a truncate); a value of
    None is a tombstone.
    """

    topic: str
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    ids: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(slots=True)
class _OpenTransaction:
    """Per-table event counts and the last seq of a transaction seen so far."""

    tx: Transaction
    counts: dict[str, int] = field(default_factory=dict)
    last_seq: int = 0
    begun: bool = False


class RecordRenderer:
    """Renders batches as `Records` for one sink (see the module docstring)."""

    def __init__(
        self,
        source: SourceInfo,
        routing: Routing,
        *,
        tombstones: bool = False,
        transaction_metadata: bool = False,
        schemas: bool = False,
    ) -> None:
        self.serializer = EnvelopeSerializer(
            connector=source.connector, source_name=source.name, database=source.database, include_id=False
        )
        self.routing = routing
        self._connector = source.connector
        self._id_prefix = source.name.encode() + b":"
        self._tombstones = tombstones
        self._transactions = transaction_metadata
        self._schemas = schemas
        self._value_schemas: dict[tuple[TableSchema, str], bytes] = {}
        self._key_schemas: dict[tuple[TableSchema, str], bytes] = {}
        #: The transaction a chunked batch left open: its counts go on in the next batch.
        self._open: _OpenTransaction | None = None

    def render(self, batch: ChangeBatch, ts_ms: int) -> list[Records]:
        """Every message of `batch` (already cut to what the sink lacks), in publish order."""
        if not self._transactions:
            return [self._table_records(*_split_key_changes(t), ts_ms, None) for t in batch.tables if t.changes]
        open_txs: dict[int, _OpenTransaction] = {}
        if self._open is not None:
            open_txs[self._open.tx.commit] = self._open
        tables = []
        for t in batch.tables:
            if t.changes:
                split, halves = _split_key_changes(t)
                tables.append(self._table_records(split, halves, ts_ms, self._collection_orders(split, open_txs)))
        ordered = sorted(open_txs.values(), key=lambda o: o.tx.commit)
        begins = Records(self.routing.transaction_topic)
        ends = Records(self.routing.transaction_topic)
        end = batch.position
        self._open = None
        for o in ordered:
            if o.begun:
                self._append_transaction(begins, o, b"BEGIN")
            if o.tx.commit < end.commit or (o.tx.commit == end.commit and end.whole):
                self._append_transaction(ends, o, b"END")
            elif o.tx.commit == end.commit:
                o.begun = False
                self._open = o
        return [r for r in (begins, *tables, ends) if len(r)]

    # -- tables ------------------------------------------------------------------------

    def _table_records(self, table: TableChanges, halves: list[int], ts_ms: int, orders: list[int] | None) -> Records:
        ser = self.serializer
        topic = self.routing.topic(table.schema.table)
        rendered = ser.values(table, ts_ms, orders)
        ids = ser.event_ids(table)
        for i in halves:
            ids[i] += _DELETE_HALF
        keys: list[bytes | None] = (
            [None if k == b"null" else k for k in ser.keys(table)] if table.schema.key else [None] * len(rendered)
        )
        if self._schemas:
            vschema, kschema = self._schemas_of(table, topic)
            wrap = connect_schema.wrap
            rendered = [wrap(vschema, v) for v in rendered]
            keys = [None if k is None else wrap(kschema, k) for k in keys]
        values = cast("list[bytes | None]", rendered)  # no tombstones yet: every value is set
        if self._tombstones and table.schema.key and any(c[0] == "d" for c in table.changes):
            return self._with_tombstones(topic, table, keys, values, ids)
        return Records(topic, keys, values, ids)

    def _with_tombstones(
        self, topic: str, table: TableChanges, keys: list[bytes | None], values: list[bytes | None], ids: list[bytes]
    ) -> Records:
        out = Records(topic)
        for change, key, value, event_id in zip(table.changes, keys, values, ids, strict=True):
            out.keys.append(key)
            out.values.append(value)
            out.ids.append(event_id)
            if change[0] == "d":
                out.keys.append(key)
                out.values.append(None)
                out.ids.append(event_id + _TOMBSTONE)
        return out

    def _schemas_of(self, table: TableChanges, topic: str) -> tuple[bytes, bytes]:
        cache_key = (table.schema, topic)
        vschema = self._value_schemas.get(cache_key)
        if vschema is None:
            vschema = self._value_schemas[cache_key] = connect_schema.value_schema(
                table, topic, self._connector, transaction=self._transactions
            )
            self._key_schemas[cache_key] = connect_schema.key_schema(table, topic)
        return vschema, self._key_schemas[cache_key]

    # -- transactions ------------------------------------------------------------------

    def _collection_orders(self, table: TableChanges, open_txs: dict[int, _OpenTransaction]) -> list[int]:
        """Each change's ``data_collection_order``; records counts and seqs per transaction."""
        name = str(table.schema.table)
        orders = []
        current: _OpenTransaction | None = None
        for _, tx, seq, *_ in table.changes:
            if current is None or current.tx is not tx:
                current = open_txs.get(tx.commit)
                if current is None:
                    current = open_txs[tx.commit] = _OpenTransaction(tx)
            n = current.counts.get(name, 0) + 1
            current.counts[name] = n
            orders.append(n)
            if seq == 1:
                current.begun = True
            if seq > current.last_seq:
                current.last_seq = seq
        return orders

    def _append_transaction(self, records: Records, o: _OpenTransaction, status: bytes) -> None:
        tx_id = self.serializer.transaction_id(o.tx)
        head = b'{"status":"%s","id":"%s","ts_ms":%d,' % (status, tx_id, self.serializer.commit_ms(o.tx))
        if status == b"BEGIN":
            value = head + b'"event_count":null,"data_collections":null}'
            event_id = self._id_prefix + b"%d:0" % o.tx.commit
        else:
            collections = orjson.dumps(
                [{"data_collection": name, "event_count": n} for name, n in o.counts.items()]
            )
            value = head + b'"event_count":%d,"data_collections":%s}' % (o.last_seq, collections)
            event_id = self._id_prefix + b"%d" % o.tx.commit
        key = b'{"id":"%s"}' % tx_id
        if self._schemas:
            key = connect_schema.wrap(connect_schema.TRANSACTION_KEY_SCHEMA, key)
            value = connect_schema.wrap(connect_schema.TRANSACTION_VALUE_SCHEMA, value)
        records.keys.append(key)
        records.values.append(value)
        records.ids.append(event_id)


def _split_key_changes(table: TableChanges) -> tuple[TableChanges, list[int]]:
    """`table` with every key-changing update as a delete of the old key and a create of
    the new one (Debezium's way), and the indexes of those deletes in the result."""
    changes = table.changes
    if not table.schema.key or not any(c[0] == "u" and c[4] is not None for c in changes):
        return table, []
    key_json = table.codec.key_json
    out: list[RowChange] = []
    halves: list[int] = []
    for change in changes:
        op, tx, seq, lsn, before, after = change
        if op == "u" and before is not None and after is not None and key_json(before) != key_json(after):
            halves.append(len(out))
            out.append(("d", tx, seq, lsn, before, None))
            out.append(("c", tx, seq, lsn, None, after))
        else:
            out.append(change)
    if not halves:
        return table, []
    return TableChanges(table.schema, table.codec, out), halves


def count(records: list[Records]) -> int:
    """The number of messages in `records`."""
    return sum(len(r) for r in records)


def flatten(records: list[Records]) -> Iterator[tuple[str, bytes | None, bytes | None, bytes]]:
    """``(topic, key, value, event id)`` of every message, in publish order (slow path: tests)."""
    for r in records:
        for key, value, event_id in zip(r.keys, r.values, r.ids, strict=True):
            yield r.topic, key, value, event_id
