"""The daemon: many jobs from one config, each supervised on its own.

A job that fails with a retryable error (lost connection, sink outage) is restarted with
exponential backoff from its sinks' durable positions; a job that fails with a
non-retryable error, or with any error before it ever streamed (a setup mistake: wrong
DSN, wal_level, missing table), stops with its one-line message while the other jobs go
on. SIGTERM and SIGINT stop reading, drain in-flight batches, checkpoint, and exit 0
within ``shutdown_grace_s`` (exit 1 when a job did not drain in time). SIGHUP (``cdc
reload``) re-reads the config file and starts, stops or restarts only the jobs whose
configuration changed. While it runs, the daemon keeps ``<state_dir>/cdc-daemon.json``
(pid, HTTP address, reload results) for ``cdc status`` and ``cdc reload``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from cdc import metrics, redaction
from cdc.checkpoints import FileCheckpointStore, write_atomically
from cdc.config import Config, JobConfig, iter_jobs, load_config
from cdc.errors import CdcError, InternalError
from cdc.health import JobBoard, JobState, JobStatus
from cdc.job import build_pipeline
from cdc.logs import configure_logging
from cdc.pipeline import Pipeline

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class JobOutcome:
    name: str
    error: CdcError | None = None
    attempts: int = 0
    events: int = 0
    streamed: bool = False
    failures: list[str] = field(default_factory=list)


#: The running daemon's file under ``state_dir``.
DAEMON_FILE = "cdc-daemon.json"


def read_daemon_file(state_dir: Path) -> dict[str, Any] | None:
    """What the daemon running on `state_dir` wrote about itself, or None when none runs."""
    try:
        doc = orjson.loads((state_dir / DAEMON_FILE).read_bytes())
        pid = int(doc["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


class Daemon:
    """Runs `jobs` until each ends or a stop signal arrives; SIGHUP reloads `config_path`."""

    def __init__(self, config: Config, jobs: list[JobConfig], *, config_path: Path | None = None,
                 only: list[str] | None = None) -> None:
        self.config = config
        self.jobs = {j.name: j for j in jobs}
        self.config_path = config_path
        self.only = only
        self.stop = asyncio.Event()
        self.checkpoints = FileCheckpointStore(config.state_dir)
        self.outcomes = {j.name: JobOutcome(j.name) for j in jobs}
        self.board = JobBoard()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._reload_requested = False
        self._reloads = 0
        self._last_reload: dict[str, Any] | None = None
        self._address: str | None = None
        self._started_at = datetime.now(UTC).isoformat()

    async def run(self) -> int:
        """Run every job; return the process exit code (0, 2 when a job failed, 1 when one did not drain)."""
        from cdc.http import HttpEndpoint

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        endpoint = HttpEndpoint(self.board, self._status)
        sampler: asyncio.Task[None] | None = None
        try:
            if self.config.http is not None:
                self._address = await endpoint.start(self.config.http)
            other = read_daemon_file(self.config.state_dir)
            if other is not None and other.get("pid") != os.getpid():
                log.warning("another_daemon_running", pid=other.get("pid"), state_dir=str(self.config.state_dir))
            self._write_daemon_file()
            for job in self.jobs.values():
                self._start(job)
            sampler = asyncio.create_task(self._sample(), name="cdc-status-sampler")
            while not self.stop.is_set() and any(not t.done() for t in self._tasks.values()):
                # Only the jobs still running: a finished task would end every wait at once (a busy loop).
                running = [t for t in self._tasks.values() if not t.done()]
                waiting = [asyncio.create_task(self.stop.wait()), asyncio.create_task(self._wake.wait())]
                await asyncio.wait([*waiting, *running], return_when=asyncio.FIRST_COMPLETED)
                for w in waiting:
                    w.cancel()
                if self._wake.is_set():
                    self._wake.clear()  # a SIGHUP during the reload below sets it again
                    if self._reload_requested and not self.stop.is_set():
                        self._reload_requested = False
                        await self._reload()
            self.board.stopping = True
            late = await self._stop_jobs(list(self._tasks))
            if late:
                return 1
        finally:
            if sampler is not None:
                sampler.cancel()
            await endpoint.close()
            self._remove_daemon_file()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        codes = [o.error.exit_code for o in self.outcomes.values() if o.error is not None]
        return max(codes, default=0)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stop.is_set():
            log.info("shutdown_requested", signal=sig.name)
        self.stop.set()

    def _on_reload(self) -> None:
        log.info("reload_requested", signal="SIGHUP")
        self._reload_requested = True
        self._wake.set()

    def _start(self, job: JobConfig) -> None:
        stop = self._stops[job.name] = asyncio.Event()
        if self.stop.is_set():
            stop.set()
        self.board.jobs[job.name] = JobStatus(job.name, job.source.type, job.retry.unhealthy_after_s)
        self._tasks[job.name] = asyncio.create_task(self._supervise(job, stop), name=job.name)

    async def _stop_jobs(self, names: list[str]) -> list[str]:
        """Stop the named jobs, draining within ``shutdown_grace_s``; return those cancelled late."""
        tasks = [self._tasks[n] for n in names if n in self._tasks]
        for name in names:
            self._stops[name].set()
            status = self.board.jobs.get(name)
            if status is not None and status.state not in (JobState.FAILED, JobState.STOPPED):
                status.state = JobState.STOPPING
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return []
        _, late = await asyncio.wait(pending, timeout=self.config.shutdown_grace_s)
        for t in late:
            log.warning("job_shutdown_timeout", job=t.get_name(), grace_s=self.config.shutdown_grace_s)
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        return [t.get_name() for t in late]

    async def _reload(self) -> None:
        """Re-read the config; stop removed jobs, start new ones, restart changed ones."""
        self._reloads += 1
        try:
            if self.config_path is None:
                raise CdcError("the daemon was not started from a config file")
            fresh = load_config(self.config_path)
            redaction.register(redaction.secrets_of(fresh))
            jobs = {j.name: j for j in iter_jobs(fresh, self.only)}
        except CdcError as err:
            log.error("reload_failed", error=str(err))
            self._last_reload = {"ok": False, "error": redaction.redact(str(err))}
            self._write_daemon_file()
            return
        fixed = [k for k in ("state_dir", "http", "log_format") if getattr(fresh, k) != getattr(self.config, k)]
        if fixed:
            log.warning("reload_needs_restart", keys=fixed)
        if fresh.log_level != self.config.log_level:
            configure_logging(fresh.log_level, self.config.log_format)
        self.config = fresh.model_copy(update={k: getattr(self.config, k) for k in fixed})
        removed = [n for n in self.jobs if n not in jobs]
        added = [n for n in jobs if n not in self.jobs]
        changed = [n for n in jobs if n in self.jobs and jobs[n] != self.jobs[n]]
        await self._stop_jobs([*removed, *changed])
        for name in [*removed, *changed]:
            self._tasks.pop(name, None)
            self._stops.pop(name, None)
            self.board.jobs.pop(name, None)
            self.outcomes.pop(name, None)
            metrics.LAG.forget(name)
            metrics.job_up(name).set(0)
        self.jobs = jobs
        for name in [*changed, *added]:
            self.outcomes[name] = JobOutcome(name)
            self._start(jobs[name])
        unchanged = sorted(set(jobs) - set(added) - set(changed))
        log.info("reload_applied", started=added, stopped=removed, restarted=changed, unchanged=unchanged)
        self._last_reload = {"ok": True, "started": added, "stopped": removed, "restarted": changed,
                             "unchanged": unchanged}
        self._write_daemon_file()

    def _status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "started_at": self._started_at, "reloads": self._reloads,
                "last_reload": self._last_reload}

    def _write_daemon_file(self) -> None:
        doc = {**self._status(), "jobs": sorted(self.jobs), "http": self._address,
               "config": str(self.config_path.resolve()) if self.config_path is not None else None}
        try:
            self.config.state_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(self.config.state_dir / DAEMON_FILE, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        except OSError as err:
            log.warning("daemon_file_not_written", error=err.strerror)

    def _remove_daemon_file(self) -> None:
        path = self.config.state_dir / DAEMON_FILE
        with contextlib.suppress(OSError, ValueError, KeyError, orjson.JSONDecodeError):
            if int(orjson.loads(path.read_bytes())["pid"]) == os.getpid():
                path.unlink()

    async def _sample(self) -> None:
        """Refresh every job's state and gauges (and the throughput samples) every 5 s."""
        while True:
            self.board.refresh()
            await asyncio.sleep(5.0)

    async def _supervise(self, job: JobConfig, stop: asyncio.Event) -> None:
        """Run `job` until it ends, fails for good, or `stop` is set; retry retryable failures.

        A failure is final when its error is not retryable, when ``retry.max_attempts``
        ran out, or when it is a first-start mistake (`CdcError.mistake_at_first_start`,
        e.g. an unreachable source) of a job that never streamed: neither in this process
        nor before (no checkpoint in the store). Every other failure, at the first start
        too, is retried with exponential backoff. Anything that fails while building the
        job (a connection string the driver refuses) is reported like a failed run. An
        exception that is no `CdcError`, also a `BaseException` such as deltalake's
        ``PanicException``, is an `InternalError` of this job (logged with its traceback,
        exit code 1); cancellation, ``KeyboardInterrupt`` and ``SystemExit`` pass through.
        """
        outcome = self.outcomes[job.name]
        status = self.board.jobs[job.name]
        backoff = job.retry.initial_backoff_s
        jlog = log.bind(job=job.name)
        while not stop.is_set():
            outcome.attempts += 1
            pipeline: Pipeline | None = None
            try:
                outcome.streamed = outcome.streamed or self._has_checkpoint(job.name)
                pipeline = build_pipeline(job, self.checkpoints, self.config.state_dir)
                status.run_started(pipeline)
                await pipeline.run(stop)
                outcome.events += pipeline.stats.events
                status.run_ended(pipeline)
                status.state = JobState.STOPPED
                return
            except BaseException as bug:
                if isinstance(bug, (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)):
                    raise
                if isinstance(bug, CdcError):
                    err: CdcError = bug
                else:
                    # Any other BaseException too (deltalake's PanicException derives from it): the
                    # job's failure, never a silent end of its task.
                    jlog.exception("job_crashed", error_class=type(bug).__name__)
                    err = InternalError(f"job {job.name}: internal error {type(bug).__name__}: {bug} (a bug in cdc; "
                                        "the log has the traceback; please report it)")
                    err.__cause__ = bug
                if pipeline is not None:
                    outcome.events += pipeline.stats.events
                    status.run_ended(pipeline)
                    outcome.streamed = outcome.streamed or pipeline.stats.streaming
                metrics.errors(job.name, type(err).__name__).inc()
                exhausted = job.retry.max_attempts is not None and outcome.attempts >= job.retry.max_attempts
                mistake = err.mistake_at_first_start and not outcome.streamed
                if not err.retryable or mistake or exhausted:
                    outcome.error = err
                    status.run_failed(str(err), type(err).__name__, final=True)
                    jlog.error("job_failed", error=str(err), error_class=type(err).__name__)
                    return
                status.run_failed(str(err), type(err).__name__, final=False)
                metrics.retries(job.name).inc()
                if pipeline is not None and pipeline.stats.batches:
                    backoff = job.retry.initial_backoff_s
                delay = min(backoff, job.retry.max_backoff_s) * (0.8 + 0.4 * random.random())
                jlog.warning("job_retrying", error=str(err), error_class=type(err).__name__,
                             attempt=outcome.attempts, delay_s=round(delay, 2))
                backoff = min(backoff * 2, job.retry.max_backoff_s)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()

    def _has_checkpoint(self, job: str) -> bool:
        """Whether `job` streamed before: its checkpoint store holds a checkpoint (unreadable counts)."""
        try:
            return self.checkpoints.load(job) is not None
        except CdcError:
            return True
