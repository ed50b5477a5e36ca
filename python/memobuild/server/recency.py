"""Last-use recording for LRU eviction, batched.

A hit must move its entry and blobs to the young end of the LRU order, but an index write per
request would cost a sqlite transaction per lookup, on the request's path. The recorder instead
collects uses in memory and writes them in one batch per interval (and always just before an
eviction runs, so eviction sees every use up to that moment). A crash loses at most one
interval of last-use times: LRU order a second less exact, nothing else.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

from memobuild.server.storage import ServerStore

__all__ = ["DEFAULT_INTERVAL", "UseRecorder"]

DEFAULT_INTERVAL = 1.0  # seconds between batches


class UseRecorder:
    """Collects action and blob uses and hit/miss counts; ``flush`` writes them (thread-safe)."""

    def __init__(self, store: ServerStore) -> None:
        self._store = store
        self._mutex = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time, so batches land in order
        self._actions: dict[str, tuple[str, ...]] = {}
        self._blobs: set[str] = set()
        self._counters: Counter[str] = Counter()

    def action_hit(self, key: str, digests: Iterable[str]) -> None:
        with self._mutex:
            self._actions[key] = tuple(digests)
            self._counters["hits"] += 1

    def action_miss(self) -> None:
        with self._mutex:
            self._counters["misses"] += 1

    def blob_used(self, digest: str) -> None:
        with self._mutex:
            self._blobs.add(digest)

    def flush(self) -> None:
        """Write what was collected since the last flush to the index."""
        with self._flushing:
            with self._mutex:
                actions, self._actions = self._actions, {}
                blobs, self._blobs = self._blobs, set()
                counters, self._counters = dict(self._counters), Counter()
            if actions or blobs or counters:
                self._store.record_uses(actions, blobs, counters)
