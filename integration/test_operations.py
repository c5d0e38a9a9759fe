"""The real daemon's operations surface against a disposable PostgreSQL: the HTTP endpoint
(/metrics, /healthz, /readyz, /status), ``cdc status``, ``cdc reload``, ``cdc reset``,
secrets that never reach a log line, and TLS with ``sslmode=verify-full``."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cdc.sandbox import DisposablePostgres, DisposableRedis
from integration.brokers import read_redis, source_rows
from integration.brokers import rebuild as rebuild_messages
from integration.conftest import PgDatabase
from integration.daemon import (
    ITEMS_DDL,
    ChangeWriter,
    Daemon,
    Daemons,
    JobFiles,
    job_config,
    rebuild,
    run_cdc,
    sink_position,
    wait_until,
    write_config,
)

CATCH_UP_S = 40.0


def get(address: str, path: str) -> tuple[int, bytes]:
    """GET http://address/path: (status, body), 503s included."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as ``{(name, sorted labels): value}``."""
    code, body = get(address, "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def endpoint_of(files: JobFiles, daemon: Daemon) -> str:
    """The daemon's HTTP address, read from its daemon file once it is up."""
    path = files.state_dir / "cdc-daemon.json"

    def written() -> bool:
        if daemon.process is not None and daemon.process.poll() is not None:
            raise AssertionError(f"cdc exited:\n{daemon.tail()}")
        return path.exists() and bool(json.loads(path.read_bytes()).get("http"))

    wait_until(written, 20, "the daemon file with the HTTP address")
    return str(json.loads(path.read_bytes())["http"])


def seed(pg: PgDatabase, rows: int) -> None:
    pg.execute(ITEMS_DDL)
    pg.execute("INSERT INTO items SELECT g, 'seed', g, g * 1.5, now() FROM generate_series(1, %s) g", (rows,))


def items(pg: PgDatabase) -> dict[tuple[Any, ...], dict[str, Any]]:
    return source_rows(pg, "public.items")


def test_metrics_status_and_secrets_of_a_full_run(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """Snapshot then stream: counters and lag move on /metrics, /status and `cdc status` agree with the
    sink, the sink equals the source row by row, and the password appears in no log line or output."""
    password = f"pw-{secrets.token_hex(8)}"
    seed(pg, 300)
    files = JobFiles(tmp_path / "job")
    dsn_file = tmp_path / "dsn.secret"
    dsn_file.write_text(pg.dsn.replace("postgres@", f"postgres:{password}@") + "\n")
    doc = job_config(files, dsn="unused", slot=pg.name("slot"), publication=pg.name("pub"))
    source = doc["jobs"][0]["source"]
    del source["dsn"]
    source.update(dsn_file=str(dsn_file), lag_interval_s=0.5)
    doc["jobs"][0]["snapshot"] = "initial"
    doc["http"] = {"listen": "127.0.0.1:0"}
    write_config(files, doc)
    assert password not in files.config.read_text()
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    address = endpoint_of(files, daemon)
    job = files.job

    wait_until(lambda: get(address, "/readyz")[0] == 200, 30, "/readyz to answer 200")
    writer = ChangeWriter(pg, seed=3)
    writer.next_id = 1000
    try:
        for _ in range(20):
            writer.transaction()
        wait_until(lambda: rebuild(files.sink).get("public.items") == items(pg), CATCH_UP_S, "the first catch-up")
        first = scrape(address)
        for _ in range(20):
            writer.transaction()
        wait_until(lambda: rebuild(files.sink).get("public.items") == items(pg), CATCH_UP_S, "the second catch-up")
    finally:
        writer.close()
    wait_until(lambda: value(scrape(address), "cdc_source_lag_bytes", job=job) is not None, 10, "slot lag")
    second = scrape(address)

    assert value(second, "cdc_snapshot_rows_total", job=job, table="public.items") == 300
    assert value(second, "cdc_snapshot_chunks_total", job=job, table="public.items") == value(
        second, "cdc_snapshot_chunks_planned", job=job, table="public.items")
    assert value(second, "cdc_events_total", job=job, sink="file", op="r") == 300
    for op in ("c", "u"):
        before, after = value(first, "cdc_events_total", job=job, sink="file", op=op), value(
            second, "cdc_events_total", job=job, sink="file", op=op)
        assert before is not None and after is not None and after > before > 0
    batches = value(first, "cdc_batches_total", job=job, sink="file"), value(second, "cdc_batches_total", job=job,
                                                                              sink="file")
    assert batches[0] is not None and batches[1] is not None and batches[1] > batches[0]
    assert (value(second, "cdc_sink_write_seconds_count", job=job, sink="file") or 0) >= batches[1]
    lag = value(second, "cdc_end_to_end_lag_seconds", job=job, sink="file")
    assert lag is not None and 0 <= lag < 60
    assert value(second, "cdc_job_up", job=job) == 1 and value(second, "cdc_job_healthy", job=job) == 1
    assert value(second, "cdc_buffer_fill_ratio", job=job) is not None

    assert get(address, "/healthz")[0] == 200
    code, body = get(address, "/status")
    status = json.loads(body)["jobs"][job]
    assert code == 200 and status["state"] == "running" and status["healthy"]
    wait_until(lambda: json.loads(get(address, "/status")[1])["jobs"][job]["sinks"]["file"]["position"]
               == sink_position(files.sink), 10, "/status to show the sink's durable position")

    as_json = run_cdc("status", files.config, "--json")
    assert as_json.returncode == 0, as_json.stderr
    cli = json.loads(as_json.stdout)
    assert cli["daemon"]["reachable"] and cli["jobs"][job]["state"] == "running"
    assert cli["jobs"][job]["snapshot"]["public.items"]["status"] == "done"
    table = run_cdc("status", files.config)
    assert table.returncode == 0 and job in table.stdout and "running" in table.stdout, table.stderr

    metrics_text = get(address, "/metrics")[1].decode()
    assert daemon.terminate(10.0) == 0
    after = run_cdc("status", files.config, "--json")
    assert json.loads(after.stdout)["jobs"][job]["state"] == "not running"
    assert json.loads(after.stdout)["jobs"][job]["checkpoint"]["sinks"]["file"] == sink_position(files.sink)
    log = daemon.stderr(all_runs=True)
    assert len(log.splitlines()) > 10 and "snapshot_progress" in log
    for text in (log, as_json.stdout, table.stdout, after.stdout, body.decode(), metrics_text,
                 *(p.read_text() for p in files.state_dir.rglob("*.json"))):
        assert password not in text
    assert rebuild(files.sink)["public.items"] == items(pg)


def test_healthz_turns_503_while_a_sink_is_down_and_200_after(
    pg: PgDatabase, tmp_path: Path, daemons: Daemons, redis_server: DisposableRedis
) -> None:
    """Redis stopped: the job retries, /healthz answers 503 naming it; Redis back: 200 and nothing lost."""
    pg.execute(ITEMS_DDL)
    files = JobFiles(tmp_path / "job")
    doc = job_config(files, dsn=pg.dsn, slot=pg.name("slot"), publication=pg.name("pub"))
    job = doc["jobs"][0]
    job["sinks"] = [{"type": "redis", "name": "redis", "url": redis_server.url, "topic_prefix": "ops",
                     "write_timeout_s": 1.0, "connect_timeout_s": 1.0, "retry_backoff_s": 0.2,
                     "retry_max_backoff_s": 0.5}]
    job["retry"] = {"initial_backoff_s": 0.2, "max_backoff_s": 0.5, "unhealthy_after_s": 1.0}
    doc["http"] = {"listen": "127.0.0.1:0"}
    write_config(files, doc)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    address = endpoint_of(files, daemon)
    wait_until(lambda: get(address, "/readyz")[0] == 200, 30, "/readyz to answer 200")
    assert get(address, "/healthz")[0] == 200
    writer = ChangeWriter(pg, seed=5)
    try:
        for _ in range(5):
            writer.transaction()
        redis_server.halt(kill=True)
        for _ in range(5):
            writer.transaction()
        wait_until(lambda: get(address, "/healthz")[0] == 503, 30, "/healthz to answer 503")
        code, body = get(address, "/healthz")
        assert code == 503 and files.job in json.loads(body)["failing"]
        assert get(address, "/readyz")[0] == 503
        redis_server.resume()
        for _ in range(5):
            writer.transaction()
    finally:
        writer.close()
    wait_until(lambda: get(address, "/healthz")[0] == 200, CATCH_UP_S, "/healthz to answer 200 again")
    samples = scrape(address)
    assert (value(samples, "cdc_job_retries_total", job=files.job) or 0) >= 1
    assert sum(v for (name, labels), v in samples.items() if name == "cdc_job_errors_total") >= 1
    wait_until(lambda: rebuild_messages(read_redis(redis_server.url, "ops.*")).get("public.items") == items(pg),
               CATCH_UP_S, "the stream to rebuild the source table")
    assert daemon.terminate(10.0) == 0


def two_job_config(pg: PgDatabase, root: Path, *, names: tuple[str, ...], wait_ms: dict[str, int]) -> JobFiles:
    """A config of one job per name, each with its own slot, publication and file sink."""
    files = JobFiles(root)
    jobs = []
    for name in names:
        doc = job_config(JobFiles(root, job=name), dsn=pg.dsn, slot=f"{pg.dbname[:40]}_{name}",
                         publication=f"pub_{name}", max_wait_ms=wait_ms.get(name, 50))
        job = doc["jobs"][0]
        job["sinks"] = [{"type": "file", "path": str(root / f"sink-{name}")}]
        jobs.append(job)
    document = job_config(files, dsn=pg.dsn, slot="unused", publication="unused")
    document["jobs"] = jobs
    write_config(files, document)
    return files


def starts(daemon: Daemon, job: str) -> int:
    return sum(1 for e in daemon.events() if e.get("event") == "job_starting" and e.get("job") == job)


def test_reload_changes_only_the_jobs_that_changed(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """`cdc reload`: a new job starts, a changed one restarts, an unchanged one streams on, a removed one
    stops; every sink ends equal to the source."""
    pg.execute(ITEMS_DDL)
    root = tmp_path / "cfg"
    files = two_job_config(pg, root, names=("keep", "change"), wait_ms={})
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    wait_until(lambda: sum(1 for e in daemon.events() if e.get("event") == "replication_started") == 2, 30,
               "both jobs to stream")
    files = two_job_config(pg, root, names=("keep", "change", "added"), wait_ms={"change": 80})
    reload = run_cdc("reload", files.config)
    assert reload.returncode == 0, reload.stderr
    assert "started added, stopped none, restarted change, unchanged keep" in reload.stdout
    wait_until(lambda: starts(daemon, "added") == 1, 30, "the added job to start")
    assert starts(daemon, "keep") == 1 and starts(daemon, "change") == 2
    writer = ChangeWriter(pg, seed=9)
    try:
        for _ in range(10):
            writer.transaction()
    finally:
        writer.close()
    expected = items(pg)
    for name in ("keep", "change", "added"):
        wait_until(lambda n=name: rebuild(root / f"sink-{n}").get("public.items") == expected, CATCH_UP_S,
                   f"job {name} to catch up")
    files = two_job_config(pg, root, names=("keep",), wait_ms={})
    reload = run_cdc("reload", files.config)
    assert reload.returncode == 0 and "stopped change, added" in reload.stdout, reload.stderr
    (root / "cdc.yaml").write_text("jobs: [")
    broken = run_cdc("reload", files.config)
    assert broken.returncode == 2 and "invalid YAML" in broken.stderr
    assert daemon.process is not None and daemon.process.poll() is None
    assert daemon.terminate(10.0) == 0
    assert starts(daemon, "keep") == 1


def test_reset_drops_slot_publication_and_checkpoints(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """`cdc reset --yes` after a run: the slot, the publication and the job's state files are gone."""
    seed(pg, 10)
    files = JobFiles(tmp_path / "job")
    slot, publication = pg.name("slot"), pg.name("pub")
    doc = job_config(files, dsn=pg.dsn, slot=slot, publication=publication)
    doc["jobs"][0]["snapshot"] = "initial"
    write_config(files, doc)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    wait_until(lambda: (rebuild(files.sink).get("public.items") or {}) == items(pg), CATCH_UP_S, "the snapshot")
    refused = run_cdc("reset", files.config, "--job", files.job)
    assert refused.returncode == 2 and "runs in the daemon" in refused.stderr
    assert daemon.terminate(10.0) == 0
    assert files.checkpoints() and pg.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    unconfirmed = run_cdc("reset", files.config, "--job", files.job)
    assert unconfirmed.returncode == 2 and "confirm with --yes" in unconfirmed.stderr
    done = run_cdc("reset", files.config, "--job", files.job, "--yes")
    assert done.returncode == 0, done.stderr
    assert f"dropped replication slot {slot}" in done.stdout and f"dropped publication {publication}" in done.stdout
    assert not pg.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    assert not pg.query("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
    assert files.checkpoints() == [] and not (files.state_dir / f"{files.job}.snapshot.json").exists()


# ---------------------------------------------------------------- TLS


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DisposablePostgres, Path]]:
    """A private PostgreSQL with ssl=on and a certificate for 127.0.0.1 signed by a throwaway CA."""
    certs = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cdc-test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=certs)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
             "-out", "server.csr", cwd=certs)
    (certs / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=certs)
    with DisposablePostgres() as server:
        data = server.data_dir
        owner = data.stat()
        for name in ("server.crt", "server.key"):
            target = data / name
            target.write_bytes((certs / name).read_bytes())
            target.chmod(0o600)
            os.chown(target, owner.st_uid, owner.st_gid)
        with server.connect() as conn:
            conn.autocommit = True
            conn.execute("ALTER SYSTEM SET ssl = on")
            conn.execute("SELECT pg_reload_conf()")
        server.create_database("tls")
        yield server, certs


def test_tls_verify_full_against_a_self_signed_server(
    tls_server: tuple[DisposablePostgres, Path], tmp_path: Path, daemons: Daemons
) -> None:
    """sslmode: verify-full with the CA as sslrootcert streams over TLS; a wrong CA fails in one line."""
    server, certs = tls_server
    dsn = server.dsn("tls")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ITEMS_DDL)
    files = JobFiles(tmp_path / "job")
    doc = job_config(files, dsn=dsn, slot=f"tls_{secrets.token_hex(4)}", publication="tls_pub")
    doc["jobs"][0]["source"].update(sslmode="verify-full", sslrootcert=str(certs / "ca.crt"))
    write_config(files, doc)
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started", timeout=30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (1, 'over tls', 1, 1.5, now()), (2, 'b', 2, 2.5, now())")
        ssl_in_use = conn.execute(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.backend_type = 'walsender'").fetchone()
    assert ssl_in_use == (True,)
    wait_until(lambda: len(rebuild(files.sink).get("public.items") or {}) == 2, CATCH_UP_S, "the rows over TLS")
    assert daemon.terminate(10.0) == 0

    wrong = tmp_path / "other-ca.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
             "-keyout", tmp_path / "other.key", "-out", wrong, cwd=tmp_path)
    doc["jobs"][0]["source"]["sslrootcert"] = str(wrong)
    # The job has a checkpoint: an unreachable source would be retried (test_a_restart_during_a_source_
    # outage_...), but a certificate that fails verification never heals, so it stops the job at once.
    assert files.checkpoints()
    write_config(files, doc)
    failed = run_cdc("run", files.config)
    assert failed.returncode == 2, failed.stderr[-3000:]
    lines = [line for line in failed.stderr.splitlines() if line.startswith("cdc: error:")]
    assert len(lines) == 1 and "Traceback" not in failed.stderr and "job_retrying" not in failed.stderr
    assert "certificate verify failed" in lines[0] and "fix the job's TLS settings (sslmode, sslrootcert" in lines[0]


