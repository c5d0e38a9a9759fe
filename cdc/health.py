"""What the running daemon knows about each job: state, health, readiness, throughput.

The daemon's supervisor updates a `JobStatus` per job as runs start, fail and retry; the
HTTP endpoint (cdc/http.py) reads the `JobBoard` for ``/healthz``, ``/readyz`` and
``/status``. Everything here runs on the daemon's event loop: no locks.

States (docs/operations.md):

- ``starting``: the job is opening its sinks and checking its source.
- ``running``: the source started; batches flow (initial snapshot included).
- ``retrying``: the last run failed with a retryable error and the job has not made a
  batch durable since (it waits out its backoff or is starting again).
- ``failed``: stopped for good by a non-retryable error (or its retry attempts ran out).
- ``stopped``: ended cleanly (``snapshot: initial_only`` done, or removed by a reload).
- ``stopping``: draining after SIGTERM/SIGINT or before a reload restarts it.

A job is *healthy* unless it failed, or it has been failing without making a batch
durable for longer than its ``retry.unhealthy_after_s``. It is *ready* while running.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cdc import metrics, redaction

if TYPE_CHECKING:
    from cdc.pipeline import Pipeline

#: Throughput is measured over this window (seconds).
THROUGHPUT_WINDOW_S = 60.0


class JobState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RETRYING = "retrying"
    FAILED = "failed"
    STOPPED = "stopped"
    STOPPING = "stopping"


@dataclass(slots=True)
class JobStatus:
    """The live state of one job, kept by the daemon's supervisor."""

    name: str
    source_type: str
    unhealthy_after_s: float
    state: JobState = JobState.STARTING
    attempts: int = 0
    #: Events of finished runs; the current run's are in `pipeline.stats`.
    events_before: int = 0
    pipeline: Pipeline | None = None
    error: str | None = None
    error_class: str | None = None
    #: `time.monotonic()` when the current streak of failures began, None when not failing.
    failing_since: float | None = None
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=128))

    @property
    def events(self) -> int:
        return self.events_before + (self.pipeline.stats.events if self.pipeline is not None else 0)

    def run_started(self, pipeline: Pipeline) -> None:
        self.attempts += 1
        self.pipeline = pipeline
        if self.state not in (JobState.RETRYING, JobState.STOPPING):
            self.state = JobState.STARTING

    def run_ended(self, pipeline: Pipeline) -> None:
        self.events_before += pipeline.stats.events

    def run_failed(self, error: str, error_class: str, *, final: bool) -> None:
        """Record a failed run; `error` is stored redacted (every reader, /healthz, /status and
        ``cdc status``, shows it), since a driver's message can quote a DSN."""
        self.error, self.error_class = redaction.redact(error), error_class
        self.state = JobState.FAILED if final else JobState.RETRYING
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def refresh(self, now: float | None = None) -> None:
        """Move `state` on from what the current run shows; update the job's gauges."""
        now = time.monotonic() if now is None else now
        stats = self.pipeline.stats if self.pipeline is not None else None
        if self.state in (JobState.STARTING, JobState.RETRYING) and stats is not None and stats.streaming:
            recovered = self.failing_since is None or (
                stats.last_batch_at is not None and stats.last_batch_at >= self.failing_since
            )
            if recovered:
                self.state = JobState.RUNNING
                self.failing_since = None
        if not self._samples or now - self._samples[-1][0] >= 1.0:
            self._samples.append((now, self.events))
        while len(self._samples) > 2 and now - self._samples[1][0] >= THROUGHPUT_WINDOW_S:
            self._samples.popleft()
        metrics.job_up(self.name).set(1 if self.state is JobState.RUNNING else 0)
        metrics.job_healthy(self.name).set(1 if self.healthy(now) else 0)

    def healthy(self, now: float | None = None) -> bool:
        if self.state is JobState.FAILED:
            return False
        if self.failing_since is None:
            return True
        now = time.monotonic() if now is None else now
        return now - self.failing_since <= self.unhealthy_after_s

    def events_per_second(self) -> float | None:
        """Events per second over about the last minute (None until two samples exist)."""
        if len(self._samples) < 2:
            return None
        (t0, e0), (t1, e1) = self._samples[0], self._samples[-1]
        return (e1 - e0) / (t1 - t0) if t1 > t0 else None

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The job's part of ``/status`` (positions as strings, no secrets, no row values)."""
        now = time.monotonic() if now is None else now
        stats = self.pipeline.stats if self.pipeline is not None else None
        source = self.pipeline.source if self.pipeline is not None else None
        rate = self.events_per_second()
        sinks: dict[str, Any] = {}
        if stats is not None:
            for name, position in stats.sink_positions.items():
                lag = metrics.LAG.seconds(self.name, name)
                sinks[name] = {"position": position.to_json() if position is not None else None,
                               "lag_s": None if lag is None else round(lag, 3)}
        lag_bytes = getattr(source, "lag_bytes", None)
        snapshot = getattr(source, "snapshot_status", None)
        return {
            "state": str(self.state),
            "healthy": self.healthy(now),
            "attempts": self.attempts,
            "error": self.error if self.state in (JobState.FAILED, JobState.RETRYING) else None,
            "error_class": self.error_class if self.state in (JobState.FAILED, JobState.RETRYING) else None,
            "failing_for_s": None if self.failing_since is None else round(now - self.failing_since, 3),
            "source": {
                "type": self.source_type,
                "acknowledged": stats.acknowledged.to_json() if stats is not None and stats.acknowledged else None,
                "slot_lag_bytes": lag_bytes if isinstance(lag_bytes, int) else None,
            },
            "sinks": sinks,
            "events": self.events,
            "events_per_s_1m": None if rate is None else round(rate, 3),
            "snapshot": dict(snapshot) if isinstance(snapshot, dict) else {},
        }


@dataclass(slots=True)
class JobBoard:
    """Every job's `JobStatus`, plus whether the daemon is shutting down."""

    jobs: dict[str, JobStatus] = field(default_factory=dict)
    stopping: bool = False

    def refresh(self) -> None:
        now = time.monotonic()
        for status in self.jobs.values():
            status.refresh(now)

    def retrying(self) -> list[JobStatus]:
        """Jobs waiting out a retryable failure (``/healthz`` names them, healthy or not yet)."""
        return [s for s in self.jobs.values() if s.state is JobState.RETRYING]

    def failing(self) -> list[JobStatus]:
        """The unhealthy jobs (``/healthz`` answers 503 naming them)."""
        now = time.monotonic()
        return [s for s in self.jobs.values() if not s.healthy(now)]

    def not_ready(self) -> list[JobStatus]:
        """Jobs that do not stream right now (``/readyz`` answers 503 naming them)."""
        if self.stopping:
            return list(self.jobs.values())
        return [s for s in self.jobs.values() if s.state not in (JobState.RUNNING, JobState.STOPPED)]

    def to_json(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"stopping": self.stopping, "jobs": {name: s.to_json(now) for name, s in self.jobs.items()}}
