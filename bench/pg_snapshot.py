"""Benchmark: PostgreSQL snapshot -> file sink and Delta Lake, as a ratio to COPY (FORMAT binary).

Loads N rows of the 10-column table of bench/pg_stream.py into a disposable PostgreSQL,
measures ``COPY bench TO STDOUT (FORMAT binary)`` into /dev/null (the server's limit for
reading the table), then ``cdc run`` with ``snapshot: initial_only`` into each sink (the
file sink with fsync, a Delta mirror, a Delta changelog) with 1, 2 and 4 workers, in the
same run. Prints one JSON document.

    .venv/bin/python -m bench.pg_snapshot [--rows 1000000] [--workers 1 2 4] [--sinks file delta-mirror]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.daemon import profiler, stop_profiler
from bench.pg_stream import LOAD, TABLE
from cdc import __version__
from cdc.sandbox import DisposablePostgres


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--sinks", nargs="+", default=list(SINKS), choices=list(SINKS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-snap-"))
    runs = []
    with DisposablePostgres() as pg:
        pg.create_database("bench")
        dsn = pg.dsn("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(TABLE)
            step = 100_000
            for lo in range(1, args.rows + 1, step):
                conn.execute(LOAD, (lo, min(lo + step - 1, args.rows)))
            conn.execute("VACUUM ANALYZE bench")
        limit_s = _copy_binary(pg, dsn)
        for sink in args.sinks:
            for workers in args.workers:
                seconds, rss, size, snap = _cdc(work / f"{sink}-w{workers}", dsn, workers, sink)
                runs.append({"sink": sink, "workers": workers, "seconds": round(seconds, 3),
                             "rows_per_s": round(args.rows / seconds), "mb_per_s": round(size / seconds / 1e6, 1),
                             "peak_rss_mb": round(rss, 1), "ratio": round(limit_s / seconds, 3),
                             # the copy alone, without process start, slot creation and exit
                             "snapshot_s": round(snap, 3) if snap else None,
                             "snapshot_ratio": round(limit_s / snap, 3) if snap else None})
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "benchmark": "pg_snapshot",
        "rows": args.rows,
        "columns": 10,
        "limit": {"tool": "COPY bench TO STDOUT (FORMAT binary) > /dev/null (best of 3)", "seconds": round(limit_s, 3),
                  "rows_per_s": round(args.rows / limit_s)},
        "cdc": {"sinks": {k: SINKS[k][1] for k in args.sinks}, "runs": runs},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "cdc": __version__},
    }, indent=2))


def _copy_binary(pg: DisposablePostgres, dsn: str, runs: int = 3) -> float:
    """The fastest of `runs` copies: one run of about a second scatters with the machine's load."""
    psql = str(pg.bin_dir / "psql")
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        with open(os.devnull, "wb") as null:
            subprocess.run([psql, "-d", dsn, "-c", "COPY bench TO STDOUT (FORMAT binary)"], stdout=null, check=True)
        best = min(best, time.perf_counter() - t0)
    return best


#: The sinks measured: name -> (sink config over the output folder, description).
SINKS: dict[str, tuple[Any, str]] = {
    "file": (lambda out: {"type": "file", "path": str(out)}, "JSONL files, fsync"),
    "delta-mirror": (lambda out: {"type": "delta", "path": str(out), "mode": "mirror"}, "Delta Lake mirror (MERGE)"),
    "delta-changelog": (lambda out: {"type": "delta", "path": str(out), "mode": "changelog"},
                        "Delta Lake changelog (append)"),
}


def _cdc(work: Path, dsn: str, workers: int, sink: str) -> tuple[float, float, int, float | None]:
    work.mkdir(parents=True)
    config = work / "bench.yaml"
    events = work / "out"
    config.write_text(json.dumps({
        "state_dir": str(work / "state"),
        "log_format": "json",
        "jobs": [{
            "name": "bench",
            "source": {"type": "postgres", "dsn": dsn, "slot": "unused", "publication": "bench_pub"},
            "tables": {"include": ["public.bench"]},
            "snapshot": "initial_only",
            "snapshot_workers": workers,
            "snapshot_chunk_rows": 100_000,
            "sinks": [SINKS[sink][0](events)],
        }],
    }))
    t0 = time.perf_counter()
    log = work / "cdc.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cdc.cli", "run", str(config)],
                                stdout=subprocess.DEVNULL, stderr=err)
        spy = profiler(proc.pid, f"{sink}-w{workers}")
    _, status, usage = os.wait4(proc.pid, 0)
    stop_profiler(spy)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"cdc exited with {proc.returncode}")
    size = sum(f.stat().st_size for f in events.rglob("*") if f.is_file())
    print(f"{sink} w{workers}: {seconds:.2f} s, daemon cpu {usage.ru_utime + usage.ru_stime:.2f} s", file=sys.stderr)
    return seconds, usage.ru_maxrss / 1024, size, _snapshot_seconds(log)


def _snapshot_seconds(log: Path) -> float | None:
    """From ``snapshot_started`` to the last ``snapshot_table_done`` in the daemon's JSON log."""
    started = done = None
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "snapshot_started" and started is None:
            started = datetime.fromisoformat(event["timestamp"])
        elif event.get("event") == "snapshot_table_done":
            done = datetime.fromisoformat(event["timestamp"])
    return (done - started).total_seconds() if started and done else None


if __name__ == "__main__":
    main()
