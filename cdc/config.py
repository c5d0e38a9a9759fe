"""Configuration: one YAML file, many jobs, validated by pydantic.

Every key is documented in README.md ("Configuration reference"). Unknown keys are
rejected; every error names the file, the line and the key. ``${VAR}`` and
``${VAR:-default}`` in string values are replaced from the environment before
validation. DSNs are `SecretStr`: redacted in ``repr`` and never logged.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from cdc.errors import ConfigError

_NAME = r"^[a-z0-9_]{1,63}$"
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TablesConfig(_Strict):
    """Which tables a job captures: ``schema.table`` glob patterns."""

    include: list[str] = Field(default_factory=lambda: ["public.*"], min_length=1)
    exclude: list[str] = Field(default_factory=list)


def _read_secret_files(data: object, keys: tuple[str, ...]) -> object:
    """Fill each `key` from `key_file` (the file's content without its trailing newline)."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for key in keys:
        path = out.get(f"{key}_file")
        if path is None:
            continue
        if out.get(key) is not None:
            raise ValueError(f"set either {key} or {key}_file, not both")
        try:
            out[key] = Path(str(path)).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as err:
            raise ValueError(f"{key}_file {path}: cannot read: {err.strerror}") from err
    return out


def _existing_file(value: str | None) -> str | None:
    if value is not None and value != "system" and not Path(value).is_file():
        raise ValueError(f"{value}: no such file")
    return value


_QUOTED = re.compile(r'"([^"]*)"')
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _secret_spans(dsn: str) -> list[str]:
    """The parts of a (possibly malformed) DSN that may hold a password: a URL's userinfo,
    and everything after a ``password`` keyword."""
    spans = []
    scheme = dsn.find("://")
    if scheme >= 0 and "@" in dsn[scheme:]:
        spans.append(dsn[scheme + 3:dsn.rindex("@")])
    keyword = dsn.find("password")
    if keyword >= 0:
        spans.append(dsn[keyword + len("password"):])
    return [s for s in spans if s]


def _masked(message: str, dsn: str) -> str:
    """libpq's `message` about `dsn` with every quoted fragment that overlaps a password replaced by ***."""
    spans = _secret_spans(dsn)

    def mask(m: re.Match[str]) -> str:
        text = m.group(1)
        if text == "=" or not any(text in span or span in text for span in spans):
            return m.group(0)
        return '"***"'

    return _QUOTED.sub(mask, message)


def _libpq_dsn(value: SecretStr) -> SecretStr:
    """Refuse a DSN libpq cannot parse (a raw ``%``, an unknown ``?option``, an unterminated quote),
    naming the problem without quoting the password."""
    text = value.get_secret_value()
    try:
        conninfo_to_dict(text)
    except psycopg.Error as err:
        problem = _masked(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__, text)
        hint = " (write a % in a password as %25)" if "percent" in problem else ""
        raise ValueError(f"not a valid PostgreSQL connection string: {problem}{hint}") from None
    return value


class PostgresSourceConfig(_Strict):
    """The PostgreSQL source; secrets and TLS keys are documented in docs/operations.md."""

    type: Literal["postgres"]
    dsn: SecretStr
    dsn_file: Path | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    sslrootcert: Annotated[str | None, AfterValidator(_existing_file)] = None
    sslcert: Annotated[str | None, AfterValidator(_existing_file)] = None
    sslkey: Annotated[str | None, AfterValidator(_existing_file)] = None
    slot: str = Field(pattern=_NAME)
    publication: str = Field(pattern=_NAME)
    status_interval_s: float = Field(default=10.0, gt=0)
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    heartbeat_message_interval_s: float | None = Field(default=None, gt=0)
    connect_timeout_s: int = Field(default=10, ge=1)
    streaming: bool = True
    messages: list[str] = Field(default_factory=list)
    on_slot_lost: Literal["fail", "recreate"] = "fail"
    lag_interval_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: object) -> object:
        return _read_secret_files(data, ("dsn", "password"))

    @field_validator("dsn")
    @classmethod
    def _valid_dsn(cls, value: SecretStr) -> SecretStr:
        return _libpq_dsn(value)

    def conninfo(self) -> str:
        """The libpq connection string: `dsn` with `password` and the ssl* keys applied (a secret)."""
        extra = {k: v for k, v in (("sslmode", self.sslmode), ("sslrootcert", self.sslrootcert),
                                   ("sslcert", self.sslcert), ("sslkey", self.sslkey)) if v is not None}
        if self.password is not None:
            extra["password"] = self.password.get_secret_value()
        dsn = self.dsn.get_secret_value()
        return make_conninfo(dsn, **extra) if extra else dsn


