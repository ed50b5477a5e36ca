"""`memobuild plan` and `memobuild explain`: what a build would do, and why steps would miss.

Both take ``docker build``'s spelling of its inputs: a context ``PATH`` (default ``.``),
``-f/--file`` (relative to the current directory, default ``PATH/Dockerfile``), ``--target``,
``--build-arg NAME=VALUE`` (repeatable; ``--build-arg NAME`` takes the value from the
environment and is dropped when the environment has none, as docker does) and ``--platform``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memobuild.commands.options import add_build_selection, format_size
from memobuild.errors import DockerfileParseError, InputError
from memobuild.plan import Plan, cache_hits, explain, record_plan

if TYPE_CHECKING:
    from memobuild.cache.store import LocalStore

__all__ = ["BuildArgError", "PlatformError", "add_parser", "parse_build_args"]

KEY_CHARS = 12  # hex digits of a key in the table; --json has them whole


class BuildArgError(InputError):
    """A ``--build-arg`` that is not ``NAME=VALUE`` or ``NAME``."""


class PlatformError(InputError):
    """A ``--platform`` that is not ``os/arch[/variant]``."""


def parse_build_args(values: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """``--build-arg`` values as docker reads them; later values win."""
    out: dict[str, str] = {}
    for value in values:
        name, eq, text = value.partition("=")
        if not name or name != name.strip():
            raise BuildArgError(
                f"invalid --build-arg {value!r}: expected NAME=VALUE, or NAME to take the value "
                "from the environment"
            )
        if eq:
            out[name] = text
        elif name in environ:
            out[name] = environ[name]
    return out


def _plan_from_args(args: argparse.Namespace, store: LocalStore) -> Plan:
    dockerfile = Path(args.file).absolute() if args.file else Path("Dockerfile")  # in PATH
    build_args = parse_build_args(args.build_arg or (), os.environ)
    platform = args.platform
    if platform is not None:
        from memobuild.dockerfile.stages import Platform

        try:
            platform = str(Platform.parse(platform))
        except DockerfileParseError as err:
            raise PlatformError(f"--platform: {err.reason}") from None
    # Base images are looked up as a build looks them up (local images, --build-context), so
    # that the keys shown are the keys a build uses; one that cannot be found stands for itself.
    from memobuild.build.base import BaseResolver, parse_build_context
    from memobuild.build.planning import plan_build

    resolver = BaseResolver(store, [parse_build_context(v) for v in args.build_context or ()])
    result = plan_build(
        args.path,
        dockerfile,
        resolver,
        target=args.target,
        build_args=build_args,
        platform=platform,
        strict=False,
    )
    for warning in result.warnings:
        print(f"memobuild: warning: {warning}", file=sys.stderr)
    return result


def _open_store() -> LocalStore:
    # Imported here: only these commands need the store; importing it costs every other one.
    from memobuild.cache.store import LocalStore

    return LocalStore()


def _plan_json(result: Plan, hits: Sequence[bool]) -> dict[str, Any]:
    index = result.context_index
    return {
        "record": result.record_name,
        "context": str(result.context),
        "dockerfile": str(result.dockerfile),
        "target": result.target,
        "platform": result.platform,
        "context_digest": result.context_digest,
        "context_files": None if index is None else index.files,
        "levels": [list(level) for level in result.levels],
        "stage_levels": [list(level) for level in result.stage_levels],
        "edges": [list(edge) for edge in result.edges],
        "nodes": [
            {
                "id": node.id,
                "step": node.number,
                "stage": node.stage_name,
                "position": node.position,
                "line": node.line,
                "kind": node.kind,
                "instruction": node.text,
                "deps": list(node.deps),
                "level": node.level,
                "key": node.key,
                "cached": hit,
                "preimage": [list(pair) for pair in node.preimage],
                "sources": [
                    {"source": s.source, "digest": s.digest, "matches": list(s.matches)}
                    for s in node.sources
                ],
                "unresolved": list(node.unresolved),
            }
            for node, hit in zip(result.nodes, hits, strict=True)
        ],
        "warnings": list(result.warnings),
    }


def _print_plan(result: Plan, hits: Sequence[bool]) -> None:
    print(f"plan for {result.record_name} (context {result.context}, platform {result.platform})")
    index = result.context_index
    if index is not None:
        print(
            f"context: {index.files} files, {format_size(index.bytes)}, {index.digest[:19]}… "
            f"({index.hashed_files} hashed, {index.cache_hits} from the stat cache)"
        )
    names = {n.stage: n.stage_name for n in result.nodes}
    stages = " -> ".join(
        "[" + ", ".join(names[s] for s in lvl) + "]" for lvl in result.stage_levels
    )
    print(f"stages by level: {stages}")
    print()
    width = max(len(n.stage_name) for n in result.nodes)
    header = f"{'step':>4} {'level':>5}  {'stage':<{width}}  cache  {'key':<{KEY_CHARS}}"
    print(f"{header}  needs  instruction")
    for node, hit in zip(result.nodes, hits, strict=True):
        needs = ",".join(str(d + 1) for d in node.deps) or "-"
        cache = "hit" if hit else "miss"
        if node.unresolved:
            cache += "*"
        print(
            f"{node.number:>4} {node.level:>5}  {node.stage_name:<{width}}  {cache:<5}  "
            f"{node.key.split(':', 1)[1][:KEY_CHARS]}  {needs:<5}  {_short(node.text)}"
        )
    hit_count = sum(hits)
    print()
    print(
        f"{len(result.nodes)} steps in {len(result.levels)} levels: {hit_count} would hit, "
        f"{len(result.nodes) - hit_count} would miss"
    )
    if any(node.unresolved for node in result.nodes):
        print("* reads a remote source without --checksum: the build fetches it to know")


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_plan(args: argparse.Namespace) -> int:
    store = _open_store()
    try:
        result = _plan_from_args(args, store)
        hits = cache_hits(store, result)
        if args.record:
            record_plan(store, result)
    finally:
        store.close()
    if args.json:
        print(json.dumps(_plan_json(result, hits), indent=2, ensure_ascii=False))
    else:
        _print_plan(result, hits)
        if args.record:
            print(f"recorded as {result.record_name}")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    store = _open_store()
    try:
        result = _plan_from_args(args, store)
        report = explain(store, result)
    finally:
        store.close()
    if args.json:
        document = {
            "record": result.record_name,
            "recorded": report.recorded,
            "hits": report.hits,
            "misses": [
                {
                    "step": e.node.number,
                    "instruction": e.node.text,
                    "key": e.node.key,
                    "reason": e.reason,
                    "input": e.input,
                    "old": e.old,
                    "new": e.new,
                    "changes": [[c.path, c.change] for c in e.changes],
                }
                for e in report.misses
            ],
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return 0
    if not report.misses:
        print(f"all {report.hits} steps of {result.record_name} would be cache hits")
        return 0
    for explanation in report.misses:
        print(_short(explanation.message, 200))
    print()
    print(f"{len(report.misses)} of {len(result.nodes)} steps would miss")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default=".", metavar="PATH", help="the build context")
    p.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="the Dockerfile (default: PATH/Dockerfile); relative to the current directory",
    )
    add_build_selection(p)
    p.add_argument(
        "--platform", metavar="OS/ARCH", help="the target platform (default: this machine's)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plan",
        help="show the build graph, each step's cache key and whether it would hit",
        description="Plan a build without running it: the steps of the stages the target needs, "
        "which steps can run together (levels), each step's cache key (schema "
        "memobuild.key.v1) and whether the local store would answer it.",
    )
    _common(p)
    p.add_argument(
        "--record",
        action="store_true",
        help="record this plan as the last build of the Dockerfile and target, for explain",
    )
    p.set_defaults(func=run_plan)

    e = sub.add_parser(
        "explain",
        help="say why each step would miss the cache",
        description="For every step the local store would not answer, name the first input of "
        "its cache key that differs from the last recorded build of the same Dockerfile and "
        "target: a changed file, a build arg, the instruction, or the step before it.",
    )
    _common(e)
    e.set_defaults(func=run_explain)
