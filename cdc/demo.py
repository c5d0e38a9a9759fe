"""``python -m cdc.demo``: watch cdc capture a live shop database into JSONL files, then prove it.

What it does, in order:

1. Starts a disposable PostgreSQL (`cdc.sandbox.DisposablePostgres`) and creates database
   ``shop`` with three tables: ``customers``, ``orders`` and ``order_items`` (composite key).
2. Runs the real daemon, ``python -m cdc.cli run config/demo.yaml``, as a child process with
   ``CDC_DEMO_DSN`` pointing at that server and ``CDC_DEMO_DIR`` at the demo directory
   (``./.demo`` by default, wiped first); its JSON log goes to ``<dir>/cdc.log``.
3. Seeds 50 customers before the daemon starts (its initial snapshot copies them, as
   ``op: "r"`` events); once the daemon logged ``replication_started``, writes a shop
   workload for ``--seconds`` (default 20) at about ``--rate`` transactions per second: new
   customers, orders with 1-5 items in one transaction, status changes (pending -> paid ->
   shipped), cancellations (the order's items and the order deleted). Prints progress once
   a second: transactions and row changes written, events found in the sink's files.
4. Waits until the sink holds one event per row change written, stops the daemon with
   SIGTERM (it must exit 0), and prints a summary read back from the JSONL files: events per
   table and operation, end-to-end lag (``ts_ms`` written minus ``source.ts_ms`` committed),
   commit order and duplicate checks, and a consistency check: per table, the rows rebuilt
   by replaying the events equal the source table's rows, column by column.

The config says ``snapshot: initial``: the seeded rows reach the sink through the snapshot,
everything after through the stream, and the consistency check compares the source with
both.

Exit status: 0 when the daemon ran cleanly and every table is consistent, 1 otherwise
(including setup failures, reported as one ``demo: error: ...`` line), 130 on Ctrl-C or
SIGTERM. The server and the daemon are stopped in every case. Output uses `rich` when it
is installed, plain text otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import orjson
import psycopg
from psycopg import sql

from cdc.config import Config, FileSinkConfig, PostgresSourceConfig, load_config
from cdc.demo_lake import LakeCheck, delta_paths, lake_checks
from cdc.demo_warehouse import WarehouseCheck, duckdb_path, print_warehouse, warehouse_check
from cdc.errors import CdcError
from cdc.sandbox import DisposablePostgres, SandboxError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

#: The repository checkout this module belongs to (holds config/ and the packages).
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG: Final = REPO_ROOT / "config" / "demo.yaml"
DATABASE: Final = "shop"
#: Written into a demo directory the demo created, so a wipe never hits anything else.
MARKER: Final = ".cdc-demo"
#: Debezium's placeholder for a value the source did not send (unchanged TOAST).
UNAVAILABLE: Final = "__debezium_unavailable_value"

SCHEMA: Final = """
CREATE TABLE customers (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    status      text NOT NULL CHECK (status IN ('pending', 'paid', 'shipped')),
    total       numeric(12, 2) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE order_items (
    order_id    bigint NOT NULL REFERENCES orders (id),
    line        int NOT NULL,
    sku         text NOT NULL,
    qty         int NOT NULL CHECK (qty > 0),
    price       numeric(10, 2) NOT NULL,
    PRIMARY KEY (order_id, line)
);
"""

_FIRST_NAMES: Final = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret",
                       "Dennis", "Radia", "Niklaus", "Leslie", "Shafi", "Tony", "Sophie", "Guido", "Jim")
_LAST_NAMES: Final = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
                      "Hamilton", "Ritchie", "Perlman", "Wirth", "Lamport", "Goldwasser", "Hoare", "Wilson")
_SKUS: Final = tuple(f"SKU-{n:04d}" for n in range(1, 61))


class DemoError(CdcError):
    """The demo could not set up or run a step; the message says which and why."""

    exit_code = 1


def _rel(path: Path) -> str:
    """`path` relative to the current directory when it lies under it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _thousands(n: int) -> str:
    return f"{n:,}"


def _count(n: int, noun: str) -> str:
    """``1 warning``, ``2 warnings``: `n` and the noun, plural unless n is 1."""
    return f"{_thousands(n)} {noun}{'' if n == 1 else 's'}"


# -- output -------------------------------------------------------------------------------------

#: A piece of a printed line: plain text, or ``(text, rich style)``.
Segment = str | tuple[str, str]


class Screen:
    """Where the demo prints: a `rich` console when rich is installed, else plain ``print``.

    Every method renders the same content in both modes; styles only colour it.
    """

    def __init__(self) -> None:
        self._console: Console | None
        try:
            from rich.console import Console
        except ImportError:
            self._console = None
        else:
            self._console = Console(highlight=False, soft_wrap=True)
        utf8 = (sys.stdout.encoding or "").lower().replace("-", "").startswith("utf8")
        self._ok, self._fail = ("✓", "✗") if utf8 else ("ok", "!!")

    def line(self, *segments: Segment) -> None:
        """Print one line made of `segments`."""
        if self._console is None:
            print("".join(s if isinstance(s, str) else s[0] for s in segments), flush=True)
            return
        from rich.text import Text

        self._console.print(Text.assemble(*segments))

    def title(self, text: str) -> None:
        self.line("")
        self.line((text, "bold"))

    def step(self, text: str, *, ok: bool = True, detail: str = "") -> None:
        """A finished step: a check mark (or a cross) and what happened."""
        mark = (f" {self._ok} ", "bold green") if ok else (f" {self._fail} ", "bold red")
        self.line(mark, text, (f"  {detail}" if detail else "", "dim"))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], *, footer: Sequence[str] = ()) -> None:
        """A table; the first column is left-aligned, the others right-aligned."""
        if self._console is None:
            body: list[list[str]] = [list(headers), *(list(r) for r in rows), *([list(footer)] if footer else [])]
            widths = [max(len(r[i]) for r in body) for i in range(len(headers))]
            body.insert(1, ["-" * w for w in widths])
            if footer:
                body.insert(len(body) - 1, ["-" * w for w in widths])
            for r in body:
                cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
                print("   " + "  ".join(cells), flush=True)
            return
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, show_footer=bool(footer), padding=(0, 1), pad_edge=False)
        for i, header in enumerate(headers):
            table.add_column(header, footer=footer[i] if footer else "", justify="left" if i == 0 else "right",
                             style="cyan" if i == 0 else None, footer_style="bold", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        self._console.print(table, soft_wrap=False)

    def json(self, document: Mapping[str, Any]) -> None:
        """Pretty-print a JSON document, indented."""
        text = json.dumps(document, indent=2, ensure_ascii=False)
        if self._console is None:
            print("\n".join("   " + t for t in text.splitlines()), flush=True)
            return
        from rich.json import JSON
        from rich.padding import Padding

        renderable: RenderableType = Padding(JSON(text), (0, 0, 0, 3), expand=False)
        self._console.print(renderable, soft_wrap=False)


# -- the demo directory -------------------------------------------------------------------------


def prepare_demo_dir(path: Path) -> Path:
    """Create `path` empty and return it absolute; wipe it first if an earlier demo made it.

    Refuses (`DemoError`) to delete a non-empty directory without the demo's marker file,
    so a mistyped ``--dir`` never removes someone's data.
    """
    path = path.resolve()
    if path.exists():
        if not path.is_dir():
            raise DemoError(f"{path} exists and is not a directory; choose another --dir")
        if any(path.iterdir()) and not (path / MARKER).exists():
            raise DemoError(f"{path} is not empty and was not created by the demo; choose another --dir")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("created by python -m cdc.demo; deleted by its next run\n", encoding="utf-8")
    return path


# -- the shop workload --------------------------------------------------------------------------


class ShopWorkload:
    """Writes the shop's transactions on one connection, one transaction per call.

    It is the database's only writer, so it tracks which customers exist and which orders
    are pending or paid in memory, and every transaction it writes changes at least one
    row. `transactions` and `row_changes` count what was committed: each row a statement
    inserted, updated or deleted is exactly one event the sink must end up holding.
    """

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]], rng: random.Random) -> None:
        self._conn = conn
        self._rng = rng
        self.transactions = 0
        self.row_changes = 0
        self.by_kind: Counter[str] = Counter()
        self._customers: list[int] = []
        self._pending: list[int] = []
        self._paid: list[int] = []
        self._emails = 0

    def _email(self, name: str) -> str:
        self._emails += 1
        return f"{name.lower().replace(' ', '.')}.{self._emails}@example.com"

    def _name(self) -> str:
        return f"{self._rng.choice(_FIRST_NAMES)} {self._rng.choice(_LAST_NAMES)}"

    def _take(self, ids: list[int]) -> int:
        """Remove and return a random element of `ids` (order is irrelevant: swap and pop)."""
        i = self._rng.randrange(len(ids))
        ids[i], ids[-1] = ids[-1], ids[i]
        return ids.pop()

    def _committed(self, kind: str, rows: int) -> None:
        self.transactions += 1
        self.row_changes += rows
        self.by_kind[kind] += 1

    def seed_customers(self, count: int) -> None:
        """Insert `count` customers in one transaction."""
        names = [self._name() for _ in range(count)]
        emails = [self._email(n) for n in names]
        with self._conn.transaction():
            cur = self._conn.execute(
                "INSERT INTO customers (name, email) SELECT * FROM unnest(%s::text[], %s::text[]) RETURNING id",
                (names, emails),
            )
            ids = [int(row[0]) for row in cur.fetchall()]
        self._customers.extend(ids)
        self._committed("seed customers", len(ids))

    def step(self) -> None:
        """Write one transaction, picked at random from the shop's usual traffic."""
        roll = self._rng.random()
        if roll < 0.05:
            self.new_customer()
        elif roll < 0.08:
            self.change_email()
        elif roll < 0.40 and (self._pending or self._paid):
            self.advance_order()
        elif roll < 0.47 and (self._pending or self._paid):
            self.cancel_order()
        else:
            self.new_order()

    def new_customer(self) -> None:
        name = self._name()
        with self._conn.transaction():
            row = self._conn.execute(
                "INSERT INTO customers (name, email) VALUES (%s, %s) RETURNING id", (name, self._email(name))
            ).fetchone()
        assert row is not None
        self._customers.append(int(row[0]))
        self._committed("new customer", 1)

    def change_email(self) -> None:
        customer = self._rng.choice(self._customers)
        with self._conn.transaction():
            cur = self._conn.execute(
                "UPDATE customers SET email = %s WHERE id = %s", (self._email(self._name()), customer)
            )
        self._committed("email change", cur.rowcount)

    def new_order(self) -> None:
        """One order with 1-5 items, its total computed exactly, in one transaction."""
        customer = self._rng.choice(self._customers)
        items = [
            (line, self._rng.choice(_SKUS), self._rng.randint(1, 4), Decimal(self._rng.randint(199, 9999)).scaleb(-2))
            for line in range(1, self._rng.randint(1, 5) + 1)
        ]
        total = sum((qty * price for _, _, qty, price in items), Decimal("0.00"))
        with self._conn.transaction():
            row = self._conn.execute(
                "INSERT INTO orders (customer_id, status, total) VALUES (%s, 'pending', %s) RETURNING id",
                (customer, total),
            ).fetchone()
            assert row is not None
            order = int(row[0])
            with self._conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO order_items (order_id, line, sku, qty, price) VALUES (%s, %s, %s, %s, %s)",
                    [(order, *item) for item in items],
                )
        self._pending.append(order)
        self._committed("new order", 1 + len(items))

    def advance_order(self) -> None:
        """Move a random open order one status on: pending -> paid, or paid -> shipped."""
        if self._pending and (not self._paid or self._rng.random() < 0.5):
            order, status = self._take(self._pending), "paid"
        else:
            order, status = self._take(self._paid), "shipped"
        with self._conn.transaction():
            cur = self._conn.execute(
                "UPDATE orders SET status = %s, updated_at = now() WHERE id = %s", (status, order)
            )
        if status == "paid":
            self._paid.append(order)
        self._committed(f"order {status}", cur.rowcount)

    def cancel_order(self) -> None:
        """Delete a random pending or paid order: its items first, then the order."""
        order = self._take(self._pending if self._pending and (not self._paid or self._rng.random() < 0.7)
                           else self._paid)
        with self._conn.transaction():
            items = self._conn.execute("DELETE FROM order_items WHERE order_id = %s", (order,)).rowcount
            orders = self._conn.execute("DELETE FROM orders WHERE id = %s", (order,)).rowcount
        self._committed("order cancelled", items + orders)


