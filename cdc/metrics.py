"""Prometheus metrics of the daemon: one registry, one small function per metric.

Sources and sinks call the function of the metric they move and get the labelled child
to update, for example::

    from cdc import metrics

    metrics.snapshot_rows(job, "public.orders").inc(n)
    metrics.source_lag_bytes(job).set(lag)
    metrics.source_seconds_behind(job).set(seconds)   # MySQL: now minus the binlog event's time

The pipeline already counts events, bytes and batches per sink, times every sink write
and keeps the end-to-end lag, so sinks and sources only report what the pipeline cannot
see (slot lag, snapshot progress). Every metric, its labels and its meaning are listed in
docs/operations.md; the HTTP endpoint (cdc/http.py) serves `REGISTRY` at ``/metrics``.

Label values are job, sink and table names and error class names: never positions, row
values or anything from a DSN.
"""

from __future__ import annotations

import time
from collections import Counter as Counter_
from collections.abc import Iterable, Iterator
from datetime import datetime
from operator import itemgetter

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cdc.events import ChangeBatch

#: Every cdc metric lives here (not in prometheus-client's global default registry), so
#: tests can read them back and an embedding program's own metrics never collide.
REGISTRY = CollectorRegistry(auto_describe=True)
#: process_resident_memory_bytes, process_cpu_seconds_total, open file descriptors (Linux).
ProcessCollector(registry=REGISTRY)

_EVENTS = Counter("cdc_events", "Change events written to a sink, by operation (c, u, d, r, t, m).",
                  ["job", "sink", "op"], registry=REGISTRY)
_BYTES = Counter("cdc_bytes", "Raw source bytes written to a sink, by operation (a batch's size apportioned "
                 "to its operations by event count).", ["job", "sink", "op"], registry=REGISTRY)
_BATCHES = Counter("cdc_batches", "Batches made durable in a sink (heartbeat batches included).",
                   ["job", "sink"], registry=REGISTRY)
