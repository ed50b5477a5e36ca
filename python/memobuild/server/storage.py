"""The server's storage: the local store's layout and rules, with what serving needs on top.

``ServerStore`` is a ``LocalStore`` (same directories, index, lock and atomic publication, so
``memobuild cache du|ls|gc|prune --cache-dir DIR`` work on a server's storage) and adds:

- streamed uploads (``BlobUpload``): the body goes into a locked temp file under ``tmp/`` (same
  filesystem as ``blobs/``) while ``_core`` hashes it; it is published (fsync, rename, fsync the
  directory, index) only if digest and size match, else deleted. A re-upload of a present blob
  is published over it too: it has just been verified, and that heals a copy damaged on disk.
- lookups that check presence and size with ``stat`` rather than re-hashing every layer blob on
  every hit, as ``LocalStore.get_action`` does: a server would re-read gigabytes per lookup.
  Clients verify every byte they download (issue 7), and a blob damaged on the server's disk
  is healed by the next upload of it.
- leases (leases.py) that eviction honours, and eviction that keeps nothing for ``min_age``:
  the server's bound is a hard one, and in-flight use is protected by leases instead.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from memobuild.cache.atomic import TempFile
from memobuild.cache.entries import MAX_ENTRY_BYTES, ActionEntry, decode_action
from memobuild.cache.lock import is_locked
from memobuild.cache.store import GcReport, LocalStore
from memobuild.errors import CorruptEntryError, StorageError, UnsupportedEntryError
from memobuild.logging import logger
from memobuild.server.leases import Leases
from memobuild.verify import Hasher

__all__ = ["ActionHit", "BlobUpload", "OpenBlob", "ServerStore", "UploadResult"]


@dataclass(frozen=True)
class UploadResult:
    """What an upload turned out to be."""

    digest: str  # what the bytes hash to
    size: int  # how many bytes came
    stored: bool  # verified and published
    existed: bool = False  # a copy was already stored (it has been replaced by this one)


class BlobUpload:
    """One blob upload in progress: a temp file and a running sha256. ``hash_chunks`` and
    ``write_chunks`` may run at the same time, each in a worker thread, while the event loop
    reads the next chunks; ``close`` waits for both."""

    def __init__(self, tmp: TempFile, expected: str, leased: Iterable[str], leases: Leases) -> None:
        self._tmp = tmp
        self._hasher = Hasher("sha256")
        self._hashing = threading.Lock()
        self._writing = threading.Lock()
        self._closed = False
        self.expected = expected
        self._leased = tuple(leased)
        self._leases = leases

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self._tmp.path}: upload already closed")

    def hash_chunks(self, chunks: list[bytes]) -> None:
        with self._hashing:
            self._check_open()
            for chunk in chunks:
                self._hasher.update(chunk)

    def write_chunks(self, chunks: list[bytes]) -> None:
        with self._writing:
            self._check_open()
            for chunk in chunks:
                self._tmp.write(chunk)

    def write(self, data: bytes) -> None:
        """Hash and write ``data`` (one after the other, in the calling thread)."""
        self.hash_chunks([data])
        self.write_chunks([data])

    @property
    def size(self) -> int:
        return self._hasher.size

    def digest(self) -> str:
        with self._hashing:
            return self._hasher.digest()

    def publish(self, publish: Callable[[TempFile], None]) -> None:
        """Run ``publish`` on the temp file, once no write is in progress."""
        with self._writing:
            self._check_open()
            publish(self._tmp)

    def close(self) -> None:
        """Delete the temp file unless it was published, and release the lease. Idempotent."""
        with self._hashing, self._writing:
            if self._closed:
                return
            self._closed = True
            self._tmp.__exit__(None, None, None)
            self._leases.release(self._leased)


@dataclass
class OpenBlob:
    """A blob opened for sending, leased until ``close``."""

    file: BinaryIO
    size: int
    digest: str
    _leases: Leases

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
            self._leases.release([self.digest])


@dataclass(frozen=True)
class ActionHit:
    """An action entry whose layer blobs are all present: its stored bytes and its contents."""

    data: bytes
    entry: ActionEntry


class ServerStore(LocalStore):
    """A LocalStore that serves: see the module docstring."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        self.leases = Leases()

    # --- leases -----------------------------------------------------------------------------

    def _pinned_locked(self, warned: bool) -> tuple[frozenset[str], bool]:
        # gc calls this under the exclusive lock at the start of every batch: leased blobs are
        # spared like pinned ones (see leases.py for why a snapshot is exact here).
        pinned, may_remove = super()._pinned_locked(warned)
        return pinned | self.leases.snapshot(), may_remove

    def lease(self, digests: Iterable[str]) -> tuple[str, ...]:
        """Lease ``digests`` (release them with ``leases.release``); blocks while a gc batch
        runs, so call it from a worker thread."""
        held = tuple(digests)
        with self._lock.shared():
            self.leases.acquire(held)
        return held

    # --- blobs ------------------------------------------------------------------------------

    def blob_size(self, digest: str) -> int | None:
        """The size of a present blob, or None."""
        try:
            st = os.stat(self._blob_file(digest))
        except FileNotFoundError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def open_blob(self, digest: str) -> OpenBlob | None:
        """Lease and open a blob for sending, or None if it is not stored."""
        path = self._blob_file(digest)
        self.lease([digest])
        try:
            file = open(path, "rb")  # noqa: SIM115 - OpenBlob.close closes it
        except FileNotFoundError:
            self.leases.release([digest])
            return None
        except BaseException:
            self.leases.release([digest])
            raise
        size = os.fstat(file.fileno()).st_size
        return OpenBlob(file, size, digest, self.leases)

    def start_upload(self, digest: str) -> BlobUpload:
        """A new upload of the blob ``digest`` (validated here, before any file is made)."""
        self._blob_file(digest)
        held = self.lease([digest])
        try:
            return BlobUpload(self._temp_file("upload-"), digest, held, self.leases)
        except BaseException:
            self.leases.release(held)
            raise

    def finish_upload(self, upload: BlobUpload, declared_size: int | None) -> UploadResult:
        """Publish the upload if it hashes to its digest (and has ``declared_size`` bytes, when
        given); otherwise leave it to ``close`` to delete."""
        actual, size = upload.digest(), upload.size
        if actual != upload.expected or (declared_size is not None and size != declared_size):
            return UploadResult(actual, size, stored=False)
        path = self._blob_file(actual)
        existed = path.is_file()
        upload.publish(lambda tmp: self._publish_blob(tmp, actual, path, size))
        return UploadResult(actual, size, stored=True, existed=existed)

    # --- action entries ---------------------------------------------------------------------

    def missing_blobs(self, entry: ActionEntry) -> list[str]:
        """The entry's layer digests that are not stored with the size it gives."""
        return [
            layer.digest for layer in entry.layers if self.blob_size(layer.digest) != layer.size
        ]

    def lookup_action(self, key: str) -> ActionHit | None:
        """The stored entry for ``key`` if every layer blob it names is present with its size;
        None (a miss) otherwise. A corrupt entry is quarantined."""
        path = self._action_file(key)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read(MAX_ENTRY_BYTES + 1)
        except FileNotFoundError:
            return None
        try:
            entry = decode_action(data, path, key)
        except UnsupportedEntryError as err:
            logger.info(f"{err}; treating it as a miss")
            return None
        except CorruptEntryError as err:
            self._index.bump({"integrity_failures": 1})
            moved = self._quarantine(path, "action", (st.st_dev, st.st_ino), key)
            logger.warning(f"{err}; moved to {moved}" if moved else str(err))
            return None
        if self.missing_blobs(entry):
            return None
        return ActionHit(data, entry)

    @contextmanager
    def leased(self, digests: Iterable[str]) -> Iterator[None]:
        """Hold leases on ``digests`` for the block (e.g. while an action PUT is validated)."""
        held = self.lease(digests)
        try:
            yield
        finally:
            self.leases.release(held)

    # --- use records, housekeeping ----------------------------------------------------------

    def record_uses(
        self, actions: dict[str, tuple[str, ...]], blobs: Iterable[str], counters: dict[str, int]
    ) -> None:
        """Write a batch of last uses and counters to the index."""
        now = time.time()
        for key, digests in actions.items():
            self._index.touch(now, action=key, blobs=digests)
        self._index.touch(now, blobs=blobs, counters=counters)

    def total_bytes(self) -> int:
        """Bytes of blobs and entries, as gc bounds them."""
        _, blob_bytes, _, action_bytes = self._index.totals()
        return blob_bytes + action_bytes

    def evict(self, max_size: int) -> GcReport:
        """Evict least recently used entries and unreferenced blobs until storage fits
        ``max_size``, sparing leased blobs (nothing is kept for its age: see the docstring)."""
        return self.gc(max_size, min_age=0.0)

    def remove_stale_temp(self) -> int:
        """Delete the temp files no live writer holds (a killed server's partial uploads)."""
        removed = 0
        with self._lock.exclusive():
            for item in self._tmp.iterdir():
                if item.is_file() and not is_locked(item):
                    item.unlink(missing_ok=True)
                    removed += 1
        return removed