# -- the daemon as a child process --------------------------------------------------------------


class DaemonProcess:
    """``python -m cdc.cli run CONFIG`` in its own session, stdout and stderr into `log_path`.

    Its own session keeps a Ctrl-C in the terminal away from it: the demo decides when it
    stops (`stop`), so it always gets a clean SIGTERM and the chance to checkpoint.
    """

    def __init__(self, config: Path, log_path: Path, env: Mapping[str, str]) -> None:
        self.log_path = log_path
        self.argv = [sys.executable, "-m", "cdc.cli", "run", str(config)]
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(env), start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self._process.pid

    def exit_code(self) -> int | None:
        """The exit code once the daemon has ended, None while it runs."""
        return self._process.poll()

    def log_lines(self) -> Iterator[dict[str, Any]]:
        """Every line of the log so far: parsed JSON events, or ``{"event": None, "text": line}``."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                doc = None
            yield doc if isinstance(doc, dict) else {"event": None, "text": raw.decode(errors="replace")}

    def problems(self, limit: int = 5) -> list[str]:
        """The last `limit` warnings, errors and non-JSON lines (``cdc: error: ...``) of the log."""
        out = []
        for doc in self.log_lines():
            if doc.get("event") is None:
                out.append(str(doc["text"]))
            elif doc.get("level") in ("warning", "error", "critical"):
                details = " ".join(f"{k}={v}" for k, v in doc.items() if k not in ("event", "level", "timestamp"))
                out.append(f"{doc['level']}: {doc['event']} {details}".rstrip())
        return out[-limit:]

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        """Return the first log event named `event`, waiting up to `timeout` seconds.

        Raises `DemoError` with the log's last problems when the daemon exits first or
        the time runs out.
        """
        deadline = time.monotonic() + timeout
        while True:
            for doc in self.log_lines():
                if doc.get("event") == event:
                    return doc
            code = self.exit_code()
            if code is not None:
                raise DemoError(self.failure(f"the daemon exited with code {code} before logging {event}"))
            if time.monotonic() > deadline:
                raise DemoError(self.failure(f"the daemon did not log {event} within {timeout:.0f} s"))
            time.sleep(0.05)

    def failure(self, what: str) -> str:
        """`what` went wrong, with the log's path and its last problems."""
        problems = self.problems()
        tail = "".join(f"\n   {p}" for p in problems) if problems else ""
        return f"{what} (log: {_rel(self.log_path)}){tail}"

    def stop(self, timeout: float) -> int:
        """SIGTERM the daemon and return its exit code; SIGKILL it after `timeout` seconds
        (then the code is -9). Safe to call again once it has ended."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return self._process.returncode


# -- reading the sink back ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A captured table as the source catalog describes it: columns, types, primary key."""

    schema: str
    name: str
    columns: tuple[tuple[str, str], ...]  # (column, pg_type.typname), in column order
    key: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(slots=True)
