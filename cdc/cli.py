"""The command line: ``cdc run``, ``validate``, ``snapshot``, ``status``, ``reload``, ``reset``, ``--version``.

A user mistake (bad config, unreachable source, server not set up) prints one line,
``cdc: error: ...``, on stderr and exits with code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from pathlib import Path

import orjson

from cdc import __version__, redaction
from cdc.checkpoints import ensure_state_dir, write_atomically
from cdc.config import Config, iter_jobs, load_config
from cdc.errors import CdcError
from cdc.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdc", description="Change data capture daemon.")
    parser.add_argument("--version", action="version", version=f"cdc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the jobs of a config file until stopped (SIGTERM/SIGINT)")
    run.add_argument("config", type=Path)
    run.add_argument("--job", action="append", help="run only this job (repeatable)")
    validate = sub.add_parser("validate", help="check a config file and exit")
    validate.add_argument("config", type=Path)
    snapshot = sub.add_parser(
        "snapshot", help="ask a job to (re-)snapshot tables while it streams (picked up within a second)"
    )
    snapshot.add_argument("config", type=Path)
    snapshot.add_argument("--job", required=True, help="the job whose tables to snapshot")
    snapshot.add_argument("--table", action="append", help="schema.table (repeatable); default: all its tables")
    # docs/operations.md: status, reload, reset.
    status = sub.add_parser("status", help="every job's state, positions, lag, throughput and snapshot progress")
    status.add_argument("config", type=Path)
    status.add_argument("--job", action="append", help="only this job (repeatable)")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    reload = sub.add_parser("reload", help="make the running daemon re-read the config (start/stop/restart jobs)")
    reload.add_argument("config", type=Path)
    reset = sub.add_parser("reset", help="drop a job's slot, publication and checkpoints (its next start is a first)")
    reset.add_argument("config", type=Path)
    reset.add_argument("--job", required=True, help="the job to reset")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        redaction.register(redaction.secrets_of(config))
        if args.command == "validate":
            print(f"{args.config}: OK ({len(config.jobs)} job{'s' if len(config.jobs) != 1 else ''})")
            return 0
        # Every file and directory cdc (or a library it drives) creates from here on: 0600/0700 by default.
        os.umask(config.umask_bits())
        if args.command == "snapshot":
            return _request_snapshot(config, args.job, args.table or [])
        if args.command in ("status", "reload", "reset"):
            return _control(args, config)
        jobs = list(iter_jobs(config, args.job))
        ensure_state_dir(config.state_dir)  # before any job creates a slot or publication
        configure_logging(config.log_level, config.log_format)
        from cdc.daemon import Daemon

        daemon = Daemon(config, jobs, config_path=args.config, only=args.job)
        # A stream allocates a few containers per row (tuples, dicts) that reference counting
        # frees; with the default first threshold (700) the cyclic collector ran ~300 times a
        # second over the live batches, 10-15% of a MySQL stream's time (docs/mysql.md). The
        # objects of start-up (modules, config) are never garbage: out of every collection.
        gc.freeze()
        gc.set_threshold(50_000, 10, 10)
        code = asyncio.run(daemon.run())
        for outcome in daemon.outcomes.values():
            if outcome.error is not None:
                print(f"cdc: error: {redaction.redact(str(outcome.error))}", file=sys.stderr)
        return code
    except CdcError as err:
        print(f"cdc: error: {redaction.redact(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


def _control(args: argparse.Namespace, config: Config) -> int:
    """``cdc status``, ``cdc reload``, ``cdc reset`` (cdc/status.py, cdc/control.py)."""
    if args.command == "status":
        from rich.console import Console

        from cdc.status import collect, render

        doc = collect(config, list(iter_jobs(config, args.job)))
        if args.json:
            print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        else:
            render(doc, Console())
        return 0
    from cdc.control import reload_daemon, reset_job

    if args.command == "reload":
        print(reload_daemon(config))
        return 0
    (job,) = iter_jobs(config, [args.job])
    done = reset_job(config, job, yes=args.yes)
    print(f"job {job.name} reset: " + ("; ".join(done) if done else "it had no slot, publication or state"))
    return 0


def _request_snapshot(config: Config, job: str, tables: list[str]) -> int:
    """Leave a snapshot request where the job's source looks for it (its state directory)."""
    (found,) = iter_jobs(config, [job])
    ensure_state_dir(config.state_dir)
    path = config.state_dir / f"{found.name}.snapshot-request.json"
    write_atomically(path, orjson.dumps({"tables": tables}))
    what = ", ".join(tables) if tables else "all its tables"
    print(f"snapshot of {what} requested for job {found.name}: a running daemon starts it within a second "
          f"(otherwise at the job's next start); progress shows as snapshot_progress in its log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