_WRITE_SECONDS = Histogram(
    "cdc_sink_write_seconds", "Time a sink took to make one batch durable.", ["job", "sink"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
_SINK_ERRORS = Counter("cdc_sink_write_errors", "Failed sink writes (the job retries or stops).",
                       ["job", "sink", "error_class"], registry=REGISTRY)
_SOURCE_LAG_BYTES = Gauge("cdc_source_lag_bytes", "PostgreSQL: WAL the server keeps for the job's slot "
                          "(current WAL LSN minus the slot's confirmed flush LSN).", ["job"], registry=REGISTRY)
_SECONDS_BEHIND = Gauge("cdc_source_seconds_behind", "MySQL/MariaDB: now minus the timestamp of the binlog "
                        "event the source read last.", ["job"], registry=REGISTRY)
_BUFFER_BATCHES = Gauge("cdc_buffer_batches", "Batches waiting between the source and the sinks.",
                        ["job"], registry=REGISTRY)
_BUFFER_BYTES = Gauge("cdc_buffer_bytes", "Raw bytes of the batches waiting between the source and the sinks.",
                      ["job"], registry=REGISTRY)
_BUFFER_FILL = Gauge("cdc_buffer_fill_ratio", "How full the job's buffer is: the larger of batches/max_buffered_"
                     "batches and bytes/max_buffered_bytes (1 = the source waits for the sinks).",
                     ["job"], registry=REGISTRY)
_RETRIES = Counter("cdc_job_retries", "Restarts of a job after a retryable error.", ["job"], registry=REGISTRY)
_ERRORS = Counter("cdc_job_errors", "Errors that ended a run of a job (retried or not), by error class.",
                  ["job", "error_class"], registry=REGISTRY)
_SNAPSHOT_ROWS = Counter("cdc_snapshot_rows", "Snapshot rows durable in every sink.", ["job", "table"],
                         registry=REGISTRY)
_SNAPSHOT_CHUNKS = Counter("cdc_snapshot_chunks", "Snapshot chunks durable in every sink.", ["job", "table"],
                           registry=REGISTRY)
_SNAPSHOT_CHUNKS_PLANNED = Gauge("cdc_snapshot_chunks_planned", "Chunks the running snapshot of a table has in "
                                 "all.", ["job", "table"], registry=REGISTRY)
_JOB_UP = Gauge("cdc_job_up", "1 while the job streams (or snapshots), 0 while it starts, retries or has "
                "stopped.", ["job"], registry=REGISTRY)
_JOB_HEALTHY = Gauge("cdc_job_healthy", "1 when /healthz counts the job as healthy, else 0.", ["job"],
                     registry=REGISTRY)


def events(job: str, sink: str, op: str) -> Counter:
    """Events written to `sink`, by operation code."""
    return _EVENTS.labels(job=job, sink=sink, op=op)


def bytes_written(job: str, sink: str, op: str) -> Counter:
    """Raw source bytes written to `sink`, by operation code."""
    return _BYTES.labels(job=job, sink=sink, op=op)


def batches(job: str, sink: str) -> Counter:
    return _BATCHES.labels(job=job, sink=sink)


def sink_write_seconds(job: str, sink: str) -> Histogram:
    return _WRITE_SECONDS.labels(job=job, sink=sink)


def sink_write_errors(job: str, sink: str, error_class: str) -> Counter:
    return _SINK_ERRORS.labels(job=job, sink=sink, error_class=error_class)


def source_lag_bytes(job: str) -> Gauge:
    """PostgreSQL sources set this from ``pg_replication_slots`` every ``lag_interval_s``."""
    return _SOURCE_LAG_BYTES.labels(job=job)


def source_seconds_behind(job: str) -> Gauge:
    """MySQL/MariaDB sources set this to now minus the last binlog event's timestamp."""
    return _SECONDS_BEHIND.labels(job=job)


def retries(job: str) -> Counter:
    return _RETRIES.labels(job=job)


def errors(job: str, error_class: str) -> Counter:
    return _ERRORS.labels(job=job, error_class=error_class)


def snapshot_rows(job: str, table: str) -> Counter:
    """Rows of `table` (``schema.table``) whose snapshot chunk is durable in every sink."""
    return _SNAPSHOT_ROWS.labels(job=job, table=table)


def snapshot_chunks(job: str, table: str) -> Counter:
    """Chunks of `table` durable in every sink (count one per chunk acknowledged)."""
    return _SNAPSHOT_CHUNKS.labels(job=job, table=table)


def snapshot_chunks_planned(job: str, table: str) -> Gauge:
    """How many chunks the running snapshot of `table` has (set when it is planned)."""
    return _SNAPSHOT_CHUNKS_PLANNED.labels(job=job, table=table)


def job_up(job: str) -> Gauge:
    return _JOB_UP.labels(job=job)


def job_healthy(job: str) -> Gauge:
    return _JOB_HEALTHY.labels(job=job)


class BufferGauges:
    """The buffer fill gauges of one job, set by the pipeline's `BatchBuffer` on every change."""

    def __init__(self, job: str, max_batches: int, max_bytes: int) -> None:
        self._batches = _BUFFER_BATCHES.labels(job=job)
        self._bytes = _BUFFER_BYTES.labels(job=job)
        self._fill = _BUFFER_FILL.labels(job=job)
        self._max_batches = max_batches
        self._max_bytes = max_bytes

    def set(self, batches: int, nbytes: int) -> None:
        self._batches.set(batches)
        self._bytes.set(nbytes)
        self._fill.set(max(batches / self._max_batches, nbytes / self._max_bytes if self._max_bytes else 0.0))


_OP = itemgetter(0)


def batch_ops(batch: ChangeBatch) -> dict[str, int]:
    """Events per operation code in `batch` (one pass over the row changes, no events built)."""
    counts: Counter_[str] = Counter_()
    for t in batch.tables:
        if t.block is not None:
            counts["r"] += len(t)  # snapshot rows in columnar form: never materialise them here
        else:
            counts.update(map(_OP, t.changes))  # C-level iteration: about 45 ns per event
    return dict(counts)


def last_commit_ts(batch: ChangeBatch) -> datetime | None:
    """The latest commit time among the batch's events, or None for a heartbeat."""
    latest: datetime | None = None
    for t in batch.tables:
        last = t.last
        if last is not None and (latest is None or last[0].commit_ts > latest):
            latest = last[0].commit_ts
    return latest


class SinkMeter:
    """What the pipeline records for one sink of one job after each durable write."""

    def __init__(self, job: str, sink: str, lag: EndToEndLag) -> None:
        self.job = job
        self.sink = sink
        self._lag = lag
        self._batches = batches(job, sink)
        self._seconds = sink_write_seconds(job, sink)

    def written(self, batch: ChangeBatch, ops: dict[str, int], seconds: float) -> None:
        """`batch` (with `ops` from `batch_ops`) is durable in the sink after `seconds`."""
        self._batches.inc()
        self._seconds.observe(seconds)
        total = sum(ops.values())
        for op, n in ops.items():
            events(self.job, self.sink, op).inc(n)
            if total and batch.nbytes:
                bytes_written(self.job, self.sink, op).inc(batch.nbytes * n / total)
        self._lag.durable(self.job, self.sink, last_commit_ts(batch))

    def failed(self, err: BaseException) -> None:
        sink_write_errors(self.job, self.sink, type(err).__name__).inc()


class EndToEndLag(Collector):
    """``cdc_end_to_end_lag_seconds{job, sink}``: now minus the commit time of the last
    event durable in the sink, computed when scraped (so a stalled sink's lag grows).

    A heartbeat batch made durable means the sink holds everything the source has: the
    lag is then 0 until the next event arrives.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], datetime | None] = {}

    def durable(self, job: str, sink: str, commit_ts: datetime | None) -> None:
        self._last[job, sink] = commit_ts

    def forget(self, job: str) -> None:
        """Drop a job's series (the job was removed by a reload)."""
        for key in [k for k in self._last if k[0] == job]:
            del self._last[key]

    def seconds(self, job: str, sink: str) -> float | None:
        """The lag now, or None before the sink made anything durable in this process."""
        if (job, sink) not in self._last:
            return None
        ts = self._last[job, sink]
        return 0.0 if ts is None else max(0.0, time.time() - ts.timestamp())

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "cdc_end_to_end_lag_seconds",
            "Now minus the commit time of the last event durable in the sink (0 once a heartbeat is durable).",
            labels=["job", "sink"],
        )
        for job, sink in list(self._last):
            value = self.seconds(job, sink)
            if value is not None:
                family.add_metric([job, sink], value)
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


LAG = EndToEndLag()
REGISTRY.register(LAG)
