"""One seed, end to end: servers, plan, oracle, the real daemon with every sink, faults, catch-up,
comparison. `run_pg_seed` and `run_mysql_seed` return a `SeedResult` listing every failure
(nothing raises for a difference, so a soak goes on to the next seed).

The servers (`Servers`) are disposable and shared by the seeds of one test module or soak:
the PostgreSQL source (``wal_level=logical``), a second PostgreSQL server holding the native
subscriber (the oracle) and the PostgreSQL warehouse target (another database), and, when a
MySQL seed runs, a MariaDB with ROW binlogs. Every seed uses fresh databases, slot,
publication and subscription, dropped at the end whatever happened.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cdc.sandbox import DisposableMariaDB, DisposablePostgres
from integration.brokers import checkpoint_of
from integration.daemon import Daemon, DaemonError, JobFiles, job_config, mysql_job_config, write_config
from integration.differential import compare
from integration.differential.compare import Difference, check_logged_losses, diff_rows, my_expected, pg_expected
from integration.differential.families import MyFamily, PgFamily
from integration.differential.sinks import delta_table, duckdb_table, file_tables
from integration.differential.sources import MySide, PgSide, my_quote, pg_read
from integration.differential.workload import ADDED_COLUMN, BIG_COLUMN, AddColumn, Fault, Plan, Transaction, make_plan

ALL_FAULTS = ("kill", "kill", "source_restart")


@dataclass(frozen=True)
class RunOptions:
    """What a seed runs: which sinks, faults and families, and how much.

    The defaults are the full matrix (every sink, every family, two SIGKILLs and a source
    restart); narrower options replay a failure with less in the way.
    """

    sinks: tuple[str, ...] = compare.PG_SINKS
    faults: tuple[str, ...] = ALL_FAULTS
    families: frozenset[str] | None = None
    transactions: int = 40
    scale: float = 1.0
    catch_up_s: float = 90.0


@dataclass
class SeedResult:
    seed: int
    engine: str
    transactions: int
    changes: int
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self, limit: int = 40) -> str:
        head = (f"{self.engine} seed {self.seed}: {self.transactions} transactions, {self.changes} changes, "
                f"{self.seconds:.1f}s: {'pass' if self.ok else f'FAIL ({len(self.failures)})'}")
        lines = [head] + [f"  {f}" for f in self.failures[:limit]]
        if len(self.failures) > limit:
            lines.append(f"  ... {len(self.failures) - limit} more")
        return "\n".join(lines)


class Servers:
    """The disposable servers of a group of seeds; started lazily, stopped by `close`."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._source: DisposablePostgres | None = None
        self._subscriber: DisposablePostgres | None = None
        self._mariadb: DisposableMariaDB | None = None

    @property
    def source(self) -> DisposablePostgres:
        if self._source is None:
            self._source = self._stack.enter_context(DisposablePostgres())
        return self._source

    @property
    def subscriber(self) -> DisposablePostgres:
        if self._subscriber is None:
            self._subscriber = self._stack.enter_context(DisposablePostgres())
        return self._subscriber

    @property
    def mariadb(self) -> DisposableMariaDB:
        if self._mariadb is None:
            self._mariadb = self._stack.enter_context(DisposableMariaDB())
        return self._mariadb

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _database(server: DisposablePostgres, name: str) -> Iterator[str]:
    server.create_database(name)
    try:
        yield server.dsn(name)
    finally:
        server.drop_database(name)


def _sink_documents(sinks: Sequence[str], work: Path, target_dsn: str | None) -> list[dict[str, Any]]:
    documents: dict[str, dict[str, Any]] = {
        "file": {"type": "file", "path": str(work / "file")},
        "delta": {"type": "delta", "path": str(work / "delta"), "mode": "mirror"},
        "duckdb": {"type": "duckdb", "path": str(work / "wh.duckdb")},
        "postgres": {"type": "postgres", "dsn": target_dsn},
    }
    return [documents[s] for s in sinks]


