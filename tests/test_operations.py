"""Operations without servers: metrics, job health, the HTTP endpoint, status, reload/reset guards,
secrets and TLS config keys, and the shutdown grace period (cdc/metrics.py, health.py, http.py,
status.py, control.py, daemon.py)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console

from cdc import daemon as daemon_module
from cdc import metrics
from cdc.checkpoints import Checkpoint, FileCheckpointStore
from cdc.config import Config, JobConfig, parse_config
from cdc.control import ControlError, reload_daemon, reset_job
from cdc.errors import ConfigError, SinkWriteError
from cdc.events import ChangeBatch, Position, TableChanges, Transaction
from cdc.health import JobBoard, JobState, JobStatus
from cdc.http import HttpEndpoint
from cdc.pipeline import JobStats, Pipeline
from cdc.source import BatchPolicy
from cdc.status import collect, render
from connectors.postgres.types import PgRowCodec
from tests.test_pipeline import ORDERS, FakeSink, FakeSource, MemoryCheckpoints, batch


def job_name() -> str:
    """A fresh job name: the metrics registry is process-wide, so every test counts its own job."""
    return f"t{secrets.token_hex(4)}"


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def mixed_batch(commit: int, ts: datetime) -> ChangeBatch:
    """One transaction at `commit`: two inserts, one update, one delete."""
    tx = Transaction(commit, commit, ts)
    changes: list[Any] = [("c", tx, 1, 1, None, (b"1",)), ("c", tx, 2, 2, None, (b"2",)),
                          ("u", tx, 3, 3, None, (b"1",)), ("d", tx, 4, 4, (b"2",), None)]
    return ChangeBatch(Position(commit), [TableChanges(ORDERS, PgRowCodec(ORDERS.columns), changes)], 400)


def run_pipeline(job: str, source: FakeSource, sinks: list[FakeSink]) -> Pipeline:
    pipeline = Pipeline(job, source, list(sinks), BatchPolicy(), MemoryCheckpoints())
    asyncio.run(asyncio.wait_for(pipeline.run(asyncio.Event()), timeout=5))
    return pipeline


# ---------------------------------------------------------------- metrics


def test_pipeline_counts_events_bytes_and_batches_per_sink_and_op() -> None:
    """Every sink's events and bytes are counted by op, its batches counted and its writes timed."""
    job = job_name()
    ts = datetime.now(UTC) - timedelta(seconds=30)
    run_pipeline(job, FakeSource([mixed_batch(10, ts), mixed_batch(20, ts)]), [FakeSink("a"), FakeSink("b")])
    for sink in ("a", "b"):
        assert sample("cdc_events_total", job=job, sink=sink, op="c") == 4
        assert sample("cdc_events_total", job=job, sink=sink, op="u") == 2
        assert sample("cdc_events_total", job=job, sink=sink, op="d") == 2
        assert sample("cdc_bytes_total", job=job, sink=sink, op="c") == pytest.approx(400)
        assert sample("cdc_bytes_total", job=job, sink=sink, op="d") == pytest.approx(200)
        assert sample("cdc_batches_total", job=job, sink=sink) == 2
        assert sample("cdc_sink_write_seconds_count", job=job, sink=sink) == 2
        lag = sample("cdc_end_to_end_lag_seconds", job=job, sink=sink)
        assert lag is not None and 29 <= lag < 120
    assert sample("cdc_buffer_batches", job=job) == 0


def test_snapshot_blocks_are_counted_without_materialising_rows() -> None:
    """A columnar snapshot block counts as op r events and gives the lag its time, rows untouched."""
    import pyarrow as pa

    from cdc.events import RowBlock

    ts = datetime(2026, 1, 2, tzinfo=UTC)
    raw = pa.table({"0": pa.array([b"1", b"2", b"3"], pa.binary())})
    block = RowBlock(Transaction(0, 50, ts), 1, 0, raw, lambda columns: list(columns))
    changes = TableChanges(ORDERS, PgRowCodec(ORDERS.columns), block=block)
    b = ChangeBatch(Position(50, 3), [changes, TableChanges(ORDERS, PgRowCodec(ORDERS.columns),
                                                            mixed_batch(60, ts).tables[0].changes)])
    assert metrics.batch_ops(b) == {"r": 3, "c": 2, "u": 1, "d": 1}
    assert metrics.last_commit_ts(b) == ts
    assert changes._changes is None  # still columnar: the Delta path stays fast


def test_lag_is_zero_once_a_heartbeat_is_durable() -> None:
    """A durable heartbeat batch means the sink holds everything: the end-to-end lag drops to 0."""
    job = job_name()
    old = datetime.now(UTC) - timedelta(hours=1)
    run_pipeline(job, FakeSource([mixed_batch(10, old), batch(20, events=0)]), [FakeSink("s")])
    assert sample("cdc_end_to_end_lag_seconds", job=job, sink="s") == 0


