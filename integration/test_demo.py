"""Tests of ``python -m cdc.demo``: its config, its sink reader and consistency check, and a real run."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from cdc import demo
from cdc.events import (
    UNCHANGED,
    ChangeBatch,
    Column,
    Position,
    RowChange,
    TableChanges,
    TableId,
    TableSchema,
    Transaction,
)
from cdc.sink import SourceInfo
from connectors.postgres import types as pg
from connectors.postgres.types import PgRowCodec
from sinks.eventlog.file import FileSink
from tests.builders import write_all

TS = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
ITEMS = TableSchema(
    TableId("shop", "public", "order_items"),
    (Column("order_id", "int8", pg.INT8, key=True), Column("line", "int4", pg.INT4, key=True),
     Column("price", "numeric", pg.NUMERIC), Column("note", "text", pg.TEXT)),
)
ITEMS_INFO = demo.TableInfo(
    "public", "order_items",
    (("order_id", "int8"), ("line", "int4"), ("price", "numeric"), ("note", "text")), ("order_id", "line"),
)


def write_events(path: Path, *batches: ChangeBatch) -> None:
    """Write batches with the real file sink (fsync off), so the reader sees the real format."""
    write_all(FileSink("file", path, SourceInfo("postgresql", "shop", "shop"), fsync=False), *batches)


def items_batch(commit: int, changes: list[RowChange]) -> ChangeBatch:
    return ChangeBatch(Position(commit), [TableChanges(ITEMS, PgRowCodec(ITEMS.columns), changes)], nbytes=100)


def test_demo_config_validates() -> None:
    """config/demo.yaml, the file `make demo` runs, passes `cdc validate` with no environment set."""
    config = Path(demo.__file__).resolve().parents[1] / "config" / "demo.yaml"
    assert config == demo.DEFAULT_CONFIG
    result = subprocess.run([sys.executable, "-m", "cdc.cli", "validate", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "OK (1 job)" in result.stdout


def test_sink_reader_rebuilds_the_table_from_the_events(tmp_path: Path) -> None:
    """Replaying inserts, updates (an unchanged TOAST value kept) and deletes rebuilds the rows by key."""
    t1, t2 = Transaction(7, 1000, TS), Transaction(8, 2000, TS)
    write_events(tmp_path, items_batch(1000, [
        ("c", t1, 1, 900, None, (b"1", b"1", b"2.50", b"long text")),
        ("c", t1, 2, 901, None, (b"1", b"2", b"3.00", b"x")),
        ("c", t1, 3, 902, None, (b"2", b"1", b"9.99", None)),
    ]))
    reader = demo.SinkReader(tmp_path, {"public.order_items": ITEMS_INFO})
    assert reader.poll() == 3
    write_events(tmp_path, items_batch(2000, [
        ("u", t2, 1, 1900, None, (b"1", b"1", b"2.75", UNCHANGED)),
        ("d", t2, 2, 1901, (b"1", b"2", None, None), None),
    ]))
    assert reader.poll() == 5
    tally = reader.tally["public.order_items"]
    assert tally.ops == {"c": 3, "u": 1, "d": 1}
    assert tally.rows == {
        (1, 1): {"order_id": 1, "line": 1, "price": "2.75", "note": "long text"},
        (2, 1): {"order_id": 2, "line": 1, "price": "9.99", "note": None},
    }
    assert (tally.out_of_order, tally.orphans, reader.duplicates, reader.commits) == (0, 0, 0, {1000, 2000})
    assert len(reader.lags_ms) == 5


def test_sink_reader_flags_orphans_and_disorder(tmp_path: Path) -> None:
    """A delete of a row no event inserted and an event behind its predecessor are both counted."""
    t1, t2 = Transaction(7, 1000, TS), Transaction(8, 2000, TS)
    write_events(tmp_path, items_batch(2000, [("d", t2, 1, 1900, (b"5", b"1", None, None), None)]))
    table_dir = tmp_path / "public.order_items"
    segment = next(table_dir.glob("*.jsonl"))
    # Append an older transaction's line by hand: the sink itself never writes one.
    write_events(tmp_path / "older", items_batch(1000, [("c", t1, 1, 900, None, (b"1", b"1", b"1.00", b"x"))]))
    older = next((tmp_path / "older" / "public.order_items").glob("*.jsonl")).read_bytes()
    with segment.open("ab") as f:
        f.write(older)
    reader = demo.SinkReader(tmp_path, {"public.order_items": ITEMS_INFO})
    reader.poll()
    tally = reader.tally["public.order_items"]
    assert (tally.orphans, tally.out_of_order) == (1, 1)


def test_sink_reader_leaves_a_partial_line_for_later(tmp_path: Path) -> None:
    """A line still being written is not read until its newline arrives."""
    write_events(tmp_path, items_batch(1000, [("c", Transaction(7, 1000, TS), 1, 900, None,
                                                (b"1", b"1", b"1.00", b"x"))]))
    segment = next((tmp_path / "public.order_items").glob("*.jsonl"))
    line = segment.read_bytes()
    segment.write_bytes(line + line[:20])
    reader = demo.SinkReader(tmp_path, {})
    assert reader.poll() == 1
    with segment.open("ab") as f:
        f.write(line[20:])
    assert reader.poll() == 2
    assert reader.duplicates == 1


def test_normalise_compares_exact_values() -> None:
    """Source values and event JSON compare equal when they are the same value, scale included."""
    assert demo.normalise("numeric", Decimal("12.50")) == demo.normalise("numeric", "12.50")
    assert demo.normalise("numeric", Decimal("12.50")) != demo.normalise("numeric", "12.5")
    assert demo.normalise("timestamptz", TS) == demo.normalise("timestamptz", "2026-01-02T03:04:05.123456Z")
    assert demo.normalise("timestamptz", TS) != demo.normalise("timestamptz", "2026-01-02T03:04:05.123Z")
    assert demo.normalise("int8", 7) == demo.normalise("int8", 7)
    assert demo.normalise("text", None) is None


def test_demo_dir_is_only_wiped_when_the_demo_made_it(tmp_path: Path) -> None:
    """The demo wipes its own earlier directory but refuses to delete someone else's files."""
    own = demo.prepare_demo_dir(tmp_path / ".demo")
    (own / "events").mkdir()
    assert demo.prepare_demo_dir(own) == own
    assert not (own / "events").exists()
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(demo.DemoError, match="not created by the demo"):
        demo.prepare_demo_dir(foreign)
    assert (foreign / "precious.txt").exists()


