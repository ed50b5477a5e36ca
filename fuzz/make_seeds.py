#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/ (small, deterministic); rerun after a change.

Seeds for unpack_layer are tar archives (some gzip-compressed) that exercise each kind of entry
and each refusal: plain files, directories, symlinks, hard links, whiteouts, an opaque
directory, PAX long names, and hostile archives (``..``, absolute names, a write through a
symlink, a hard link out of the root, a device node, a setuid file). Seeds for dockerignore are
a ``.dockerignore`` text, a NUL byte, then paths separated by newlines.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

SEEDS = Path(__file__).resolve().parent / "seeds"


def _tar(build: Callable[[tarfile.TarFile], None], *, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
        end = tar.offset  # where the members end: keep the two zero blocks, not the record padding
    data = buf.getvalue()[: end + 1024]
    return gzip.compress(data, mtime=0) if compress else data


def _add(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    link: str = "",
    mode: int = 0o644,
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _normal(tar: tarfile.TarFile) -> None:
    _add(tar, "etc/", tarfile.DIRTYPE, mode=0o755)
    _add(tar, "etc/hostname", data=b"box\n")
    _add(tar, "etc/hosts", tarfile.LNKTYPE, link="etc/hostname")
    _add(tar, "bin/", tarfile.DIRTYPE, mode=0o755)
    _add(tar, "bin/sh", data=b"#!/bin/sh\n", mode=0o755)
    _add(tar, "bin/ash", tarfile.SYMTYPE, link="sh")
    _add(tar, "var/", tarfile.DIRTYPE)
    _add(tar, "var/.wh..wh..opq")
    _add(tar, "etc/.wh.motd")
    _add(tar, "usr/share/" + "long-name/" * 12 + "file", data=b"x")


_HOSTILE: dict[str, Callable[[tarfile.TarFile], None]] = {
    "dotdot": lambda tar: _add(tar, "../escape", data=b"x"),
    "absolute": lambda tar: _add(tar, "/abs", data=b"x"),
    "through-symlink": lambda tar: (
        _add(tar, "link", tarfile.SYMTYPE, link=".."),
        _add(tar, "link/outside/file", data=b"x"),
    ),
    "hardlink-out": lambda tar: _add(tar, "hard", tarfile.LNKTYPE, link="../outside/file"),
    "device": lambda tar: _add(tar, "dev", tarfile.CHRTYPE),
    "setuid": lambda tar: _add(tar, "suid", data=b"x", mode=0o4755),
    "whiteout-dotdot": lambda tar: _add(tar, ".wh...", data=b""),
}


def main() -> None:
    layer = SEEDS / "unpack_layer"
    layer.mkdir(parents=True, exist_ok=True)
    (layer / "normal.tar").write_bytes(_tar(_normal))
    (layer / "normal.tar.gz").write_bytes(_tar(_normal, compress=True))
    for name, build in _HOSTILE.items():
        (layer / f"hostile-{name}.tar").write_bytes(_tar(build))
    (layer / "empty.tar").write_bytes(b"\0" * 1024)

    ignore = SEEDS / "dockerignore"
    ignore.mkdir(parents=True, exist_ok=True)
    cases = {
        "basic": ("*.md\n!README.md\nnode_modules\n", "README.md\ndocs/a.md\nnode_modules/x/y"),
        "globs": ("**/*.go\n!**/keep/**\na?c\n[a-c]*\n", "x/y.go\nkeep/z.go\nabc\nb\\c/d"),
        "dotdot": ("secret\n!../secret\n/../secret\n", "../secret\nx/../secret\n./secret/."),
        "regexps": ("a/**/b/*.txt\n!a/**/b/keep.txt\n\\[x\\]\n", "a/q/r/b/k.txt\n[x]/y"),
    }
    for name, (patterns, paths) in cases.items():
        (ignore / name).write_bytes(patterns.encode() + b"\0" + paths.encode())


if __name__ == "__main__":
    main()