def test_lag_grows_while_a_sink_is_stalled() -> None:
    """The lag is computed when scraped: with no new durable event it keeps growing."""
    job = job_name()
    metrics.LAG.durable(job, "s", datetime.now(UTC) - timedelta(seconds=5))
    first = sample("cdc_end_to_end_lag_seconds", job=job, sink="s")
    time.sleep(0.05)
    second = sample("cdc_end_to_end_lag_seconds", job=job, sink="s")
    assert first is not None and second is not None and second > first >= 5
    metrics.LAG.forget(job)
    assert sample("cdc_end_to_end_lag_seconds", job=job, sink="s") is None


def test_failed_writes_are_counted_by_error_class() -> None:
    """A failing sink write counts in cdc_sink_write_errors_total with the error's class."""
    job = job_name()
    with pytest.raises(SinkWriteError):
        run_pipeline(job, FakeSource([batch(10), batch(20)]), [FakeSink("s", fail_on=2)])
    assert sample("cdc_sink_write_errors_total", job=job, sink="s", error_class="SinkWriteError") == 1
    assert sample("cdc_batches_total", job=job, sink="s") == 1


def test_buffer_fill_follows_the_buffer() -> None:
    """The buffer gauges show batches, bytes and the fill ratio against the job's limits."""
    job = job_name()
    gauges = metrics.BufferGauges(job, max_batches=4, max_bytes=1000)
    gauges.set(1, 800)
    assert sample("cdc_buffer_fill_ratio", job=job) == pytest.approx(0.8)
    gauges.set(3, 100)
    assert sample("cdc_buffer_fill_ratio", job=job) == pytest.approx(0.75)
    assert sample("cdc_buffer_bytes", job=job) == 100


def test_source_functions_are_plain_labelled_children() -> None:
    """What a source or sink calls: metrics.snapshot_rows(job, table).inc(n), source_seconds_behind(...).set()."""
    job = job_name()
    metrics.snapshot_rows(job, "shop.orders").inc(500)
    metrics.snapshot_chunks(job, "shop.orders").inc()
    metrics.source_seconds_behind(job).set(3.5)
    metrics.source_lag_bytes(job).set(1 << 20)
    assert sample("cdc_snapshot_rows_total", job=job, table="shop.orders") == 500
    assert sample("cdc_snapshot_chunks_total", job=job, table="shop.orders") == 1
    assert sample("cdc_source_seconds_behind", job=job) == 3.5
    assert sample("cdc_source_lag_bytes", job=job) == 1 << 20


# ---------------------------------------------------------------- health


class _Run:
    """Stands for a Pipeline where JobStatus only reads `stats` and `source`."""

    def __init__(self) -> None:
        self.stats = JobStats()
        self.source = object()


def status_with_run(unhealthy_after_s: float = 10.0) -> tuple[JobStatus, _Run]:
    status = JobStatus(job_name(), "postgres", unhealthy_after_s)
    run = _Run()
    status.run_started(run)  # type: ignore[arg-type]
    return status, run


def test_job_runs_once_its_source_streams() -> None:
    """starting -> running when the source started; healthy and up throughout."""
    status, run = status_with_run()
    status.refresh()
    assert status.state is JobState.STARTING and status.healthy()
    run.stats.streaming = True
    status.refresh()
    assert status.state is JobState.RUNNING
    assert sample("cdc_job_up", job=status.name) == 1


def test_retrying_job_turns_unhealthy_after_its_budget_and_recovers_with_a_batch() -> None:
    """Failing longer than unhealthy_after_s is unhealthy; the first durable batch after makes it healthy."""
    status, run = status_with_run(unhealthy_after_s=5.0)
    run.stats.streaming = True
    status.refresh()
    status.run_failed("job x: sink down", "SinkWriteError", final=False)
    assert status.failing_since is not None
    start = status.failing_since
    assert status.healthy(start + 4.9) and not status.healthy(start + 5.1)
    board = JobBoard({status.name: status})
    status.failing_since = start - 6
    assert [s.name for s in board.failing()] == [status.name]
    again = _Run()
    status.run_started(again)  # type: ignore[arg-type]
    again.stats.streaming = True
    status.refresh()
    assert status.state is JobState.RETRYING  # streaming again, but nothing durable yet
    again.stats.last_batch_at = time.monotonic()
    status.refresh()
    assert status.state is JobState.RUNNING and status.healthy() and board.failing() == []


def test_a_failed_job_is_unhealthy() -> None:
    """A job stopped by a non-retryable error makes /healthz fail at once."""
    status, _ = status_with_run(unhealthy_after_s=1000)
    status.run_failed("job x: wal_level is not logical", "SourceSetupError", final=True)
    assert status.state is JobState.FAILED and not status.healthy()


