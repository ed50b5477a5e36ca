"""What several subcommands share: the build-selection flags and how sizes are printed."""

from __future__ import annotations

import argparse


def add_build_selection(parser: argparse.ArgumentParser) -> None:
    """``--target``, ``--build-arg``, ``--build-context``: spelled and meant as docker build's."""
    parser.add_argument("--target", metavar="STAGE", help="the stage to build (default: the last)")
    parser.add_argument(
        "--build-arg",
        action="append",
        metavar="NAME[=VALUE]",
        help="set a build-time variable; NAME alone takes it from the environment (repeatable)",
    )
    parser.add_argument(
        "--build-context",
        action="append",
        metavar="NAME=SOURCE",
        help="an image FROM and COPY --from can name: NAME=oci-layout://PATH[:TAG], "
        "NAME=docker-archive://FILE or NAME=DIR (repeatable)",
    )


def format_size(n: int) -> str:
    """``1.5 GiB``: binary units, as ``--max-size`` reads them."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
