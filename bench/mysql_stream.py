"""Benchmark: MariaDB row binlog -> file sink, against two floors measured in the same run.

Loads N rows of a 10-column table (bigint, varchar, decimal, timestamp(6), json, tinyint,
uuid, double, int, varchar) in T transactions into a disposable MariaDB, then reads the
same binlog range three ways:

* ``mariadb-binlog -v`` over the binlog files (the server's own decoder, to /dev/null);
* python-mysql-replication's plain row iteration (every row decoded, nothing else);
* ``cdc run`` streaming it into the file sink (fsync on), from the position before the load,
  timed until the sink holds the last transaction (not the idle heartbeat after it).

Prints one JSON document: each rate, the ratios, peak RSS of the daemon.

    .venv/bin/python bench/mysql_stream.py [--rows 1000000] [--transactions 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pymysql

from bench.daemon import json_position, run_until
from cdc import __version__
from cdc.sandbox import DisposableMariaDB
from connectors.mysql import positions
from connectors.mysql.binlog import plain_row_iteration

TABLE = """
CREATE TABLE bench (
    id bigint PRIMARY KEY, name varchar(64), amount decimal(12,2), created timestamp(6) NULL, doc json,
    flag tinyint, ref uuid, score double, qty int, code varchar(32)
)"""
LOAD = """
INSERT INTO bench
SELECT seq, CONCAT('name-', seq), (seq % 100000) / 100, TIMESTAMP'2026-01-01 00:00:00' + INTERVAL seq SECOND,
       JSON_OBJECT('k', seq, 'tag', CONCAT('x', seq % 7)), seq % 2, UUID(), seq / 7, seq % 1000,
       CONCAT('code-', seq % 97)
FROM seq_{first}_to_{last}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--transactions", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cdc-bench-mysql-"))
    settings = {"max-binlog-size": "1073741824", "innodb-buffer-pool-size": "512M"}
    try:
        with DisposableMariaDB(settings=settings) as db:
            db.create_database("bench")
            db.execute(TABLE, database="bench")
            start_file, start_pos = db.query("SHOW MASTER STATUS")[0][:2]
            per_tx = args.rows // args.transactions
            t0 = time.perf_counter()
            conn = pymysql.connect(host=db.host, port=db.port, user=db.user, password=db.password, database="bench",
                                   autocommit=True)
            with conn.cursor() as cur:
                cur.execute("SET time_zone = '+00:00'")
                for t in range(args.transactions):
                    if t == args.transactions - 1:  # where the last transaction starts
                        cur.execute("SHOW MASTER STATUS")
                        last_file, last_pos = cur.fetchone()[:2]
                    # Literal integers of this script only (the sequence engine names the range).
                    cur.execute(LOAD.format(first=t * per_tx + 1, last=(t + 1) * per_tx))
            conn.close()
            load_s = time.perf_counter() - t0
            end_file, end_pos = db.query("SHOW MASTER STATUS")[0][:2]
            rows = per_tx * args.transactions
            files = [r[0] for r in db.query("SHOW BINARY LOGS") if start_file <= r[0] <= end_file]

            binlog_s = _mariadb_binlog(db, files, int(start_pos))
            t0 = time.perf_counter()
            counted = plain_row_iteration(host=db.host, port=db.port, user=db.user, password=db.password,
                                          server_id=91, log_file=start_file, log_pos=int(start_pos),
                                          end_file=end_file, end_pos=int(end_pos))
            library_s = time.perf_counter() - t0
            assert counted == rows, (counted, rows)
            last = positions.transaction_commit(positions.file_index(last_file), int(last_pos))
            cdc_s, rss_mb, out_bytes = _cdc(work, db, (positions.file_index(start_file), int(start_pos)), last)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "benchmark": "mysql_stream",
        "rows": rows,
        "transactions": args.transactions,
        "columns": 10,
        "load_s": round(load_s, 2),
        "floors": {
            "mariadb_binlog_v": {"tool": "mariadb-binlog -v -> /dev/null", "seconds": round(binlog_s, 3),
                                 "rows_per_s": round(rows / binlog_s)},
            "library_rows": {"tool": "python-mysql-replication row iteration", "seconds": round(library_s, 3),
                             "rows_per_s": round(rows / library_s)},
        },
        "cdc": {"sink": "file (fsync)", "seconds": round(cdc_s, 3), "rows_per_s": round(rows / cdc_s),
                "mb_per_s": round(out_bytes / cdc_s / 1e6, 1), "peak_rss_mb": round(rss_mb, 1)},
        "ratio_to_library": round(library_s / cdc_s, 3),
        "ratio_to_mariadb_binlog": round(binlog_s / cdc_s, 3),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "cdc": __version__},
    }
    print(json.dumps(result, indent=2))


def _mariadb_binlog(db: DisposableMariaDB, files: list[str], start_pos: int) -> float:
    tool = shutil.which("mariadb-binlog") or shutil.which("mysqlbinlog")
    if tool is None:
        raise SystemExit("mariadb-binlog is not installed")
    t0 = time.perf_counter()
    for n, name in enumerate(files):
        cmd = [tool, "--no-defaults", "-v", "--base64-output=DECODE-ROWS", str(db.data_dir / name)]
        if n == 0:
            cmd.insert(2, f"--start-position={start_pos}")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _cdc(work: Path, db: DisposableMariaDB, start: tuple[int, int], last: int) -> tuple[float, float, int]:
    """Seconds from ``replication_started`` until the sink holds the whole last transaction (whose
    commit position is `last`), peak RSS in MB, bytes written."""
    config = work / "bench.yaml"
    events = work / "events"
    state = work / "state"
    state.mkdir(parents=True)
    # The source's bookmark (docs/mysql.md): the job starts streaming where the load began.
    (state / "bench.mysql-start.json").write_text(json.dumps({"index": start[0], "offset": start[1]}))
    config.write_text(json.dumps({
        "state_dir": str(state),
        "log_format": "json",
        "jobs": [{
            "name": "bench",
            "source": {"type": "mysql", "host": db.host, "port": db.port, "user": db.user, "server_id": 92},
            "tables": {"include": ["bench.bench"]},
            "snapshot": "never",
            "sinks": [{"type": "file", "path": str(events)}],
        }],
    }))
    sink_state = events / "_cdc_file_sink.json"

    def reached() -> bool:
        # The last transaction whole (a chunk of it names its seq), not the idle heartbeat after it:
        # that comes up to heartbeat_interval_s later and is no part of the stream's throughput.
        position = json_position(sink_state, "position", "commit")
        return position is not None and position >= last and json_position(sink_state, "position", "seq") is None

    elapsed, rss = run_until(config, reached, 1800)
    return elapsed, rss, sum(f.stat().st_size for f in events.rglob("*.jsonl"))


if __name__ == "__main__":
    main()
