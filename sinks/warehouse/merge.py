"""What the warehouse sinks share: the `Sink` that applies batches exactly once, and its SQL.

A batch becomes durable in one database transaction per batch:

1. per table of the batch (`TableChanges`): create the target table if missing, add new
   columns and widen changed ones (`sinks.warehouse.schema`);  creating tables (also
   ``_cdc_checkpoints`` at `open`) runs under `Engine.lock_catalog`, so jobs that share a
   target database or file can start together;
2. per `MirrorStep` of that table (`cdc.columnar.mirror_steps`: the last change per key
   after the last truncate): empty the table if the step truncates, load the step's Arrow
   table into a staging relation (`Engine.stage`), then DELETE every staged key from the
   target and INSERT the staged rows that are not deletes. Columns the source did not send
   (unchanged TOAST) take the target's stored value through a LEFT JOIN first, on the
   row's own key or, for a row an update of the key moved, on the key it came from
   (before that key's delete runs);
3. upsert this sink's row of ``_cdc_checkpoints`` (job, sink, position) and commit.

A crash anywhere before the commit leaves the target as it was, position included; on
restart `open` reads the position back and `write` skips what the target already holds,
so a replayed batch is never applied twice.

The statements are composed with `psycopg.sql` (identifiers quoted by `sql.Identifier`:
SQL-standard double quotes with embedded quotes doubled, the rule of both engines) and
values travel as parameters; the engine modules run them (`duckdb.py`, `postgres.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
import pyarrow as pa
import structlog
from psycopg import sql

from cdc.columnar import OP, holds_rows, keep_column, mirror_steps, origin_column, refuse_reserved_columns
from cdc.errors import CdcError, CheckpointError, SinkError, SinkUnreachableError, SinkWriteError, first_line
from cdc.events import ChangeBatch, Position, TableChanges, TableSchema
from sinks.warehouse.schema import Change, Dialect, TargetNames, evolve

CHECKPOINT_TABLE: Final = "_cdc_checkpoints"
DELETED: Final = "_cdc_deleted"
SYNCED_AT: Final = "_cdc_synced_at"
#: The relation a step's rows are read from when unchanged values had to be filled in.
_ROWS: Final = "_cdc_rows"

log = structlog.get_logger(__name__)


class Engine(Protocol):
    """One target database behind a warehouse sink: a connection and its dialect.

    Synchronous: the sink calls it from a worker thread, one call at a time. Methods raise
    the driver's own exceptions (`errors`); the sink turns them into `SinkWriteError`.
    """

    dialect: Dialect
    #: The driver exceptions a failed statement raises.
    errors: tuple[type[BaseException], ...]
    #: The positional parameter marker of the driver (``?`` or ``%s``).
    placeholder: sql.Composable
    #: Apply with one ``MERGE`` (PostgreSQL 15+: updates in place) instead of DELETE + INSERT
    #: (DuckDB: faster there); known once connected.
    merge: bool

    def describe(self) -> str:
        """Where the data goes, for messages (a path, a database name; never a password)."""
        ...

    def connect(self) -> None:
        """Open the connection (idempotent)."""
        ...

    def execute(self, statement: sql.Composed, params: Sequence[object] = ()) -> None: ...

    def query(self, statement: sql.Composed, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def begin(self) -> None:
        """Open a transaction (DuckDB: wait until no other sink of this process has one open on the file)."""
        ...

    def commit(self) -> None: ...

    def lock_catalog(self) -> None:
        """Inside the open transaction, before creating tables or schemas: wait until no other sink that
        writes this target (another job of this daemon, another daemon) is doing so; held until the
        transaction ends. Two sinks then never race ``CREATE ... IF NOT EXISTS`` of one name
        (PostgreSQL fails one with a duplicate key in its catalog, DuckDB with a write-write conflict)."""
        ...

    def rollback(self) -> None:
        """Abandon the open transaction, if any; never raises."""
        ...

    def columns(self, schema: str, table: str) -> dict[str, str] | None:
        """``{column: catalog type name}`` of a table in column order, or None when it does not exist."""
        ...

    def stage(self, rows: pa.Table) -> sql.Composable:
        """Make `rows` readable in this transaction; return the relation to select them from."""
        ...

    def unstage(self) -> None:
        """Drop what `stage` made (before the next `stage`)."""
        ...

    def close(self) -> None:
        """Close the connection; safe to call twice and after a failed `connect`."""
        ...


@dataclass(slots=True)
class _Target:
    """A target table as this sink knows it: its quoted name and its columns' catalog types."""

    relation: sql.Composable
    columns: dict[str, str] = field(default_factory=dict)