class _Supervisor:
    """The daemon of one seed: starts, kills, notices and records unexpected exits."""

    MAX_RESTARTS = 4

    def __init__(self, daemon: Daemon, failures: list[str]) -> None:
        self.daemon = daemon
        self.failures = failures
        self.restarts = 0

    def check(self, where: str) -> bool:
        """Record an exit the harness did not cause and start the daemon again (a few times); False when given up."""
        process = self.daemon.process
        if process is None or process.poll() is None:
            return True
        failed = [e for e in self.daemon.events() if e.get("event") in ("job_failed", "job_stopped")]
        detail = failed[-1].get("error", failed[-1].get("event")) if failed else self.daemon.tail(3)
        self.failures.append(f"daemon exited with {process.returncode} {where}: {detail}")
        if self.restarts >= self.MAX_RESTARTS:
            return False
        self.restarts += 1
        self.daemon.start()
        return True

    def start(self) -> None:
        """Start the daemon and wait until it streams (so the plan's writes go through the stream)."""
        self.daemon.start()
        self.wait_streaming()

    def wait_streaming(self) -> None:
        try:
            self.daemon.wait_for("replication_started", timeout=60.0)
        except DaemonError as err:
            self.failures.append(f"the daemon did not start streaming: {str(err).splitlines()[0]}")
            self.check("while starting")

    def stuck(self, repeats: int = 6) -> str | None:
        """The error of the current run's last `repeats` ``job_retrying`` events when they are all the
        same (a retry that cannot fix it), else None."""
        errors = [re.sub(r"\d+", "N", str(e.get("error"))) for e in self.daemon.events()
                  if e.get("event") == "job_retrying"]
        last = errors[-repeats:]
        if len(last) == repeats and len(set(last)) == 1:
            return str(last[0])[:300]
        return None

    def kill_and_restart(self) -> None:
        self.check("before a planned SIGKILL")
        self.daemon.kill()
        self.start()

    def stop(self) -> None:
        if self.daemon.process is not None and self.daemon.process.poll() is None:
            try:
                code = self.daemon.terminate(30.0)
            except DaemonError as err:
                self.failures.append(f"SIGTERM: {str(err).splitlines()[0]}")
                self.daemon.ensure_stopped()
                return
            if code != 0:
                self.failures.append(f"daemon exited with {code} after SIGTERM")
        text = self.daemon.stderr(all_runs=True)
        if "Traceback" in text:
            line = next((ln for ln in text.splitlines() if "Error" in ln and not ln.startswith("{")), "")
            self.failures.append(f"a traceback in the daemon's log: {line.strip()[:200]}")


