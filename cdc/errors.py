"""One error tree for the whole daemon.

Every error a user can cause or meet is a `CdcError` subclass with a one-line,
actionable message. Retryability lives on the class (like psycopg's error classes):
the supervisor retries a job with backoff when `retryable` is true and stops it with
the message when it is false. An error with `mistake_at_first_start` (an unreachable
source or sink) is retried too, but only once the job has streamed (now or in an earlier
run: it has a checkpoint); before that it is taken for a setup mistake and stops the job.
Keep the cause: ``raise SomeError(...) from err``.
"""

from __future__ import annotations

from typing import ClassVar


class CdcError(Exception):
    """Base of every error cdc raises on purpose."""

    retryable: ClassVar[bool] = False
    #: A retryable error that, in a job that never streamed, is a setup mistake (wrong host,
    #: port, credentials or database) rather than an outage: the job stops instead of retrying.
    mistake_at_first_start: ClassVar[bool] = False
    #: Process exit code of the CLI when this error stops it.
    exit_code: ClassVar[int] = 2


class ConfigError(CdcError):
    """The configuration file is wrong: it names the file, line and key."""


class SourceError(CdcError):
    """The source database refused or lacks what the job needs."""


class SourceConnectionError(SourceError):
    """The source cannot be reached right now (network, restart, too many clients)."""

    retryable = True


class SourceUnreachableError(SourceError):
    """The source cannot be reached: wrong host, port or credentials, or the server is down.

    Retryable once the job has streamed (a server restart, also across a restart of cdc:
    the job has a checkpoint); at the first start of a job that never streamed the daemon
    treats it as a setup mistake and stops the job.
    """

    retryable = True
    mistake_at_first_start = True


class SourceSetupError(SourceError):
    """The source server is not set up for CDC (wal_level, privileges, binlog format)."""


class SlotInUseError(SourceError):
    """Another process holds the replication slot."""


class SlotInvalidatedError(SourceError):
    """The replication slot was dropped or invalidated under the job."""


class MissingTableError(SourceError):
    """A table named in the job's selection does not exist in the source."""


class DecodeError(CdcError):
    """A replication message could not be decoded; the message names its LSN."""


class SinkError(CdcError):
    """A sink refused its configuration or its stored state."""


class SchemaChangeError(SinkError):
    """A source table changed in a way a sink cannot follow in place (e.g. text -> int)."""


class SinkWriteError(SinkError):
    """A sink could not make a batch durable; the batch is retried."""

    retryable = True


class SinkUnreachableError(SinkWriteError):
    """A sink's target cannot be reached or opened: wrong address, credentials or database, or it is down.

    Like `SourceUnreachableError`: retried once the job has streamed, a setup mistake before.
    """

    mistake_at_first_start = True


class InternalError(CdcError):
    """A bug in cdc (an exception no code path expected); the job stops, exit code 1."""

    exit_code = 1


class CheckpointError(CdcError):
    """The checkpoint store, or another state file under ``state_dir`` (snapshot progress,
    binlog bookmarks, the spool of in-progress transactions), cannot be read or written."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (driver errors carry DETAIL/HINT lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