class WarehouseSink:
    """A `Sink` that mirrors each source table into a table of a SQL database (see the module doc)."""

    def __init__(
        self, name: str, engine: Engine, *, job: str, names: TargetNames | None = None, soft_deletes: bool = False,
        primary_key: bool = True,
    ) -> None:
        self.name = name
        self.job = job
        self.engine = engine
        self.names = names or TargetNames()
        self.soft_deletes = soft_deletes
        self.primary_key = primary_key
        self._position: Position | None = None
        self._targets: dict[tuple[str, str], _Target] = {}
        self._log = log.bind(job=job, sink=name)

    # -- Sink -------------------------------------------------------------------------

    def position(self) -> Position | None:
        return self._position

    async def open(self) -> None:
        """Connect, create ``_cdc_checkpoints`` if missing and read this sink's position from it."""
        await asyncio.to_thread(self._open)

    async def write(self, batch: ChangeBatch) -> None:
        """Apply the batch and move the position in one transaction; return once it committed.

        Events at or below `position()` (a replay after a crash) are skipped; a heartbeat
        only moves the position.
        """
        await asyncio.to_thread(self._write, batch)

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.close)

    # -- opening ----------------------------------------------------------------------

    def _open(self) -> None:
        engine = self.engine
        try:
            engine.connect()
        except engine.errors as err:  # a setup mistake at a job's first start, an outage later
            raise SinkUnreachableError(
                f"{self._what()}: cannot open {engine.describe()}: {first_line(err)}") from err
        try:
            engine.begin()
            engine.lock_catalog()
            engine.execute(self._checkpoint_ddl())
            rows = engine.query(
                sql.SQL("SELECT position FROM {} WHERE job = {p} AND sink = {p}").format(
                    sql.Identifier(CHECKPOINT_TABLE), p=engine.placeholder),
                (self.job, self.name),
            )
            engine.commit()
        except engine.errors as err:
            engine.rollback()
            raise SinkWriteError(
                f"{self._what()}: cannot open {engine.describe()}: {first_line(err)}") from err
        except BaseException:
            engine.rollback()  # also ends the transaction's hold on the target (`Engine.lock_catalog`)
            raise
        if rows:
            try:
                self._position = Position.from_json(orjson.loads(rows[0][0]))
            except (orjson.JSONDecodeError, CheckpointError) as err:
                raise SinkError(
                    f"{self._what()}: unreadable position {rows[0][0]!r} in {CHECKPOINT_TABLE} of "
                    f"{engine.describe()}; delete that row to start over") from err
        self._log.info("warehouse_sink_opened", position=str(self._position) if self._position else None)

    def _checkpoint_ddl(self) -> sql.Composed:
        text = sql.SQL(self.engine.dialect.type_name(pa.string()))
        stamp = sql.SQL(self.engine.dialect.type_name(pa.timestamp("us", tz="UTC")))
        return sql.SQL(
            "CREATE TABLE IF NOT EXISTS {table} (job {text} NOT NULL, sink {text} NOT NULL, "
            "position {text} NOT NULL, updated_at {stamp} NOT NULL, PRIMARY KEY (job, sink))"
        ).format(table=sql.Identifier(CHECKPOINT_TABLE), text=text, stamp=stamp)

    def _what(self) -> str:
        return f"job {self.job}: {self.engine.dialect.engine} sink {self.name}"

    # -- writing ----------------------------------------------------------------------

    def _write(self, batch: ChangeBatch) -> None:
        batch = batch.after(self._position)
        if self._position is not None and batch.position <= self._position:
            return
        for tc in batch.tables:
            if holds_rows(tc):
                refuse_reserved_columns(tc.schema, self._what())
        engine = self.engine
        try:
            engine.begin()
            for tc in batch.tables:
                self._apply(tc)
            p = engine.placeholder
            engine.execute(
                sql.SQL(
                    "INSERT INTO {table} (job, sink, position, updated_at) VALUES ({p}, {p}, {p}, current_timestamp) "
                    "ON CONFLICT (job, sink) DO UPDATE SET position = excluded.position, "
                    "updated_at = excluded.updated_at"
                ).format(table=sql.Identifier(CHECKPOINT_TABLE), p=p),
                (self.job, self.name, orjson.dumps(batch.position.to_json()).decode()),
            )
            engine.commit()
        except CdcError:
            self._abandon()
            raise
        except (pa.ArrowException, OverflowError) as err:  # a value the target's types cannot take
            self._abandon()
            raise SinkError(
                f"{self._what()}: a value of the batch ending at {batch.position} cannot be written to "
                f"{engine.describe()}: {first_line(err)}; see the type mapping in docs/warehouse.md"
            ) from err
        except engine.errors as err:
            self._abandon()
            raise SinkWriteError(
                f"{self._what()}: cannot apply the batch ending at {batch.position} to {engine.describe()}: "
                f"{first_line(err)}"
            ) from err
        except BaseException:
            self._abandon()
            raise
        self._position = batch.position

    def _abandon(self) -> None:
        """Roll back, and forget what the rolled-back DDL may have changed."""
        self.engine.rollback()
        self._targets.clear()

    def _apply(self, tc: TableChanges) -> None:
        if not holds_rows(tc):
            return  # logical messages are not table rows
        schema = tc.schema
        if not schema.key:
            raise SinkError(
                f"{self._what()}: table {schema.table} has no primary key (nor replica identity index), so its "
                "rows cannot be told apart in the target: add a primary key or leave the table out (tables.exclude)"
            )
        target = self._ensure(tc)
        for step in mirror_steps(tc):
            if step.truncate:
                self._truncate(target)
            if step.changes is not None:
                self._merge(target, schema, step.changes)

    # -- tables -----------------------------------------------------------------------

    def _ensure(self, tc: TableChanges) -> _Target:
        """The target table of `tc`, created or evolved to hold its columns."""
        engine, dialect = self.engine, self.engine.dialect
        schema_name, table_name = self.names.of(tc.schema.table)
        target = self._targets.get((schema_name, table_name))
        if target is None:
            relation = sql.Identifier(schema_name, table_name)
            columns = engine.columns(schema_name, table_name)
            if columns is None:
                columns = self._create(tc, relation, schema_name)
                self._log.info("warehouse_table_created", table=f"{schema_name}.{table_name}",
                               source_table=str(tc.schema.table))
            target = self._targets[(schema_name, table_name)] = _Target(relation, columns)
        for f in tc.codec.arrow_schema():
            current = target.columns.get(f.name)
            if current is None:
                type_name = self._type_name(tc, f)
                engine.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                    target.relation, sql.Identifier(f.name), sql.SQL(type_name)))
                target.columns[f.name] = type_name
                self._log.info("warehouse_column_added", table=f"{schema_name}.{table_name}", column=f.name,
                               type=type_name)
                continue
            change, wanted = evolve(dialect.arrow_type(current), f.type)
            if change is Change.INCOMPATIBLE:
                raise SinkError(
                    f"{self._what()}: column {f.name} of {tc.schema.table} changed to {self._type_name(tc, f)}, "
                    f"which the target column {schema_name}.{table_name}.{f.name} ({current}) cannot hold and "
                    f"cannot be widened to; alter or drop that target column yourself, then restart the job"
                )
            if change is Change.WIDEN:
                type_name = dialect.type_name(wanted)
                try:
                    engine.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(
                        target.relation, sql.Identifier(f.name), sql.SQL(type_name)))
                except engine.errors as err:  # e.g. DuckDB cannot retype a key column
                    raise SinkError(
                        f"{self._what()}: cannot widen the target column {schema_name}.{table_name}.{f.name} from "
                        f"{current} to {type_name} ({first_line(err)}); alter it yourself or recreate the table "
                        "(DuckDB cannot retype a primary key column), then restart the job"
                    ) from err
                target.columns[f.name] = type_name
                self._log.info("warehouse_column_widened", table=f"{schema_name}.{table_name}", column=f.name,
                               old=current, type=type_name)
        if self.soft_deletes:
            stamp = dialect.type_name(pa.timestamp("us", tz="UTC"))
            for column, spelled in ((DELETED, "BOOLEAN DEFAULT false"), (SYNCED_AT, stamp)):
                if column not in target.columns:
                    engine.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        target.relation, sql.Identifier(column), sql.SQL(spelled)))
                    target.columns[column] = spelled
        return target

    def _create(self, tc: TableChanges, relation: sql.Composable, schema_name: str) -> dict[str, str]:
        engine = self.engine
        columns = {f.name: self._type_name(tc, f) for f in tc.codec.arrow_schema()}
        parts = [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in columns.items()]
        if self.soft_deletes:
            stamp = engine.dialect.type_name(pa.timestamp("us", tz="UTC"))
            parts.append(sql.SQL("{} BOOLEAN NOT NULL DEFAULT false").format(sql.Identifier(DELETED)))
            parts.append(sql.SQL("{} {}").format(sql.Identifier(SYNCED_AT), sql.SQL(stamp)))
            columns[DELETED], columns[SYNCED_AT] = "BOOLEAN", stamp
        if self.primary_key:
            parts.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, tc.schema.key))))
        engine.lock_catalog()  # another job may be creating this schema or table right now
        exists = engine.query(sql.SQL(
            "SELECT count(*) FROM information_schema.schemata WHERE catalog_name = current_database() "
            "AND schema_name = {p}").format(p=engine.placeholder), (schema_name,))
        if not exists[0][0]:  # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when it exists
            engine.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema_name)))
        engine.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(relation, sql.SQL(", ").join(parts)))
        return columns

    def _type_name(self, tc: TableChanges, f: pa.Field) -> str:
        try:
            return self.engine.dialect.type_name(f.type)
        except KeyError:
            raise SinkError(
                f"{self._what()}: column {f.name} of {tc.schema.table} has Arrow type {f.type}, which this sink "
                "has no column type for (docs/warehouse.md); leave the table out of the job"
            ) from None

    # -- applying ---------------------------------------------------------------------

    def _merge_statement(self, target: _Target, schema: TableSchema, staged: sql.Composable, keeps: dict[int, str],
                         on: sql.Composable) -> None:
        """One MERGE: delete (or mark) the staged deletes, update the other matched keys (unchanged
        values kept by CASE), insert the rest."""
        names = list(schema.names)
        sets: list[sql.Composable] = [
            sql.SQL("{c} = CASE WHEN s.{keep} THEN t.{c} ELSE s.{c} END").format(
                c=sql.Identifier(n), keep=sql.Identifier(keeps[i]))
            if i in keeps else sql.SQL("{c} = s.{c}").format(c=sql.Identifier(n))
            for i, n in enumerate(names) if n not in schema.key
        ]
        columns: list[sql.Composable] = [sql.Identifier(n) for n in names]
        values: list[sql.Composable] = [sql.SQL("s.{}").format(sql.Identifier(n)) for n in names]
        deleted, synced = sql.Identifier(DELETED), sql.Identifier(SYNCED_AT)
        gone: sql.Composable
        if self.soft_deletes:
            gone = sql.SQL("UPDATE SET {} = true, {} = current_timestamp").format(deleted, synced)
            sets += [sql.SQL("{} = false").format(deleted), sql.SQL("{} = current_timestamp").format(synced)]
            columns += [deleted, synced]
            values += [sql.SQL("false"), sql.SQL("current_timestamp")]
        else:
            gone = sql.SQL("DELETE")
        update = sql.SQL("UPDATE SET {}").format(sql.SQL(", ").join(sets)) if sets else sql.SQL("DO NOTHING")
        self.engine.execute(sql.SQL(
            "MERGE INTO {t} AS t USING {staged} AS s ON {on} "
            "WHEN MATCHED AND s.{op} = 'd' THEN {gone} "
            "WHEN MATCHED THEN {update} "
            "WHEN NOT MATCHED AND s.{op} <> 'd' THEN INSERT ({columns}) VALUES ({values})"
        ).format(t=target.relation, staged=staged, on=on, op=sql.Identifier(OP), gone=gone, update=update,
                 columns=sql.SQL(", ").join(columns), values=sql.SQL(", ").join(values)))

    def _truncate(self, target: _Target) -> None:
        if self.soft_deletes:
            self.engine.execute(sql.SQL(
                "UPDATE {t} SET {deleted} = true, {synced} = current_timestamp WHERE NOT {deleted}"
            ).format(t=target.relation, deleted=sql.Identifier(DELETED), synced=sql.Identifier(SYNCED_AT)))
        else:
            self.engine.execute(sql.SQL("DELETE FROM {}").format(target.relation))

    def _merge(self, target: _Target, schema: TableSchema, changes: pa.Table) -> None:
        engine = self.engine
        names = list(schema.names)
        keeps = {i: keep_column(i) for i in range(len(names)) if keep_column(i) in changes.column_names}
        origins = {n: origin_column(i) for i, n in enumerate(names) if origin_column(i) in changes.column_names}
        # A failure leaves the staged rows to the rollback (unstaging in an aborted
        # PostgreSQL transaction would fail and hide the first error).
        staged = engine.stage(changes.select([*names, OP, *keeps.values(), *origins.values()]))
        on = sql.SQL(" AND ").join(
            sql.SQL("t.{k} = s.{k}").format(k=sql.Identifier(k)) for k in schema.key)
        data = sql.SQL(", ").join(map(sql.Identifier, names))
        filled = bool(keeps) and (bool(origins) or not engine.merge)
        rows = staged
        if filled:
            # Fill unchanged values from the target before the DELETE (or MERGE) removes them: from
            # the row's own key, or from the key an update of the key moved it from.
            stored = sql.SQL(" AND ").join(
                sql.SQL("t.{k} = COALESCE(s.{o}, s.{k})").format(k=sql.Identifier(k), o=sql.Identifier(origins[k]))
                if k in origins else sql.SQL("t.{k} = s.{k}").format(k=sql.Identifier(k))
                for k in schema.key)
            exprs = [
                sql.SQL("CASE WHEN s.{keep} THEN t.{c} ELSE s.{c} END AS {c}").format(
                    keep=sql.Identifier(keeps[i]), c=sql.Identifier(n))
                if i in keeps else sql.SQL("s.{c}").format(c=sql.Identifier(n))
                for i, n in enumerate(names)
            ]
            engine.execute(sql.SQL(
                "CREATE TEMPORARY TABLE {rows} AS SELECT s.{op}, {exprs} FROM {staged} AS s "
                "LEFT JOIN {t} AS t ON {stored}"
            ).format(rows=sql.Identifier(_ROWS), op=sql.Identifier(OP), exprs=sql.SQL(", ").join(exprs),
                     staged=staged, t=target.relation, stored=stored))
            rows = sql.Identifier(_ROWS)
        if engine.merge:
            self._merge_statement(target, schema, rows, {} if filled else keeps, on)
            if filled:
                engine.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(_ROWS)))
            engine.unstage()
            return
        fmt = {"t": target.relation, "rows": rows, "on": on, "op": sql.Identifier(OP), "data": data,
               "deleted": sql.Identifier(DELETED), "synced": sql.Identifier(SYNCED_AT)}
        if self.soft_deletes:
            engine.execute(sql.SQL(
                "UPDATE {t} AS t SET {deleted} = true, {synced} = current_timestamp FROM {rows} AS s "
                "WHERE {on} AND s.{op} = 'd'").format(**fmt))
            engine.execute(sql.SQL(
                "DELETE FROM {t} AS t USING {rows} AS s WHERE {on} AND s.{op} <> 'd'").format(**fmt))
            engine.execute(sql.SQL(
                "INSERT INTO {t} ({data}, {deleted}, {synced}) SELECT {data}, false, current_timestamp "
                "FROM {rows} AS s WHERE s.{op} <> 'd'").format(**fmt))
        else:
            engine.execute(sql.SQL("DELETE FROM {t} AS t USING {rows} AS s WHERE {on}").format(**fmt))
            engine.execute(sql.SQL(
                "INSERT INTO {t} ({data}) SELECT {data} FROM {rows} AS s WHERE s.{op} <> 'd'").format(**fmt))
        if filled:
            engine.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(_ROWS)))
        engine.unstage()
