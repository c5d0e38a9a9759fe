"""The command line: ``cdc run``, ``cdc validate``, ``cdc --version``.

A user mistake (bad config, unreachable source, server not set up) prints one line,
``cdc: error: ...``, on stderr and exits with code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from cdc import __version__
from cdc.config import iter_jobs, load_config
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "validate":
            print(f"{args.config}: OK ({len(config.jobs)} job{'s' if len(config.jobs) != 1 else ''})")
            return 0
        jobs = list(iter_jobs(config, args.job))
        configure_logging(config.log_level, config.log_format)
        from cdc.daemon import Daemon

        daemon = Daemon(config, jobs)
        code = asyncio.run(daemon.run())
        for outcome in daemon.outcomes.values():
            if outcome.error is not None:
                print(f"cdc: error: {outcome.error}", file=sys.stderr)
        return code
    except CdcError as err:
        print(f"cdc: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
