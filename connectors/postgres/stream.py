"""The replication socket: START_REPLICATION's COPY_BOTH conversation through psycopg 3.

psycopg 3 has no replication API, but from 3.3 ``execute("START_REPLICATION ...")`` on a
``replication=database`` connection leaves it in COPY_BOTH mode. From there this module
talks libpq directly: frames come from ``pgconn.get_copy_data(1)`` whenever asyncio sees
the socket readable, and standby status updates go out with ``put_copy_data`` and
``flush`` (libpq is non-blocking on this connection). Frames are returned raw; decoding
is connectors.postgres.pgoutput's job.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
from psycopg import sql

from cdc.errors import SlotInUseError, SourceConnectionError, SourceSetupError, first_line
from connectors.postgres.catalog import SESSION_OPTIONS, connect_error
from connectors.postgres.pgoutput import format_lsn, pg_now_us, standby_status_update


class ReplicationStream:
    """One START_REPLICATION session; create with `open`, end with `close`."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], where: str) -> None:
        self._conn = conn
        self._pgconn = conn.pgconn
        self._where = where
        self._readable = asyncio.Event()
        self._fd = self._pgconn.socket
        asyncio.get_running_loop().add_reader(self._fd, self._readable.set)

    @classmethod
    async def open(
        cls, conninfo: str, slot: str, publication: str, start_lsn: int, where: str, *, connect_timeout: int,
        protocol: int = 1, streaming: bool = False, messages: bool = False,
    ) -> ReplicationStream:
        """Connect in replication mode and start streaming `slot` from `start_lsn`.

        The server starts at the later of `start_lsn` and the slot's confirmed position.
        `protocol` 2 with `streaming` sends large in-progress transactions in stream blocks;
        `messages` asks for ``pg_logical_emit_message`` messages.
        """
        try:
            conn = await psycopg.AsyncConnection.connect(
                conninfo,
                replication="database",
                autocommit=True,
                options=SESSION_OPTIONS,
                client_encoding="UTF8",
                connect_timeout=connect_timeout,
            )
        except psycopg.OperationalError as err:
            raise connect_error(f"{where}: replication connection failed", err, SourceConnectionError) from err
        options: list[sql.Composable] = [sql.SQL("proto_version {}").format(sql.Literal(str(protocol))),
                   sql.SQL("publication_names {}").format(sql.Literal(publication))]
        if streaming:
            options.append(sql.SQL("streaming 'on'"))
        if messages:
            options.append(sql.SQL("messages 'true'"))
        query = sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({})").format(
            sql.Identifier(slot), sql.SQL(format_lsn(start_lsn)), sql.SQL(", ").join(options)
        )
        try:
            await conn.execute(query)
        except psycopg.errors.ObjectInUse as err:
            await conn.close()
            raise SlotInUseError(f"{where}: replication slot {slot} is in use: {first_line(err)}") from err
        except psycopg.errors.UndefinedObject as err:
            await conn.close()
            raise SourceSetupError(f"{where}: {first_line(err)}") from err
        except psycopg.OperationalError as err:
            await conn.close()
            raise SourceConnectionError(f"{where}: START_REPLICATION failed: {first_line(err)}") from err
        return cls(conn, where)

    def _drain(self) -> list[bytes]:
        frames: list[bytes] = []
        get = self._pgconn.get_copy_data
        while True:
            try:
                n, data = get(1)
            except psycopg.OperationalError as err:
                # After the server ended the stream, libpq returns the frames it had buffered and
                # then "no COPY in progress": a lost connection, not a bug.
                if frames:
                    return frames
                raise SourceConnectionError(
                    f"{self._where}: replication connection lost: {first_line(err)}"
                ) from err
            if n > 0:
                frames.append(bytes(data))
            elif n == 0:
                return frames
            elif n == -1:
                if frames:
                    return frames
                raise SourceConnectionError(f"{self._where}: the server ended the replication stream")
            else:
                raise SourceConnectionError(
                    f"{self._where}: replication stream failed: {_pq_error(self._pgconn.error_message)}"
                )

    async def read(self, timeout: float) -> list[bytes]:
        """The frames (XLogData or keepalive) that arrived, waiting up to `timeout` seconds
        for the first; an empty list when none came.

        A cancellation always ends the wait (``asyncio.timeout``, not ``wait_for``, which on
        Python 3.11 can swallow a cancel that lands as the socket turns readable).
        """
        frames = self._drain()
        if frames:
            return frames
        while True:
            self._readable.clear()
            self._consume()
            frames = self._drain()
            if frames:
                return frames
            try:
                async with asyncio.timeout(timeout):
                    await self._readable.wait()
            except TimeoutError:
                return []
            self._consume()
            frames = self._drain()
            if frames:
                return frames

    def _consume(self) -> None:
        try:
            self._pgconn.consume_input()
        except psycopg.OperationalError as err:
            raise SourceConnectionError(f"{self._where}: replication connection lost: {first_line(err)}") from err

    async def send_status(self, flush_lsn: int, *, reply: bool = False) -> None:
        """Tell the server everything up to `flush_lsn` is durable (write = flush = apply)."""
        msg = standby_status_update(flush_lsn, flush_lsn, flush_lsn, pg_now_us(), reply)
        try:
            while self._pgconn.put_copy_data(msg) == 0:
                await asyncio.sleep(0.001)
            while self._pgconn.flush() == 1:
                await asyncio.sleep(0.001)
        except psycopg.OperationalError as err:
            raise SourceConnectionError(f"{self._where}: replication connection lost: {first_line(err)}") from err

    async def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self._fd)
        await self._conn.close()


def _pq_error(message: bytes | str) -> str:
    text = message.decode(errors="replace") if isinstance(message, bytes) else message
    return text.strip().splitlines()[0] if text.strip() else "unknown error"
