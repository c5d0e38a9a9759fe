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


# ---------------------------------------------------------------- connection strings


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        (f"postgresql://cdc:{SECRET}%@db:5432/shop", "invalid percent-encoded token"),
        (f"postgresql://cdc:{SECRET}@db:5432/shop?colour=blue", 'invalid URI query parameter: "colour"'),
        (f"host=db password='{SECRET}", "unterminated quoted string"),
        (f"host=db password={SECRET} x", 'missing "=" after "***"'),
        (f"postgresql://cdc:{SECRET[:4]} {SECRET[4:]}@db/shop", "unexpected spaces"),
    ],
    ids=["raw-percent", "unknown-option", "unterminated-quote", "missing-equals", "space"],
)
@pytest.mark.parametrize("where", ["source", "sink"])
def test_malformed_postgres_dsn_is_refused_without_the_password(dsn: str, problem: str, where: str) -> None:
    """A DSN libpq cannot parse is a ConfigError naming the line, the key, the job and libpq's problem,
    never the password (nor a piece of it)."""
    text = MINIMAL
    if where == "source":
        text = text.replace('"postgresql://cdc:s3cr3t-Pa55@db:5432/shop"', repr(dsn).replace("\\'", "''"))
        key, line = "jobs[0].source.dsn", 5
    else:
        text = text.replace("      - type: file\n        path: ./out\n",
                            f"      - type: postgres\n        dsn: {dsn!r}\n")
        key, line = "jobs[0].sinks[0].dsn", 10
    msg = error(text)
    assert msg.startswith(f"cdc.yaml:{line}: {key}: Value error, not a valid PostgreSQL connection string: "), msg
    assert problem in msg and "(job shop)" in msg
    assert SECRET not in msg and SECRET[:4] not in msg and SECRET[4:] not in msg


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        (f"mysql://cdc:{SECRET}@db:3306/shop?ssl=1", "it takes no ?options"),
        (f"mysql://cdc:{SECRET}%@db:3306/shop", "must be written %25"),
        (f"mysql://cdc:{SECRET[:4]}/{SECRET[4:]}@db:3306/shop", "the port must be a number"),
    ],
    ids=["option", "raw-percent", "slash-in-password"],
)
def test_malformed_mysql_dsn_is_refused_without_the_password(dsn: str, problem: str) -> None:
    """A mysql:// DSN with an ignored ?option, a raw % or a password that breaks the URL is refused
    without quoting the password."""
    text = f"""\
jobs:
  - name: shop
    source: {{type: mysql, dsn: "{dsn}", server_id: 7}}
    sinks: [{{type: file, path: ./out}}]
"""
    msg = error(text)
    assert msg.startswith("cdc.yaml:3: jobs[0].source: Value error, dsn must look like mysql://"), msg
    assert problem in msg and "(job shop)" in msg
    assert SECRET not in msg and SECRET[:4] not in msg and SECRET[4:] not in msg


def test_a_well_formed_dsn_with_options_is_accepted() -> None:
    """Known libpq options and percent-encoded passwords stay valid."""
    cfg = parse(MINIMAL.replace("@db:5432/shop", "@db:5432/shop?sslmode=require&application_name=cdc")
                .replace(SECRET, "pa%25ss%40word"))
    assert "sslmode=require" in cfg.jobs[0].source.dsn.get_secret_value()


# ---------------------------------------------------------------- hostile files


def test_binary_config_file_is_one_error_line(tmp_path: Path) -> None:
    """A file that is not UTF-8 text (a binary picked by mistake) names the file and line."""
    path = tmp_path / "cdc.yaml"
    path.write_bytes(b"jobs:\n  - name: \xff\xfe\x00\x01\n")
    with pytest.raises(ConfigError, match=r"cdc.yaml:2: not UTF-8 text \(byte 0xff\)"):
        load_config(path)


def test_nul_byte_in_config_is_one_error_line() -> None:
    """A NUL (or another control character) is invalid YAML naming its line, not a crash."""
    msg = error(MINIMAL.replace("cdc_shop\n", "cdc\x00shop\n", 1))
    assert msg == "cdc.yaml:6: invalid YAML: character #x0000 is not allowed in a config file"


def test_yaml_alias_bomb_is_refused_at_once() -> None:
    """A 'billion laughs' document (aliases of aliases) is refused within a bound instead of hanging."""
    levels = "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]\n" for i in range(1, 10))
    text = "x0: &x0 [lol]\n" + levels + MINIMAL
    msg = error(text)
    assert "the config expands to more than 100000 values" in msg


def test_self_referencing_alias_is_refused() -> None:
    """An alias inside its own anchor is refused, not a RecursionError."""
    assert "deeper than 64 levels" in error("loop: &a [*a]\n" + MINIMAL)


def test_aliases_within_the_bound_share_blocks() -> None:
    """Anchors and aliases (and merge keys) still work for sharing a block between jobs."""
    text = MINIMAL.replace("    sinks:\n", "    retry: &retry {initial_backoff_s: 3}\n    sinks:\n") + """\
  - name: shop2
    source: {type: postgres, dsn: "postgresql://cdc@db/shop", slot: s2, publication: p2}
    retry: *retry
    sinks: [{type: file, path: ./out2}]
"""
    assert [j.retry.initial_backoff_s for j in parse(text).jobs] == [3, 3]


# ---------------------------------------------------------------- file modes


def test_umask_defaults_to_owner_only_and_is_validated() -> None:
    """umask is 0077 by default; quoted octal digits are accepted, numbers and owner-blocking masks refused."""
    assert parse(MINIMAL).umask_bits() == 0o077
    assert parse('umask: "0027"\n' + MINIMAL).umask_bits() == 0o027
    assert "write the umask as quoted octal digits" in error("umask: 0027\n" + MINIMAL)
    assert "keep the first digit 0" in error('umask: "0277"\n' + MINIMAL)
    assert error('umask: "999"\n' + MINIMAL).startswith("cdc.yaml:1: umask: ")
