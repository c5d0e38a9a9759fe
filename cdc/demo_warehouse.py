"""The demo's warehouse part: a SQL query over the DuckDB file the daemon filled, checked against the source.

The demo's config (config/demo.yaml) also replicates the shop into a DuckDB file
(`sinks/warehouse/duckdb.py`). After the daemon stops (DuckDB lets one process at a time
write a file), `warehouse_check` runs one analyst's query over that file, orders and money
spent per customer, and the same query over the source database: the two results must be
equal, row by row, for every customer.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import psycopg

from cdc.config import DuckDBSinkConfig, JobConfig

if TYPE_CHECKING:
    from cdc.demo import Screen

#: Orders and money spent per customer; the same text runs on DuckDB and on PostgreSQL.
ORDERS_PER_CUSTOMER: Final = """\
SELECT c.id AS customer, c.name, count(o.id) AS orders, coalesce(sum(o.total), 0) AS spent
FROM public.customers AS c LEFT JOIN public.orders AS o ON o.customer_id = c.id
GROUP BY c.id, c.name
ORDER BY orders DESC, spent DESC, customer"""
SHOWN: Final = 8


@dataclass(frozen=True, slots=True)
class WarehouseCheck:
    """The query's result over the DuckDB file, and whether the source gives the same."""

    path: Path
    rows: list[tuple[Any, ...]]
    source_rows: int
    equal: bool


def duckdb_path(job: JobConfig) -> Path | None:
    """The DuckDB file of the job's first DuckDB sink, or None when it has none."""
    sink = next((s for s in job.sinks if isinstance(s, DuckDBSinkConfig)), None)
    return sink.path.resolve() if sink is not None else None


def warehouse_check(conn: psycopg.Connection[tuple[Any, ...]], path: Path) -> WarehouseCheck:
    """Run `ORDERS_PER_CUSTOMER` over the DuckDB file (the daemon stopped) and over the source."""
    import duckdb

    source = [tuple(r) for r in conn.execute(ORDERS_PER_CUSTOMER).fetchall()]
    if not path.exists():
        return WarehouseCheck(path, [], len(source), False)
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = [tuple(r) for r in con.execute(ORDERS_PER_CUSTOMER).fetchall()]
    except duckdb.CatalogException:
        rows = []
    finally:
        con.close()
    return WarehouseCheck(path, rows, len(source), rows == source)


def print_warehouse(screen: Screen, check: WarehouseCheck | None) -> bool:
    """The summary's last section: the query, its top rows, and the comparison; True when equal."""
    if check is None:
        return True
    screen.title(f"DuckDB warehouse ({check.path.name}): orders per customer, by SQL over the replicated tables")
    for line in ORDERS_PER_CUSTOMER.splitlines():
        screen.line(("   " + line, "dim"))
    screen.table(
        ["customer", "name", "orders", "spent"],
        [[str(c), str(n), str(o), f"{Decimal(s):,.2f}"] for c, n, o, s in check.rows[:SHOWN]],
        footer=[f"{len(check.rows)} customers", "", str(sum(r[2] for r in check.rows)),
                f"{sum(Decimal(r[3]) for r in check.rows):,.2f}"],
    )
    screen.step(f"the same query over the source gives the same {check.source_rows} rows", ok=check.equal,
                detail=f"duckdb {check.path}")
    return check.equal
