"""``cdc reload`` and ``cdc reset``: act on a running daemon or on a job's saved state.

``cdc reload CONFIG`` checks the config file, then sends SIGHUP to the daemon that runs
on the config's ``state_dir`` (its pid is in ``cdc-daemon.json``) and waits for the
daemon to report the result there: which jobs it started, stopped and restarted.

``cdc reset CONFIG --job NAME`` forgets everything a job keeps so that its next start is
a first start: the PostgreSQL replication slot and publication are dropped, and the
job's checkpoint, snapshot progress, pending snapshot request and spool are deleted
(MySQL/MariaDB jobs only have the local state). The sinks' data is not touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from cdc.config import Config, JobConfig, PostgresSourceConfig
from cdc.daemon import DAEMON_FILE, read_daemon_file
from cdc.errors import CdcError, SourceError, SourceUnreachableError, first_line


class ControlError(CdcError):
    """A ``cdc reload``/``cdc reset`` request that cannot be carried out (the message says why)."""


def reload_daemon(config: Config, timeout_s: float = 30.0) -> str:
    """SIGHUP the daemon running on ``config.state_dir`` and return its one-line result."""
    daemon = read_daemon_file(config.state_dir)
    if daemon is None:
        raise ControlError(f"no daemon runs on state_dir {config.state_dir} (no live {DAEMON_FILE}); "
                           "start it with: cdc run CONFIG")
    pid, before = int(daemon["pid"]), int(daemon.get("reloads") or 0)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read_daemon_file(config.state_dir)
        if now is None:
            raise ControlError(f"the daemon (pid {pid}) exited before it reported the reload")
        if int(now.get("reloads") or 0) > before:
            result = now.get("last_reload") or {}
            if not result.get("ok"):
                raise ControlError(f"the daemon (pid {pid}) kept its jobs: {result.get('error')}")
            return (f"reloaded (pid {pid}): started {_names(result.get('started'))}, stopped "
                    f"{_names(result.get('stopped'))}, restarted {_names(result.get('restarted'))}, unchanged "
                    f"{_names(result.get('unchanged'))}")
    raise ControlError(f"the daemon (pid {pid}) did not report the reload within {timeout_s:.0f}s; see its log")


def _names(value: object) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list) and value else "none"


def reset_job(config: Config, job: JobConfig, *, yes: bool) -> list[str]:
    """Drop the job's slot and publication (PostgreSQL) and its local state; return what was done."""
    daemon = read_daemon_file(config.state_dir)
    if daemon is not None and job.name in (daemon.get("jobs") or []):
        raise ControlError(f"job {job.name} runs in the daemon (pid {daemon['pid']}): remove it from the config and "
                           "`cdc reload` (or stop the daemon) before resetting it")
    if not yes:
        if not sys.stdin.isatty():
            raise ControlError(f"cdc reset drops job {job.name}'s slot, publication and checkpoints: "
                               "confirm with --yes")
        answer = input(f"This drops the replication slot, publication and checkpoints of job {job.name}; "
                       "its next start is a first start (a new snapshot). Type the job name to confirm: ")
        if answer.strip() != job.name:
            raise ControlError("not confirmed; nothing was changed")
    done = _SOURCE_RESETS.get(job.source.type, _no_server_state)(job)
    state = config.state_dir
    for path in (state / f"{job.name}.checkpoint.json", state / f"{job.name}.snapshot.json",
                 state / f"{job.name}.snapshot-request.json"):
        if path.exists():
            path.unlink()
            done.append(f"deleted {path}")
    spool = state / "spool" / job.name
    if spool.exists():
        shutil.rmtree(spool)
        done.append(f"deleted {spool}")
    return done


def _reset_postgres(job: JobConfig) -> list[str]:
    source = job.source
    assert isinstance(source, PostgresSourceConfig)
    done: list[str] = []
    try:
        with psycopg.connect(source.conninfo(), autocommit=True, connect_timeout=source.connect_timeout_s) as conn:
            row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                               (source.slot,)).fetchone()
            if row is not None:
                if row[0] is not None:
                    raise ControlError(f"job {job.name}: replication slot {source.slot} is in use by server process "
                                       f"{row[0]}: stop the process streaming from it first")
                conn.execute("SELECT pg_drop_replication_slot(%s)", (source.slot,))
                done.append(f"dropped replication slot {source.slot}")
            exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (source.publication,)).fetchone()
            if exists is not None:
                conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(source.publication)))
                done.append(f"dropped publication {source.publication}")
    except psycopg.OperationalError as err:
        raise SourceUnreachableError(f"job {job.name}: cannot connect to the source: {first_line(err)}") from err
    except psycopg.Error as err:
        raise SourceError(f"job {job.name}: cannot drop the slot or publication: {first_line(err)}") from err
    return done


def _no_server_state(job: JobConfig) -> list[str]:
    return []


#: What `reset_job` drops on the source server, per source type (MySQL keeps nothing there).
_SOURCE_RESETS: dict[str, Callable[[JobConfig], list[str]]] = {"postgres": _reset_postgres}
