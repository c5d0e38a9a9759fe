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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from operator import itemgetter
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from cdc.errors import ConfigError, SinkError
from cdc.events import UNCHANGED, RawRow, RowBlock, TableChanges, TableSchema, Transaction

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
#: Columns named with this prefix, in any case, are cdc's own in the tables of mirror and
#: changelog sinks (metadata, keep flags, soft-delete marks); no source column may take one.
RESERVED_PREFIX: Final = "_cdc_"


class KeylessTableError(ConfigError):
    """A mirror (or warehouse) sink was asked to keep a table that has no key."""


class ReservedColumnError(SinkError):
    """A source column is named like cdc's own columns (`RESERVED_PREFIX`); not retryable."""


def refuse_reserved_columns(schema: TableSchema, where: str) -> None:
    """Raise `ReservedColumnError` naming `where` (job and sink), the table and the first column of `schema`
    whose name starts with `RESERVED_PREFIX` in any case (Delta Lake and DuckDB compare names without case).

    Sinks that store `changelog_table` or `mirror_steps` call it for every table of a batch before
    writing any of it, so a column added by ALTER mid-stream is refused at its first change.
    """
    for c in schema.columns:
        if c.name.lower().startswith(RESERVED_PREFIX):
            raise ReservedColumnError(
                f"{where}: table {schema.table} has a column named {c.name}, but names starting with "
                f"{RESERVED_PREFIX} are reserved for cdc's own columns in Delta Lake and warehouse tables; rename "
                "the column, or leave the table out of this job (tables.exclude) or send it to an event-log sink"
            )


def holds_rows(tc: TableChanges) -> bool:
    """False for the pseudo-table of selected logical messages (op ``m``): nothing a table stores.

    Messages never share a `TableChanges` with row changes (each prefix is its own
    pseudo-table), so the first change tells.
    """
    return tc.block is not None or not tc.changes or tc.changes[0][0] != "m"


def keep_column(index: int) -> str:
    """The name of the flag column saying data column `index` keeps the target's stored value."""
    return f"_cdc_keep_{index}"


def origin_column(index: int) -> str:
    """The name of the column holding, for key column `index`, the key whose stored row the kept values
    of a moved row come from (null: the row's own key). See `MirrorStep`."""
    return f"_cdc_from_{index}"


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
    key_of = itemgetter(*key_idx) if key_idx else None
    complete = _complete_key(len(key_idx))
    ops: list[str] = []
    txs: list[Transaction] = []
    seqs: list[int] = []
    images: list[RawRow | None] = []
    for op, tx, seq, _, before, after in tc.changes:
        if op == "m":
            continue
        if op == "u" and before is not None and after is not None and key_of is not None:
            old = key_of(before)
            if old != key_of(after) and complete(old):
                ops.append("d")
                txs.append(tx)
                seqs.append(seq)
                images.append(before)
        ops.append(op)
        txs.append(tx)
        seqs.append(seq)
        images.append(after if after is not None else before)
    return _with_meta(tc, images, ops, txs, seqs)


