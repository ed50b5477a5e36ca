"""`memobuild images` and `memobuild rmi`: the images ``memobuild build -t`` stored locally."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import datetime

from memobuild.commands.cache import format_size
from memobuild.errors import InputError

__all__ = ["add_parser"]

DIGEST_CHARS = 12  # hex digits of a digest in the table; --json has them whole


def _store_dir(args: argparse.Namespace) -> str | None:
    value: str | None = args.cache_dir
    return value


def run_images(args: argparse.Namespace) -> int:
    # Imported here: only these commands need the store; importing it costs every other one.
    from memobuild.cache.store import LocalStore
    from memobuild.images import ImageStore

    with LocalStore(_store_dir(args)) as store:
        infos = ImageStore(store).list()
    if args.json:
        print(json.dumps([asdict(info) for info in infos], indent=2))
        return 0
    if not infos:
        print("no images; build one with memobuild build -t NAME")
        return 0
    width = max(len("NAME"), *(len(info.name) for info in infos))
    print(f"{'NAME':<{width}}  {'DIGEST':<{DIGEST_CHARS}}  {'CREATED':<20}  {'TAGGED':<19}  SIZE")
    for info in infos:
        short = info.digest.split(":", 1)[1][:DIGEST_CHARS]
        created = info.created or "-"
        tagged = datetime.fromtimestamp(info.tagged).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{info.name:<{width}}  {short:<{DIGEST_CHARS}}  {created[:20]:<20}  {tagged:<19}  "
            f"{format_size(info.size)}"
        )
    return 0


def run_rmi(args: argparse.Namespace) -> int:
    from memobuild.cache.store import LocalStore
    from memobuild.images import ImageStore

    missing = []
    with LocalStore(_store_dir(args)) as store:
        images = ImageStore(store)
        for name in args.names:
            if images.remove(name):
                print(f"untagged: {name}")
            else:
                missing.append(name)
    if missing:
        raise InputError(f"no such image: {', '.join(missing)} (memobuild images lists them)")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the cache holding the images (default: $MEMOBUILD_CACHE_DIR, else "
        "~/.cache/memobuild)",
    )
    images = sub.add_parser(
        "images",
        parents=[common],
        help="list the images built with -t",
        description="List the local images (memobuild build -t NAME): name, manifest digest, "
        "created time (when the image records one), when the name was given, and the size of "
        "its blobs in the cache.",
    )
    images.add_argument("--json", action="store_true", help="print JSON")
    images.set_defaults(func=run_images)

    rmi = sub.add_parser(
        "rmi",
        parents=[common],
        help="remove local image names",
        description="Remove names from the local image store. A manifest digest removes every "
        "name of that image. An image's blobs are freed by memobuild cache gc/prune once no "
        "name points at it.",
    )
    rmi.add_argument("names", nargs="+", metavar="NAME", help="image name (name[:tag]) or digest")
    rmi.set_defaults(func=run_rmi)
