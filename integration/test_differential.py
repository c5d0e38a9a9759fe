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
from pathlib import Path

import pytest

from integration.differential.compare import LOSSES
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
