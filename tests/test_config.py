"""Tests of the YAML configuration: defaults, interpolation, and errors that name file, line and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from cdc.config import Config, iter_jobs, load_config, parse_config
from cdc.errors import ConfigError

SECRET = "s3cr3t-Pa55"

# Line numbers matter: the tests below point at them.
MINIMAL = """\
jobs:
  - name: shop
    source:
      type: postgres
      dsn: "postgresql://cdc:s3cr3t-Pa55@db:5432/shop"
      slot: cdc_shop
      publication: cdc_shop
    sinks:
      - type: file
        path: ./out
"""
#  line 1 jobs:, 2 name, 3 source:, 4 type, 5 dsn, 6 slot, 7 publication, 8 sinks:, 9 - type, 10 path


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    """Parse a config text as if read from 'cdc.yaml'."""
    return parse_config(text, "cdc.yaml", env or {})


def error(text: str, env: dict[str, str] | None = None) -> str:
    """The message of the ConfigError a config text raises."""
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return str(info.value)


def insert(text: str, after_line: int, line: str) -> str:
    """`text` with `line` inserted after line `after_line` (1-based)."""
    lines = text.splitlines(keepends=True)
    return "".join([*lines[:after_line], line + "\n", *lines[after_line:]])


# ---------------------------------------------------------------- valid configs


def test_minimal_config_has_documented_defaults() -> None:
    """A minimal job parses and gets the documented defaults."""
    cfg = parse(MINIMAL)
    assert cfg.state_dir == Path(".cdc-state")
    assert (cfg.log_level, cfg.log_format, cfg.shutdown_grace_s) == ("info", "auto", 10.0)
    (job,) = cfg.jobs
    assert job.name == "shop"
    assert job.snapshot == "initial"
    assert job.snapshot_workers >= 1 and job.snapshot_chunk_rows == 50_000
    assert job.tables.include == ["public.*"]
    assert job.tables.exclude == []
    src = job.source
    assert (src.type, src.slot, src.publication) == ("postgres", "cdc_shop", "cdc_shop")
    assert (src.status_interval_s, src.heartbeat_interval_s, src.connect_timeout_s) == (10.0, 10.0, 10)
    assert src.dsn.get_secret_value() == f"postgresql://cdc:{SECRET}@db:5432/shop"
    (sink,) = job.sinks
    assert (sink.type, sink.name, sink.path, sink.fsync) == ("file", None, Path("out"), True)
    assert sink.max_segment_bytes == 64 << 20
    p = job.pipeline  # the batch counts are being tuned: only the byte and time budgets are pinned
    assert (p.max_batch_bytes, p.max_wait_ms, p.max_buffered_bytes) == (64 << 20, 500, 256 << 20)
    assert (job.retry.initial_backoff_s, job.retry.max_backoff_s, job.retry.max_attempts) == (1.0, 60.0, None)


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    """load_config reads the file and interpolates from the given environment."""
    path = tmp_path / "cdc.yaml"
    path.write_text(MINIMAL.replace(SECRET, "${PW}"), encoding="utf-8")
    cfg = load_config(path, {"PW": "from-env"})
    assert "from-env" in cfg.jobs[0].source.dsn.get_secret_value()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config file that cannot be read raises ConfigError naming it."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path, {})


def test_byte_sizes_accept_units() -> None:
    """Byte sizes accept strings with units ('64MiB', '1 KB') as well as plain integers."""
    text = MINIMAL + "        max_segment_bytes: 1MiB\n" + (
        "    pipeline: {max_batch_bytes: 64MiB, max_buffered_bytes: 1 KB, max_batch_events: 10}\n"
    )
    job = parse(text).jobs[0]
    assert job.sinks[0].max_segment_bytes == 1 << 20
    assert job.pipeline.max_batch_bytes == 64 << 20
    assert job.pipeline.max_buffered_bytes == 1000
    assert job.pipeline.max_batch_events == 10


def test_sink_names_number_repeated_types() -> None:
    """Sinks are named by `name`, else by type, numbered when a type repeats."""
    one = parse(MINIMAL).jobs[0]
    assert one.sink_names() == ["file"]
    text = MINIMAL + "      - {type: file, path: ./b, name: audit}\n      - {type: file, path: ./c}\n"
    assert parse(text).jobs[0].sink_names() == ["file-1", "audit", "file-2"]


def test_sink_names_are_unique() -> None:
    """Generated sink names never collide with an explicit one (they key the checkpoints)."""
    text = MINIMAL + "      - {type: file, path: ./b, name: file-1}\n      - {type: file, path: ./c}\n"
    try:
        names = parse(text).jobs[0].sink_names()
    except ConfigError:
        return  # refusing such a config is fine too
    assert len(names) == len(set(names)), names


def test_explicit_sink_names_must_be_unique() -> None:
    """Two sinks with the same explicit name are refused."""
    text = MINIMAL + "        name: a\n      - {type: file, path: ./b, name: a}\n"
    assert "sink names must be unique" in error(text)


def test_iter_jobs_selects_by_name() -> None:
    """iter_jobs yields all jobs, or only the named ones; an unknown name is a ConfigError."""
    cfg = parse(MINIMAL)
    assert [j.name for j in iter_jobs(cfg, None)] == ["shop"]
    assert [j.name for j in iter_jobs(cfg, ["shop"])] == ["shop"]
    with pytest.raises(ConfigError, match="no job named nope"):
        list(iter_jobs(cfg, ["nope"]))


# ---------------------------------------------------------------- interpolation


def test_interpolates_environment_variables() -> None:
    """${VAR} takes the environment's value and ${VAR:-default} falls back to the default."""
    text = (MINIMAL.replace(SECRET, "${PW}").replace("slot: cdc_shop", "slot: ${SLOT:-cdc_default}")
            .replace("path: ./out", "path: ${OUT:-./x}/${JOB}"))
    job = parse(text, {"PW": "p@ss", "JOB": "shop"}).jobs[0]
    assert job.source.dsn.get_secret_value() == "postgresql://cdc:p@ss@db:5432/shop"
    assert job.source.slot == "cdc_default"
    assert job.sinks[0].path == Path("x/shop")
    job = parse(text, {"PW": "", "SLOT": "other", "OUT": "/data", "JOB": "j"}).jobs[0]
    assert job.source.dsn.get_secret_value() == "postgresql://cdc:@db:5432/shop"
    assert job.source.slot == "other"
    assert job.sinks[0].path == Path("/data/j")


