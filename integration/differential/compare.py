"""What each sink must hold for an oracle row, and the row-by-row comparison.

For every sink the expected value of a column is computed from the oracle's value by the
documented mapping (docs/types.md and docs/mysql.md for the event JSON and the Arrow form,
docs/delta.md for Delta's types, docs/warehouse.md for the targets), written again here
from the documents, not taken from cdc's code. Where a sink cannot hold a value, `LOSSES`
says what it holds instead; docs/types.md's section "Values a sink cannot hold" lists the
same entries (`test_differential` checks that each `Loss.doc` is there). Anything else that
differs is a failure.

Canonical forms, so that values from different readers compare:
- file sink: the event JSON (`json.loads`), the oracle rendered as docs/types.md says;
- Delta and DuckDB (PostgreSQL sources): Arrow values with dates, times and timestamps (also
  inside lists) as the integers Arrow stores (days, microseconds), since BC, far and infinite
  values have no Python `date`; Delta's `time` is its documented string, and what is outside
  Delta's range is clamped to its ends (a `LOSSES` entry);
- PostgreSQL target (PostgreSQL sources): PostgreSQL text, read like the oracle;
- MySQL sources: Python values (PyMySQL's for the oracle, the readers' for the sinks); a TIME is
  Delta's text, DuckDB's INTERVAL as Arrow's ``MonthDayNano`` and the PostgreSQL target's
  interval as its text (`my_time_expected`).
NaN compares equal to NaN (floats and decimals).
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa

from integration.test_type_zoo import nested, render

Rows = dict[int, dict[str, Any]]

INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
DAY_US = 86_400_000_000

#: The sinks of a PostgreSQL run and of a MySQL run.
PG_SINKS = ("file", "delta", "duckdb", "postgres")
MY_SINKS = ("file", "delta", "duckdb", "postgres")
COLUMNAR = ("delta", "duckdb", "postgres")


# -- the calendar, written again (proleptic Gregorian, astronomical years) ----------------------


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year; year 0 is 1 BC)."""
    y -= m <= 2
    era = y // 400  # floor division: Hinnant's C version needs the -399 for truncation
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _pg_day(text: str) -> int:
    """Days since 1970 of PostgreSQL's date text (``2026-01-02``, ``0044-03-15 BC``)."""
    bc = text.endswith(" BC")
    y, m, d = text.removesuffix(" BC").rsplit("-", 2)
    year = 1 - int(y) if bc else int(y)
    return days_from_civil(year, int(m), int(d))


def _clock_us(text: str) -> int:
    h, m, s = text.split(":")
    whole, _, frac = s.partition(".")
    return ((int(h) * 60 + int(m)) * 60 + int(whole)) * 1_000_000 + int(frac.ljust(6, "0") or 0)


def pg_date_storage(text: str) -> int:
    """date32 of PostgreSQL's date text: infinities at the storage's extremes (docs/types.md)."""
    if text in ("infinity", "-infinity"):
        return INT32_MAX if text == "infinity" else INT32_MIN
    return _pg_day(text)


def pg_timestamp_storage(text: str) -> int:
    """Microseconds since 1970 of PostgreSQL's timestamp(tz) text in UTC (may leave int64: see LOSSES)."""
    if text in ("infinity", "-infinity"):
        return INT64_MAX if text == "infinity" else INT64_MIN
    bc = text.endswith(" BC")
    body = text.removesuffix(" BC")
    day, _, clock = body.partition(" ")
    clock = clock.removesuffix("+00")
    return _pg_day(day + (" BC" if bc else "")) * DAY_US + _clock_us(clock)


