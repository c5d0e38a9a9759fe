"""PostgreSQL -> NATS JetStream and Redis Streams through kill -9 twice and a 10 s broker outage.

One job fans out to both brokers (each a real server of this test on a random loopback
port). The daemon (``cdc run``, a subprocess) is killed with SIGKILL twice mid-stream,
then both brokers are stopped for 10 s while the source keeps committing. At the end a
consumer reads each stream with the plain client, drops repeated event ids, and the
table it rebuilds must equal a ``SELECT`` of the source, row by row.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cdc.sandbox import DisposableNats, DisposableRedis
from integration.brokers import (
    broker_job,
    checkpoint_of,
    read_nats,
    read_redis,
    rebuild,
    source_rows,
)
from integration.conftest import PgDatabase
from integration.daemon import ITEMS_DDL, ChangeWriter, Daemons, wait_until

CATCH_UP_S = 40.0
OUTAGE_S = 10.0


def _sinks(nats: DisposableNats, redis: DisposableRedis) -> list[dict[str, Any]]:
    common = {"topic_prefix": "itest", "retry_backoff_s": 0.2, "retry_max_backoff_s": 1.0,
              "tombstones": True, "transaction_metadata": True}
    return [
        {"type": "nats", "name": "nats", "servers": [nats.url], "ack_timeout_s": 2.0, **common},
        {"type": "redis", "name": "redis", "url": redis.url, **common},
    ]


def _slot_confirmed(pg: PgDatabase, slot: str) -> int:
    rows = pg.query("SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots "
                    "WHERE slot_name = %s", (slot,))
    return int(rows[0][0])


def _current_lsn(pg: PgDatabase) -> int:
    return int(pg.query("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")[0][0])


def test_kill_9_twice_and_broker_outage_lose_nothing(
    pg: PgDatabase, tmp_path: Path, daemons: Daemons, nats_server: DisposableNats, redis_server: DisposableRedis
) -> None:
    """SIGKILL twice, both brokers down 10 s: de-duplicated NATS and Redis streams rebuild the table exactly."""
    pg.execute(ITEMS_DDL)
    files, slot = broker_job(pg, tmp_path / "job", _sinks(nats_server, redis_server))
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    writer = ChangeWriter(pg, seed=8)
    last: dict[str, Any] | None = None
    outage_lsn = 0
    try:
        for tx in range(1, 61):
            if tx in (12, 24, 36):
                # Act only once this run made a batch durable in both sinks (checkpointed).
                wait_until(lambda seen=last: checkpoint_of(files, "nats") not in (None, seen)
                           and checkpoint_of(files, "redis") not in (None, seen), CATCH_UP_S,
                           "the daemon to checkpoint a batch")
            if tx == 36:
                nats_server.halt()
                redis_server.halt(kill=True)
                outage_started = time.monotonic()
            writer.transaction()
            if tx == 36:
                outage_lsn = _current_lsn(pg)
            time.sleep(0.01 if tx < 36 or tx >= 48 else OUTAGE_S / 12)
            if tx in (12, 24):
                assert daemon.kill() == -9
                last = checkpoint_of(files, "nats")
            if tx in (16, 24):
                daemon.start()
            if tx == 47:
                time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
                # Nothing past the outage's first transaction was acknowledged to the source.
                assert _slot_confirmed(pg, slot) < outage_lsn
                nats_server.resume()
                redis_server.resume()
    finally:
        writer.close()

    expected = source_rows(pg, "public.items")
    assert len(expected) > 30

    def caught_up() -> bool:
        return (rebuild(read_nats(nats_server.url, "itest")).get("public.items") == expected
                and rebuild(read_redis(redis_server.url, "itest.*")).get("public.items") == expected)

    wait_until(caught_up, CATCH_UP_S, "both streams to rebuild the source table")
    assert daemon.terminate(10.0) == 0
    log = daemon.stderr(all_runs=True)
    assert "Traceback" not in log and "job_failed" not in log, daemon.tail()
    events = [e.get("event") for e in daemon.events(all_runs=True)]
    # The outage was ridden out inside the sinks, without restarting the job.
    assert "sink_retrying" in events and "sink_recovered" in events
    assert "job_retrying" not in events
    for messages in (read_nats(nats_server.url, "itest"), read_redis(redis_server.url, "itest.*")):
        assert rebuild(messages)["public.items"] == expected
        ids = [m.event_id for m in messages if m.topic.startswith("itest.public.")]
        assert len(set(ids)) >= writer.transactions * 2