class MySqlSourceConfig(_Strict):
    """A MySQL or MariaDB server's row binlog (docs/mysql.md).

    The server is either `dsn` (``mysql://user[:password]@host[:port][/database]``) or
    `host`, `port` and `user`; `password` may be given apart from the DSN.
    """

    type: Literal["mysql"]
    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = Field(min_length=1)
    password: SecretStr = SecretStr("")

    @model_validator(mode="before")
    @classmethod
    def _split_dsn(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "dsn" not in data:
            return data
        out = dict(data)
        dsn = out.pop("dsn")
        text = dsn.get_secret_value() if isinstance(dsn, SecretStr) else str(dsn)
        clash = sorted(k for k in ("host", "port", "user") if k in out)
        if clash:
            raise ValueError(f"give either dsn or {', '.join(clash)}, not both")
        shape = "dsn must look like mysql://user[:password]@host[:port][/database]"
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            # urlsplit's message can quote a piece of the password: say what is expected instead.
            raise ValueError(f"{shape} (the port must be a number; write / ? # @ : in a password "
                             "percent-encoded)") from None
        if parts.scheme not in ("mysql", "mariadb") or not parts.hostname or not parts.username:
            raise ValueError(shape)
        if parts.query or parts.fragment:
            raise ValueError(f"{shape}: it takes no ?options or #fragment (set them as keys of the source; "
                             "write ? and # in a password percent-encoded)")
        if _PERCENT.search(parts.username) or (parts.password is not None and _PERCENT.search(parts.password)):
            raise ValueError(f"{shape}: a % in the user or password must be written %25")
        out.update(host=parts.hostname, user=unquote(parts.username))
        if port is not None:
            out["port"] = port
        if parts.password is not None:
            if "password" in out:
                raise ValueError("give the password in dsn or in password, not both")
            out["password"] = unquote(parts.password)
        return out
    server_id: int = Field(ge=1, le=4294967295)
    connect_timeout_s: int = Field(default=10, ge=1)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    zero_dates: Literal["null", "fail"] = "null"
    snapshot_method: Literal["auto", "consistent", "flush", "watermark"] = "auto"
    #: The older spelling: ``flush`` is ``snapshot_method: flush``, ``none`` is ``auto``.
    snapshot_lock: Literal["none", "flush"] = "none"
    on_binlog_gone: Literal["fail", "resnapshot"] = "fail"
    resume_by: Literal["gtid", "position"] = "gtid"

    @model_validator(mode="before")
    @classmethod
    def _snapshot_lock_alias(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("snapshot_lock") != "flush":
            return data
        method = data.get("snapshot_method", "auto")
        if method not in ("auto", "flush"):
            raise ValueError(f"snapshot_lock: flush contradicts snapshot_method: {method}; give snapshot_method only")
        return {**data, "snapshot_method": "flush"}


class FileSinkConfig(_Strict):
    type: Literal["file"]
    name: str | None = None
    path: Path
    max_segment_bytes: ByteSize = ByteSize(64 << 20)
    fsync: bool = True


SourceConfig = Annotated[PostgresSourceConfig | MySqlSourceConfig, Field(discriminator="type")]
#: Placeholders a topic (subject, stream key) template may use.
TOPIC_PLACEHOLDERS = frozenset({"prefix", "source", "database", "schema", "table"})
_TOPIC_PREFIX = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$"


def _check_template(value: str, allowed: frozenset[str], what: str) -> str:
    try:
        names = {name for _, name, _, _ in Formatter().parse(value) if name is not None}
    except ValueError as err:
        raise ValueError(f"{what} {value!r} is not a valid template: {err}") from err
    unknown = sorted(n for n in names if n not in allowed)
    if unknown:
        raise ValueError(
            f"{what} {value!r} uses unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
            f"known: {', '.join('{' + n + '}' for n in sorted(allowed))}"
        )
    return value


class _BrokerSinkConfig(_Strict):
    """What the Kafka, NATS JetStream and Redis Streams sinks share (docs/eventlog-sinks.md)."""

    name: str | None = None
    topic_prefix: str | None = Field(default=None, pattern=_TOPIC_PREFIX)
    topic: str = "{prefix}.{schema}.{table}"
    transaction_topic: str = "{prefix}.transaction"
    tombstones: bool = False
    transaction_metadata: bool = False
    schemas: bool = False
    write_timeout_s: float = Field(default=120.0, gt=0)
    retry_backoff_s: float = Field(default=0.5, gt=0)
    retry_max_backoff_s: float = Field(default=5.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("topic", "transaction_topic")
    @classmethod
    def _topic_template(cls, value: str) -> str:
        return _check_template(value, TOPIC_PLACEHOLDERS, "topic template")


def _librdkafka_text(value: object) -> object:
    """librdkafka takes every property as text: YAML numbers and booleans become strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


#: librdkafka properties that `options` may not set: a dedicated key sets them, or the
#: sink's guarantees depend on them.
KAFKA_RESERVED_OPTIONS: dict[str, str] = {
    "bootstrap.servers": "brokers", "metadata.broker.list": "brokers",
    "compression.type": "compression", "compression.codec": "compression",
    "max.in.flight.requests.per.connection": "max_in_flight", "max.in.flight": "max_in_flight",
    "linger.ms": "linger_ms", "queue.buffering.max.ms": "linger_ms", "batch.size": "batch_bytes",
    "queue.buffering.max.messages": "max_queued_messages", "client.id": "client_id",
    "message.timeout.ms": "write_timeout_s", "delivery.timeout.ms": "write_timeout_s",
    "enable.idempotence": "(always true)", "acks": "(always all)", "request.required.acks": "(always all)",
    "transactional.id": "(not supported)",
}


class KafkaSinkConfig(_BrokerSinkConfig):
    type: Literal["kafka"]
    brokers: str = Field(min_length=1)
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    max_in_flight: int = Field(default=5, ge=1, le=5)
    linger_ms: int = Field(default=5, ge=0)
    batch_bytes: ByteSize = ByteSize(1 << 20)
    max_queued_messages: int = Field(default=100_000, ge=1)
    client_id: str | None = None
    options: dict[str, Annotated[SecretStr, BeforeValidator(_librdkafka_text)]] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _no_reserved_options(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key in value:
            if key in KAFKA_RESERVED_OPTIONS:
                raise ValueError(f"options may not set {key!r}: use {KAFKA_RESERVED_OPTIONS[key]}")
        return value


def _server_list(value: object) -> object:
    return [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value


class NatsSinkConfig(_BrokerSinkConfig):
    type: Literal["nats"]
    servers: Annotated[list[str], BeforeValidator(_server_list)] = Field(min_length=1)
    stream: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,255}$")
    create_stream: bool = True
    storage: Literal["file", "memory"] = "file"
    replicas: int = Field(default=1, ge=1, le=5)
    duplicate_window_s: float = Field(default=120.0, gt=0)
    max_pending_acks: int = Field(default=1000, ge=1, le=100_000)
    ack_timeout_s: float = Field(default=5.0, gt=0)
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds_file: Path | None = None


class RedisSinkConfig(_BrokerSinkConfig):
    type: Literal["redis"]
    url: SecretStr
    max_len: int | None = Field(default=None, ge=1)
    position_key: str = "{prefix}:cdc-position:{sink}"

    @field_validator("position_key")
    @classmethod
    def _position_key_template(cls, value: str) -> str:
        return _check_template(value, frozenset({"prefix", "source", "sink"}), "position_key template")


class DeltaTableConfig(_Strict):
    """Per-table settings of a Delta Lake sink (`tables: {"schema.table": {...}}`)."""

    mode: Literal["changelog", "mirror"] | None = None
    partition_by: list[str] | None = None


class DeltaSinkConfig(_Strict):
    """A Delta Lake sink (docs/delta.md): one Delta table per source table under `path`."""

    type: Literal["delta"]
    name: str | None = None
    path: str = Field(min_length=1)
    mode: Literal["changelog", "mirror"] = "mirror"
    partition_by: list[str] = Field(default_factory=list)
    tables: dict[str, DeltaTableConfig] = Field(default_factory=dict)
    storage_options: dict[str, SecretStr] = Field(default_factory=dict)
    target_file_size: ByteSize | None = None
    compact_interval_s: float | None = Field(default=None, gt=0)
    vacuum_interval_s: float | None = Field(default=None, gt=0)
    vacuum_retention_hours: int = Field(default=168, ge=0)
    max_commit_retries: int = Field(default=10, ge=0)

    @field_validator("tables")
    @classmethod
    def _qualified_names(cls, value: dict[str, DeltaTableConfig]) -> dict[str, DeltaTableConfig]:
        for name in value:
            if name.count(".") != 1 or name.startswith(".") or name.endswith("."):
                raise ValueError(f"table {name!r} must be written schema.table")
        return value


class _WarehouseSinkConfig(_Strict):
    """What the DuckDB and PostgreSQL warehouse sinks share (docs/warehouse.md)."""

    name: str | None = None
    target_schema: str = Field(default="{schema}", min_length=1)
    table_name: str = Field(default="{table}", min_length=1)
    soft_deletes: bool = False
    primary_key: bool = True

    @field_validator("target_schema", "table_name")
    @classmethod
    def _name_template(cls, value: str) -> str:
        return _check_template(value, frozenset({"source", "schema", "table"}), "target name template")


class DuckDBSinkConfig(_WarehouseSinkConfig):
    type: Literal["duckdb"]
    path: Path
    memory_limit: str | None = Field(default="256MB", pattern=r"^\s*\d+(\.\d+)?\s*[A-Za-z]*\s*$")
    threads: int | None = Field(default=None, ge=1)


class PostgresSinkConfig(_WarehouseSinkConfig):
    """PostgreSQL as a warehouse target (not the `PostgresSourceConfig` of the source union)."""

    type: Literal["postgres"]
    dsn: SecretStr
    connect_timeout_s: int = Field(default=10, ge=1)

    @field_validator("dsn")
    @classmethod
    def _valid_dsn(cls, value: SecretStr) -> SecretStr:
        return _libpq_dsn(value)


SinkConfig = Annotated[
    FileSinkConfig | KafkaSinkConfig | NatsSinkConfig | RedisSinkConfig | DeltaSinkConfig | DuckDBSinkConfig
    | PostgresSinkConfig,
    Field(discriminator="type"),
]


class PipelineConfig(_Strict):
    max_batch_events: int = Field(default=20_000, ge=1)
    max_batch_bytes: ByteSize = ByteSize(64 << 20)
    max_wait_ms: int = Field(default=500, ge=1)
    max_buffered_batches: int = Field(default=2, ge=1)
    max_buffered_bytes: ByteSize = ByteSize(256 << 20)


class RetryConfig(_Strict):
    initial_backoff_s: float = Field(default=1.0, gt=0)
    max_backoff_s: float = Field(default=60.0, gt=0)
    max_attempts: int | None = Field(default=None, ge=1)
    #: /healthz turns 503 once a job has failed (and retried) this long without a durable batch.
    unhealthy_after_s: float = Field(default=60.0, ge=0)


class JobConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    source: SourceConfig
    tables: TablesConfig = Field(default_factory=TablesConfig)
    snapshot: Literal["initial", "never", "initial_only"] = "initial"
    snapshot_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=64)
    snapshot_chunk_rows: int = Field(default=50_000, ge=1)
    sinks: list[SinkConfig] = Field(min_length=1)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)

    @model_validator(mode="after")
    def _check(self) -> JobConfig:
        names = self.sink_names()
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sink names must be unique within a job: {', '.join(dupes)} repeats")
        return self

    def sink_names(self) -> list[str]:
        """Each sink's name: its `name`, else its type, numbered when a type repeats."""
        counts: dict[str, int] = {}
        for s in self.sinks:
            counts[s.type] = counts.get(s.type, 0) + 1
        seen: dict[str, int] = {}
        out = []
        for s in self.sinks:
            if s.name is not None:
                out.append(s.name)
                continue
            seen[s.type] = seen.get(s.type, 0) + 1
            out.append(s.type if counts[s.type] == 1 else f"{s.type}-{seen[s.type]}")
        return out


class HttpConfig(_Strict):
    """The daemon's HTTP endpoint (docs/operations.md): /healthz, /readyz, /metrics, /status."""

    #: ``host:port`` (``[v6]:port``); port 0 picks a free port (written to the daemon file).
    listen: str = "127.0.0.1:8765"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8765, [::1]:8765, 0.0.0.0:8765)")
        return value

    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def _umask_text(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'write the umask as quoted octal digits, e.g. umask: "0027" (not {value})')
    return value


class Config(_Strict):
    state_dir: Path = Path("./.cdc-state")
    #: The process umask of every command that writes (state, spool, file sink, DuckDB, Delta):
    #: octal, as a string. The default keeps what cdc writes to its user (files 0600, dirs 0700).
    umask: Annotated[str, BeforeValidator(_umask_text)] = Field(default="0077", pattern=r"^0?[0-7]{3}$")
    http: HttpConfig | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    shutdown_grace_s: float = Field(default=10.0, gt=0)
    jobs: list[JobConfig] = Field(min_length=1)

    @field_validator("umask")
    @classmethod
    def _owner_keeps_access(cls, value: str) -> str:
        if int(value, 8) & 0o700:
            raise ValueError(f"umask {value} takes cdc's own access to its files away; keep the first digit 0")
        return value

    def umask_bits(self) -> int:
        return int(self.umask, 8)

    @model_validator(mode="after")
    def _unique_jobs(self) -> Config:
        names = [j.name for j in self.jobs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"job names must be unique: {', '.join(dupes)} repeats")
        return self


def load_config(path: Path, environ: dict[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file; raise `ConfigError` naming file and line."""
    env = dict(os.environ) if environ is None else environ
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err.strerror}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); a config file is "
                          "YAML text: is this the right file?") from None
    return parse_config(text, str(path), env)


#: How many values a config may expand to (YAML aliases repeat a node wherever they are used),
#: and how deep it may nest: beyond these the file is refused (an alias bomb, not a config).
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 64


def parse_config(text: str, where: str, env: dict[str, str]) -> Config:
    """Parse, interpolate and validate config `text` (from `where`); raise `ConfigError` naming the line.

    YAML anchors and aliases are allowed (to share a sink or retry block), but the
    document may expand to at most `MAX_CONFIG_VALUES` values nested `MAX_CONFIG_DEPTH`
    deep: a "billion laughs" file is refused at once instead of hanging.
    """
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{where}: the file is empty; it needs at least a 'jobs:' list")
        lines: dict[tuple[str | int, ...], int] = {}
        _index(node, (), lines, where, env, [0])
        data = loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        if isinstance(err, yaml.reader.ReaderError):  # a NUL or control character, or not UTF-8
            line = f":{text[:err.position].count(chr(10)) + 1}"
            problem = f"character #x{err.character:04x} is not allowed in a config file" \
                if isinstance(err.character, int) else str(err.reason)
        else:
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}{line}: invalid YAML: {problem}") from err
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}:1: the top level must be a mapping with a 'jobs:' list")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        errors = err.errors()
        # A misspelt key shows as "missing" plus "unknown": name the unknown one.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        raise ConfigError(_describe(first, lines, where, len(errors), data)) from err


def _index(node: yaml.Node, path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int], where: str,
           env: dict[str, str], count: list[int]) -> None:
    """Record the line of every key and list item; interpolate ``${VAR}`` in string scalars.

    `count` holds the number of values visited so far (aliases expanded): past
    `MAX_CONFIG_VALUES`, or deeper than `MAX_CONFIG_DEPTH`, the file is refused.
    """
    count[0] += 1
    if count[0] > MAX_CONFIG_VALUES or len(path) > MAX_CONFIG_DEPTH:
        what = f"more than {MAX_CONFIG_VALUES} values" if count[0] > MAX_CONFIG_VALUES \
            else f"deeper than {MAX_CONFIG_DEPTH} levels"
        raise ConfigError(f"{where}:{node.start_mark.line + 1}: the config expands to {what} (YAML aliases "
                          "repeating aliases, or an alias inside itself); write the repeated parts out")
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark)
            if key in seen:
                raise ConfigError(f"{where}:{k.start_mark.line + 1}: key '{key}' appears twice in the same mapping")
            seen.add(key)
            _index(v, (*path, key), lines, where, env, count)
            lines[(*path, key)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), lines, where, env, count)
    elif isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str" and "${" in node.value:
        node.value = _interpolate(node.value, env, f"{where}:{node.start_mark.line + 1}")


def _interpolate(value: str, env: dict[str, str], where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set (use ${{{name}:-default}} for a default)")

    return _INTERPOLATION.sub(sub, value)


def _describe(error: Any, lines: dict[tuple[str | int, ...], int], where: str, count: int, data: Any) -> str:
    loc: tuple[str | int, ...] = tuple(error["loc"])
    # Discriminated unions add the tag ('postgres', 'file') to the path: drop it.
    tag_at = {"source": 3, "sinks": 4}.get(str(loc[2])) if len(loc) > 3 and loc[0] == "jobs" else None
    clean = tuple(p for i, p in enumerate(loc) if i != tag_at)
    line = next((lines[clean[:n]] for n in range(len(clean), -1, -1) if clean[:n] in lines), 1)
    def dotted(path: tuple[str | int, ...]) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")

    key = dotted(clean) or "(top level)"
    if error["type"] == "extra_forbidden":
        msg = f"unknown key '{clean[-1]}' in {dotted(clean[:-1]) or 'the top level'}"
    elif error["type"] == "missing":
        msg = f"{key}: required key is missing"
    else:
        msg = f"{key}: {error['msg']}"
    more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
    job = ""
    if len(clean) > 2 and clean[0] == "jobs" and isinstance(clean[1], int):
        with contextlib.suppress(LookupError, TypeError, AttributeError):
            job = f" (job {data['jobs'][clean[1]]['name']})"
    return f"{where}:{line}: {msg}{job}{more}"


def iter_jobs(config: Config, only: list[str] | None) -> Iterator[JobConfig]:
    """The config's jobs, or only the named ones; unknown names are a `ConfigError`."""
    if only:
        known = {j.name for j in config.jobs}
        missing = [n for n in only if n not in known]
        if missing:
            raise ConfigError(f"no job named {', '.join(missing)} in the config (jobs: {', '.join(sorted(known))})")
    for job in config.jobs:
        if not only or job.name in only:
            yield job
