"""Differential testing against external oracles (issue #15): every sink at once, compared row
by row with PostgreSQL's native logical replication (and the source's SELECT), or with
MariaDB's SELECT, through the documented type mapping, across SIGKILLs of the daemon and a
source restart. A failure prints the seed; replay it with
``CDC_DIFFERENTIAL_SEEDS=N pytest integration/test_differential.py -k seed_N`` (the variable
names the seeds to run, comma-separated; the CI seeds by default) or ``python -m bench.soak --seed N``.

The CI seeds run the full matrix (every type family, every operation, every sink and fault).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from integration.differential.compare import (
    DELTA_DATE_MAX,
    DELTA_DATE_MIN,
    DELTA_TIMESTAMP_MAX,
    LOSSES,
    check_logged_losses,
    days_from_civil,
    my_expected,
    pg_expected,
)
from integration.differential.run import Servers, run_mysql_seed, run_pg_seed

#: The seeds `make test` runs (about 40 s each once nothing fails); CDC_DIFFERENTIAL_SEEDS replaces them.
CI_SEEDS = (1, 2)
SEEDS = tuple(int(s) for s in os.environ.get("CDC_DIFFERENTIAL_SEEDS", "").split(",") if s.strip()) or CI_SEEDS
PG_SEEDS = MYSQL_SEEDS = SEEDS
TYPES_MD = Path(__file__).resolve().parents[1] / "docs" / "types.md"


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """The disposable source, subscriber and MariaDB servers of this module, always stopped."""
    with Servers() as group:
        yield group


@pytest.mark.parametrize("seed", PG_SEEDS, ids=[f"seed_{s}" for s in PG_SEEDS])
def test_differential_postgres(servers: Servers, seed: int, tmp_path: Path) -> None:
    """Every sink equals PostgreSQL's native subscriber (itself equal to the source) after the seed's workload."""
    result = run_pg_seed(servers, seed, tmp_path)
    assert result.ok, f"{result.summary}\n{result.report()}"


@pytest.mark.parametrize("seed", MYSQL_SEEDS, ids=[f"seed_{s}" for s in MYSQL_SEEDS])
def test_differential_mariadb(servers: Servers, seed: int, tmp_path: Path) -> None:
    """Every sink equals MariaDB's own SELECT after the seed's workload."""
    result = run_mysql_seed(servers, seed, tmp_path)
    assert result.ok, f"{result.summary}\n{result.report()}"


def test_every_loss_is_documented() -> None:
    """Each value the harness lets a sink hold differently is listed in docs/types.md's "Values a sink cannot hold"."""
    text = TYPES_MD.read_text(encoding="utf-8")
    section = text[text.index("## Values a sink cannot hold"):]
    rows = {re.sub(r"\s+", " ", line.strip().strip("|")).strip()
            for line in section.splitlines() if line.startswith("|")}
    for loss in LOSSES:
        assert loss.doc in rows, f"not in docs/types.md: {loss.doc}"


def test_expected_values_follow_the_documented_forms() -> None:
    """The harness's expectations at the edges of the documents: Delta's clamping bounds (inside
    arrays too, after the int64 NULL), DuckDB's infinities, and a MySQL TIME in each columnar sink."""
    assert (DELTA_DATE_MIN, DELTA_DATE_MAX) == (-96_465_292, 95_026_236)  # docs/delta.md's -262143-01-01, +262142-12-31
    assert pg_expected("delta", "date", False, "262142-12-31") == DELTA_DATE_MAX
    assert pg_expected("delta", "date", False, "262143-01-01") == DELTA_DATE_MAX
    assert pg_expected("delta", "date", False, "-infinity") == DELTA_DATE_MIN
    assert pg_expected("duckdb", "date", False, "262143-01-01") == days_from_civil(262143, 1, 1)
    assert pg_expected("duckdb", "date", False, "-infinity") == -(2**31 - 1)
    assert pg_expected("delta", "timestamp", True, ["infinity", "294276-12-31 23:59:59.999999", None,
                                                    "262142-12-31 23:59:59.999999"]) == [
        DELTA_TIMESTAMP_MAX, None, None, DELTA_TIMESTAMP_MAX]
    assert pg_expected("delta", "time", True, [["24:00:00"], ["00:00:00.5"]]) == ["24:00:00.000000", "00:00:00.500000"]
    half = timedelta(microseconds=-500_000)
    assert my_expected("delta", "time", (), timedelta(hours=-838, minutes=-59, seconds=-59)) == "-838:59:59.000000"
    assert my_expected("delta", "time", (), half) == "-00:00:00.500000"
    assert my_expected("duckdb", "time", (), half) == (0, 0, -500_000_000)
    assert my_expected("postgres", "time", (), half) == "-00:00:00.5"


def test_loss_warnings_are_checked() -> None:
    """A clamped column without its warning, a warning for a column that cannot clamp, a second one in
    the same job run and a warning carrying more than a count are each reported; a correct log is not."""
    kinds = {"id": ("int", False), "c_date": ("date", False), "c_text": ("text", False)}
    oracle = {1: {"id": "1", "c_date": "infinity", "c_text": "x"}}

    def warning(column: str, **extra: object) -> dict[str, object]:
        return {"event": "delta_value_clamped", "job": "j", "sink": "delta", "table": "public.t", "column": column,
                "values": 1, "level": "warning", "timestamp": "t", **extra}

    def check(*events: dict[str, object]) -> list[str]:
        return check_logged_losses("pg", "delta", "public.t", kinds, oracle, events)

    start: dict[str, object] = {"event": "job_starting"}
    assert check(start, warning("c_date"), start, warning("c_date")) == []
    assert check(start) == ["delta public.t: column c_date holds a value that needs delta_value_clamped, "
                            "which was never logged"]
    assert any("c_text, which cannot hold" in f for f in check(warning("c_date"), warning("c_text")))
    assert any("logged twice" in f for f in check(start, warning("c_date"), warning("c_date")))
    assert any("carries ['value']" in f for f in check(warning("c_date", value="infinity")))
    assert check_logged_losses("pg", "duckdb", "public.t", kinds, oracle, [start]) == []
