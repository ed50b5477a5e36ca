"""`memobuild plan` on the 100,000-file tree with `COPY . .`, and on a 300-step Dockerfile.

Target (issue 4): a warm plan (stat cache present, nothing changed) no slower than 2x `git
status` on the same tree once indexed. Cold means no stat cache (every file read and hashed, page
cache warm), as in bench_hash. The tree, its page-cache warm-up and the git index are bench_hash's
fixtures; the Dockerfile lives outside the tree so that the tree stays exactly what git indexed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_hash import git_dir, tree  # noqa: F401  (fixtures shared with the hashing benchmarks)
from memobuild import plan
from treegen import file_count

ROUNDS = 5
COPY_ALL = 'FROM alpine:3.20\nWORKDIR /app\nCOPY . .\nRUN make\nCMD ["/app/run"]\n'
BIG_GROUP = f"plan {file_count() // 1000}k files COPY . ."


@pytest.fixture(scope="module")
def copy_all(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dockerfile = tmp_path_factory.mktemp("dockerfile") / "Dockerfile"
    dockerfile.write_text(COPY_ALL)
    return dockerfile


def _group(benchmark, group: str, impl: str) -> None:
    benchmark.group = group
    benchmark.extra_info["impl"] = impl


def test_plan_cold(benchmark, tree, copy_all):  # noqa: F811
    _group(benchmark, BIG_GROUP, "memobuild-cold")
    result = benchmark.pedantic(
        plan, args=(tree, copy_all), kwargs={"stat_cache": False}, rounds=ROUNDS, warmup_rounds=1
    )
    assert result.context_index is not None
    assert result.context_index.files == file_count()
    assert result.context_index.hashed_files == file_count()


def test_plan_warm(benchmark, tree, copy_all, tmp_path):  # noqa: F811
    _group(benchmark, BIG_GROUP, "memobuild-warm")
    cache = tmp_path / "stat.bin"
    first = plan(tree, copy_all, stat_cache=cache)
    result = benchmark.pedantic(
        plan, args=(tree, copy_all), kwargs={"stat_cache": cache}, rounds=ROUNDS, warmup_rounds=1
    )
    assert result.context_index is not None
    assert result.context_index.hashed_files == 0, "a warm plan must read no file contents"
    assert result.keys == first.keys


def test_plan_warm_cli(benchmark, tree, copy_all, tmp_path):  # noqa: F811
    """The whole command, interpreter start-up included, as a user or CI job runs it."""
    _group(benchmark, BIG_GROUP, "memobuild-warm-cli")
    env = {**os.environ, "MEMOBUILD_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "memobuild.cli", "plan", str(tree), "-f", str(copy_all)]
    subprocess.run(cmd, check=True, capture_output=True, env=env)  # fills the stat cache

    def run() -> str:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout

    out = benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    assert "(0 hashed, " in out


def test_git_status(benchmark, tree, git_dir):  # noqa: F811
    _group(benchmark, BIG_GROUP, "git status")
    cmd = ["git", f"--git-dir={git_dir}", f"--work-tree={tree}", "status", "--porcelain"]
    subprocess.run(cmd, check=True, capture_output=True)  # refresh the index once

    def run() -> str:
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    assert benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1) == ""


# --- a 300-step multi-stage Dockerfile ----------------------------------------------------------

STAGES = 10
STEPS = 300


def _many_steps(stages: int = STAGES, steps: int = STEPS) -> str:
    """``stages`` stages, the last copying from every other, ``steps`` instructions in all."""
    per_stage = steps // stages
    lines = ["# syntax=docker/dockerfile:1", "ARG BASE=alpine:3.20"]
    for s in range(stages):
        last = s == stages - 1
        lines.append(f"FROM ${{BASE}} AS s{s}" if s % 3 or s == 0 else f"FROM s{s - 1} AS s{s}")
        body = [
            f"ARG V{s}=1.{s}",
            f"ENV STAGE=s{s} PATH=/opt/s{s}/bin:$PATH",
            f"WORKDIR /w{s}",
            f"COPY pkg{s}/ ./pkg/",
            f"COPY pkg{s}/*.txt ./txt/",
            f"RUN --mount=type=cache,target=/root/.cache,id=c{s} build --version $V{s}",
            f"LABEL stage=s{s} version=$V{s}",
        ]
        if last:
            body += [f"COPY --from=s{o} /w{o} /from/s{o}" for o in range(stages - 1)]
        n = 0
        while len(body) < per_stage:
            n += 1
            body.append(
                f"RUN step {n} of s{s}" if n % 3 else f"COPY pkg{s}/f{n % 20}.txt ./f{n}.txt"
            )
        room = per_stage - 2 if last else per_stage - 1  # the last stage ends with CMD
        lines += body[:room]
    lines.append(f'CMD ["/w{stages - 1}/run"]')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def many_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    context = tmp_path_factory.mktemp("many-steps")
    for s in range(STAGES):
        pkg = context / f"pkg{s}"
        pkg.mkdir()
        for f in range(20):
            (pkg / f"f{f}.txt").write_text(f"stage {s} file {f}\n" * 10)
    (context / "Dockerfile").write_text(_many_steps())
    return context


def test_plan_300_steps(benchmark, many_steps, tmp_path):
    _group(benchmark, f"plan {STEPS}-step multi-stage Dockerfile", "memobuild-warm")
    cache = tmp_path / "stat.bin"
    first = plan(many_steps, stat_cache=cache)
    instructions = sum(
        1 for line in (many_steps / "Dockerfile").read_text().splitlines() if line[:1].isupper()
    )
    assert instructions == STEPS + 1  # and the global ARG before the first FROM
    assert len({n.stage for n in first.nodes}) == STAGES
    result = benchmark.pedantic(
        plan, args=(many_steps,), kwargs={"stat_cache": cache}, rounds=ROUNDS, warmup_rounds=1
    )
    assert result.keys == first.keys
    benchmark.extra_info["nodes"] = len(result.nodes)
    benchmark.extra_info["levels"] = len(result.levels)