# ---------------------------------------------------------------- HTTP endpoint


def test_endpoint_routes() -> None:
    """/healthz and /readyz say 200 or 503 naming the job; /metrics is Prometheus text; unknown paths 404."""
    status, run = status_with_run()
    board = JobBoard({status.name: status})
    endpoint = HttpEndpoint(board, lambda: {"pid": 1})
    code, _, body = endpoint.respond("GET", "/healthz")
    assert code == 200 and orjson.loads(body)["status"] == "ok"
    code, _, body = endpoint.respond("GET", "/readyz")
    assert code == 503 and status.name in orjson.loads(body)["not_ready"]
    run.stats.streaming = True
    assert endpoint.respond("GET", "/readyz")[0] == 200
    status.run_failed("job x: broken", "SourceSetupError", final=True)
    code, _, body = endpoint.respond("GET", "/healthz")
    assert code == 503 and orjson.loads(body)["failing"] == {status.name: "failed: job x: broken"}
    code, ctype, body = endpoint.respond("GET", "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    assert f'cdc_job_healthy{{job="{status.name}"}} 0.0' in body.decode()
    doc = orjson.loads(endpoint.respond("GET", "/status")[2])
    assert doc["pid"] == 1 and doc["jobs"][status.name]["state"] == "failed"
    assert endpoint.respond("GET", "/nope")[0] == 404
    assert endpoint.respond("POST", "/healthz")[0] == 405


def test_endpoint_serves_http_on_a_socket() -> None:
    """The asyncio server answers real HTTP/1.1 requests on the bound port (port 0 picks one)."""
    from cdc.config import HttpConfig

    async def go() -> tuple[bytes, bytes]:
        endpoint = HttpEndpoint(JobBoard())
        address = await endpoint.start(HttpConfig(listen="127.0.0.1:0"))
        host, port = address.rsplit(":", 1)
        try:
            replies = []
            for request in (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"garbage\r\n\r\n"):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(request)
                replies.append(await asyncio.wait_for(reader.read(), 5))
                writer.close()
            return replies[0], replies[1]
        finally:
            await endpoint.close()

    ok, bad = asyncio.run(go())
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
    assert ok.endswith(b'"status": "ok",\n  "failing": {},\n  "retrying": {}\n}\n')
    assert bad.startswith(b"HTTP/1.1 400 ")


def test_endpoint_refuses_a_busy_port_with_one_line() -> None:
    """A listen address already in use is a ConfigError naming http.listen."""
    from cdc.config import HttpConfig

    async def go() -> None:
        first = HttpEndpoint(JobBoard())
        address = await first.start(HttpConfig(listen="127.0.0.1:0"))
        try:
            with pytest.raises(ConfigError, match=rf"http.listen {address}: cannot listen"):
                await HttpEndpoint(JobBoard()).start(HttpConfig(listen=address))
        finally:
            await first.close()

    asyncio.run(go())


# ---------------------------------------------------------------- config: http, secrets, TLS


def config_text(source_extra: str = "", top: str = "") -> str:
    return f"""
{top}
jobs:
  - name: j
    source:
      type: postgres
      slot: s
      publication: p
{source_extra}
    sinks: [{{type: file, path: /tmp/x}}]
"""


def test_http_is_off_by_default_and_listens_on_localhost_when_enabled() -> None:
    """No http key: no endpoint; `http: {}` binds 127.0.0.1:8765; bad addresses name the line."""
    dsn = "      dsn: postgresql://u@h/db"
    assert parse_config(config_text(dsn), "c.yaml", {}).http is None
    cfg = parse_config(config_text(dsn, "http: {}"), "c.yaml", {})
    assert cfg.http is not None and cfg.http.address() == ("127.0.0.1", 8765)
    cfg = parse_config(config_text(dsn, 'http: {listen: "[::1]:9000"}'), "c.yaml", {})
    assert cfg.http is not None and cfg.http.address() == ("::1", 9000)
    with pytest.raises(ConfigError, match=r"c.yaml:2: http.listen: .*is not host:port"):
        parse_config(config_text(dsn, "http: {listen: localhost}"), "c.yaml", {})


def test_dsn_and_password_from_files(tmp_path: Path) -> None:
    """dsn_file and password_file fill the DSN and password; neither shows in repr."""
    (tmp_path / "dsn").write_text("postgresql://cdc@db:5432/shop\n")
    (tmp_path / "pw").write_text("s3cr3t-pw\n")
    extra = f"      dsn_file: {tmp_path / 'dsn'}\n      password_file: {tmp_path / 'pw'}"
    cfg = parse_config(config_text(extra), "c.yaml", {})
    source = cfg.jobs[0].source
    info = conninfo_to_dict(source.conninfo())
    assert info["password"] == "s3cr3t-pw" and info["host"] == "db" and info["dbname"] == "shop"
    assert "s3cr3t-pw" not in repr(cfg) and "s3cr3t-pw" not in str(cfg)


def test_secret_file_errors_name_the_line(tmp_path: Path) -> None:
    """A missing dsn_file, or dsn and dsn_file together, is one line naming the file and line."""
    with pytest.raises(ConfigError, match=r"c.yaml:5: jobs\[0\].source: Value error, dsn_file /nope: cannot read"):
        parse_config(config_text("      dsn_file: /nope"), "c.yaml", {})
    both = f"      dsn: postgresql://u@h/db\n      dsn_file: {tmp_path}"
    with pytest.raises(ConfigError, match="set either dsn or dsn_file, not both"):
        parse_config(config_text(both), "c.yaml", {})


def test_tls_keys_go_into_the_connection_string(tmp_path: Path) -> None:
    """sslmode, sslrootcert, sslcert, sslkey override the DSN's; certificate files must exist."""
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("x")
    extra = (f"      dsn: postgresql://u@h/db?sslmode=prefer\n      sslmode: verify-full\n"
             f"      sslrootcert: {tmp_path / 'ca.crt'}\n      sslcert: {tmp_path / 'client.crt'}\n"
             f"      sslkey: {tmp_path / 'client.key'}")
    info = conninfo_to_dict(parse_config(config_text(extra), "c.yaml", {}).jobs[0].source.conninfo())
    assert info["sslmode"] == "verify-full" and info["sslrootcert"] == str(tmp_path / "ca.crt")
    assert info["sslcert"] == str(tmp_path / "client.crt") and info["sslkey"] == str(tmp_path / "client.key")
    missing = "      dsn: postgresql://u@h/db\n      sslrootcert: /no/ca.crt"
    with pytest.raises(ConfigError, match=r"sslrootcert: Value error, /no/ca.crt: no such file"):
        parse_config(config_text(missing), "c.yaml", {})


# ---------------------------------------------------------------- status, reload, reset


def file_config(tmp_path: Path, password: str = "pw") -> Config:
    text = config_text(f"      dsn: postgresql://u:{password}@127.0.0.1:1/db", f"state_dir: {tmp_path / 'state'}")
    return parse_config(text, "c.yaml", {})


def test_status_without_a_daemon_reads_checkpoints_and_snapshot_progress(tmp_path: Path) -> None:
    """`cdc status` shows saved positions (as LSNs) and snapshot progress when no daemon runs."""
    cfg = file_config(tmp_path, password="hunter2-secret")
    FileCheckpointStore(cfg.state_dir).save("j", Checkpoint(Position(0x1_0000_00A0), {"file": Position(0x1_0000_00A0)}))
    (cfg.state_dir / "j.snapshot.json").write_bytes(orjson.dumps(
        {"tables": {"public.a": {"status": "running", "chunks": [[1, 0, 10], [2, 10, None]], "done": [1], "rows": 7},
                    "public.b": {"status": "done", "chunks": [[1, 0, None]], "done": [1], "rows": 3}}}))
    doc = collect(cfg, list(cfg.jobs))
    job = doc["jobs"]["j"]
    assert doc["daemon"] is None and job["state"] == "not running"
    assert job["checkpoint"] == {"source": {"commit": 0x1_0000_00A0}, "sinks": {"file": {"commit": 0x1_0000_00A0}}}
    assert job["snapshot"]["public.a"] == {"status": "running", "chunks_done": 1, "chunks": 2, "rows": 7}
    console = Console(record=True, width=200)
    render(doc, console)
    text = console.export_text()
    assert "1/A0" in text and "public.a 1/2 chunks, 7 rows" in text and "public.b done (3 rows)" in text
    assert "hunter2-secret" not in text and "hunter2-secret" not in orjson.dumps(doc).decode()


def test_reload_without_a_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    """`cdc reload` with no live daemon on the state dir is one clear error."""
    with pytest.raises(ControlError, match="no daemon runs on state_dir"):
        reload_daemon(file_config(tmp_path))


def test_reset_needs_confirmation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --yes and without a terminal, reset refuses and changes nothing."""
    cfg = file_config(tmp_path)
    FileCheckpointStore(cfg.state_dir).save("j", Checkpoint(Position(5)))
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(ControlError, match="confirm with --yes"):
        reset_job(cfg, cfg.jobs[0], yes=False)
    assert (cfg.state_dir / "j.checkpoint.json").exists()


# ---------------------------------------------------------------- shutdown grace


class _HangingSink(FakeSink):
    """A sink whose second write never ends (a stuck network call)."""

    async def write(self, b: ChangeBatch) -> None:
        if self.written:
            await asyncio.Event().wait()
        await super().write(b)


class _EndlessSource(FakeSource):
    async def batches(self, policy: BatchPolicy, stop: asyncio.Event) -> AsyncIterator[ChangeBatch]:
        commit = 0
        while not stop.is_set():
            commit += 10
            yield batch(commit)
            await asyncio.sleep(0.01)


def run_daemon_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: FakeSink,
                    grace_s: float) -> tuple[int, float]:
    cfg = file_config(tmp_path).model_copy(update={"shutdown_grace_s": grace_s})

    def build(job: JobConfig, checkpoints: Any, state_dir: Path) -> Pipeline:
        return Pipeline(job.name, _EndlessSource([]), [sink], BatchPolicy(), MemoryCheckpoints())

    monkeypatch.setattr(daemon_module, "build_pipeline", build)
    d = daemon_module.Daemon(cfg, list(cfg.jobs))

    async def go() -> tuple[int, float]:
        task = asyncio.create_task(d.run())
        await asyncio.sleep(0.3)
        started = time.monotonic()
        d._on_signal(__import__("signal").SIGTERM)
        code = await asyncio.wait_for(task, grace_s + 5)
        return code, time.monotonic() - started

    return asyncio.run(go())


def test_sigterm_drains_and_exits_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop with healthy sinks drains the in-flight batch and exits 0 well within the grace."""
    sink = FakeSink("s", delay=0.05)
    code, took = run_daemon_with(tmp_path, monkeypatch, sink, grace_s=5.0)
    assert code == 0 and took < 5.0
    assert sink.closed == 1 and len(sink.written) >= 2
    assert not (tmp_path / "state" / daemon_module.DAEMON_FILE).exists()


def test_sigterm_gives_up_after_the_grace_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sink stuck in a write is cancelled once shutdown_grace_s has passed; the exit code is 1."""
    sink = _HangingSink("s")
    code, took = run_daemon_with(tmp_path, monkeypatch, sink, grace_s=0.5)
    assert code == 1 and 0.5 <= took < 3.0
    assert sink.closed == 1


# ---------------------------------------------------------------- redaction


def test_secrets_of_a_config_include_dsn_passwords(tmp_path: Path) -> None:
    """Every SecretStr of the config is found, and the password inside a DSN on its own."""
    from cdc import redaction

    cfg = file_config(tmp_path, password="pa%40ss-word")
    found = redaction.secrets_of(cfg)
    assert {"pa%40ss-word", "pa@ss-word", "postgresql://u:pa%40ss-word@127.0.0.1:1/db"} <= found


def test_log_processor_masks_registered_secrets() -> None:
    """A secret quoted by a driver's error text is masked in the log event, nested values included."""
    from structlog.testing import CapturingLogger

    from cdc import redaction

    secret = f"s-{secrets.token_hex(6)}"
    redaction.register([secret, "ab"])
    event = redaction.redact_processor(CapturingLogger(), "error", {
        "event": "job_failed", "error": f'missing "=" after "password={secret}"', "nested": {"x": [secret]}})
    assert secret not in repr(event) and event["error"] == 'missing "=" after "password=***"'
    assert redaction.redact("ab stays: too short to register") == "ab stays: too short to register"


# ---------------------------------------------------------------- reload


def two_jobs_yaml(state: Path, *, b_wait_ms: int = 500, with_c: bool = False, broken: bool = False) -> str:
    jobs = [("a", 500), ("b", b_wait_ms)] + ([("c", 500)] if with_c else [])
    body = "".join(f"""
  - name: {name}
    source: {{type: postgres, dsn: "postgresql://u@127.0.0.1:1/db", slot: s_{name}, publication: p_{name}}}
    sinks: [{{type: file, path: /tmp/x}}]
    pipeline: {{max_wait_ms: {wait}}}
""" for name, wait in jobs)
    return f"state_dir: {state}\nshutdown_grace_s: 5\njobs:{'  - [' if broken else body}"


def test_sighup_restarts_changed_jobs_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload starts a new job, restarts a changed one and leaves the unchanged one running; a broken
    config changes nothing and is reported in the daemon file."""
    path = tmp_path / "cdc.yaml"
    path.write_text(two_jobs_yaml(tmp_path / "state"))
    cfg = parse_config(path.read_text(), str(path), {})
    built: list[str] = []

    def build(job: JobConfig, checkpoints: Any, state_dir: Path) -> Pipeline:
        built.append(job.name)
        return Pipeline(job.name, _EndlessSource([]), [FakeSink("s")], BatchPolicy(), MemoryCheckpoints())

    monkeypatch.setattr(daemon_module, "build_pipeline", build)
    d = daemon_module.Daemon(cfg, list(cfg.jobs), config_path=path)
    daemon_file = tmp_path / "state" / daemon_module.DAEMON_FILE

    async def reload_with(text: str) -> dict[str, Any]:
        path.write_text(text)
        before = orjson.loads(daemon_file.read_bytes())["reloads"]
        d._on_reload()
        for _ in range(100):
            await asyncio.sleep(0.05)
            doc: dict[str, Any] = orjson.loads(daemon_file.read_bytes())
            if doc["reloads"] > before:
                return doc
        raise AssertionError("the daemon did not reload")

    async def go() -> tuple[int, dict[str, Any], dict[str, Any]]:
        task = asyncio.create_task(d.run())
        await asyncio.sleep(0.2)
        changed = await reload_with(two_jobs_yaml(tmp_path / "state", b_wait_ms=100, with_c=True))
        broken = await reload_with(two_jobs_yaml(tmp_path / "state", broken=True))
        d._on_signal(__import__("signal").SIGTERM)
        return await asyncio.wait_for(task, 10), changed, broken

    code, changed, broken = asyncio.run(go())
    assert code == 0
    assert changed["last_reload"] == {"ok": True, "started": ["c"], "stopped": [], "restarted": ["b"],
                                      "unchanged": ["a"]}
    assert changed["jobs"] == ["a", "b", "c"]
    assert sorted(built) == ["a", "b", "b", "c"]
    assert broken["last_reload"]["ok"] is False and "invalid YAML" in broken["last_reload"]["error"]
    assert broken["jobs"] == ["a", "b", "c"]


# ---------------------------------------------------------------- supervision


Build = Any  # (job, checkpoints, state_dir) -> Pipeline


def supervised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build: Build, *, jobs: int = 1,
               backoff_s: float = 0.05) -> daemon_module.Daemon:
    """A daemon over `jobs` copies of `file_config`'s job (named j, j1, ...) whose pipelines `build` makes."""
    from cdc.config import RetryConfig

    cfg = file_config(tmp_path)
    retry = RetryConfig(initial_backoff_s=backoff_s, max_backoff_s=backoff_s, unhealthy_after_s=0)
    job_list = [cfg.jobs[0].model_copy(update={"name": f"j{i}" if i else "j", "retry": retry}) for i in range(jobs)]
    monkeypatch.setattr(daemon_module, "build_pipeline", build)
    return daemon_module.Daemon(cfg.model_copy(update={"jobs": job_list}), job_list)


def one_batch_then_stop(job: JobConfig, sink: FakeSink) -> Pipeline:
    return Pipeline(job.name, FakeSource([batch(10)], stop_after=1), [sink], BatchPolicy(), MemoryCheckpoints())


def test_a_retryable_failure_at_first_start_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retryable error before the job ever streamed (two jobs racing to create one target table) is retried
    with backoff like any later failure: the job streams on its second attempt and cdc exits 0."""
    sinks: list[FakeSink] = []

    class RacingSink(FakeSink):
        async def open(self) -> None:
            await super().open()
            if not sinks[:-1]:
                raise SinkWriteError('sink s: cannot open: duplicate key value violates "pg_type_typname_nsp_index"')

    def build(job: JobConfig, checkpoints: Any, state_dir: Path) -> Pipeline:
        sinks.append(RacingSink("s"))
        return one_batch_then_stop(job, sinks[-1])

    d = supervised(tmp_path, monkeypatch, build)
    assert asyncio.run(asyncio.wait_for(d.run(), 10)) == 0
    outcome = d.outcomes["j"]
    assert outcome.error is None and outcome.attempts == 2
    assert [len(s.written) for s in sinks] == [0, 1]


@pytest.mark.parametrize("streamed_before", [False, True], ids=["first-start", "has-checkpoint"])
def test_an_unreachable_source_is_a_mistake_only_for_a_job_that_never_streamed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed_before: bool) -> None:
    """An unreachable source stops a job without a checkpoint (exit 2), but a job that streamed before
    (a checkpoint in the store: cdc restarted during an outage) retries it until the source is back."""
    from cdc.errors import SourceUnreachableError

    if streamed_before:
        FileCheckpointStore(tmp_path / "state").save("j", Checkpoint(Position(5), {"s": Position(5)}))
    attempts: list[int] = []

    class DownSource(FakeSource):
        async def start(self, resume_from: Position | None) -> None:
            attempts.append(1)
            if len(attempts) <= 2:
                raise SourceUnreachableError("postgres source: cannot connect: Connection refused")

    def build(job: JobConfig, checkpoints: Any, state_dir: Path) -> Pipeline:
        return Pipeline(job.name, DownSource([batch(10)], stop_after=1), [FakeSink("s")], BatchPolicy(),
                        MemoryCheckpoints())

    d = supervised(tmp_path, monkeypatch, build)
    code = asyncio.run(asyncio.wait_for(d.run(), 10))
    if streamed_before:
        assert (code, len(attempts), d.outcomes["j"].error) == (0, 3, None)
    else:
        assert (code, len(attempts), type(d.outcomes["j"].error)) == (2, 1, SourceUnreachableError)


def test_a_job_that_fails_while_being_built_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while building a job's pipeline is that job's failure (logged, exit code), never a silent
    exit 0, and the other job runs on."""
    def build(job: JobConfig, checkpoints: Any, state_dir: Path) -> Pipeline:
        if job.name == "j":
            raise ValueError("the driver refused the connection string")
        return one_batch_then_stop(job, FakeSink("s"))

    d = supervised(tmp_path, monkeypatch, build, jobs=2)
    assert asyncio.run(asyncio.wait_for(d.run(), 10)) == 1
    error = d.outcomes["j"].error
    assert error is not None and "internal error ValueError: the driver refused" in str(error)
    assert d.outcomes["j1"].error is None and d.outcomes["j1"].events == 1
    assert d.board.jobs["j"].state is JobState.FAILED


def test_a_failed_job_does_not_make_the_daemon_spin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With one job failed for good and one idle job running, the daemon waits without burning CPU
    (< 0.5 s of process CPU time over 3 s)."""
    import psutil

    from cdc.errors import SourceSetupError

    class MisconfiguredSource(FakeSource):
        async def start(self, resume_from: Position | None) -> None:
            raise SourceSetupError("postgres source: wal_level is replica")

    def build(job: JobConfig, checkpoints: Any, state_dir: Path) -> Pipeline:
        source = MisconfiguredSource([]) if job.name == "j" else FakeSource([], wait_for_stop=True)
        return Pipeline(job.name, source, [FakeSink("s")], BatchPolicy(), MemoryCheckpoints())

    d = supervised(tmp_path, monkeypatch, build, jobs=2)
    process = psutil.Process()

    async def go() -> tuple[int, float]:
        task = asyncio.create_task(d.run())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if d.outcomes["j"].error is not None:
                break
        before = process.cpu_times()
        await asyncio.sleep(3.0)
        after = process.cpu_times()
        d._on_signal(__import__("signal").SIGTERM)
        code = await asyncio.wait_for(task, 10)
        return code, (after.user - before.user) + (after.system - before.system)

    code, cpu_s = asyncio.run(go())
    assert d.outcomes["j"].error is not None and d.board.jobs["j1"].state is not JobState.FAILED
    assert code == 2
    assert cpu_s < 0.5, f"the daemon used {cpu_s:.2f} s of CPU in 3 s while idle"


def test_a_secret_in_a_job_error_never_reaches_healthz_or_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job error quoting a DSN password (a driver echoing a malformed connection string) is stored
    redacted: /healthz, /status (and so `cdc status --json`) and the outcome never show the secret."""
    from cdc import redaction
    from cdc.errors import SourceUnreachableError

    secret = f"pw-{secrets.token_hex(6)}"
    redaction.register([secret])

    class LeakySource(FakeSource):
        async def start(self, resume_from: Position | None) -> None:
            raise SourceUnreachableError(f'postgres source: cannot connect: invalid percent-encoded token: "{secret}"')

    def build(job: JobConfig, checkpoints: Any, state_dir: Path) -> Pipeline:
        return Pipeline(job.name, LeakySource([]), [FakeSink("s")], BatchPolicy(), MemoryCheckpoints())

    d = supervised(tmp_path, monkeypatch, build)
    assert asyncio.run(asyncio.wait_for(d.run(), 10)) == 2
    endpoint = HttpEndpoint(d.board, d._status)
    bodies = [endpoint.respond("GET", path)[2].decode() for path in ("/healthz", "/status")]
    assert all("invalid percent-encoded token" in body for body in bodies)
    assert all(secret not in body for body in bodies), bodies


class PanicException(BaseException):
    """Like deltalake's (pyo3's) PanicException: a BaseException, not an Exception."""


def test_a_base_exception_in_a_job_is_its_internal_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sink write raising a BaseException that is no cancellation (a Rust panic) fails that job as an
    internal error, logged with its traceback, exit code 1; the other job runs on."""
    from structlog.testing import capture_logs

    class PanickingSink(FakeSink):
        async def write(self, b: ChangeBatch) -> None:
            raise PanicException("NaiveDate + TimeDelta overflowed")

    def build(job: JobConfig, checkpoints: Any, state_dir: Path) -> Pipeline:
        return one_batch_then_stop(job, PanickingSink("s") if job.name == "j" else FakeSink("s"))

    d = supervised(tmp_path, monkeypatch, build, jobs=2)
    with capture_logs() as logs:
        code = asyncio.run(asyncio.wait_for(d.run(), 10))
    assert code == 1
    error = d.outcomes["j"].error
    assert error is not None and "internal error PanicException: NaiveDate + TimeDelta overflowed" in str(error)
    assert d.outcomes["j"].attempts == 1 and d.board.jobs["j"].state is JobState.FAILED
    assert d.outcomes["j1"].error is None and d.outcomes["j1"].events == 1
    crashed = [e for e in logs if e["event"] == "job_crashed"]
    assert len(crashed) == 1 and crashed[0]["job"] == "j" and crashed[0]["error_class"] == "PanicException"
    assert crashed[0]["exc_info"] is True
    assert [e["job"] for e in logs if e["event"] == "job_failed"] == ["j"]


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit], ids=["KeyboardInterrupt", "SystemExit"])
def test_keyboard_interrupt_and_system_exit_keep_their_meaning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: type[BaseException]) -> None:
    """KeyboardInterrupt and SystemExit raised inside a job are not turned into a job failure: they end the
    daemon's run as they would any program."""
    class StoppingSink(FakeSink):
        async def write(self, b: ChangeBatch) -> None:
            raise raised()

    def build(job: JobConfig, checkpoints: Any, state_dir: Path) -> Pipeline:
        return one_batch_then_stop(job, StoppingSink("s"))

    d = supervised(tmp_path, monkeypatch, build)
    with pytest.raises(raised):
        asyncio.run(asyncio.wait_for(d.run(), 10))
    assert d.outcomes["j"].error is None


def test_no_asyncio_wait_for_in_the_daemon() -> None:
    """cdc/, connectors/ and sinks/ never call ``asyncio.wait_for``, which on Python 3.11 can swallow a
    cancellation (docs: PITFALLS, cpython #86296); ``asyncio.timeout()`` cannot."""
    import ast

    root = Path(__file__).resolve().parent.parent
    found = []
    for path in sorted(p for d in ("cdc", "connectors", "sinks") for p in (root / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr == "wait_for" and isinstance(node.value, ast.Name)
                    and node.value.id == "asyncio"):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "asyncio":
                found.extend(f"{path.relative_to(root)}:{node.lineno}" for a in node.names if a.name == "wait_for")
    assert found == []


# ---------------------------------------------------------------- source connection errors


@pytest.mark.parametrize(("message", "expected"), [
    ('connection to server at "db", port 5432 failed: FATAL:  password authentication failed for user "cdc"',
     "SourceSetupError"),
    ('connection to server at "db", port 5432 failed: FATAL:  no pg_hba.conf entry for host "10.0.0.7", user '
     '"cdc", database "shop", no encryption', "SourceSetupError"),
    ('connection to server at "db", port 5432 failed: fe_sendauth: no password supplied', "SourceSetupError"),
    ('connection to server at "db", port 5432 failed: FATAL:  role "cdc" does not exist', "SourceSetupError"),
    ('connection to server at "db", port 5432 failed: SSL error: certificate verify failed', "SourceSetupError"),
    ('connection to server at "db", port 5432 failed: server does not support SSL, but SSL was required',
     "SourceSetupError"),
    ('connection to server at "db", port 5432 failed: Connection refused\n\tIs the server running on that host '
     'and accepting TCP/IP connections?', "SourceUnreachableError"),
    ("failed to resolve host 'db.invalid': [Errno -2] Name or service not known", "SourceUnreachableError"),
    ("connection timeout expired", "SourceUnreachableError"),
    ('connection to server at "db", port 5432 failed: FATAL:  the database system is starting up',
     "SourceUnreachableError"),
    ('connection to server at "db", port 5432 failed: SSL SYSCALL error: EOF detected', "SourceUnreachableError"),
])
def test_a_refused_login_or_tls_handshake_is_a_setup_mistake(message: str, expected: str) -> None:
    """Refused logins and TLS handshakes are SourceSetupError (never retried); refused connections, unknown
    hosts, timeouts and a starting server stay retryable; the message names the job."""
    import psycopg

    from connectors.postgres.catalog import connect_error

    err = connect_error("job shop: postgres db:5432/shop: cannot connect", psycopg.OperationalError(message))
    assert type(err).__name__ == expected and err.retryable is (expected != "SourceSetupError")
    assert str(err).startswith("job shop: postgres db:5432/shop: cannot connect: ")


def test_incremental_snapshot_errors_name_the_job_and_the_table() -> None:
    """An incremental snapshot that cannot reach its source fails with one retryable line naming the job,
    the server and the table (not a bare driver error)."""
    from cdc.errors import SourceConnectionError
    from cdc.sandbox import free_port
    from connectors.postgres.snapshot import Chunk, IncrementalSnapshot, SnapshotTable

    table = SnapshotTable(ORDERS, PgRowCodec(ORDERS.columns), [Chunk(0, 0, None)], 0)
    where = "job shop: postgres 127.0.0.1:1/shop"
    snapshot = IncrementalSnapshot(f"host=127.0.0.1 port={free_port()} dbname=shop user=cdc", [table], 2, where)
    with pytest.raises(SourceConnectionError) as caught:
        asyncio.run(snapshot.run())
    assert str(caught.value).startswith(f"{where}: incremental snapshot of {table.name}: cannot connect: ")
