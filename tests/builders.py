"""Hand-built schemas and batches shared by the fast tests."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from cdc.events import ChangeBatch, Column, RowChange, TableChanges, TableId, TableSchema
from cdc.sink import Sink
from connectors.postgres import types as pg
from connectors.postgres.types import PgRowCodec

TS = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
ORDERS = TableSchema(
    TableId("shop", "public", "orders"),
    (Column("id", "int8", pg.INT8, key=True), Column("total", "numeric", pg.NUMERIC),
     Column("note", "text", pg.TEXT)),
)
USERS = TableSchema(TableId("shop", "public", "users"), (Column("name", "text", pg.TEXT),))


def table(schema: TableSchema, changes: list[RowChange]) -> TableChanges:
    """TableChanges of `schema` with its PostgreSQL codec."""
    return TableChanges(schema, PgRowCodec(schema.columns), changes)


def write_all(sink: Sink, *batches: ChangeBatch) -> None:
    """Open `sink`, write `batches` in order, close it (also on failure)."""
    async def go() -> None:
        await sink.open()
        try:
            for b in batches:
                await sink.write(b)
        finally:
            await sink.close()

    asyncio.run(go())
