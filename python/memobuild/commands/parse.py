"""`memobuild parse [-f Dockerfile] [--format=json|buildkit-ast]`: show how a Dockerfile reads.

``buildkit-ast`` prints the same s-expressions BuildKit's parser tests use, so our reading can be
diffed line by line against BuildKit's. Parse warnings go to stderr as ``file:line: warning``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from memobuild.dockerfile.dump import dump_buildkit_ast, to_json
from memobuild.dockerfile.parser import parse, read_dockerfile
from memobuild.errors import InputError

FORMATS = ("json", "buildkit-ast")


def _read(path: str) -> tuple[str, str]:
    """Return (text, name used in messages). Undecodable bytes become U+FFFD: BuildKit reads
    bytes, and a stray Latin-1 comment must not stop a Dockerfile from parsing."""
    if path == "-":
        return read_dockerfile(sys.stdin.buffer, "<stdin>"), "<stdin>"
    try:
        with Path(path).open("rb") as file:
            return read_dockerfile(file, path), path
    except FileNotFoundError as err:
        raise InputError(f"{path}: Dockerfile does not exist") from err
    except IsADirectoryError as err:
        raise InputError(f"{path}: is a directory, not a Dockerfile") from err
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from err


def run(args: argparse.Namespace) -> int:
    text, name = _read(args.file)
    df = parse(text, filename=name)
    for warning in df.warnings:
        rule = f" ({warning.rule})" if warning.rule else ""
        print(f"{name}:{warning.line}: warning: {warning.message}{rule}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(to_json(df), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(dump_buildkit_ast(df))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "parse",
        help="parse a Dockerfile and print its instructions",
        description="Parse a Dockerfile the way BuildKit does and print the result: as JSON "
        "(every field of the AST), or as BuildKit's parser-test dump (one s-expression per "
        "instruction) to diff against BuildKit's reading. Errors print as FILE:LINE: message.",
    )
    p.add_argument(
        "-f",
        "--file",
        default="Dockerfile",
        metavar="FILE",
        help="the Dockerfile to read; '-' reads standard input (default: ./Dockerfile)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help="json (default) or buildkit-ast",
    )
    p.set_defaults(func=run)
