"""Columnar views of a batch's row changes, for the sinks that load Arrow (Delta Lake, warehouses).

Two shapes, both built per `TableChanges` (one table under one schema):

- `changelog_table`: every change in log order, its data columns plus the `_cdc_*`
  metadata columns. What an append-only history stores.
- `mirror_steps`: what a table that equals the source must apply: the last change per
  key (deletes included), after the last truncate of the run. What a MERGE applies.

Both keep values in the documented Arrow mapping of the source's `RowCodec`, converted
per column; the only per-change Python work is gathering raw rows and, for mirrors, one
dict operation per change to find the last change of each key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from cdc.errors import ConfigError
from cdc.events import UNCHANGED, RawRow, RowBlock, TableChanges, Transaction

OP: Final = "_cdc_op"
POSITION: Final = "_cdc_position"
COMMIT_TS: Final = "_cdc_commit_ts"
TX_ID: Final = "_cdc_tx_id"
#: The metadata columns `changelog_table` adds after the data columns, in this order.
META_COLUMNS: Final = (OP, POSITION, COMMIT_TS, TX_ID)
META_FIELDS: Final = (
    pa.field(OP, pa.string()),
    pa.field(POSITION, pa.string()),
    pa.field(COMMIT_TS, pa.timestamp("us", tz="UTC")),
    pa.field(TX_ID, pa.int64()),
)
_DIGITS: Final = 20  # a uint64 in decimal: positions sort as text


class KeylessTableError(ConfigError):
    """A mirror (or warehouse) sink was asked to keep a table that has no key."""


def keep_column(index: int) -> str:
    """The name of the flag column saying data column `index` keeps the target's stored value."""
    return f"_cdc_keep_{index}"


def position_text(commit: int, seq: int) -> str:
    """`Position(commit, seq)` as the sortable text of `_cdc_position` (``commit:seq``, zero padded)."""
    return f"{commit:0{_DIGITS}d}:{seq:0{_DIGITS}d}"


def changelog_table(tc: TableChanges) -> pa.Table:
    """Every row change of `tc` in log order: data columns, then `META_COLUMNS`.

    Data columns hold the after image, or the before image for a delete (key columns
    only unless the table has REPLICA IDENTITY FULL); a truncate is one row with null data.
    An update that changes the key is two rows at the same position: a ``d`` of the old key,
    then the ``u``, so the history folds into the table. Logical messages (op ``m``) are not
    table rows and are left out.
    """
    if tc.block is not None:
        return _block_table(tc.block, tc.codec.arrow_schema())
    key_idx = [i for i, c in enumerate(tc.schema.columns) if c.key]
    changes: list[tuple[str, Transaction, int, int, RawRow | None, RawRow | None]] = []
    for change in tc.changes:
        op, tx, seq, lsn, before, after = change
        if op == "m":
            continue
        if op == "u" and before is not None and after is not None and key_idx:
            old = tuple(before[i] for i in key_idx)
            if old != tuple(after[i] for i in key_idx) and all(v is not None for v in old):
                changes.append(("d", tx, seq, lsn, before, None))
        changes.append(change)
    images = [after if after is not None else before for _, _, _, _, before, after in changes]
    return _with_meta(tc, images, changes)


@dataclass(frozen=True, slots=True)
class MirrorStep:
    """One step of bringing a mirror table up to date.

    `truncate`: empty the table first. `changes`: the last change per key, keys unique,
    as data columns + `_cdc_op` (``d`` deletes the key; any other op upserts the row) +
    `_cdc_position`, `_cdc_commit_ts`, `_cdc_tx_id`, then one bool column `keep_column(i)` per
    data column `i` that holds an unchanged (e.g. TOASTed) value in some row: True means
    keep the target's stored value there. None when only a truncate is left to apply.
    """

    truncate: bool
    changes: pa.Table | None


