"""``make bench``: every benchmark scenario, one JSON file and one Markdown table.

Runs each scenario as its own process (each prints one JSON document with the limit it
measured in the same run), then writes ``bench/results/<UTC time>.json`` with every
document and ``bench/results/<UTC time>.md`` with one table row per measured figure, and
copies both to ``bench/results/latest.*``. A scenario that fails is recorded with its
error and the suite goes on. Quick runs go to ``bench/results/quick/`` (ignored by git).

    .venv/bin/python -m bench.suite [--quick] [--only pg_stream pg_latency ...] [--readme] [--profile]

``--quick`` runs every scenario on a tenth of the data (a smoke run, not figures to quote).
``--readme`` rewrites README.md's Performance table (between ``<!-- bench:begin -->`` and
``<!-- bench:end -->``) from this run. ``--profile`` records each daemon with py-spy
(``pip install py-spy``; figures then include its overhead: profile runs are not for quoting)
and appends the summaries of `bench.flame` to the Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import flame
from cdc.sandbox import SandboxError, find_postgres_bin_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

Row = dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    argv: list[str]
    quick: list[str]
    rows: Callable[[dict[str, Any]], list[Row]]


def _rate(value: float | None, unit: str = "rows/s") -> str:
    return f"{value:,.0f} {unit}" if value else "-"


def _pg_stream(doc: dict[str, Any]) -> list[Row]:
    limit = doc["limit"]
    return [{"figure": f"{doc['rows']:,} rows in {doc['transactions']:,} transactions -> {r['sink']}",
             "limit": f"{limit['tool']}: {_rate(limit['rows_per_s'])}", "cdc": _rate(r["rows_per_s"]),
             "ratio": r["ratio"], "latency": "-", "peak_rss_mb": r["peak_rss_mb"]} for r in doc["cdc"]]


def _pg_snapshot(doc: dict[str, Any]) -> list[Row]:
    limit = doc["limit"]
    return [{"figure": f"snapshot {doc['rows']:,} rows -> {r['sink']}, {r['workers']} worker(s)",
             "limit": f"{limit['tool']}: {_rate(limit['rows_per_s'])}",
             "cdc": f"{_rate(r['rows_per_s'])} (copy phase {r.get('snapshot_ratio') or '-'}x)",
             "ratio": r["ratio"], "latency": "-", "peak_rss_mb": r["peak_rss_mb"]} for r in doc["cdc"]["runs"]]


def _mysql_stream(doc: dict[str, Any]) -> list[Row]:
    floors = doc["floors"]
    return [{"figure": f"MariaDB {doc['rows']:,} rows -> file", "limit":
             f"{floors['library_rows']['tool']}: {_rate(floors['library_rows']['rows_per_s'])}; "
             f"{floors['mariadb_binlog_v']['tool']}: {_rate(floors['mariadb_binlog_v']['rows_per_s'])}",
             "cdc": _rate(doc["cdc"]["rows_per_s"]), "ratio": doc["ratio_to_library"], "latency": "-",
             "peak_rss_mb": doc["cdc"]["peak_rss_mb"]}]


def _pg_latency(doc: dict[str, Any]) -> list[Row]:
    return [{"figure": f"{r['rate_reached']:,} transactions/s x 5 rows for {doc['seconds']:g} s -> {r['sink']}",
             "limit": f"max_wait_ms {doc['max_wait_ms']}", "cdc": f"{r['transactions']:,} transactions",
             "ratio": "-", "latency": f"p50 {r['p50_ms']} / p99 {r['p99_ms']} / max {r['max_ms']} ms",
             "peak_rss_mb": r["peak_rss_mb"]} for r in doc["runs"]]


def _delta_sink(doc: dict[str, Any]) -> list[Row]:
    c, m = doc["changelog"], doc["mirror"]
    return [
        {"figure": f"Delta changelog append, {c['rows']:,} rows", "limit":
         f"{c['limit']['tool']}: {_rate(c['limit']['rows_per_s'])}", "cdc": _rate(c["cdc"]["rows_per_s"]),
         "ratio": c["ratio"], "latency": "p50 {p50} / p99 {p99} ms per batch".format(**c["cdc"]["batch_latency_ms"]),
         "peak_rss_mb": f"{doc['peak_rss_mb']} (bench process, data included)"},
        {"figure": f"Delta mirror, {m['changes']:,} changes into {m['table_rows']:,} rows", "limit":
         f"{m['limit']['tool']}: {_rate(m['limit']['changes_per_s'], 'changes/s')}",
         "cdc": _rate(m["cdc"]["changes_per_s"], "changes/s"), "ratio": m["ratio"], "latency": "-",
         "peak_rss_mb": f"{doc['peak_rss_mb']} (bench process, data included)"},
    ]


def _warehouse_sink(doc: dict[str, Any]) -> list[Row]:
    return [{"figure": f"{name}: {doc['changes']:,} changes into {doc['table_rows']:,} rows",
             "limit": f"engine's own apply: {_rate(e['limit_changes_per_s'], 'changes/s')}",
             "cdc": _rate(e["sink_changes_per_s"], "changes/s"), "ratio": e["ratio"], "latency": "-",
             "peak_rss_mb": f"{doc.get('peak_rss_mb', '-')} (bench process, data included)"}
            for name, e in doc["engines"].items()]


def _eventlog_sinks(doc: dict[str, Any]) -> list[Row]:
    return [{"figure": f"{name}: {doc['events']:,} events", "limit":
             f"plain client: {_rate(b['plain_client_events_per_s'], 'events/s')}",
             "cdc": _rate(b["sink_events_per_s"], "events/s"), "ratio": b["ratio"], "latency": "-",
             "peak_rss_mb": "-"} for name, b in doc["backends"].items()]


PY = [sys.executable]
SCENARIOS = [
    Scenario("pg_stream", "PostgreSQL stream, 1M rows of 10 columns in 100 transactions, into each sink",
             [*PY, "bench/pg_stream.py", "--sinks", "file", "delta-changelog", "delta-mirror", "duckdb"],
             ["--rows", "100000", "--transactions", "10"], _pg_stream),
    Scenario("pg_stream_small_tx", "PostgreSQL stream, 100k single-row transactions (per-transaction overhead)",
             [*PY, "bench/pg_stream.py", "--rows", "100000", "--transactions", "100000"],
             ["--rows", "10000", "--transactions", "10000"], _pg_stream),
    Scenario("pg_snapshot", "PostgreSQL snapshot of 1M rows with 1, 2 and 4 workers",
             [*PY, "-m", "bench.pg_snapshot", "--sinks", "file", "delta-changelog", "delta-mirror"],
             ["--rows", "100000", "--workers", "1", "2"], _pg_snapshot),
    Scenario("mysql_stream", "MariaDB stream of 1M rows into the file sink",
             [*PY, "bench/mysql_stream.py"], ["--rows", "100000", "--transactions", "10"], _mysql_stream),
    Scenario("pg_latency", "Latency: 2,000 transactions/s (5 rows each) for 60 s into the file sink and NATS",
             [*PY, "-m", "bench.pg_latency"], ["--seconds", "6"], _pg_latency),
    Scenario("pg_memory", "Memory: one 2M-row transaction into the file sink",
             [*PY, "bench/pg_stream.py", "--rows", "2000000", "--transactions", "1"],
             ["--rows", "200000", "--transactions", "1"], _pg_stream),
    Scenario("delta_sink", "Delta Lake sink against deltalake itself",
             [*PY, "-m", "bench.delta_sink"], ["--rows", "100000", "--changes", "10000"], _delta_sink),
    Scenario("warehouse_sink", "Warehouse sinks: 100k changes into a 1M-row table",
             [*PY, "bench/warehouse_sink.py"], ["--rows", "100000", "--changes", "10000"], _warehouse_sink),
    Scenario("eventlog_sinks", "Event-log sinks against each backend's plain client",
             [*PY, "bench/eventlog_sinks.py"], ["--events", "20000", "--rounds", "1"], _eventlog_sinks),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the data: a smoke run")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in SCENARIOS])
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's Performance table from this run")
    parser.add_argument("--profile", action="store_true", help="record the daemons with py-spy (slower)")
    args = parser.parse_args()
    started = datetime.now(UTC)
    stem = started.strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / "quick" if args.quick or args.profile else RESULTS  # smoke and profile runs are kept apart
    profiles = out / f"{stem}-profiles"
    documents: dict[str, Any] = {}
    table: list[tuple[str, list[Row] | str]] = []
    for scenario in SCENARIOS:
        if args.only and scenario.name not in args.only:
            continue
        argv = [*scenario.argv, *(scenario.quick if args.quick else [])]
        print(f"bench: {scenario.name}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if args.profile:
            profiles.mkdir(parents=True, exist_ok=True)
            spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
            if spy is None:
                raise SystemExit("bench: --profile needs py-spy: .venv/bin/pip install py-spy")
            env["CDC_BENCH_PROFILE"] = f"{profiles / scenario.name}-{{name}}.txt"
            env["CDC_BENCH_PYSPY"] = spy
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, env=env)
        try:
            if result.returncode != 0:
                raise ValueError(f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1:]}")
            doc = json.loads(result.stdout)
            documents[scenario.name] = {"argv": argv[1:], "seconds": round(time.monotonic() - t0, 1), **doc}
            table.append((scenario.what, scenario.rows(doc)))
        except (ValueError, KeyError, TypeError) as err:
            documents[scenario.name] = {"argv": argv[1:], "error": str(err)}
            table.append((scenario.what, f"failed: {err}"))
        print(f"bench: {scenario.name}: done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "load_average": os.getloadavg(), "versions": versions()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(
        {"started": started.isoformat(), "quick": args.quick, "machine": machine, "scenarios": documents}, indent=2))
    text = markdown(started, machine, table, args.quick)
    if args.profile:
        text += "\n## py-spy profiles (GIL holder, 100 Hz)\n\nRates above include py-spy's overhead: quote a run " \
                "without --profile.\n\n" + "\n".join(
            flame.summarise(p, 12) for p in sorted(profiles.glob("*.txt")))
    (out / f"{stem}.md").write_text(text)
    for suffix in ("json", "md"):
        shutil.copyfile(out / f"{stem}.{suffix}", out / f"latest.{suffix}")
    print(text)
    if args.readme:
        update_readme(ROOT / "README.md", text, f"bench/results/{stem}.md" if out == RESULTS else None)


def versions() -> dict[str, str]:
    """The versions of what the figures depend on: cdc's libraries and the servers' binaries."""
    found = {}
    for dist in ("psycopg", "psycopg-binary", "pyarrow", "deltalake", "duckdb", "mysql-replication", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    for name, command in (("postgresql", [str(find_postgres_bin_dir() / "postgres"), "--version"]),
                          ("mariadb", ["mariadbd", "--version"])):
        try:
            line = subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout
            found[name] = line.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, SandboxError, IndexError):
            pass
    return found


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def update_readme(readme: Path, text: str, source: str | None) -> None:
    """Replace what README.md holds between `BEGIN` and `END` with this run's table."""
    doc = readme.read_text()
    head, sep, rest = doc.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} section to rewrite")
    body = text.split("\n", 1)[1].strip()  # without the document's own title
    where = f" ([{source}]({source}))" if source else ""
    generated = f"{BEGIN}\n<!-- generated by `python -m bench.suite --readme`; do not edit -->\n" \
                f"Generated from a full `make bench` run{where}:\n\n{body}\n{END}"
    readme.write_text(head + generated + tail)


def markdown(started: datetime, machine: dict[str, Any], table: list[tuple[str, list[Row] | str]], quick: bool) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    lines = [f"# cdc benchmarks, {started:%Y-%m-%d %H:%M} UTC{' (quick smoke run)' if quick else ''}", "",
             f"Machine: {machine['cpus']} CPUs, Python {machine['python']}, {machine['platform']}, "
             f"load average at the end {', '.join(f'{x:.1f}' for x in machine['load_average'])}.", "",
             f"Versions: {versions}.", "",
             "| scenario | figure | limit (same run) | cdc | ratio | latency | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for what, rows in table:
        if isinstance(rows, str):
            lines.append(f"| {what} | {rows} | | | | | |")
            continue
        for i, r in enumerate(rows):
            lines.append(f"| {what if i == 0 else ''} | {r['figure']} | {r['limit']} | {r['cdc']} | {r['ratio']} | "
                         f"{r['latency']} | {r['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