class TableTally:
    """What the sink's files hold for one table, folded as the events are read."""

    ops: Counter[str] = field(default_factory=Counter)
    #: The table rebuilt by replaying the events: key values -> the row's latest image.
    rows: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    last: tuple[int, int] = (-1, -1)
    out_of_order: int = 0
    #: Updates and deletes of rows no earlier event inserted. The demo's tables start
    #: empty in the stream, so each one means an event went missing.
    orphans: int = 0
    #: The table's latest update event, as written: shown in the summary.
    sample: dict[str, Any] | None = None


class SinkReader:
    """Follows the file sink's JSONL segments and folds every new event into `TableTally`s.

    `poll` reads only complete lines appended since the last call, segment after segment in
    name order (the sink rotates to segment N+1 only once N is finished), so it can run
    every second while the daemon writes. It assumes the files only grow, which holds while
    one daemon runs without crashing (a restart may cut a torn tail first).
    """

    def __init__(self, events_dir: Path, tables: Mapping[str, TableInfo]) -> None:
        self.events_dir = events_dir
        self.tables = tables
        self.tally: dict[str, TableTally] = {}
        self.files: dict[Path, int] = {}  # segment -> bytes consumed
        self.lines: Counter[Path] = Counter()
        self.lags_ms: list[int] = []
        self.commits: set[int] = set()
        self.events = 0
        self.duplicates = 0
        self._ids: set[str] = set()

    def segments(self) -> list[Path]:
        """Every segment file under the sink's path, per table directory, in order."""
        if not self.events_dir.is_dir():
            return []
        return [seg for table_dir in sorted(p for p in self.events_dir.iterdir() if p.is_dir())
                for seg in sorted(table_dir.glob("*.jsonl"))]

    def poll(self) -> int:
        """Read what was appended since the last call; return the number of events seen so far."""
        for seg in self.segments():
            offset = self.files.get(seg, 0)
            with seg.open("rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            if end == 0:
                self.files[seg] = offset
                continue
            for raw in data[:end].splitlines():
                self._fold(orjson.loads(raw))
                self.lines[seg] += 1
            self.files[seg] = offset + end
        return self.events

    def _fold(self, event: dict[str, Any]) -> None:
        self.events += 1
        source = event["source"]
        table = f"{source['schema']}.{source['table']}"
        tally = self.tally.setdefault(table, TableTally())
        op = event["op"]
        tally.ops[op] += 1
        self.lags_ms.append(int(event["ts_ms"]) - int(source["ts_ms"]))
        event_id = str(event.get("id", ""))
        if event_id in self._ids:
            self.duplicates += 1
        self._ids.add(event_id)
        _, commit, seq = event_id.rsplit(":", 2) if event_id.count(":") >= 2 else ("", "-1", "-1")
        position = (int(commit), int(seq))
        self.commits.add(position[0])
        if position <= tally.last:
            tally.out_of_order += 1
        tally.last = position
        if op == "u":
            tally.sample = event
        info = self.tables.get(table)
        if info is None or not info.key:
            return  # no key to rebuild the table by; the consistency check says so
        before, after = event.get("before"), event.get("after")
        if op in ("c", "r", "u") and isinstance(after, dict):
            key = tuple(after.get(k) for k in info.key)
            old = tally.rows.get(key)
            if isinstance(before, dict):
                old_key = tuple(before.get(k) for k in info.key)
                if old_key != key and all(v is not None for v in old_key):
                    old = tally.rows.pop(old_key, None)  # the update changed the key
            if op == "u" and old is None:
                tally.orphans += 1
            tally.rows[key] = {c: (old.get(c) if old is not None and v == UNAVAILABLE else v)
                               for c, v in after.items()}
        elif op == "d" and isinstance(before, dict):
            if tally.rows.pop(tuple(before.get(k) for k in info.key), None) is None:
                tally.orphans += 1
        elif op == "t":
            tally.rows.clear()


def read_sink_position(events_dir: Path) -> int | None:
    """The commit LSN of the file sink's durable position (its state file), or None."""
    with contextlib.suppress(OSError, orjson.JSONDecodeError, KeyError, TypeError):
        state = orjson.loads((events_dir / "_cdc_file_sink.json").read_bytes())
        return int(state["position"]["commit"])
    return None


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


# -- consistency --------------------------------------------------------------------------------


def captured_tables(conn: psycopg.Connection[tuple[Any, ...]], publication: str) -> dict[str, TableInfo]:
    """The tables in `publication` with their columns, types and primary keys."""
    out: dict[str, TableInfo] = {}
    tables = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1, 2", (publication,)
    ).fetchall()
    for schema, name in tables:
        rows = conn.execute(
            """
            SELECT a.attname, t.typname, coalesce(a.attnum = ANY (i.indkey), false)
            FROM pg_attribute a
            JOIN pg_type t ON t.oid = a.atttypid
            LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
            WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum
            """,
            (sql.Identifier(schema, name).as_string(conn),),
        ).fetchall()
        info = TableInfo(str(schema), str(name), tuple((str(c), str(t)) for c, t, _ in rows),
                         tuple(str(c) for c, _, is_key in rows if is_key))
        out[info.qualified] = info
    return out


