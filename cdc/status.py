"""``cdc status CONFIG [--json]``: every job's state, positions, lag, throughput and snapshot.

What it shows comes from two places:

- the state directory, always: each job's checkpoint (the acknowledged source position
  and each sink's durable position) and its snapshot progress file;
- the running daemon, when one runs on that state directory and has its HTTP endpoint
  on (``cdc-daemon.json`` names its address): state, health, lag, throughput over the
  last minute, live snapshot progress.

It never reads or prints a DSN or password.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from cdc.checkpoints import FileCheckpointStore
from cdc.config import Config, JobConfig
from cdc.daemon import read_daemon_file
from cdc.errors import CdcError


def fetch_status(address: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """GET ``http://address/status``; None when the daemon does not answer."""
    try:
        with urllib.request.urlopen(f"http://{address}/status", timeout=timeout) as response:
            doc = orjson.loads(response.read())
    except (OSError, urllib.error.URLError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def collect(config: Config, jobs: list[JobConfig]) -> dict[str, Any]:
    """The document ``cdc status --json`` prints (see docs/operations.md)."""
    daemon = read_daemon_file(config.state_dir)
    live: dict[str, Any] | None = None
    if daemon is not None and daemon.get("http"):
        live = fetch_status(str(daemon["http"]))
    store = FileCheckpointStore(config.state_dir)
    out_jobs: dict[str, Any] = {}
    for job in jobs:
        entry: dict[str, Any] = {"source_type": job.source.type, "sinks": job.sink_names()}
        try:
            checkpoint = store.load(job.name)
        except CdcError as err:
            entry["checkpoint"] = {"error": str(err)}
        else:
            entry["checkpoint"] = None if checkpoint is None else {
                "source": checkpoint.source.to_json(),
                "sinks": {name: p.to_json() for name, p in checkpoint.sinks.items()},
            }
        entry["snapshot"] = _snapshot_progress(config.state_dir / f"{job.name}.snapshot.json")
        live_job = (live or {}).get("jobs", {}).get(job.name) if live is not None else None
        if live_job is not None:
            entry["live"] = live_job
            entry["state"] = live_job.get("state")
        elif daemon is None:
            entry["state"] = "not running"
        elif live is None:
            entry["state"] = "unknown (daemon runs without http endpoint)" if not daemon.get("http") else "unknown"
        else:
            entry["state"] = "not in the daemon"
        out_jobs[job.name] = entry
    return {
        "daemon": None if daemon is None else {
            "pid": daemon.get("pid"), "http": daemon.get("http"), "started_at": daemon.get("started_at"),
            "reachable": live is not None,
        },
        "jobs": out_jobs,
    }


def _snapshot_progress(path: Path) -> dict[str, Any]:
    """Per table: status, chunks done of planned, rows (from the snapshot progress file)."""
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    tables = doc.get("tables") if isinstance(doc, dict) else None
    out: dict[str, Any] = {}
    for name, t in (tables or {}).items():
        if isinstance(t, dict):
            out[name] = {"status": t.get("status"), "chunks_done": len(t.get("done") or []),
                         "chunks": len(t.get("chunks") or []), "rows": t.get("rows")}
    return out


def _position(source_type: str, doc: Any) -> str:
    if not isinstance(doc, dict) or "commit" not in doc:
        return "-"
    commit = int(doc["commit"])
    text = f"{commit >> 32:X}/{commit & 0xFFFFFFFF:X}" if source_type == "postgres" else str(commit)
    return text if "seq" not in doc else f"{text}:{doc['seq']}"


def _snapshot_text(entry: dict[str, Any]) -> str:
    live = (entry.get("live") or {}).get("snapshot") or {}
    parts = []
    for name, t in sorted(entry.get("snapshot", {}).items()):
        if t.get("status") == "done":
            parts.append(f"{name} done ({t.get('rows') or 0:,} rows)")
            continue
        now = live.get(name) or {}
        rows = now.get("rows", t.get("rows") or 0)
        eta = now.get("eta_s")
        parts.append(f"{name} {t['chunks_done']}/{t['chunks']} chunks, {rows:,} rows"
                     + (f", ETA {eta:.0f}s" if isinstance(eta, int | float) else ""))
    return "\n".join(parts) or "-"


def render(doc: dict[str, Any], console: Console) -> None:
    """The status document as a table (one row per job)."""
    daemon = doc["daemon"]
    if daemon is None:
        console.print("daemon: not running (checkpoints from the state directory)")
    else:
        reach = "" if daemon["reachable"] else " (endpoint not reachable)" if daemon["http"] else " (no http endpoint)"
        console.print(f"daemon: pid {daemon['pid']}, http {daemon['http'] or '-'}, since {daemon['started_at']}{reach}")
    table = Table(show_lines=True)
    for column in ("job", "state", "source position", "sinks (durable position)", "lag", "events/s (1 min)",
                   "snapshot"):
        table.add_column(column)
    for name, entry in doc["jobs"].items():
        kind = entry["source_type"]
        live = entry.get("live") or {}
        checkpoint = entry.get("checkpoint") or {}
        if "error" in checkpoint:
            source, sinks = checkpoint["error"], ""
        else:
            acked = (live.get("source") or {}).get("acknowledged") or checkpoint.get("source")
            source = _position(kind, acked)
            held = {n: (live.get("sinks") or {}).get(n, {}).get("position") or (checkpoint.get("sinks") or {}).get(n)
                    for n in entry["sinks"]}
            sinks = "\n".join(f"{n}: {_position(kind, p)}" for n, p in held.items())
        lags = [s.get("lag_s") for s in (live.get("sinks") or {}).values() if s.get("lag_s") is not None]
        lag = f"{max(lags):.1f}s" if lags else "-"
        slot = (live.get("source") or {}).get("slot_lag_bytes")
        if slot is not None:
            lag += f"\nslot {slot:,} B"
        rate = live.get("events_per_s_1m")
        state = str(entry["state"])
        if live.get("error"):
            state += f"\n{live['error']}"
        table.add_row(name, state, source, sinks or "-", lag, "-" if rate is None else f"{rate:,.1f}",
                      _snapshot_text(entry))
    console.print(table)
