"""Disposable local database servers for integration tests, ``make demo`` and benchmarks.

`DisposablePostgres` and `DisposableMariaDB` each run a private server from the
binaries installed on the machine, in a temporary directory, listening only on
127.0.0.1 with passwordless superuser access, configured for change data capture
(logical decoding for PostgreSQL, a full row-based binlog for MariaDB), and tuned
for speed over durability (no fsync). They are *disposable*: ``stop()`` kills the
server and deletes every file it wrote, and a server still running when the Python
process exits is stopped by an ``atexit`` hook.

Typical use::

    with DisposablePostgres() as pg:
        pg.create_database("shop")
        run_job(source_dsn=pg.dsn("shop"))

PostgreSQL refuses to run as root; when this process is root, ``initdb`` and
``pg_ctl`` run as the ``postgres`` system user through ``runuser`` and the server's
directory is handed to that user.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

__all__ = ["DisposableMariaDB", "DisposablePostgres", "SandboxError", "find_postgres_bin_dir", "free_port"]

#: Longest directory we put a Unix socket in: sun_path holds 108 bytes, and the
#: socket's own file name (".s.PGSQL.65535", "mysqld.sock") still has to fit.
_MAX_SOCKET_DIR_LEN = 80
#: Short parent for socket directories when the server's own directory is too deep.
_SHORT_TMP = Path("/tmp")
_PG_SYSTEM_USER = "postgres"
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class SandboxError(RuntimeError):
    """A disposable server could not be set up, started, stopped or queried."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is found by binding to port 0 and closing the socket, so another
    process may take it before the caller binds it; the servers below retry with a
    new port when that happens and they chose the port themselves.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    """Return the last `lines` lines of a text file, or a note when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        return f"<cannot read {path}: {err.strerror}>"
    return "\n".join(text.splitlines()[-lines:])


def _remove_tree(path: Path | None) -> None:
    """Delete a directory tree if it exists, ignoring errors (best effort cleanup)."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _make_base_dir(base_dir: Path | None, prefix: str) -> Path:
    """Create (if needed) and return the absolute directory a server keeps its files in."""
    if base_dir is None:
        return Path(tempfile.mkdtemp(prefix=prefix))
    base = base_dir.resolve()
    base.mkdir(parents=True, exist_ok=True)
    return base


def _short_dir_for_sockets(base: Path, prefix: str) -> tuple[Path, bool]:
    """Return a directory short enough for Unix sockets, and whether it was newly created.

    That is `base` itself when its path is short enough, otherwise a new temporary
    directory under /tmp that the caller must remove.
    """
    if len(str(base)) <= _MAX_SOCKET_DIR_LEN:
        return base, False
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_SHORT_TMP)), True


def _pid_alive(pid: int) -> bool:
    """Return whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_postgres_bin_dir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Order: the ``CDC_PG_BIN`` environment variable, then ``pg_config --bindir`` when
    ``pg_config`` is on PATH, then the highest-numbered ``/usr/lib/postgresql/*/bin``.
    Raises `SandboxError` when none of them holds ``initdb`` and ``pg_ctl``.
    """
    candidates: list[Path] = []
    override = os.environ.get("CDC_PG_BIN")
    if override:
        candidates.append(Path(override))
    else:
        pg_config = shutil.which("pg_config")
        if pg_config is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
                ).stdout.strip()
                if out:
                    candidates.append(Path(out))

        def version_key(path: Path) -> tuple[int, ...]:
            return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

        candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True))
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    where = f"CDC_PG_BIN={override}" if override else "pg_config --bindir and /usr/lib/postgresql/*/bin"
    raise SandboxError(f"PostgreSQL server binaries (initdb, pg_ctl) not found in {where}")


