"""`memobuild stats`: what the cache has done for the builds on this machine.

Every build that gets as far as a plan leaves a record in the store's metrics log
(build/metrics.py), failed builds too. ``stats`` sums them (builds, steps cached, executed and
failed, the hit rate, the average step time, the time the cache saved and the bytes written) and
lists the last ``--last N`` builds; ``--json`` prints the same as one JSON document. When builds
used a remote cache (``--cache-from``/``--cache-to``), it also says which tier answered (local
hits, remote hits), what went up (uploads) and the bytes moved each way, and the table of the
last builds gets a REMOTE and an UPLOADS column.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from memobuild.commands.options import format_size

if TYPE_CHECKING:
    from memobuild.build.metrics import BuildMetrics, BuildRecord, MetricsSummary

__all__ = ["add_parser", "format_duration"]

DEFAULT_LAST = 10


def format_duration(seconds: float) -> str:
    """``850 ms``, ``12.3s``, ``4m 05s``, ``2h 10m``: short, and exact enough to compare."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _shown(path: str) -> str:
    """A path relative to the current directory when it is below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def _used_remote(metrics: BuildMetrics) -> bool:
    """Whether the build(s) moved anything through a remote cache."""
    return bool(
        metrics.remote_hits
        or metrics.uploads
        or metrics.upload_failures
        or metrics.integrity_failures
        or metrics.bytes_downloaded
        or metrics.bytes_uploaded
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _summary_json(summary: MetricsSummary, last: list[BuildRecord], where: str) -> dict[str, Any]:
    totals = summary.totals
    return {
        "log": where,
        "builds": summary.builds,
        "failed_builds": summary.failed_builds,
        "since": summary.since,
        "steps": totals.steps,
        "cached": totals.cached,
        "executed": totals.executed,
        "failed": totals.failed,
        "hit_rate": summary.cache_hit_rate(),
        "average_step_time": summary.average_step_time(),
        "saved_time": totals.saved_time,
        "bytes_written": totals.bytes_written,
        "build_time": totals.duration,
        "local_hits": totals.local_hits,
        "remote_hits": totals.remote_hits,
        "uploads": totals.uploads,
        "upload_failures": totals.upload_failures,
        "integrity_failures": totals.integrity_failures,
        "bytes_downloaded": totals.bytes_downloaded,
        "bytes_uploaded": totals.bytes_uploaded,
        "last": [record.to_json() for record in last],
    }


def _print_summary(summary: MetricsSummary) -> None:
    totals = summary.totals
    since = f" since {_when(summary.since)}" if summary.since is not None else ""
    failed = f" ({summary.failed_builds} failed)" if summary.failed_builds else ""
    print(f"builds          {summary.builds}{since}{failed}")
    print(
        f"steps           {totals.steps}: {totals.cached} cached, {totals.executed} executed, "
        f"{totals.failed} failed"
    )
    print(f"cache hit rate  {_percent(summary.cache_hit_rate())}")
    print(f"avg step time   {format_duration(summary.average_step_time())}")
    print(f"time saved      {format_duration(totals.saved_time)}")
    print(f"bytes written   {format_size(totals.bytes_written)}")
    print(f"build time      {format_duration(totals.duration)}")
    if _used_remote(totals):
        print(
            f"cache tiers     {_plural(totals.local_hits, 'local hit')}, "
            f"{_plural(totals.remote_hits, 'remote hit')}"
        )
        trouble = [
            _plural(count, noun)
            for count, noun in (
                (totals.upload_failures, "failed upload"),
                (totals.integrity_failures, "integrity failure"),
            )
            if count
        ]
        print(
            f"remote cache    {_plural(totals.uploads, 'upload')}, "
            f"{format_size(totals.bytes_downloaded)} downloaded, "
            f"{format_size(totals.bytes_uploaded)} uploaded"
            + "".join(f", {item}" for item in trouble)
        )


_COLUMNS = (
    ("STARTED", "<"),
    ("STATUS", "<"),
    ("TARGET", "<"),
    ("STEPS", ">"),
    ("CACHED", ">"),
    ("EXECUTED", ">"),
    ("HIT RATE", ">"),
    ("DURATION", ">"),
    ("SAVED", ">"),
    ("WRITTEN", ">"),
    ("DOCKERFILE", "<"),
)
# After CACHED, when a listed build used a remote cache: its remote hits and its uploads.
_REMOTE_COLUMNS = (("REMOTE", ">"), ("UPLOADS", ">"))
_REMOTE_AFTER = 5


def _row(record: BuildRecord, remote: bool) -> tuple[str, ...]:
    m = record.metrics
    cells = [
        _when(record.time),
        record.status,
        record.target,
        str(m.total),
        str(m.cached),
        str(m.executed),
        _percent(m.cache_hit_rate()),
        format_duration(m.duration),
        format_duration(m.saved_time),
        format_size(m.bytes_written),
        _shown(record.dockerfile),
    ]
    if remote:
        cells[_REMOTE_AFTER:_REMOTE_AFTER] = [str(m.remote_hits), str(m.uploads)]
    return tuple(cells)


def _print_table(records: list[BuildRecord]) -> None:
    remote = any(_used_remote(record.metrics) for record in records)
    columns = list(_COLUMNS)
    if remote:
        columns[_REMOTE_AFTER:_REMOTE_AFTER] = _REMOTE_COLUMNS
    rows = [tuple(name for name, _ in columns), *(_row(record, remote) for record in records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        cells = [
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(row, columns, widths, strict=True)
        ]
        print("  ".join(cells).rstrip())


def _last(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}")
    return value


def run_stats(args: argparse.Namespace) -> int:
    # Imported here: only this command reads the log.
    from memobuild.build.metrics import MetricsLog

    log = MetricsLog(args.cache_dir)
    summary = log.summary()
    last = log.read(last=args.last)
    if args.json:
        print(json.dumps(_summary_json(summary, last, str(log.path)), indent=2))
        return 0
    if summary.builds == 0:
        print(f"no builds logged in {log.path} yet; every memobuild build adds one")
        return 0
    _print_summary(summary)
    if last:
        print()
        print(f"last {len(last)} build{'s' if len(last) != 1 else ''}:")
        _print_table(last)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "stats",
        help="show what the cache saved across builds",
        description="Sum up the builds logged in the cache: builds, steps cached, executed and "
        "failed, the cache hit rate, the average step time, the time the cache saved (what "
        "the cached steps took when they ran) and the bytes written (new layers and outputs), "
        "and with a remote cache the local and remote hits, the uploads and the bytes moved; "
        "then list the last builds. Every memobuild build is logged, failed ones too.",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="the cache whose builds to sum up (default: $MEMOBUILD_CACHE_DIR, else "
        "~/.cache/memobuild)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--last",
        type=_last,
        default=DEFAULT_LAST,
        metavar="N",
        help=f"list the last N builds (default: {DEFAULT_LAST}; 0 lists none)",
    )
    p.set_defaults(func=run_stats)