def normalise(type_name: str, value: object) -> object:
    """One comparable form for a value from either side: psycopg's Python value or the event's JSON.

    numeric compares by its exact text (scale included: ``12.50`` is not ``12.5``),
    timestamptz as an aware UTC datetime, integers as int, everything else as text.
    """
    if value is None:
        return None
    if type_name in ("int2", "int4", "int8", "oid"):
        return int(str(value))
    if type_name == "numeric":
        return str(Decimal(str(value)))
    if type_name == "timestamptz":
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        return moment.astimezone(UTC)
    if type_name == "bool":
        return value if isinstance(value, bool) else str(value).lower() in ("t", "true")
    return str(value)


@dataclass(slots=True)
class TableCheck:
    """The rows of one table in the source against the rows rebuilt from its events."""

    table: str
    source_rows: int
    rebuilt_rows: int
    missing: int = 0  # keys in the source, not in the events
    extra: int = 0  # keys in the events, not in the source
    different: int = 0  # same key, some column differs
    orphans: int = 0  # updates or deletes of rows the events never inserted
    note: str = ""
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different or self.orphans or self.note)


def _key_text(info: TableInfo, key: tuple[object, ...]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in zip(info.key, key, strict=True)) + ")"


def check_table(conn: psycopg.Connection[tuple[Any, ...]], info: TableInfo, tally: TableTally | None) -> TableCheck:
    """Compare every row of the source table with the table rebuilt from the events, by key."""
    if not info.key:
        return TableCheck(info.qualified, -1, -1, note="no primary key: cannot rebuild")
    names = [c for c, _ in info.columns]
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(info.schema, info.name)
    )
    source: dict[tuple[object, ...], tuple[object, ...]] = {}
    for row in conn.execute(query).fetchall():
        values = tuple(normalise(t, v) for (_, t), v in zip(info.columns, row, strict=True))
        image = dict(zip(names, values, strict=True))
        source[tuple(image[k] for k in info.key)] = values
    rebuilt: dict[tuple[object, ...], tuple[object, ...]] = {}
    for after in (tally.rows.values() if tally is not None else ()):
        values = tuple(normalise(t, after.get(c)) for c, t in info.columns)
        image = dict(zip(names, values, strict=True))
        rebuilt[tuple(image[k] for k in info.key)] = values
    check = TableCheck(info.qualified, len(source), len(rebuilt), orphans=tally.orphans if tally else 0)
    if check.orphans:
        check.examples.append(f"{info.qualified}: {check.orphans} updates or deletes of rows no event inserted")
    for key in source.keys() - rebuilt.keys():
        check.missing += 1
        if len(check.examples) < 3:
            check.examples.append(f"{info.qualified} {_key_text(info, key)}: in the source, not in the events")
    for key in rebuilt.keys() - source.keys():
        check.extra += 1
        if len(check.examples) < 3:
            check.examples.append(f"{info.qualified} {_key_text(info, key)}: in the events, not in the source")
    for key in source.keys() & rebuilt.keys():
        if source[key] != rebuilt[key]:
            check.different += 1
            if len(check.examples) < 3:
                cols = [n for n, a, b in zip(names, source[key], rebuilt[key], strict=True) if a != b]
                check.examples.append(f"{info.qualified} {_key_text(info, key)}: {', '.join(cols)} differ")
    return check


