"""Snapshot progress on a terminal: one rich progress bar per table (rows, rows/s, ETA).

Sources report each table's counters with `show` (the same numbers they log as
``snapshot_progress`` events). When the daemon logs to a terminal (`enable` is called by
`cdc.logs.configure_logging` in console mode on a TTY), the counters drive rich progress
bars on stderr and log lines print above them; otherwise `show` does nothing here and the
log lines are the progress report.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Bars:
    """The rich `Progress` of this process and one task per table."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TextColumn("{task.fields[rate]:>9} rows/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=console,
            redirect_stderr=True,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._running = False

    def show(self, table: str, rows: int, total: int | None, rate: float, done: bool) -> None:
        if not self._running:
            self._progress.start()
            self._running = True
        task = self._tasks.get(table)
        total = max(total or 0, rows) or None
        if task is None:
            task = self._tasks[table] = self._progress.add_task(f"snapshot {table}", total=total, rate="-")
        self._progress.update(task, completed=rows, total=rows if done else total, rate=f"{rate:,.0f}")
        if all(t.finished for t in self._progress.tasks):
            self.stop()

    def stop(self) -> None:
        if self._running:
            self._progress.stop()
            self._running = False


_bars: _Bars | None = None


def enable(console: Console | None = None) -> None:
    """Draw progress bars from now on (on `console`, by default stderr)."""
    global _bars
    _bars = _Bars(console or Console(stderr=True))


def disable() -> None:
    global _bars
    if _bars is not None:
        _bars.stop()
    _bars = None


def enabled() -> bool:
    """True when progress goes to bars (so progress log lines are left out)."""
    return _bars is not None


def show(fields: dict[str, Any], *, done: bool = False) -> None:
    """Report one table's snapshot counters (`connectors.postgres.snapshot.progress_fields`)."""
    if _bars is not None:
        _bars.show(str(fields["table"]), int(fields["rows"]), fields.get("rows_estimate"),
                   float(fields.get("rows_per_s") or 0), done)


class StderrProxy:
    """A file that writes to whatever `sys.stderr` is at the time (rich swaps it while bars show)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    @property
    def stream(self) -> IO[str]:
        return sys.stderr
