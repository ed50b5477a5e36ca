"""The ``memobuild`` command line: a thin face on the Python API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from memobuild import __version__
from memobuild.errors import InputError, MemoBuildError
from memobuild.hashing import hash_tree
from memobuild.ignore import read_dockerignore
from memobuild.logging import configure_logging, logger

EXIT_OK = 0
EXIT_STEP_FAILED = 1
EXIT_USAGE = 2


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _cmd_hash(args: argparse.Namespace) -> int:
    patterns = None
    if args.dockerignore is not None:
        try:
            text = Path(args.dockerignore).read_text(encoding="utf-8")
        except FileNotFoundError as err:
            raise InputError(f"{args.dockerignore}: .dockerignore file does not exist") from err
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"{args.dockerignore}: cannot read: {err}") from err
        patterns = read_dockerignore(text)
    started = time.perf_counter()
    result = hash_tree(
        args.path,
        dockerignore=patterns,
        gitignore=args.gitignore,
        stat_cache=args.stat_cache if args.stat_cache is not None else not args.no_stat_cache,
    )
    seconds = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "path": args.path,
                    "digest": result.digest,
                    "files": result.files,
                    "dirs": result.dirs,
                    "symlinks": result.symlinks,
                    "bytes": result.bytes,
                    "hashed_files": result.hashed_files,
                    "cache_hits": result.cache_hits,
                    "seconds": round(seconds, 6),
                }
            )
        )
    else:
        print(f"{result.digest}  {args.path}")
        print(
            f"{result.files} files, {result.dirs} directories, {result.symlinks} symlinks, "
            f"{_human_bytes(result.bytes)} ({result.hashed_files} hashed, "
            f"{result.cache_hits} from the stat cache) in {seconds:.3f}s"
        )
    return EXIT_OK


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

    h = sub.add_parser(
        "hash",
        help="print the content digest of a directory tree",
        description="Print the BLAKE3 Merkle digest of a directory tree (schema "
        "memobuild.tree.v1), with its file count and size. Paths excluded by a "
        ".dockerignore or by .gitignore files are left out.",
    )
    h.add_argument("path", help="the directory to hash")
    which = h.add_mutually_exclusive_group()
    which.add_argument(
        "--dockerignore", metavar="FILE", help="leave out what this .dockerignore file excludes"
    )
    which.add_argument(
        "--gitignore",
        action="store_true",
        help="honour the tree's .gitignore files (and .git/info/exclude) and skip .git",
    )
    cache = h.add_mutually_exclusive_group()
    cache.add_argument(
        "--no-stat-cache", action="store_true", help="read every file, keep no stat cache"
    )
    cache.add_argument(
        "--stat-cache",
        metavar="FILE",
        help="keep the stat cache in FILE (default: under $MEMOBUILD_CACHE_DIR/statcache)",
    )
    h.add_argument("--json", action="store_true", help="print one JSON object")
    h.set_defaults(func=_cmd_hash)
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
        return EXIT_USAGE if isinstance(err, InputError) else EXIT_STEP_FAILED
    except KeyboardInterrupt:
        print("memobuild: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