def _find_program(names: Sequence[str]) -> str:
    """Return the path of the first of `names` found on PATH, /usr/sbin or /usr/bin."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/usr/local/sbin"])
    for name in names:
        found = shutil.which(name, path=search)
        if found is not None:
            return found
    raise SandboxError(f"none of {', '.join(names)} is installed (searched PATH, /usr/sbin, /usr/bin)")


class _DisposableServer:
    """What `DisposablePostgres` and `DisposableMariaDB` share.

    The port, the directories the server owns, the start/stop skeleton (create the
    directories, set up, start with retries on a taken port, clean up on failure),
    the context manager and the atexit hook. A subclass sets the class attributes
    below and implements `stop()` (with `_stop_and_clean`), `_set_up()` and
    `_try_start()`.
    """

    #: The server's name in messages ("the PostgreSQL sandbox has not been started").
    _KIND: ClassVar[str]
    #: What a `settings` key is called in the error for an invalid one.
    _SETTING_WORD: ClassVar[str]
    #: File name of the server log in `base_dir`.
    _LOG_NAME: ClassVar[str]
    #: Name prefixes of the temporary base directory and socket directory.
    _BASE_PREFIX: ClassVar[str]
    _SOCKET_PREFIX: ClassVar[str]
    #: Lowercased log text saying the TCP port was taken by another process.
    _PORT_TAKEN: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        *,
        base_dir: Path | None,
        port: int | None,
        settings: Mapping[str, str] | None,
    ) -> None:
        """Check the setting names and record the state common to both servers."""
        for name in settings or {}:
            if not _SETTING_NAME.match(name):
                raise ValueError(f"invalid {self._KIND} {self._SETTING_WORD}: {name!r}")
        self._requested_base = base_dir
        self._port_fixed = port is not None
        self._port = port if port is not None else free_port()
        self._base: Path | None = None
        self._socket_dir: Path | None = None
        self._own_socket_dir = False
        self._running = False
        self._owner_pid = os.getpid()

    # -- properties -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1; final once `start()` has returned."""
        return self._port

    @property
    def host(self) -> str:
        """Address the server listens on: always ``127.0.0.1``."""
        return "127.0.0.1"

    @property
    def base_dir(self) -> Path:
        """Directory holding the data directory and the server's logs; raises before `start()`."""
        if self._base is None:
            raise SandboxError(f"the {self._KIND} sandbox has not been started")
        return self._base

    @property
    def data_dir(self) -> Path:
        """The server's data directory, ``base_dir / "data"``; raises before `start()`."""
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        """The server log in `base_dir`; raises before `start()`."""
        return self.base_dir / self._LOG_NAME

    @property
    def running(self) -> bool:
        """Whether `start()` succeeded and `stop()` has not been called since."""
        return self._running

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Set up the server's files, start it and wait until it accepts connections.

        Returns self. Raises `SandboxError` (with the tail of the relevant log) when
        setting up or starting the server fails; everything created so far is
        removed first. Raises `SandboxError` when already started.
        """
        if self._base is not None:
            raise SandboxError(f"the {self._KIND} sandbox was already started")
        atexit.register(self._stop_at_exit)
        try:
            self._base = _make_base_dir(self._requested_base, self._BASE_PREFIX)
            self._socket_dir, self._own_socket_dir = _short_dir_for_sockets(self._base, self._SOCKET_PREFIX)
            self._set_up()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        self._running = True
        return self

    def stop(self) -> None:
        """Stop the server and delete its files; idempotent (each subclass implements it)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Start the server unless it is already running, and return it."""
        if not self._running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and delete its files."""
        self.stop()

    # -- internals --------------------------------------------------------------------------

    def _set_up(self) -> None:
        """Create the data directory in `base_dir`, before the first start."""
        raise NotImplementedError

    def _try_start(self) -> str | None:
        """Start the server once and wait for it; return None when it accepts connections.

        Otherwise return why it failed, with the server stopped again.
        """
        raise NotImplementedError

    def _started_socket_dir(self) -> Path:
        """The directory of the server's Unix socket; raises before `start()`."""
        if self._socket_dir is None:
            raise SandboxError(f"the {self._KIND} sandbox has not been started")
        return self._socket_dir

    def _stop_and_clean(self, shut_down: Callable[[], None]) -> None:
        """Body of `stop()`: run `shut_down`, then delete every directory, whatever happens."""
        atexit.unregister(self._stop_at_exit)
        self._running = False
        try:
            shut_down()
        finally:
            if self._own_socket_dir:
                _remove_tree(self._socket_dir)
            _remove_tree(self._base)
            self._base = None
            self._socket_dir = None
            self._own_socket_dir = False

    def _stop_at_exit(self) -> None:
        """atexit hook: stop the server, but only in the process that started it."""
        if os.getpid() == self._owner_pid:
            self.stop()

    def _start_server(self) -> None:
        """Start the server; when we picked the port and it got taken, retry on another one."""
        attempts = 1 if self._port_fixed else 4
        for attempt in range(attempts):
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            failure = self._try_start()
            if failure is None:
                return
            if attempt + 1 < attempts:
                new_log = self._log_since(log_size)
                if any(marker in new_log for marker in self._PORT_TAKEN):
                    self._port = free_port()
                    continue
            raise SandboxError(failure)

    def _log_since(self, offset: int) -> str:
        """Return the server log written after byte `offset`, lowercased."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace").lower()
        return ""


class DisposablePostgres(_DisposableServer):
    """A private PostgreSQL server in a temporary directory, ready for logical replication.

    The server listens on 127.0.0.1 only, trusts every local and 127.0.0.1 connection
    (including replication connections) for every user, and runs with
    ``wal_level=logical``, ``fsync=off``, ``synchronous_commit=off`` and
    ``full_page_writes=off``. With ``synchronous_commit=off`` an *immediate* restart
    (a simulated crash) may lose transactions committed in the last few hundred
    milliseconds; sessions whose commits must survive one should
    ``SET synchronous_commit = on`` (cheap here since fsync is off).

    Construct, then `start()` (or use it as a context manager), and `stop()` at the
    end; `stop()` is idempotent and deletes ``base_dir``. ``data_dir`` is the
    cluster's data directory (PGDATA) and ``log_path`` the log written by
    ``pg_ctl -l``.
    """

    _KIND = "PostgreSQL"
    _SETTING_WORD = "setting name"
    _LOG_NAME = "postgres.log"
    _BASE_PREFIX = "cdc-pg-"
    _SOCKET_PREFIX = "cdc-pgs-"
    _PORT_TAKEN = ("could not bind",)

    def __init__(
        self,
        *,
        base_dir: Path | None = None,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Describe a server; nothing runs until `start()`.

        `base_dir` is the directory the server owns (created if missing, deleted by
        `stop()`); by default a new ``/tmp/cdc-pg-*`` directory. `port` is the TCP
        port, by default a free one. `settings` are extra ``postgresql.conf``
        parameters, unquoted values (``{"max_connections": "50"}``), that override
        the sandbox's own.
        """
        super().__init__(base_dir=base_dir, port=port, settings=settings)
        self._settings = dict(settings or {})
        self._bin_dir = find_postgres_bin_dir()
        self._as_system_user = os.geteuid() == 0
        self._conf_original: str | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """Directory of the PostgreSQL binaries in use."""
        return self._bin_dir

    @property
    def socket_dir(self) -> Path:
        """Directory of the server's Unix socket; raises before `start()`."""
        return self._started_socket_dir()

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """Return a libpq URL ``postgresql://user@127.0.0.1:PORT/dbname`` (no password needed)."""
        return f"postgresql://{quote(user, safe='')}@127.0.0.1:{self._port}/{quote(dbname, safe='')}"

    # -- lifecycle --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``, harder if needed) and delete its files.

        Idempotent and safe in any state: before `start()`, after a failed start, or
        twice. Never raises for a server that is already gone.
        """
        self._stop_and_clean(self._shut_down_if_started)

    def restart(self, mode: str = "fast") -> None:
        """Restart the server with ``pg_ctl restart -m MODE`` and wait until it accepts connections.

        `mode` is ``"fast"`` (clean shutdown) or ``"immediate"`` (like a crash: the
        server runs crash recovery on the way up). Connections are dropped either
        way. Raises `SandboxError` when the server does not come back.
        """
        if mode not in ("fast", "immediate"):
            raise ValueError(f"restart mode must be 'fast' or 'immediate', not {mode!r}")
        if not self._running:
            raise SandboxError("the PostgreSQL sandbox is not running")
        result = self._pg_ctl("restart", "-m", mode, "-l", str(self.log_path))
        if result.returncode != 0:
            raise SandboxError(self._failure("pg_ctl restart", result))
        self._wait_until_accepting()

    # -- databases --------------------------------------------------------------------------

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[TupleRow]:
        """Open an autocommit superuser connection to `dbname`; the caller closes it."""
        return psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10)

    def create_database(self, name: str) -> None:
        """Create database `name` (from template1); raises psycopg errors if it exists."""
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str, *, timeout: float = 30.0) -> None:
        """Drop database `name` and its replication slots; no error if it does not exist.

        Slots are dropped first because they block ``DROP DATABASE``: the backends or
        walsenders holding an active slot are terminated (``pg_terminate_backend``)
        and the slot dropped once released. Then ``DROP DATABASE ... WITH (FORCE)``
        ends any remaining sessions. Raises `SandboxError` if a slot is still held
        after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        with self.connect() as conn:
            while True:
                slots = conn.execute(
                    "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
                    (name,),
                ).fetchall()
                if not slots:
                    break
                for slot_name, active_pid in slots:
                    if active_pid is not None:
                        conn.execute("SELECT pg_terminate_backend(%s)", (active_pid,))
                        continue
                    with contextlib.suppress(psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
                if time.monotonic() > deadline:
                    held = ", ".join(str(slot) for slot, _ in slots)
                    raise SandboxError(f"replication slots of database {name!r} still held: {held}")
                time.sleep(0.02)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # -- internals --------------------------------------------------------------------------

    def _set_up(self) -> None:
        """Create the cluster (as the ``postgres`` user when we are root) and its pg_hba.conf."""
        if self._as_system_user:
            self._hand_over_to_system_user()
        self._initdb()
        self._write_hba()

    def _hand_over_to_system_user(self) -> None:
        """Give the server's directories to the ``postgres`` user and check it can reach them."""
        try:
            account = pwd.getpwnam(_PG_SYSTEM_USER)
        except KeyError:
            raise SandboxError(
                f"running as root, but there is no {_PG_SYSTEM_USER!r} system user to run PostgreSQL as"
            ) from None
        if shutil.which("runuser") is None:
            raise SandboxError("running as root, but runuser is not installed to run PostgreSQL as postgres")
        assert self._base is not None and self._socket_dir is not None
        for directory in {self._base, self._socket_dir}:
            os.chown(directory, account.pw_uid, account.pw_gid)
            self._make_reachable(directory, account)

    @staticmethod
    def _make_reachable(directory: Path, account: pwd.struct_passwd) -> None:
        """Ensure `account` can traverse every ancestor of `directory`.

        Ancestors inside the system temp directory (like pytest's 0700
        ``/tmp/pytest-of-root``) get the world "search" bit, which allows passing
        through without listing; any other blocking ancestor raises `SandboxError`.
        """
        tmp_root = Path(tempfile.gettempdir()).resolve()
        for ancestor in directory.parents:
            info = ancestor.stat()
            if info.st_uid == account.pw_uid and info.st_mode & stat.S_IXUSR:
                continue
            if info.st_gid == account.pw_gid and info.st_mode & stat.S_IXGRP:
                continue
            if info.st_mode & stat.S_IXOTH:
                continue
            if ancestor.is_relative_to(tmp_root) and ancestor != tmp_root:
                ancestor.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
                continue
            raise SandboxError(
                f"the {account.pw_name} user cannot reach {directory}: {ancestor} is not searchable; "
                "use a base_dir under the temp directory"
            )

    def _command(self, args: Sequence[str]) -> list[str]:
        """Return the argv for a server binary, through runuser when we are root."""
        argv = list(args)
        if self._as_system_user:
            return ["runuser", "-u", _PG_SYSTEM_USER, "--", *argv]
        return argv

    def _run(self, args: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a server binary to completion, capturing its output; never raises on exit status."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        try:
            return subprocess.run(
                self._command(args),
                cwd=self.base_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise SandboxError(f"{Path(args[0]).name} did not finish within {timeout:.0f}s") from err

    def _pg_ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``pg_ctl -D DATA -w -t TIMEOUT ARGS``."""
        argv = [str(self._bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", f"{timeout:.0f}", *args]
        return self._run(argv, timeout=timeout + 30)

    def _failure(self, what: str, result: subprocess.CompletedProcess[str]) -> str:
        """Describe a failed command, with its output and the server log's tail."""
        output = (result.stdout + result.stderr).strip()
        return (
            f"{what} failed (exit {result.returncode}) for the PostgreSQL sandbox in {self._base}:\n"
            f"{output}\n--- tail of {self.log_path.name} ---\n{_tail(self.log_path)}"
        )

    def _initdb(self) -> None:
        """Run initdb, with the C.UTF-8 locale when the system has it and plain C otherwise."""
        result: subprocess.CompletedProcess[str] | None = None
        for locale in ("C.UTF-8", "C"):
            argv = [
                str(self._bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                f"--locale={locale}",
                "--no-sync",
                "--no-instructions",
            ]
            result = self._run(argv, timeout=120)
            if result.returncode == 0:
                self._conf_original = (self.data_dir / "postgresql.conf").read_text(encoding="utf-8")
                return
            _remove_tree(self.data_dir)
            if "locale" not in (result.stdout + result.stderr).lower():
                break
        assert result is not None
        raise SandboxError(self._failure("initdb", result))

    def _write_config(self) -> None:
        """(Re)write the sandbox's settings at the end of postgresql.conf; later lines win."""
        assert self._conf_original is not None
        values: dict[str, str] = {
            "listen_addresses": "127.0.0.1",
            "port": str(self._port),
            "unix_socket_directories": str(self.socket_dir),
            "wal_level": "logical",
            "max_replication_slots": "32",
            "max_wal_senders": "32",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        values.update(self._settings)
        lines = [f"{name} = '{value.replace(chr(39), chr(39) * 2)}'" for name, value in values.items()]
        block = "\n# --- cdc.sandbox settings ---\n" + "\n".join(lines) + "\n"
        # Rewriting an existing file keeps its owner (postgres) and mode.
        (self.data_dir / "postgresql.conf").write_text(self._conf_original + block, encoding="utf-8")

    def _write_hba(self) -> None:
        """Replace pg_hba.conf: trust everyone locally and on 127.0.0.1, replication included."""
        (self.data_dir / "pg_hba.conf").write_text(
            "# cdc.sandbox: disposable server, trust everything local\n"
            "local   all          all                 trust\n"
            "local   replication  all                 trust\n"
            "host    all          all   127.0.0.1/32  trust\n"
            "host    replication  all   127.0.0.1/32  trust\n",
            encoding="utf-8",
        )

    def _try_start(self) -> str | None:
        """Write the config and run ``pg_ctl start``; None once the server accepts connections."""
        self._write_config()
        result = self._pg_ctl("start", "-l", str(self.log_path))
        if result.returncode != 0:
            return self._failure("pg_ctl start", result)
        self._wait_until_accepting()
        return None

    def _wait_until_accepting(self, timeout: float = 30.0) -> None:
        """Poll with real connections until the server accepts one; raises `SandboxError` on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as err:
                if time.monotonic() > deadline:
                    raise SandboxError(
                        f"PostgreSQL on port {self._port} does not accept connections: {err}\n"
                        f"--- tail of {self.log_path.name} ---\n{_tail(self.log_path)}"
                    ) from err
                time.sleep(0.05)

    def _shut_down_if_started(self) -> None:
        """Stop the postmaster if `start()` got as far as starting one."""
        if self._base is not None and (self._base / "data" / "postmaster.pid").exists():
            self._shut_down(self._base / "data")

    def _shut_down(self, data_dir: Path) -> None:
        """Stop the postmaster of `data_dir`: fast, then immediate, then SIGKILL."""
        for mode in ("fast", "immediate"):
            with contextlib.suppress(SandboxError, OSError):
                if self._pg_ctl("stop", "-m", mode, timeout=30).returncode == 0:
                    return
            if not (data_dir / "postmaster.pid").exists():
                return
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
            if pid > 0 and _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


class DisposableMariaDB(_DisposableServer):
    """A private MariaDB server in a temporary directory, with a full row-based binlog.

    The server listens on 127.0.0.1 only; ``root`` has an empty password. It runs
    with ``log_bin=ON``, ``binlog_format=ROW``, ``binlog_row_image=FULL``,
    ``binlog_row_metadata=FULL``, ``server_id=1`` and, for speed,
    ``innodb_flush_log_at_trx_commit=2`` (a killed server keeps its commits; only an
    OS crash could lose them). Queries go through the ``mariadb`` command-line client.

    Construct, then `start()` (or use it as a context manager), and `stop()` at the
    end; `stop()` is idempotent and deletes ``base_dir``, which also holds the pid
    file. ``data_dir`` holds the binlogs too and ``log_path`` is the server's error
    log (``--log-error``).
    """

    _KIND = "MariaDB"
    _SETTING_WORD = "option name"
    _LOG_NAME = "mariadb.err"
    _BASE_PREFIX = "cdc-mariadb-"
    _SOCKET_PREFIX = "cdc-mys-"
    _PORT_TAKEN = ("address already in use", "bind on tcp")

    #: Settings the sandbox passes unless the caller's `settings` override them.
    DEFAULT_SETTINGS: Mapping[str, str] = {"innodb-flush-log-at-trx-commit": "2"}

    def __init__(
        self,
        *,
        base_dir: Path | None = None,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Describe a server; nothing runs until `start()`.

        `base_dir` is the directory the server owns (created if missing, deleted by
        `stop()`); by default a new ``/tmp/cdc-mariadb-*`` directory. `port` is the
        TCP port, by default a free one. `settings` become extra ``--key=value``
        server options (``{"max-connections": "50"}``; ``_`` and ``-`` are the same),
        placed last so they override the sandbox's own.
        """
        super().__init__(base_dir=base_dir, port=port, settings=settings)
        merged = {key.replace("_", "-"): value for key, value in self.DEFAULT_SETTINGS.items()}
        merged.update({key.replace("_", "-"): value for key, value in (settings or {}).items()})
        self._settings = merged
        self._server_bin = _find_program(["mariadbd", "mysqld"])
        self._install_bin = _find_program(["mariadb-install-db", "mysql_install_db"])
        self._client_bin = _find_program(["mariadb", "mysql"])
        self._is_root = os.geteuid() == 0
        self._process: subprocess.Popen[bytes] | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def user(self) -> str:
        """The superuser to log in as: ``root``."""
        return "root"

    @property
    def password(self) -> str:
        """The superuser's password: empty."""
        return ""

    @property
    def socket_path(self) -> Path:
        """The server's Unix socket; raises before `start()`."""
        return self._started_socket_dir() / "mysqld.sock"

    # -- lifecycle --------------------------------------------------------------------------

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout` seconds) and delete its files.

        Idempotent and safe in any state: before `start()`, after a failed start, or twice.
        """
        self._stop_and_clean(lambda: self._terminate(timeout))

    # -- queries ----------------------------------------------------------------------------

    def execute(self, statements: str, *, database: str | None = None, timeout: float = 60.0) -> str:
        """Run SQL `statements` (one or more, ``;``-separated) as root with the ``mariadb`` client.

        Returns the client's batch output: result rows, tab-separated, without
        column names. Stops at the first failing statement and raises
        `SandboxError` with the client's error message.
        """
        result = self._client(statements, database=database, timeout=timeout)
        if result.returncode != 0:
            raise SandboxError(f"mariadb client failed (exit {result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def query(self, statement: str, *, database: str | None = None) -> list[tuple[str, ...]]:
        """Run one SQL query and return its rows as tuples of text, as the client prints them.

        The client writes SQL NULL as the string ``NULL`` and escapes tabs, newlines
        and backslashes in values (``\\t``, ``\\n``, ``\\\\``); compare accordingly.
        """
        output = self.execute(statement, database=database)
        return [tuple(line.split("\t")) for line in output.splitlines()]

    def create_database(self, name: str) -> None:
        """Create database `name` (utf8mb4); raises `SandboxError` if it exists."""
        self.execute(f"CREATE DATABASE {_mysql_identifier(name)} CHARACTER SET utf8mb4")

    def drop_database(self, name: str) -> None:
        """Drop database `name`; no error if it does not exist."""
        self.execute(f"DROP DATABASE IF EXISTS {_mysql_identifier(name)}")

    # -- internals --------------------------------------------------------------------------

    def _client(
        self, statements: str, *, database: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Feed `statements` to the ``mariadb`` client over TCP; never raises on exit status."""
        argv = [
            self._client_bin,
            "--no-defaults",
            "--protocol=TCP",
            "--host=127.0.0.1",
            f"--port={self._port}",
            "--user=root",
            "--connect-timeout=5",
            "--batch",
            "--skip-column-names",
        ]
        if database is not None:
            argv.append(f"--database={database}")
        try:
            return subprocess.run(
                argv, input=statements, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as err:
            raise SandboxError(f"mariadb client did not finish within {timeout:.0f}s") from err

    def _set_up(self) -> None:
        """Create the data directory with mariadb-install-db."""
        self._install()

    def _install(self) -> None:
        """Run mariadb-install-db: system tables, root@localhost/127.0.0.1 with no password."""
        argv = [
            self._install_bin,
            "--no-defaults",  # must come first
            "--auth-root-authentication-method=normal",
            f"--datadir={self.data_dir}",
            "--skip-test-db",
        ]
        if self._is_root:
            argv.append("--user=root")
        install_log = self.base_dir / "install.log"
        with install_log.open("wb") as log:
            try:
                result = subprocess.run(
                    argv,
                    cwd=self.base_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=120,
                    check=False,
                )
            except subprocess.TimeoutExpired as err:
                raise SandboxError("mariadb-install-db did not finish within 120s") from err
        if result.returncode != 0:
            raise SandboxError(
                f"mariadb-install-db failed (exit {result.returncode}) in {self.base_dir}:\n"
                f"{_tail(install_log)}"
            )

    def _server_argv(self) -> list[str]:
        """Return the mariadbd command line for the current port."""
        argv = [
            self._server_bin,
            "--no-defaults",  # must come first
            f"--datadir={self.data_dir}",
            f"--socket={self.socket_path}",
            f"--port={self._port}",
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--log-bin=mysql-bin",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL",
            "--server-id=1",
            f"--log-error={self.log_path}",
            f"--pid-file={self.base_dir / 'mariadb.pid'}",
        ]
        if self._is_root:
            argv.insert(2, "--user=root")
        argv.extend(f"--{key}={value}" for key, value in self._settings.items())
        return argv

    def _try_start(self) -> str | None:
        """Start mariadbd; None once root can log in, else why not (with mariadbd stopped)."""
        console_path = self.base_dir / "mariadbd.out"
        self.socket_path.unlink(missing_ok=True)
        with console_path.open("ab") as console:
            self._process = subprocess.Popen(
                self._server_argv(),
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        error = self._wait_until_accepting()
        if error is None:
            return None
        self._terminate(5.0)
        return (
            f"mariadbd failed to start in {self.base_dir}: {error}\n"
            f"--- tail of {self.log_path.name} ---\n{_tail(self.log_path)}\n"
            f"--- tail of {console_path.name} ---\n{_tail(console_path)}"
        )

    def _wait_until_accepting(self, timeout: float = 60.0) -> str | None:
        """Wait until root can log in over TCP; return None then, or why it never happened."""
        assert self._process is not None
        deadline = time.monotonic() + timeout
        last_error = "timed out"
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                return f"mariadbd exited with status {code}"
            # mariadbd creates its Unix socket only after binding the TCP port, so until
            # the socket exists, whatever answers on the port is not our server.
            if not self.socket_path.exists():
                last_error = f"{self.socket_path} not created yet"
                time.sleep(0.05)
                continue
            try:
                with socket.create_connection(("127.0.0.1", self._port), timeout=1):
                    pass
            except OSError as err:
                last_error = f"port {self._port}: {err.strerror or err}"
            else:
                result = self._client("SELECT 1", database=None, timeout=30)
                if result.returncode == 0:
                    return None
                last_error = result.stderr.strip()
            time.sleep(0.05)
        return f"no login within {timeout:.0f}s ({last_error})"

    def _terminate(self, timeout: float) -> None:
        """Stop the server process, if any: SIGTERM, then SIGKILL after `timeout` seconds."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _mysql_identifier(name: str) -> str:
    """Quote `name` as a MariaDB identifier (backticks, embedded backticks doubled)."""
    if "\x00" in name:
        raise ValueError("identifiers cannot contain NUL")
    return "`" + name.replace("`", "``") + "`"


class _DisposableBroker(_DisposableServer):
    """What `DisposableNats` and `DisposableRedis` share: one foreground process.

    The server runs from a config file written by `_config_text` into `base_dir`,
    logs to `log_path`, and counts as up once its log says `_READY` and its TCP port
    answers. Besides `stop()`, `halt()` stops the process but keeps its files and
    `resume()` starts it again on the same port: a broker outage for the sinks' tests.
    """

    #: Lowercased log text saying the server accepts connections.
    _READY: ClassVar[str]
    _CONFIG_NAME: ClassVar[str]

    def __init__(self, *, base_dir: Path | None, port: int | None, settings: Mapping[str, str] | None,
                 programs: Sequence[str]) -> None:
        super().__init__(base_dir=base_dir, port=port, settings=settings)
        self._settings = dict(settings or {})
        self._server_bin = _find_program(programs)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        """The server's config file in `base_dir`; raises before `start()`."""
        return self.base_dir / self._CONFIG_NAME

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (None when halted or stopped)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout` s) and delete its files; idempotent."""
        self._stop_and_clean(lambda: self._terminate(timeout))

    def halt(self, *, kill: bool = False, timeout: float = 15.0) -> None:
        """Stop the server process but keep its files (SIGTERM, or SIGKILL with `kill`)."""
        if not self._running:
            raise SandboxError(f"the {self._KIND} sandbox is not running")
        process = self._process
        if kill and process is not None and process.poll() is None:
            process.kill()
        self._terminate(timeout)

    def resume(self) -> None:
        """Start the halted server again, on the same port and with the same files."""
        if not self._running:
            raise SandboxError(f"the {self._KIND} sandbox is not running")
        if self._process is not None and self._process.poll() is None:
            raise SandboxError(f"the {self._KIND} sandbox was not halted")
        failure = self._try_start()
        if failure is not None:
            raise SandboxError(failure)

    def _config_text(self) -> str:
        """The server's config file for the current port."""
        raise NotImplementedError

    def _argv(self) -> list[str]:
        """The server's command line."""
        raise NotImplementedError

    def _set_up(self) -> None:
        (self.base_dir / "data").mkdir(exist_ok=True)

    def _try_start(self) -> str | None:
        """Write the config (the port may have changed), start, wait; None once it is up."""
        self.config_path.write_text(self._config_text(), encoding="utf-8")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        console_path = self.base_dir / "console.out"
        with console_path.open("ab") as console:
            self._process = subprocess.Popen(
                self._argv(), cwd=self.base_dir, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        error = self._wait_until_ready(offset)
        if error is None:
            return None
        self._terminate(5.0)
        return (
            f"{Path(self._server_bin).name} failed to start in {self.base_dir}: {error}\n"
            f"--- tail of {self.log_path.name} ---\n{_tail(self.log_path)}\n"
            f"--- tail of {console_path.name} ---\n{_tail(console_path)}"
        )

    def _wait_until_ready(self, offset: int, timeout: float = 30.0) -> str | None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                return f"the server exited with status {code}"
            if self._READY in self._log_since(offset):
                try:
                    with socket.create_connection(("127.0.0.1", self._port), timeout=1):
                        return None
                except OSError:
                    pass
            time.sleep(0.02)
        return f"not ready within {timeout:.0f}s"

    def _terminate(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class DisposableNats(_DisposableBroker):
    """A private ``nats-server`` with JetStream (file storage in `store_dir`) on 127.0.0.1.

    No authentication. Construct, `start()` (or use as a context manager), `stop()`
    at the end (deletes `base_dir`); `halt()`/`resume()` stop and restart the process
    with its streams kept. `settings` are extra top-level config lines
    (``{"max_payload": "2MB"}``).
    """

    _KIND = "NATS"
    _SETTING_WORD = "option name"
    _LOG_NAME = "nats-server.log"
    _CONFIG_NAME = "nats-server.cfg"
    _BASE_PREFIX = "cdc-nats-"
    _SOCKET_PREFIX = "cdc-nas-"
    _PORT_TAKEN = ("address already in use",)
    _READY = "server is ready"

    def __init__(self, *, base_dir: Path | None = None, port: int | None = None,
                 settings: Mapping[str, str] | None = None) -> None:
        """Describe a server; nothing runs until `start()` (by default on a free port)."""
        super().__init__(base_dir=base_dir, port=port, settings=settings, programs=["nats-server"])

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self._port}"

    @property
    def store_dir(self) -> Path:
        """JetStream's storage directory; raises before `start()`."""
        return self.data_dir / "jetstream"

    def _argv(self) -> list[str]:
        return [self._server_bin, "-c", str(self.config_path)]

    def _config_text(self) -> str:
        lines = [
            f"listen: 127.0.0.1:{self._port}",
            "server_name: cdc_sandbox",
            f"log_file: {json_string_literal(str(self.log_path))}",
            f"jetstream {{\n  store_dir: {json_string_literal(str(self.store_dir))}\n}}",
        ]
        lines.extend(f"{key}: {value}" for key, value in self._settings.items())
        return "\n".join(lines) + "\n"


class DisposableRedis(_DisposableBroker):
    """A private ``redis-server`` on 127.0.0.1 that loses no acknowledged write.

    It runs with ``appendonly yes`` and ``appendfsync always`` (every write is in the
    append-only file before the reply) and no RDB snapshots, so `halt(kill=True)` is a
    crash that loses nothing. No password. `settings` are extra config directives
    (``{"maxmemory": "100mb"}``).
    """

    _KIND = "Redis"
    _SETTING_WORD = "directive"
    _LOG_NAME = "redis.log"
    _CONFIG_NAME = "redis.conf"
    _BASE_PREFIX = "cdc-redis-"
    _SOCKET_PREFIX = "cdc-res-"
    _PORT_TAKEN = ("address already in use",)
    _READY = "ready to accept connections"

    def __init__(self, *, base_dir: Path | None = None, port: int | None = None,
                 settings: Mapping[str, str] | None = None) -> None:
        """Describe a server; nothing runs until `start()` (by default on a free port)."""
        super().__init__(base_dir=base_dir, port=port, settings=settings, programs=["redis-server"])

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self._port}/0"

    def _argv(self) -> list[str]:
        return [self._server_bin, str(self.config_path)]

    def _config_text(self) -> str:
        settings = {
            "bind": "127.0.0.1",
            "port": str(self._port),
            "protected-mode": "yes",
            "daemonize": "no",
            "dir": json_string_literal(str(self.data_dir)),
            "logfile": json_string_literal(str(self.log_path)),
            "appendonly": "yes",
            "appendfsync": "always",
            "save": '""',
            **self._settings,
        }
        return "".join(f"{key} {value}\n" for key, value in settings.items())


def json_string_literal(text: str) -> str:
    """`text` in double quotes with JSON escapes: a string both nats-server and Redis configs read."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
