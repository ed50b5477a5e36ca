"""The ``memobuild`` command line: a thin face on the Python API (subcommands in commands/)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from memobuild import __version__
from memobuild.commands import COMMANDS
from memobuild.errors import InputError, MemoBuildError
from memobuild.logging import configure_logging, logger

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memobuild",
        description="A daemonless, incremental container image builder.",
    )
    parser.add_argument("--version", action="version", version=f"memobuild {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logs on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_logging("DEBUG" if args.debug else None)
        code: int = args.func(args)
        return code
    except MemoBuildError as err:
        if args.debug:
            logger.exception(str(err))
        else:
            print(f"memobuild: error: {err}", file=sys.stderr)
        # Usage and input errors are 2, as docker build's; anything that failed while
        # working (a step, the store, a verification) is 1.
        return EXIT_USAGE if isinstance(err, InputError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("memobuild: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