# -- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """The command line, parsed: see ``python -m cdc.demo --help``."""

    config: Path
    demo_dir: Path
    seconds: float
    rate: float
    customers: int
    seed: int | None


def _percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    index = max(0, min(len(sorted_values) - 1, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def _load_demo_config(path: Path, env: Mapping[str, str], expected_dsn: str) -> tuple[Config, Path]:
    """Load the run's config with the demo's environment; return it and the file sink's path.

    The demo needs one job with a PostgreSQL source pointed at the demo's server (through
    ``${CDC_DEMO_DSN}``) and a file sink; anything else is a `DemoError`.
    """
    config = load_config(path, dict(env))
    if len(config.jobs) != 1:
        raise DemoError(f"{path}: the demo runs exactly one job, the config has {len(config.jobs)}")
    job = config.jobs[0]
    files = [s for s in job.sinks if isinstance(s, FileSinkConfig)]
    if not isinstance(job.source, PostgresSourceConfig) or not files:
        raise DemoError(f"{path}: the demo needs a postgres source and a file sink")
    if job.source.dsn.get_secret_value() != expected_dsn:
        raise DemoError(f"{path}: the source dsn must be ${{CDC_DEMO_DSN}} so the daemon reads the demo's server")
    return config, files[0].path.resolve()


def run_demo(settings: DemoSettings, screen: Screen) -> int:
    """Run the whole demo (see the module docstring); return the process exit code.

    The daemon and the server are stopped before this returns or raises, whatever happens.
    """
    rng = random.Random(settings.seed)
    demo_dir = prepare_demo_dir(settings.demo_dir)
    log_path = demo_dir / "cdc.log"
    screen.title("cdc demo: PostgreSQL shop -> cdc -> JSONL event files, a Delta Lake and a DuckDB file")
    started = time.monotonic()
    pg = DisposablePostgres()
    daemon: DaemonProcess | None = None
    try:
        pg.start()
        with pg.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
            version = str(row[0]) if row else "?"
        screen.step(f"PostgreSQL {version.split()[0]} started on 127.0.0.1:{pg.port}",
                    detail=f"disposable, {time.monotonic() - started:.1f} s")
        pg.create_database(DATABASE)
        with psycopg.connect(pg.dsn(DATABASE), autocommit=True) as conn:
            conn.execute(SCHEMA)
        screen.step(f"database {DATABASE}: customers, orders, order_items")

        env = dict(os.environ)
        env.update(CDC_DEMO_DSN=pg.dsn(DATABASE), CDC_DEMO_DIR=str(demo_dir))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        config, events_dir = _load_demo_config(settings.config, env, pg.dsn(DATABASE))
        job = config.jobs[0]
        assert isinstance(job.source, PostgresSourceConfig)
        # synchronous_commit=on (cheap: the sandbox runs with fsync=off): the walsender only
        # decodes flushed WAL, so the sandbox's default (off) would add up to 200 ms of lag
        # that a production server with synchronous commits does not have.
        with psycopg.connect(pg.dsn(DATABASE), autocommit=True, options="-c synchronous_commit=on") as conn:
            workload = ShopWorkload(conn, rng)
            workload.seed_customers(settings.customers)
            screen.step(f"seeded {settings.customers} customers in one transaction (the snapshot copies them)")
            t0 = time.monotonic()
            daemon = DaemonProcess(settings.config, log_path, env)
            ready = daemon.wait_for("replication_started", timeout=60)
            screen.step(f"cdc run {_rel(settings.config)}  (pid {daemon.pid})",
                        detail=f"slot {ready.get('slot')}, {ready.get('tables')} tables, snapshot done and "
                               f"streaming after {time.monotonic() - t0:.1f} s; log {_rel(log_path)}")
            tables = captured_tables(conn, job.source.publication)
            reader = SinkReader(events_dir, tables)
            _write_workload(workload, reader, daemon, settings, screen)
            caught_up = _wait_for_sink(workload, reader, daemon, screen)
            code = daemon.stop(config.shutdown_grace_s + 10)
            reader.poll()
            screen.step(f"daemon stopped with SIGTERM, exit code {code}", ok=code == 0,
                        detail="checkpointed and closed" if code == 0 else f"see {_rel(log_path)}")
            slot = conn.execute(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                (job.source.slot,),
            ).fetchone()
            checks = [check_table(conn, info, reader.tally.get(name)) for name, info in tables.items()]
            mirror, changelog = delta_paths(job)
            lake = (lake_checks(conn, {n: (i.schema, i.key) for n, i in tables.items()}, mirror, changelog)
                    if mirror is not None else None)
            duck = duckdb_path(job)
            warehouse = warehouse_check(conn, duck) if duck is not None else None
        return _summary(screen, workload, reader, checks, daemon, caught_up, code,
                        events_dir, config.state_dir.resolve(), job.name, slot[0] if slot else None, lake=lake,
                        warehouse=warehouse)
    finally:
        if daemon is not None:
            daemon.stop(15)
        pg.stop()


def _write_workload(workload: ShopWorkload, reader: SinkReader, daemon: DaemonProcess,
                    settings: DemoSettings, screen: Screen) -> None:
    """Write transactions for `settings.seconds` at `settings.rate` a second, with progress
    once a second; raise `DemoError` if the daemon dies meanwhile."""
    screen.title(f"Writing shop traffic for {settings.seconds:g} s (about {settings.rate:g} transactions/s)")
    start = time.monotonic()
    end = start + settings.seconds
    interval = 1.0 / settings.rate
    next_tx, next_report = start, start + 1.0
    reported = workload.transactions
    while (now := time.monotonic()) < end:
        if now >= next_tx:
            workload.step()
            next_tx = max(next_tx + interval, now - 1.0)  # make up a short stall, never a long one
        if now >= next_report:
            next_report += 1.0
            code = daemon.exit_code()
            if code is not None:
                raise DemoError(daemon.failure(f"the daemon exited with code {code} while streaming"))
            _progress(screen, now - start, workload, reader, workload.transactions - reported)
            reported = workload.transactions
        time.sleep(max(0.0, min(next_tx, next_report, end) - time.monotonic()))
    _progress(screen, time.monotonic() - start, workload, reader, None)


def _progress(screen: Screen, elapsed: float, workload: ShopWorkload, reader: SinkReader,
              per_second: int | None) -> None:
    """One progress line: what was written, what the sink holds, and the recent lag."""
    seen = reader.poll()
    behind = workload.row_changes - seen
    lag = sorted(reader.lags_ms[-500:])
    screen.line(
        (f"  {elapsed:4.0f} s", "dim"),
        "  transactions ", (f"{_thousands(workload.transactions):>5}", "bold"),
        (f" ({per_second:>2}/s)" if per_second is not None else "       ", "dim"),
        "  row changes ", (f"{_thousands(workload.row_changes):>6}", "bold"),
        "  events in sink ", (f"{_thousands(seen):>6}", "bold green"),
        (f"  behind {behind:>4}" if behind > 0 else "  caught up  ", "yellow" if behind > 0 else "green"),
        (f"  lag p50 {_percentile(lag, 0.5)} ms" if lag else "", "dim"),
    )


def _wait_for_sink(workload: ShopWorkload, reader: SinkReader, daemon: DaemonProcess, screen: Screen,
                   *, stall_s: float = 10.0, timeout_s: float = 60.0) -> bool:
    """Wait until the sink holds an event for every row change written.

    Returns False (and says so) when the daemon exits, when no new event arrived for
    `stall_s` seconds, or after `timeout_s` seconds in all.
    """
    start = last_move = time.monotonic()
    seen = reader.poll()
    while seen < workload.row_changes:
        time.sleep(0.05)
        now = time.monotonic()
        if (count := reader.poll()) != seen:
            seen, last_move = count, now
        if daemon.exit_code() is not None or now - last_move > stall_s or now - start > timeout_s:
            screen.step(f"sink holds {_thousands(seen)} of {_thousands(workload.row_changes)} events",
                        ok=False, detail=f"gave up after {now - start:.1f} s")
            return False
    screen.step(f"sink caught up: {_thousands(reader.events)} events for {_thousands(workload.row_changes)} "
                "row changes", detail=f"{time.monotonic() - start:.2f} s after the last commit")
    return True


def _summary(screen: Screen, workload: ShopWorkload, reader: SinkReader,
             checks: list[TableCheck], daemon: DaemonProcess, caught_up: bool, exit_code: int,
             events_dir: Path, state_dir: Path, job_name: str, slot_lsn: str | None,
             *, lake: tuple[str, list[LakeCheck]] | None = None, warehouse: WarehouseCheck | None = None) -> int:
    """Print what the sink holds and whether it matches the source; return the exit code."""
    screen.title("Events in the sink, by table and operation")
    rows, totals = [], Counter[str]()
    for name in sorted(reader.tally):
        ops = reader.tally[name].ops
        totals.update(ops)
        rows.append([name, *(_thousands(ops[o]) for o in "rcud"), _thousands(sum(ops.values()))])
    screen.table(["table", "r snapshot", "c insert", "u update", "d delete", "total"], rows,
                 footer=["all", *(_thousands(totals[o]) for o in "rcud"), _thousands(sum(totals.values()))])
    kinds = ", ".join(f"{k} {n}" for k, n in workload.by_kind.most_common())
    screen.line(f"   {_thousands(workload.transactions)} transactions written: ", (kinds, "dim"))
    screen.line(f"   {_thousands(len(reader.commits))} transactions in the sink, "
                f"{_thousands(reader.events)} events for {_thousands(workload.row_changes)} row changes")

    screen.title("End-to-end lag: commit in PostgreSQL -> event written (ts_ms - source.ts_ms)")
    if reader.lags_ms:
        lags = sorted(reader.lags_ms)
        screen.line("   p50 ", (f"{_percentile(lags, 0.50)} ms", "bold"), "   p99 ",
                    (f"{_percentile(lags, 0.99)} ms", "bold"), "   max ", (f"{lags[-1]} ms", "bold"),
                    (f"   over {_thousands(len(lags))} events", "dim"))
    else:
        screen.line("   no events")

    sample = reader.tally.get("public.orders", TableTally()).sample
    if sample is not None:
        screen.title("One event, as the file sink wrote it (an order's status change)")
        screen.json(sample)
        screen.line(("   before is null: under REPLICA IDENTITY DEFAULT PostgreSQL sends no old row image for "
                     "an update (deletes carry the key columns)", "dim"))

    screen.title("Consistency: the source tables against the tables rebuilt from the events")
    screen.table(
        ["table", "source", "rebuilt", "missing", "extra", "differ", "result"],
        [[c.table, _thousands(c.source_rows), _thousands(c.rebuilt_rows), str(c.missing), str(c.extra),
          str(c.different), "OK" if c.ok else f"MISMATCH {c.note}".strip()] for c in checks],
    )
    for c in checks:
        for example in c.examples:
            screen.line(("   " + example, "red"))
    in_order = sum(t.out_of_order for t in reader.tally.values()) == 0
    screen.step("every table's events are in commit order", ok=in_order)
    screen.step(f"{_count(reader.duplicates, 'duplicate event id')}", ok=reader.duplicates == 0)
    sink_lsn = read_sink_position(events_dir)
    last_commit = max(reader.commits, default=0)
    positioned = sink_lsn is not None and sink_lsn >= last_commit
    screen.step(
        f"sink position {format_lsn(sink_lsn) if sink_lsn is not None else 'none'} >= last commit "
        f"{format_lsn(last_commit)}", ok=positioned,
        detail=f"slot confirmed to {slot_lsn}" if slot_lsn else "",
    )
    problems = daemon.problems(limit=10)
    errors = [p for p in problems if not p.startswith("warning:")]
    screen.step(f"daemon log: {_count(len(errors), 'error')}, {_count(len(problems) - len(errors), 'warning')}",
                ok=not errors)
    for p in problems:
        screen.line(("   " + p, "yellow" if p.startswith("warning:") else "red"))

    screen.title("Output")
    for seg in reader.segments():
        size = seg.stat().st_size
        screen.line(f"   {_rel(seg)}", (f"  {_thousands(reader.lines[seg])} events, {size / 1024:,.0f} KiB", "dim"))
    for path, what in ((events_dir / "_cdc_file_sink.json", "the file sink's durable position"),
                       (state_dir / f"{job_name}.checkpoint.json", "the job's checkpoint"),
                       (daemon.log_path, "the daemon's JSON log")):
        if path.exists():
            screen.line(f"   {_rel(path)}", (f"  {what}", "dim"))

    lake_ok = _lake_summary(screen, lake)
    warehouse_ok = print_warehouse(screen, warehouse)
    consistent = all(c.ok for c in checks) and lake_ok and warehouse_ok
    ok = consistent and caught_up and exit_code == 0 and in_order and reader.duplicates == 0 and positioned
    screen.line("")
    if ok:
        screen.line(("demo result: consistent", "bold green"),
                    f" - {_thousands(reader.events)} events, every table matches the source")
    else:
        failures = (("tables differ", not consistent), ("the sink did not catch up", not caught_up),
                    (f"daemon exit code {exit_code}", exit_code != 0), ("events out of order", not in_order),
                    ("duplicate events", reader.duplicates > 0), ("sink position behind", not positioned))
        why = [what for what, failed in failures if failed]
        screen.line(("demo result: NOT consistent", "bold red"), f" - {', '.join(why)}")
    return 0 if ok else 1


def _lake_summary(screen: Screen, lake: tuple[str, list[LakeCheck]] | None) -> bool:
    """The Delta Lake section: the SQL query over the mirror and its result against the source."""
    if lake is None:
        return True
    query, checks = lake
    screen.title("Delta Lake: rows per table by a SQL query over the mirror; each mirror table compared row by row")
    for line in query.splitlines():
        screen.line(("   " + line, "dim"))
    screen.table(
        ["table", "source", "mirror", "changelog", "mirror = source"],
        [[c.table, _thousands(c.source_rows), _thousands(c.mirror_rows),
          _thousands(c.changelog_rows) if c.changelog_rows is not None else "-", "OK" if c.ok else "MISMATCH"]
         for c in checks],
    )
    return all(c.ok for c in checks)


# -- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cdc.demo",
        description="Run cdc against a disposable PostgreSQL with a live shop workload and check the result.",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to write the workload (default 20)")
    parser.add_argument("--rate", type=float, default=35.0, help="transactions per second (default 35)")
    parser.add_argument("--customers", type=int, default=50, help="customers seeded first (default 50)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable workload")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help=f"the daemon's config (default {_rel(DEFAULT_CONFIG)})")
    parser.add_argument("--dir", type=Path, default=Path(".demo"),
                        help="demo directory for events, state and log; wiped first (default ./.demo)")
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so every ``finally`` stops what the demo started."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m cdc.demo``; returns the exit status (see the module docstring)."""
    args = _parser().parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0 or args.customers < 1:
        _parser().error("--seconds and --rate must be positive, --customers at least 1")
    settings = DemoSettings(args.config.resolve(), args.dir, args.seconds, args.rate, args.customers, args.seed)
    screen = Screen()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run_demo(settings, screen)
    except KeyboardInterrupt:
        screen.step("interrupted: the daemon and the server are stopped", ok=False)
        return 130
    except (CdcError, SandboxError, psycopg.Error) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