@pytest.mark.slow
def test_demo_runs_consistently(tmp_path: Path) -> None:
    """A short demo from another directory streams a live workload and reports every table consistent."""
    result = subprocess.run([sys.executable, "-m", "cdc.demo", "--seconds", "3"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo result: consistent" in result.stdout
    assert "MISMATCH" not in result.stdout
    events = tmp_path / ".demo" / "events"
    for table in ("customers", "orders", "order_items"):
        assert (events / f"public.{table}" / "000000000001.jsonl").stat().st_size > 0
    assert (tmp_path / ".demo" / "cdc.log").exists()
    assert "SELECT 'public.orders' AS source_table, count(*)" in result.stdout  # the query over the mirror
    lake = tmp_path / ".demo" / "lake"
    for table in ("customers", "orders", "order_items"):
        assert (lake / "mirror" / "public" / table / "_delta_log").is_dir()
        assert (lake / "changelog" / "public" / table / "_delta_log").is_dir()
    # The summary ends with the orders-per-customer query over the DuckDB file (equal to the source's).
    assert "DuckDB warehouse (warehouse.duckdb): orders per customer" in result.stdout
    assert result.stdout.index("orders per customer") > result.stdout.index("Delta Lake:")
    assert (tmp_path / ".demo" / "warehouse.duckdb").stat().st_size > 0
