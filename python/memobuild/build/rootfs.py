"""Scratch directories for a build: working rootfs trees, layer tars, unpacked images.

Every build gets one directory under ``<cache>/tmp/rootfs/`` (on the cache's filesystem, which
is sized for image content, rather than in a possibly small ``/tmp``). The build holds an
exclusive ``flock`` on ``<dir>.lock`` for as long as it runs and removes the directory on every
way out it controls (success, a failed step, an exception, Ctrl-C). A build killed with SIGKILL
cannot clean up, so every build first *sweeps*: a directory whose lock file nobody holds belongs
to a dead build and is deleted. The kernel drops a flock when its holder dies, which is what
makes that test reliable without pid files or timeouts.

The lock is taken before the directory exists and released only after it is gone, and a sweeper
deletes only while holding the lock itself, so a sweeper can never delete a live build's tree.
``tmp/`` itself belongs to the store, whose ``prune`` removes stray temp *files* there; the
``rootfs/`` directory is invisible to it.

Deleting a big tree (a rootfs of 100,000 files) takes as long as writing it, and nobody waits for
it: so a build hands its scratch directory, when it holds more than a few empty directories, to
a detached background remover (:func:`remove_in_background`: ``rm -rf`` in a session of its
own, which neither the build's return nor a Ctrl-C in the terminal waits for or stops). The
remover inherits the directory's locked file descriptor, so the directory stays locked, and
safe from sweepers, until the remover has deleted it and then its lock file; a remover that dies
half-way releases the lock with its death, and the next build's sweep finishes the job. Trees a
build drops while it runs (a finished stage's rootfs) go the same way (:meth:`ScratchDir.discard`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import secrets
import shutil
import stat
import subprocess
from pathlib import Path
from types import TracebackType

from memobuild.errors import StorageError
from memobuild.logging import logger

__all__ = ["ScratchArea", "ScratchDir", "remove_in_background", "remove_tree"]

AREA = Path("tmp") / "rootfs"
LOCK_SUFFIX = ".lock"

# The background remover, run as ``sh -c REMOVER_SCRIPT sh TREE LOCK``: deletes TREE (a non-root
# build may have left directories it cannot write: made writable, then tried again), then,
# only if TREE is gone, the lock file LOCK (may be empty: no lock file). ``--one-file-system``:
# anything still mounted below TREE is left alone (and so is the lock file, for the next
# sweep). The outer shell starts the work in the background and exits at once.
REMOVER_SCRIPT = (
    '{ rm -rf --one-file-system -- "$1" 2>/dev/null'
    ' || { chmod -R u+rwx -- "$1"; rm -rf --one-file-system -- "$1"; };'
    ' if [ -n "$2" ] && [ ! -e "$1" ]; then rm -f -- "$2"; fi; } </dev/null >/dev/null 2>&1 &'
)
# Seconds to wait for the outer shell, which only forks the remover and exits.
REMOVER_START_TIMEOUT = 10.0


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything under it; a missing path is fine.

    A build step may leave directories without write or search permission (``chmod 0500``,
    ``chmod -R a-w``); as a non-root user those cannot be emptied until their mode is fixed, so
    when the first attempt fails every directory is made ``u+rwx`` and it is tried once more.
    Symlinks are never followed.
    """
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    try:
        shutil.rmtree(path)
    except OSError:
        _make_dirs_writable(path)
        shutil.rmtree(path)


def remove_in_background(path: Path, lock_path: Path | None = None, lock_fd: int = -1) -> bool:
    """Delete ``path`` in a detached background process (see the module docstring); returns
    False when none could be started (the caller then removes it itself).

    With ``lock_fd``, the open, locked lock file of the tree: the remover inherits it, so the
    lock is held until the tree is gone, and then removes ``lock_path`` too. The caller may
    close its own descriptor as soon as this returns.
    """
    argv = ["sh", "-c", REMOVER_SCRIPT, "sh", str(path), str(lock_path or "")]
    try:
        starter = subprocess.Popen(  # noqa: S603 - a fixed script; paths are arguments
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=(lock_fd,) if lock_fd >= 0 else (),
        )
    except OSError as err:
        logger.debug(f"{path}: no background remover ({err}); removing it now")
        return False
    try:
        return starter.wait(timeout=REMOVER_START_TIMEOUT) == 0
    except subprocess.TimeoutExpired:  # pragma: no cover - sh only forks and exits
        starter.kill()
        starter.wait()
        return False


