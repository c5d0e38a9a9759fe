"""Tests of the file checkpoint store and the atomic write it relies on."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import orjson
import pytest

from cdc.checkpoints import Checkpoint, FileCheckpointStore, ensure_state_dir, write_atomically
from cdc.errors import CheckpointError
from cdc.events import Position


def test_round_trip(tmp_path: Path) -> None:
    """A saved checkpoint loads back equal, from the same store and from a new one."""
    store = FileCheckpointStore(tmp_path / "state")
    cp = Checkpoint(Position(100), {"file": Position(120), "file-2": Position(100, 3)})
    store.save("job", cp)
    assert store.load("job") == cp
    assert FileCheckpointStore(tmp_path / "state").load("job") == cp
    assert store.path("job").parent == tmp_path / "state"


def test_load_of_unknown_job_is_none(tmp_path: Path) -> None:
    """A job that never saved a checkpoint loads as None, even without a state directory."""
    assert FileCheckpointStore(tmp_path / "missing").load("job") is None


def test_jobs_are_kept_apart(tmp_path: Path) -> None:
    """Each job has its own checkpoint file."""
    store = FileCheckpointStore(tmp_path)
    store.save("a", Checkpoint(Position(5)))
    store.save("b", Checkpoint(Position(1)))
    assert store.load("a") == Checkpoint(Position(5))
    assert store.load("b") == Checkpoint(Position(1))


def test_moves_forward_and_stays(tmp_path: Path) -> None:
    """Saving the same or a higher source position is accepted."""
    store = FileCheckpointStore(tmp_path)
    store.save("job", Checkpoint(Position(10)))
    store.save("job", Checkpoint(Position(10)))
    store.save("job", Checkpoint(Position(11, 1)))
    assert store.load("job") == Checkpoint(Position(11, 1))


def test_refuses_to_move_backwards(tmp_path: Path) -> None:
    """Saving a lower source position raises CheckpointError and keeps the saved one."""
    store = FileCheckpointStore(tmp_path)
    store.save("job", Checkpoint(Position(10)))
    with pytest.raises(CheckpointError, match="back from 10 to 9"):
        store.save("job", Checkpoint(Position(9)))
    with pytest.raises(CheckpointError):
        store.save("job", Checkpoint(Position(10, 5)))
    assert store.load("job") == Checkpoint(Position(10))


def test_refuses_to_move_backwards_after_restart(tmp_path: Path) -> None:
    """A new store (a restarted daemon) also refuses to go below the checkpoint on disk."""
    FileCheckpointStore(tmp_path).save("job", Checkpoint(Position(10)))
    with pytest.raises(CheckpointError):
        FileCheckpointStore(tmp_path).save("job", Checkpoint(Position(9)))


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[]", b"{}", b'{"source": {"commit": "x"}}', b'{"source": {"commit": 1}, "sinks": []}',
     b'{"source": {"commit": 1}, "sinks": {"f": null}}'],
)
def test_unreadable_checkpoint_names_the_path(tmp_path: Path, content: bytes) -> None:
    """A corrupt checkpoint file raises CheckpointError naming its path, on load and on save."""
    store = FileCheckpointStore(tmp_path)
    store.path("job").write_bytes(content)
    with pytest.raises(CheckpointError, match="unreadable checkpoint") as info:
        store.load("job")
    assert str(store.path("job")) in str(info.value)
    with pytest.raises(CheckpointError):
        store.save("job", Checkpoint(Position(1)))


def test_unreadable_path_is_a_checkpoint_error(tmp_path: Path) -> None:
    """A checkpoint path that cannot be read (here a directory) raises CheckpointError naming it."""
    store = FileCheckpointStore(tmp_path)
    store.path("job").mkdir()
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        store.load("job")
    assert str(store.path("job")) in str(info.value)


def test_file_is_json(tmp_path: Path) -> None:
    """The checkpoint file is the documented small JSON document."""
    store = FileCheckpointStore(tmp_path)
    store.save("job", Checkpoint(Position(7), {"file": Position(8, 2)}))
    assert orjson.loads(store.path("job").read_bytes()) == {
        "source": {"commit": 7}, "sinks": {"file": {"commit": 8, "seq": 2}}
    }


def test_write_atomically_replaces_content(tmp_path: Path) -> None:
    """write_atomically replaces the file's content and leaves no temporary file."""
    target = tmp_path / "x.json"
    target.write_bytes(b"old")
    write_atomically(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_write_atomically_keeps_old_content_without_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash before the rename leaves the old content whole; the new bytes are only in the tmp file."""
    target = tmp_path / "x.json"
    target.write_bytes(b"old")

    def crash(src: object, dst: object) -> None:
        raise OSError(5, "simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        write_atomically(target, b"new content")
    assert target.read_bytes() == b"old"
    assert (tmp_path / "x.json.tmp").read_bytes() == b"new content"


def test_failed_save_keeps_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save whose rename fails raises CheckpointError and the previous checkpoint still loads."""
    store = FileCheckpointStore(tmp_path)
    store.save("job", Checkpoint(Position(1)))

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        store.save("job", Checkpoint(Position(2)))
    monkeypatch.undo()
    assert store.load("job") == Checkpoint(Position(1))
    store.save("job", Checkpoint(Position(2)))
    assert store.load("job") == Checkpoint(Position(2))


# ---------------------------------------------------------------- the state directory


def test_state_dir_is_created_and_left_clean(tmp_path: Path) -> None:
    """A missing state dir is created (parents too); the write probe leaves nothing behind."""
    state = tmp_path / "a" / "state"
    ensure_state_dir(state)
    assert state.is_dir() and list(state.iterdir()) == []


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_state_dir_that_is_a_file_is_one_checkpoint_error(tmp_path: Path, where: str) -> None:
    """A file where the state dir (or one of its parents) should be is a CheckpointError naming the dir."""
    (tmp_path / "taken").write_text("not a directory")
    state = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "state"
    with pytest.raises(CheckpointError, match=rf"^state_dir {state}: (is not a directory|cannot create it: Not a dir)"):
        ensure_state_dir(state)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_state_dir_that_cannot_be_written_is_one_checkpoint_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """A full, read-only or forbidden state dir fails the write probe with one line naming the dir and the
    reason, and leaves no probe file behind."""
    real_write = os.write

    def failing_write(fd: int, data: bytes) -> int:
        if data.startswith(b"cdc write probe"):
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(CheckpointError, match=rf"^state_dir {tmp_path}: cannot write in it: {os.strerror(code)}; "):
        ensure_state_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []



# ---------------------------------------------------------------- state files written during a run


FAULTS = [errno.ENOSPC, errno.EROFS, errno.EACCES]


def fail_writes(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Every `os.write` fails with `code` (a full disk, a read-only file system, lost permissions)."""
    def failing_write(fd: int, data: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", failing_write)


def test_a_short_write_is_completed_not_renamed_torn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.write may take only part of the bytes (a nearly full disk) without an error: write_atomically
    writes the rest before the rename, so the file is never torn."""
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data)[:3])

    monkeypatch.setattr(os, "write", short_write)
    write_atomically(tmp_path / "x.json", b"0123456789")
    assert (tmp_path / "x.json").read_bytes() == b"0123456789"


