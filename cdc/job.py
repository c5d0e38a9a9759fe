"""Build a job's source, sinks and pipeline from its configuration."""

from __future__ import annotations

from cdc.checkpoints import CheckpointStore
from cdc.config import FileSinkConfig, JobConfig, PostgresSourceConfig
from cdc.pipeline import Pipeline
from cdc.sink import Sink, SourceInfo
from cdc.source import BatchPolicy


def build_pipeline(job: JobConfig, checkpoints: CheckpointStore) -> Pipeline:
    """A fresh pipeline (new connections, new sink state) for one run of `job`."""
    # Connectors and sinks are imported here so a job only loads what it uses.
    if isinstance(job.source, PostgresSourceConfig):
        from connectors.postgres.source import PostgresSource

        source = PostgresSource(job.name, job.source, job.tables)
        info = source.info
    sinks = [build_sink(cfg, name, info) for cfg, name in zip(job.sinks, job.sink_names(), strict=True)]
    p = job.pipeline
    policy = BatchPolicy(max_events=p.max_batch_events, max_bytes=int(p.max_batch_bytes),
                         max_wait_s=p.max_wait_ms / 1000)
    return Pipeline(job.name, source, sinks, policy, checkpoints,
                    max_buffered_batches=p.max_buffered_batches, max_buffered_bytes=int(p.max_buffered_bytes))


def build_sink(cfg: FileSinkConfig, name: str, info: SourceInfo) -> Sink:
    from sinks.eventlog.file import FileSink

    return FileSink(name, cfg.path, info, max_segment_bytes=int(cfg.max_segment_bytes), fsync=cfg.fsync)
