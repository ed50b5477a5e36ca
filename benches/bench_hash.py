"""hash_tree against b3sum, a Python blake3 loop and `git status`, on one generated tree.

Targets (issue 2): cold (no stat cache, warm page cache) no slower than the fastest b3sum over
the same file list; warm (stat cache, nothing changed) no slower than `git status` on the same
tree once indexed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import blake3
import pytest

from memobuild.hashing import hash_tree
from treegen import bench_root, ensure_tree, file_count, file_list

ROUNDS = 5
B3SUM_P2 = "find . -type f -print0 | xargs -0 -P2 {b3sum} --num-threads 1 > /dev/null"
B3SUM_ONE = "find . -type f -print0 | xargs -0 {b3sum} > /dev/null"


@pytest.fixture(scope="module")
def tree() -> Path:
    root = ensure_tree()
    hash_tree(root, stat_cache=False)  # warm the page cache: every contender reads warm
    return root


@pytest.fixture(scope="module")
def b3sum() -> str:
    path = shutil.which("b3sum")
    assert path, "b3sum is not installed (scripts/install-system-deps installs it)"
    return path


def _group(benchmark, kind: str, impl: str) -> None:
    benchmark.group = f"hash_tree {kind} ({file_count()} files)"
    benchmark.extra_info["impl"] = impl


def test_cold_memobuild(benchmark, tree):
    _group(benchmark, "cold", "memobuild-cold")
    result = benchmark.pedantic(
        hash_tree, args=(tree,), kwargs={"stat_cache": False}, rounds=ROUNDS, warmup_rounds=1
    )
    assert result.files == file_count()
    assert result.hashed_files == file_count()
    benchmark.extra_info["bytes"] = result.bytes


def test_digests_agree_with_b3sum(tree, b3sum):
    entries = hash_tree(tree, stat_cache=False, include_entries=True).entries
    assert entries is not None
    sample = [e for e in entries if e.kind == "file"][:: max(1, file_count() // 200)]
    out = subprocess.run(
        [b3sum, "--no-names", *[str(tree / e.path) for e in sample]],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert [f"blake3:{d}" for d in out] == [e.digest for e in sample]


@pytest.mark.parametrize("variant", ["xargs-P2-threads1", "one-process-multithreaded"])
def test_cold_b3sum(benchmark, tree, b3sum, variant):
    _group(benchmark, "cold", f"b3sum {variant}")
    cmd = (B3SUM_P2 if variant.startswith("xargs") else B3SUM_ONE).format(b3sum=b3sum)

    def run() -> None:
        subprocess.run(cmd, shell=True, cwd=tree, check=True)

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)


def test_cold_python_blake3(benchmark, tree):
    _group(benchmark, "cold", "python blake3 loop")
    files = file_list(tree)

    def run() -> int:
        total = 0
        for name in files:
            with open(name, "rb") as f:
                blake3.blake3(f.read()).digest()
            total += 1
        return total

    assert benchmark.pedantic(run, rounds=2, warmup_rounds=0) == file_count()


def test_warm_memobuild(benchmark, tree, tmp_path):
    _group(benchmark, "warm", "memobuild-warm")
    cache = tmp_path / "stat.bin"
    first = hash_tree(tree, stat_cache=cache)
    assert first.hashed_files == file_count()
    result = benchmark.pedantic(
        hash_tree, args=(tree,), kwargs={"stat_cache": cache}, rounds=ROUNDS, warmup_rounds=1
    )
    assert result.hashed_files == 0, "a warm run must read no file contents"
    assert result.digest == first.digest


@pytest.fixture(scope="module")
def git_dir(tree) -> Path:
    git_dir = bench_root() / f"{tree.name}.git"
    marker = bench_root() / f"{tree.name}.git.done"
    if not marker.exists():
        shutil.rmtree(git_dir, ignore_errors=True)
        git = ["git", "-c", "gc.auto=0", f"--git-dir={git_dir}", f"--work-tree={tree}"]
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "-c", "core.compression=0", "add", "-A"], check=True)
        ident = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        subprocess.run([*git, *ident, "commit", "-q", "-m", "tree"], check=True)
        marker.write_text("ok\n")
    return git_dir


def test_warm_git_status(benchmark, tree, git_dir):
    _group(benchmark, "warm", "git status")
    cmd = ["git", f"--git-dir={git_dir}", f"--work-tree={tree}", "status", "--porcelain"]
    subprocess.run(cmd, check=True, capture_output=True)  # refresh the index once

    def run() -> str:
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    assert benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1) == ""
