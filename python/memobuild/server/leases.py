"""Leases: the blobs in-flight requests are using, which eviction must not remove.

A blob GET holds a lease on its blob from before it opens the file until the last byte is sent;
an action PUT holds leases on the blobs the entry references until the entry is stored (after
that the entry's references protect them); a blob PUT holds one on the digest it is uploading.

Leases are taken while holding the store lock *shared* (``ServerStore.lease``) and eviction reads
them while holding it *exclusive*, at the start of each batch: so a lease either exists before a
batch starts (and the batch spares its blob) or is taken after the batch ends (and the reader
then finds the blob present, or gone before it ever opened it: a plain miss). Releasing needs no
lock: a stale snapshot only spares a blob one batch longer.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

__all__ = ["Leases"]


class Leases:
    """A thread-safe multiset of leased digests."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: Counter[str] = Counter()

    def acquire(self, digests: Iterable[str]) -> None:
        with self._mutex:
            self._held.update(digests)

    def release(self, digests: Iterable[str]) -> None:
        with self._mutex:
            for digest in digests:
                left = self._held[digest] - 1
                if left > 0:
                    self._held[digest] = left
                else:
                    self._held.pop(digest, None)

    def snapshot(self) -> frozenset[str]:
        with self._mutex:
            return frozenset(self._held)

    def __contains__(self, digest: object) -> bool:
        with self._mutex:
            return isinstance(digest, str) and self._held[digest] > 0

    def __len__(self) -> int:
        with self._mutex:
            return len(self._held)
