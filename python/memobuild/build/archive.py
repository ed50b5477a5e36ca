"""Local tar archives for ADD, and paths inside a root filesystem.

``ADD archive.tar.gz /dest/`` unpacks a local tar archive instead of copying it, as
``docker build`` does. Docker decides by *content*, not by file name (BuildKit's
``isArchivePath``): the file is decompressed if it starts with a gzip, bzip2, xz or zstd magic
number, and it is an archive when what comes out starts with a valid tar header. A ``.tar.gz``
that is not a tar is copied; a tar called ``data.bin`` is unpacked. :func:`archive_compression`
makes that decision.

:func:`extract_archive` unpacks with Docker's semantics (``chrootarchive.Untar``: the archive's
modes, owners, times and xattrs are kept, an entry replaces what is at its path unless both are
directories, ``--chown`` owns everything it writes) and refuses, naming the entry, what could
write outside the destination or smuggle in a host device:

* absolute member names and names that climb out with ``..`` (Docker strips a leading ``/``;
  an archive that needs that is refused here instead, as a hint that it was built carelessly);
* symlinks whose target, as the image will see it, lies outside the destination directory
  (a relative target that climbs out, or an absolute one elsewhere in the image; with the
  destination ``/`` every absolute target is inside, so ``ADD rootfs.tar.xz /`` works);
* hard links to anything outside the destination or to something not extracted yet;
* character and block devices and FIFOs;
* archives that expand past :data:`MAX_ARCHIVE_BYTES` or hold more than
  :data:`MAX_ARCHIVE_ENTRIES` entries, and extended headers (PAX, GNU long names) larger than
  :data:`MAX_EXTENDED_HEADER` (decompression bombs; the same bounds as layer unpacking).

This is tarfile's ``data`` filter, read in the image's namespace rather than the host's. The
filter's mode sanitising (dropping setuid/setgid/sticky and group/other write) is deliberately
not applied: an image's ``/tmp`` is 1777 and its ``passwd`` is setuid, and an archive's modes are
part of its content, which the cache key already covers.

Every member path is resolved with the destination as its root: a symlink already in the
rootfs (or put there by an earlier entry) that points at ``/etc`` leads to ``<dest>/etc``, never
to the host's ``/etc``, exactly as Docker's chrooted untar resolves it.

Paths inside a root
-------------------

:func:`resolve_in_root` and :func:`make_dirs_in_root` resolve a path inside a directory as if
that directory were ``/`` (containerd's ``fs.RootPath``): symlinks are followed, an absolute
target restarts at the root, ``..`` stops at the root. COPY uses them for its destination, the
extractor for every member. The result is always a path below the root, by construction; the
callers then create only the last component themselves, with ``O_NOFOLLOW``/``O_EXCL``, so an
existing symlink or device at that spot is replaced, never written through.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

from memobuild.errors import InputError

__all__ = [
    "COMPRESSIONS",
    "MAX_ARCHIVE_BYTES",
    "MAX_ARCHIVE_ENTRIES",
    "MAX_EXTENDED_HEADER",
    "MAX_SYMLINKS",
    "ArchiveError",
    "archive_compression",
    "container_path",
    "extract_archive",
    "make_dirs_in_root",
    "open_decompressed",
    "remove_for_replace",
    "resolve_in_root",
    "set_owner",
    "sniff_compression",
]

MAX_SYMLINKS = 255
"""containerd's ``fs.RootPath`` gives up after this many symlinks (ELOOP)."""

MAX_ARCHIVE_BYTES = 64 << 30
"""Bound on the decompressed tar bytes (headers, data, padding) ADD reads from one archive."""
MAX_ARCHIVE_ENTRIES = 5_000_000
"""Bound on the entries ADD extracts from one archive."""
MAX_EXTENDED_HEADER = 1 << 20
"""Bound on one PAX or GNU long-name header, which tarfile reads into memory whole."""

_CHUNK = 1 << 20

# Magic numbers, as moby's compression.DetectCompression checks them.
COMPRESSIONS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b\x08"),
    ("bzip2", b"BZh"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
)


class ArchiveError(InputError):
    """An archive that ADD refuses to unpack (an unsafe or unsupported entry) or cannot read.

    ``entry`` names the member at fault (None when the archive as a whole is unreadable).
    """

    def __init__(self, archive: str, reason: str, entry: str | None = None) -> None:
        self.archive = archive
        self.entry = entry
        self.reason = reason
        where = f"{archive}: entry {entry!r}" if entry is not None else archive
        super().__init__(f"{where}: {reason}")


# --------------------------------------------------------------------------------------------
# Paths inside a root


def container_path(root: Path, host: Path) -> str:
    """How the image names ``host`` (a path below ``root``): ``/`` plus the relative path."""
    rel = os.path.relpath(host, root)
    return "/" if rel == "." else "/" + rel