def test_interpolated_numbers_are_validated() -> None:
    """An interpolated value is validated for the key's type like a literal one."""
    text = MINIMAL + "    pipeline:\n      max_wait_ms: ${WAIT:-250}\n"
    assert parse(text).jobs[0].pipeline.max_wait_ms == 250
    assert parse(text, {"WAIT": "40"}).jobs[0].pipeline.max_wait_ms == 40
    assert error(text, {"WAIT": "soon"}).startswith("cdc.yaml:12: jobs[0].pipeline.max_wait_ms:")


def test_missing_variable_names_file_line_and_variable() -> None:
    """A ${VAR} without default and not set raises ConfigError with file:line and the variable."""
    msg = error(MINIMAL.replace(SECRET, "${PGPASSWORD}"))
    assert msg.startswith("cdc.yaml:5: ")
    assert "PGPASSWORD" in msg


# ---------------------------------------------------------------- errors with lines


@pytest.mark.parametrize(
    ("after_line", "line", "key", "expected_line"),
    [
        (0, "colour: blue", "colour", 1),
        (2, "    colour: blue", "colour", 3),
        (7, "      colour: blue", "colour", 8),
        (10, "        colour: blue", "colour", 11),
        (10, "    pipeline:\n      max_wait_ms: 5\n      colour: blue", "colour", 13),
        (10, "    tables:\n      includes: [a.b]", "includes", 12),
        (10, "    retry: {colour: blue}", "colour", 11),
        (6, "      postgres: 1", "postgres", 7),
        (10, "        file: x", "file", 11),
    ],
    ids=["top", "job", "source", "sink", "pipeline", "tables", "retry", "source-key-named-postgres",
         "sink-key-named-file"],
)
def test_unknown_key_names_line_and_key(after_line: int, line: str, key: str, expected_line: int) -> None:
    """An unknown key anywhere is refused with file:LINE: pointing at the key, and its name."""
    msg = error(insert(MINIMAL, after_line, line))
    assert msg.startswith(f"cdc.yaml:{expected_line}: "), msg
    assert f"unknown key '{key}'" in msg


def test_unknown_key_in_second_job() -> None:
    """The line points into the right list item when several jobs are configured."""
    second = MINIMAL.replace("jobs:\n", "").replace("shop", "other").replace("        path: ./out\n",
                                                                               "        path: ./o\n        bogus: 1\n")
    msg = error(MINIMAL + second)
    assert msg.startswith("cdc.yaml:20: "), msg
    assert "unknown key 'bogus' in jobs[1].sinks[0]" in msg


@pytest.mark.parametrize(
    ("drop", "key", "expected_line"),
    [("      slot: cdc_shop\n", "jobs[0].source.slot", 3), ("    sinks:\n      - type: file\n        path: ./out\n",
                                                           "jobs[0].sinks", 2),
     ("        path: ./out\n", "jobs[0].sinks[0].path", 9)],
)
def test_missing_required_key(drop: str, key: str, expected_line: int) -> None:
    """A missing required key is named, at the line of the mapping that lacks it."""
    msg = error(MINIMAL.replace(drop, ""))
    assert msg.startswith(f"cdc.yaml:{expected_line}: {key}: required key is missing"), msg


