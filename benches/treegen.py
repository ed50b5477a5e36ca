"""A generated source-like tree for the hashing benchmarks, kept between runs.

100,000 files by default (``MEMOBUILD_BENCH_FILES``), about 600 MB: most files 0.3-9 KB, one in
two hundred 100 KB-1 MB, in nested directories of a few dozen files each. Content is seeded
random bytes, so every run and machine gets the same tree.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

DEFAULT_FILES = 100_000


def bench_root() -> Path:
    base = os.environ.get("MEMOBUILD_BENCH_DIR") or "/var/tmp/memobuild-bench"
    return Path(base)


def file_count() -> int:
    return int(os.environ.get("MEMOBUILD_BENCH_FILES", DEFAULT_FILES))


def generate(root: Path, files: int, seed: int = 20261129) -> None:
    rng = random.Random(seed)
    made = 0
    dir_index = 0
    while made < files:
        depth = rng.randint(1, 4)
        parts = [f"d{rng.randrange(12)}" for _ in range(depth - 1)] + [f"pkg{dir_index}"]
        directory = root.joinpath(*parts)
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(min(rng.randint(10, 60), files - made)):
            if rng.random() < 0.005:
                size = int(100_000 * 10 ** rng.random())
            else:
                size = rng.randint(300, 9_000)
            (directory / f"f{i}.src").write_bytes(rng.randbytes(size))
            made += 1
        dir_index += 1


def ensure_tree(files: int | None = None) -> Path:
    """The tree for ``files`` files, generated once and reused while its marker is present."""
    files = file_count() if files is None else files
    root = bench_root() / f"tree-{files}"
    marker = bench_root() / f"tree-{files}.done"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        generate(root, files)
        marker.write_text("ok\n")
    return root


def file_list(root: Path) -> list[str]:
    out = []
    for dirpath, _dirs, names in os.walk(root):
        out.extend(os.path.join(dirpath, n) for n in names)
    out.sort()
    return out