def _names(path: str) -> list[str]:
    return [name for name in path.split("/") if name not in ("", ".")]


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """The host path of ``path`` inside ``root``, symlinks followed as if ``root`` were ``/``.

    Components that do not exist are kept as written (the caller may be about to create
    them). The last component is followed only when ``follow_last``. More than
    :data:`MAX_SYMLINKS` symlinks raise ``OSError(ELOOP)``.
    """
    return _walk_in_root(root, path, follow_last=follow_last, create=None)


def make_dirs_in_root(
    root: Path, path: str, *, on_create: Callable[[Path], None] | None = None
) -> Path:
    """``mkdir -p`` of ``path`` inside ``root`` (symlinks followed as by
    :func:`resolve_in_root`); returns the directory's host path.

    Missing directories are made 0755 whatever the umask, then ``on_create`` is called on each
    (to set its owner). Something that is not a directory on the way raises
    ``NotADirectoryError`` naming it as the image sees it.
    """
    return _walk_in_root(root, path, follow_last=True, create=on_create or _no_op)


def _no_op(_path: Path) -> None:
    return None


def _walk_in_root(
    root: Path, path: str, *, follow_last: bool, create: Callable[[Path], None] | None
) -> Path:
    """The one walk behind both faces: ``create`` None resolves, else it makes directories."""
    todo = deque(_names(path))
    parts: list[str] = []
    links = 0
    while todo:
        name = todo.popleft()
        if name == "..":
            if parts:
                parts.pop()
            continue
        host = os.path.join(root, *parts, name)
        try:
            st = os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            if create is not None:
                os.mkdir(host, 0o755)
                os.chmod(host, 0o755)  # noqa: S103 - an image's directories are world-readable
                create(Path(host))
            parts.append(name)
            continue
        if stat.S_ISLNK(st.st_mode) and (todo or follow_last):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(
                    errno.ELOOP, "too many levels of symbolic links", "/" + "/".join(parts)
                )
            target = os.readlink(host)
            if target.startswith("/"):
                parts = []
            todo.extendleft(reversed(_names(target)))
            continue
        if create is not None and not stat.S_ISDIR(st.st_mode):
            shown = "/" + "/".join([*parts, name])
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", shown)
        parts.append(name)
    return Path(root, *parts)


def remove_for_replace(host: Path, *, allow_dir: bool) -> bool:
    """Clear ``host`` so that a new entry can be created there; True if something was there.

    A directory is removed (with everything in it) only when ``allow_dir``; otherwise it raises
    ``IsADirectoryError``. Symlinks are removed, never followed.
    """
    try:
        st = os.lstat(host)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        if not allow_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(host))
        shutil.rmtree(host)
    else:
        os.unlink(host)
    return True


def set_owner(host: Path, uid: int, gid: int) -> None:
    """``lchown``; a non-root build cannot give files away, and then keeps its own ids.

    Rootless builds record ownership at layer-writing time instead (the differ maps the
    build user to the ids the image needs), so failing here would only stop them building.
    """
    try:
        os.chown(host, uid, gid, follow_symlinks=False)
    except PermissionError:
        if os.geteuid() == 0:
            raise


# --------------------------------------------------------------------------------------------
# Recognising archives


def sniff_compression(head: bytes) -> str | None:
    """The compression whose magic number ``head`` starts with, or None (plain data)."""
    for name, magic in COMPRESSIONS:
        if head.startswith(magic):
            return name
    return None


@contextlib.contextmanager
def open_decompressed(path: Path, *, display: str | None = None) -> Iterator[IO[bytes]]:
    """``path`` opened for reading, decompressed according to its magic number.

    zstd needs the ``zstandard`` package; without it a zstd file raises ArchiveError rather
    than being silently copied as an opaque file.
    """
    with open(path, "rb") as raw:
        compression = sniff_compression(raw.read(8))
        raw.seek(0)
        if compression is None:
            yield raw
        elif compression == "gzip":
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield cast(IO[bytes], gz)
        elif compression == "bzip2":
            with bz2.BZ2File(raw, "rb") as bz:
                yield cast(IO[bytes], bz)
        elif compression == "xz":
            with lzma.LZMAFile(raw, "rb") as xz:
                yield cast(IO[bytes], xz)
        else:
            try:
                import zstandard
            except ImportError:
                raise ArchiveError(
                    display or str(path),
                    "zstd-compressed, and the zstandard package is not installed "
                    "(pip install zstandard)",
                ) from None
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            with reader:
                yield cast(IO[bytes], reader)


def _read_block(stream: IO[bytes]) -> bytes:
    data = b""
    while len(data) < tarfile.BLOCKSIZE:
        chunk = stream.read(tarfile.BLOCKSIZE - len(data))
        if not chunk:
            break
        data += chunk
    return data


