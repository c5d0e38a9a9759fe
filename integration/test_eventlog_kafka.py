"""PostgreSQL -> Kafka through the real daemon, checked by consumers we did not write.

No Kafka broker can be installed here: the cluster is librdkafka's mock cluster, hosted
by this test process on a loopback port and speaking the Kafka protocol, so the daemon
(a subprocess) produces to it like to any cluster. The second test hands the Kafka
values to Apache Flink's ``debezium-json`` format (flink-json, from the
``apache-flink-libraries`` package) and compares the table Flink derives with the source.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.brokers import (
    Message,
    MockKafkaCluster,
    broker_job,
    envelope,
    read_kafka,
    rebuild,
    run_flink_sql,
    source_rows,
)
from integration.conftest import PgDatabase
from integration.daemon import ITEMS_DDL, ChangeWriter, Daemons, wait_until

CATCH_UP_S = 30.0
EVENT_ID = re.compile(r"^itest:(\d+):(\d+)(:delete)?(:tombstone)?$")


@pytest.fixture
def kafka_cluster() -> Iterator[MockKafkaCluster]:
    """A Kafka mock cluster (librdkafka) hosted by this process."""
    cluster = MockKafkaCluster()
    try:
        yield cluster
    finally:
        cluster.close()



def _sinks(bootstrap: str) -> list[dict[str, Any]]:
    return [
        {"type": "kafka", "name": "kafka", "brokers": bootstrap, "topic_prefix": "itest", "tombstones": True,
         "transaction_metadata": True, "linger_ms": 1},
        {"type": "kafka", "name": "kafka-connect", "brokers": bootstrap, "topic_prefix": "itestschema",
         "schemas": True, "linger_ms": 1},
    ]


def _stream(pg: PgDatabase, tmp_path: Path, daemons: Daemons, cluster: MockKafkaCluster, seed: int,
            *, log_order: bool = False) -> dict[str, Any]:
    """Run the daemon while a workload commits; return the source rows once Kafka holds them all.

    Kafka's messages are applied partition by partition (only each key's order counts),
    or with `log_order` in the order of the source log.
    """
    files, _ = broker_job(pg, tmp_path / "job", _sinks(cluster.bootstrap))
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    writer = ChangeWriter(pg, seed=seed)
    try:
        for _ in range(30):
            writer.transaction()
    finally:
        writer.close()
    pg.execute("INSERT INTO notes VALUES ('a', 1), ('b', 2), ('c', 3)")
    pg.execute("UPDATE notes SET n = 20 WHERE body = 'b'")
    pg.execute("DELETE FROM notes WHERE body = 'c'")
    # notes has no primary key: its replica identity (FULL) is the whole row, so is its message key.
    expected = {"public.items": source_rows(pg, "public.items"),
                "public.notes": {(r["body"], r["n"]): r for r in source_rows(pg, "public.notes", key="body").values()}}
    topics = ["itest.public.items", "itest.public.notes"]
    keys = {"public.notes": ("body", "n")}
    def read(topics: list[str]) -> list[Message]:
        messages = read_kafka(cluster.bootstrap, topics)
        return sorted(messages, key=_log_order) if log_order else messages

    wait_until(lambda: rebuild(read(topics), keys) == expected, CATCH_UP_S, "Kafka to hold every change")
    wait_until(lambda: rebuild(read(["itestschema.public.items"])).get("public.items") == expected["public.items"],
               CATCH_UP_S, "the schema-enabled topic to hold every change")
    assert daemon.terminate(10.0) == 0
    log = daemon.stderr(all_runs=True)
    assert "Traceback" not in log and "job_failed" not in log, daemon.tail()
    return expected


def _log_order(m: Message) -> tuple[int, int, int]:
    """Where an event was in the source log: (commit, seq), the delete half of a key change first."""
    match = EVENT_ID.match(m.event_id)
    assert match, m.event_id
    return int(match[1]), int(match[2]), 0 if match[3] else 1


def test_every_event_arrives_with_its_topic_key_and_headers(
    pg: PgDatabase, tmp_path: Path, daemons: Daemons, kafka_cluster: MockKafkaCluster
) -> None:
    """Each event is on <prefix>.<schema>.<table>, keyed by its primary key, with a unique cdc-event-id."""
    pg.execute(ITEMS_DDL)
    pg.execute("CREATE TABLE notes (body text, n int)")
    pg.execute("ALTER TABLE notes REPLICA IDENTITY FULL")  # no primary key: the full row identifies it
    _stream(pg, tmp_path, daemons, kafka_cluster, seed=11)
    bootstrap = kafka_cluster.bootstrap

    items = read_kafka(bootstrap, ["itest.public.items"])
    notes = read_kafka(bootstrap, ["itest.public.notes"])
    ids = [m.event_id for m in items + notes]
    assert len(ids) == len(set(ids)), "an event id was published twice without any crash"
    seqs: dict[int, set[int]] = defaultdict(set)
    last_by_key: dict[bytes | None, Message] = {}
    for m in items + notes:
        match = EVENT_ID.match(m.event_id)
        assert match, m.event_id
        commit, seq = int(match[1]), int(match[2])
        seqs[commit].add(seq)
        if m.value is None:  # a tombstone: right after the delete of the same key, same partition order
            assert match[4] and m.key is not None
            previous = last_by_key[m.key]
            assert previous.event_id + ":tombstone" == m.event_id and envelope(previous)["op"] == "d"  # type: ignore[index]
            continue
        env = envelope(m)
        assert env is not None
        source = env["source"]
        assert m.topic == f"itest.{source['schema']}.{source['table']}"
        assert (source["name"], source["connector"], source["db"]) == ("itest", "postgresql", pg.dbname)
        assert env["transaction"] == {"id": f"{source['txId']}:{commit}", "total_order": seq,
                                      "data_collection_order": env["transaction"]["data_collection_order"]}
        image = env["after"] if env["after"] is not None else env["before"]
        # The key: the primary key (the replica identity: every column of notes, which is FULL).
        columns = ("id",) if source["table"] == "items" else ("body", "n")
        assert m.key is not None and json.loads(m.key) == {c: image[c] for c in columns}
        if match[3]:  # the delete half of a key change
            assert env["op"] == "d" and env["after"] is None
        last_by_key[m.key] = m
    ops = Counter(envelope(m)["op"] for m in items if m.value)  # type: ignore[index]
    assert ops["c"] and ops["u"] and ops["d"], ops

    # Transaction boundaries: BEGIN and END for every transaction, END counting its events.
    boundaries = {m.event_id: json.loads(m.value or b"") for m in read_kafka(bootstrap, ["itest.transaction"])}
    for commit, events in seqs.items():
        begin, end = boundaries[f"itest:{commit}:0"], boundaries[f"itest:{commit}"]
        assert begin["status"] == "BEGIN" and end["status"] == "END" and begin["id"] == end["id"]
        assert end["event_count"] == len(events) == max(events)
        assert sum(c["event_count"] for c in end["data_collections"]) >= len(events)

    # Schema-enabled JSON: the same envelopes inside {schema, payload}, keys too.
    plain = {m.event_id: m for m in items if m.value}
    for m in read_kafka(bootstrap, ["itestschema.public.items"]):
        value, key = json.loads(m.value or b""), json.loads(m.key or b"")
        assert value["schema"]["name"] == "itestschema.public.items.Envelope"
        assert [f["field"] for f in value["schema"]["fields"]] == ["before", "after", "source", "op", "ts_ms"]
        assert key["schema"]["name"] == "itestschema.public.items.Key"
        twin = plain[m.event_id]
        expected_payload = {k: v for k, v in json.loads(twin.value or b"").items() if k not in ("ts_ms", "transaction")}
        assert {k: v for k, v in value["payload"].items() if k != "ts_ms"} == expected_payload
        assert key["payload"] == json.loads(twin.key or b"")


def test_flink_debezium_json_reads_our_kafka_values(
    pg: PgDatabase, tmp_path: Path, daemons: Daemons, kafka_cluster: MockKafkaCluster
) -> None:
    """Apache Flink's debezium-json format (plain and schema-include) derives exactly the source table."""
    pg.execute(ITEMS_DDL)
    pg.execute("ALTER TABLE items REPLICA IDENTITY FULL")  # Flink needs full before images
    pg.execute("CREATE TABLE notes (body text, n int)")
    pg.execute("ALTER TABLE notes REPLICA IDENTITY FULL")
    expected = _stream(pg, tmp_path, daemons, kafka_cluster, seed=12, log_order=True)["public.items"]

    # The topics' values in log order, as a single-partition topic holds them (tombstones
    # skipped, as Flink's format does), handed to Flink through files. Log order, not each
    # partition's: under REPLICA IDENTITY FULL the source keys rows by every column
    # (pgoutput's key flags), so a row's events do not share a partition (see the report).
    statements = []
    for name, topic, schema_include in (("plain", "itest", "false"), ("withschema", "itestschema", "true")):
        directory = tmp_path / "flink-input" / name
        directory.mkdir(parents=True)
        messages = [m for m in read_kafka(kafka_cluster.bootstrap, [f"{topic}.public.items"]) if m.value]
        values = [m.value for m in sorted(messages, key=_log_order)]
        (directory / "part-0.json").write_bytes(b"\n".join(values) + b"\n")
        statements.append(
            f"CREATE TABLE {name} (id INT, name STRING, qty INT, price DECIMAL(12, 2), updated STRING) WITH ("
            f"'connector' = 'filesystem', 'path' = '{directory}', 'format' = 'debezium-json', "
            f"'debezium-json.schema-include' = '{schema_include}', 'debezium-json.ignore-parse-errors' = 'false')"
        )
    statements.append("SELECT 'plain', * FROM plain UNION ALL SELECT 'withschema', * FROM withschema")
    changelog = run_flink_sql(statements, tmp_path / "flink")

    tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {"plain": {}, "withschema": {}}
    for kind, which, id_, name, qty, price, updated in changelog:
        rows = tables[which]
        if kind in ("+I", "+U"):
            rows[(id_,)] = {"id": id_, "name": name, "qty": qty, "price": price, "updated": updated}
        else:
            assert kind in ("-U", "-D"), kind
            assert rows.pop((id_,), None) is not None, f"{kind} of a row Flink never saw: {id_}"
    assert tables["plain"] == expected
    assert tables["withschema"] == expected
