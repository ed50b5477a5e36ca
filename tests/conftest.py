"""Shared fixtures: every test gets its own cache dir, so no test sees another's stat cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("MEMOBUILD_CACHE_DIR", str(cache))
    return cache
