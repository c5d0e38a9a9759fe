"""Checkpoint stores: where a job records what its sinks hold and what the source was told.

The file store writes ``<state_dir>/<job>.json`` with write, fsync, rename and a directory
fsync, so a crash leaves either the old or the new checkpoint, never a torn one. A
checkpoint never moves backwards: saving a lower source position is refused.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

from cdc.errors import CheckpointError
from cdc.events import Position


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The acknowledged source position and each sink's durable position."""

    source: Position
    sinks: dict[str, Position] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "source": self.source.to_json(),
                "sinks": {name: p.to_json() for name, p in self.sinks.items()},
            },
            option=orjson.OPT_INDENT_2,
        )

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Checkpoint:
        try:
            doc = orjson.loads(data)
            return cls(
                Position.from_json(doc["source"]),
                {name: Position.from_json(p) for name, p in doc.get("sinks", {}).items()},
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, CheckpointError) as err:
            raise CheckpointError(f"{where}: unreadable checkpoint ({err}); move it away to start over") from err


class CheckpointStore(Protocol):
    """Durable per-job checkpoints."""

    def load(self, job: str) -> Checkpoint | None:
        """The last saved checkpoint of `job`, or None if it never saved one."""
        ...

    def save(self, job: str, checkpoint: Checkpoint) -> None:
        """Persist durably before returning; refuse to move the source position backwards."""
        ...


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content.

    The file is created 0666 less the process umask, like every other file cdc writes
    (the CLI sets the config's ``umask``, 0077 by default: 0600).
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = memoryview(data)
        while view:  # a nearly full disk may take part of the bytes without an error
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


#: What a user can do when a state file cannot be written.
STATE_FIX = "free space in state_dir or fix its permissions, then restart cdc"


def state_write_error(path: Path, what: str, err: OSError) -> CheckpointError:
    """The one-line error for a state file (`what` at `path`) the OS refused to write."""
    return CheckpointError(f"{path}: cannot write {what}: {err.strerror or err}; {STATE_FIX}")


def write_state(path: Path, data: bytes, what: str) -> None:
    """`write_atomically` for a state file under ``state_dir`` (its directory created), with an
    OS error (disk full, read-only file system, permissions) raised as `state_write_error`:
    one `CheckpointError` line naming the file, `what` it holds and the OS reason."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
    except OSError as err:
        raise state_write_error(path, what, err) from err


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (new, renamed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_state_dir(state_dir: Path) -> None:
    """Make sure `state_dir` is a directory cdc can write, before any job touches a server.

    Creates it (and its parents) when missing, then writes, fsyncs and removes a probe
    file, so a file in its place, a read-only or full file system, or missing permissions
    stop ``cdc run`` with one `CheckpointError` line instead of failing half-way through a
    job's setup (after a publication or slot was created).
    """
    fix = "choose another state_dir or fix it (permissions, free space, a file in its place)"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CheckpointError(f"state_dir {state_dir}: is not a directory; {fix}") from None
    except OSError as err:
        raise CheckpointError(f"state_dir {state_dir}: cannot create it: {err.strerror}; {fix}") from err
    probe = state_dir / f".cdc-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"cdc write probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as err:
        with contextlib.suppress(OSError):  # a probe half-written on a full disk
            probe.unlink(missing_ok=True)
        raise CheckpointError(f"state_dir {state_dir}: cannot write in it: {err.strerror}; {fix}") from err


class FileCheckpointStore:
    """Checkpoints as JSON files in one directory (the config's ``state_dir``)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._saved: dict[str, Position] = {}

    def path(self, job: str) -> Path:
        return self.state_dir / f"{job}.checkpoint.json"

    def load(self, job: str) -> Checkpoint | None:
        path = self.path(job)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise CheckpointError(f"{path}: cannot read checkpoint: {err.strerror}") from err
        return Checkpoint.from_json(data, str(path))

    def save(self, job: str, checkpoint: Checkpoint) -> None:
        previous = self._saved.get(job)
        if previous is None:
            loaded = self.load(job)
            previous = loaded.source if loaded is not None else None
        if previous is not None and checkpoint.source < previous:
            raise CheckpointError(
                f"job {job}: refusing to move the checkpoint back from {previous} to {checkpoint.source}"
            )
        write_state(self.path(job), checkpoint.to_json(), "checkpoint")
        self._saved[job] = checkpoint.source


#: Reads the sink's durable position (called once, in `open()`).
StoredPosition = Callable[[], "Position | None"]


def checkpoint_position(store: CheckpointStore, job: str, sink: str) -> StoredPosition:
    """The position the job's checkpoint store holds for `sink`, read when called."""

    def load() -> Position | None:
        checkpoint = store.load(job)
        return checkpoint.sinks.get(sink) if checkpoint is not None else None

    return load


def no_position() -> Position | None:
    """A sink without a stored position (tests, benchmarks): it holds nothing yet."""
    return None
