"""What the broker sinks (Kafka, NATS JetStream, Redis Streams) share besides records.

**Durable position.** Redis keeps the sink's position in a key written in the same
MULTI/EXEC as the batch. Kafka and JetStream cannot store it atomically with the data,
so the position lives in the job's checkpoint store: the pipeline saves
``Checkpoint(ack, {sink: position})`` after every batch every sink made durable, and
the sink reads its entry back in `open()` (`checkpoint_position`). A crash between the
broker's acknowledgement and that save replays the batch: consumers drop the repeats by
event id (and JetStream itself within its duplicate window).

**Outages.** While the broker is unreachable, `write()` keeps the batch and retries it
with exponential backoff (`RetryClock`: ``retry_backoff_s`` doubling up to
``retry_max_backoff_s``) for as long as it makes no progress for less than
``write_timeout_s``; the pipeline's bounded buffer
fills meanwhile and the source stops reading, so memory stays bounded and the database
holds the backlog. Riding out a short outage inside the sink is cheaper than a job
restart (which reconnects the source, re-acquires the replication slot and replays
from the checkpoint). Past ``write_timeout_s`` the write fails with `SinkWriteError`
and the daemon restarts the job with its own backoff (``retry`` of the job), forever
unless ``retry.max_attempts`` says otherwise: nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from cdc.errors import SinkWriteError


def now_ms() -> int:
    """Wall-clock milliseconds: the envelope's top-level ``ts_ms``."""
    return int(time.time() * 1000)


class RetryClock:
    """Backoff and deadline of one batch's write attempts (see the module docstring)."""

    def __init__(
        self,
        what: str,
        log: structlog.typing.FilteringBoundLogger,
        *,
        initial_s: float,
        max_s: float,
        timeout_s: float,
    ) -> None:
        self._what = what
        self._log = log
        self._initial = initial_s
        self._max = max(max_s, initial_s)
        self._timeout = timeout_s
        self._deadline = time.monotonic() + timeout_s
        self._delay = initial_s
        self.attempts = 0

    @property
    def remaining_s(self) -> float:
        """Seconds left before the write gives up."""
        return max(0.0, self._deadline - time.monotonic())

    def progress(self) -> None:
        """The last attempt moved the batch forward: retry at once, with a fresh deadline."""
        self._delay = 0.0
        self._deadline = time.monotonic() + self._timeout

    async def failed(self, error: str) -> None:
        """Wait before the next attempt, or raise `SinkWriteError` once the deadline passed."""
        self.attempts += 1
        if time.monotonic() >= self._deadline:
            raise SinkWriteError(f"{self._what}: gave up after {self._timeout:g}s ({self.attempts} attempts): {error}")
        delay = min(self._delay, self.remaining_s)
        self._log.warning("sink_retrying", error=error, attempt=self.attempts, delay_s=round(delay, 2))
        if delay > 0:
            await asyncio.sleep(delay)
        self._delay = min(max(self._delay * 2, self._initial), self._max)

    def recovered(self) -> None:
        """Log the end of an outage (only when there were retries)."""
        if self.attempts:
            self._log.info("sink_recovered", attempts=self.attempts)