# What a corrupt compressed stream can raise while being read.
_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    lzma.LZMAError,
    zlib.error,
)


def _zstd_errors() -> tuple[type[BaseException], ...]:
    try:
        import zstandard
    except ImportError:
        return ()
    return (zstandard.ZstdError,)


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged stream raises besides OSError (which needs a closer look)."""
    return (EOFError, lzma.LZMAError, zlib.error, *_zstd_errors())


def archive_compression(path: Path, *, display: str | None = None) -> str | None:
    """``"tar"``, ``"gzip"``, ``"bzip2"``, ``"xz"`` or ``"zstd"`` if ``path`` is a regular file
    holding a (compressed) tar archive, else None: BuildKit's ``isArchivePath``.

    The first 512 bytes after decompression must be a tar header with a valid checksum; an
    empty archive (only the end-of-archive zero blocks) is not an archive, as in Go's reader.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        with open(path, "rb") as raw:
            compression = sniff_compression(raw.read(8))
        with open_decompressed(path, display=display) as stream:
            block = _read_block(stream)
    except ArchiveError:
        raise
    except (*_DECOMPRESS_ERRORS, *_zstd_errors()):
        return None
    try:
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return None
    return compression or "tar"


# --------------------------------------------------------------------------------------------
# Extracting


def _member_path(name: str) -> str | None:
    """A member name as a clean relative path; None if it is absolute or climbs out."""
    if name.startswith("/"):
        return None
    cleaned = posixpath.normpath(name)
    if cleaned == ".." or cleaned.startswith("../"):
        return None
    return cleaned


def _inside(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory.rstrip("/") + "/")


def _check_symlink(member: tarfile.TarInfo, rel: str, container_dest: str) -> str | None:
    """Why the symlink ``member`` (at ``rel`` below the destination) may not be extracted."""
    target = member.linkname
    if not target:
        return "symlink with an empty target"
    if target.startswith("/"):
        seen = posixpath.normpath(target)
        if not _inside(seen, container_dest):
            return (
                f"symlink to {target!r} points outside the destination {container_dest} "
                "(absolute targets must stay inside the directory the archive is added to)"
            )
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if joined == ".." or joined.startswith("../"):
        return f"symlink to {target!r} points outside the destination {container_dest}"
    return None


class _Extractor:
    """One extraction: the destination (the root every member is resolved in) and the
    directories whose mode and times are set last."""

    def __init__(
        self,
        dest: Path,
        container_dest: str,
        owner: tuple[int, int] | None,
        display: str,
    ) -> None:
        self.dest = dest
        self.container_dest = container_dest
        self.owner = owner
        self.display = display
        self.dirs: list[tuple[Path, int, float]] = []

    def refuse(self, member: tarfile.TarInfo, reason: str) -> ArchiveError:
        return ArchiveError(self.display, f"refused: {reason}", member.name)

    def new_parent(self, host: Path) -> None:
        uid, gid = self.owner or (0, 0)
        set_owner(host, uid, gid)

    def extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = _member_path(member.name)
        if rel is None:
            raise self.refuse(member, "absolute path or path outside the destination")
        if member.ischr() or member.isblk() or member.isfifo():
            raise self.refuse(member, "device files and FIFOs are not extracted")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise self.refuse(member, f"unsupported entry type {member.type!r}")
        if rel == ".":
            if member.isdir():
                return  # the destination itself: Docker leaves it as it is
            raise self.refuse(member, "a non-directory entry for the destination itself")
        link_source: Path | None = None
        if member.issym():
            reason = _check_symlink(member, rel, self.container_dest)
            if reason is not None:
                raise self.refuse(member, reason)
        elif member.islnk():
            link_rel = _member_path(member.linkname)
            if link_rel is None or link_rel == ".":
                raise self.refuse(
                    member, f"hard link to {member.linkname!r} outside the destination"
                )
            link_source = resolve_in_root(self.dest, link_rel, follow_last=False)
            try:
                linked = os.lstat(link_source)
            except OSError:
                raise self.refuse(
                    member, f"hard link to {member.linkname!r}, which is not in the archive"
                ) from None
            if stat.S_ISDIR(linked.st_mode):
                raise self.refuse(member, f"hard link to the directory {member.linkname!r}")

        parent = make_dirs_in_root(self.dest, posixpath.dirname(rel), on_create=self.new_parent)
        target = parent / posixpath.basename(rel)
        try:
            existing = os.lstat(target)
        except FileNotFoundError:
            existing = None
        if existing is not None and not (stat.S_ISDIR(existing.st_mode) and member.isdir()):
            remove_for_replace(target, allow_dir=True)  # Docker: RemoveAll, then create

        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(target, 0o700)
            self.set_metadata(target, member)
            self.dirs.append((target, member.mode & 0o7777, float(member.mtime)))
            return
        if member.issym():
            os.symlink(member.linkname, target)
        elif link_source is not None:
            os.link(link_source, target, follow_symlinks=False)
            return  # one inode: its metadata came with the entry it was first extracted as
        else:
            self.write_file(tar, member, target)
        self.set_metadata(target, member)
        if not member.issym():
            os.chmod(target, member.mode & 0o7777)
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)

    def write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            raise self.refuse(member, "no data")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "wb") as out, source:
            shutil.copyfileobj(source, out, _CHUNK)

    def set_metadata(self, target: Path, member: tarfile.TarInfo) -> None:
        uid, gid = self.owner if self.owner is not None else (member.uid, member.gid)
        set_owner(target, uid, gid)
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                # Best effort, as Docker's BestEffortXattrs: a filesystem without xattrs (or
                # security.* as non-root) must not fail the build.
                with contextlib.suppress(OSError):
                    os.setxattr(
                        target,
                        key[len("SCHILY.xattr.") :],
                        value.encode("utf-8", "surrogateescape"),
                        follow_symlinks=False,
                    )

    def finish(self) -> None:
        # Deepest first: setting a directory's mode or times after its children were written,
        # so a read-only directory does not stop its own extraction and its mtime is the
        # archive's.
        for target, mode, mtime in reversed(self.dirs):
            os.chmod(target, mode)
            os.utime(target, (mtime, mtime), follow_symlinks=False)


