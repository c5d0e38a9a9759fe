"""docker-compose.yml and config/compose.yaml agree: every host the cdc config names is a Compose
service listening on that port, every ${VAR} is set, and the servers are set up for CDC.

No Docker engine runs here, so the stack is checked by its structure, not by running it."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from cdc.config import SinkConfig, SourceConfig, parse_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CONFIG_PATH = ROOT / COMPOSE["configs"]["cdc-config"]["file"]
CONFIG_TEXT = CONFIG_PATH.read_text()
CONFIG: dict[str, Any] = yaml.safe_load(CONFIG_TEXT)


def container_ports(service: str) -> set[int]:
    """The container side of every ``ports:`` mapping of `service`."""
    return {int(str(p).rsplit(":", 1)[-1]) for p in SERVICES[service].get("ports", [])}


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    assert parts.hostname is not None, url
    return parts.hostname, parts.port or default_port


def test_every_server_the_config_names_is_a_service_on_that_port() -> None:
    """Source DSNs, Kafka brokers and the MinIO endpoint point at Compose services and their ports."""
    named: set[str] = set()
    for job in CONFIG["jobs"]:
        source = job["source"]
        host, port = host_port(source["dsn"], {"postgres": 5432, "mysql": 3306}[source["type"]])
        assert host in SERVICES and port in container_ports(host), (job["name"], host, port)
        named.add(host)
        for sink in job["sinks"]:
            if sink["type"] == "kafka":
                host, port = host_port(sink["brokers"], 9092)
                env = SERVICES[host]["environment"]
                assert f"PLAINTEXT://:{port}" in env["KAFKA_LISTENERS"]
                assert f"PLAINTEXT://{host}:{port}" in env["KAFKA_ADVERTISED_LISTENERS"]
            elif sink["type"] == "delta":
                host, port = host_port(sink["storage_options"]["AWS_ENDPOINT_URL"], 80)
                assert f":{port}" in SERVICES[host]["command"] and port in container_ports(host)
                bucket = urlsplit(sink["path"]).netloc
                assert f"mb -p lake/{bucket}" in " ".join(SERVICES["minio-init"]["entrypoint"])
            else:
                raise AssertionError(f"unexpected sink type {sink['type']} in {CONFIG_PATH}")
            named.add(host)
    assert named == {"postgres", "mysql", "kafka", "minio"}
    assert named <= set(SERVICES["cdc"]["depends_on"])


def test_every_variable_of_the_config_is_set_for_the_cdc_service() -> None:
    """Each ${VAR} of config/compose.yaml is in the cdc service's environment; no password is inline."""
    used = {name for text in _strings(CONFIG) for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)}
    assert used and used <= set(SERVICES["cdc"]["environment"])
    env = SERVICES["cdc"]["environment"]
    assert env["MINIO_ROOT_USER"] == SERVICES["minio"]["environment"]["MINIO_ROOT_USER"]
    assert env["MINIO_ROOT_PASSWORD"] == SERVICES["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    assert env["MYSQL_PASSWORD"] == SERVICES["mysql"]["environment"]["MYSQL_PASSWORD"]
    assert env["PGPASSWORD"] == SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"]
    for secret in set(env.values()):
        assert f":{secret}@" not in CONFIG_TEXT


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_servers_are_set_up_for_cdc() -> None:
    """PostgreSQL has wal_level=logical; MySQL a ROW binlog with FULL image and metadata and GTIDs."""
    assert "wal_level=logical" in SERVICES["postgres"]["command"]
    mysql = SERVICES["mysql"]["command"]
    for flag in ("--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL",
                 "--gtid-mode=ON", "--enforce-gtid-consistency=ON"):
        assert flag in mysql
    assert SERVICES["mysql"]["image"].startswith("mysql:8")
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft


def test_the_http_endpoint_is_published_and_checked() -> None:
    """cdc's HTTP port is published on the host's loopback and the healthcheck asks /healthz on it."""
    _, port = CONFIG["http"]["listen"].rsplit(":", 1)
    assert f"127.0.0.1:{port}:{port}" in SERVICES["cdc"]["ports"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(SERVICES["cdc"]["healthcheck"]["test"])
    grace = SERVICES["cdc"]["stop_grace_period"]
    assert float(grace.rstrip("s")) > CONFIG["shutdown_grace_s"]


def _known_types(annotation: Any) -> set[str]:
    """The `type` values a discriminated union of config models accepts today."""
    union = typing.get_args(annotation)[0]
    models = typing.get_args(union) or (union,)
    return {arg for m in models for arg in typing.get_args(m.model_fields["type"].annotation)}


def test_the_config_validates_with_the_types_that_exist() -> None:
    """config/compose.yaml passes `cdc validate` for every job and sink whose type is built already."""
    sources, sinks = _known_types(SourceConfig), _known_types(SinkConfig)
    document = dict(CONFIG)
    document["jobs"] = [
        {**job, "sinks": [s for s in job["sinks"] if s["type"] in sinks]}
        for job in CONFIG["jobs"] if job["source"]["type"] in sources
    ]
    assert document["jobs"] and all(job["sinks"] for job in document["jobs"])
    env = dict.fromkeys(SERVICES["cdc"]["environment"], "x")
    config = parse_config(yaml.safe_dump(document), str(CONFIG_PATH), env)
    assert config.http is not None and config.http.address() == ("0.0.0.0", 8765)
