"""Which table a binlog statement empties (connectors/mysql/statements.py): TRUNCATE in every
form the server logs, and nothing else."""

from __future__ import annotations

import pytest

from connectors.mysql.statements import UnreadableStatement, truncated_table


@pytest.mark.parametrize(("query", "table"), [
    ("TRUNCATE t", ("shop", "t")),
    ("TRUNCATE TABLE t", ("shop", "t")),
    ("truncate table T", ("shop", "T")),
    ("TRUNCATE TABLE other.t", ("other", "t")),
    ("TRUNCATE `other`.`t`", ("other", "t")),
    ("TRUNCATE TABLE `we``ird db`.`a.b c`", ("we`ird db", "a.b c")),
    ('TRUNCATE "ansi ""quoted"""', ("shop", 'ansi "quoted"')),
    ("TRUNCATE TABLE t WAIT 5", ("shop", "t")),
    ("TRUNCATE TABLE t NOWAIT;", ("shop", "t")),
    ("/* a comment */ TRUNCATE/*x*/TABLE -- to the end\n t # too", ("shop", "t")),
    ("/*!40000 TRUNCATE TABLE t */", ("shop", "t")),
    ("/*M!100500 TRUNCATE TABLE shop.t */", ("shop", "t")),
    ("TRUNCATE TABLE `table`", ("shop", "table")),
    ("TRUNCATE TABLE Zürich.ö_1$", ("Zürich", "ö_1$")),
    ("TRUNCATE TABLE `😀`", ("shop", "😀")),
])
def test_a_truncate_names_its_table(query: str, table: tuple[str, str]) -> None:
    """Unquoted, backticked, ANSI-quoted and qualified names, comments, WAIT/NOWAIT: the table and its database."""
    assert truncated_table(query, "shop") == table


@pytest.mark.parametrize("query", [
    "ALTER TABLE t ADD COLUMN x int",
    "DROP TABLE t",
    "CREATE TABLE truncate_log (id int)",
    "INSERT INTO t VALUES ('TRUNCATE')",
    "/* TRUNCATE t */ DROP TABLE t",
    "-- TRUNCATE t\nDROP TABLE t",
    "",
])
def test_other_statements_truncate_nothing(query: str) -> None:
    """A statement that is not a TRUNCATE (also one mentioning it in a comment or a string) names no table."""
    assert truncated_table(query, "shop") is None


@pytest.mark.parametrize(("query", "database"), [
    ("TRUNCATE", "shop"), ("TRUNCATE TABLE", "shop"), ("TRUNCATE TABLE a.b.c", "shop"), ("TRUNCATE a b", "shop"),
    ("TRUNCATE t", ""), ("TRUNCATE TABLE t WAIT", "shop"),
])
def test_a_truncate_it_cannot_read_is_refused(query: str, database: str) -> None:
    """A TRUNCATE whose table cannot be told (or an unqualified one without a database) raises, never guesses."""
    with pytest.raises(UnreadableStatement, match="cannot tell which table this TRUNCATE empties"):
        truncated_table(query, database)
