"""The local content-addressed store at ``$MEMOBUILD_CACHE_DIR``: blobs, action entries, records.

Layout (see DESIGN.md, "Storage")::

    blobs/sha256/<2 hex>/<hex>     layer, config and manifest blobs, named by their sha256
    actions/<2 hex>/<blake3 hex>   action entries (msgpack, checksummed), named by cache key
    records/<kind>/<blake3(name)>  small named records, e.g. the plan of the last build;
                                   records/pin/ holds the pins (below)
    index.sqlite                   sizes, last use, entry->blob references, counters (index.py)
    lock                           the store lock (lock.py)
    tmp/                           temp files being written (atomic.py)
    quarantine/                    files that failed verification, kept for inspection

Rules the code below keeps:

- A digest or key is validated (Rust ``parse_digest``) before any path is built from it, so no
  string from outside can name a path outside the store.
- Nothing is written in place: temp file, fsync, rename, fsync the directory.
- Every read is verified in Rust. A blob that fails is moved to ``quarantine/``, counted, and
  the caller sees CASIntegrityError (``read_blob``, ``blob_path``) or a miss (``get_action``);
  corrupt bytes are never returned. Quarantine moves files aside rather than deleting them, so
  bad input never costs data: only ``prune`` empties it.
- Concurrency: puts hold the store lock *shared* while they rename a finished file into place and
  index it, so builds never wait for each other; gc, prune and quarantine hold it *exclusive*, in
  short batches, so a file is never deleted between "is this blob here?" and "index the entry
  that references it". Lookups take no lock at all: files only ever appear whole (rename) or
  vanish whole (unlink), and a vanished file is a miss.
- LRU: every hit and put records a last use in the index (a cheap WAL append, see index.py).
  gc evicts the least recently used action entry or unreferenced blob, one at a time, until the
  total is under the limit; evicting an entry makes the blobs only it referenced unreferenced, and
  they follow in their own last-use order. A blob an entry references is never deleted while the
  entry survives. Anything used within ``min_age`` seconds is never evicted: that covers the
  moment between a build storing a layer blob and storing the entry that references it, and a
  build that just looked an entry up and is about to read its layers.
- Pins: ``pin(name, digests)`` keeps blobs alive whatever their age or use (e.g. the blobs of a
  tagged image). A pin is a record of kind "pin" (one file per name, written like any record:
  temp file, fsync, rename), so it is as durable as the blobs and survives a lost index. ``pin``
  checks the blobs are present and publishes the record under the shared lock; gc and prune read
  every pin record under the exclusive lock, in each batch, so no blob is pinned between their
  check and their unlink. Pinned blobs count toward gc's size but are never removed by gc or
  prune. A pin record that cannot be read (corrupt, unreadable, from a newer MemoBuild) is not
  quarantined and not ignored: gc and prune then remove *no blobs at all* (entries may still go)
  and warn with its path, until it is replaced with ``pin``, removed with ``unpin`` or deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from memobuild.cache.atomic import TempFile, ensure_private_dir, fsync_dir, storage_error
from memobuild.cache.entries import (
    MAX_ENTRY_BYTES,
    ActionEntry,
    LayerRef,
    decode_action,
    decode_named_record,
    decode_record,
    encode_action,
    encode_record,
)
from memobuild.cache.index import IndexCorruptError, StoreIndex
from memobuild.cache.lock import DEFAULT_LOCK_TIMEOUT, StoreLock, is_locked
from memobuild.config import cache_dir
from memobuild.errors import (
    BlobNotFoundError,
    CacheCoherencyError,
    CASIntegrityError,
    CorruptEntryError,
    InputError,
    InvalidDigestError,
    PathNotFoundError,
    UnreadablePathError,
    UnsupportedEntryError,
)
from memobuild.logging import logger
from memobuild.verify import Hasher, digest_bytes, parse_digest, verify_bytes, verify_file

# ActionEntry and LayerRef live in entries.py and are re-exported: callers know them as part of
# the store's API.
__all__ = [
    "COUNTERS",
    "DEFAULT_MIN_AGE",
    "ActionEntry",
    "ActionInfo",
    "BlobWriter",
    "GcReport",
    "LayerRef",
    "LocalStore",
    "StoreUsage",
]

# gc and prune never remove what was used this recently (seconds): see the module docstring.
DEFAULT_MIN_AGE = 60.0
# Evictions per hold of the exclusive lock: puts wait at most this many unlinks for gc.
GC_BATCH = 64
COPY_CHUNK = 1 << 20
COUNTERS = (
    "hits",
    "misses",
    "integrity_failures",
    "quarantined",
    "evicted_actions",
    "evicted_blobs",
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RECORD_KIND = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
PIN_KIND = "pin"  # record kind of pins
PIN_VERSION = 1

_FileId = tuple[int, int]  # (st_dev, st_ino): which file a path named when it was read


@dataclass(frozen=True)
class StoreUsage:
    """What the store holds, from the index (quarantine from the directory)."""

    blobs: int
    actions: int
    bytes: int  # blob_bytes + action_bytes: what gc's max_size bounds
    blob_bytes: int
    action_bytes: int
    quarantined: int  # files in quarantine/
    quarantined_bytes: int


@dataclass(frozen=True)
class ActionInfo:
    """One action entry as ``memobuild cache ls`` lists it."""

    key: str
    layers: int
    entry_bytes: int
    layer_bytes: int
    created: float
    last_use: float


@dataclass(frozen=True)
class GcReport:
    """What a gc or prune run removed, and what is left. Pinned blobs (``LocalStore.pin``) are
    never removed and are counted in ``remaining_bytes``: a gc whose limit is below the pinned
    total ends with ``reached`` false."""

    removed_actions: int = 0
    removed_blobs: int = 0
    freed_bytes: int = 0
    removed_quarantined: int = 0  # prune: files deleted from quarantine/
    removed_temp: int = 0  # prune: temp files a dead writer left in tmp/
    quarantined: int = 0  # prune: files found corrupt in this run and moved to quarantine/
    remaining_bytes: int = 0
    max_size: int | None = None  # gc's limit; None for prune

    @property
    def reached(self) -> bool:
        """Whether the store is now within ``max_size`` (always true for prune)."""
        return self.max_size is None or self.remaining_bytes <= self.max_size


def _read_file(path: Path, limit: int = -1) -> tuple[bytes, _FileId]:
    """A file's bytes (at most ``limit``) and identity, read through one descriptor.
    FileNotFoundError passes through."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        return f.read(limit), (st.st_dev, st.st_ino)