def f32(value: float) -> float:
    """`value` rounded to the nearest float32, as a Python float."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


def f32_text(value: float) -> str:
    """The shortest text that reads back as the same float32 (docs/mysql.md FLOAT)."""
    if math.isnan(value) or math.isinf(value):
        return repr(value)
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if f32(float(text)) == value:
            return text
    return repr(value)


# -- what a sink cannot hold --------------------------------------------------------------------


@dataclass(frozen=True)
class Loss:
    """A value `sinks` cannot hold as the source has it, and what they hold instead.

    `applies(oracle value)` picks the values (PostgreSQL text, or a PyMySQL value);
    `instead(oracle value)` is what the sink holds, in the canonical form of that sink (see
    the module docstring). The first loss that applies wins, in the order of `LOSSES`. `doc`
    is the row of docs/types.md's "Values a sink cannot hold" that documents it.
    """

    engine: str
    sinks: tuple[str, ...]
    kinds: tuple[str, ...]
    applies: Callable[[Any], bool]
    instead: Callable[[Any], Any]
    doc: str
    arrays_only: bool = False
    #: The warning the sink logs (once per table and column and job start) when it holds such a value.
    event: str | None = None


def _flatten(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    return [x for v in value for x in (_flatten(v) if isinstance(v, list) else [v])]


def _out_of_int64(text: Any) -> bool:
    return isinstance(text, str) and text not in ("infinity", "-infinity") and not (
        INT64_MIN <= pg_timestamp_storage(text) <= INT64_MAX)


#: Delta's range of dates and timestamps (docs/delta.md: chrono's, -262143-01-01 to
#: +262142-12-31 23:59:59.999999), as storage integers computed from the calendar above.
DELTA_DATE_MIN, DELTA_DATE_MAX = days_from_civil(-262143, 1, 1), days_from_civil(262142, 12, 31)
DELTA_TIMESTAMP_MIN, DELTA_TIMESTAMP_MAX = DELTA_DATE_MIN * DAY_US, (DELTA_DATE_MAX + 1) * DAY_US - 1


def _outside_delta_dates(text: Any) -> bool:
    return isinstance(text, str) and not DELTA_DATE_MIN <= pg_date_storage(text) <= DELTA_DATE_MAX


def _delta_date_clamped(text: str) -> int:
    return DELTA_DATE_MAX if pg_date_storage(text) > DELTA_DATE_MAX else DELTA_DATE_MIN


def _outside_delta_timestamps(text: Any) -> bool:
    return isinstance(text, str) and not DELTA_TIMESTAMP_MIN <= pg_timestamp_storage(text) <= DELTA_TIMESTAMP_MAX


def _delta_timestamp_clamped(text: str) -> int:
    return DELTA_TIMESTAMP_MAX if pg_timestamp_storage(text) > DELTA_TIMESTAMP_MAX else DELTA_TIMESTAMP_MIN


LOSSES: tuple[Loss, ...] = (
    Loss("pg", COLUMNAR, ("numeric",), lambda t: t == "NaN", lambda _: None,
         "PostgreSQL `numeric(p,s)` (p ≤ 38) `NaN` | Delta, DuckDB, PostgreSQL target | NULL (decimal128 has no NaN)"),
    Loss("pg", COLUMNAR, ("timestamp", "timestamptz"), _out_of_int64, lambda _: None,
         "PostgreSQL `timestamp`/`timestamptz` after 294247-01-10 04:00:54.775807 | Delta, DuckDB, PostgreSQL target "
         "| NULL (outside int64 microseconds since 1970)"),
    Loss("pg", COLUMNAR, ("*",), lambda v: isinstance(v, list) and any(isinstance(x, list) for x in v), _flatten,
         "PostgreSQL arrays of two or more dimensions | Delta, DuckDB, PostgreSQL target | the elements flattened "
         "in row-major order (one dimension)", arrays_only=True),
    # After the int64 loss (the first that applies wins): what is left outside Delta's range is clamped.
    Loss("pg", ("delta",), ("date",), _outside_delta_dates, _delta_date_clamped,
         "PostgreSQL `date` `infinity`, `-infinity`, after +262142-12-31 | Delta | the last or first date Delta "
         "holds (`+262142-12-31`, `-262143-01-01`), with one `delta_value_clamped` warning per table and column",
         event="delta_value_clamped"),
    Loss("pg", ("delta",), ("timestamp", "timestamptz"), _outside_delta_timestamps, _delta_timestamp_clamped,
         "PostgreSQL `timestamp`/`timestamptz` `infinity`, `-infinity`, from 262143-01-01 to 294247-01-10 (UTC) | "
         "Delta | "
         "the last or first timestamp Delta holds (`+262142-12-31T23:59:59.999999`, `-262143-01-01T00:00:00`), "
         "with one `delta_value_clamped` warning per table and column",
         event="delta_value_clamped"),
)


def _micros(value: timedelta) -> int:
    return (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds


def _losses(engine: str, sink: str, kind: str, is_array: bool) -> list[Loss]:
    return [loss for loss in LOSSES if loss.engine == engine and sink in loss.sinks
            and (kind in loss.kinds or "*" in loss.kinds) and (is_array or not loss.arrays_only)]


def logged_losses(engine: str, sink: str, kind: str, is_array: bool, value: Any) -> set[str]:
    """The warnings (`Loss.event`) `sink` must have logged for holding the oracle's `value` (a
    scalar, or a nested list of elements): those of the first loss applying to each element."""
    if value is None:
        return set()
    if is_array:
        for loss in _losses(engine, sink, kind, is_array):
            if loss.arrays_only and loss.applies(value):
                value = loss.instead(value)
        values = _flatten(value) if isinstance(value, list) else [value]
    else:
        values = [value]
    scalar = [loss for loss in _losses(engine, sink, kind, is_array) if not loss.arrays_only]
    out: set[str] = set()
    for v in values:
        first = next((loss for loss in scalar if v is not None and loss.applies(v)), None)
        if first is not None and first.event is not None:
            out.add(first.event)
    return out


def event_losses(engine: str, sink: str, kind: str) -> set[str]:
    """Every warning `sink` may log for a column of `kind` of `engine` (`Loss.event`)."""
    return {loss.event for loss in _losses(engine, sink, kind, True) if loss.event is not None}


#: The fields a loss warning may carry (docs/delta.md): never a value of a row.
LOSS_EVENT_FIELDS = frozenset({"job", "sink", "table", "column", "values", "event", "level", "timestamp"})


def check_logged_losses(engine: str, sink: str, table: str, kinds: Mapping[str, tuple[str, bool]], oracle: Rows,
                        events: Sequence[Mapping[str, Any]]) -> list[str]:
    """The loss warnings of `sink` for `table` (``schema.table``) in the daemon's log (`events`, every
    run) against what the sink holds: each column holding a lost value was warned about, no warning
    names a column that cannot lose a value, none is logged twice for one column between two
    ``job_starting`` events, and none carries more than `LOSS_EVENT_FIELDS` (a count, no values)."""
    names = {loss.event for loss in LOSSES if loss.event is not None}
    out: list[str] = []
    seen: set[tuple[str, str]] = set()  # (event, column) since the last job start
    warned: set[tuple[str, str]] = set()
    for e in events:
        if e.get("event") == "job_starting":
            seen.clear()
        if e.get("event") not in names or e.get("sink") != sink or e.get("table") != table:
            continue
        event, column = str(e["event"]), str(e.get("column"))
        extra = set(e) - LOSS_EVENT_FIELDS
        if extra or not isinstance(e.get("values"), int):
            what = sorted(extra) or "a values field that is no count"
            out.append(f"{sink} {table}: {event} for {column} carries {what}")
        known = kinds.get(column)
        if known is None or event not in event_losses(engine, sink, known[0]):
            out.append(f"{sink} {table}: {event} for column {column}, which cannot hold such a value")
        if (event, column) in seen:
            out.append(f"{sink} {table}: {event} for column {column} logged twice in one job run")
        seen.add((event, column))
        warned.add((event, column))
    for column, (kind, is_array) in kinds.items():
        needed = set().union(*(logged_losses(engine, sink, kind, is_array, row.get(column)) for row in oracle.values()))
        out.extend(f"{sink} {table}: column {column} holds a value that needs {event}, which was never logged"
                   for event in sorted(needed) if (event, column) not in warned)
    return out


# -- expected values of a PostgreSQL oracle's text ----------------------------------------------------

_JSON_KIND = {"int": "int", "float4": "float", "float8": "float", "numeric": "numeric", "numeric_text": "numeric",
              "bool": "bool", "bytea": "bytea", "date": "date", "timestamp": "timestamp",
              "timestamptz": "timestamptz"}


def _pg_arrow(kind: str, text: str) -> Any:
    """The Arrow value (temporals as their storage integers) of a PostgreSQL value printed as `text`."""
    if kind == "int":
        return int(text)
    if kind == "float4":
        return f32(float(text))
    if kind == "float8":
        return float(text)
    if kind == "numeric":
        return Decimal(text)
    if kind == "bool":
        return text in ("t", "true")
    if kind == "bytea":
        return bytes.fromhex(text[2:])
    if kind == "date":
        return pg_date_storage(text)
    if kind == "time":
        return _clock_us(text)
    if kind in ("timestamp", "timestamptz"):
        return pg_timestamp_storage(text)
    return text  # numeric_text and every text form


#: The storage of DuckDB's ``infinity`` per kind (``-infinity`` is its negation).
DUCKDB_INFINITY = {"date": INT32_MAX, "timestamp": INT64_MAX, "timestamptz": INT64_MAX}


def _delta_time(micros: int) -> str:
    """docs/delta.md: a time is stored as the string ``HH:MM:SS.ffffff``."""
    seconds, us = divmod(micros, 1_000_000)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{us:06d}"


def pg_expected(sink: str, kind: str, is_array: bool, value: Any) -> Any:
    """What `sink` must hold for the oracle's `value` (PostgreSQL text, or a nested list of texts)."""
    if value is None:
        return None
    for loss in _losses("pg", sink, kind, is_array):
        if loss.arrays_only and loss.applies(value):
            value = loss.instead(value)
    if sink == "file":
        if kind == "time" or kind not in _JSON_KIND:
            return value
        return nested(value, lambda t: render(_JSON_KIND[kind], t))
    scalar_losses = [loss for loss in _losses("pg", sink, kind, is_array) if not loss.arrays_only]

    def one(text: str | None) -> Any:
        if text is None:
            return None
        for loss in scalar_losses:
            if loss.applies(text):
                return loss.instead(text)
        if sink == "postgres":
            return text
        if sink == "duckdb" and text in ("infinity", "-infinity") and kind in DUCKDB_INFINITY:
            # docs/warehouse.md: infinities arrive as DuckDB's own, stored one inside the type's range.
            return DUCKDB_INFINITY[kind] * (1 if text == "infinity" else -1)
        out = _pg_arrow(kind, text)
        if sink == "delta" and kind == "time":
            return _delta_time(out)
        return out

    return [one(t) for t in value] if is_array else one(value)


