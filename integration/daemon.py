"""Run the real ``cdc run CONFIG`` as a subprocess, and read its file sink back.

The integration tests for crashes and shutdown need the daemon as users run it: a
separate process that can be killed with SIGKILL (no cleanup, no flush) or stopped with
SIGTERM. This module writes a one-job config (a PostgreSQL source and a file sink),
starts ``python -m cdc.cli run CONFIG`` with its stderr (the JSON log) in a file, waits
for log events, signals it, and reads the JSONL files of the sink back into table state.

Reading back follows the layout documented in sinks/eventlog/file.py: ``<schema>.<table>/
<segment>.jsonl`` files of Debezium envelopes, and ``_cdc_file_sink.json`` holding the
durable position and the (segment, offset) per table. By default only the durable part
is read: what lies beyond the recorded offsets is an unfinished write that the sink cuts
off on its next start.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pymysql
import yaml

if TYPE_CHECKING:
    from integration.conftest import MariaDatabase, PgDatabase

#: The repository root: the daemon runs from here so ``-m cdc.cli`` imports this checkout.
ROOT = Path(__file__).resolve().parents[1]
STATE_FILE = "_cdc_file_sink.json"
#: Debezium's placeholder for a column the source did not send (unchanged TOAST).
UNAVAILABLE = "__debezium_unavailable_value"

Row = dict[str, Any]
Key = tuple[Any, ...]


class DaemonError(AssertionError):
    """The daemon did not do what the test waited for (the message has its stderr tail)."""


# -- configuration --------------------------------------------------------------------------


@dataclass
class JobFiles:
    """Where one job's config, sink and checkpoints live (all under one directory)."""

    root: Path
    job: str = "itest"

    @property
    def config(self) -> Path:
        return self.root / "cdc.yaml"

    @property
    def sink(self) -> Path:
        return self.root / "sink"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def checkpoints(self) -> list[Path]:
        """Every ``*.checkpoint.json`` the daemon wrote under the state dir."""
        return sorted(self.state_dir.rglob("*.checkpoint.json")) if self.state_dir.exists() else []


def job_config(
    files: JobFiles,
    *,
    dsn: str,
    slot: str,
    publication: str,
    include: Sequence[str] = ("public.*",),
    max_wait_ms: int = 50,
    connect_timeout_s: int = 5,
    heartbeat_interval_s: float = 1.0,
    status_interval_s: float = 1.0,
    shutdown_grace_s: float = 8.0,
) -> dict[str, Any]:
    """The config document of one job: postgres source, file sink, snapshot: never."""
    source = {
        "type": "postgres",
        "dsn": dsn,
        "slot": slot,
        "publication": publication,
        "connect_timeout_s": connect_timeout_s,
        "heartbeat_interval_s": heartbeat_interval_s,
        "status_interval_s": status_interval_s,
    }
    return job_document(files, source, include=include, max_wait_ms=max_wait_ms, shutdown_grace_s=shutdown_grace_s)


def mysql_job_config(
    files: JobFiles,
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    database: str,
    server_id: int = 4242,
    snapshot: str = "never",
    max_wait_ms: int = 50,
    shutdown_grace_s: float = 8.0,
    **source: Any,
) -> dict[str, Any]:
    """The config document of one job: mysql source on `database`, file sink."""
    doc = {"type": "mysql", "host": host, "port": port, "user": user, "password": password,
           "server_id": server_id, "connect_timeout_s": 5, "heartbeat_interval_s": 0.5, **source}
    return job_document(files, doc, include=(f"{database}.*",), snapshot=snapshot, max_wait_ms=max_wait_ms,
                        shutdown_grace_s=shutdown_grace_s)


def job_document(
    files: JobFiles,
    source: Mapping[str, Any],
    *,
    include: Sequence[str],
    snapshot: str = "never",
    max_wait_ms: int = 50,
    shutdown_grace_s: float = 8.0,
) -> dict[str, Any]:
    """The config document of one job reading `source` into a file sink under `files`."""
    return {
        "state_dir": str(files.state_dir),
        "log_level": "info",
        "log_format": "json",
        "shutdown_grace_s": shutdown_grace_s,
        "jobs": [
            {
                "name": files.job,
                "source": dict(source),
                "tables": {"include": list(include)},
                "snapshot": snapshot,
                "sinks": [{"type": "file", "path": str(files.sink)}],
                "pipeline": {"max_wait_ms": max_wait_ms},
                "retry": {"initial_backoff_s": 0.2, "max_backoff_s": 1.0},
            }
        ],
    }


