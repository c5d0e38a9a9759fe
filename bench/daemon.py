"""Running ``cdc run`` under a benchmark: time it from streaming start to a position, and its peak RSS."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def run_until(config: Path, reached: Callable[[], bool], timeout_s: float) -> tuple[float, float]:
    """Run ``cdc run CONFIG`` until `reached()`; return the seconds from ``replication_started``
    to then and the daemon's peak RSS in MB. The daemon is stopped in every case.

    ``CDC_BENCH_WRAP`` wraps the daemon's command (see `wrap`).
    """
    proc = subprocess.Popen([*wrap(config.parent.name), sys.executable, "-m", "cdc.cli", "run", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr or []], daemon=True).start()
    started = None
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.02)
                if started is None and "replication_started" in line:
                    started = time.perf_counter()
            except queue.Empty:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"cdc exited early with {proc.returncode}")
            if started is not None and reached():
                return time.perf_counter() - started, peak_rss_mb(proc.pid)
        raise SystemExit(f"cdc did not finish within {timeout_s:.0f} s")
    finally:
        proc.terminate()
        proc.wait(30)


def wrap(label: str) -> list[str]:
    """The command prefix in ``CDC_BENCH_WRAP`` (e.g. ``py-spy record -o p-{name}.txt --``), with
    ``{name}`` replaced by `label` so each daemon of a benchmark gets its own profile."""
    return os.environ.get("CDC_BENCH_WRAP", "").replace("{name}", label).split()


def json_position(path: Path, *keys: str) -> int | None:
    """``doc[keys[0]][keys[1]]...`` of the JSON file at `path`, or None while it is missing or torn."""
    try:
        value = json.loads(path.read_bytes())
        for key in keys:
            value = value[key]
        return int(value)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
