"""Soak: the differential harness (integration/differential) over many seeds, for as long as asked.

Each seed runs the full matrix by default (every type family and operation, every sink, two
SIGKILLs of the daemon and a source restart) against PostgreSQL (compared with its native
logical replication subscriber) and MariaDB (compared with its SELECT), alternating. Per seed
it prints the transactions and changes it wrote, pass or FAIL with the differences; at the
end the failing seeds, each replayable with ``--seed S``. Exit status 1 if any seed failed.

    .venv/bin/python -m bench.soak --minutes 30            # seeds 1, 2, 3, ... until 30 minutes passed
    .venv/bin/python -m bench.soak --seed 3                # replay seed 3 (both engines)
    .venv/bin/python -m bench.soak --seed 3 --engine pg --sinks file postgres --families int4 date

The same seed in the test suite: ``CDC_DIFFERENTIAL_SEEDS=3 pytest integration/test_differential.py -k seed_3``.
A narrower ``--families`` draws other values than the full seed: check that the failure stays.
Failing seeds keep their work directory (the sinks and the daemon's log ``cdc.log``); ``--keep``
keeps every one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from integration.differential.compare import PG_SINKS
from integration.differential.run import ALL_FAULTS, RunOptions, SeedResult, Servers, run_mysql_seed, run_pg_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=0.0, help="run new seeds until this much time passed")
    parser.add_argument("--seed", type=int, action="append", help="run this seed (repeatable); no --minutes needed")
    parser.add_argument("--first-seed", type=int, default=1, help="with --minutes: the first seed (default 1)")
    parser.add_argument("--engine", choices=("pg", "mysql", "both"), default="both")
    parser.add_argument("--sinks", nargs="+", choices=PG_SINKS, default=list(PG_SINKS))
    parser.add_argument("--families", nargs="+", help="only these type families (names in families.py)")
    parser.add_argument("--faults", nargs="*", choices=("kill", "source_restart"), default=list(ALL_FAULTS),
                        help="faults of each seed (default: kill kill source_restart; none: --faults)")
    parser.add_argument("--transactions", type=int, default=40, help="random transactions per seed (default 40)")
    parser.add_argument("--scale", type=float, default=1.0, help="size of the large transaction (1.0: 1500 rows)")
    parser.add_argument("--keep", action="store_true", help="keep each seed's work directory (sinks, daemon log)")
    args = parser.parse_args(argv)
    if not args.seed and args.minutes <= 0:
        parser.error("give --minutes N or --seed S")

    options = RunOptions(sinks=tuple(args.sinks), faults=tuple(args.faults), transactions=args.transactions,
                         scale=args.scale, families=frozenset(args.families) if args.families else None)
    engines = ("pg", "mysql") if args.engine == "both" else (args.engine,)
    deadline = time.monotonic() + args.minutes * 60
    results: list[SeedResult] = []
    work_root = Path(tempfile.mkdtemp(prefix="cdc-soak-"))
    print(f"work directory {work_root}", flush=True)
    with Servers() as servers:
        seeds = iter(args.seed) if args.seed else _count(args.first_seed)
        for seed in seeds:
            for engine in engines:
                work = work_root / f"{engine}_{seed}"
                run = run_pg_seed if engine == "pg" else run_mysql_seed
                result = run(servers, seed, work, options)
                results.append(result)
                print(result.report(), flush=True)
                if not args.keep and result.ok:
                    _remove(work)
            if not args.seed and time.monotonic() >= deadline:
                break
    failed = [r for r in results if not r.ok]
    changes = sum(r.changes for r in results)
    print(f"\n{len(results)} seed runs, {sum(r.transactions for r in results)} transactions, {changes} changes, "
          f"{sum(r.seconds for r in results) / 60:.1f} minutes; {len(failed)} failed")
    for r in failed:
        print(f"FAILED: --engine {r.engine} --seed {r.seed}")
    return 1 if failed else 0


def _count(start: int):  # type: ignore[no-untyped-def]
    n = start
    while True:
        yield n
        n += 1


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