def write_config(files: JobFiles, document: Mapping[str, Any] | str) -> Path:
    """Write `document` (a mapping dumped as YAML, or YAML text as is) to ``files.config``."""
    files.root.mkdir(parents=True, exist_ok=True)
    text = document if isinstance(document, str) else yaml.safe_dump(dict(document), sort_keys=False)
    files.config.write_text(text, encoding="utf-8")
    return files.config


# -- running the CLI -------------------------------------------------------------------------


def cdc_command(*args: str | Path) -> list[str]:
    """The argv of ``cdc ARGS`` run from this checkout with the test's interpreter."""
    return [sys.executable, "-m", "cdc.cli", *map(str, args)]


def run_cdc(*args: str | Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``cdc ARGS`` to completion and return its exit code and output."""
    return subprocess.run(
        cdc_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class Daemon:
    """One ``cdc run CONFIG`` process; stderr (the JSON log) goes to `log_path`."""

    config: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _offset: int = 0  # where the current run's log starts in log_path

    def start(self) -> Daemon:
        """Start the process (appending to the log file); the previous run must have ended."""
        if self.process is not None and self.process.poll() is None:
            raise DaemonError("the daemon is still running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cdc_command("run", self.config), cwd=ROOT, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        if self.process is None:
            raise DaemonError("the daemon was never started")
        return self.process.pid

    def stderr(self, *, all_runs: bool = False) -> str:
        """The stderr text of the current run (or of every run)."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(0 if all_runs else self._offset)
            return f.read().decode("utf-8", "replace")

    def events(self, *, all_runs: bool = False) -> list[dict[str, Any]]:
        """The JSON log records of the current run (or every run); other lines are skipped."""
        out = []
        for line in self.stderr(all_runs=all_runs).splitlines():
            if line.startswith("{") and line.endswith("}"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def wait_for(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until the current run logs `event`; fail if it exits or times out first."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.events():
                if record.get("event") == event:
                    return record
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise DaemonError(f"cdc exited with {code} before logging {event!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise DaemonError(f"cdc did not log {event!r} within {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.05)

    def kill(self) -> int:
        """SIGKILL the process (a crash: no cleanup at all) and reap it; return its status."""
        return self.signal(signal.SIGKILL, timeout=10.0)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM the process and wait up to `timeout` s for it to exit; return its exit code."""
        return self.signal(signal.SIGTERM, timeout=timeout)

    def signal(self, sig: signal.Signals, timeout: float) -> int:
        process = self.process
        if process is None:
            raise DaemonError("the daemon was never started")
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DaemonError(f"cdc did not exit within {timeout:.0f}s of {sig.name}:\n{self.tail()}") from None

    def ensure_stopped(self) -> None:
        """Teardown: kill the process if it still runs (only the process this object started)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr(all_runs=True).splitlines()[-lines:])


@dataclass
class Daemons:
    """Every daemon a test started; `stop_all` (in a fixture's teardown) kills those still running."""

    started: list[Daemon] = field(default_factory=list)

    def new(self, config: Path, log_path: Path) -> Daemon:
        daemon = Daemon(config, log_path)
        self.started.append(daemon)
        return daemon

    def stop_all(self) -> None:
        for daemon in self.started:
            daemon.ensure_stopped()


# -- reading the file sink back ----------------------------------------------------------------


def _sink_state(path: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((path / STATE_FILE).read_bytes())
    except FileNotFoundError:
        return None
    return state


def sink_position(path: Path) -> dict[str, int] | None:
    """The durable position the sink's state file records (``{"commit": lsn, ...}``), or None."""
    state = _sink_state(path)
    return None if state is None else state.get("position")


def _segments(path: Path, durable_only: bool) -> Iterator[tuple[str, bytes]]:
    """``(table dir, content)`` of every segment, in table then segment order."""
    state = _sink_state(path) if durable_only else None
    if durable_only and state is None:
        return
    tables = state.get("tables", {}) if state is not None else {}
    for table_dir in sorted(p for p in path.iterdir() if p.is_dir()) if path.exists() else []:
        limit = tables.get(table_dir.name)
        if durable_only and limit is None:
            continue
        for segment in sorted(table_dir.glob("*.jsonl")):
            data = segment.read_bytes()
            if limit is not None:
                number = int(segment.stem)
                if number > limit["segment"]:
                    continue
                if number == limit["segment"]:
                    data = data[: limit["offset"]]
            yield table_dir.name, data


def envelopes(path: Path, *, durable_only: bool = True) -> Iterator[dict[str, Any]]:
    """Every envelope of the sink under `path`, per table in file order.

    With `durable_only`, only what the state file covers; otherwise every complete line.
    """
    for _, data in _segments(path, durable_only):
        lines = data.split(b"\n")
        if not data.endswith(b"\n"):
            lines = lines[:-1]  # a line still being written
        for line in lines:
            if line:
                yield json.loads(line)


def event_ids(path: Path, *, durable_only: bool = False) -> list[str]:
    """The event id of every envelope in every JSONL file of the sink, in file order."""
    return [e["id"] for e in envelopes(path, durable_only=durable_only)]


def rebuild(
    path: Path, keys: Mapping[str, Sequence[str]] | None = None, *, default_key: Sequence[str] = ("id",),
    durable_only: bool = True,
) -> dict[str, dict[Key, Row]]:
    """The table state the sink's events describe: ``{"schema.table": {key: after-row}}``.

    Events apply in file order (commit order within a table): ``c``, ``u`` and ``r``
    store the after image by key (a column holding Debezium's unavailable placeholder
    keeps the stored value), ``d`` removes the key, ``t`` empties the table. A key is the
    tuple of the table's key columns from `keys` (``"schema.table" -> columns``), else
    `default_key`; an update that changes the key removes the old key (from `before`).
    """
    keys = keys or {}
    state: dict[str, dict[Key, Row]] = {}
    for env in envelopes(path, durable_only=durable_only):
        if not apply_envelope(state, env, keys, default_key):
            raise AssertionError(f"unexpected op {env['op']!r} in {env}")
    return state


def apply_envelope(
    state: dict[str, dict[Key, Row]], env: Mapping[str, Any], keys: Mapping[str, Sequence[str]],
    default_key: Sequence[str],
) -> bool:
    """Apply one Debezium envelope to `state` (see `rebuild`); False for an op that is no row change."""
    source = env["source"]
    table = f"{source['schema']}.{source['table']}"
    rows = state.setdefault(table, {})
    columns = keys.get(table, default_key)
    op, before, after = env["op"], env["before"], env["after"]
    if op in ("c", "u", "r"):
        key = tuple(after[c] for c in columns)
        if before is not None:
            old = tuple(before[c] for c in columns)
            if old != key:
                rows.pop(old, None)
        stored = rows.get(key, {})
        rows[key] = {c: stored.get(c) if v == UNAVAILABLE else v for c, v in after.items()}
    elif op == "d":
        rows.pop(tuple(before[c] for c in columns), None)
    elif op == "t":
        rows.clear()
    else:
        return False
    return True


# -- a source workload -------------------------------------------------------------------------

ITEMS_DDL = "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, price numeric(12,2), updated timestamptz)"
#: The same table in MySQL/MariaDB (`updated` in UTC: the writer's session time zone is UTC).
MYSQL_ITEMS_DDL = (
    "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, price decimal(12,2), updated timestamp(6) NULL)"
)


class ChangeWriter:
    """Deterministic transactions of 2-6 inserts, updates (some moving the key) and deletes on `items`
    (`ITEMS_DDL`), with awkward text, extreme integers, NULLs and odd microseconds."""

    NAMES = ("widget", "gadget", 'say "hi"', "back\\slash", "new\nline", "Zürich ✓", "", None)

    def __init__(self, pg: PgDatabase | None, seed: int, *, mysql: MariaDatabase | None = None) -> None:
        self.rng = random.Random(seed)
        self.conn: Any
        if mysql is not None:  # MariaDB/MySQL: the same workload through PyMySQL, UTC session
            self.conn = pymysql.connect(host=mysql.host, port=mysql.port, user=mysql.user, password=mysql.password,
                                        database=mysql.dbname, charset="utf8mb4", init_command="SET time_zone='+00:00'")
        else:
            assert pg is not None
            self.conn = psycopg.connect(pg.dsn, connect_timeout=10)
        self.live: list[int] = []
        self.next_id = 1
        self.transactions = 0

    def close(self) -> None:
        self.conn.close()

    def _values(self) -> tuple[Any, ...]:
        rng = self.rng
        price = Decimal(rng.randint(-10**6, 10**10)) / 100
        updated: datetime | None = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.randint(0, 10**8), microseconds=rng.choice([0, 100_000, 120, rng.randint(1, 999_999)])
        )
        if rng.random() < 0.1:
            updated = None
        qty = rng.randint(-(2**31), 2**31 - 1) if rng.random() < 0.1 else rng.randint(0, 500)
        return rng.choice(self.NAMES), qty, price, updated

    def transaction(self) -> None:
        """Commit one transaction of 2 to 6 row changes."""
        if isinstance(self.conn, pymysql.connections.Connection):
            with self.conn.cursor() as cur:
                self._changes(cur)
            self.conn.commit()
        else:
            with self.conn.transaction(), self.conn.cursor() as cur:
                self._changes(cur)
        self.transactions += 1

    def _changes(self, cur: Any) -> None:
        rng = self.rng
        for _ in range(rng.randint(2, 6)):
            roll = rng.random()
            if roll < 0.45 or len(self.live) < 3:
                cur.execute("INSERT INTO items VALUES (%s, %s, %s, %s, %s)", (self.next_id, *self._values()))
                self.live.append(self.next_id)
                self.next_id += 1
            elif roll < 0.75:
                name, qty, price, updated = self._values()
                cur.execute(
                    "UPDATE items SET name = %s, qty = %s, price = %s, updated = %s WHERE id = %s",
                    (name, qty, price, updated, rng.choice(self.live)),
                )
            elif roll < 0.82:
                old = rng.choice(self.live)
                cur.execute("UPDATE items SET id = %s, qty = qty + 1 WHERE id = %s", (self.next_id, old))
                self.live[self.live.index(old)] = self.next_id
                self.next_id += 1
            else:
                victim = self.live.pop(rng.randrange(len(self.live)))
                cur.execute("DELETE FROM items WHERE id = %s", (victim,))


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll `predicate()` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DaemonError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- assertions shared by the stream tests ------------------------------------------------------


def sink_rows(files: JobFiles, table: str, *, durable_only: bool = True) -> dict[Key, Row]:
    """The file sink's table `table` (``schema.table``) rebuilt from its events."""
    return rebuild(files.sink, durable_only=durable_only).get(table, {})


def wait_sink_equal(files: JobFiles, daemon: Daemon, table: str, expected: dict[Key, Row],
                    timeout: float = 30.0) -> dict[Key, Row]:
    """Wait until the file sink's durable `table` equals `expected` (fail with the daemon's log tail)."""
    try:
        wait_until(lambda: sink_rows(files, table) == expected, timeout, "the sink to match the source")
    except AssertionError:
        assert sink_rows(files, table) == expected, daemon.tail()
    return expected


def assert_no_duplicate_ids(files: JobFiles) -> list[str]:
    """Every event id of the file sink, asserting none was written twice."""
    ids = event_ids(files.sink)
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    assert not repeated, f"event ids written more than once: {repeated[:10]}"
    return ids


def assert_clean_log(daemon: Daemon) -> None:
    """No traceback and no failed job in any run of `daemon`."""
    text = daemon.stderr(all_runs=True)
    assert "Traceback" not in text
    assert "job_failed" not in text, daemon.tail()


def slot_confirmed_flush(pg: PgDatabase, slot: str) -> int:
    """The PostgreSQL slot's confirmed flush LSN (the slot must exist)."""
    rows = pg.query(
        "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    assert rows, f"slot {slot} is gone"
    return int(rows[0][0])


def write_with_two_kills(writer: ChangeWriter, files: JobFiles, daemon: Daemon, sink: str,
                         transactions: int = 40, timeout: float = 60.0) -> None:
    """Commit `transactions` of `writer` while SIGKILLing the running `daemon` twice, each time once
    the job checkpoint shows `sink` made a new batch durable; restart it while writes go on.
    Closes the writer."""
    from integration.brokers import checkpoint_of

    first, second = round(transactions * 0.3), round(transactions * 0.65)
    try:
        last = None
        for n in range(1, transactions + 1):
            if n in (first, second):
                wait_until(lambda held=last: checkpoint_of(files, sink) not in (None, held), timeout,
                           f"{sink} to make a batch durable")
                last = checkpoint_of(files, sink)
            writer.transaction()
            time.sleep(0.02)
            if n in (first, second):
                assert daemon.kill() == -9
            if n in (first + 4, second):
                daemon.start()
    finally:
        writer.close()