def _only_empty_dirs(path: Path) -> bool:
    """Remove the files and empty directories directly in ``path``; True when that emptied it
    (nothing worth a background remover: a build that only hit, or wrote no rootfs)."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return True
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            return False
    return True


def _make_dirs_writable(root: Path) -> None:
    """``u+rwx`` on every directory, each before it is listed (os.walk descends after the parent
    is yielded, so fixing the children's modes in the loop is soon enough)."""

    def fix(target: str) -> None:
        with contextlib.suppress(OSError):
            mode = os.lstat(target).st_mode
            if stat.S_ISDIR(mode):
                os.chmod(target, stat.S_IMODE(mode) | stat.S_IRWXU)

    fix(str(root))
    for current, dirs, _files in os.walk(root, topdown=True, followlinks=False):
        for name in dirs:
            fix(os.path.join(current, name))


class ScratchDir:
    """One build's scratch directory, locked while the build runs. Use as a context manager:
    leaving the block removes the directory and then releases the lock."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._lock_path = path.with_name(path.name + LOCK_SUFFIX)
        self._names = itertools.count(1)  # next() is atomic: stage threads share this

    def new_dir(self, label: str) -> Path:
        """A fresh, empty subdirectory named after ``label`` (0755: it may become a rootfs whose
        ``/`` a non-root build user must be able to enter)."""
        path = self._name(label)
        try:
            path.mkdir(mode=0o755)
            path.chmod(0o755)  # the umask must not make a rootfs unreadable to its build user
        except OSError as err:
            raise StorageError(f"{path}: cannot create directory: {err.strerror or err}") from err
        return path

    def new_file(self, label: str) -> Path:
        """A path for a new file (not created) in the scratch directory."""
        return self._name(label)

    def _name(self, label: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]
        return self.path / f"{next(self._names):03d}-{safe}"

    def discard(self, tree: Path) -> None:
        """Delete ``tree`` (a directory made here that the build no longer needs) in the
        background; if this build's scratch directory goes first, its remover takes it along."""
        if self.path not in tree.parents or not os.path.lexists(tree):
            return
        if not remove_in_background(tree):
            remove_tree(tree)

    def close(self) -> None:
        """Remove the directory, then drop the lock; safe to call more than once. A directory
        that holds more than empty directories is removed in the background (module docstring):
        this returns at once, and the lock passes to the remover."""
        if self._lock_fd < 0:
            return
        if not _only_empty_dirs(self.path) and remove_in_background(
            self.path, self._lock_path, self._lock_fd
        ):
            os.close(self._lock_fd)
            self._lock_fd = -1
            return
        try:
            remove_tree(self.path)
        except OSError as err:
            # Keep the lock file: with the lock released, the next build's sweep retries.
            logger.warning(f"{self.path}: could not remove build scratch directory: {err}")
        else:
            with contextlib.suppress(FileNotFoundError):
                self._lock_path.unlink()
        os.close(self._lock_fd)
        self._lock_fd = -1

    def __enter__(self) -> ScratchDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ScratchArea:
    """``<cache>/tmp/rootfs``: where builds make their scratch directories."""

    def __init__(self, cache_root: str | os.PathLike[str]) -> None:
        self.root = Path(cache_root) / AREA

    def _ensure(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"{self.root}: cannot create directory: {err.strerror}") from err

    def create(self, label: str = "build") -> ScratchDir:
        """A new locked scratch directory for this process."""
        self._ensure()
        for _ in range(100):
            name = f"{label}-{os.getpid()}-{secrets.token_hex(6)}"
            lock_path = self.root / (name + LOCK_SUFFIX)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            except OSError as err:
                raise StorageError(f"{lock_path}: cannot create: {err.strerror}") from err
            if not _try_lock(fd) or not _same_file(fd, lock_path):
                os.close(fd)  # a sweeper got here first: pick another name
                continue
            path = self.root / name
            try:
                path.mkdir(mode=0o700)
            except OSError as err:
                os.close(fd)
                lock_path.unlink(missing_ok=True)
                raise StorageError(f"{path}: cannot create directory: {err.strerror}") from err
            return ScratchDir(path, fd)
        raise StorageError(f"{self.root}: cannot create a scratch directory")  # pragma: no cover

    def sweep(self) -> int:
        """Delete the scratch directories of builds that are no longer running (killed, or
        crashed before they could clean up); returns how many were removed."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        names = {e.name for e in entries}
        removed = 0
        for entry in entries:
            if entry.name.endswith(LOCK_SUFFIX):
                name = entry.name[: -len(LOCK_SUFFIX)]
                if self._sweep_locked(name):
                    removed += 1
            elif entry.name + LOCK_SUFFIX not in names and entry.is_dir(follow_symlinks=False):
                # A directory without its lock file is no build's: builds create the lock first
                # and delete it last.
                self._remove(self.root / entry.name)
                removed += 1
        return removed

    def _sweep_locked(self, name: str) -> bool:
        lock_path = self.root / (name + LOCK_SUFFIX)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            if not _try_lock(fd) or not _same_file(fd, lock_path):
                return False  # a live build holds it (or it was just replaced)
            path = self.root / name
            existed = path.exists()
            if not self._remove(path):
                return False
            lock_path.unlink(missing_ok=True)
            if existed:
                logger.info(f"removed {path}, left behind by a build that did not finish")
            return existed
        finally:
            os.close(fd)

    @staticmethod
    def _remove(path: Path) -> bool:
        try:
            remove_tree(path)
        except OSError as err:
            logger.warning(f"{path}: could not remove a dead build's scratch directory: {err}")
            return False
        return True


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the open file ``fd`` (not unlinked or replaced meanwhile)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
