"""`memobuild cache ls|du|gc|prune`: look into the local cache and keep it within bounds.

Sizes read like docker's and systemd's: ``K``, ``M``, ``G``, ``T`` (and ``KiB`` ... ``TiB``) are
powers of 1024, ``KB`` ... ``TB`` powers of 1000, so ``--max-size 10G`` is 10 GiB. Durations
(``--min-age``) are seconds, or a number with ``s``, ``m``, ``h`` or ``d``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal

from memobuild.cache import DEFAULT_MIN_AGE, ActionInfo, GcReport, LocalStore
from memobuild.commands.options import format_size
from memobuild.errors import InputError

__all__ = ["add_parser", "format_size", "parse_duration", "parse_size"]

_UNITS = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgt", start=1):
    _UNITS[_letter] = _UNITS[f"{_letter}ib"] = 1024**_power
    _UNITS[f"{_letter}b"] = 1000**_power
_DURATIONS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_QUANTITY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes in ``10G``, ``512M``, ``1.5GiB``, ``800MB``, ``4096``; InputError if malformed."""
    match = _QUANTITY.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise InputError(
            f"invalid size {text!r}: expected a number and an optional unit, like 10G, 512M, "
            "1.5GiB or 800MB (K, M, G, T and KiB ... TiB are powers of 1024; KB ... TB of 1000)"
        )
    return int(Decimal(match.group(1)) * _UNITS[unit])


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``30s``, ``10m``, ``1.5h``, ``2d``; InputError if malformed."""
    match = _QUANTITY.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _DURATIONS:
        raise InputError(
            f"invalid duration {text!r}: expected seconds, or a number with s, m, h or d "
            "(like 30s, 10m, 1h)"
        )
    return float(Decimal(match.group(1)) * _DURATIONS[unit])


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _store(args: argparse.Namespace) -> LocalStore:
    return LocalStore(args.cache_dir)


_SORT_KEYS = {
    "last-use": lambda a: (a.last_use, a.key),
    "created": lambda a: (a.created, a.key),
    "size": lambda a: (a.layer_bytes + a.entry_bytes, a.key),
}


def run_ls(args: argparse.Namespace) -> int:
    with _store(args) as store:
        entries: list[ActionInfo] = store.list_actions()
        root = store.root
    entries.sort(key=_SORT_KEYS[args.sort], reverse=True)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "key": e.key,
                        "layers": e.layers,
                        "size": e.layer_bytes + e.entry_bytes,
                        "layer_bytes": e.layer_bytes,
                        "entry_bytes": e.entry_bytes,
                        "created": e.created,
                        "last_use": e.last_use,
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return 0
    if not entries:
        print(f"no action entries in {root}")
        return 0
    print(f"{'KEY':<71}  {'LAYERS':>6}  {'SIZE':>10}  {'CREATED':<19}  LAST USE")
    for e in entries:
        print(
            f"{e.key:<71}  {e.layers:>6}  {format_size(e.layer_bytes + e.entry_bytes):>10}  "
            f"{_when(e.created):<19}  {_when(e.last_use)}"
        )
    return 0


def run_du(args: argparse.Namespace) -> int:
    with _store(args) as store:
        usage = store.usage()
        stats = store.stats()
        root = store.root
    if args.json:
        print(json.dumps({"root": str(root), **asdict(usage), "stats": stats}, indent=2))
        return 0
    print(f"cache           {root}")
    print(f"action entries  {usage.actions:>8}  {format_size(usage.action_bytes)}")
    print(f"blobs           {usage.blobs:>8}  {format_size(usage.blob_bytes)}")
    print(f"total           {'':>8}  {format_size(usage.bytes)}")
    print(f"quarantined     {usage.quarantined:>8}  {format_size(usage.quarantined_bytes)}")
    print(
        f"{_count(stats['hits'], 'hit')}, {_count(stats['misses'], 'miss', 'misses')}, "
        f"{_count(stats['integrity_failures'], 'integrity failure')}, "
        f"{stats['evicted_actions']} entries and {stats['evicted_blobs']} blobs evicted so far"
    )
    return 0


def _report_json(report: GcReport) -> str:
    return json.dumps({**asdict(report), "reached": report.reached}, indent=2)


def run_gc(args: argparse.Namespace) -> int:
    max_size = parse_size(args.max_size)
    min_age = parse_duration(args.min_age)
    with _store(args) as store:
        report = store.gc(max_size, min_age=min_age)
    if args.json:
        print(_report_json(report))
        return 0
    print(
        f"removed {_count(report.removed_actions, 'action entry', 'action entries')} and "
        f"{_count(report.removed_blobs, 'blob')}, freed {format_size(report.freed_bytes)}; "
        f"the cache holds {format_size(report.remaining_bytes)} "
        f"(limit {format_size(max_size)})"
    )
    if not report.reached:
        print(
            f"memobuild: note: the cache is still over the limit: what is left was used in the "
            f"last {args.min_age} (see --min-age) or belongs to such entries",
            file=sys.stderr,
        )
    return 0


def run_prune(args: argparse.Namespace) -> int:
    min_age = parse_duration(args.min_age)
    with _store(args) as store:
        report = store.prune(min_age=min_age, verify=args.verify)
    if args.json:
        print(_report_json(report))
        return 0
    print(
        f"removed {_count(report.removed_quarantined, 'quarantined file')}, "
        f"{_count(report.removed_temp, 'stale temp file')}, "
        f"{_count(report.removed_blobs, 'unreferenced blob')} and "
        f"{_count(report.removed_actions, 'entry', 'entries')} whose blobs were gone; "
        f"freed {format_size(report.freed_bytes)}; "
        f"the cache holds {format_size(report.remaining_bytes)}"
    )
    if report.quarantined:
        print(
            f"memobuild: warning: moved {_count(report.quarantined, 'corrupt file')} to "
            f"quarantine (removed by the next prune)",
            file=sys.stderr,
        )
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cache",
        help="inspect and clean the local cache",
        description="Inspect the local cache ($MEMOBUILD_CACHE_DIR) and keep it within bounds. "
        "Sizes: K, M, G, T (or KiB ... TiB) are powers of 1024, KB ... TB powers of 1000.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the cache to work on (default: $MEMOBUILD_CACHE_DIR, else ~/.cache/memobuild)",
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    actions = p.add_subparsers(dest="cache_command", metavar="ACTION")
    actions.required = True
    default_age = f"{DEFAULT_MIN_AGE:g}s"

    ls = actions.add_parser(
        "ls",
        parents=[common],
        help="list action entries",
        description="List the cached action entries, most recently used first: key, layers, "
        "size (layers and entry), when created and when last used.",
    )
    ls.add_argument(
        "--sort",
        choices=sorted(_SORT_KEYS),
        default="last-use",
        help="order, largest/newest first (default: last-use)",
    )
    ls.set_defaults(func=run_ls)

    du = actions.add_parser(
        "du",
        parents=[common],
        help="show how much the cache holds",
        description="Show the number and size of action entries, blobs and quarantined files, "
        "and the counters kept across builds (hits, misses, integrity failures, evictions).",
    )
    du.set_defaults(func=run_du)

    gc = actions.add_parser(
        "gc",
        parents=[common],
        help="evict least recently used entries until the cache fits a size",
        description="Evict the least recently used action entries and unreferenced blobs until "
        "the cache holds at most --max-size. A blob an entry references goes only with its "
        "last entry, and nothing used within --min-age is evicted (a running build may be "
        "about to use it).",
    )
    gc.add_argument(
        "--max-size", required=True, metavar="SIZE", help="the size to shrink to, e.g. 10G"
    )
    gc.add_argument(
        "--min-age",
        default=default_age,
        metavar="DURATION",
        help=f"never evict what was used this recently (default: {default_age})",
    )
    gc.set_defaults(func=run_gc)

    prune = actions.add_parser(
        "prune",
        parents=[common],
        help="remove quarantined, temporary and unreferenced files",
        description="Empty the quarantine, remove temp files left by crashed builds, bring the "
        "index in line with the files, drop entries whose blobs are gone, and remove blobs no "
        "entry references that were not used within --min-age.",
    )
    prune.add_argument(
        "--min-age",
        default=default_age,
        metavar="DURATION",
        help=f"keep unreferenced blobs used this recently (default: {default_age})",
    )
    prune.add_argument(
        "--verify",
        action="store_true",
        help="also hash every blob and quarantine the ones that fail",
    )
    prune.set_defaults(func=run_prune)
