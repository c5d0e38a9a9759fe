"""The Delta Lake sink: one Delta table per source table, as a changelog or a mirror.

**Layout.** Source table ``schema.table`` lives at ``<path>/<schema>/<table>`` (each name
escaped by `path_segment`, so no source name can leave `path`), on a local disk or an object store
(``s3://bucket/prefix`` with `storage_options`).

**Modes** (per sink, overridable per table):
- ``changelog`` appends every change: the data columns plus `_cdc_op`, `_cdc_position`,
  `_cdc_commit_ts`, `_cdc_tx_id` (cdc/columnar.py), optionally partitioned.
- ``mirror`` keeps a table equal to the source: each batch is reduced to the last change
  per key, then applied with one MERGE (delete, update, insert); unchanged (TOASTed)
  columns keep their stored value (read before the MERGE for a row an update of the key
  moved: the value is stored under the old key); a truncate empties the table first.

**Exactly once.** Every commit that writes a table's changes carries two Delta
application transactions, ``<app>#commit`` and ``<app>#seq`` (app = job, sink and
table), whose versions are the two halves of the position the commit reaches. They are
part of the same atomic commit as the data, so a table knows exactly what it holds. On a
replay (after a crash the pipeline resumes from the job checkpoint, which may be behind
a table) each table skips the changes at or below its own position. The sink's overall
position is kept in the job's checkpoint store (it only bounds the replay). A commit
that loses to a concurrent writer (`CommitFailedError`) reloads the table and, unless the
other writer already recorded this position, tries again.

Every deltalake call is blocking and runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from queue import Full, Queue
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import structlog
from deltalake import CommitProperties, DeltaTable, QueryBuilder, write_deltalake
from deltalake import Transaction as AppTransaction
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.schema import Field as DeltaField

from cdc.checkpoints import StoredPosition
from cdc.columnar import (
    COMMIT_TS,
    OP,
    POSITION,
    changelog_table,
    holds_rows,
    keep_column,
    mirror_steps,
    origin_column,
    refuse_reserved_columns,
)
from cdc.config import DeltaSinkConfig
from cdc.errors import CdcError, SinkError, SinkWriteError, first_line
from cdc.events import WHOLE_TRANSACTION, ChangeBatch, Position, TableChanges, Transaction
from cdc.sink import SourceInfo
from sinks.delta.schema import Clamped, conform, delta_schema, plan_evolution

log = structlog.get_logger(__name__)

_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_MAX_VERSION: Final = (1 << 63) - 1  # Delta transaction versions are signed 64-bit
#: Metadata columns a mirror table keeps with each row: where its last change came from.
MIRROR_META: Final = (POSITION, COMMIT_TS)


def path_segment(name: str) -> str:
    """`name` as one path segment: ASCII letters, digits, ``_`` and ``-`` as they are, every
    other byte of its UTF-8 as ``~XX`` (so no name can climb out of, or collide inside, `path`)."""
    return "".join(chr(b) if chr(b) in _SAFE else f"~{b:02X}" for b in name.encode())


def stored_batches(delta: DeltaTable, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The table's `columns`, batch by batch, in the table's own Arrow types, read by deltalake's SQL engine.

    Not `to_pyarrow_dataset`: it turns every column's file statistics into Python values first
    and fails on dates Python cannot hold (BC, years past 9999; PITFALLS.md) although the data
    is fine. The engine hands out view types (``string_view``); they are cast back here.
    """
    schema = pa.schema(delta.schema().to_arrow())
    wanted = pa.schema([schema.field(n) for n in columns])
    query = f"SELECT {', '.join(quote_sql(n) for n in columns)} FROM t"  # noqa: S608 (names quoted)
    reader = pa.RecordBatchReader.from_stream(QueryBuilder().register("t", delta).execute(query))
    for b in reader:
        yield b.cast(wanted)


