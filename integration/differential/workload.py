"""The seeded workload: a plan of transactions and faults that one seed fixes completely.

`pg_plan(seed)` and `mysql_plan(seed)` draw everything from ``random.Random(seed)`` before
anything runs (values, keys, which rows change, where the faults go), so a seed replays
exactly and its plan can be printed. The plan keeps its own model of the live keys; it never
asks the database.

What a PostgreSQL plan holds (issue #15): every family of `families.PG_FAMILIES` in two tables,
``t_def`` (REPLICA IDENTITY DEFAULT) and ``t_full`` (REPLICA IDENTITY FULL, the families with
an equality operator), each with a ``c_big`` text column stored out of line (STORAGE EXTERNAL)
that holds values from 3 kB to over 1 MB; every edge value at least once; inserts, updates of
non-key and key columns that leave ``c_big`` unchanged (also right after a > 1 MB value went
in), deletes, a truncate, multi-statement transactions, one large transaction, an
``ADD COLUMN`` mid-stream, two SIGKILLs of the daemon and a source restart.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from integration.differential.families import MY_FAMILIES, PG_FAMILIES, incompressible

BIG_COLUMN = "c_big"
ADDED_COLUMN = "c_added"
ADDED_TYPE = {"pg": "numeric(12,3)", "mysql": "DECIMAL(12,3)"}


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a transaction: `kind` insert/update/key_update/delete/truncate."""

    kind: str
    table: str
    #: insert: column -> value; update: new values; key_update: {"id": new id} plus values.
    values: dict[str, Any] = field(default_factory=dict)
    key: int | None = None  # the row an update or delete targets


@dataclass(frozen=True)
class Transaction:
    statements: tuple[Statement, ...]
    large: bool = False


@dataclass(frozen=True)
class Fault:
    """``kill``: SIGKILL the daemon and start it again; ``source_restart``: restart the source server."""

    kind: str


@dataclass(frozen=True)
class AddColumn:
    table: str


Step = Transaction | Fault | AddColumn


@dataclass
class Plan:
    """Everything one seed does: initial rows (before cdc starts, so the snapshot carries them),
    then the steps in order."""

    seed: int
    engine: str  # pg | mysql
    tables: dict[str, tuple[Any, ...]]  # table -> its families
    initial: list[Transaction]
    steps: list[Step]

    @property
    def transactions(self) -> int:
        return len(self.initial) + sum(isinstance(s, Transaction) for s in self.steps)

    @property
    def changes(self) -> int:
        return sum(len(t.statements) for t in self.initial) + sum(
            len(s.statements) for s in self.steps if isinstance(s, Transaction))

    def summary(self) -> str:
        faults = [f"{i}:{s.kind}" for i, s in enumerate(self.steps) if isinstance(s, Fault)]
        added = [i for i, s in enumerate(self.steps) if isinstance(s, AddColumn)]
        return (f"seed {self.seed} ({self.engine}): {self.transactions} transactions, {self.changes} changes, "
                f"faults at steps {faults}, add column at {added}")


class _Table:
    """The generator's model of one table: live keys, the next key, the edge values still to write."""

    def __init__(self, name: str, families: Sequence[Any]) -> None:
        self.name = name
        self.families = list(families)
        self.live: list[int] = []
        self.next_id = 1
        self.pending = {f.column: deque(f.edges) for f in families}
        self.added = False


