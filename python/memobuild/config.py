"""Configuration read from the environment: where the cache lives."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_DIR_ENV = "MEMOBUILD_CACHE_DIR"


def cache_dir() -> Path:
    """``$MEMOBUILD_CACHE_DIR``, else the platform's user cache dir (``~/.cache/memobuild``)."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_cache_dir("memobuild", appauthor=False))