def _read_ahead(batches: Iterator[pa.RecordBatch], depth: int = 2) -> Iterator[pa.RecordBatch]:
    """`batches`, produced by a thread of their own at most `depth` ahead (memory stays bounded)."""
    queue: Queue[pa.RecordBatch | BaseException | None] = Queue(maxsize=depth)
    done = threading.Event()  # the consumer stopped (also early, when the write failed)

    def put(item: pa.RecordBatch | BaseException | None) -> bool:
        while not done.is_set():
            try:
                queue.put(item, timeout=0.5)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for b in batches:
                if not put(b):
                    return
            put(None)
        except BaseException as err:  # handed to the consumer, which raises it
            put(err)

    threading.Thread(target=produce, name="cdc-delta-read", daemon=True).start()
    try:
        while (item := queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        done.set()


def quote_sql(name: str) -> str:
    """`name` as a quoted identifier in the SQL expressions deltalake's MERGE parses."""
    return '"' + name.replace('"', '""') + '"'


def key_ranges(source: pa.Table, key: list[str]) -> list[str]:
    """``t.k BETWEEN min AND max`` of the batch's integer key columns, for the MERGE predicate.

    Redundant for matching (a target row that matches a source key lies in that range) but
    it lets the MERGE skip every file whose statistics lie outside it: a stream of new,
    increasing keys then no longer reads the whole table per batch.
    """
    out = []
    for k in key:
        column = source.column(k)
        if not pa.types.is_integer(column.type) or column.null_count == len(column):
            continue
        bounds = pc.min_max(column)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        out.append(f"t.{quote_sql(k)} BETWEEN {int(low)} AND {int(high)}")
    return out


@dataclass(slots=True)
class _Table:
    """What the sink knows of one Delta table."""

    name: str  # schema.table
    uri: str
    app_id: str
    mode: str
    partition_by: list[str]
    delta: DeltaTable | None = None
    held: Position | None = None
    touched: bool = False
    #: The snapshot whose blocks may be appended rather than merged: the table was empty when
    #: its first block came and has taken only blocks of it since (their keys are disjoint).
    appending: Transaction | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: Columns already warned about for values outside Delta's date range (docs/delta.md).
    clamped: set[str] = field(default_factory=set)

    def transactions(self, position: Position) -> list[AppTransaction]:
        if position.commit > _MAX_VERSION:
            raise SinkError(f"position {position} does not fit a Delta transaction version")
        return [AppTransaction(f"{self.app_id}#commit", position.commit),
                AppTransaction(f"{self.app_id}#seq", position.seq)]


class DeltaSink:
    """Writes batches into Delta tables, exactly once per table (see the module docstring)."""

    def __init__(self, name: str, config: DeltaSinkConfig, info: SourceInfo, *, job: str,
                 stored: StoredPosition) -> None:
        self.name = name
        self._config = config
        self._info = info
        self._job = job
        self._stored = stored
        self._position: Position | None = None
        self._tables: dict[str, _Table] = {}
        self._options = {k: v.get_secret_value() for k, v in config.storage_options.items()}
        self._remote = "://" in config.path
        self._root = config.path.rstrip("/") if self._remote else os.path.abspath(config.path)
        self._last_compact = time.monotonic()
        self._last_vacuum = time.monotonic()
        self._log = log.bind(job=job, sink=name)

    @property
    def where(self) -> str:
        return f"job {self._job}, sink {self.name}"

    async def open(self) -> None:
        self._position = self._stored()
        if not self._remote:
            try:
                os.makedirs(self._root, exist_ok=True)
            except OSError as err:
                raise SinkError(f"{self.where}: cannot create {self._root}: {err.strerror}") from err
        self._log.info("delta_sink_opened", path=self._root, position=str(self._position) if self._position else None)

    def position(self) -> Position | None:
        return self._position

    async def write(self, batch: ChangeBatch) -> None:
        if self._position is not None and batch.position <= self._position:
            return
        for tc in batch.tables:  # before any table is written
            if holds_rows(tc):
                refuse_reserved_columns(tc.schema, self.where)
        last_of: dict[str, int] = {str(tc.schema.table): i for i, tc in enumerate(batch.tables)}
        for i, tc in enumerate(batch.tables):
            last = tc.last
            if last is None or not holds_rows(tc):  # logical messages are not written to Delta tables
                continue
            name = str(tc.schema.table)
            reach = batch.position if last_of[name] == i else Position(last[0].commit, last[1])
            await self._in_thread(self._write_table, tc, reach)
        self._position = batch.position
        if self._maintenance_due():
            await self._in_thread(self._maintain)

    async def close(self) -> None:
        self._tables.clear()

    async def _in_thread(self, work: Callable[..., None], *args: Any) -> None:
        """Run blocking deltalake `work` in a worker thread, a panic of deltalake turned into a `SinkError`.

        deltalake reports a panic of its Rust code as pyo3's ``PanicException``, a ``BaseException``
        that would pass every ``except Exception`` up to the daemon and end the job without a
        word. Its cause does not go away by retrying, so the error is not retryable.
        """
        try:
            await asyncio.to_thread(work, *args)
        except BaseException as err:
            if type(err).__name__ != "PanicException":
                raise
            self._tables.clear()  # reload every table from storage on the next run
            raise SinkError(f"{self.where}: deltalake failed with a panic: {first_line(err)}; retrying cannot help: "
                            "report it with the log") from err

    # -- one table ----------------------------------------------------------------------

    def _table(self, tc: TableChanges) -> _Table:
        name = str(tc.schema.table)
        t = self._tables.get(name)
        if t is None:
            override = self._config.tables.get(name)
            mode = (override.mode if override is not None else None) or self._config.mode
            partition_by = (override.partition_by if override is not None else None) or self._config.partition_by
            part = f"{path_segment(tc.schema.table.schema)}/{path_segment(tc.schema.table.table)}"
            uri = f"{self._root}/{part}" if self._remote else os.path.join(self._root, part)
            t = _Table(name, uri, f"cdc/{self._job}/{self.name}/{name}", mode,
                       partition_by if mode == "changelog" else [])
            self._load(t)
            self._tables[name] = t
        return t

    def _load(self, t: _Table) -> None:
        try:
            t.delta = DeltaTable(t.uri, storage_options=self._options or None)
        except TableNotFoundError:
            t.delta = None
            t.held = None
            return
        except (DeltaError, OSError) as err:
            raise SinkWriteError(f"{self.where}: cannot open Delta table {t.uri}: {first_line(err)}") from err
        commit = t.delta.transaction_version(f"{t.app_id}#commit")
        seq = t.delta.transaction_version(f"{t.app_id}#seq")
        t.held = Position(commit, WHOLE_TRANSACTION if seq is None else seq) if commit is not None else None

    def _write_table(self, tc: TableChanges, reach: Position) -> None:
        t = self._table(tc)
        if t.held is not None:
            if reach <= t.held:
                return
            kept = ChangeBatch(reach, [tc]).after(t.held).tables
            if not kept:
                return
            tc = kept[0]
        for attempt in range(self._config.max_commit_retries + 1):
            try:
                if t.mode == "changelog":
                    self._append(t, tc, reach)
                else:
                    self._merge(t, tc, reach)
                break
            except CommitFailedError as err:
                self._load(t)  # someone else committed: see whether it was this very position
                if t.held is not None and t.held >= reach:
                    return
                if attempt == self._config.max_commit_retries:
                    raise SinkWriteError(
                        f"{self.where}: Delta table {t.uri}: commit failed {attempt + 1} times against concurrent "
                        f"writers: {first_line(err)}"
                    ) from err
                self._log.warning("delta_commit_conflict", table=t.name, attempt=attempt + 1)
            except CdcError:
                raise
            except (DeltaError, OSError, pa.ArrowException) as err:
                self._tables.pop(t.name, None)  # reload from storage on the retry
                raise SinkWriteError(f"{self.where}: Delta table {t.uri}: {first_line(err)}") from err
        t.held = reach
        t.touched = True

    def _commit(self, t: _Table, reach: Position) -> CommitProperties:
        return CommitProperties(
            app_transactions=t.transactions(reach),
            custom_metadata={"cdc.job": self._job, "cdc.sink": self.name, "cdc.position": str(reach)},
            max_commit_retries=self._config.max_commit_retries,
        )

    def _evolve(self, t: _Table, incoming: pa.Schema) -> pa.Schema:
        """Create the table or bring its schema in line with `incoming`; return the table's schema."""
        if t.delta is None:
            t.delta = DeltaTable.create(
                t.uri, incoming, mode="ignore", partition_by=t.partition_by or None,
                storage_options=self._options or None,
            )
            self._log.info("delta_table_created", table=t.name, uri=t.uri, mode=t.mode)
            return incoming
        stored = pa.schema(t.delta.schema().to_arrow())
        plan = plan_evolution(stored, incoming, f"{self.where}, table {t.name} (Delta table {t.uri})")
        if plan.widened:
            self._rewrite(t, plan.target)
            self._log.info("delta_table_widened", table=t.name, columns=list(plan.widened))
        elif plan.added:
            t.delta.alter.add_columns([DeltaField.from_arrow(f) for f in plan.added])
            self._log.info("delta_table_columns_added", table=t.name, columns=[f.name for f in plan.added])
        return plan.target

    def _clamped(self, t: _Table) -> Clamped:
        """Warn ``delta_value_clamped`` once per table and column (never the values themselves)."""
        def warn(column: str, count: int) -> None:
            if column not in t.clamped:
                t.clamped.add(column)
                self._log.warning("delta_value_clamped", table=t.name, column=column, values=count)
        return warn

    def _rewrite(self, t: _Table, target: pa.Schema) -> None:
        """Rewrite the whole table with `target`'s (wider) types, batch by batch, in one commit."""
        assert t.delta is not None
        # Read in a thread of its own: deltalake's engine cannot run inside the write's runtime.
        batches = (conform(pa.Table.from_batches([b]), target).to_batches()
                   for b in _read_ahead(stored_batches(t.delta, t.delta.schema().to_arrow().names)))
        reader = pa.RecordBatchReader.from_batches(target, (b for group in batches for b in group))
        write_deltalake(t.delta, reader, mode="overwrite", schema_mode="overwrite",
                        partition_by=t.partition_by or None, storage_options=self._options or None)
        t.delta.update_incremental()

    def _append(self, t: _Table, tc: TableChanges, reach: Position) -> None:
        data = changelog_table(tc)
        if data.num_rows == 0:
            return
        incoming = delta_schema(data.schema)
        target = self._evolve(t, incoming)
        assert t.delta is not None
        size = int(self._config.target_file_size) if self._config.target_file_size else None
        write_deltalake(t.delta, conform(data, target, self._clamped(t)), mode="append",
                        storage_options=self._options or None, target_file_size=size,
                        commit_properties=self._commit(t, reach))
        t.delta.update_incremental()

    def _merge(self, t: _Table, tc: TableChanges, reach: Position) -> None:
        if tc.block is not None and self._may_append(t, tc.block.tx):
            self._append_block(t, tc, reach)
            return
        t.appending = None
        key = list(tc.schema.key)
        for step in mirror_steps(tc):
            if step.truncate and t.delta is not None:
                t.delta.delete(commit_properties=self._commit(t, reach) if step.changes is None else None)
                t.delta.update_incremental()
            if step.changes is None:
                continue
            changes = step.changes
            data_names = [f.name for f in tc.codec.arrow_schema()]
            columns = [*data_names, *MIRROR_META]
            incoming = delta_schema(changes.select(columns).schema)
            target = self._evolve(t, incoming)
            assert t.delta is not None
            flags = [keep_column(i) for i in range(len(data_names)) if keep_column(i) in changes.column_names]
            source = conform(changes.select(columns), pa.schema([target.field(n) for n in columns]), self._clamped(t))
            for n in flags:
                source = source.append_column(n, changes.column(n))
            source = self._fill_moved(t, source, changes, data_names, key)
            source = source.append_column(OP, changes.column(OP))
            keep = {keep_column(i): n for i, n in enumerate(data_names)}
            kept_by = {keep[f]: f for f in flags}
            updates = {}
            for n in columns:
                q = quote_sql(n)
                flag = kept_by.get(n)
                updates[q] = (f"CASE WHEN s.{quote_sql(flag)} THEN t.{q} ELSE s.{q} END" if flag else f"s.{q}")
            predicate = " AND ".join([*(f"t.{quote_sql(k)} = s.{quote_sql(k)}" for k in key),
                                      *key_ranges(source, key)])
            upsert = f"s.{quote_sql(OP)} <> 'd'"
            (
                t.delta.merge(source, predicate=predicate, source_alias="s", target_alias="t",
                              commit_properties=self._commit(t, reach))
                .when_matched_delete(predicate=f"s.{quote_sql(OP)} = 'd'")
                .when_matched_update(updates=updates, predicate=upsert)
                .when_not_matched_insert(updates={quote_sql(n): f"s.{quote_sql(n)}" for n in columns},
                                         predicate=upsert)
                .execute()
            )
            t.delta.update_incremental()

    def _fill_moved(self, t: _Table, source: pa.Table, changes: pa.Table, data_names: list[str],
                    key: list[str]) -> pa.Table:
        """`source` with the kept values of moved rows filled in from the table, their flags cleared.

        A row an update of the key moved keeps its unchanged values from the stored row of the
        key it came from (`cdc.columnar.MirrorStep`), which the MERGE, matching on the new key,
        cannot see: read those rows first (the table as of before this step). Moves are rare,
        so this walks the moved rows in Python; the common step has no origin columns and
        returns at once.
        """
        origins = [origin_column(data_names.index(k)) for k in key]
        if origins[0] not in changes.column_names:
            return source
        assert t.delta is not None
        moved = pc.is_valid(changes.column(origins[0]))
        rows = pc.indices_nonzero(moved).to_pylist()
        types = [source.schema.field(k).type for k in key]
        wanted = list(zip(*(changes.column(o).take(rows).cast(ty).to_pylist()
                            for o, ty in zip(origins, types, strict=True)), strict=True))
        kept = [(i, n) for i, n in enumerate(data_names) if keep_column(i) in source.column_names]
        where = None
        for k, ty, values in zip(key, types, zip(*wanted, strict=True), strict=True):
            part = pc.field(k).isin(pa.array(sorted(set(values)), ty))
            where = part if where is None else where & part
        assert where is not None
        stored = pa.Table.from_batches(
            [b.filter(where) for b in stored_batches(t.delta, [*key, *(n for _, n in kept)])],
            schema=pa.schema([source.schema.field(n) for n in [*key, *(n for _, n in kept)]]))
        found = {k: j for j, k in enumerate(zip(*(stored.column(k).to_pylist() for k in key), strict=True))}
        at: list[int | None] = [None] * source.num_rows
        for r, origin in zip(rows, wanted, strict=True):
            at[r] = found.get(origin)
        picks = pa.array(at, pa.int64())
        for i, n in kept:
            flag = source.column(keep_column(i))
            use = pc.and_(flag, moved)
            column = source.schema.get_field_index(n)
            value = stored.column(n).take(picks).cast(source.schema.field(n).type)
            source = source.set_column(column, source.schema.field(n), pc.if_else(use, value, source.column(n)))
            flag_at = source.schema.get_field_index(keep_column(i))
            source = source.set_column(flag_at, source.schema.field(flag_at), pc.and_(flag, pc.invert(moved)))
        return source

    def _may_append(self, t: _Table, snapshot: Transaction) -> bool:
        """True when a block of `snapshot` can be appended to the mirror instead of merged.

        An initial snapshot reads each row once, in disjoint chunks, before any streamed
        change: into an empty table its blocks cannot meet an existing key, and appending
        them skips the MERGE's scan of the growing table.
        """
        if t.appending is snapshot:
            return True
        if t.delta is None or not t.delta.file_uris():
            t.appending = snapshot
            return True
        return False

    def _append_block(self, t: _Table, tc: TableChanges, reach: Position) -> None:
        [step] = mirror_steps(tc)
        assert step.changes is not None
        columns = [*(f.name for f in tc.codec.arrow_schema()), *MIRROR_META]
        data = step.changes.select(columns)
        target = self._evolve(t, delta_schema(data.schema))
        assert t.delta is not None
        size = int(self._config.target_file_size) if self._config.target_file_size else None
        write_deltalake(t.delta, conform(data, target, self._clamped(t)), mode="append",
                        storage_options=self._options or None, target_file_size=size,
                        commit_properties=self._commit(t, reach))
        t.delta.update_incremental()

    # -- maintenance ----------------------------------------------------------------------

    def _due(self) -> tuple[bool, bool]:
        """Whether compaction and vacuum are due now."""
        now = time.monotonic()
        cfg = self._config
        compact = cfg.compact_interval_s is not None and now - self._last_compact >= cfg.compact_interval_s
        vacuum = cfg.vacuum_interval_s is not None and now - self._last_vacuum >= cfg.vacuum_interval_s
        return compact, vacuum

    def _maintenance_due(self) -> bool:
        return any(self._due())

    def _maintain(self) -> None:
        """Compact and vacuum the tables written since the last run, when their intervals are due."""
        now = time.monotonic()
        compact, vacuum = self._due()
        if not (compact or vacuum):
            return
        size = int(self._config.target_file_size) if self._config.target_file_size else None
        for t in self._tables.values():
            if t.delta is None or not t.touched:
                continue
            try:
                if compact:
                    metrics = t.delta.optimize.compact(target_size=size)
                    self._log.info("delta_compacted", table=t.name, files_added=metrics.get("numFilesAdded"),
                                   files_removed=metrics.get("numFilesRemoved"))
                if vacuum:
                    removed = t.delta.vacuum(retention_hours=self._config.vacuum_retention_hours, dry_run=False,
                                             enforce_retention_duration=False)
                    self._log.info("delta_vacuumed", table=t.name, files_removed=len(removed))
                t.delta.update_incremental()
            except CommitFailedError as err:
                self._log.warning("delta_maintenance_conflict", table=t.name, error=first_line(err))
            t.touched = not (compact and vacuum) and t.touched
        if compact:
            self._last_compact = now
        if vacuum:
            self._last_vacuum = now