def _wait(predicate: Callable[[], bool], timeout: float, supervisor: _Supervisor, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not supervisor.check(f"while waiting for {what}"):
            return False
        if predicate():
            return True
        stuck = supervisor.stuck()
        if stuck is not None:
            supervisor.failures.append(f"the job retries the same error without progress: {stuck}")
            return False
        time.sleep(0.2)
    supervisor.failures.append(f"timed out after {timeout:.0f}s waiting for {what}")
    return False


# -- PostgreSQL ---------------------------------------------------------------------------------------


def _pg_columns(plan: Plan, table: str) -> tuple[list[str], dict[str, tuple[str, bool]]]:
    families: tuple[PgFamily, ...] = plan.tables[table]
    kinds = {"id": ("int", False), **{f.column: (f.kind, f.array) for f in families},
             BIG_COLUMN: ("text", False), ADDED_COLUMN: ("numeric", False)}
    return list(kinds), kinds


def run_pg_seed(servers: Servers, seed: int, work: Path, options: RunOptions = RunOptions()) -> SeedResult:
    """Run `seed` against PostgreSQL (see the module docstring); never raises for a difference."""
    started = time.monotonic()
    plan = make_plan(seed, "pg", transactions=options.transactions, scale=options.scale, faults=options.faults,
                     families=options.families)
    result = SeedResult(seed, "pg", plan.transactions, plan.changes, summary=plan.summary())
    name = f"diff_{seed}_{secrets.token_hex(3)}"
    source, subscriber = servers.source, servers.subscriber
    with ExitStack() as stack:
        source_dsn = stack.enter_context(_database(source, name))
        subscriber_dsn = stack.enter_context(_database(subscriber, name))
        target_dsn = stack.enter_context(_database(subscriber, f"{name}_wh"))
        side = PgSide(plan, source_dsn, subscriber_dsn, name)
        side.create()
        for tx in plan.initial:
            side.execute(tx)
        side.subscribe()
        stack.callback(side.unsubscribe)
        files = JobFiles(work / f"pg_{seed}")
        slot = f"{name}_cdc"
        document = job_config(files, dsn=source_dsn, slot=slot, publication=f"{name}_cdc", include=("public.t_*",))
        job = document["jobs"][0]
        job["snapshot"] = "initial"
        job["sinks"] = _sink_documents(options.sinks, files.root, target_dsn)
        write_config(files, document)
        daemon = Daemon(files.config, files.root / "cdc.log")
        stack.callback(daemon.ensure_stopped)
        supervisor = _Supervisor(daemon, result.failures)
        supervisor.start()
        for step in plan.steps:
            supervisor.check("during the workload")
            if isinstance(step, Transaction):
                side.execute(step)
            elif isinstance(step, AddColumn):
                side.add_column(step.table)
            elif isinstance(step, Fault) and step.kind == "kill":
                supervisor.kill_and_restart()
            elif isinstance(step, Fault) and step.kind == "source_restart":
                source.restart("fast")
        end = side.wal_lsn()

        def caught_up() -> bool:
            held = [checkpoint_of(files, s) for s in options.sinks]
            return all(p is not None and p.get("commit", 0) >= end for p in held) and all(
                (side.slot_flushed(s) or 0) >= end for s in (slot, side.subscription))

        _wait(caught_up, options.catch_up_s, supervisor, "every sink's checkpoint, cdc's slot and the native "
              "subscription to reach the source's last WAL position")
        supervisor.stop()
        result.failures.extend(compare.summarize(compare_pg(plan, side, files, target_dsn, options.sinks,
                                                            daemon.events(all_runs=True))))
    result.seconds = time.monotonic() - started
    return result


def compare_pg(plan: Plan, side: PgSide, files: JobFiles, target_dsn: str, sinks: Collection[str],
               events: Sequence[dict[str, Any]]) -> list[Any]:
    """The oracle against the source, then every sink against the oracle (and its loss warnings in
    the daemon's log `events`)."""
    out: list[Any] = []
    file_state, anomalies = file_tables(files.root / "file") if "file" in sinks else ({}, [])
    out.extend(anomalies)
    for table in plan.tables:
        columns, kinds = _pg_columns(plan, table)
        arrays = [c for c, (_, is_array) in kinds.items() if is_array]
        oracle = pg_read(side.subscriber_dsn, "public", table, columns, arrays) or {}
        source = pg_read(side.source_dsn, "public", table, columns, arrays) or {}
        out.extend(diff_rows("native-subscriber", table, source, oracle, columns))
        present = [c for c in columns if any(c in row for row in oracle.values())] or ["id"]
        for sink in sinks:
            expected = {k: {c: pg_expected(sink, *kinds[c], row.get(c)) for c in present} for k, row in oracle.items()}
            actual: dict[int, dict[str, Any]] | None
            if sink == "file":
                actual = file_state.get(f"public.{table}")
            elif sink == "delta":
                actual = delta_table(files.root / "delta", "public", table, storage=True)
            elif sink == "duckdb":
                actual = duckdb_table(files.root / "wh.duckdb", "public", table, storage=True)
            else:
                actual = pg_read(target_dsn, "public", table, columns, arrays)
            if actual is None:
                out.append(f"{sink} {table}: the table does not exist")
                continue
            out.extend(_missing_columns(sink, table, present, actual))
            out.extend(diff_rows(sink, table, expected, actual, present))
            out.extend(check_logged_losses("pg", sink, f"public.{table}", kinds, oracle, events))
    return out


def _missing_columns(sink: str, table: str, columns: Sequence[str], actual: dict[int, dict[str, Any]]) -> list[str]:
    if not actual:
        return []
    row = next(iter(actual.values()))
    return [f"{sink} {table}: column {c} is missing" for c in columns if c not in row and c != ADDED_COLUMN]


# -- MariaDB ---------------------------------------------------------------------------------------------


def run_mysql_seed(servers: Servers, seed: int, work: Path, options: RunOptions = RunOptions()) -> SeedResult:
    """Run `seed` against MariaDB: the sinks are compared with the source's own SELECT."""
    started = time.monotonic()
    plan = make_plan(seed, "mysql", transactions=options.transactions, scale=options.scale, faults=options.faults,
                     families=options.families)
    result = SeedResult(seed, "mysql", plan.transactions, plan.changes, summary=plan.summary())
    maria = servers.mariadb
    name = f"diff_{seed}_{secrets.token_hex(3)}"
    with ExitStack() as stack:
        maria.create_database(name)
        stack.callback(maria.drop_database, name)
        target_dsn = stack.enter_context(_database(servers.subscriber, f"{name}_wh"))
        side = MySide(plan, maria.host, maria.port, maria.user, maria.password, name)
        side.create()
        for tx in plan.initial:
            side.execute(tx)
        files = JobFiles(work / f"mysql_{seed}")
        document = mysql_job_config(files, host=maria.host, port=maria.port, user=maria.user, password=maria.password,
                                    database=name, server_id=10_000 + seed % 100_000, snapshot="initial")
        document["jobs"][0]["sinks"] = _sink_documents(options.sinks, files.root, target_dsn)
        write_config(files, document)
        daemon = Daemon(files.config, files.root / "cdc.log")
        stack.callback(daemon.ensure_stopped)
        supervisor = _Supervisor(daemon, result.failures)
        supervisor.start()
        for step in plan.steps:
            supervisor.check("during the workload")
            if isinstance(step, Transaction):
                side.execute(step)
            elif isinstance(step, AddColumn):
                side.add_column(step.table)
            elif isinstance(step, Fault) and step.kind == "kill":
                supervisor.kill_and_restart()
        # Caught up: a marker row committed after the workload is in a sink, and every sink's checkpoint
        # is the same position (the pipeline writes each batch to every sink before the next).
        side.mark()

        def caught_up() -> bool:
            positions = [checkpoint_of(files, s) for s in options.sinks]
            if any(p is None for p in positions) or any(p != positions[0] for p in positions):
                return False
            return _marked(files, side, options.sinks, target_dsn)

        _wait(caught_up, options.catch_up_s, supervisor, "every sink to hold the marker committed after the workload")
        supervisor.stop()
        result.failures.extend(compare.summarize(compare_mysql(plan, side, files, target_dsn, options.sinks,
                                                               daemon.events(all_runs=True))))
    result.seconds = time.monotonic() - started
    return result


def _marked(files: JobFiles, side: MySide, sinks: Collection[str], target_dsn: str) -> bool:
    """The marker row (`MySide.mark`) is in the first sink readable while the daemon runs."""
    table = side.MARK_TABLE
    if "file" in sinks:
        return 1 in file_tables(files.root / "file")[0].get(f"{side.database}.{table}", {})
    if "postgres" in sinks:
        return 1 in (_pg_python(target_dsn, side.database, table) or {})
    if "delta" in sinks:
        return 1 in (delta_table(files.root / "delta", side.database, table, storage=False) or {})
    return True  # DuckDB alone: readable only once the daemon stopped; equal checkpoints must do


def _my_select(family: MyFamily) -> str:
    column = my_quote(family.column)
    return f"CAST({column} AS DOUBLE)" if family.kind == "float" else column


def compare_mysql(plan: Plan, side: MySide, files: JobFiles, target_dsn: str, sinks: Collection[str],
                  events: Sequence[dict[str, Any]]) -> list[Any]:
    """Every sink against the MariaDB source's SELECT (and its loss warnings in the daemon's log `events`)."""
    out: list[Any] = []
    file_state, anomalies = file_tables(files.root / "file") if "file" in sinks else ({}, [])
    out.extend(anomalies)
    for table, families in plan.tables.items():
        by_column: dict[str, MyFamily] = {f.column: f for f in families}
        columns = ["id", *by_column, BIG_COLUMN, *([ADDED_COLUMN] if table in side.added else [])]
        selects = ["id", *(_my_select(f) for f in families), my_quote(BIG_COLUMN),
                   *([my_quote(ADDED_COLUMN)] if table in side.added else [])]
        oracle = side.read(table, columns, selects)

        for sink in sinks:
            expected = {k: {c: my_expected(sink, *_my_kind(by_column, c), row[c]) for c in columns}
                        for k, row in oracle.items()}
            actual: dict[int, dict[str, Any]] | None
            if sink == "file":
                actual = file_state.get(f"{side.database}.{table}")
            elif sink == "delta":
                actual = delta_table(files.root / "delta", side.database, table, storage=False)
            elif sink == "duckdb":
                actual = duckdb_table(files.root / "wh.duckdb", side.database, table, storage=False)
            else:
                actual = _pg_python(target_dsn, side.database, table,
                                    [f.column for f in families if f.kind == "time"])
            if actual is None:
                out.append(f"{sink} {table}: the table does not exist")
                continue
            out.extend(_missing_columns(sink, table, columns, actual))
            out.extend(diff_rows(sink, table, expected, actual, columns))
            kinds = {c: (_my_kind(by_column, c)[0], False) for c in columns}
            out.extend(check_logged_losses("mysql", sink, f"{side.database}.{table}", kinds, oracle, events))
    return out


def _my_kind(families: dict[str, MyFamily], column: str) -> tuple[str, tuple[str, ...]]:
    """The documented kind of a column (and its SET labels)."""
    family = families.get(column)
    if family is not None:
        return family.kind, family.labels
    return ("decimal", ()) if column == ADDED_COLUMN else ("int" if column == "id" else "text", ())


def _pg_python(dsn: str, schema: str, table: str, as_text: Collection[str] = ()) -> dict[int, dict[str, Any]] | None:
    """The PostgreSQL target's table as psycopg's Python values (binary: a real is its exact float32),
    the columns `as_text` as their text under ``intervalstyle=postgres`` (an interval's hours stay
    hours: ``-838:59:59``, where a `timedelta` would not tell it from ``-34 days -22:59:59``)."""
    with psycopg.connect(dsn, autocommit=True, options="-c timezone=UTC -c intervalstyle=postgres") as conn:
        try:
            cur = conn.cursor(binary=True)
            texts = [sql.SQL("{}::text").format(sql.Identifier(c)) for c in as_text]
            cur.execute(sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join([sql.SQL("*"), *texts]), sql.Identifier(schema, table)))
        except psycopg.errors.UndefinedTable:
            return None
        names = [d.name for d in cur.description or ()]
        names[len(names) - len(texts):] = list(as_text)  # the texts replace the binary values (later keys win)
        rows = cur.fetchall()
    key = names.index("id")
    return {int(r[key]): {n: v for n, v in zip(names, r, strict=True) if not n.startswith("_cdc_")} for r in rows}


__all__ = ["Difference", "RunOptions", "SeedResult", "Servers", "run_mysql_seed", "run_pg_seed"]
