"""The local cache: a content-addressed store of blobs, action entries and records.

``LocalStore`` is the face; ``ActionEntry`` and ``LayerRef`` are what a build step's cached
result looks like. See store.py for the layout and the rules it keeps.
"""

from __future__ import annotations

from memobuild.cache.entries import ActionEntry, LayerRef
from memobuild.cache.store import (
    DEFAULT_MIN_AGE,
    ActionInfo,
    GcReport,
    LocalStore,
    StoreUsage,
)

__all__ = [
    "DEFAULT_MIN_AGE",
    "ActionEntry",
    "ActionInfo",
    "GcReport",
    "LayerRef",
    "LocalStore",
    "StoreUsage",
]
