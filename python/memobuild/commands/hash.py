"""`memobuild hash PATH`: the content digest of a directory tree."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from memobuild.commands.options import format_size
from memobuild.errors import InputError
from memobuild.hashing import hash_tree
from memobuild.ignore import read_dockerignore


def run(args: argparse.Namespace) -> int:
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
            f"{format_size(result.bytes)} ({result.hashed_files} hashed, "
            f"{result.cache_hits} from the stat cache) in {seconds:.3f}s"
        )
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    h.set_defaults(func=run)
