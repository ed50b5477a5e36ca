"""The store's index: sizes, last-use times, which entry references which blob, and counters.

Why sqlite (standard library) in WAL mode:

- Every cache hit records a last use, and every lookup counts a hit or a miss. In WAL mode with
  ``synchronous=NORMAL`` such a commit appends a few pages to the write-ahead log and does not
  fsync (only checkpoints do), so a hit costs tens of microseconds, against the milliseconds it
  takes to verify the layers the hit returns. Losing the last few last-use times in a power cut
  only makes LRU slightly less exact; the files themselves carry their own durability.
- Several processes update the index at once. sqlite serialises writers with its own locks and
  WAL lets readers go on while one writes; a hand-rolled log would need its own compaction and
  locking. Every write transaction starts with ``BEGIN IMMEDIATE``, so two writers never both
  read and then deadlock upgrading.
- gc needs "the least recently used entry" and "blobs no entry references" quickly, which are
  indexed queries here rather than a walk over every file.

The index is derived data: the files under ``blobs/`` and ``actions/`` are the truth. It is only
ever changed, for a given file, by the process that just created or deleted that file while
holding the store lock (shared to add, exclusive to delete), so it agrees with the disk whenever
no process is mid-operation; touches only update rows that exist. If the index is lost or
corrupt, the store rebuilds it from the files (``LocalStore.reconcile``); only last-use times
fall back to the files' mtimes.

A sqlite connection must not cross ``fork``; the index reopens itself in a child process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from memobuild.cache.atomic import FILE_MODE
from memobuild.errors import StorageError

__all__ = ["INDEX_VERSION", "ActionRow", "BlobRow", "IndexCorruptError", "StoreIndex"]

INDEX_VERSION = 1
BUSY_TIMEOUT = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    last_use REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_last_use ON blobs(last_use);
CREATE TABLE IF NOT EXISTS actions (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    layer_bytes INTEGER NOT NULL,
    layers INTEGER NOT NULL,
    created REAL NOT NULL,
    last_use REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS actions_by_last_use ON actions(last_use);
CREATE TABLE IF NOT EXISTS refs (
    key TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (key, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_by_digest ON refs(digest);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""


class IndexCorruptError(StorageError):
    """The index file is not a usable sqlite database; the store rebuilds it from the files."""


@dataclass(frozen=True)
class BlobRow:
    digest: str
    size: int
    last_use: float


@dataclass(frozen=True)
class ActionRow:
    key: str
    size: int  # bytes of the entry file
    layer_bytes: int  # bytes of the layer blobs it references
    layers: int
    created: float
    last_use: float


class StoreIndex:
    """One sqlite connection to ``index.sqlite``, safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = False  # whether this open found no index and made an empty one
        self._mutex = threading.RLock()
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        self._connect()

    def _connect(self) -> None:
        # Create the file ourselves so it is 0600 from the start; sqlite gives its -wal and -shm
        # files the main file's permissions.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            os.close(fd)
            self.created = True
        except FileExistsError:
            pass
        except OSError as err:
            raise StorageError(f"{self.path}: cannot create the index: {err.strerror}") from err
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as err:
            raise IndexCorruptError(f"{self.path}: cannot open the index: {err}") from err
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, INDEX_VERSION):
                raise IndexCorruptError(
                    f"{self.path}: index version {version}, this MemoBuild uses {INDEX_VERSION}"
                )
            if version == 0:
                # Two processes may both get here for a new index: every statement of the
                # schema is idempotent, so both running it is harmless.
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={INDEX_VERSION}")
                self.created = True
            conn.execute("SELECT count(*) FROM blobs").fetchone()
        except sqlite3.OperationalError as err:  # busy, I/O error, read-only: not corruption
            conn.close()
            raise StorageError(f"{self.path}: cannot open the index: {err}") from err
        except sqlite3.DatabaseError as err:
            conn.close()
            raise IndexCorruptError(f"{self.path}: the index is corrupt: {err}") from err
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._pid = os.getpid()

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self._conn = None  # never close a connection inherited over fork: it is the parent's
            self._connect()
        if self._conn is None:  # _connect either sets it or raises
            raise StorageError(f"{self.path}: the index is not open")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            db = self._db()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as err:
                raise StorageError(f"{self.path}: index update failed: {err}") from err

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            try:
                yield self._db()
            except sqlite3.Error as err:
                raise StorageError(f"{self.path}: index read failed: {err}") from err

    # --- changes made while holding the store lock ------------------------------------------

    def add_blob(self, digest: str, size: int, now: float) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO blobs(digest, size, last_use) VALUES (?, ?, ?) "
                "ON CONFLICT(digest) DO UPDATE SET size = excluded.size, "
                "last_use = max(last_use, excluded.last_use)",
                (digest, size, now),
            )

    def remove_blob(self, digest: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))

    def add_action(
        self,
        key: str,
        size: int,
        created: float,
        now: float,
        layers: Sequence[tuple[str, int]],
        counters: Mapping[str, int] | None = None,
    ) -> None:
        """Insert or replace an entry's row and its references to blobs."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO actions(key, size, layer_bytes, layers, created, last_use)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, size, sum(n for _, n in layers), len(layers), created, now),
            )
            db.execute("DELETE FROM refs WHERE key = ?", (key,))
            db.executemany(
                "INSERT OR IGNORE INTO refs(key, digest) VALUES (?, ?)",
                [(key, digest) for digest, _ in layers],
            )
            # The entry's blobs are in use as of now too: gc's min_age protects them with it.
            db.executemany(
                "UPDATE blobs SET last_use = max(last_use, ?) WHERE digest = ?",
                [(now, digest) for digest, _ in layers],
            )
            self._bump(db, counters or {})

    def remove_action(self, key: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM actions WHERE key = ?", (key,))
            db.execute("DELETE FROM refs WHERE key = ?", (key,))

    # --- changes any reader makes -----------------------------------------------------------

    def touch(
        self,
        now: float,
        *,
        action: str | None = None,
        blobs: Iterable[str] = (),
        counters: Mapping[str, int] | None = None,
    ) -> None:
        """Record a use (rows that exist only: a touch never re-creates a deleted row) and
        count it, in one cheap transaction."""
        with self._write() as db:
            if action is not None:
                db.execute(
                    "UPDATE actions SET last_use = max(last_use, ?) WHERE key = ?", (now, action)
                )
            db.executemany(
                "UPDATE blobs SET last_use = max(last_use, ?) WHERE digest = ?",
                [(now, digest) for digest in blobs],
            )
            self._bump(db, counters or {})

    def bump(self, counters: Mapping[str, int]) -> None:
        with self._write() as db:
            self._bump(db, counters)

    @staticmethod
    def _bump(db: sqlite3.Connection, counters: Mapping[str, int]) -> None:
        db.executemany(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [(name, n) for name, n in counters.items() if n],
        )

    # --- queries ----------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        with self._read() as db:
            return {name: int(value) for name, value in db.execute("SELECT * FROM counters")}

    def totals(self) -> tuple[int, int, int, int]:
        """(blobs, blob bytes, actions, action-entry bytes)."""
        with self._read() as db:
            blobs, blob_bytes = db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM blobs"
            ).fetchone()
            actions, action_bytes = db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM actions"
            ).fetchone()
        return int(blobs), int(blob_bytes), int(actions), int(action_bytes)

    def blob(self, digest: str) -> BlobRow | None:
        with self._read() as db:
            row = db.execute("SELECT * FROM blobs WHERE digest = ?", (digest,)).fetchone()
        return BlobRow(*row) if row else None

    def action(self, key: str) -> ActionRow | None:
        with self._read() as db:
            row = db.execute("SELECT * FROM actions WHERE key = ?", (key,)).fetchone()
        return ActionRow(*row) if row else None

    def blobs(self) -> dict[str, BlobRow]:
        with self._read() as db:
            return {row[0]: BlobRow(*row) for row in db.execute("SELECT * FROM blobs")}

    def actions(self) -> dict[str, ActionRow]:
        with self._read() as db:
            return {row[0]: ActionRow(*row) for row in db.execute("SELECT * FROM actions")}

    def refs(self) -> dict[str, set[str]]:
        """Entry key -> digests of the blobs it references."""
        out: dict[str, set[str]] = {}
        with self._read() as db:
            for key, digest in db.execute("SELECT key, digest FROM refs"):
                out.setdefault(key, set()).add(digest)
        return out

    def oldest_action(self, before: float) -> ActionRow | None:
        """The least recently used entry last used before ``before``."""
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM actions WHERE last_use < ? ORDER BY last_use, key LIMIT 1",
                (before,),
            ).fetchone()
        return ActionRow(*row) if row else None

    # ``exclude``: digests never to return (the store's pinned blobs), passed as one JSON array.

    def oldest_unreferenced_blob(
        self, before: float, exclude: Collection[str] = ()
    ) -> BlobRow | None:
        """The least recently used blob no entry references, last used before ``before``."""
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM blobs WHERE last_use < ? AND NOT EXISTS "
                "(SELECT 1 FROM refs WHERE refs.digest = blobs.digest) "
                "AND digest NOT IN (SELECT value FROM json_each(?)) "
                "ORDER BY last_use, digest LIMIT 1",
                (before, _json_list(exclude)),
            ).fetchone()
        return BlobRow(*row) if row else None

    def exclusive_blobs(
        self, key: str, before: float, exclude: Collection[str] = ()
    ) -> list[BlobRow]:
        """Blobs only entry ``key`` references, last used before ``before``: what evicting the
        entry frees."""
        with self._read() as db:
            rows = db.execute(
                "SELECT blobs.* FROM refs JOIN blobs ON blobs.digest = refs.digest "
                "WHERE refs.key = ? AND blobs.last_use < ? AND NOT EXISTS "
                "(SELECT 1 FROM refs AS other WHERE other.digest = refs.digest "
                "AND other.key != refs.key) "
                "AND blobs.digest NOT IN (SELECT value FROM json_each(?))",
                (key, before, _json_list(exclude)),
            ).fetchall()
        return [BlobRow(*row) for row in rows]

    def unreferenced_blobs(self, before: float, exclude: Collection[str] = ()) -> list[BlobRow]:
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM blobs WHERE last_use < ? AND NOT EXISTS "
                "(SELECT 1 FROM refs WHERE refs.digest = blobs.digest) "
                "AND digest NOT IN (SELECT value FROM json_each(?)) ORDER BY last_use",
                (before, _json_list(exclude)),
            ).fetchall()
        return [BlobRow(*row) for row in rows]


def _json_list(values: Collection[str]) -> str:
    return json.dumps(sorted(values))