def test_wrong_type_names_line_and_key() -> None:
    """A value of the wrong type is refused at its key's line."""
    msg = error(MINIMAL + "    pipeline:\n      max_batch_events: lots\n")
    assert msg.startswith("cdc.yaml:12: jobs[0].pipeline.max_batch_events: "), msg
    assert "integer" in msg
    msg = error(MINIMAL.replace("slot: cdc_shop", "slot: Bad-Slot"))
    assert msg.startswith("cdc.yaml:6: jobs[0].source.slot: "), msg


def test_unknown_source_type() -> None:
    """An unsupported source type is refused at the source's line."""
    msg = error(MINIMAL.replace("type: postgres", "type: oracle"))
    assert msg.startswith("cdc.yaml:3: jobs[0].source: "), msg
    assert "oracle" in msg


def test_several_problems_are_counted() -> None:
    """When several keys are wrong, the first is described and the others counted."""
    msg = error(insert(insert(MINIMAL, 2, "    colour: blue"), 0, "flavour: x"))
    assert "(and 1 more problem)" in msg


def test_duplicate_job_names() -> None:
    """Two jobs with the same name are refused, naming the name."""
    msg = error(MINIMAL + MINIMAL.replace("jobs:\n", ""))
    assert msg.startswith("cdc.yaml:")
    assert "job names must be unique: shop repeats" in msg


def test_snapshot_modes() -> None:
    """snapshot takes initial, never or initial_only; anything else names the allowed values."""
    for mode in ("initial", "never", "initial_only"):
        assert parse(insert(MINIMAL, 2, f"    snapshot: {mode}")).jobs[0].snapshot == mode
    msg = error(insert(MINIMAL, 2, "    snapshot: sometimes"))
    assert msg.startswith("cdc.yaml:3: jobs[0].snapshot: "), msg
    assert "'initial'" in msg


@pytest.mark.parametrize(
    ("text", "line"),
    [("jobs:\n  - name: [unclosed\n", 3), ("jobs:\n  - name: a\n   bad: indent\n", 3),
     ("jobs:\n\t- tab\n", 2), ("a: 1\n---\nb: 2\n", 2)],
)
def test_invalid_yaml_names_line(text: str, line: int) -> None:
    """Invalid YAML is a ConfigError with the line of the problem."""
    msg = error(text)
    assert msg.startswith(f"cdc.yaml:{line}: invalid YAML: "), msg


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n- b\n", "just text\n"])
def test_empty_or_not_a_mapping(text: str) -> None:
    """An empty file or a top level that is not a mapping is a clear ConfigError."""
    assert error(text).startswith("cdc.yaml")


def test_jobs_must_not_be_empty() -> None:
    """A config with an empty jobs list is refused."""
    assert error("jobs: []\n").startswith("cdc.yaml:1: jobs: ")


# ---------------------------------------------------------------- secrets


def test_dsn_is_secret_and_redacted() -> None:
    """The DSN is a SecretStr and never appears in repr or str of the config."""
    cfg = parse(MINIMAL)
    assert isinstance(cfg.jobs[0].source.dsn, SecretStr)
    assert SECRET not in repr(cfg)
    assert SECRET not in str(cfg)
    assert SECRET not in repr(cfg.jobs[0])
    assert SECRET not in str(cfg.model_dump())


@pytest.mark.parametrize(
    "text",
    [
        MINIMAL.replace("slot: cdc_shop", "slot: Bad-Slot"),
        insert(MINIMAL, 5, "      colour: blue"),
        MINIMAL.replace("type: postgres", "type: oracle"),
        insert(MINIMAL, 2, "    snapshot: sometimes"),
        MINIMAL.replace("publication: cdc_shop", "publication: [${NOPE}]"),
        MINIMAL.replace(SECRET, SECRET + "${NOPE}"),
        MINIMAL.replace("      slot: cdc_shop\n", ""),
        MINIMAL + MINIMAL.replace("jobs:\n", ""),
        MINIMAL.replace("shop\n", "shop\n  bad: [\n", 1),
    ],
    ids=["bad-slot", "unknown-key", "bad-type", "snapshot", "missing-var", "missing-var-in-dsn", "missing-key",
         "duplicate-job", "bad-yaml"],
)
def test_dsn_never_in_errors(text: str) -> None:
    """No ConfigError message carries the DSN's password."""
    assert SECRET not in error(text)
