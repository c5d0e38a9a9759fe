"""Benchmark: end-to-end latency under a steady load, PostgreSQL -> cdc -> file sink / NATS JetStream.

A writer commits small transactions (5 inserted rows each) at a steady rate into a
disposable PostgreSQL while ``cdc run`` streams them into one sink. For every transaction
the writer notes the WAL insert position just before its COMMIT and the wall time just
after it; a poller reads the job's checkpoint (what every sink made durable and cdc
acknowledged) every 2 ms. A transaction's latency is the time from its commit returning
to the first checkpoint at or past its commit. Prints one JSON document with p50, p99 and
max per sink, the rate reached, and the daemon's peak RSS.

The limit for latency is the batching the pipeline is asked for (`max_wait_ms`, default
here 50 ms) plus the sink's durable write; there is no "same run" tool to compare with, so
the JSON gives absolute figures.

    .venv/bin/python -m bench.pg_latency [--rate 2000] [--seconds 60] [--sinks file nats]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.daemon import peak_rss_mb
from cdc import __version__
from cdc.sandbox import DisposableNats, DisposablePostgres

TABLE = "CREATE TABLE lat (id bigserial PRIMARY KEY, v int, note text)"
INSERT = (
    "WITH ins AS (INSERT INTO lat (v, note) SELECT g, 'order ' || g FROM generate_series(1, 5) g RETURNING 1) "
    "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint, count(*) FROM ins"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=2000, help="transactions per second")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--sinks", nargs="+", default=["file", "nats"], choices=["file", "nats"])
    parser.add_argument("--max-wait-ms", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-latency-"))
    runs = []
    with DisposablePostgres(settings={"synchronous_commit": "on"}) as pg:
        pg.create_database("bench")
        dsn = pg.dsn("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(TABLE)
        for sink in args.sinks:
            nats = DisposableNats().start() if sink == "nats" else None
            try:
                runs.append(_run(work / sink, dsn, sink, nats, args))
            finally:
                if nats is not None:
                    nats.stop()
    print(json.dumps({
        "benchmark": "pg_latency",
        "rate_asked": args.rate, "seconds": args.seconds, "rows_per_transaction": 5, "max_wait_ms": args.max_wait_ms,
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "cdc": __version__},
    }, indent=2))


def _run(work: Path, dsn: str, sink: str, nats: DisposableNats | None, args: argparse.Namespace) -> dict[str, Any]:
    work.mkdir(parents=True)
    slot = f"lat_{sink}"
    sink_config: dict[str, Any] = {"type": "file", "path": str(work / "out")}
    if nats is not None:
        sink_config = {"type": "nats", "servers": nats.url, "topic_prefix": f"lat{sink}"}
    config = work / "bench.yaml"
    config.write_text(json.dumps({
        "state_dir": str(work / "state"),
        "log_format": "json",
        "jobs": [{
            "name": "lat",
            "source": {"type": "postgres", "dsn": dsn, "slot": slot, "publication": f"lat_{sink}",
                       "status_interval_s": 1},
            "tables": {"include": ["public.lat"]},
            "snapshot": "never",
            "sinks": [sink_config],
            "pipeline": {"max_wait_ms": args.max_wait_ms},
        }],
    }))
    log = (work / "cdc.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cdc.cli", "run", str(config)], stderr=log)
    checkpoint = work / "state" / "lat.checkpoint.json"
    try:
        _wait_started(work / "cdc.log", proc)
        commits: list[tuple[int, float]] = []  # (WAL insert position before COMMIT, wall time after it)
        seen: list[tuple[int, float]] = []  # (checkpointed commit, wall time first seen)
        stop = threading.Event()
        poller = threading.Thread(target=_poll, args=(checkpoint, seen, stop), daemon=True)
        poller.start()
        achieved = _write(dsn, args.rate, args.seconds, commits)
        end = commits[-1][0] if commits else 0
        deadline = time.monotonic() + 60
        while (not seen or seen[-1][0] < end) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        poller.join()
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    latencies = _latencies(commits, seen)
    return {"sink": sink, "transactions": len(commits), "rate_reached": round(achieved), "measured": len(latencies),
            **_percentiles(latencies), "peak_rss_mb": round(rss, 1)}


def _wait_started(log: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cdc exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if "replication_started" in log.read_text():
            return
        time.sleep(0.05)
    raise SystemExit("cdc did not start streaming within 60 s")


def _write(dsn: str, rate: float, seconds: float, commits: list[tuple[int, float]]) -> float:
    """Commit transactions at `rate` a second for `seconds`; return the rate reached."""
    interval = 1.0 / rate
    with psycopg.connect(dsn) as conn:
        start = time.perf_counter()
        due = start
        while (now := time.perf_counter()) - start < seconds:
            if now < due:
                time.sleep(due - now)
            row = conn.execute(INSERT).fetchone()
            conn.commit()
            commits.append((int(row[0]) if row else 0, time.time()))
            due += interval
        return len(commits) / (time.perf_counter() - start)


def _poll(checkpoint: Path, seen: list[tuple[int, float]], stop: threading.Event) -> None:
    last = -1
    while not stop.is_set():
        try:
            commit = int(json.loads(checkpoint.read_bytes())["source"]["commit"])
        except (OSError, ValueError, KeyError):
            commit = -1
        if commit > last:
            seen.append((commit, time.time()))
            last = commit
        time.sleep(0.002)


def _latencies(commits: list[tuple[int, float]], seen: list[tuple[int, float]]) -> list[float]:
    """For each transaction, seconds from its commit to the first checkpoint past its WAL position."""
    out = []
    j = 0
    for position, at in commits:
        while j < len(seen) and seen[j][0] < position:
            j += 1
        if j == len(seen):
            break
        out.append(max(0.0, seen[j][1] - at))
    return out


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if len(values) < 2:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1), "max_ms": round(max(values) * 1000, 1)}


if __name__ == "__main__":
    main()