class _TooLarge(Exception):
    """Raised from inside tarfile's reading when the archive passes a bound."""

    def __init__(self, reason: str, entry: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.entry = entry


class _BoundedStream:
    """The decompressed stream, refusing to yield more than ``limit`` bytes."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise _TooLarge(f"the archive expands past {self.limit} bytes (a decompression bomb?)")
        return data


_EXTENDED_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
    | {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads an extended header into memory in one piece, whatever size it claims:
    refuse the big ones before it does."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_TYPES and self.size > MAX_EXTENDED_HEADER:
            raise _TooLarge(
                f"extended header of {self.size} bytes (at most {MAX_EXTENDED_HEADER})",
                self.name,
            )
        proc = super()._proc_member  # type: ignore[misc]  # tarfile's hook, not in typeshed
        member: tarfile.TarInfo = proc(archive)
        return member


# Errors that say an entry does not fit what is already at its path (a file where the archive
# needs a directory, a symlink loop): the archive's problem, reported with the entry.
_PATH_ERRNOS = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP, errno.ENAMETOOLONG)


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    container_dest: str = "/",
    owner: tuple[int, int] | None = None,
    display: str | None = None,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    max_entries: int = MAX_ARCHIVE_ENTRIES,
) -> int:
    """Unpack the (possibly compressed) tar ``archive`` into the directory ``dest``.

    ``dest`` is the host path of the destination and the root every member is resolved in;
    ``container_dest`` is how the image names it (for the symlink rule). ``owner`` is
    ``--chown``: it replaces every entry's uid/gid. ``display`` names the archive in errors.
    ``max_bytes`` and ``max_entries`` bound what the archive may expand to.
    Returns the number of entries extracted. Raises ArchiveError naming the first refused
    entry, or the archive when it is corrupt; entries before it stay extracted (the caller
    discards the rootfs of a failed step).
    """
    shown = display or str(archive)
    extractor = _Extractor(dest, container_dest, owner, shown)
    count = 0
    current = "(start of archive)"
    with open_decompressed(archive, display=shown) as stream:
        try:
            bounded = cast(IO[bytes], _BoundedStream(stream, max_bytes))
            with tarfile.open(
                fileobj=bounded, mode="r|", errorlevel=2, tarinfo=_BoundedTarInfo
            ) as tar:
                for member in tar:
                    current = member.name
                    if count >= max_entries:
                        raise _TooLarge(f"the archive holds more than {max_entries} entries")
                    try:
                        extractor.extract(tar, member)
                    except OSError as err:
                        if err.errno not in _PATH_ERRNOS:
                            raise
                        where = f": {err.filename}" if err.filename else ""
                        raise ArchiveError(
                            shown, f"cannot extract: {err.strerror}{where}", member.name
                        ) from None
                    count += 1
        except ArchiveError:
            raise
        except _TooLarge as err:
            raise ArchiveError(shown, f"refused: {err.reason}", err.entry or current) from None
        except tarfile.TarError as err:
            raise ArchiveError(shown, f"corrupt archive after {current!r}: {err}") from None
        except _corrupt_errors() as err:
            raise ArchiveError(shown, f"corrupt archive after {current!r}: {err}") from None
        except OSError as err:
            if err.filename is None and err.errno is None:
                raise ArchiveError(shown, f"corrupt archive after {current!r}: {err}") from None
            raise
    extractor.finish()
    return count
