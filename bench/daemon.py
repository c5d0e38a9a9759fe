"""Running ``cdc run`` under a benchmark: time it from streaming start to a position, and its peak RSS."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def run_until(config: Path, reached: Callable[[], bool], timeout_s: float) -> tuple[float, float]:
    """Run ``cdc run CONFIG`` until `reached()`; return the seconds from ``replication_started``
    to then and the daemon's peak RSS in MB. The daemon is stopped in every case.

    With ``CDC_BENCH_PROFILE`` set, py-spy records the daemon meanwhile (see `profiler`).
    """
    proc = subprocess.Popen([sys.executable, "-m", "cdc.cli", "run", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    spy = profiler(proc.pid, config.parent.name)
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
        stop_profiler(spy)
        proc.terminate()
        proc.wait(30)


def profiler(pid: int, label: str) -> subprocess.Popen[bytes] | None:
    """py-spy recording process `pid` (the interpreter-lock holder, 100 Hz, collapsed stacks)
    into the file ``CDC_BENCH_PROFILE`` names, ``{name}`` replaced by `label`; None when unset.
    ``CDC_BENCH_PYSPY`` is the py-spy command (default ``py-spy``)."""
    target = os.environ.get("CDC_BENCH_PROFILE")
    if not target:
        return None
    command = [os.environ.get("CDC_BENCH_PYSPY", "py-spy"), "record", "--gil", "-r", "100", "--format", "raw",
               "-o", target.replace("{name}", label), "--pid", str(pid)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(spy: subprocess.Popen[bytes] | None) -> None:
    """Let py-spy write its profile (it does on SIGINT, or by itself when the process ends)."""
    if spy is None:
        return
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()


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
