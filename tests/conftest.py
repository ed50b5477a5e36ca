"""Shared fixtures: every test gets its own cache dir, so no test sees another's stat cache.

Fixtures a test file may ask for (a file that defines its own of the same name uses that):
``store`` (the LocalStore at that cache dir) and ``base`` (the busybox image saved in it),
``logs`` (every log record while the test runs), ``new_runner`` (CI runners, see
tests/build_runner.py) and ``registry`` (a plain docker-registry for the test module).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from build_runner import Runner
from busybox_image import BusyboxImage, make_busybox_image
from memobuild.cache.store import LocalStore
from memobuild.logging import logger
from registry_fixture import Registry, running_registry

# CI runs the property tests on a fixed sequence of examples (reproducible, never flaky, no
# deadlines on a shared 2-core machine); developers' runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("MEMOBUILD_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def store(isolated_cache: Path) -> Iterator[LocalStore]:
    with LocalStore(isolated_cache) as opened:
        yield opened


@pytest.fixture
def base(tmp_path: Path, store: LocalStore) -> BusyboxImage:
    return make_busybox_image(tmp_path / "base", store)


@pytest.fixture
def logs() -> Iterator[list[tuple[str, str]]]:
    """Every log record (level, message) while the test runs, DEBUG included."""
    records: list[tuple[str, str]] = []
    sink = logger.add(
        lambda m: records.append((m.record["level"].name, m.record["message"])), level="DEBUG"
    )
    yield records
    logger.remove(sink)


@pytest.fixture
def new_runner(tmp_path: Path) -> Iterator[Callable[[], Runner]]:
    """Makes runners (runner1, runner2, ...) and closes their stores after the test."""
    made: list[Runner] = []

    def make() -> Runner:
        runner = Runner(tmp_path / f"runner{len(made) + 1}")
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain (no auth, no TLS) docker-registry on 127.0.0.1, one per test module."""
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running