# -- expected values of a MySQL oracle's PyMySQL value --------------------------------------------


def _iso_clock(value: datetime) -> str:
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{value.microsecond:06d}".rstrip("0") if value.microsecond else "")


def mysql_time_text(value: timedelta) -> str:
    """docs/mysql.md TIME: ``-838:59:59``, ``-00:00:00.5``, ``12:34:56.789``."""
    micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    seconds, us = divmod(abs(micros), 1_000_000)
    text = f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return text + (f".{us:06d}".rstrip("0") if us else "")


def _set_labels(value: Any, labels: tuple[str, ...]) -> list[str]:
    members = set(value.split(",")) - {""} if isinstance(value, str) else set(value)
    return [label for label in labels if label in members]


def my_expected(sink: str, kind: str, labels: tuple[str, ...], value: Any) -> Any:
    """What `sink` must hold for the PyMySQL `value` of a column of `kind` (see `MyFamily`)."""
    if value is None:
        return None
    if kind == "bit":
        value = int.from_bytes(value, "big") if isinstance(value, bytes) else int(value)
    if kind == "set":
        return _set_labels(value, labels)
    if kind == "float":
        value = f32(float(value))
    if sink == "file":
        if kind in ("decimal", "decimal_text"):
            return format(value, "f")
        if kind == "float":
            return float(f32_text(value))
        if isinstance(value, timedelta):
            return mysql_time_text(value)
        if isinstance(value, datetime):
            return _iso_clock(value) + ("Z" if kind == "timestamp" else "")
        if isinstance(value, date):
            return value.isoformat()
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        return value
    if kind == "decimal_text":
        return format(value, "f")
    if kind == "timestamp":
        return value.replace(tzinfo=UTC)
    for loss in _losses("mysql", sink, kind, False):
        if loss.applies(value):
            return loss.instead(value)
    if kind == "time":
        return my_time_expected(sink, value)
    return value


