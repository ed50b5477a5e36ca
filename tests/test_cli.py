"""The memobuild command line: version, hash, errors, logging."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memobuild import __version__
from memobuild.hashing import hash_tree

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memobuild.cli", *args], capture_output=True, text=True, env=env
    )


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"memobuild {__version__}"


def test_console_script_is_installed() -> None:
    proc = subprocess.run(["memobuild", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_hash_prints_digest_files_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("hello")
    proc = run("hash", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == f"{hash_tree(tmp_path, stat_cache=False).digest}  {tmp_path}"
    assert second.startswith("1 files, 0 directories, 0 symlinks, 5 B")


def test_hash_json_and_stat_cache(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a").write_text("hello")
    cache = tmp_path / "stat.bin"
    out = json.loads(run("hash", str(ctx), "--json", "--stat-cache", str(cache)).stdout)
    assert out["files"] == 1 and out["bytes"] == 5 and out["digest"].startswith("blake3:")
    assert cache.is_file()


def test_hash_example_with_its_dockerignore() -> None:
    proc = run("hash", str(EXAMPLE), "--dockerignore", str(EXAMPLE / ".dockerignore"), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # .dockerignore, Dockerfile, src/hello.sh, src/app.py, docs/README.md; docs/notes.md is out.
    assert out["files"] == 5


def test_hash_gitignore_flag(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.o\n")
    (tmp_path / "x.o").write_text("obj")
    (tmp_path / "x.c").write_text("int x;")
    out = json.loads(run("hash", str(tmp_path), "--gitignore", "--json").stdout)
    assert out["files"] == 2


def test_dockerignore_and_gitignore_are_exclusive(tmp_path: Path) -> None:
    proc = run("hash", str(tmp_path), "--gitignore", "--dockerignore", "x")
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("hash", "/nonexistent/ctx"),
            "memobuild: error: /nonexistent/ctx: directory does not exist",
        ),
        (("hash", "{file}"), "memobuild: error: {file}: not a directory"),
        (
            ("hash", "{dir}", "--dockerignore", "/nonexistent/.dockerignore"),
            "memobuild: error: /nonexistent/.dockerignore: .dockerignore file does not exist",
        ),
        (("hash", "{dir}", "--dockerignore", "{bad}"), "memobuild: error: invalid pattern '[z-': "),
    ],
)
def test_errors_are_one_clear_line(tmp_path: Path, args, message) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    bad = tmp_path / "bad.dockerignore"
    bad.write_text("ok\n[z-\n")
    subst = {"file": str(f), "dir": str(tmp_path), "bad": str(bad)}
    proc = run(*(a.format(**subst) for a in args))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(message.format(**subst))


def test_debug_shows_traceback() -> None:
    proc = run("--debug", "hash", "/nonexistent/ctx")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "PathNotFoundError" in proc.stderr


def test_no_command_is_a_usage_error() -> None:
    proc = run()
    assert proc.returncode == 2
    assert "usage: memobuild" in proc.stderr
