"""Shared benchmark plumbing: prints each group's speed ratios against its anchors.

Every benchmark sets ``benchmark.group`` and ``benchmark.extra_info["impl"]``; implementations
whose name starts with ``memobuild`` are ours, the rest are the anchors named in the issues.
A ratio > 1 means MemoBuild is that many times faster than the anchor.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest


def _ratios(benchmarks: list[Any]) -> list[str]:
    groups: dict[str, list[Any]] = defaultdict(list)
    for bench in benchmarks:
        if bench.stats is not None and "impl" in bench.extra_info:
            groups[bench.group or bench.name].append(bench)
    lines = []
    for group in sorted(groups):
        ours = [b for b in groups[group] if b.extra_info["impl"].startswith("memobuild")]
        anchors = [b for b in groups[group] if not b.extra_info["impl"].startswith("memobuild")]
        for mine in ours:
            for other in anchors:
                ratio = other.stats.mean / mine.stats.mean
                lines.append(
                    f"{group}: {other.extra_info['impl']} {other.stats.mean:.4f}s / "
                    f"{mine.extra_info['impl']} {mine.stats.mean:.4f}s = {ratio:.2f}x"
                )
    return lines


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    lines = _ratios(session.benchmarks)
    if lines:
        terminalreporter.section("memobuild ratios (anchor mean / memobuild mean)")
        for line in lines:
            terminalreporter.write_line(line)