def delta_duration_text(value: timedelta) -> str:
    """docs/delta.md: a MySQL TIME in Delta is ``[-]HH:MM:SS.ffffff`` (six fraction digits, hours to 838)."""
    micros = _micros(value)
    seconds, us = divmod(abs(micros), 1_000_000)
    sign = "-" if micros < 0 else ""
    return f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{us:06d}"


def my_time_expected(sink: str, value: timedelta) -> Any:
    """A MySQL TIME in a columnar sink (docs/delta.md, docs/warehouse.md): Delta's text, DuckDB's
    INTERVAL of microseconds only (no months, no days), the PostgreSQL target's interval of hours,
    minutes and seconds, read as its text (``-838:59:59``, the form `mysql_time_text` writes)."""
    if sink == "delta":
        return delta_duration_text(value)
    if sink == "duckdb":
        return pa.MonthDayNano([0, 0, _micros(value) * 1000])
    if sink == "postgres":
        return mysql_time_text(value)
    return value


# -- comparing ---------------------------------------------------------------------------------------


def canon(value: Any) -> Any:
    """NaN as the string "NaN" (floats and decimals), recursively in lists, so equality holds."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, Decimal) and value.is_nan():
        return "NaN"
    if isinstance(value, list):
        return [canon(v) for v in value]
    return value


def short(value: Any, limit: int = 70) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


@dataclass
class Difference:
    sink: str
    table: str
    key: int
    column: str
    expected: Any
    actual: Any

    def __str__(self) -> str:
        return (f"{self.sink} {self.table} id={self.key} {self.column}: expected {short(self.expected)}, "
                f"got {short(self.actual)}")


def summarize(differences: Iterable[Difference | str]) -> list[str]:
    """One line per (sink, table, column) with how many rows differ and the first of them; other
    findings (strings) as they are, repeats dropped."""
    groups: dict[tuple[str, str, str], list[Difference]] = {}
    out: list[str] = []
    for d in differences:
        if isinstance(d, Difference):
            groups.setdefault((d.sink, d.table, d.column), []).append(d)
        elif d not in out:
            out.append(d)
    for (sink, table, column), found in groups.items():
        first = found[0]
        if column == "<row>":
            missing = sum(d.actual == "missing" for d in found)
            out.append(f"{sink} {table}: {missing} rows missing, {len(found) - missing} rows extra "
                       f"(first: id={first.key} {first.actual})")
        else:
            out.append(f"{sink} {table} {column}: {len(found)} rows differ, first {first}")
    return out


def diff_rows(sink: str, table: str, expected: Rows, actual: Rows, columns: Iterable[str],
              equal: Callable[[Any, Any], bool] | None = None) -> list[Difference]:
    """Every difference between `expected` and `actual` (keys present in one only, then values)."""
    same = equal or (lambda a, b: canon(a) == canon(b))
    out: list[Difference] = []
    for key in sorted(set(expected) - set(actual)):
        out.append(Difference(sink, table, key, "<row>", "present", "missing"))
    for key in sorted(set(actual) - set(expected)):
        out.append(Difference(sink, table, key, "<row>", "absent", "present"))
    for key in sorted(set(expected) & set(actual)):
        for column in columns:
            want, got = expected[key].get(column), actual[key].get(column)
            if not same(want, got):
                out.append(Difference(sink, table, key, column, want, got))
    return out


def expected_rows(oracle: Rows, convert: Mapping[str, Callable[[Any], Any]]) -> Rows:
    """`oracle` with every column converted by `convert[column]`."""
    return {key: {c: convert[c](v) if c in convert else v for c, v in row.items()} for key, row in oracle.items()}


