"""hash_tree: stable across copies, umasks and mtimes; sensitive to every recorded property."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest

from fswatch import OpenWatcher
from memobuild.errors import (
    NotADirectoryInputError,
    PathNotFoundError,
    PatternError,
)
from memobuild.hashing import default_stat_cache_path, hash_tree


def make_tree(root: Path) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "README.md").write_text("# readme\n")
    (root / "src" / "main.py").write_text("print('hi')\n")
    (root / "src" / "pkg" / "mod.py").write_bytes(os.urandom(3000))
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "src" / "link").symlink_to("../README.md")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "ctx")


def digest(path: Path, **kw: object) -> str:
    return hash_tree(path, stat_cache=False, **kw).digest  # type: ignore[arg-type]


def test_same_tree_twice_and_counts(tree: Path) -> None:
    a = hash_tree(tree, stat_cache=False)
    b = hash_tree(tree, stat_cache=False)
    assert a.digest == b.digest
    assert a.digest.startswith("blake3:") and len(a.digest) == 7 + 64
    assert (a.files, a.dirs, a.symlinks) == (4, 3, 1)
    assert a.bytes == sum(
        p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink()
    )


def test_copied_tree_in_another_place_has_the_same_digest(tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "deeper" / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    assert digest(copy) == digest(tree)


def test_umask_does_not_change_the_digest(tmp_path: Path) -> None:
    # Build the same tree in two child processes under different umasks, as two checkouts would.
    script = (
        "import os, sys, pathlib\n"
        "os.umask(int(sys.argv[2], 8))\n"
        "root = pathlib.Path(sys.argv[1]); (root / 'd').mkdir(parents=True)\n"
        "(root / 'd' / 'f.txt').write_text('same')\n"
        "(root / 'x.sh').write_text('#!/bin/sh')\n"
        "os.chmod(root / 'x.sh', 0o777 & ~int(sys.argv[2], 8))\n"
    )
    for name, umask in (("a", "022"), ("b", "077"), ("c", "002")):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name), umask], check=True)
    modes = {oct((tmp_path / n / "d" / "f.txt").stat().st_mode & 0o777) for n in "abc"}
    assert len(modes) == 3, "the umasks really differed"
    assert digest(tmp_path / "a") == digest(tmp_path / "b") == digest(tmp_path / "c")


def test_mtimes_uid_and_gid_do_not_change_the_digest(tree: Path) -> None:
    before = digest(tree)
    for p in tree.rglob("*"):
        os.utime(p, (1_000_000, 2_000_000), follow_symlinks=False)
    if os.geteuid() == 0:
        os.chown(tree / "README.md", 12345, 54321)
    assert digest(tree) == before


@pytest.mark.parametrize(
    "change",
    [
        "rename",
        "edit",
        "chmod_x",
        "symlink_retarget",
        "symlink_to_file",
        "new_empty_dir",
        "new_empty_file",
        "move_between_dirs",
    ],
)
def test_each_change_changes_the_digest(tree: Path, change: str) -> None:
    before = digest(tree)
    if change == "rename":
        (tree / "src" / "main.py").rename(tree / "src" / "main2.py")
    elif change == "edit":
        (tree / "src" / "pkg" / "mod.py").write_bytes(b"changed")
    elif change == "chmod_x":
        (tree / "README.md").chmod(0o744)
    elif change == "symlink_retarget":
        (tree / "src" / "link").unlink()
        (tree / "src" / "link").symlink_to("main.py")
    elif change == "symlink_to_file":
        (tree / "src" / "link").unlink()
        (tree / "src" / "link").write_text("../README.md")
    elif change == "new_empty_dir":
        (tree / "src" / "newdir").mkdir()
    elif change == "new_empty_file":
        (tree / "empty" / "f").touch()
    elif change == "move_between_dirs":
        (tree / "src" / "main.py").rename(tree / "src" / "pkg" / "main.py")
    assert digest(tree) != before


def test_file_versus_directory_of_the_same_name_differ(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_bytes(b"")
    assert digest(tmp_path / "a") != digest(tmp_path / "b")


def test_symlinks_are_recorded_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "escape").symlink_to(outside)
    (ctx / "loop").symlink_to(ctx)
    result = hash_tree(ctx, stat_cache=False, include_entries=True)
    assert result.files == 0 and result.symlinks == 2
    assert result.entries is not None
    targets = {e.path: e.link_target for e in result.entries}
    assert targets == {"escape": str(outside), "loop": str(ctx)}
    before = result.digest
    (outside / "secret").write_text("changed")
    assert digest(ctx) == before, "content behind a symlink never enters the digest"


def test_entries_carry_content_digests(tree: Path) -> None:
    result = hash_tree(tree, stat_cache=False, include_entries=True)
    assert result.entries is not None
    by_path = {e.path: e for e in result.entries}
    readme = by_path["README.md"]
    assert readme.kind == "file"
    assert readme.digest == "blake3:" + blake3.blake3(b"# readme\n").hexdigest()
    assert by_path["run.sh"].executable and not readme.executable
    assert by_path["src"].kind == "dir" and by_path["src"].digest.startswith("blake3:")
    assert by_path["src/link"].kind == "symlink"
    assert [e.path for e in result.entries] == sorted(e.path for e in result.entries)


def test_subtree_digest_equals_digest_of_that_directory(tree: Path) -> None:
    result = hash_tree(tree, stat_cache=False, include_entries=True)
    assert result.entries is not None
    src = next(e for e in result.entries if e.path == "src")
    assert src.digest == digest(tree / "src")


def test_non_utf8_names_hash_and_round_trip(tmp_path: Path) -> None:
    name = b"caf\xe9.txt"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    with open(os.path.join(os.fsencode(ctx), name), "wb") as f:
        f.write(b"x")
    result = hash_tree(ctx, stat_cache=False, include_entries=True)
    assert result.entries is not None
    assert os.fsencode(result.entries[0].path) == name


def test_large_file_uses_the_same_digest_as_blake3(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    data = os.urandom(9 * 1024 * 1024 + 17)  # above the multi-threaded threshold
    (ctx / "big.bin").write_bytes(data)
    entries = hash_tree(ctx, stat_cache=False, include_entries=True).entries
    assert entries is not None
    assert entries[0].digest == "blake3:" + blake3.blake3(data).hexdigest()


def test_special_files_are_recorded_without_being_opened(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    os.mkfifo(ctx / "pipe")  # opening a fifo for reading would block forever
    result = hash_tree(ctx, stat_cache=False, include_entries=True)
    assert result.entries is not None
    assert [(e.path, e.kind) for e in result.entries] == [("pipe", "fifo")]


# --- ignore rules -------------------------------------------------------------------------


def test_dockerignore_prunes_and_exceptions_reinclude(tree: Path) -> None:
    (tree / "node_modules" / "lib").mkdir(parents=True)
    (tree / "node_modules" / "lib" / "x.js").write_text("x")
    (tree / "debug.log").write_text("log")
    result = hash_tree(
        tree,
        stat_cache=False,
        include_entries=True,
        dockerignore=["node_modules", "*.log", "src", "!src/pkg/mod.py"],
    )
    assert result.entries is not None
    paths = [e.path for e in result.entries]
    assert "debug.log" not in paths
    assert not any(p.startswith("node_modules") for p in paths)
    assert "src/pkg/mod.py" in paths and "src/main.py" not in paths
    # What the patterns exclude does not affect the digest.
    before = result.digest
    (tree / "node_modules" / "lib" / "x.js").write_text("changed")
    (tree / "src" / "main.py").write_text("changed")
    again = hash_tree(
        tree, stat_cache=False, dockerignore=["node_modules", "*.log", "src", "!src/pkg/mod.py"]
    )
    assert again.digest == before


def test_dockerignore_excluded_directory_is_not_walked(tree: Path) -> None:
    (tree / "node_modules" / "a" / "b").mkdir(parents=True)
    (tree / "node_modules" / "a" / "b" / "c.js").write_text("c")
    with OpenWatcher(tree) as watch:
        hash_tree(tree, stat_cache=False, dockerignore=["node_modules"])
    assert tree / "src" in watch.opened_dirs, "the watcher sees directories being read"
    assert not [p for p in watch.opened_dirs if "node_modules" in p.parts]
    # With an exception beneath it, the excluded directory must be walked.
    with OpenWatcher(tree) as watch:
        r = hash_tree(
            tree,
            stat_cache=False,
            include_entries=True,
            dockerignore=["node_modules", "!node_modules/a/b/c.js"],
        )
    assert tree / "node_modules" / "a" / "b" in watch.opened_dirs
    assert r.entries is not None
    assert [e.path for e in r.entries if e.path.startswith("node_modules")] == [
        "node_modules",
        "node_modules/a",
        "node_modules/a/b",
        "node_modules/a/b/c.js",
    ]


def test_malformed_dockerignore_pattern_is_a_pattern_error(tree: Path) -> None:
    with pytest.raises(PatternError, match=r"\["):
        hash_tree(tree, stat_cache=False, dockerignore=["[a-"])


def test_gitignore_mode_honours_nested_files_and_skips_git(tree: Path) -> None:
    base = digest(tree, gitignore=True)
    (tree / ".git" / "objects").mkdir(parents=True)
    (tree / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tree / "target").mkdir()
    (tree / "target" / "out.o").write_bytes(b"\0")
    (tree / "src" / ".gitignore").write_text("*.pyc\n")
    (tree / "src" / "x.pyc").write_bytes(b"\0")
    with_gitignore_file = digest(tree, gitignore=True)
    assert with_gitignore_file != base  # src/.gitignore itself is part of the tree
    (tree / ".gitignore").write_text("/target/\n")
    result = hash_tree(tree, stat_cache=False, gitignore=True, include_entries=True)
    assert result.entries is not None
    paths = {e.path for e in result.entries}
    assert not any(p == ".git" or p.startswith((".git/", "target")) for p in paths)
    assert "src/x.pyc" not in paths and "src/.gitignore" in paths


def test_choosing_both_filters_is_refused(tree: Path) -> None:
    with pytest.raises(ValueError, match="either"):
        hash_tree(tree, dockerignore=[], gitignore=True)


# --- stat cache ---------------------------------------------------------------------------


def settle() -> None:
    # Files written in the same filesystem clock tick as the cache are "racily clean" and are
    # re-read on purpose (as git does); tests that expect cache hits let the clock move on.
    time.sleep(0.05)


def test_stat_cache_second_run_reads_no_content(tree: Path) -> None:
    settle()
    first = hash_tree(tree)
    assert (first.hashed_files, first.cache_hits) == (4, 0)
    assert default_stat_cache_path(tree).is_file()
    second = hash_tree(tree)
    assert (second.hashed_files, second.cache_hits) == (0, 4)
    assert second.digest == first.digest


def test_stat_cache_hit_opens_no_file(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "sc.bin"
    settle()
    with OpenWatcher(tree) as cold:
        first = hash_tree(tree, stat_cache=cache)
    assert len(cold.opened_files) == 4, "the watcher sees every file a cold run reads"
    with OpenWatcher(tree) as warm:
        second = hash_tree(tree, stat_cache=cache)
    assert warm.opened_files == []
    assert (second.hashed_files, second.cache_hits) == (0, 4)
    assert second.digest == first.digest


def test_stat_cache_sees_an_edit_with_restored_size_and_mtime(tree: Path, tmp_path: Path) -> None:
    target = tree / "src" / "main.py"
    cache = tmp_path / "sc.bin"
    settle()
    first = hash_tree(tree, stat_cache=cache)
    st = target.stat()
    target.write_text("print('ho')\n")  # same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # ctime still moves
    with OpenWatcher(tree) as watch:
        changed = hash_tree(tree, stat_cache=cache)
    assert watch.opened_files == [target]
    assert changed.hashed_files == 1
    assert changed.digest != first.digest
    assert changed.digest == digest(tree)


def test_racily_clean_files_are_read_again(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "sc.bin"
    hash_tree(tree, stat_cache=cache)
    # Stamp a file with an mtime in the future, as a clock-skewed checkout might: a record
    # whose times are not older than the cache file is never trusted.
    future = time.time_ns() + 3600 * 10**9
    os.utime(tree / "README.md", ns=(future, future))
    hash_tree(tree, stat_cache=cache)
    again = hash_tree(tree, stat_cache=cache)
    assert again.hashed_files == 1


def test_stat_cache_is_per_root_and_filter(tree: Path) -> None:
    a = default_stat_cache_path(tree)
    b = default_stat_cache_path(tree, gitignore=True)
    c = default_stat_cache_path(tree, dockerignore=["x"])
    assert len({a, b, c}) == 3


def test_corrupt_stat_cache_is_ignored(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "sc.bin"
    cache.write_bytes(b"garbage")
    result = hash_tree(tree, stat_cache=cache)
    assert result.hashed_files == 4
    assert result.digest == digest(tree)


def test_stat_cache_files_are_private(tree: Path, isolated_cache: Path) -> None:
    hash_tree(tree)
    path = default_stat_cache_path(tree)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


# --- bad input ----------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(PathNotFoundError, match="nope"):
        hash_tree(tmp_path / "nope")


def test_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryInputError, match="not a directory"):
        hash_tree(tmp_path / "f")


def without_dac_override(argv: list[str]) -> list[str]:
    """Run argv so that file modes bind even for root (CI runs as root): drop the DAC caps."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to test permission errors as root"
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--", *argv]


def test_unreadable_file_names_the_file(tree: Path) -> None:
    (tree / "src" / "main.py").chmod(0)
    argv = [sys.executable, "-m", "memobuild.cli", "hash", "--no-stat-cache", str(tree)]
    proc = subprocess.run(without_dac_override(argv), capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"memobuild: error: {tree / 'src' / 'main.py'}: cannot read: Permission denied"
    ]
    assert "Traceback" not in proc.stderr
