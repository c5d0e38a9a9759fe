"""The demo's Delta Lake part: compare the Delta mirror with the source, by a SQL query and row by row.

The demo's config (config/demo.yaml) writes every table into a Delta mirror and a Delta
changelog. After the daemon stops, `lake_checks` runs one SQL query over the mirror
(deltalake's DataFusion `QueryBuilder`: rows per table), reads each mirror table back and
compares it with the source table row for row, and counts the changelog's rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cdc.config import DeltaSinkConfig, JobConfig


@dataclass(frozen=True, slots=True)
class LakeCheck:
    """One table: its rows in the source, in the mirror (by the query), and whether they are equal."""

    table: str
    source_rows: int
    mirror_rows: int
    changelog_rows: int | None
    equal: bool

    @property
    def ok(self) -> bool:
        return self.equal and self.mirror_rows == self.source_rows


def delta_paths(job: JobConfig) -> tuple[Path | None, Path | None]:
    """The local roots of the job's Delta mirror and changelog sinks (None when it has none)."""
    mirror = next((s for s in job.sinks if isinstance(s, DeltaSinkConfig) and s.mode == "mirror"), None)
    log = next((s for s in job.sinks if isinstance(s, DeltaSinkConfig) and s.mode == "changelog"), None)
    return (Path(mirror.path).resolve() if mirror else None, Path(log.path).resolve() if log else None)


def mirror_query(tables: Mapping[str, tuple[str, str]]) -> str:
    """The SQL the demo runs over the mirror: rows per table (names are the demo's own, plain)."""
    parts = [f"SELECT '{name}' AS source_table, count(*) AS mirror_rows FROM {alias}"  # noqa: S608 - demo names
             for name, (alias, _) in sorted(tables.items())]
    return "\nUNION ALL ".join(parts) + "\nORDER BY source_table"


def lake_checks(
    conn: psycopg.Connection[tuple[Any, ...]], tables: Mapping[str, tuple[str, tuple[str, ...]]],
    mirror: Path, changelog: Path | None,
) -> tuple[str, list[LakeCheck]]:
    """Query the mirror and compare it with the source; `tables` maps schema.table -> (schema, key).

    Returns the query text and one `LakeCheck` per table.
    """
    import pyarrow as pa
    from deltalake import DeltaTable, QueryBuilder
    from deltalake.exceptions import TableNotFoundError

    builder = QueryBuilder()
    registered: dict[str, tuple[str, str]] = {}
    opened: dict[str, DeltaTable] = {}
    for name in tables:
        schema, table = name.split(".", 1)
        try:
            opened[name] = DeltaTable(str(mirror / schema / table))
        except TableNotFoundError:
            continue
        alias = f"{schema}_{table}"
        builder.register(alias, opened[name])
        registered[name] = (alias, name)
    query = mirror_query(registered)
    counts: dict[str, int] = {}
    if registered:
        result = pa.table(builder.execute(query).read_all())
        counts = dict(zip(result.column("source_table").to_pylist(), result.column("mirror_rows").to_pylist(),
                          strict=True))
    checks = []
    for name, (_, key) in sorted(tables.items()):
        schema, table = name.split(".", 1)
        ident = sql.Identifier(schema, table)
        cur = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY {}").format(
            ident, sql.SQL(", ").join(map(sql.Identifier, key))))
        names = [d.name for d in cur.description or ()]
        source = [tuple(r) for r in cur.fetchall()]
        equal = False
        if name in opened:
            data = opened[name].to_pyarrow_table(columns=names).sort_by([(k, "ascending") for k in key])
            equal = [tuple(r[n] for n in names) for r in data.to_pylist()] == source
        log_rows = None
        if changelog is not None:
            try:
                log_rows = DeltaTable(str(changelog / schema / table)).count()
            except TableNotFoundError:
                log_rows = 0
        checks.append(LakeCheck(name, len(source), counts.get(name, 0), log_rows, equal))
    return query, checks