@pytest.mark.parametrize("code", FAULTS)
def test_a_checkpoint_write_failure_is_one_line_with_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """A checkpoint the OS refuses to write is one CheckpointError line naming the file, the reason and
    what to do."""
    store = FileCheckpointStore(tmp_path)
    fail_writes(monkeypatch, code)
    with pytest.raises(CheckpointError) as caught:
        store.save("job", Checkpoint(Position(2)))
    assert str(caught.value) == (f"{tmp_path / 'job.checkpoint.json'}: cannot write checkpoint: {os.strerror(code)}; "
                                 "free space in state_dir or fix its permissions, then restart cdc")


@pytest.mark.parametrize("code", FAULTS)
def test_snapshot_progress_write_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     code: int) -> None:
    """PostgreSQL snapshot progress (<job>.snapshot.json) the OS refuses to write: one CheckpointError line
    naming the file and the OS reason, not an internal error."""
    from connectors.postgres.snapshot import SnapshotProgress

    progress = SnapshotProgress(tmp_path / "shop.snapshot.json")
    progress.tables = {"public.items": {"status": "done"}}
    fail_writes(monkeypatch, code)
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}/shop\.snapshot\.json: cannot write snapshot progress: "
                                              rf"{os.strerror(code)}; "):
        progress.save()


@pytest.mark.parametrize("code", FAULTS)
def test_mysql_state_file_write_failures_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      code: int) -> None:
    """The MySQL source's bookmark files (<job>.mysql-start.json, <job>.mysql-watermark.json) the OS refuses
    to write: one CheckpointError line naming the file and the OS reason."""
    from cdc.config import MySqlSourceConfig, TablesConfig
    from connectors.mysql.source import MySqlSource
    from connectors.mysql.watermark import save_marks

    source = MySqlSource("shop", MySqlSourceConfig(type="mysql", user="cdc", server_id=7),
                         TablesConfig(include=["shop.*"]), state_dir=tmp_path)
    fail_writes(monkeypatch, code)
    reason = os.strerror(code)
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}/shop\.mysql-start\.json: cannot write .*: {reason}; "):
        source._write_bookmark((1, 4), "0-1-5")
    with pytest.raises(CheckpointError,
                       match=rf"^{tmp_path}/shop\.mysql-watermark\.json: cannot write .*: {reason}; "):
        save_marks(tmp_path / "shop.mysql-watermark.json", 10, [])


class _FullDisk:
    """A spool file handle on a disk that fills up: writes and flushes fail with ENOSPC."""

    def __init__(self, path: Path, mode: str) -> None:
        self._file = open(path, mode)  # noqa: SIM115 - closed by close()

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> object:
        return getattr(self._file, name)


def test_spool_write_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool file of an in-progress transaction the disk refuses: one CheckpointError line naming the file,
    the transaction and the OS reason."""
    from connectors.postgres import spool as spool_module

    spool = spool_module.TransactionSpool(tmp_path / "spool" / "shop")
    spool.clear()
    monkeypatch.setattr(spool_module, "open", _FullDisk, raising=False)
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}/spool/shop/742\.spool: cannot write the spool of "
                                              rf"in-progress transaction 742: No space left on device; "):
        spool.append(742, 742, 100, b"payload")
    spool.close()


def test_spool_directory_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    """A spool directory that cannot be made (a file in its way) is one CheckpointError line naming it."""
    (tmp_path / "spool").write_text("in the way")
    spool_dir = tmp_path / "spool" / "shop"
    from connectors.postgres.spool import TransactionSpool

    with pytest.raises(CheckpointError, match=rf"^{spool_dir}: cannot write the transaction spool: "):
        TransactionSpool(spool_dir).clear()