@dataclass(frozen=True, slots=True)
class MirrorStep:
    """One step of bringing a mirror table up to date.

    `truncate`: empty the table first. `changes`: the last change per key, keys unique,
    as data columns + `_cdc_op` (``d`` deletes the key; any other op upserts the row) +
    `_cdc_position`, `_cdc_commit_ts`, `_cdc_tx_id`, then one bool column `keep_column(i)` per
    data column `i` that holds an unchanged (e.g. TOASTed) value in some row: True means
    keep the target's stored value there. None when only a truncate is left to apply.

    Where a kept value lives: in the target's row under the row's own key, unless the row
    was moved to its key by an update of the key (pgoutput sends an unchanged TOASTed value
    as unchanged also then, PITFALLS.md): then the value is in the target's row under the
    key the row had before the run, and `changes` also has one column `origin_column(i)`
    per key column `i` holding that key (null for rows that keep from their own key).
    Sinks read kept values as the target holds them before the step, so the old key's
    delete in the same step must not be applied first. The origin columns exist only when
    some row needs them.
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
    if not holds_rows(tc):
        return []
    schema = tc.schema
    key_idx = [i for i, c in enumerate(schema.columns) if c.key]
    if not key_idx:
        raise KeylessTableError(
            f"table {schema.table} has no primary key (nor replica identity index): a mirror cannot tell its "
            "rows apart; add a primary key, or set mode: changelog for this table"
        )
    if tc.block is not None:  # snapshot rows of one chunk: each key once, all upserts
        return [MirrorStep(False, _block_table(tc.block, tc.codec.arrow_schema()))] if len(tc.block) else []
    key_of = itemgetter(*key_idx)
    complete = _complete_key(len(key_idx))
    truncate = False
    last: dict[object, int] = {}  # key -> index of its last change in the lists below
    ops: list[str] = []
    txs: list[Transaction] = []
    seqs: list[int] = []
    images: list[RawRow | None] = []
    partial: set[int] = set()  # indexes whose image still holds an unchanged value
    #: index -> an image whose key is where the target stores that row's unchanged values,
    #: for the partial rows that moved to another key in this run
    origins: dict[int, RawRow] = {}
    for op, tx, seq, _, before, after in tc.changes:
        if op == "m":
            continue
        if op == "t":
            truncate = True
            last.clear()
            partial.clear()
            origins.clear()
            ops, txs, seqs, images = [], [], [], []
            continue
        if after is None:  # delete
            if before is None:
                continue
            last[key_of(before)] = len(ops)
            ops.append(op)
            txs.append(tx)
            seqs.append(seq)
            images.append(before)
            continue
        k = key_of(after)
        moved = False
        prior: int | None = None  # the row's earlier change in this run (looked up only when needed)
        origin: RawRow | None = None  # where the target stores its unchanged values, when not under k
        if before is not None:
            old = key_of(before)
            if old != k and complete(old):
                moved = True
                prior = last.get(old)  # the row came from the old key: so do its unchanged values
                origin = before
                last[old] = len(ops)
                ops.append("d")
                txs.append(tx)
                seqs.append(seq)
                images.append(before)
        if op == "u" and UNCHANGED in after:
            if not moved:
                prior = last.get(k)
            if prior is not None and ops[prior] != "d":
                earlier = images[prior]
                assert earlier is not None
                after = tuple(e if v is UNCHANGED else v for v, e in zip(after, earlier, strict=True))
                origin = origins.get(prior, earlier)
            if UNCHANGED in after:
                partial.add(len(ops))
                if origin is not None and key_of(origin) != k:
                    origins[len(ops)] = origin
        last[k] = len(ops)
        ops.append(op)
        txs.append(tx)
        seqs.append(seq)
        images.append(after)
    if not last:
        return [MirrorStep(truncate, None)] if truncate else []
    order = sorted(last.values())
    if len(order) < len(ops):
        pick = itemgetter(*order) if len(order) > 1 else (lambda xs: (xs[order[0]],))
        ops, txs, seqs, images = list(pick(ops)), list(pick(txs)), list(pick(seqs)), list(pick(images))
        origins = {n: origins[i] for n, i in enumerate(order) if i in origins}
        partial = {n for n, i in enumerate(order) if i in partial}
    table = _with_meta(tc, images, ops, txs, seqs)
    if partial:
        if origins:  # the key columns of each moved row's origin, null elsewhere
            keys = tc.codec.to_arrow([origins.get(n) for n in range(len(images))])
            for i in key_idx:
                table = table.append_column(pa.field(origin_column(i), keys[i].type), keys[i])
        for col in range(len(schema.columns)):
            flags = [False] * len(images)
            for n in partial:
                image = images[n]
                flags[n] = image is not None and image[col] is UNCHANGED
            if any(flags):
                table = table.append_column(pa.field(keep_column(col), pa.bool_(), nullable=False),
                                            pa.array(flags, pa.bool_()))
    return [MirrorStep(truncate, table)]


def _complete_key(width: int) -> Callable[[object], bool]:
    """Whether a key (a value for one key column, a tuple for several) has no NULL part."""
    if width == 1:
        return lambda k: k is not None
    return lambda k: None not in k  # type: ignore[operator]


def _with_meta(
    tc: TableChanges, images: Sequence[RawRow | None], ops: Sequence[str], txs: Sequence[Transaction],
    seqs: Sequence[int],
) -> pa.Table:
    """Data columns of `images` plus `META_COLUMNS` from the parallel `ops`, `txs` and `seqs`.

    Transactions come in runs (a batch holds whole transactions in order): their commit,
    time and id are expanded from one value per run by Arrow, not per row in Python.
    """
    schema = tc.codec.arrow_schema()
    columns = tc.codec.to_arrow(images)
    run_ends: list[int] = []
    commits: list[int] = []
    stamps: list[datetime] = []
    xids: list[int] = []
    end = 0
    for tx, run in groupby(txs):
        end += len(list(run))
        run_ends.append(end)
        commits.append(tx.commit)
        stamps.append(tx.commit_ts)
        xids.append(tx.xid)
    ends = pa.array(run_ends, pa.int32())

    def expand(values: pa.Array) -> pa.Array:
        return pc.run_end_decode(pa.RunEndEncodedArray.from_arrays(ends, values))

    position = pc.binary_join_element_wise(
        _padded(expand(pa.array(commits, pa.uint64()))), _padded(pa.array(seqs, pa.uint64())), ":"
    )
    meta = [
        pa.array(ops, pa.string()),
        position,
        expand(pa.array(stamps, pa.timestamp("us", tz="UTC"))),
        expand(pa.array(xids, pa.int64())),
    ]
    return pa.Table.from_arrays([*columns, *meta], schema=pa.schema([*schema, *META_FIELDS]))


def _block_table(block: RowBlock, schema: pa.Schema) -> pa.Table:
    """A columnar block of snapshot rows with its metadata columns, without touching a row."""
    n = len(block)
    # first_seq, first_seq + 1, ... in C (a Python range would build n ints)
    one = pa.scalar(1, pa.uint64())
    seqs = pc.add(pc.subtract(pc.cumulative_sum(pa.repeat(one, n)), one), pa.scalar(block.first_seq, pa.uint64()))
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


def _padded(values: pa.Array) -> pa.Array:
    return pc.utf8_lpad(pc.cast(values, pa.string()), width=_DIGITS, padding="0")