def _read_entry(path: Path) -> tuple[bytes, _FileId]:
    # One byte over the limit is enough for the decoder to refuse the file as too large,
    # without reading a huge stray file into memory.
    return _read_file(path, MAX_ENTRY_BYTES + 1)


class LocalStore:
    """The local content-addressed store. Safe to share between threads and processes."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self.root = Path(root if root is not None else cache_dir()).absolute()
        self._blobs = self.root / "blobs" / "sha256"
        self._actions = self.root / "actions"
        self._records = self.root / "records"
        self._tmp = self.root / "tmp"
        self._quarantine_dir = self.root / "quarantine"
        # The root may be a directory the user chose: create it private, but do not chmod it.
        if not self.root.exists():
            ensure_private_dir(self.root)
        for d in (self.root / "blobs", self._blobs, self._actions, self._records):
            ensure_private_dir(d)
        for d in (self._tmp, self._quarantine_dir):
            ensure_private_dir(d)
        self._lock = StoreLock(self.root / "lock", lock_timeout)
        self._index = self._open_index()

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _open_index(self) -> StoreIndex:
        """Open the index; a new or rebuilt one is filled from the files before use."""
        path = self.root / "index.sqlite"
        try:
            index = StoreIndex(path)
        except IndexCorruptError as err:
            with self._lock.exclusive():
                try:  # another process may have rebuilt it while we waited for the lock
                    index = StoreIndex(path)
                except IndexCorruptError:
                    moved = [
                        self._move_to_quarantine(Path(f"{path}{suffix}"), "index")
                        for suffix in ("", "-wal", "-shm")
                        if Path(f"{path}{suffix}").exists()
                    ]
                    where = moved[0] if moved else path
                    logger.warning(f"{err}; moved it to {where}, rebuilding it from the files")
                    index = StoreIndex(path)
                    self._reconcile_locked(index)
            return index
        if index.created:
            with self._lock.exclusive():
                self._reconcile_locked(index)
        return index

    # --- paths: every one built from a validated digest -------------------------------------

    def _blob_file(self, digest: str) -> Path:
        algorithm, hex_part = parse_digest(digest)
        if algorithm != "sha256":
            raise InvalidDigestError(digest, "blobs are addressed by sha256 digests")
        return self._blobs / hex_part[:2] / hex_part

    def _action_file(self, key: str) -> Path:
        algorithm, hex_part = parse_digest(key)
        if algorithm != "blake3":
            raise InvalidDigestError(key, "action keys are blake3 digests")
        return self._actions / hex_part[:2] / hex_part

    def _record_file(self, kind: str, name: str) -> Path:
        if not isinstance(kind, str) or not _RECORD_KIND.fullmatch(kind):
            raise InputError(
                f"invalid record kind {kind!r}: use 1-64 characters of a-z, 0-9, '.', '_', '-'"
            )
        if not isinstance(name, str):
            raise InputError(f"invalid record name {name!r}: must be a str")
        hex_part = digest_bytes(name.encode("utf-8", "surrogatepass"), "blake3").split(":")[1]
        return self._records / kind / hex_part

    # --- quarantine -------------------------------------------------------------------------

    def _move_to_quarantine(self, path: Path, kind: str) -> Path:
        dest = self._quarantine_dir / f"{kind}-{path.name}-{time.time_ns()}-{os.getpid()}"
        try:
            os.replace(path, dest)
            fsync_dir(path.parent)
        except OSError as err:
            raise storage_error(err, path, "move to quarantine") from err
        return dest

    def _quarantine_locked(
        self, index: StoreIndex, path: Path, kind: str, seen: _FileId | None, name: str
    ) -> Path | None:
        """Move ``path`` aside if it is still the file that failed (``seen``); None if it is gone
        or was replaced meanwhile (a concurrent put renamed a good copy over it)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        if seen is not None and (st.st_dev, st.st_ino) != seen:
            return None
        dest = self._move_to_quarantine(path, kind)
        if kind == "blob":
            index.remove_blob(name)
        elif kind == "action":
            index.remove_action(name)
        index.bump({"quarantined": 1})
        return dest

    def _quarantine(self, path: Path, kind: str, seen: _FileId | None, name: str) -> Path | None:
        with self._lock.exclusive():
            return self._quarantine_locked(self._index, path, kind, seen, name)

    def _temp_file(self, prefix: str) -> TempFile:
        """A new locked temp file. Created under the shared lock because prune, holding the
        exclusive lock, deletes every temp file no writer has locked: a file must never be seen
        between its creation and its writer's flock."""
        with self._lock.shared():
            return TempFile(self._tmp, prefix)

    # --- blobs ------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        """Whether a blob is present (not verified: reads verify)."""
        return self._blob_file(digest).is_file()

    def _index_if_present(self, digest: str, path: Path, size: int) -> bool:
        """Under the shared lock: if the blob is already stored, record the use and say so."""
        with self._lock.shared():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return False
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return False
            self._index.add_blob(digest, size, time.time())
            return True

    def _publish_blob(self, tmp: TempFile, digest: str, path: Path, size: int) -> None:
        tmp.sync()
        ensure_private_dir(path.parent)
        with self._lock.shared():
            tmp.publish(path)
            self._index.add_blob(digest, size, time.time())

    def put_blob_bytes(self, data: bytes, digest: str | None = None) -> str:
        """Store ``data``; returns its digest. With ``digest``, the data is verified first and
        nothing is stored on a mismatch (CASIntegrityError)."""
        if digest is None:
            digest = digest_bytes(data, "sha256")
            path = self._blob_file(digest)
        else:
            path = self._blob_file(digest)  # a malformed digest is refused before any hashing
            verify_bytes(data, digest, where="blob to store")
        if self._index_if_present(digest, path, len(data)):
            return digest
        with self._temp_file("blob-") as tmp:
            tmp.write(data)
            self._publish_blob(tmp, digest, path, len(data))
        return digest

    def put_blob_file(self, path: str | os.PathLike[str], digest: str | None = None) -> str:
        """Store the file at ``path``, streaming it; returns its digest. The copy is hashed as it
        is written and published only if it matches ``digest`` (when given), so a failed or
        interrupted put leaves no blob, partial or otherwise."""
        source = os.fspath(path)
        if digest is not None:
            target = self._blob_file(digest)
            if target.is_file():  # already stored: check the source, copy nothing
                size = verify_file(source, digest)
                if self._index_if_present(digest, target, size):
                    return digest
        try:
            src = open(source, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError as err:
            raise PathNotFoundError(source, "file") from err
        except IsADirectoryError as err:
            raise InputError(f"{source}: is a directory, not a blob file") from err
        except OSError as err:
            raise UnreadablePathError(source, err.strerror or str(err)) from err
        with src, self._temp_file("blob-") as tmp:
            hasher = Hasher("sha256")
            while True:
                try:
                    chunk = src.read(COPY_CHUNK)
                except OSError as err:
                    raise UnreadablePathError(source, err.strerror or str(err)) from err
                if not chunk:
                    break
                hasher.update(chunk)
                tmp.write(chunk)
            actual, size = hasher.digest(), hasher.size
            if digest is not None and actual != digest:
                raise CASIntegrityError(digest, actual, size, source)
            self._publish_blob(tmp, actual, self._blob_file(actual), size)
        return actual

    def blob_writer(
        self, digest: str, size: int | None = None, where: str | None = None
    ) -> BlobWriter:
        """A blob to be written piece by piece as it arrives (a download), published only if it
        matches ``digest`` (and ``size``, when given): see :class:`BlobWriter`."""
        return BlobWriter(self, digest, size, where)

    def put_blob_stream(
        self,
        stream: Iterable[bytes] | BinaryIO,
        digest: str,
        size: int | None = None,
        *,
        where: str | None = None,
    ) -> str:
        """Store what ``stream`` yields (chunks of bytes, or a binary file read to its end)
        under ``digest``: written once, to a temp file, hashed in Rust as it goes, and renamed
        into place only if the digest (and ``size``, when given) match. Otherwise
        CASIntegrityError, naming ``where``, and nothing is stored; a stream that raises leaves
        nothing either. Returns the digest."""
        chunks: Iterable[bytes] = stream
        if hasattr(stream, "read"):  # a file: read in large pieces, not line by line
            reader = cast(BinaryIO, stream)
            chunks = iter(lambda: reader.read(COPY_CHUNK), b"")
        with self.blob_writer(digest, size, where) as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()

    def _verified_blob(self, digest: str) -> tuple[Path, int]:
        """Verify a stored blob by path; quarantine it if it fails. Returns (path, size)."""
        path = self._blob_file(digest)
        for attempt in (1, 2):
            try:
                st = os.stat(path)
                size = verify_file(path, digest)
            except (FileNotFoundError, PathNotFoundError) as err:
                raise BlobNotFoundError(digest, path) from err
            except CASIntegrityError as err:
                failure = err
            else:
                return path, size
            moved = self._integrity_failure(path, digest, (st.st_dev, st.st_ino))
            if moved is None and attempt == 1:
                continue  # replaced or removed meanwhile: look again
            raise self._integrity_error(failure, path, moved)
        raise AssertionError("unreachable")

    def _integrity_failure(self, path: Path, name: str, seen: _FileId) -> Path | None:
        self._index.bump({"integrity_failures": 1})
        moved = self._quarantine(path, "blob", seen, name)
        if moved is not None:
            logger.warning(f"{path}: blob failed verification; moved to {moved}")
        return moved

    @staticmethod
    def _integrity_error(
        err: CASIntegrityError, path: Path, moved: Path | None
    ) -> CASIntegrityError:
        where = f"{path} (quarantined to {moved})" if moved is not None else str(path)
        return CASIntegrityError(err.expected, err.actual, err.size, where)

    def read_blob(self, digest: str) -> bytes:
        """A blob's bytes, verified. Raises BlobNotFoundError, or CASIntegrityError after moving
        the corrupt blob to quarantine."""
        path = self._blob_file(digest)
        for attempt in (1, 2):
            try:
                data, seen = _read_file(path)
            except FileNotFoundError as err:
                raise BlobNotFoundError(digest, path) from err
            except OSError as err:
                raise storage_error(err, path, "read blob") from err
            try:
                verify_bytes(data, digest, where=str(path))
            except CASIntegrityError as err:
                moved = self._integrity_failure(path, digest, seen)
                if moved is None and attempt == 1:
                    continue
                raise self._integrity_error(err, path, moved) from None
            self._index.touch(time.time(), blobs=[digest])
            return data
        raise AssertionError("unreachable")

    def blob_path(self, digest: str) -> Path:
        """The path of a present blob, verified just now; same errors as ``read_blob``. Read it,
        never write it: the file is shared by every entry that references it."""
        path, _ = self._verified_blob(digest)
        self._index.touch(time.time(), blobs=[digest])
        return path

    # --- action entries ---------------------------------------------------------------------

    def has_action(self, key: str) -> bool:
        """Whether an entry file exists for ``key`` (cheap: neither it nor its blobs is read)."""
        return self._action_file(key).is_file()

    def get_action(self, key: str) -> ActionEntry | None:
        """The entry for ``key`` with every layer blob present and verified, or None (a miss).

        A corrupt entry is quarantined; a corrupt blob is quarantined and its entry kept (the
        step rebuilds, stores the blob again, and the entry answers again). Neither raises: a
        broken cache costs a rebuild, never a failed build.
        """
        path = self._action_file(key)
        loaded = self._load_action(path, key)
        if loaded is None:
            self._index.bump({"misses": 1})
            return None
        entry, seen = loaded
        for layer in entry.layers:
            try:
                _, size = self._verified_blob(layer.digest)
            except BlobNotFoundError as err:
                logger.info(f"{path}: action {key} is a miss: {err}")
                self._index.bump({"misses": 1})
                return None
            except CASIntegrityError:
                self._index.bump({"misses": 1})
                return None
            if size != layer.size:
                self._index.bump({"integrity_failures": 1, "misses": 1})
                moved = self._quarantine(path, "action", seen, key)
                logger.warning(
                    f"{path}: action {key} says layer {layer.digest} is {layer.size} bytes but "
                    f"it is {size}; moved the entry to {moved}"
                )
                return None
        self._index.touch(
            time.time(),
            action=key,
            blobs=[layer.digest for layer in entry.layers],
            counters={"hits": 1},
        )
        return entry

    def _load_action(self, path: Path, key: str) -> tuple[ActionEntry, _FileId] | None:
        try:
            data, seen = _read_entry(path)
        except FileNotFoundError:
            return None
        except OSError as err:
            logger.warning(f"{path}: cannot read action entry: {err.strerror or err}")
            return None
        try:
            return decode_action(data, path, key), seen
        except UnsupportedEntryError as err:
            logger.info(f"{err}; treating it as a miss")
            return None
        except CorruptEntryError as err:
            self._index.bump({"integrity_failures": 1})
            moved = self._quarantine(path, "action", seen, key)
            logger.warning(f"{err}; moved to {moved}" if moved else str(err))
            return None

    def put_action(self, entry: ActionEntry) -> None:
        """Store ``entry`` under its key, replacing any older one. Every layer blob must already
        be in the store with the size the entry gives (else CacheCoherencyError, nothing stored):
        an entry must never promise what a lookup cannot deliver."""
        path = self._action_file(entry.key)
        data = encode_action(entry)
        ensure_private_dir(path.parent)
        with self._temp_file("action-") as tmp:
            tmp.write(data)
            tmp.sync()
            with self._lock.shared():
                for layer in entry.layers:
                    blob = self._blob_file(layer.digest)
                    try:
                        size = os.stat(blob).st_size
                    except FileNotFoundError:
                        raise CacheCoherencyError(
                            f"action {entry.key}: layer blob {layer.digest} is not in the cache "
                            f"({blob}); store the blob before the entry"
                        ) from None
                    if size != layer.size:
                        raise CacheCoherencyError(
                            f"action {entry.key}: layer blob {layer.digest} is {size} bytes in "
                            f"the cache, the entry says {layer.size}"
                        )
                tmp.publish(path)
                self._index.add_action(
                    entry.key,
                    len(data),
                    entry.created,
                    time.time(),
                    [(layer.digest, layer.size) for layer in entry.layers],
                )

    def list_actions(self) -> list[ActionInfo]:
        """Every indexed action entry, least recently used first."""
        rows = sorted(self._index.actions().values(), key=lambda r: (r.last_use, r.key))
        return [
            ActionInfo(r.key, r.layers, r.size, r.layer_bytes, r.created, r.last_use) for r in rows
        ]

    # --- records ----------------------------------------------------------------------------

    def put_record(self, kind: str, name: str, value: Any) -> None:
        """Store a small named msgpack value (e.g. kind "plan", name "<Dockerfile>#<target>"),
        replacing the previous one of that kind and name."""
        path = self._record_file(kind, name)
        data = encode_record(kind, name, value)
        ensure_private_dir(path.parent)
        with self._temp_file("record-") as tmp:
            tmp.write(data)
            tmp.publish(path)

    def get_record(self, kind: str, name: str) -> Any | None:
        """The value stored by ``put_record``, or None if absent or unreadable (quarantined)."""
        path = self._record_file(kind, name)
        try:
            data, seen = _read_entry(path)
        except FileNotFoundError:
            return None
        except OSError as err:
            logger.warning(f"{path}: cannot read record: {err.strerror or err}")
            return None
        try:
            return decode_record(data, path, kind, name)
        except UnsupportedEntryError as err:
            logger.info(str(err))
            return None
        except CorruptEntryError as err:
            self._index.bump({"integrity_failures": 1})
            moved = self._quarantine(path, "record", seen, name)
            logger.warning(f"{err}; moved to {moved}" if moved else str(err))
            return None

    # --- pins -------------------------------------------------------------------------------

    def pin(self, name: str, digests: Sequence[str]) -> None:
        """Keep the blobs ``digests`` from gc and prune under ``name``, replacing whatever
        ``name`` pinned before (atomically: a reader sees the old set or the new one). Every blob
        must be present (else CacheCoherencyError, nothing changed)."""
        if isinstance(digests, str):
            raise InputError(f"pin {name!r}: digests must be a sequence of digests, not a str")
        wanted = list(dict.fromkeys(digests))
        blobs = [self._blob_file(digest) for digest in wanted]  # validates every digest
        path = self._record_file(PIN_KIND, name)
        data = encode_record(PIN_KIND, name, {"version": PIN_VERSION, "digests": wanted})
        ensure_private_dir(path.parent)
        with self._temp_file("pin-") as tmp:
            tmp.write(data)
            tmp.sync()
            with self._lock.shared():  # gc and prune cannot remove a blob between check and pin
                for digest, blob in zip(wanted, blobs, strict=True):
                    if not blob.is_file():
                        raise CacheCoherencyError(
                            f"pin {name!r}: blob {digest} is not in the cache ({blob})"
                        )
                tmp.publish(path)

    def unpin(self, name: str) -> bool:
        """Release the blobs ``name`` pinned (gc and prune may then remove them); False if there
        was no such pin. Also removes a pin record that cannot be read."""
        path = self._record_file(PIN_KIND, name)
        with self._lock.shared():
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            except OSError as err:
                raise storage_error(err, path, "remove pin") from err
            fsync_dir(path.parent)
        return True

    def pins(self) -> dict[str, tuple[str, ...]]:
        """Every pin: name -> pinned digests. Unreadable pin records are left out, with a
        warning (they still stop gc and prune from removing blobs, see the module docstring)."""
        pins, bad = self._read_pins()
        for problem in bad:
            logger.warning(problem)
        return pins

    def _read_pins(self) -> tuple[dict[str, tuple[str, ...]], list[str]]:
        """(readable pins by name, one message per pin record that could not be read)."""
        pins: dict[str, tuple[str, ...]] = {}
        bad: list[str] = []
        try:
            items = sorted(os.scandir(self._records / PIN_KIND), key=lambda e: e.name)
        except FileNotFoundError:
            return pins, bad
        for item in items:
            if not _HEX64.fullmatch(item.name):
                continue  # records are published by rename under their hash: not ours
            path = Path(item.path)
            try:
                data, _ = _read_entry(path)
                name, value = decode_named_record(data, path, PIN_KIND)
                if self._record_file(PIN_KIND, name).name != item.name:
                    raise CorruptEntryError(path, f"holds the pin {name!r}, filed under another")
                pins[name] = _pin_digests(value, path)
            except FileNotFoundError:
                continue  # unpinned meanwhile
            except (CorruptEntryError, UnsupportedEntryError, InvalidDigestError) as err:
                bad.append(f"unreadable pin record: {err}")
            except OSError as err:
                bad.append(f"unreadable pin record: {path}: {err.strerror or err}")
        return pins, bad

    def _pinned_locked(self, warned: bool) -> tuple[frozenset[str], bool]:
        """Under the exclusive lock: (every pinned digest, whether blobs may be removed at all).
        An unreadable pin might pin anything, so it blocks every blob removal."""
        pins, bad = self._read_pins()
        if bad and not warned:
            for problem in bad:
                logger.warning(
                    f"{problem}; removing no blobs until it is fixed (pin or unpin that name "
                    f"again, or delete the file)"
                )
        return frozenset(d for digests in pins.values() for d in digests), not bad

    # --- housekeeping -----------------------------------------------------------------------

    def usage(self) -> StoreUsage:
        blobs, blob_bytes, actions, action_bytes = self._index.totals()
        quarantined = quarantined_bytes = 0
        try:
            with os.scandir(self._quarantine_dir) as it:
                for item in it:
                    quarantined += 1
                    try:
                        quarantined_bytes += item.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        quarantined -= 1
        except FileNotFoundError:
            pass
        return StoreUsage(
            blobs=blobs,
            actions=actions,
            bytes=blob_bytes + action_bytes,
            blob_bytes=blob_bytes,
            action_bytes=action_bytes,
            quarantined=quarantined,
            quarantined_bytes=quarantined_bytes,
        )

    def stats(self) -> dict[str, int]:
        """Counters kept across runs: hits, misses, integrity_failures, quarantined, evictions."""
        counters = dict.fromkeys(COUNTERS, 0)
        counters.update(self._index.counters())
        return counters

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            raise storage_error(err, path, "remove") from err

    def gc(self, max_size: int, *, min_age: float = DEFAULT_MIN_AGE) -> GcReport:
        """Evict least recently used entries and unreferenced blobs until the store holds at most
        ``max_size`` bytes, never touching anything used in the last ``min_age`` seconds (the
        report's ``reached`` says whether that was enough). Pinned blobs count toward the size
        but are never removed; while a pin record is unreadable no blob is removed at all."""
        if max_size < 0:
            raise InputError(f"gc: max size must be >= 0, not {max_size}")
        cutoff = time.time() - min_age
        removed_actions = removed_blobs = freed = 0
        done = warned = False
        while not done:
            with self._lock.exclusive():
                pinned, may_remove = self._pinned_locked(warned)
                warned = True
                _, blob_bytes, _, action_bytes = self._index.totals()
                total = blob_bytes + action_bytes
                for _ in range(GC_BATCH):
                    if total <= max_size:
                        done = True
                        break
                    action = self._index.oldest_action(cutoff)
                    blob = (
                        self._index.oldest_unreferenced_blob(cutoff, pinned) if may_remove else None
                    )
                    if action is not None and (blob is None or action.last_use <= blob.last_use):
                        # The entry goes with the blobs only it references (unless something
                        # used them recently): a blob nothing references is no use to anyone.
                        orphans = (
                            self._index.exclusive_blobs(action.key, cutoff, pinned)
                            if may_remove
                            else []
                        )
                        self._unlink(self._action_file(action.key))
                        self._index.remove_action(action.key)
                        removed_actions += 1
                        total -= action.size
                        freed += action.size
                        for row in orphans:
                            self._unlink(self._blob_file(row.digest))
                            self._index.remove_blob(row.digest)
                            removed_blobs += 1
                            total -= row.size
                            freed += row.size
                    elif blob is not None:
                        self._unlink(self._blob_file(blob.digest))
                        self._index.remove_blob(blob.digest)
                        removed_blobs += 1
                        total -= blob.size
                        freed += blob.size
                    else:
                        done = True  # everything left is recent, or referenced by a recent entry
                        break
        self._index.bump({"evicted_actions": removed_actions, "evicted_blobs": removed_blobs})
        return GcReport(
            removed_actions=removed_actions,
            removed_blobs=removed_blobs,
            freed_bytes=freed,
            remaining_bytes=self.usage().bytes,
            max_size=max_size,
        )

    def prune(self, *, min_age: float = DEFAULT_MIN_AGE, verify: bool = False) -> GcReport:
        """Clean up: empty quarantine, remove temp files no live writer holds, bring the index
        back in line with the files, drop entries whose blobs are gone, and remove blobs no entry
        references that were not used in the last ``min_age`` seconds. With ``verify``, also hash
        every blob and quarantine the ones that fail (kept until the next prune). Pinned blobs
        are never removed (unless corrupt); while a pin record is unreadable no blob is."""
        removed_quarantined = removed_temp = quarantined = 0
        with self._lock.exclusive():
            for item in self._quarantine_dir.iterdir():
                self._unlink(item)
                removed_quarantined += 1
            for item in self._tmp.iterdir():
                if item.is_file() and not is_locked(item):
                    self._unlink(item)
                    removed_temp += 1
        if verify:  # outside the lock: hashing every blob can take minutes
            for digest, _, _ in _walk_store_dir(self._blobs, "sha256"):
                try:
                    self._verified_blob(digest)
                except CASIntegrityError:
                    quarantined += 1
                except BlobNotFoundError:
                    pass  # removed meanwhile
        cutoff = time.time() - min_age
        with self._lock.exclusive():
            removed_actions, bad_entries, freed = self._reconcile_locked(self._index)
            quarantined += bad_entries
            removed_blobs = 0
            pinned, may_remove = self._pinned_locked(False)
            for row in self._index.unreferenced_blobs(cutoff, pinned) if may_remove else []:
                self._unlink(self._blob_file(row.digest))
                self._index.remove_blob(row.digest)
                removed_blobs += 1
                freed += row.size
        return GcReport(
            removed_actions=removed_actions,
            removed_blobs=removed_blobs,
            freed_bytes=freed,
            removed_quarantined=removed_quarantined,
            removed_temp=removed_temp,
            quarantined=quarantined,
            remaining_bytes=self.usage().bytes,
        )

    def reconcile(self) -> None:
        """Make the index agree with the files (after a crash, or files removed by hand)."""
        with self._lock.exclusive():
            self._reconcile_locked(self._index)

    def _reconcile_locked(self, index: StoreIndex) -> tuple[int, int, int]:
        """Under the exclusive lock: index every blob and entry on disk, forget rows whose file is
        gone, quarantine unreadable entries and remove entries whose blobs are gone. Returns
        (entries removed, entries quarantined, bytes freed)."""
        blob_rows = index.blobs()
        on_disk: dict[str, int] = {}
        for digest, _, st in _walk_store_dir(self._blobs, "sha256"):
            on_disk[digest] = st.st_size
            row = blob_rows.get(digest)
            if row is None or row.size != st.st_size:
                index.add_blob(digest, st.st_size, row.last_use if row else st.st_mtime)
        for digest in blob_rows.keys() - on_disk.keys():
            index.remove_blob(digest)

        action_rows = index.actions()
        refs = index.refs()
        seen_actions: set[str] = set()
        removed = quarantined = freed = 0
        for key, path, st in _walk_store_dir(self._actions, "blake3"):
            try:
                data, _ = _read_entry(path)
                entry = decode_action(data, path, key)
            except FileNotFoundError:
                continue
            except UnsupportedEntryError:
                continue  # another MemoBuild's entry: leave it alone, unindexed
            except (CorruptEntryError, OSError) as err:
                logger.warning(f"{path}: unreadable action entry ({err}); moving to quarantine")
                index.bump({"integrity_failures": 1})
                if self._quarantine_locked(index, path, "action", None, key) is not None:
                    quarantined += 1
                index.remove_action(key)
                continue
            if any(on_disk.get(layer.digest) != layer.size for layer in entry.layers):
                self._unlink(path)
                index.remove_action(key)
                removed += 1
                freed += st.st_size
                continue
            seen_actions.add(key)
            action_row = action_rows.get(key)
            wanted = {layer.digest for layer in entry.layers}
            if (
                action_row is None
                or action_row.size != st.st_size
                or refs.get(key, set()) != wanted
            ):
                index.add_action(
                    key,
                    st.st_size,
                    entry.created,
                    action_row.last_use if action_row else st.st_mtime,
                    [(layer.digest, layer.size) for layer in entry.layers],
                )
        for key in action_rows.keys() - seen_actions:
            index.remove_action(key)
        return removed, quarantined, freed


class BlobWriter:
    """A blob written into the store as it arrives (``LocalStore.blob_writer``).

    ``write`` the bytes in order; ``commit`` publishes them. They go once, into a locked temp
    file under the store's ``tmp/``, hashed in Rust on the way, and ``commit`` fsyncs and
    renames the file into place only if it hashes to the digest (and holds ``size`` bytes,
    when given); otherwise it raises CASIntegrityError and nothing is stored. More bytes than
    ``size`` are refused as they arrive. ``reset`` starts over (a download that must be
    fetched again from its start). Leaving the ``with`` block without a ``commit``, or
    ``abort``, removes the temp file. One thread writes a blob at a time.
    """

    def __init__(self, store: LocalStore, digest: str, size: int | None, where: str | None) -> None:
        self.digest = digest
        self.size = size
        self._store = store
        self._path = store._blob_file(digest)  # a malformed digest is refused before any write
        if size is not None and size < 0:
            raise InputError(f"blob {digest}: size must be >= 0, not {size}")
        self._where = where if where is not None else f"blob {digest}"
        self._files = contextlib.ExitStack()
        self._tmp = self._files.enter_context(store._temp_file("blob-"))
        self._hasher = Hasher("sha256")
        self._offset = 0
        self._closed = False

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    @property
    def offset(self) -> int:
        """How many bytes have been written (since the last ``reset``)."""
        return self._offset

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self._where}: the blob writer is closed")

    def write(self, data: bytes) -> None:
        self._check_open()
        if self.size is not None and self._offset + len(data) > self.size:
            raise CASIntegrityError(
                self.digest,
                f"(more than its {self.size} bytes)",
                self._offset + len(data),
                self._where,
            )
        self._hasher.update(data)
        self._tmp.write(data)
        self._offset += len(data)

    def reset(self) -> None:
        """Drop what was written; the next ``write`` is the blob's first byte again."""
        self._check_open()
        try:
            os.ftruncate(self._tmp.fd, 0)
            os.lseek(self._tmp.fd, 0, os.SEEK_SET)
        except OSError as err:
            raise storage_error(err, self._tmp.path, "write") from err
        self._hasher = Hasher("sha256")
        self._offset = 0

    def commit(self) -> str:
        """Verify what was written and publish it; returns the digest. CASIntegrityError, and
        nothing stored, when it is not the blob announced."""
        self._check_open()
        actual, size = self._hasher.digest(), self._hasher.size
        try:
            if actual != self.digest:
                raise CASIntegrityError(self.digest, actual, size, self._where)
            if self.size is not None and size != self.size:
                raise CASIntegrityError(
                    self.digest, f"{actual} (only {size} of {self.size} bytes)", size, self._where
                )
            self._store._publish_blob(self._tmp, self.digest, self._path, size)
        finally:
            self.abort()
        return self.digest

    def abort(self) -> None:
        """Give the blob up: the temp file is removed (nothing is stored). Idempotent."""
        if not self._closed:
            self._closed = True
            self._files.close()


def _pin_digests(value: Any, path: Path) -> tuple[str, ...]:
    """The digests a pin record's value lists; CorruptEntryError or UnsupportedEntryError if it
    is not a pin this MemoBuild wrote."""
    if not isinstance(value, dict) or not isinstance(value.get("version"), int):
        raise CorruptEntryError(path, "not a pin")
    if value["version"] != PIN_VERSION:
        raise UnsupportedEntryError(path, f"pin version {value['version']}", PIN_VERSION)
    digests = value.get("digests")
    if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
        raise CorruptEntryError(path, "pin lacks its list of digests")
    for digest in digests:
        parse_digest(digest)
    return tuple(digests)


def _walk_store_dir(base: Path, algorithm: str) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(digest, path, stat) of every well-formed file under ``base/<2 hex>/<64 hex>``. Anything
    else there is not ours to interpret and is skipped, never deleted."""
    try:
        shards = sorted(os.scandir(base), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for shard in shards:
        if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
            continue
        try:
            items = sorted(os.scandir(shard.path), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        for item in items:
            if not _HEX64.fullmatch(item.name) or item.name[:2] != shard.name:
                logger.debug(f"{item.path}: not a store file; skipped")
                continue
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield f"{algorithm}:{item.name}", Path(item.path), st
