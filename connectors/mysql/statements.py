"""What a statement in the binlog (a query event of its own) does to captured tables' rows.

With ``binlog_format=ROW`` every row change is a rows event, except the statements that
empty a table without touching its rows one by one: ``TRUNCATE [TABLE] name`` arrives as
the statement's text (a transaction of its own), and the source turns it into an
``op: "t"`` event (docs/mysql.md, *TRUNCATE*). Pure: text in, table name out.

The server logs the statement as the client wrote it (comments, any case, quoted or
qualified names), so `truncated_table` reads it with MySQL's lexical rules: whitespace
and comments (``/* */``, ``-- ``, ``#``) skipped, executable comments (``/*! ... */``,
``/*M! ... */``) read as code, names unquoted, in backticks (a doubled backtick inside) or
in double quotes (``ANSI_QUOTES``: a statement the server logged cannot mean a string
there).
"""

from __future__ import annotations

import re

#: An executable comment (``/*!50001 ... */``, MariaDB's ``/*M!100101 ... */``): its text is code.
_EXECUTABLE = re.compile(r"/\*M?!\d*(.*?)\*/", re.DOTALL)
_TOKEN = re.compile(
    r"""
      (?P<skip>\s+|/\*.*?\*/|--(?:[ \t\r\x0b\f][^\n]*)?(?:\n|$)|\#[^\n]*)
    | `(?P<backtick>(?:[^`]|``)*)`
    | "(?P<double>(?:[^"]|"")*)"
    | (?P<word>[0-9A-Za-z$_\u0080-\U0010ffff]+)
    | (?P<punct>.)
    """,
    re.DOTALL | re.VERBOSE,
)


class UnreadableStatement(ValueError):
    """A statement that empties a table, in a form `truncated_table` cannot read."""


def _tokens(query: str) -> list[tuple[str, str]]:
    """``(kind, text)`` per token: kind ``name`` (a quoted name, unquoted), ``word`` or ``punct``."""
    out: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(_EXECUTABLE.sub(r" \1 ", query)):
        if m.group("skip") is not None:
            continue
        if m.group("backtick") is not None:
            out.append(("name", m.group("backtick").replace("``", "`")))
        elif m.group("double") is not None:
            out.append(("name", m.group("double").replace('""', '"')))
        elif m.group("word") is not None:
            out.append(("word", m.group("word")))
        else:
            out.append(("punct", m.group("punct")))
    return out


def truncated_table(query: str, database: str) -> tuple[str, str] | None:
    """The ``(database, table)`` a ``TRUNCATE [TABLE] [db.]name [WAIT n | NOWAIT]`` statement
    empties; `database` is the statement's default database (the query event's). None for
    any other statement. Names come back exactly as written (unquoted): the caller matches
    them as the server would (``lower_case_table_names``).

    Raises `UnreadableStatement` for a statement beginning with TRUNCATE that does not have
    that form: the caller must not guess which rows it removed.
    """
    tokens = _tokens(query)
    if not tokens or tokens[0][0] != "word" or tokens[0][1].upper() != "TRUNCATE":
        return None
    rest = tokens[1:]
    if rest and rest[0][0] == "word" and rest[0][1].upper() == "TABLE" and rest[1:2] != [("punct", ".")]:
        rest = rest[1:]  # the optional TABLE (TABLE.x would be a database named "table")
    names: list[str] = []
    if rest and rest[0][0] in ("name", "word"):
        names.append(rest[0][1])
        rest = rest[1:]
        if len(rest) > 1 and rest[0] == ("punct", ".") and rest[1][0] in ("name", "word"):
            names.append(rest[1][1])
            rest = rest[2:]
    if rest and rest[0][0] == "word" and rest[0][1].upper() == "NOWAIT":
        rest = rest[1:]
    elif len(rest) > 1 and rest[0][0] == "word" and rest[0][1].upper() == "WAIT" and rest[1][1].isdigit():
        rest = rest[2:]
    if rest == [("punct", ";")]:
        rest = []
    if not names or rest or (len(names) == 1 and not database):
        raise UnreadableStatement(f"cannot tell which table this TRUNCATE empties: {' '.join(query.split())[:200]}")
    return (names[0], names[1]) if len(names) == 2 else (database, names[0])
