"""The daemon: many jobs from one config, each supervised on its own.

A job that fails with a retryable error (lost connection, sink outage) is restarted with
exponential backoff from its sinks' durable positions; a job that fails with a
non-retryable error, or with any error before it ever streamed (a setup mistake: wrong
DSN, wal_level, missing table), stops with its one-line message while the other jobs go
on. SIGTERM and SIGINT stop reading, drain in-flight batches, checkpoint, and exit 0
within ``shutdown_grace_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from dataclasses import dataclass, field

import structlog

from cdc.checkpoints import FileCheckpointStore
from cdc.config import Config, JobConfig
from cdc.errors import CdcError, InternalError
from cdc.job import build_pipeline

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class JobOutcome:
    name: str
    error: CdcError | None = None
    attempts: int = 0
    events: int = 0
    streamed: bool = False
    failures: list[str] = field(default_factory=list)


class Daemon:
    """Runs `jobs` until each ends or a stop signal arrives."""

    def __init__(self, config: Config, jobs: list[JobConfig]) -> None:
        self.config = config
        self.jobs = jobs
        self.stop = asyncio.Event()
        self.checkpoints = FileCheckpointStore(config.state_dir)
        self.outcomes = {j.name: JobOutcome(j.name) for j in jobs}

    async def run(self) -> int:
        """Run every job; return the process exit code (0, or 2 when a job failed)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        tasks = [asyncio.create_task(self._supervise(j), name=j.name) for j in self.jobs]
        stopping = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            while not self.stop.is_set() and not all(t.done() for t in tasks):
                await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            pending = [t for t in tasks if not t.done()]
            if pending:
                _, late = await asyncio.wait(pending, timeout=self.config.shutdown_grace_s)
                for t in late:
                    log.warning("job_shutdown_timeout", job=t.get_name(), grace_s=self.config.shutdown_grace_s)
                    t.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                if late:
                    return 1
        finally:
            stopping.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        codes = [o.error.exit_code for o in self.outcomes.values() if o.error is not None]
        return max(codes, default=0)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stop.is_set():
            log.info("shutdown_requested", signal=sig.name)
        self.stop.set()

    async def _supervise(self, job: JobConfig) -> None:
        outcome = self.outcomes[job.name]
        backoff = job.retry.initial_backoff_s
        jlog = log.bind(job=job.name)
        while not self.stop.is_set():
            outcome.attempts += 1
            pipeline = build_pipeline(job, self.checkpoints, self.config.state_dir)
            try:
                await pipeline.run(self.stop)
                outcome.events += pipeline.stats.events
                return
            except Exception as bug:
                if isinstance(bug, CdcError):
                    err: CdcError = bug
                else:
                    jlog.exception("job_crashed", error_class=type(bug).__name__)
                    err = InternalError(f"job {job.name}: internal error {type(bug).__name__}: {bug} (a bug in cdc; "
                                        "the log has the traceback; please report it)")
                    err.__cause__ = bug
                outcome.events += pipeline.stats.events
                streamed = pipeline.stats.streaming or outcome.streamed
                outcome.streamed = streamed
                exhausted = job.retry.max_attempts is not None and outcome.attempts >= job.retry.max_attempts
                if not err.retryable or not streamed or exhausted:
                    outcome.error = err
                    jlog.error("job_failed", error=str(err), error_class=type(err).__name__)
                    return
                if pipeline.stats.batches:
                    backoff = job.retry.initial_backoff_s
                delay = min(backoff, job.retry.max_backoff_s) * (0.8 + 0.4 * random.random())
                jlog.warning("job_retrying", error=str(err), error_class=type(err).__name__,
                             attempt=outcome.attempts, delay_s=round(delay, 2))
                backoff = min(backoff * 2, job.retry.max_backoff_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay)
