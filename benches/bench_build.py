"""`memobuild build` against `buildah bud --layers --storage-driver vfs --isolation chroot`.

Same base image (busybox, see benches/buildah.py), same contexts, same Dockerfiles, both run as
a new process per build, each scenario MemoBuild then Buildah, back to back, so that both meet
about the same load on a shared machine. Scenarios and targets (issue 6; ratio = Buildah's
time / MemoBuild's):

* (a) cold build of the three-stage examples/multistage (empty cache and store): no slower;
* (b) rebuild of it with nothing changed: at least 3x;
* (c) rebuild after a one-line change in one source file (src/main.sh, which the "build" stage
  copies; the build and test stages and the final stage's copies run again): at least 3x;
* (d) rebuild of a 100,000-file context (benches/treegen.py, about 600 MB) with ``COPY . .``,
  nothing changed: at least 50x; and its cold build: at least 2x.

Buildah needs about a minute per 100,000-file build, so those run once each (pedantic,
rounds=1); the small scenarios run a few rounds. Cold rounds start from an empty cache/storage
holding only the base image, made in the (untimed) setup.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from buildah import Buildah, BuildCounts, MemoBuild, make_busybox_rootfs
from treegen import ensure_tree, file_count

IMPLS = ("memobuild", "buildah")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "multistage"
SMALL_ROUNDS = 3
COPY_ALL = 'FROM busybox\nWORKDIR /app\nCOPY . .\nCMD ["ls", "/app"]\n'
BIG_GROUP = f"build {file_count() // 1000}k files COPY . ."
CHANGED_FILE = "src/main.sh"
CHANGED_LINE = "n=5\n"

pytestmark = pytest.mark.skipif(not Buildah.available(), reason="buildah is not installed")


class Builder:
    """One contender: MemoBuild or Buildah, with a store of its own that ``reset`` empties
    (back to just the base image)."""

    def __init__(self, impl: str, workdir: Path, rootfs: Path, layout: Path) -> None:
        self.impl = impl
        self.workdir = workdir
        self.rootfs = rootfs
        self.layout = layout
        self.fresh = itertools.count()
        self.tool: MemoBuild | Buildah = self._new_store()
        self.built: set[str] = set()  # tags built in the current store

    def _new_store(self) -> MemoBuild | Buildah:
        where = self.workdir / f"{self.impl}-{next(self.fresh)}"
        if self.impl == "memobuild":
            memobuild = MemoBuild(where / "cache")
            memobuild.import_base(self.rootfs)
            return memobuild
        buildah = Buildah(where)
        buildah.pull_base(self.layout)
        return buildah

    def reset(self) -> None:
        old = self.tool
        self.tool = self._new_store()
        self.built.clear()
        shutil.rmtree(old.cache.parent if isinstance(old, MemoBuild) else old.root)

    def build(self, context: Path, dockerfile: Path, tag: str) -> None:
        self.tool.build(context, dockerfile, tag)
        self.built.add(tag)

    def counts(self) -> BuildCounts:
        return self.tool.last_counts()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The base rootfs, and the base image as an OCI layout (written by MemoBuild's store)."""
    root = tmp_path_factory.mktemp("base")
    rootfs = make_busybox_rootfs(root / "rootfs")
    maker = MemoBuild(root / "cache")
    maker.import_base(rootfs)
    maker.export_base(root / "layout")
    return rootfs, root / "layout"


@pytest.fixture(scope="module")
def builders(
    base: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Builder]]:
    rootfs, layout = base
    made = {impl: Builder(impl, tmp_path_factory.mktemp(impl), rootfs, layout) for impl in IMPLS}
    yield made
    for builder in made.values():
        shutil.rmtree(builder.workdir, ignore_errors=True)


@pytest.fixture(params=IMPLS)
def builder(request: pytest.FixtureRequest, builders: dict[str, Builder]) -> Builder:
    """Function-scoped, so that each scenario runs MemoBuild and then Buildah back to back and
    both see the same machine load; the stores live on in ``builders``."""
    impl: str = request.param
    return builders[impl]


def _context(tmp_path: Path) -> Path:
    context = tmp_path / "multistage"
    shutil.copytree(EXAMPLE, context, symlinks=True)
    return context


