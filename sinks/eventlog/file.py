"""The file event-log sink: rotating JSONL files per table, exactly once across crashes.

Layout under the sink's ``path``::

    public.orders/000000000001.jsonl      one Debezium envelope per line, in commit order
    public.orders/000000000002.jsonl      the next segment once the first passed max_segment_bytes
    _cdc_file_sink.json                   position + (segment, byte offset) per table

A batch is durable when its lines are written and fsynced and the state file (written
atomically) records the new position and offsets. On open, every segment is cut back to
the offset the state file holds and segments created after it are removed, so a crash
between the data and the state write leaves no torn line and no duplicate: the replay
from the recorded position writes those events again, once.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import quote

import orjson
import structlog

from cdc.checkpoints import fsync_dir, write_atomically
from cdc.errors import SinkError, SinkWriteError
from cdc.events import ChangeBatch, Position, TableId
from cdc.sink import SourceInfo
from sinks.eventlog.envelope import EnvelopeSerializer

STATE_FILE: Final = "_cdc_file_sink.json"
_SEGMENT: Final = re.compile(r"(\d{12})\.jsonl")

log = structlog.get_logger(__name__)


def table_dir_name(table: TableId) -> str:
    """``schema.table`` with anything but letters, digits, ``_-~`` percent-encoded (dots too,
    so ``a.b``/``c`` and ``a``/``b.c`` stay apart)."""
    return _dir_part(table.schema) + "." + _dir_part(table.table)


def _dir_part(name: str) -> str:
    return quote(name, safe="").replace(".", "%2E")


def segment_name(number: int) -> str:
    return f"{number:012d}.jsonl"


@dataclass(slots=True)
class _Segment:
    number: int
    offset: int
    handle: BinaryIO | None = None


class FileSink:
    """`{type: file, path: DIR}`: see the module docstring."""

    def __init__(
        self,
        name: str,
        path: Path,
        source: SourceInfo,
        *,
        max_segment_bytes: int = 64 << 20,
        fsync: bool = True,
    ) -> None:
        self.name = name
        self.path = path
        self._max_segment_bytes = max_segment_bytes
        self._fsync = fsync
        self._serializer = EnvelopeSerializer(
            connector=source.connector, source_name=source.name, database=source.database, include_id=True
        )
        self._position: Position | None = None
        self._segments: dict[str, _Segment] = {}
        self._log = log.bind(sink=name)

    def position(self) -> Position | None:
        return self._position

    async def open(self) -> None:
        await asyncio.to_thread(self._recover)

    async def write(self, batch: ChangeBatch) -> None:
        await asyncio.to_thread(self._write, batch)

    async def close(self) -> None:
        for seg in self._segments.values():
            if seg.handle is not None:
                seg.handle.close()
                seg.handle = None

    # -- recovery ---------------------------------------------------------------------

    def _recover(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SinkError(f"file sink {self.name}: cannot create {self.path}: {err.strerror}") from err
        state_path = self.path / STATE_FILE
        try:
            state = orjson.loads(state_path.read_bytes())
            self._position = Position.from_json(state["position"]) if state.get("position") else None
            tables = state.get("tables", {})
            self._segments = {d: _Segment(int(t["segment"]), int(t["offset"])) for d, t in tables.items()}
        except FileNotFoundError:
            self._position, self._segments = None, {}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise SinkError(f"{state_path}: unreadable sink state ({err}); move the directory away") from err
        cut = 0
        for entry in sorted(self.path.iterdir()):
            if not entry.is_dir():
                continue
            seg = self._segments.get(entry.name)
            for f in sorted(entry.iterdir()):
                m = _SEGMENT.fullmatch(f.name)
                if m is None:
                    continue
                number = int(m.group(1))
                if seg is None or number > seg.number:
                    f.unlink()
                    cut += 1
                elif number == seg.number and f.stat().st_size > seg.offset:
                    os.truncate(f, seg.offset)
                    cut += 1
        if cut:
            self._log.info("file_sink_tail_cut", files=cut, position=str(self._position))

    # -- writing ----------------------------------------------------------------------

    def _write(self, batch: ChangeBatch) -> None:
        batch = batch.after(self._position)
        if self._position is not None and batch.position <= self._position:
            return
        touched: list[_Segment] = []
        new_dirs: set[Path] = set()
        ts_ms = int(time.time() * 1000)
        try:
            for table in batch.tables:
                key = table_dir_name(table.schema.table)
                seg = self._segment_for(key, new_dirs)
                assert seg.handle is not None
                values = self._serializer.values(table, ts_ms)
                values.append(b"")
                data = b"\n".join(values)
                seg.handle.write(data)
                seg.offset += len(data)
                seg.handle.flush()
                touched.append(seg)
            if self._fsync:
                for seg in touched:
                    assert seg.handle is not None
                    os.fsync(seg.handle.fileno())
                for d in new_dirs:
                    fsync_dir(d)
            self._save_state(batch.position)
        except OSError as err:
            raise SinkWriteError(f"file sink {self.name}: cannot write under {self.path}: {err}") from err
        self._position = batch.position

    def _segment_for(self, key: str, new_dirs: set[Path]) -> _Segment:
        seg = self._segments.get(key)
        table_dir = self.path / key
        if seg is None:
            table_dir.mkdir(exist_ok=True)
            new_dirs.add(self.path)
            seg = self._segments[key] = _Segment(1, 0)
        elif seg.offset >= self._max_segment_bytes:
            if seg.handle is not None:
                seg.handle.close()
            seg.number, seg.offset, seg.handle = seg.number + 1, 0, None
        if seg.handle is None:
            path = table_dir / segment_name(seg.number)
            if not path.exists():
                new_dirs.add(table_dir)
            seg.handle = open(path, "ab")  # noqa: SIM115 - kept open across batches
            seg.handle.seek(seg.offset)
        return seg

    def _save_state(self, position: Position) -> None:
        state = {
            "position": position.to_json(),
            "tables": {k: {"segment": s.number, "offset": s.offset} for k, s in self._segments.items()},
        }
        write_atomically(self.path / STATE_FILE, orjson.dumps(state))