def test_files_cdc_writes_are_private_by_default(pg: PgDatabase, tmp_path: Path, daemons: Daemons) -> None:
    """With the default umask 0077 every file and directory the daemon creates under state_dir and the file
    sink's path has no group or other bits, whatever the umask cdc was started with."""
    pg.execute(ITEMS_DDL)
    files = JobFiles(tmp_path / "job")
    write_config(files, job_config(files, dsn=pg.dsn, slot=pg.name("slot"), publication=pg.name("pub")))
    daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
    daemon.wait_for("replication_started")
    writer = ChangeWriter(pg, seed=5)
    try:
        for _ in range(5):
            writer.transaction()
    finally:
        writer.close()
    wait_until(lambda: rebuild(files.sink).get("public.items") == items(pg), CATCH_UP_S, "the sink to catch up")
    assert daemon.terminate(10.0) == 0
    written = [files.state_dir, *files.state_dir.rglob("*"), files.sink, *files.sink.rglob("*")]
    assert any(p.name.endswith(".jsonl") for p in written) and any(p.name.endswith(".checkpoint.json")
                                                                   for p in written)
    loose = {str(p): oct(p.stat().st_mode & 0o777) for p in written if p.stat().st_mode & 0o077}
    assert loose == {}


def test_a_restart_during_a_source_outage_retries_until_the_source_is_back(
        tmp_path: Path, daemons: Daemons) -> None:
    """cdc restarted while PostgreSQL is down (a host reboot during a short outage): a job that streamed
    before keeps retrying, /healthz names it as retrying (then failing, 503), and once PostgreSQL is back on
    the same port the job catches up and the sink equals the source."""
    with DisposablePostgres() as server:  # private: this test stops and starts it
        server.create_database("shop")
        source = PgDatabase(server=server, dbname="shop", dsn=server.dsn("shop"))
        source.execute(ITEMS_DDL)
        files = JobFiles(tmp_path / "job")
        doc = job_config(files, dsn=source.dsn, slot="cdc_outage", publication="cdc_outage", connect_timeout_s=2)
        doc["http"] = {"listen": "127.0.0.1:0"}
        doc["jobs"][0]["retry"]["unhealthy_after_s"] = 1
        write_config(files, doc)
        daemon = daemons.new(files.config, tmp_path / "cdc.log").start()
        daemon.wait_for("replication_started")
        writer = ChangeWriter(source, seed=11)
        try:
            for _ in range(10):
                writer.transaction()
        finally:
            writer.close()
        wait_until(lambda: rebuild(files.sink).get("public.items") == items(source), CATCH_UP_S, "the first catch-up")
        assert daemon.terminate(10.0) == 0

        assert server._pg_ctl("stop", "-m", "fast").returncode == 0
        daemon.start()
        address = endpoint_of(files, daemon)

        def retried_twice() -> bool:
            retries = [e for e in daemon.events() if e.get("event") == "job_retrying"]
            assert daemon.process is not None and daemon.process.poll() is None, daemon.tail()
            return len(retries) >= 2 and all(e["error_class"] == "SourceUnreachableError" for e in retries)

        wait_until(retried_twice, 30, "the job to retry the unreachable source")
        health = json.loads(get(address, "/healthz")[1])
        assert "cannot connect" in health["retrying"][files.job], health
        wait_until(lambda: get(address, "/healthz")[0] == 503, 10, "/healthz to turn 503 after unhealthy_after_s")
        assert json.loads(get(address, "/healthz")[1])["failing"][files.job].startswith("retrying: ")

        assert server._try_start() is None  # the same port: the job's DSN is unchanged
        writer = ChangeWriter(source, seed=12)
        writer.next_id = 10_000
        try:
            for _ in range(10):
                writer.transaction()
        finally:
            writer.close()
        wait_until(lambda: rebuild(files.sink).get("public.items") == items(source), CATCH_UP_S,
                   "the catch-up after the outage")
        wait_until(lambda: get(address, "/healthz")[0] == 200, 10, "/healthz to turn 200 again")
        assert daemon.terminate(10.0) == 0
        log = daemon.stderr(all_runs=True)
        assert "job_failed" not in log and "Traceback" not in log, daemon.tail()
