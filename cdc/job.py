"""Build a job's source, sinks and pipeline from its configuration."""

from __future__ import annotations

from pathlib import Path

from cdc.checkpoints import CheckpointStore, checkpoint_position
from cdc.config import (
    DeltaSinkConfig,
    DuckDBSinkConfig,
    FileSinkConfig,
    JobConfig,
    KafkaSinkConfig,
    MySqlSourceConfig,
    NatsSinkConfig,
    PostgresSinkConfig,
    PostgresSourceConfig,
    RedisSinkConfig,
    SinkConfig,
)
from cdc.pipeline import Pipeline
from cdc.sink import Sink, SourceInfo
from cdc.source import BatchPolicy, Source


def build_pipeline(job: JobConfig, checkpoints: CheckpointStore, state_dir: Path) -> Pipeline:
    """A fresh pipeline (new connections, new sink state) for one run of `job`.

    `state_dir` holds what the source keeps between runs besides checkpoints (snapshot
    progress, the spool of streamed transactions).
    """
    # Connectors and sinks are imported here so a job only loads what it uses.
    source: Source
    if isinstance(job.source, PostgresSourceConfig):
        from connectors.postgres.source import PostgresSource

        source = PostgresSource(
            job.name, job.source, job.tables, state_dir=state_dir, snapshot=job.snapshot,
            snapshot_workers=job.snapshot_workers, snapshot_chunk_rows=job.snapshot_chunk_rows,
        )
        info = source.info
    elif isinstance(job.source, MySqlSourceConfig):
        from connectors.mysql.source import MySqlSource

        mysql = MySqlSource(job.name, job.source, job.tables, state_dir=state_dir, snapshot=job.snapshot,
                            snapshot_chunk_rows=job.snapshot_chunk_rows, snapshot_workers=job.snapshot_workers)
        source, info = mysql, mysql.info
    sinks = [build_sink(cfg, name, info, job=job.name, checkpoints=checkpoints)
             for cfg, name in zip(job.sinks, job.sink_names(), strict=True)]
    p = job.pipeline
    policy = BatchPolicy(max_events=p.max_batch_events, max_bytes=int(p.max_batch_bytes),
                         max_wait_s=p.max_wait_ms / 1000)
    return Pipeline(job.name, source, sinks, policy, checkpoints,
                    max_buffered_batches=p.max_buffered_batches, max_buffered_bytes=int(p.max_buffered_bytes))


def build_sink(cfg: SinkConfig, name: str, info: SourceInfo, *, job: str, checkpoints: CheckpointStore) -> Sink:
    """The sink `cfg` describes, named `name`, for events of `info` in job `job`.

    Sinks that cannot keep their position with their data (Kafka, NATS JetStream) read
    it back from the job's checkpoint store when they open; broker topics default to
    the job's name as prefix.
    """
    if isinstance(cfg, FileSinkConfig):
        from sinks.eventlog.file import FileSink

        return FileSink(name, cfg.path, info, max_segment_bytes=int(cfg.max_segment_bytes), fsync=cfg.fsync)
    if isinstance(cfg, DuckDBSinkConfig | PostgresSinkConfig):
        return _warehouse_sink(cfg, name, job=job)
    if isinstance(cfg, DeltaSinkConfig):
        from sinks.delta.sink import DeltaSink

        return DeltaSink(name, cfg, info, job=job, stored=checkpoint_position(checkpoints, job, name))
    prefix = cfg.topic_prefix or job
    if isinstance(cfg, KafkaSinkConfig):
        from sinks.eventlog.kafka import KafkaSink

        return KafkaSink(name, cfg, info, prefix=prefix, stored=checkpoint_position(checkpoints, job, name))
    if isinstance(cfg, NatsSinkConfig):
        from sinks.eventlog.nats_jetstream import NatsJetStreamSink

        return NatsJetStreamSink(name, cfg, info, prefix=prefix, stored=checkpoint_position(checkpoints, job, name))
    if isinstance(cfg, RedisSinkConfig):
        from sinks.eventlog.redis_streams import RedisStreamsSink

        return RedisStreamsSink(name, cfg, info, prefix=prefix)
    raise AssertionError(f"unknown sink type {cfg!r}")


def _warehouse_sink(cfg: DuckDBSinkConfig | PostgresSinkConfig, name: str, *, job: str) -> Sink:
    """A DuckDB or PostgreSQL warehouse sink (docs/warehouse.md); it keeps its position in the target."""
    from sinks.warehouse.schema import TargetNames

    names = TargetNames(cfg.target_schema, cfg.table_name)
    if isinstance(cfg, DuckDBSinkConfig):
        from sinks.warehouse.duckdb import duckdb_sink

        return duckdb_sink(name, cfg.path, job=job, names=names, soft_deletes=cfg.soft_deletes,
                           primary_key=cfg.primary_key, memory_limit=cfg.memory_limit, threads=cfg.threads)
    from sinks.warehouse.postgres import postgres_sink

    return postgres_sink(name, cfg.dsn.get_secret_value(), job=job, names=names, soft_deletes=cfg.soft_deletes,
                         primary_key=cfg.primary_key, connect_timeout_s=cfg.connect_timeout_s)
