"""File locks that let several MemoBuild processes share one cache dir.

Why ``fcntl.flock`` and not the ``filelock`` package or POSIX ``fcntl`` record locks:

- ``flock`` has shared and exclusive modes. Puts take the store lock shared, so any number of
  builds write at once; only garbage collection and repairs take it exclusive. ``filelock``
  offers exclusive locks only (readers would queue behind each other) and is a dependency.
- ``flock`` locks belong to an open file description, so two opens in one process (two threads,
  two ``LocalStore`` objects) exclude each other as two processes do. POSIX record locks belong
  to the process and vanish when *any* descriptor of the file is closed: wrong for a library.
- The kernel drops the lock when its holder dies, so a crashed build never leaves a stale lock
  that needs cleaning up. The lock files themselves are never deleted (deleting a lock file
  while someone waits on it is the classic way to get two holders).

``flock`` does not prefer a waiting exclusive locker: with builds taking the shared lock back to
back, gc could wait forever. So every acquisition first passes a turnstile, a second lock file
(``lock.gate``) taken exclusively for the instant it takes to request the main lock. A shared
locker takes the gate, takes the lock shared, and drops the gate at once; an exclusive locker
takes the gate and keeps it until it holds the lock, so shared lockers that arrive while it waits
queue at the gate instead of overtaking it.

Each acquisition opens the lock files afresh and closes them on release, so holds nest only as
the caller nests them; callers never ask for the same lock twice (that would deadlock). Waiting
is bounded: a process that holds the lock for minutes (a stopped process) turns into a clear
StorageError instead of a silent hang.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from memobuild.errors import StorageError

__all__ = ["DEFAULT_LOCK_TIMEOUT", "StoreLock", "is_locked", "lock_fd"]

DEFAULT_LOCK_TIMEOUT = 600.0


def _wait_flock(fd: int, operation: int, path: Path, timeout: float) -> None:
    """flock with a deadline: poll with a short, growing sleep rather than block forever."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StorageError(f"{path}: cannot lock: {err.strerror or err}") from err
        if time.monotonic() >= deadline:
            raise StorageError(
                f"{path}: timed out after {timeout:.0f}s waiting for the cache lock; "
                "another memobuild process (a running gc or prune?) holds it"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


class StoreLock:
    """The cache-wide lock: shared for puts, exclusive for gc, prune and quarantine."""

    def __init__(self, path: Path, timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.path = path
        self.gate = path.with_name(path.name + ".gate")
        self.timeout = timeout

    def _open(self, path: Path) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise StorageError(f"{path}: cannot open lock file: {err.strerror}") from err

    @contextmanager
    def _hold(self, operation: int) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout
        gate = self._open(self.gate)
        try:
            _wait_flock(gate, fcntl.LOCK_EX, self.gate, self.timeout)
            fd = self._open(self.path)
            try:
                _wait_flock(fd, operation, self.path, max(deadline - time.monotonic(), 0.0))
            except BaseException:
                os.close(fd)
                raise
        finally:
            os.close(gate)  # closing the last descriptor releases the flock
        try:
            yield
        finally:
            os.close(fd)

    def shared(self) -> AbstractContextManager[None]:
        """Hold the lock with other shared holders; excludes an exclusive holder."""
        return self._hold(fcntl.LOCK_SH)

    def exclusive(self) -> AbstractContextManager[None]:
        """Hold the lock alone."""
        return self._hold(fcntl.LOCK_EX)


def lock_fd(fd: int) -> None:
    """Mark an open file (a temp file being written) as in use until it is closed."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def is_locked(path: Path) -> bool:
    """Whether another open file description holds a flock on ``path`` (a live temp file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)
    return False
