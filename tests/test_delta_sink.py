"""The Delta Lake sink on a local directory: modes, exactly-once replays, schema evolution.

deltalake writes local tables without any server, so these run with the fast tests; the
daemon against a real PostgreSQL and moto's S3 is in integration/test_delta_sink.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder

from cdc.checkpoints import no_position
from cdc.columnar import KeylessTableError, ReservedColumnError
from cdc.config import DeltaSinkConfig
from cdc.errors import SchemaChangeError, SinkError
from cdc.events import (
    UNCHANGED,
    ChangeBatch,
    Column,
    Position,
    RowBlock,
    RowChange,
    TableChanges,
    TableId,
    TableSchema,
    Transaction,
)
from cdc.sink import SourceInfo
from cdc.source import OpenBatch
from connectors.postgres import types as pg
from sinks.delta.schema import delta_type, plan_evolution
from sinks.delta.sink import DeltaSink
from tests.builders import ORDERS, TS, USERS, table
from tests.test_columnar import key_move_batches

INFO = SourceInfo("postgresql", "shop", "shop")


def sink(root: Path, **options: Any) -> DeltaSink:
    config = DeltaSinkConfig.model_validate({"type": "delta", "path": str(root), **options})
    s = DeltaSink("lake", config, INFO, job="j", stored=no_position)
    asyncio.run(s.open())
    return s


def tx(n: int) -> Transaction:
    return Transaction(n, n * 100, TS)


def batch(schema: TableSchema, changes: list[RowChange]) -> ChangeBatch:
    last = max(c[1].commit for c in changes)
    return ChangeBatch(Position(last), [table(schema, changes)])


def rows(root: Path, name: str = "public/orders", columns: tuple[str, ...] = ("id", "total", "note")) -> list[Any]:
    data = DeltaTable(str(root / name)).to_pyarrow_table().sort_by("id")
    return [tuple(r[c] for c in columns) for r in data.to_pylist()]


def test_mirror_applies_upserts_deletes_and_keeps_unchanged_values(tmp_path: Path) -> None:
    """A mirror equals the source after inserts, updates (one with an unchanged TOAST value), deletes."""
    s = sink(tmp_path)
    asyncio.run(s.write(batch(ORDERS, [
        ("c", tx(1), 1, 0, None, (b"1", b"1.50", b"long text")),
        ("c", tx(1), 2, 0, None, (b"2", b"2", b"b")),
        ("c", tx(1), 3, 0, None, (b"3", b"3", b"c")),
    ])))
    asyncio.run(s.write(batch(ORDERS, [
        ("u", tx(2), 1, 0, None, (b"1", b"9.99", UNCHANGED)),
        ("d", tx(2), 2, 0, (b"2", None, None), None),
        ("u", tx(3), 1, 0, (b"3", None, None), (b"4", b"3", b"c")),
    ])))
    # numeric without a typmod is its exact decimal text in Arrow (docs/types.md)
    assert rows(tmp_path) == [(1, "9.99", "long text"), (4, "3", "c")]
    assert s.position() == Position(300)


def test_mirror_moves_unchanged_values_with_the_key(tmp_path: Path) -> None:
    """Updates of the key with an unchanged TOAST value keep the value stored under the old key: in chains
    within a batch and across batches, and with a same-key update after the move."""
    batches, expected = key_move_batches()
    s = sink(tmp_path)
    for b in batches:
        asyncio.run(s.write(b))
    assert rows(tmp_path) == expected


def test_key_moves_and_widening_read_tables_holding_bc_dates(tmp_path: Path) -> None:
    """Reading the stored rows back (a moved key's unchanged values, a column widened by a rewrite) works when
    the table holds dates deltalake's Python side cannot parse (BC): found by the differential harness, seed 1."""
    events = TableSchema(TableId("shop", "public", "events"), (
        Column("id", "int4", pg.INT4, key=True), Column("day", "date", pg.DATE), Column("note", "text", pg.TEXT),
        Column("n", "int4", pg.INT4)))
    s = sink(tmp_path)
    asyncio.run(s.write(batch(events, [("c", tx(1), 1, 0, None, (b"1", b"0044-03-15 BC", b"kept", b"1"))])))
    asyncio.run(s.write(batch(events, [
        ("u", tx(2), 1, 0, (b"1", None, None, None), (b"2", b"2026-01-02", UNCHANGED, b"2"))])))
    wide = TableSchema(events.table, (*events.columns[:3], Column("n", "int8", pg.INT8)))  # n widens: a rewrite
    asyncio.run(s.write(batch(wide, [("c", tx(3), 1, 0, None, (b"3", b"0001-01-01 BC", b"x", b"3"))])))
    data = QueryBuilder().register("t", DeltaTable(str(tmp_path / "public/events"))).execute(
        "SELECT id, CAST(day AS VARCHAR) AS day, note FROM t ORDER BY id").read_all()
    assert [tuple(r.values()) for r in pa.table(data).to_pylist()] == [
        (2, "2026-01-02", "kept"), (3, "0000-01-01", "x")]


def test_replayed_batches_are_skipped_per_table(tmp_path: Path) -> None:
    """A batch written again (a crash before the checkpoint) changes nothing: no doubled history."""
    first = batch(ORDERS, [("c", tx(1), 1, 0, None, (b"1", b"1", b"a"))])
    second = batch(ORDERS, [("u", tx(2), 1, 0, None, (b"1", b"2", b"b"))])
    for mode in ("mirror", "changelog"):
        root = tmp_path / mode
        s = sink(root, mode=mode)
        asyncio.run(s.write(first))
        asyncio.run(s.write(second))
        again = sink(root, mode=mode)  # a new process: no stored position, the tables know theirs
        asyncio.run(again.write(first))
        asyncio.run(again.write(second))
        data = DeltaTable(str(root / "public/orders")).to_pyarrow_table()
        assert data.num_rows == (1 if mode == "mirror" else 2)
        assert DeltaTable(str(root / "public/orders")).transaction_version("cdc/j/lake/public.orders#commit") == 200


def test_changelog_keeps_every_change_with_metadata(tmp_path: Path) -> None:
    """The changelog appends each change with op, position, commit time and transaction id."""
    s = sink(tmp_path, mode="changelog")
    asyncio.run(s.write(batch(ORDERS, [
        ("c", tx(1), 1, 0, None, (b"1", b"1", b"a")),
        ("d", tx(2), 1, 0, (b"1", None, None), None),
        ("t", tx(3), 1, 0, None, None),
    ])))
    data = DeltaTable(str(tmp_path / "public/orders")).to_pyarrow_table().sort_by("_cdc_position")
    assert data.column("_cdc_op").to_pylist() == ["c", "d", "t"]
    assert data.column("_cdc_tx_id").to_pylist() == [1, 2, 3]
    assert data.column("id").to_pylist() == [1, 1, None]


def test_truncate_empties_the_mirror(tmp_path: Path) -> None:
    """A truncate empties the mirror; changes after it in the same batch are applied."""
    s = sink(tmp_path)
    asyncio.run(s.write(batch(ORDERS, [("c", tx(1), 1, 0, None, (b"1", b"1", b"a"))])))
    asyncio.run(s.write(batch(ORDERS, [("t", tx(2), 1, 0, None, None), ("c", tx(2), 2, 0, None, (b"5", b"5", b"e"))])))
    assert [r[0] for r in rows(tmp_path)] == [5]
    asyncio.run(s.write(batch(ORDERS, [("t", tx(3), 1, 0, None, None)])))
    assert rows(tmp_path) == []


def test_new_and_widened_columns_evolve_the_table(tmp_path: Path) -> None:
    """A column added at the source is added; int4 -> int8 rewrites the table with the wider type."""
    s = sink(tmp_path)
    v1 = TableSchema(TableId("shop", "public", "t"), (Column("id", "int4", pg.INT4, key=True),))
    v2 = TableSchema(TableId("shop", "public", "t"), (Column("id", "int8", pg.INT8, key=True),
                                                       Column("extra", "text", pg.TEXT)))
    asyncio.run(s.write(batch(v1, [("c", tx(1), 1, 0, None, (b"1",))])))
    asyncio.run(s.write(batch(v2, [("c", tx(2), 1, 0, None, (b"9000000000", b"x"))])))
    dt = DeltaTable(str(tmp_path / "public/t"))
    assert pa.schema(dt.schema().to_arrow()).field("id").type == pa.int64()
    assert sorted(dt.to_pyarrow_table().select(["id", "extra"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": 1, "extra": None}, {"id": 9000000000, "extra": "x"}]


def test_incompatible_type_change_stops_with_what_to_do(tmp_path: Path) -> None:
    """text -> int cannot be converted in place: the error names table and column and says what to do."""
    s = sink(tmp_path)
    v1 = TableSchema(TableId("shop", "public", "t"), (Column("id", "int4", pg.INT4, key=True),
                                                       Column("v", "text", pg.TEXT)))
    v2 = TableSchema(TableId("shop", "public", "t"), (Column("id", "int4", pg.INT4, key=True),
                                                       Column("v", "int4", pg.INT4)))
    asyncio.run(s.write(batch(v1, [("c", tx(1), 1, 0, None, (b"1", b"a"))])))
    with pytest.raises(SchemaChangeError, match=r"table public.t .*column 'v' is stored as string .*cdc snapshot"):
        asyncio.run(s.write(batch(v2, [("c", tx(2), 1, 0, None, (b"2", b"7"))])))


def test_keyless_table_is_refused_by_a_mirror_and_kept_by_a_changelog(tmp_path: Path) -> None:
    """A mirror needs a key; the per-table override puts a keyless table in changelog mode."""
    with pytest.raises(KeylessTableError, match=r"public\.users"):
        asyncio.run(sink(tmp_path / "a").write(batch(USERS, [("c", tx(1), 1, 0, None, (b"x",))])))
    s = sink(tmp_path / "b", tables={"public.users": {"mode": "changelog"}})
    asyncio.run(s.write(batch(USERS, [("c", tx(1), 1, 0, None, (b"x",))])))
    assert DeltaTable(str(tmp_path / "b/public/users")).to_pyarrow_table().column("name").to_pylist() == ["x"]


@pytest.mark.parametrize("column", ["_cdc_op", "_cdc_keep_1", "_CDC_Position"])
@pytest.mark.parametrize("mode", ["mirror", "changelog"])
def test_a_reserved_column_name_is_refused_before_anything_is_written(tmp_path: Path, column: str, mode: str) -> None:
    """A source column named _cdc_* (any case) stops the sink with one non-retryable line naming job, sink, table
    and column, before any table of the batch is written; also when it arrives by ALTER after the table exists."""
    plain = TableSchema(TableId("shop", "public", "t"), (Column("id", "int4", pg.INT4, key=True),
                                                          Column("v", "text", pg.TEXT)))
    altered = TableSchema(plain.table, (*plain.columns, Column(column, "text", pg.TEXT)))
    s = sink(tmp_path, mode=mode)
    asyncio.run(s.write(batch(plain, [("c", tx(1), 1, 0, None, (b"1", b"a"))])))
    second = ChangeBatch(Position(200), [table(ORDERS, [("c", tx(2), 1, 0, None, (b"1", b"1", b"a"))]),
                                         table(altered, [("c", tx(2), 2, 0, None, (b"2", b"b", b"x"))])])
    with pytest.raises(ReservedColumnError, match=(
            rf"^job j, sink lake: table public\.t has a column named {column}, but names starting with _cdc_ are "
            r"reserved .*rename the column, or leave the table out")) as caught:
        asyncio.run(s.write(second))
    assert not caught.value.retryable
    assert not (tmp_path / "public/orders").exists()
    assert s.position() == Position(100)


def test_a_deltalake_panic_becomes_one_non_retryable_line(tmp_path: Path) -> None:
    """A panic in deltalake's Rust code (pyo3's PanicException, a BaseException) reaches the daemon as a SinkError
    naming job and sink, not retryable, instead of passing every `except Exception` and ending the job unseen."""
    s = sink(tmp_path)
    asyncio.run(s.write(batch(ORDERS, [("c", tx(1), 1, 0, None, (b"1", b"1", b"a"))])))
    dt = DeltaTable(str(tmp_path / "public/orders"))
    twice = pa.Table.from_arrays([pa.array([1], pa.int64()), pa.array([1], pa.int64())], names=["id", "id"])

    def merge() -> None:  # deltalake 1.x unwraps the schema error of a duplicated source column: a panic
        dt.merge(twice, predicate="t.id = s.id", source_alias="s", target_alias="t").when_matched_delete().execute()

    with pytest.raises(SinkError, match=r"^job j, sink lake: deltalake failed with a panic: .*retrying cannot help"
                       ) as caught:
        asyncio.run(s._in_thread(merge))
    assert not caught.value.retryable
    assert type(caught.value.__cause__).__name__ == "PanicException"


def test_hostile_names_stay_inside_the_path_and_quote_in_merge(tmp_path: Path) -> None:
    """A table called ../x and a column called select with quotes are stored and merged safely."""
    schema = TableSchema(TableId("shop", "public", '../we"ird'), (
        Column("id", "int4", pg.INT4, key=True), Column('sel"ect', "text", pg.TEXT)))
    s = sink(tmp_path / "lake")
    asyncio.run(s.write(batch(schema, [("c", tx(1), 1, 0, None, (b"1", b"a"))])))
    asyncio.run(s.write(batch(schema, [("u", tx(2), 1, 0, None, (b"1", b"b"))])))
    [path] = [p for p in (tmp_path / "lake/public").iterdir()]
    assert path.name == "~2E~2E~2Fwe~22ird"
    assert DeltaTable(str(path)).to_pyarrow_table().column('sel"ect').to_pylist() == ["b"]


def test_delta_types_and_evolution_rules() -> None:
    """Unsigned, time and wide decimals map to lossless Delta types; narrowing is refused."""
    assert delta_type(pa.uint64()) == pa.decimal128(20, 0)
    assert delta_type(pa.time64("us")) == pa.string()
    assert delta_type(pa.list_(pa.uint8())) == pa.list_(pa.int16())
    stored = pa.schema([pa.field("a", pa.int64()), pa.field("b", pa.float32())])
    plan = plan_evolution(stored, pa.schema([pa.field("a", pa.int32()), pa.field("b", pa.float64())]), "t")
    assert plan.widened == ("b",) and plan.target.field("a").type == pa.int64()
    with pytest.raises(SchemaChangeError):
        plan_evolution(stored, pa.schema([pa.field("a", pa.string())]), "t")


def block_batch(snapshot: Transaction, first_seq: int, ids: list[int]) -> ChangeBatch:
    """A batch of one columnar snapshot block of ORDERS rows with keys `ids`."""
    codec = table(ORDERS, []).codec
    raw = pa.table({"0": pa.array([str(i).encode() for i in ids], pa.binary()),
                    "1": pa.array([b"1"] * len(ids), pa.binary()), "2": pa.array([b"s"] * len(ids), pa.binary())})
    block = RowBlock(snapshot, first_seq, 0, raw, codec.columns_to_arrow)  # type: ignore[attr-defined]
    return ChangeBatch(Position(snapshot.commit, first_seq + len(ids) - 1),
                       [TableChanges(ORDERS, codec, block=block)])


def test_snapshot_blocks_append_to_an_empty_mirror_and_merge_otherwise(tmp_path: Path) -> None:
    """Blocks of one snapshot into an empty mirror are appended; into a table with rows they are merged."""
    s = sink(tmp_path)
    first = Transaction(0, 50, TS)
    asyncio.run(s.write(block_batch(first, 1, [1, 2])))
    asyncio.run(s.write(block_batch(first, 3, [3, 4])))
    assert [r[0] for r in rows(tmp_path)] == [1, 2, 3, 4]
    again = sink(tmp_path)  # a re-snapshot (say, after on_slot_lost: recreate) into the filled mirror
    asyncio.run(again.write(block_batch(Transaction(0, 90, TS), 1, [2, 5])))
    assert [r[0] for r in rows(tmp_path)] == [1, 2, 3, 4, 5]
    history = DeltaTable(str(tmp_path / "public/orders")).history()
    assert [h["operation"] for h in reversed(history)][-3:] == ["WRITE", "WRITE", "MERGE"]


def test_compaction_and_vacuum_keep_the_mirror_and_its_position(tmp_path: Path) -> None:
    """With intervals set, written tables are compacted into fewer files and old files are vacuumed."""
    s = sink(tmp_path, compact_interval_s=0.001, vacuum_interval_s=0.001, vacuum_retention_hours=0)
    for n in range(1, 6):
        asyncio.run(s.write(batch(ORDERS, [("c", tx(n), 1, 0, None, (str(n).encode(), b"1", b"x"))])))
    dt = DeltaTable(str(tmp_path / "public/orders"))
    operations = [h["operation"] for h in dt.history()]
    assert "OPTIMIZE" in operations and "VACUUM END" in operations
    assert len(dt.file_uris()) == 1
    parquet = list((tmp_path / "public/orders").glob("*.parquet"))
    assert len(parquet) == 1  # the merged-away files are gone
    assert [r[0] for r in rows(tmp_path)] == [1, 2, 3, 4, 5]
    assert dt.transaction_version("cdc/j/lake/public.orders#commit") == 500


def test_changelog_partitions_by_the_configured_columns(tmp_path: Path) -> None:
    """partition_by lays the changelog out in Hive-style partition folders."""
    s = sink(tmp_path, mode="changelog", partition_by=["_cdc_op"])
    asyncio.run(s.write(batch(ORDERS, [("c", tx(1), 1, 0, None, (b"1", b"1", b"a")),
                                       ("d", tx(1), 2, 0, (b"1", None, None), None)])))
    dt = DeltaTable(str(tmp_path / "public/orders"))
    assert dt.metadata().partition_columns == ["_cdc_op"]
    assert sorted(p.name for p in (tmp_path / "public/orders").iterdir() if p.is_dir() and "=" in p.name) == [
        "_cdc_op=c", "_cdc_op=d"]


def test_a_commit_lost_to_another_writer_of_the_same_position_is_not_applied_twice(tmp_path: Path) -> None:
    """Two writers of one job race on a table: the loser reloads, sees its position recorded, and skips."""
    first = batch(ORDERS, [("c", tx(1), 1, 0, None, (b"1", b"1", b"a"))])
    second = batch(ORDERS, [("u", tx(2), 1, 0, None, (b"1", b"2", b"b")), ("c", tx(2), 2, 0, None, (b"2", b"2", b"c"))])
    for mode in ("mirror", "changelog"):
        root = tmp_path / mode
        a, b = sink(root, mode=mode), sink(root, mode=mode)
        asyncio.run(a.write(first))
        asyncio.run(b.write(first))  # b loads the table now: it holds `first`
        asyncio.run(a.write(second))  # a commits `second` behind b's back
        asyncio.run(b.write(second))  # b's view is stale: it must not apply `second` again
        data = DeltaTable(str(root / "public/orders")).to_pyarrow_table()
        assert data.num_rows == (2 if mode == "mirror" else 3), mode


def test_logical_messages_reach_no_delta_table(tmp_path: Path) -> None:
    """A batch holding a logical message (a keyless pseudo-table) writes nothing to a mirror and moves on."""
    s = sink(tmp_path)
    asyncio.run(s.write(batch(USERS, [("m", tx(1), 1, 0, None, (b"app",))])))
    assert s.position() == Position(100)
    assert not (tmp_path / "public").exists()


def test_contiguous_snapshot_blocks_join_into_one_commit(tmp_path: Path) -> None:
    """Blocks of one snapshot that follow each other in a batch join (OpenBatch.add_block): one
    Delta commit per table and batch; a gap in the sequence or another snapshot keeps them apart."""
    codec = table(ORDERS, []).codec
    first, other = Transaction(0, 50, TS), Transaction(0, 60, TS)

    def block(tx_: Transaction, first_seq: int, ids: list[int]) -> RowBlock:
        return block_batch(tx_, first_seq, ids).tables[0].block  # type: ignore[return-value]

    b = OpenBatch()
    b.add_block(ORDERS, codec, block(first, 1, [1, 2]))
    b.add_block(ORDERS, codec, block(first, 3, [3]))
    b.add_block(ORDERS, codec, block(first, 5, [5]))  # seq 4 missing: a new piece
    b.add_block(ORDERS, codec, block(other, 6, [6]))  # another snapshot: a new piece
    assert [(t.block.first_seq, len(t.block)) for t in b.tables if t.block is not None] == [(1, 3), (5, 1), (6, 1)]
    s = sink(tmp_path)
    joined = OpenBatch()
    joined.add_block(ORDERS, codec, block(first, 1, [1, 2]))
    joined.add_block(ORDERS, codec, block(first, 3, [3, 4]))
    asyncio.run(s.write(joined.cut(Position(first.commit, 4))))
    assert [r[0] for r in rows(tmp_path)] == [1, 2, 3, 4]
    assert len(DeltaTable(str(tmp_path / "public/orders")).history()) == 2  # create + one WRITE
