"""Private directories and atomic file publication for the local store.

Nothing in the store is ever written in place. A writer fills a temp file under ``tmp/`` (same
filesystem as its destination, so ``rename`` is atomic), fsyncs it, renames it over the final
name and fsyncs the directory, so a reader sees either the whole old file, the whole new file or
nothing, and a crash or power cut leaves at worst a stray temp file, never a torn blob. A temp
file carries a flock for as long as its writer has it open, which is how ``prune`` tells a temp
file some build is still filling from one a crashed build left behind.

Directories are 0700 and files 0600: the cache holds build contexts and image layers, which can
contain secrets, and is no one else's business.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from types import TracebackType

from memobuild.cache.lock import lock_fd
from memobuild.errors import StorageError

__all__ = ["DIR_MODE", "FILE_MODE", "TempFile", "ensure_private_dir", "fsync_dir"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def storage_error(err: OSError, path: str | os.PathLike[str], doing: str) -> StorageError:
    """An OSError as one line that says what the store was doing, and where."""
    where = err.filename if err.filename is not None else os.fspath(path)
    return StorageError(f"{where}: cannot {doing}: {err.strerror or err}")


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) as 0700; tighten it if it already exists looser."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o077:
            path.chmod(DIR_MODE)
    except OSError as err:
        raise storage_error(err, path, "create directory") from err


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TempFile:
    """A 0600 temp file under ``tmp_dir``, locked while open, removed unless published.

    Use as a context manager; ``write`` what belongs in it, then ``publish(final)``. Leaving the
    block without publishing (an exception, a verification failure) deletes the temp file, so a
    failed put leaves nothing behind.
    """

    def __init__(self, tmp_dir: Path, prefix: str) -> None:
        try:
            fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=prefix)
        except OSError as err:
            raise storage_error(err, tmp_dir, "create a temp file") from err
        self.fd = fd
        self.path = Path(name)
        self._published = False
        self._synced = False
        lock_fd(fd)

    def __enter__(self) -> TempFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        if not self._published:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError as err:
            raise storage_error(err, self.path, "write") from err

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def sync(self) -> None:
        """Flush the contents to disk; done before taking the store lock, to keep holds short."""
        try:
            os.fsync(self.fd)
        except OSError as err:
            raise storage_error(err, self.path, "write") from err
        self._synced = True

    def publish(self, final: Path) -> None:
        """Rename over ``final`` (replacing it atomically) and fsync ``final``'s directory."""
        if not self._synced:
            self.sync()
        try:
            os.replace(self.path, final)
            self._published = True
            fsync_dir(final.parent)
        except OSError as err:
            raise storage_error(err, final, "store file") from err
