"""`memobuild import SOURCE NAME[:TAG]`: a root filesystem as a one-layer image, like
``docker import``.

SOURCE is a directory, a tar file (plain, gzip, bzip2 or xz) or ``-`` for a tar on stdin. The
image goes into the local image store under NAME, where ``FROM NAME`` finds it.
``--change 'INSTRUCTION'`` (repeatable) sets the config as a Dockerfile instruction would:
CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR.
With SOURCE_DATE_EPOCH set, the image's created time and a directory's file times are that
instant, so the same input always gives the same image digest.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["add_parser", "run_import"]


def run_import(args: argparse.Namespace) -> int:
    # Imported here: only this command needs the store and the layer writer.
    from memobuild.build.layers import source_date_epoch_from_env
    from memobuild.cache.store import LocalStore
    from memobuild.commands.cache import format_size
    from memobuild.images import import_image

    epoch = source_date_epoch_from_env()
    with tempfile.TemporaryDirectory(prefix="memobuild-stdin-") as spool:
        source = Path(args.source)
        if args.source == "-":
            source = Path(spool) / "stdin.tar"
            with source.open("wb") as out:
                shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
        with LocalStore(args.cache_dir) as store:
            result = import_image(
                store,
                source,
                [args.name],
                changes=args.change,
                message=args.message,
                platform=args.platform,
                source_date_epoch=epoch,
            )
    layer = result.image.layers[0]
    print(
        f"imported {args.source} ({result.source_kind}, {result.entries} entries, "
        f"{format_size(layer.size)}) as {', '.join(result.names)}"
    )
    print(result.digest)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "import",
        help="make an image from a root filesystem (directory or tar)",
        description="Make a one-layer image from a root filesystem, like docker import, and "
        "save it in the local image store under NAME (FROM NAME then finds it). SOURCE is a "
        "directory, a tar file (plain, gzip, bzip2 or xz) or - for a tar on stdin. With "
        "SOURCE_DATE_EPOCH set, importing the same input gives the same image digest.",
    )
    parser.add_argument("source", metavar="SOURCE", help="directory, tar file, or - for stdin")
    parser.add_argument("name", metavar="NAME[:TAG]", help="the image's name (default tag latest)")
    parser.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        metavar="INSTRUCTION",
        help="apply a Dockerfile instruction to the config, e.g. 'CMD [\"sh\"]' or "
        "'ENV PATH=/bin' (repeatable; CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, "
        "ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR)",
    )
    parser.add_argument("-m", "--message", help="the history comment of the image's layer")
    parser.add_argument(
        "--platform", metavar="OS/ARCH[/VARIANT]", help="the image's platform (default: this host)"
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the cache holding the images (default: $MEMOBUILD_CACHE_DIR, else "
        "~/.cache/memobuild)",
    )
    parser.set_defaults(func=run_import)
