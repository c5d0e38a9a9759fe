"""Benchmark: PostgreSQL stream -> sinks, as a ratio to pg_recvlogical in the same run.

Loads N rows of a 10-column table (int8, text, numeric, timestamptz, jsonb, bool, uuid,
float8, int4, varchar) in T transactions into a disposable PostgreSQL, with one logical
slot per run created before the load. pg_recvlogical drains one slot to /dev/null (the
server's limit: the walsender decoding pgoutput); ``cdc run`` drains another into each
sink asked for (default: the file sink with fsync; also a Delta changelog, a Delta mirror,
DuckDB), one after the other. Prints one JSON document.

    .venv/bin/python bench/pg_stream.py [--rows 1000000] [--transactions 100] [--sinks file delta-mirror]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.daemon import json_position, run_until
from cdc import __version__
from cdc.sandbox import DisposablePostgres

TABLE = """
CREATE TABLE bench (
    id int8 PRIMARY KEY, name text, amount numeric(12,2), created timestamptz, doc jsonb,
    flag bool, ref uuid, score float8, qty int4, code varchar(32)
)"""
LOAD = """
INSERT INTO bench
SELECT i, 'name-' || i, (i %% 100000) / 100.0, '2026-01-01'::timestamptz + i * interval '1 second',
       jsonb_build_object('k', i, 'tag', 'x' || (i %% 7)), i %% 2 = 0, md5(i::text)::uuid,
       i / 7.0, (i %% 1000)::int4, 'code-' || (i %% 97)
FROM generate_series(%s::int8, %s::int8) AS i
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--transactions", type=int, default=100)
    parser.add_argument("--sinks", nargs="+", default=["file"], choices=list(SINKS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    with DisposablePostgres(settings={"max_wal_size": "4GB", "checkpoint_timeout": "30min"}) as pg:
        pg.create_database("bench")
        dsn = pg.dsn("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(TABLE)
            conn.execute("CREATE PUBLICATION bench_pub FOR TABLE bench")
            for slot in ("bench_ref", *(f"bench_{n.replace('-', '_')}" for n in args.sinks)):
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            per_tx = args.rows // args.transactions
            t0 = time.perf_counter()
            for t in range(args.transactions):
                conn.execute(LOAD, (t * per_tx + 1, (t + 1) * per_tx))
            load_s = time.perf_counter() - t0
            end_lsn = str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]
            last_commit = conn.execute(
                "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
            ).fetchone()[0]  # type: ignore[index]
        rows = per_tx * args.transactions

        ref_s = _pg_recvlogical(pg, dsn, end_lsn)
        runs = []
        for sink in args.sinks:
            cdc_s, rss_mb, out_bytes = _cdc(work / sink, dsn, int(last_commit), sink)
            runs.append({"sink": sink, "description": SINKS[sink][1], "seconds": round(cdc_s, 3),
                         "rows_per_s": round(rows / cdc_s), "mb_per_s": round(out_bytes / cdc_s / 1e6, 1),
                         "peak_rss_mb": round(rss_mb, 1), "ratio": round(ref_s / cdc_s, 3)})

    result = {
        "benchmark": "pg_stream",
        "rows": rows,
        "transactions": args.transactions,
        "columns": 10,
        "load_s": round(load_s, 2),
        "limit": {"tool": "pg_recvlogical -> /dev/null", "seconds": round(ref_s, 3),
                  "rows_per_s": round(rows / ref_s)},
        "cdc": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "cdc": __version__},
    }
    print(json.dumps(result, indent=2))


def _pg_recvlogical(pg: DisposablePostgres, dsn: str, end_lsn: str) -> float:
    cmd = [str(pg.bin_dir / "pg_recvlogical"), "-d", dsn, "--slot", "bench_ref", "--start",
           "-o", "proto_version=1", "-o", "publication_names=bench_pub", "-f", "/dev/null",
           "-E", end_lsn, "--no-loop"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


#: The sinks measured: name -> (sink config over the output folder, description).
SINKS: dict[str, tuple[Any, str]] = {
    "file": (lambda out: {"type": "file", "path": str(out)}, "JSONL files, fsync"),
    "delta-changelog": (lambda out: {"type": "delta", "path": str(out), "mode": "changelog"},
                        "Delta Lake changelog (append)"),
    "delta-mirror": (lambda out: {"type": "delta", "path": str(out), "mode": "mirror"}, "Delta Lake mirror (MERGE)"),
    "duckdb": (lambda out: {"type": "duckdb", "path": str(out / "bench.duckdb")}, "DuckDB table (DELETE + INSERT)"),
}


def _cdc(work: Path, dsn: str, end: int, sink: str) -> tuple[float, float, int]:
    work.mkdir(parents=True)
    config = work / "bench.yaml"
    events = work / "out"
    events.mkdir()
    config.write_text(json.dumps({
        "state_dir": str(work / "state"),
        "log_format": "json",
        "jobs": [{
            "name": "bench",
            "source": {"type": "postgres", "dsn": dsn, "slot": f"bench_{sink.replace('-', '_')}",
                       "publication": "bench_pub"},
            "tables": {"include": ["public.bench"]},
            "snapshot": "never",
            "sinks": [SINKS[sink][0](events)],
        }],
    }))
    checkpoint = work / "state" / "bench.checkpoint.json"  # the job's checkpoint: what every sink holds

    def reached() -> bool:
        position = json_position(checkpoint, "source", "commit")
        return position is not None and position >= end - 4096  # the last commit sits just below the WAL end

    elapsed, rss = run_until(config, reached, 600)
    return elapsed, rss, sum(f.stat().st_size for f in events.rglob("*") if f.is_file())


if __name__ == "__main__":
    main()
