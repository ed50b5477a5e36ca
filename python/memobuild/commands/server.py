"""`memobuild server`: run the verifying remote cache server (see memobuild/server/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from memobuild.commands.cache import parse_duration, parse_size
from memobuild.errors import InputError
from memobuild.server.config import DEFAULT_MAX_BLOB_SIZE, DEFAULT_TIMEOUT, ServerConfig

__all__ = ["add_parser"]


def run(args: argparse.Namespace) -> int:
    from memobuild.server.run import serve  # aiohttp is imported only by this command

    try:
        config = ServerConfig(
            storage=Path(args.storage),
            host=args.host,
            port=args.port,
            max_size=parse_size(args.max_size) if args.max_size else None,
            max_blob_size=parse_size(args.max_blob_size),
            timeout=parse_duration(args.timeout),
            token_file=Path(args.token_file) if args.token_file else None,
        )
    except ValueError as err:
        raise InputError(f"server: {err}") from err
    serve(config)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "server",
        help="run the remote cache server",
        description="Serve a cache over HTTP for `memobuild build --cache-from/--cache-to`: "
        "blobs verified on upload, action entries validated, bearer-token auth, LRU bounded "
        "storage, Prometheus metrics at /metrics. Without --token-file it serves loopback only.",
    )
    p.add_argument("--storage", required=True, metavar="DIR", help="where to keep the cache")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; others need --token-file)",
    )
    p.add_argument(
        "--max-size",
        metavar="SIZE",
        help="evict least recently used entries and blobs beyond this size, e.g. 50G "
        "(default: no limit)",
    )
    p.add_argument(
        "--max-blob-size",
        metavar="SIZE",
        default=f"{DEFAULT_MAX_BLOB_SIZE >> 30}G",
        help=f"largest blob accepted (default: {DEFAULT_MAX_BLOB_SIZE >> 30}G)",
    )
    p.add_argument(
        "--timeout",
        metavar="DURATION",
        default=f"{DEFAULT_TIMEOUT:g}s",
        help="cut off a client that sends nothing for this long, e.g. 30s "
        f"(default: {DEFAULT_TIMEOUT:g}s)",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="bearer tokens, one '<token> ro|rw' per line; required to listen beyond loopback",
    )
    p.set_defaults(func=run)