def mirror_steps(tc: TableChanges) -> list[MirrorStep]:
    """Reduce `tc` to what a mirror applies; raise `KeylessTableError` for a table without key.

    A truncate wipes what came before it, so the result is at most one step: changes after
    the last truncate, with `truncate` set when there was one. An update that changes the
    key deletes the old key. An update with unchanged columns takes their values from an
    earlier change of the same key in this run when there is one, else flags them to keep.
    """
    schema = tc.schema
    key_idx = [i for i, c in enumerate(schema.columns) if c.key]
    if not key_idx:
        raise KeylessTableError(
            f"table {schema.table} has no primary key (nor replica identity index): a mirror cannot tell its "
            "rows apart; add a primary key, or set mode: changelog for this table"
        )
    if tc.block is not None:  # snapshot rows of one chunk: each key once, all upserts
        return [MirrorStep(False, _block_table(tc.block, tc.codec.arrow_schema()))] if len(tc.block) else []
    truncate = False
    last: dict[tuple[object, ...], int] = {}
    rows: list[RawRow | None] = []
    changes: list[tuple[str, Transaction, int, int, RawRow | None, RawRow | None]] = []
    for change in tc.changes:
        op, tx, seq, lsn, before, after = change
        if op == "m":
            continue
        if op == "t":
            truncate = True
            last.clear()
            rows.clear()
            changes.clear()
            continue
        if after is None:  # delete
            if before is None:
                continue
            k = tuple(before[i] for i in key_idx)
            last[k] = len(rows)
            rows.append(before)
            changes.append(change)
            continue
        k = tuple(after[i] for i in key_idx)
        if before is not None:
            old = tuple(before[i] for i in key_idx)
            if old != k and all(v is not None for v in old):
                last[old] = len(rows)
                rows.append(before)
                changes.append(("d", tx, seq, lsn, before, None))
        if op == "u" and UNCHANGED in after:
            prior = last.get(k)
            earlier = rows[prior] if prior is not None and changes[prior][0] != "d" else None
            if earlier is not None:
                after = tuple(e if v is UNCHANGED else v for v, e in zip(after, earlier, strict=True))
        last[k] = len(rows)
        rows.append(after)
        changes.append((op, tx, seq, lsn, before, after))
    if not last:
        return [MirrorStep(truncate, None)] if truncate else []
    order = sorted(last.values())
    kept = [changes[i] for i in order]
    images = [rows[i] for i in order]
    table = _with_meta(tc, images, kept)
    for col in range(len(schema.columns)):
        flags = [row is not None and row[col] is UNCHANGED for row in images]
        if any(flags):
            table = table.append_column(pa.field(keep_column(col), pa.bool_(), nullable=False),
                                        pa.array(flags, pa.bool_()))
    return [MirrorStep(truncate, table)]


def _with_meta(
    tc: TableChanges,
    images: Sequence[RawRow | None],
    changes: Sequence[tuple[str, Transaction, int, int, RawRow | None, RawRow | None]],
) -> pa.Table:
    schema = tc.codec.arrow_schema()
    columns = tc.codec.to_arrow(images)
    ops: list[str] = []
    commits: list[int] = []
    seqs: list[int] = []
    tx_index: list[int] = []
    stamps: list[datetime] = []
    xids: list[int] = []
    last_tx: Transaction | None = None
    for op, tx, seq, *_ in changes:
        if tx is not last_tx:
            stamps.append(tx.commit_ts)
            xids.append(tx.xid)
            last_tx = tx
        ops.append(op)
        commits.append(tx.commit)
        seqs.append(seq)
        tx_index.append(len(stamps) - 1)
    take = pa.array(tx_index, pa.int32())
    position = pc.binary_join_element_wise(
        _padded(commits), _padded(seqs), ":"
    )
    meta = [
        pa.array(ops, pa.string()),
        position,
        pa.array(stamps, pa.timestamp("us", tz="UTC")).take(take),
        pa.array(xids, pa.int64()).take(take),
    ]
    fields = [*schema, *META_FIELDS]
    return pa.Table.from_arrays([*columns, *meta], schema=pa.schema(fields))


def _block_table(block: RowBlock, schema: pa.Schema) -> pa.Table:
    """A columnar block of snapshot rows with its metadata columns, without touching a row."""
    n = len(block)
    seqs = pa.array(range(block.first_seq, block.first_seq + n), pa.uint64())
    position = pc.binary_join_element_wise(
        pa.repeat(position_text(block.tx.commit, 0)[:_DIGITS], n),
        pc.utf8_lpad(pc.cast(seqs, pa.string()), width=_DIGITS, padding="0"), ":",
    )
    meta = [
        pa.repeat("r", n).cast(pa.string()),
        position,
        pa.repeat(pa.scalar(block.tx.commit_ts, pa.timestamp("us", tz="UTC")), n),
        pa.repeat(pa.scalar(block.tx.xid, pa.int64()), n),
    ]
    return pa.Table.from_arrays([*block.to_arrow(), *meta], schema=pa.schema([*schema, *META_FIELDS]))


def _padded(values: list[int]) -> pa.Array:
    text = pc.cast(pa.array(values, pa.uint64()), pa.string())
    return pc.utf8_lpad(text, width=_DIGITS, padding="0")