class _Generator:
    def __init__(self, seed: int, engine: str, scale: float, families: Collection[str] | None) -> None:
        self.rng = random.Random(seed)
        self.engine = engine
        self.scale = scale
        if engine == "pg":
            pg = [f for f in PG_FAMILIES if families is None or f.name in families]
            self.tables = {"t_def": _Table("t_def", pg), "t_full": _Table("t_full", [f for f in pg if f.full_ok])}
        else:
            my = [f for f in MY_FAMILIES if families is None or f.name in families]
            self.tables = {"t_my": _Table("t_my", my)}

    def value(self, table: _Table, family: Any) -> Any:
        pending = table.pending[family.column]
        if pending:
            return pending.popleft()
        if self.rng.random() < 0.1:
            return None
        return family.rand(self.rng)

    def big(self) -> str | None:
        roll = self.rng.random()
        if roll < 0.15:
            return None
        if roll < 0.5:
            return "short " + str(self.rng.random())
        return incompressible(self.rng, self.rng.randint(2500, 6000))

    def row(self, table: _Table, big: str | None = None) -> dict[str, Any]:
        values: dict[str, Any] = {"id": table.next_id}
        table.live.append(table.next_id)
        table.next_id += 1
        for family in table.families:
            values[family.column] = self.value(table, family)
        values[BIG_COLUMN] = big if big is not None else self.big()
        if table.added:
            values[ADDED_COLUMN] = self.added_value()
        return values

    def added_value(self) -> str | None:
        return None if self.rng.random() < 0.2 else f"{self.rng.randint(-10**8, 10**8)}.{self.rng.randint(0, 999):03d}"

    def some_values(self, table: _Table) -> dict[str, Any]:
        """New values for 1-4 random non-key columns (never the big column: it stays unchanged)."""
        chosen = self.rng.sample(table.families, k=min(len(table.families), self.rng.randint(1, 4)))
        values = {f.column: self.value(table, f) for f in chosen}
        if table.added and self.rng.random() < 0.5:
            values[ADDED_COLUMN] = self.added_value()
        return values

    def statement(self, table: _Table) -> Statement:
        rng = self.rng
        roll = rng.random()
        if roll < 0.4 or len(table.live) < 3:
            return Statement("insert", table.name, self.row(table))
        if roll < 0.75:
            return Statement("update", table.name, self.some_values(table), key=rng.choice(table.live))
        if roll < 0.87:
            return self.key_update(table, rng.choice(table.live))
        victim = table.live.pop(rng.randrange(len(table.live)))
        return Statement("delete", table.name, key=victim)

    def key_update(self, table: _Table, old: int) -> Statement:
        new = table.next_id
        table.next_id += 1
        table.live[table.live.index(old)] = new
        values = {"id": new}
        if self.rng.random() < 0.5:
            values.update(self.some_values(table))
        return Statement("key_update", table.name, values, key=old)

    def transaction(self, *, big_table: str | None = None) -> Transaction:
        """1-6 random statements; with `big_table`, one more inserting a value over 1 MB there
        (`follow_big` then updates that row, leaving the value unchanged)."""
        rng = self.rng
        statements: list[Statement] = []
        for _ in range(rng.randint(1, 6)):
            statements.append(self.statement(self.tables[rng.choice(sorted(self.tables))]))
        if big_table is not None:
            table = self.tables[big_table]
            row = self.row(table, big=incompressible(rng, (1 << 20) + rng.randint(1, 5000)))
            statements.append(Statement("insert", table.name, row))
        return Transaction(tuple(statements))

    def follow_big(self, tx: Transaction) -> Transaction | None:
        """After a transaction that wrote a > 1 MB value: update it (non-key), then move its key."""
        bigs = [s for s in tx.statements if s.kind == "insert" and len(s.values.get(BIG_COLUMN) or "") > 1 << 20]
        if not bigs:
            return None
        table = self.tables[bigs[0].table]
        key = bigs[0].values["id"]
        update = Statement("update", table.name, self.some_values(table), key=key)
        return Transaction((update, self.key_update(table, key)))

    def large(self) -> Transaction:
        table = self.tables[sorted(self.tables)[0]]
        n = max(50, int(1500 * self.scale))
        rows = []
        for _ in range(n):
            values: dict[str, Any] = {"id": table.next_id}
            table.live.append(table.next_id)
            table.next_id += 1
            for family in table.families[:6]:
                values[family.column] = family.rand(self.rng)
            rows.append(Statement("insert", table.name, values))
        return Transaction(tuple(rows), large=True)


def make_plan(seed: int, engine: str, *, transactions: int = 40, scale: float = 1.0,
              faults: Sequence[str] = ("kill", "kill", "source_restart"),
              families: Collection[str] | None = None) -> Plan:
    """The plan of `seed` for `engine` (``pg`` or ``mysql``): `transactions` random transactions,
    one large one, an ADD COLUMN and the `faults`, all at positions the seed picks.

    MySQL plans leave out ``source_restart`` (the disposable MariaDB cannot restart in place).
    `families` keeps only the families of those names (all by default): a narrower replay of a
    failure (the values drawn then differ from the full seed's).
    """
    gen = _Generator(seed, engine, scale, families)
    rng = gen.rng
    initial = [Transaction(tuple(Statement("insert", t.name, gen.row(t)) for t in gen.tables.values()
                                 for _ in range(3)))]
    n = transactions
    first, last = (gen.tables[name] for name in (sorted(gen.tables)[0], sorted(gen.tables)[-1]))
    add_at, large_at = rng.randint(n // 3, 2 * n // 3), rng.randint(n // 4, 3 * n // 4)
    truncate_at = rng.randint(n // 3, n - 1)
    big_at = {rng.randint(1, n // 2): sorted(gen.tables)[0], rng.randint(n // 2 + 1, n - 2): sorted(gen.tables)[-1]}
    fault_at = [(rng.randint(2, n - 1), kind) for kind in faults
                if not (engine == "mysql" and kind == "source_restart")]
    steps: list[Step] = []
    for i in range(n):
        if i == add_at:
            steps.append(AddColumn(first.name))
            first.added = True
        if i == large_at:
            steps.append(gen.large())
        if i == truncate_at:
            steps.append(Transaction((Statement("truncate", last.name),)))
            last.live.clear()
        steps.extend(Fault(kind) for at, kind in fault_at if at == i)
        tx = gen.transaction(big_table=big_at.get(i))
        steps.append(tx)
        follow = gen.follow_big(tx)
        if follow is not None:
            steps.append(follow)
    # Edge values not written yet (a family updated rarely): more inserts carry them.
    for table in gen.tables.values():
        while any(table.pending.values()):
            steps.append(Transaction((Statement("insert", table.name, gen.row(table)),)))
    return Plan(seed, engine, {name: tuple(t.families) for name, t in gen.tables.items()}, initial, steps)
