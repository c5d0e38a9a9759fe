"""Benchmark: the Delta Lake sink against deltalake itself, in the same run.

Two scenarios over the 10-column table of bench/pg_stream.py (rows in pgoutput's text form,
as the PostgreSQL source hands them over):

- **changelog**: 1M rows in batches of 50k appended by `DeltaSink` (text -> Arrow per
  column, metadata columns, schema check, commit with application transactions). Limit:
  `write_deltalake` appending the same rows, already converted to Arrow.
- **mirror**: 100k changes (70% updates, 20% inserts, 10% deletes) applied in one batch to
  a 1M-row mirror (dedupe to the last change per key, MERGE). Limit: one deltalake MERGE of
  the same, already deduplicated, Arrow changes into a copy of the same 1M-row table.

Prints one JSON document: rows (changes) per second, the limit, the ratio, write latency
percentiles of the changelog batches and the process's peak RSS.

    .venv/bin/python -m bench.delta_sink [--rows 1000000] [--changes 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import deltalake
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from cdc import __version__
from cdc.checkpoints import no_position
from cdc.columnar import changelog_table, mirror_steps
from cdc.config import DeltaSinkConfig
from cdc.events import ChangeBatch, Column, Position, RawRow, RowChange, TableChanges, TableId, TableSchema, Transaction
from cdc.logs import configure_logging
from cdc.sink import SourceInfo
from connectors.postgres import types as pg
from connectors.postgres.types import PgRowCodec
from sinks.delta.schema import conform, delta_schema
from sinks.delta.sink import DeltaSink, quote_sql

SCHEMA = TableSchema(TableId("bench", "public", "bench"), (
    Column("id", "int8", pg.INT8, key=True), Column("name", "text", pg.TEXT),
    Column("amount", "numeric", pg.NUMERIC, (12 << 16 | 2) + 4), Column("created", "timestamptz", pg.TIMESTAMPTZ),
    Column("doc", "jsonb", pg.JSONB), Column("flag", "bool", pg.BOOL), Column("ref", "uuid", pg.UUID),
    Column("score", "float8", pg.FLOAT8), Column("qty", "int4", pg.INT4), Column("code", "varchar", pg.VARCHAR),
))
CODEC = PgRowCodec(SCHEMA.columns)
INFO = SourceInfo("postgresql", "bench", "bench")
BATCH = 50_000


def row(i: int, version: int = 0) -> RawRow:
    return (
        str(i).encode(), f"name-{i}-{version}".encode(), f"{(i % 100000) / 100:.2f}".encode(),
        f"2026-01-01 00:00:{i % 60:02d}.{i % 1000000:06d}+00".encode(), f'{{"k": {i}, "tag": "x{i % 7}"}}'.encode(),
        b"t" if i % 2 else b"f", f"{i:032x}"[:32].encode()[:8] + b"-0000-4000-8000-000000000000",
        f"{i / 7}".encode(), str(i % 1000).encode(), f"code-{i % 97}".encode(),
    )


def tx(n: int) -> Transaction:
    return Transaction(n, n * 1000, datetime(2026, 1, 1, tzinfo=UTC))


def sink(path: Path, mode: str) -> DeltaSink:
    config = DeltaSinkConfig.model_validate({"type": "delta", "path": str(path), "mode": mode})
    s = DeltaSink("bench", config, INFO, job="bench", stored=no_position)
    asyncio.run(s.open())
    return s


def changelog(work: Path, rows: int) -> dict[str, object]:
    batches = []
    for b, lo in enumerate(range(0, rows, BATCH), start=1):
        t = tx(b)
        ids = range(lo, min(lo + BATCH, rows))
        changes: list[RowChange] = [("c", t, n + 1, 0, None, row(i)) for n, i in enumerate(ids)]
        batches.append(ChangeBatch(Position(t.commit), [TableChanges(SCHEMA, CODEC, changes)]))
    # The limit: deltalake appending the same rows, already Arrow (conversion not timed).
    ready = [changelog_table(b.tables[0]) for b in batches]
    target = delta_schema(ready[0].schema)
    ready = [conform(r, target) for r in ready]
    t0 = time.perf_counter()
    for r in ready:
        write_deltalake(str(work / "limit"), r, mode="append")
    limit_s = time.perf_counter() - t0
    del ready
    s = sink(work / "cdc", "changelog")
    latencies = []
    t0 = time.perf_counter()
    for b in batches:
        t1 = time.perf_counter()
        asyncio.run(s.write(b))
        latencies.append(time.perf_counter() - t1)
    ours_s = time.perf_counter() - t0
    assert DeltaTable(str(work / "cdc/public/bench")).count() == rows
    return {"rows": rows, "batch_rows": BATCH,
            "limit": {"tool": "write_deltalake append of the same Arrow rows", "seconds": round(limit_s, 3),
                      "rows_per_s": round(rows / limit_s)},
            "cdc": {"seconds": round(ours_s, 3), "rows_per_s": round(rows / ours_s),
                    "batch_latency_ms": percentiles(latencies)},
            "ratio": round(limit_s / ours_s, 3)}


def mirror(work: Path, rows: int, changes: int) -> dict[str, object]:
    base = work / "base"
    s = sink(base, "mirror")
    # Load the 1M-row mirror through the sink (untimed), then copy it for the limit's run.
    for b, lo in enumerate(range(0, rows, 200_000), start=1):
        t = tx(b)
        ids = range(lo, min(lo + 200_000, rows))
        load: list[RowChange] = [("r", t, n + 1, 0, None, row(i)) for n, i in enumerate(ids)]
        asyncio.run(s.write(ChangeBatch(Position(t.commit), [TableChanges(SCHEMA, CODEC, load)])))
    shutil.copytree(base, work / "limit")
    rng = random.Random(7)
    t = tx(10_000)
    stream: list[RowChange] = []
    for n in range(changes):
        roll = rng.random()
        if roll < 0.7:
            i = rng.randrange(rows)
            stream.append(("u", t, n + 1, 0, None, row(i, 1)))
        elif roll < 0.9:
            i = rows + n
            stream.append(("c", t, n + 1, 0, None, row(i)))
        else:
            i = rng.randrange(rows)
            stream.append(("d", t, n + 1, 0, (str(i).encode(), *([None] * 9)), None))
    batch = ChangeBatch(Position(t.commit), [TableChanges(SCHEMA, CODEC, stream)])
    # The limit: one MERGE of the already deduplicated Arrow changes.
    [step] = mirror_steps(batch.tables[0])
    assert step.changes is not None
    source = step.changes
    names = [f.name for f in CODEC.arrow_schema()]
    dt = DeltaTable(str(work / "limit/public/bench"))
    target = pa.schema(dt.schema().to_arrow())
    source = conform(source.select([*names, "_cdc_position", "_cdc_commit_ts"]), target).append_column(
        "_cdc_op", source.column("_cdc_op"))
    cols = [f.name for f in target]
    t0 = time.perf_counter()
    (dt.merge(source, predicate="t.id = s.id", source_alias="s", target_alias="t")
     .when_matched_delete(predicate="s._cdc_op = 'd'")
     .when_matched_update(updates={quote_sql(c): f"s.{quote_sql(c)}" for c in cols}, predicate="s._cdc_op <> 'd'")
     .when_not_matched_insert(updates={quote_sql(c): f"s.{quote_sql(c)}" for c in cols}, predicate="s._cdc_op <> 'd'")
     .execute())
    limit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    asyncio.run(s.write(batch))
    ours_s = time.perf_counter() - t0
    ours = DeltaTable(str(base / "public/bench")).to_pyarrow_table(columns=names).sort_by("id")
    theirs = DeltaTable(str(work / "limit/public/bench")).to_pyarrow_table(columns=names).sort_by("id")
    assert ours.equals(theirs), "the sink's mirror differs from the reference MERGE"
    return {"table_rows": rows, "changes": changes, "deduplicated": source.num_rows,
            "limit": {"tool": "deltalake MERGE of the same deduplicated Arrow changes", "seconds": round(limit_s, 3),
                      "changes_per_s": round(changes / limit_s)},
            "cdc": {"seconds": round(ours_s, 3), "changes_per_s": round(changes / ours_s)},
            "ratio": round(limit_s / ours_s, 3)}


def percentiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"p50": round(q[49] * 1000, 1), "p99": round(q[98] * 1000, 1), "max": round(max(values) * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changes", type=int, default=100_000)
    args = parser.parse_args()
    configure_logging("warning", "json")  # logs to stderr: stdout carries only the JSON result
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-delta-"))
    try:
        result = {
            "benchmark": "delta_sink",
            "changelog": changelog(work / "changelog", args.rows),
            "mirror": mirror(work / "mirror", args.rows, args.changes),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "goals": {"changelog_rows_per_s": 300_000, "mirror_changes_per_s": 70_000},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "cdc": __version__,
                        "deltalake": deltalake.__version__, "pyarrow": pa.__version__},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
