"""Benchmark: changes/s the warehouse sinks apply into a 1M-row table, DuckDB and PostgreSQL.

For each engine: a target table of ``--rows`` rows (created by the sink, filled by the
engine's own bulk insert, not timed), then ``--changes`` source changes (30% inserts of new
keys, 60% updates, 10% deletes of random existing keys, in transactions of 100, batches of
``--batch-events``, the pipeline's default) as the PostgreSQL source hands them to sinks
(pgoutput text rows). It measures, in the same run, on a fresh table each:

- sink: ``sink.write(batch)`` for every batch: last change per key (`cdc.columnar.mirror_steps`),
  Arrow conversion, staging, DELETE + INSERT and the ``_cdc_checkpoints`` row, one commit per batch;
- limit: the engine applying the same already-reduced rows, prepared before the clock
  starts, the way that is fastest on it: DuckDB registers the typed Arrow tables and runs
  DELETE + INSERT, one transaction per batch; PostgreSQL binary-COPYs prepared tuples into a
  staging table and runs one MERGE (15+; DELETE + INSERT before), one transaction per batch.

Engines: ``duckdb`` (the key declared PRIMARY KEY, the default), ``duckdb_no_pk`` (the sink's
``primary_key: false``: no ART index to maintain) and ``postgres`` (a disposable server).
Prints one JSON document: changes/s of the sink and of the limit, the ratio, distinct rows
applied per second, and the peak RSS of this process (goal: DuckDB sink >= 200k changes/s).

    .venv/bin/python bench/warehouse_sink.py [--changes 100000] [--rows 1000000] [--engines duckdb,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
from psycopg import sql

from cdc import __version__
from cdc.columnar import OP, mirror_steps
from cdc.events import ChangeBatch, Column, Position, RowChange, TableChanges, TableId, TableSchema, Transaction
from cdc.logs import configure_logging
from cdc.sandbox import DisposablePostgres
from connectors.postgres import types as pg
from connectors.postgres.types import PgRowCodec
from sinks.warehouse.duckdb import duckdb_sink
from sinks.warehouse.merge import WarehouseSink
from sinks.warehouse.postgres import postgres_sink

SCHEMA = TableSchema(TableId("bench", "public", "bench"), (
    Column("id", "int8", pg.INT8, key=True), Column("name", "text", pg.TEXT),
    Column("amount", "numeric", pg.NUMERIC, type_modifier=(12 << 16 | 2) + 4),
    Column("created", "timestamptz", pg.TIMESTAMPTZ), Column("flag", "bool", pg.BOOL),
    Column("qty", "int4", pg.INT4), Column("code", "varchar", pg.VARCHAR),
))
NAMES = SCHEMA.names
TX_EVENTS = 100
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def row(i: int, version: int) -> tuple[bytes, ...]:
    return (b"%d" % i, b"name-%d-%d" % (i, version), b"%d.%02d" % (i % 100000, version % 100),
            (BASE + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.123456+00").encode(),
            b"t" if (i + version) % 2 else b"f", b"%d" % (version % 1000), b"code-%d" % (i % 97))


def make_batches(changes: int, rows: int, batch_events: int, seed: int = 1) -> list[ChangeBatch]:
    """`changes` row changes against keys 0..rows-1 (and new keys above), as the source sends them."""
    rng = random.Random(seed)
    codec = PgRowCodec(SCHEMA.columns)
    live = list(range(rows))
    next_id = rows
    batches: list[ChangeBatch] = []
    current: list[RowChange] = []
    tx = Transaction(0, 0, BASE)
    for n in range(changes):
        if n % TX_EVENTS == 0:
            tx = Transaction(1000 + n // TX_EVENTS, 10_000_000 + n, BASE + timedelta(seconds=n))
        seq = n % TX_EVENTS + 1
        roll = rng.random()
        if roll < 0.3:
            current.append(("c", tx, seq, 0, None, row(next_id, n)))
            live.append(next_id)
            next_id += 1
        elif roll < 0.9:
            current.append(("u", tx, seq, 0, None, row(live[rng.randrange(len(live))], n)))
        else:
            victim = live.pop(rng.randrange(len(live)))
            current.append(("d", tx, seq, 0, (b"%d" % victim, None, None, None, None, None, None), None))
        if len(current) >= batch_events and seq == TX_EVENTS:
            batches.append(ChangeBatch(Position(tx.commit), [TableChanges(SCHEMA, codec, current)]))
            current = []
    if current:
        batches.append(ChangeBatch(Position(tx.commit), [TableChanges(SCHEMA, codec, current)]))
    return batches


def reduced(batches: list[ChangeBatch]) -> list[pa.Table]:
    """The rows a mirror applies per batch (last change per key), computed before the clock starts."""
    out = []
    for b in batches:
        [step] = mirror_steps(b.tables[0])
        assert step.changes is not None
        out.append(step.changes.select([*NAMES, OP]))
    return out


async def sink_run(sink: WarehouseSink, batches: list[ChangeBatch]) -> float:
    await sink.open()
    started = time.perf_counter()
    for b in batches:
        await sink.write(b)
    elapsed = time.perf_counter() - started
    await sink.close()
    return elapsed


async def create_table(sink: WarehouseSink) -> None:
    """Let the sink create the target table (and its checkpoint row) with one insert."""
    await sink.open()
    codec = PgRowCodec(SCHEMA.columns)
    tx = Transaction(1, 1, BASE)
    await sink.write(ChangeBatch(Position(1), [TableChanges(SCHEMA, codec, [("c", tx, 1, 0, None, row(0, 0))])]))
    await sink.close()


# -- DuckDB -------------------------------------------------------------------------------


def duckdb_fill(path: Path, rows: int, primary_key: bool) -> None:
    asyncio.run(create_table(duckdb_sink("duckdb", path, job="bench", primary_key=primary_key)))
    con = duckdb.connect(str(path))
    con.execute("DELETE FROM public.bench")
    con.execute(
        "INSERT INTO public.bench SELECT i, 'name-' || i || '-0', (i % 100000)::DECIMAL(12,2), "
        "TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_seconds(i), i % 2 = 1, 0, 'code-' || (i % 97) FROM range(?) r(i)",
        [rows],
    )
    con.execute("CHECKPOINT")
    con.close()


def duckdb_limit(path: Path, tables: list[pa.Table]) -> float:
    con = duckdb.connect(str(path))
    cols = ", ".join(f'"{n}"' for n in NAMES)  # constant bench column names
    started = time.perf_counter()
    for t in tables:
        con.begin()
        con.register("s", t)
        con.execute('DELETE FROM public.bench AS t USING s WHERE t."id" = s."id"')
        con.execute(f"INSERT INTO public.bench ({cols}) SELECT {cols} FROM s WHERE s._cdc_op <> 'd'")  # noqa: S608
        con.unregister("s")
        con.commit()
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def duckdb_round(tmp: Path, batches: list[ChangeBatch], tables: list[pa.Table], rows: int,
                 primary_key: bool) -> tuple[float, float]:
    sink_path, limit_path = tmp / "sink.duckdb", tmp / "limit.duckdb"
    for p in (sink_path, limit_path):
        p.unlink(missing_ok=True)
        p.with_name(p.name + ".wal").unlink(missing_ok=True)
        duckdb_fill(p, rows, primary_key)
    sink = duckdb_sink("duckdb", sink_path, job="bench", primary_key=primary_key)
    sink_s = asyncio.run(sink_run(sink, batches))
    limit_s = duckdb_limit(limit_path, tables)
    check = [duckdb.connect(str(p)).execute("SELECT count(*), sum(hash(name)) FROM public.bench").fetchall()
             for p in (sink_path, limit_path)]
    assert check[0] == check[1], f"sink and limit disagree: {check}"
    return sink_s, limit_s


# -- PostgreSQL ---------------------------------------------------------------------------


def postgres_fill(server: DisposablePostgres, dbname: str, rows: int) -> str:
    server.create_database(dbname)
    dsn = server.dsn(dbname)
    asyncio.run(create_table(postgres_sink("postgres", dsn, job="bench")))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM public.bench")
        conn.execute(
            "INSERT INTO public.bench SELECT i, 'name-' || i || '-0', (i %% 100000)::numeric(12,2), "
            "timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second', i %% 2 = 1, 0, 'code-' || (i %% 97) "
            "FROM generate_series(0, %s - 1) i",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE public.bench")
    return dsn


def postgres_limit(dsn: str, tables: list[pa.Table]) -> float:
    prepared = [list(zip(*(t.column(n).to_pylist() for n in (*NAMES, OP)), strict=True)) for t in tables]
    cols = sql.SQL(", ").join(map(sql.Identifier, NAMES))
    sets = sql.SQL(", ").join(sql.SQL("{c} = s.{c}").format(c=sql.Identifier(n)) for n in NAMES[1:])
    values = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(n)) for n in NAMES)
    with psycopg.connect(dsn) as conn:
        conn.execute("SET timezone = 'UTC'")
        conn.commit()
        started = time.perf_counter()
        for rows in prepared:
            conn.execute("CREATE TEMPORARY TABLE s (LIKE public.bench, _cdc_op text) ON COMMIT DROP")
            with conn.cursor().copy("COPY s FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "text", "numeric", "timestamptz", "bool", "int4", "text", "text"])
                for r in rows:
                    copy.write_row(r)
            if conn.info.server_version >= 150000:
                conn.execute(sql.SQL(
                    "MERGE INTO public.bench AS t USING s ON t.id = s.id WHEN MATCHED AND s._cdc_op = 'd' THEN DELETE "
                    "WHEN MATCHED THEN UPDATE SET {sets} "
                    "WHEN NOT MATCHED AND s._cdc_op <> 'd' THEN INSERT ({c}) VALUES ({v})").format(
                    sets=sets, c=cols, v=values))
            else:
                conn.execute('DELETE FROM public.bench AS t USING s WHERE t."id" = s."id"')
                conn.execute(sql.SQL("INSERT INTO public.bench ({c}) SELECT {c} FROM s WHERE _cdc_op <> 'd'").format(
                    c=cols))
            conn.commit()
        return time.perf_counter() - started


def postgres_round(server: DisposablePostgres, n: int, batches: list[ChangeBatch], tables: list[pa.Table],
                   rows: int) -> tuple[float, float]:
    sink_db, limit_db = f"bench_sink_{n}", f"bench_limit_{n}"
    try:
        sink_dsn = postgres_fill(server, sink_db, rows)
        limit_dsn = postgres_fill(server, limit_db, rows)
        sink_s = asyncio.run(sink_run(postgres_sink("postgres", sink_dsn, job="bench"), batches))
        limit_s = postgres_limit(limit_dsn, tables)
        check = []
        for dsn in (sink_dsn, limit_dsn):
            with psycopg.connect(dsn) as conn:
                check.append(conn.execute("SELECT count(*), sum(hashtext(name)) FROM public.bench").fetchall())
        assert check[0] == check[1], f"sink and limit disagree: {check}"
        return sink_s, limit_s
    finally:
        server.drop_database(sink_db)
        server.drop_database(limit_db)


# -- main -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--engines", default="duckdb,duckdb_no_pk,postgres",
                        help="duckdb (key as PRIMARY KEY, the default), duckdb_no_pk (primary_key: false), postgres")
    args = parser.parse_args()
    configure_logging("warning")
    batches = make_batches(args.changes, args.rows, args.batch_events)
    tables = reduced(batches)
    distinct = sum(t.num_rows for t in tables)
    results: dict[str, Any] = {}
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory(prefix="cdc-bench-wh-") as tmp:
        server = DisposablePostgres() if "postgres" in engines else None
        try:
            if server is not None:
                server.start()
            for engine in engines:
                sink_best = limit_best = float("inf")
                for n in range(args.rounds):
                    if engine in ("duckdb", "duckdb_no_pk"):
                        sink_s, limit_s = duckdb_round(Path(tmp), batches, tables, args.rows, engine == "duckdb")
                    else:
                        assert server is not None
                        sink_s, limit_s = postgres_round(server, n, batches, tables, args.rows)
                    sink_best, limit_best = min(sink_best, sink_s), min(limit_best, limit_s)
                results[engine] = {
                    "sink_changes_per_s": round(args.changes / sink_best),
                    "limit_changes_per_s": round(args.changes / limit_best),
                    "ratio": round(limit_best / sink_best, 2),
                    "sink_rows_per_s": round(distinct / sink_best),
                    "sink_s": round(sink_best, 3),
                    "limit_s": round(limit_best, 3),
                }
        finally:
            if server is not None:
                server.stop()
    print(json.dumps({
        "benchmark": "warehouse_sink",
        "cdc_version": __version__,
        "changes": args.changes,
        "distinct_rows_applied": distinct,
        "table_rows": args.rows,
        "batch_events": args.batch_events,
        "rounds": args.rounds,
        "engines": results,
        "goal": {"duckdb_sink_changes_per_s": 200_000},
        "limit": "the engine applying the same already-reduced rows (DuckDB: Arrow registered, DELETE + INSERT; "
                 "PostgreSQL: binary COPY of prepared tuples, MERGE), one transaction per batch",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }, indent=2))


if __name__ == "__main__":
    main()