def _group(benchmark: BenchmarkFixture, group: str, builder: Builder) -> None:
    benchmark.group = group
    benchmark.extra_info["impl"] = builder.impl


def _rounds(
    benchmark: BenchmarkFixture, run: Callable[[], None], setup: Callable[[], None], rounds: int
) -> None:
    def prepared() -> tuple[tuple[()], dict[str, object]]:
        setup()
        return (), {}

    benchmark.pedantic(run, setup=prepared, rounds=rounds, iterations=1)


# --- (a), (b), (c): the three-stage example ----------------------------------------------------


def test_cold_multistage(benchmark: BenchmarkFixture, builder: Builder, tmp_path: Path) -> None:
    _group(benchmark, "build multistage: (a) cold", builder)
    context = _context(tmp_path)
    dockerfile = context / "Dockerfile"

    _rounds(
        benchmark, lambda: builder.build(context, dockerfile, "ms:a"), builder.reset, SMALL_ROUNDS
    )
    counts = builder.counts()
    assert counts.executed >= 10, counts  # every step but the FROMs ran


def test_rebuild_no_change(benchmark: BenchmarkFixture, builder: Builder, tmp_path: Path) -> None:
    _group(benchmark, "build multistage: (b) no-change rebuild", builder)
    context = _context(tmp_path)
    dockerfile = context / "Dockerfile"
    builder.build(context, dockerfile, "ms:b")

    benchmark.pedantic(
        builder.build, args=(context, dockerfile, "ms:b"), rounds=SMALL_ROUNDS, warmup_rounds=1
    )
    assert builder.counts().executed == 0, builder.counts()


def test_rebuild_one_line_change(
    benchmark: BenchmarkFixture, builder: Builder, tmp_path: Path
) -> None:
    _group(benchmark, "build multistage: (c) one-line change", builder)
    context = _context(tmp_path)
    dockerfile = context / "Dockerfile"
    source = context / CHANGED_FILE
    original = source.read_text()
    assert original.count(CHANGED_LINE) == 1
    builder.build(context, dockerfile, "ms:c")
    edits = itertools.count(6)

    def edit() -> None:
        # A new default for --top each round: every round is a change neither cache has seen.
        source.write_text(original.replace(CHANGED_LINE, f"n={next(edits)}\n"))

    _rounds(benchmark, lambda: builder.build(context, dockerfile, "ms:c"), edit, SMALL_ROUNDS)
    counts = builder.counts()
    # The build stage's RUN, the test stage's COPY and RUN, and the final stage's COPYs ran.
    assert counts.executed >= 3, counts


# --- (d): 100,000 files, COPY . . ---------------------------------------------------------------


@pytest.fixture(scope="module")
def big_context(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The generated tree (kept between runs) and a Dockerfile outside it."""
    tree = ensure_tree()
    dockerfile = tmp_path_factory.mktemp("big") / "Dockerfile"
    dockerfile.write_text(COPY_ALL)
    return tree, dockerfile


def test_big_cold(
    benchmark: BenchmarkFixture, builder: Builder, big_context: tuple[Path, Path]
) -> None:
    _group(benchmark, f"{BIG_GROUP}: cold", builder)
    tree, dockerfile = big_context
    builder.reset()
    benchmark.pedantic(builder.build, args=(tree, dockerfile, "big:1"), rounds=1, iterations=1)
    assert builder.counts().executed >= 2, builder.counts()


def test_big_rebuild_no_change(
    benchmark: BenchmarkFixture, builder: Builder, big_context: tuple[Path, Path]
) -> None:
    """Reuses test_big_cold's store (a Buildah build of this tree takes a minute)."""
    _group(benchmark, f"{BIG_GROUP}: no-change rebuild", builder)
    tree, dockerfile = big_context
    if "big:1" not in builder.built:  # run on its own: the cold build first
        builder.build(tree, dockerfile, "big:1")
    rounds = 3 if builder.impl == "memobuild" else 1
    benchmark.pedantic(builder.build, args=(tree, dockerfile, "big:1"), rounds=rounds, iterations=1)
    assert builder.counts().executed == 0, builder.counts()
    builder.reset()  # frees the 100,000-file store now rather than at the end
