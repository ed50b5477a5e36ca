"""Content digests of directory trees (build contexts, repositories).

The work happens in Rust (``_core.hash_tree``): a parallel walk, BLAKE3 over file contents and a
Merkle digest over the tree (schema ``memobuild.tree.v1``, see DESIGN.md). Paths a
``.dockerignore`` or ``.gitignore`` excludes are pruned from the walk. A persistent stat cache
lets a second hash of an unchanged tree read no file contents.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from memobuild import _core
from memobuild.config import cache_dir
from memobuild.errors import PatternError, from_os_error

__all__ = ["TreeDigest", "TreeEntry", "default_stat_cache_path", "hash_tree"]


@dataclass(frozen=True)
class TreeEntry:
    """One path of a hashed tree, as it entered the digest."""

    path: str
    kind: str  # file, dir, symlink, fifo, socket, chardev, blockdev
    digest: str  # blake3 of a file's content, Merkle digest of a directory, "" otherwise
    executable: bool
    size: int
    link_target: str | None


@dataclass(frozen=True)
class TreeDigest:
    """The digest of a tree and what it took to compute it."""

    digest: str
    files: int
    dirs: int
    symlinks: int
    bytes: int
    hashed_files: int  # files whose content was read in this run
    cache_hits: int  # files whose digest came from the stat cache
    entries: tuple[TreeEntry, ...] | None = None


def default_stat_cache_path(
    root: str | os.PathLike[str],
    *,
    dockerignore: Sequence[str] | None = None,
    gitignore: bool = False,
) -> Path:
    """Where the stat cache of ``root`` lives under the cache dir, one file per root and filter.

    Each filter gets its own file so that hashing one tree with different ignore rules does not
    make the runs evict each other's records.
    """
    real = os.path.realpath(root)
    mode = "git" if gitignore else "docker" if dockerignore is not None else "all"
    ident = "\0".join([real, mode, *(dockerignore or ())])
    name = _core.digest_bytes(ident.encode("utf-8", "surrogateescape"), "blake3")
    return cache_dir() / "statcache" / f"{name.split(':', 1)[1][:32]}.bin"


def hash_tree(
    root: str | os.PathLike[str],
    *,
    dockerignore: Sequence[str] | None = None,
    gitignore: bool = False,
    stat_cache: bool | str | os.PathLike[str] = True,
    include_entries: bool = False,
) -> TreeDigest:
    """Hash the directory ``root``.

    ``dockerignore`` takes patterns as ``memobuild.ignore.read_dockerignore`` returns them;
    ``gitignore=True`` honours the tree's ``.gitignore`` files and skips ``.git``. ``stat_cache``
    is True for the default location, False for none, or a file path.
    """
    if dockerignore is not None and gitignore:
        raise ValueError("choose either dockerignore patterns or gitignore, not both")
    if stat_cache is True:
        cache_path: str | os.PathLike[str] | None = default_stat_cache_path(
            root, dockerignore=dockerignore, gitignore=gitignore
        )
    elif stat_cache is False:
        cache_path = None
    else:
        cache_path = stat_cache
    patterns = list(dockerignore) if dockerignore is not None else None
    try:
        digest, files, dirs, links, size, hashed, hits, raw = _core.hash_tree(
            root, patterns, gitignore, cache_path, include_entries
        )
    except OSError as err:
        raise from_os_error(err, "directory") from err
    except ValueError as err:
        if len(err.args) == 2:
            raise PatternError(str(err.args[0]), str(err.args[1])) from err
        raise
    entries = None
    if raw is not None:
        entries = tuple(
            TreeEntry(p, kind, f"blake3:{d}" if kind in ("file", "dir") else "", x, n, t)
            for p, kind, d, x, n, t in raw
        )
    return TreeDigest(digest, files, dirs, links, size, hashed, hits, entries)
