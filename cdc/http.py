"""The daemon's HTTP endpoint: ``/healthz``, ``/readyz``, ``/metrics``, ``/status``.

A small HTTP/1.1 server on the daemon's own asyncio loop (`asyncio.start_server`), not
prometheus-client's WSGI app in a thread: the handlers read the job board and the
pipelines' counters on the loop that changes them, so they need no locks, and no
dependency (aiohttp) or extra thread is added for four read-only GET routes. Every
response closes its connection; requests are limited to 8 KiB of headers and 5 s.

Off unless the config has an ``http:`` key; ``http: {}`` listens on 127.0.0.1:8765 (local
only). Bind it elsewhere only behind a firewall: the endpoint has no authentication
(it exposes no secrets or row values, but positions, table and job names).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cdc import metrics
from cdc.config import HttpConfig
from cdc.errors import ConfigError
from cdc.health import JobBoard

log = structlog.get_logger(__name__)

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_MAX_HEAD = 8192
_READ_TIMEOUT_S = 5.0

Response = tuple[int, str, bytes]


class HttpEndpoint:
    """Serves the board of one daemon until `close`."""

    def __init__(self, board: JobBoard, extra_status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.board = board
        self._extra = extra_status
        self._server: asyncio.Server | None = None
        self.address: str | None = None

    async def start(self, config: HttpConfig) -> str:
        """Listen on ``config.listen``; return the bound ``host:port`` (port 0 becomes the real one)."""
        host, port = config.address()
        try:
            self._server = await asyncio.start_server(self._handle, host, port, limit=_MAX_HEAD)
        except OSError as err:
            raise ConfigError(
                f"http.listen {config.listen}: cannot listen: {err.strerror or err}; choose another address or port"
            ) from err
        sock = self._server.sockets[0].getsockname()
        bound_host = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
        self.address = f"{bound_host}:{sock[1]}"
        log.info("http_listening", address=self.address)
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(_READ_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                status, ctype, body = 400, "text/plain; charset=utf-8", b"bad request\n"
                method = "GET"
            else:
                method, target = parts[0], parts[1]
                status, ctype, body = self.respond(method, target.split("?", 1)[0])
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def respond(self, method: str, path: str) -> Response:
        """The response to one request (pure apart from reading the board and the metrics)."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n"
        self.board.refresh()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.REGISTRY)
        if path == "/healthz":
            failing = self.board.failing()
            return _verdict(503 if failing else 200, {
                "status": "failing" if failing else "ok",
                "failing": {s.name: f"{s.state}: {s.error}" for s in failing},
                "retrying": {s.name: s.error for s in self.board.retrying()},
            })
        if path == "/readyz":
            waiting = self.board.not_ready()
            return _verdict(503 if waiting else 200, {
                "status": "not ready" if waiting else "ready",
                "not_ready": {s.name: str(s.state) if not self.board.stopping else "stopping" for s in waiting},
            })
        if path == "/status":
            doc = self.board.to_json()
            if self._extra is not None:
                doc.update(self._extra())
            return _verdict(200, doc)
        return 404, "text/plain; charset=utf-8", b"not found: try /healthz, /readyz, /metrics or /status\n"


def _verdict(status: int, doc: dict[str, Any]) -> Response:
    return status, "application/json", orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
