"""COPY and ADD: putting sources into a stage's rootfs with ``docker build``'s semantics.

The executor calls :func:`apply_copy` with the *expanded* instruction of a step, the working
rootfs of the stage and where the sources are read (:class:`CopySource`): the build context, or
the rootfs of an earlier stage or an image (``COPY --from``). Everything the instruction names
is matched and fetched first, and only then written, so a missing file or a failed download
leaves the rootfs untouched.

Sources (BuildKit's ``dispatchCopy`` and tonistiigi/fsutil's copy)
------------------------------------------------------------------

* Context sources are matched by the plan's own code: ``BuildContext.select`` over the
  ``ContextIndex`` the plan hashed (pass it as ``CopySource.index``; without it the context is
  hashed here with the same ``.dockerignore``). So wildcards, ``.dockerignore``, ``--exclude``
  and symlinks on the way resolve exactly as they did for the cache key, and every file is
  copied from the index's entry list and checked against the BLAKE3 digest the key was made
  from: a file edited after planning stops the build (:class:`ContextChangedError`) instead of
  putting content under a key that does not name it.
* Stage and image sources have no index (their key is the stage's); they are matched on disk
  with the same rules: ``..`` cannot leave the root, symlinks resolve inside it, wildcards are Go's
  ``filepath.Match`` (``*`` never crosses ``/``), a matched directory is taken whole.
* A literal source that matches nothing is a :class:`~memobuild.plan.sources.SourceNotFoundError`
  at the instruction's line; a wildcard that matches nothing copies nothing (BuildKit).
* A directory source copies its *contents*. A symlink named by a source is followed; symlinks
  inside a copied directory are copied as symlinks.
* Heredoc sources (``COPY <<EOF /dest``) are files named by the heredoc, 0644.
* ``ADD <http(s) url>`` downloads through the :class:`~memobuild.build.fetch.Fetcher` (verified
  against ``--checksum``); the file is 0600 as in docker, named after the URL, and unpacked only
  with ``--unpack``. ``ADD`` of a local tar archive (gzip, bzip2, xz, zstd or none, recognised by
  content) extracts it into the destination (``--unpack=false`` copies it instead); see
  :mod:`memobuild.build.archive` for what extraction refuses.
* ``--parents`` keeps each match's path below the destination, from the context root or from
  the ``/./`` pivot in the source (``COPY --parents ./src/./app/main.go /dst/`` writes
  ``/dst/app/main.go``).

Destination
-----------

* ``dest`` is relative to WORKDIR; ``.``, ``""`` and anything ending in ``/`` or ``/.`` name a
  directory (created if missing, with its parents: 0755, owned by ``--chown`` or root).
* A file source whose destination is an existing directory goes inside it under its own name;
  otherwise the destination *is* the file. A directory's contents are merged into the
  destination directory, whose own mode and owner are left as they were.
* More than one thing to copy (several sources, or a wildcard matching several) needs a
  directory: docker documents that the destination must end in ``/``. BuildKit does not check,
  and then silently keeps only the last file; here the copy goes into the destination when it
  is an existing directory, or when every source is a directory (BuildKit merges those), and is
  an error otherwise, with docker's message.
* The destination path is resolved in the rootfs as if it were ``/``: a symlink in the rootfs
  pointing at ``/etc`` leads to ``<rootfs>/etc``, never the host's. Inside a copied tree nothing
  is followed: an existing symlink where the tree needs a directory is an error (fsutil's
  "cannot copy to non-directory"); an existing file, symlink or device where a file goes is
  removed and replaced, never written through. Nothing is ever written outside the rootfs.

Metadata
--------

* From the context (DESIGN.md, "Cache keys"): files are 0644, or 0755 when their executable bit
  is set, directories 0755, uid/gid 0, whatever the checkout's umask made of them, so that a key
  always names one layer content. mtimes are kept, as docker keeps them.
* From a stage or image: mode, uid/gid, mtime, xattrs and hard links as they are there.
* ``--chown`` (already resolved to numbers by ``build/users.resolve_chown``) owns everything the
  instruction writes, the directories it creates included. ``--chmod`` (octal up to 07777, or
  symbolic like ``u+x,g-w``) sets the mode of every file and directory copied (BuildKit applies
  it to directories too), not of the parent directories it had to create.
* ``--link`` has no effect on the resulting filesystem. In BuildKit it makes the copy a layer
  of its own that is merged onto the previous ones, so the layer can be reused when the base
  changes; MemoBuild's layer for a step is already just that step's diff, and its cache key
  already says which inputs it depends on. (BuildKit's ``--link`` also makes a destination
  below a rootfs symlink into real directories; MemoBuild follows the symlink inside the rootfs,
  as docker does without ``--link``.)
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import posixpath
import re
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from memobuild import _core
from memobuild.build.archive import (
    ArchiveError,
    archive_compression,
    container_path,
    extract_archive,
    make_dirs_in_root,
    remove_for_replace,
    resolve_in_root,
    set_owner,
)
from memobuild.build.fetch import Fetcher
from memobuild.build.layers import LayerBlob, LayerEntryRow, write_entries_layer
from memobuild.dockerfile.instructions import AddInstruction, CopyInstruction
from memobuild.errors import (
    DockerfileParseError,
    LayerFormatError,
    MemoBuildError,
    PatternError,
    StorageError,
    from_os_error,
)
from memobuild.ignore import DockerIgnore
from memobuild.plan.sources import BuildContext, SourceNotFoundError, is_remote_source

__all__ = [
    "ContextChangedError",
    "CopyFailedError",
    "CopySource",
    "DirectCopy",
    "LayerLookup",
    "apply_copy",
    "plan_direct_copy",
]

_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Public types


@dataclass(frozen=True)
class CopySource:
    """Where a COPY/ADD reads its sources.

    ``root`` is the build context directory (``is_context``: ``.dockerignore`` applies and
    modes are normalised) or the rootfs directory of a stage or image (``COPY --from``: modes,
    owners and times are kept). ``index`` is the plan's hashed context (``Plan.context_index``)
    for a context source: pass it, so that the copy selects from the very walk the cache key
    was computed from and verifies every file against it.
    """

    root: Path
    is_context: bool
    index: _core.ContextIndex | None = field(default=None, compare=False, repr=False)


class CopyFailedError(DockerfileParseError):
    """A COPY/ADD that cannot be carried out against the filesystems it names (a file where a
    directory is needed, several files for one file destination, a git source).

    A Dockerfile error (file:line) because the line is what the user changes.
    """


class ContextChangedError(CopyFailedError):
    """A context file is not what the plan hashed: it changed while the build ran.

    Retryable: planning again picks up the new content under a new key.
    """

    retryable = True


# --------------------------------------------------------------------------------------------
# --chmod


_SYMBOLIC_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=](?:[ugo]|[rwxXst]*))+)")
_SYMBOLIC_OP = re.compile(r"([-+=])([ugo]|[rwxXst]*)")
_WHO_MASKS = {"u": 0o4700, "g": 0o2070, "o": 0o1007, "a": 0o7777}


@dataclass(frozen=True)
class _ModeChange:
    """A parsed ``--chmod``: an octal mode, or symbolic clauses applied like chmod(1) without a
    umask (BuildKit's dchapes-mode)."""

    octal: int | None
    clauses: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    @staticmethod
    def parse(text: str) -> _ModeChange | None:
        if text == "":
            return None
        if re.fullmatch(r"[0-7]+", text):
            value = int(text, 8)
            if value > 0o7777:
                raise ValueError(f"invalid chmod parameter: {text!r}: it is above 07777")
            return _ModeChange(value)
        clauses = []
        for part in text.split(","):
            match = _SYMBOLIC_CLAUSE.fullmatch(part)
            if match is None:
                raise ValueError(
                    f"invalid chmod parameter: {text!r}: expected an octal mode up to 07777 or "
                    "a symbolic mode like u+x,g-w"
                )
            ops = tuple((op, perms) for op, perms in _SYMBOLIC_OP.findall(match.group(2)))
            clauses.append((match.group(1), ops))
        return _ModeChange(None, tuple(clauses))

    def apply(self, mode: int, *, is_dir: bool) -> int:
        if self.octal is not None:
            return self.octal
        for who, ops in self.clauses:
            mask = 0
            for letter in who or "a":
                mask |= _WHO_MASKS[letter]
            for op, perms in ops:
                bits = _permission_bits(perms, mode, is_dir=is_dir) & mask
                if op == "+":
                    mode |= bits
                elif op == "-":
                    mode &= ~bits
                else:
                    cleared = mask & (0o777 if is_dir else 0o7777)
                    mode = (mode & ~cleared) | bits
        return mode & 0o7777


def _permission_bits(perms: str, mode: int, *, is_dir: bool) -> int:
    """The bits ``perms`` stands for, at every who position (the clause's mask picks)."""
    if perms in ("u", "g", "o"):
        shift = {"u": 6, "g": 3, "o": 0}[perms]
        return ((mode >> shift) & 0o7) * 0o111
    bits = 0
    for letter in perms:
        if letter == "r":
            bits |= 0o444
        elif letter == "w":
            bits |= 0o222
        elif letter == "x" or (letter == "X" and (is_dir or mode & 0o111)):
            bits |= 0o111
        elif letter == "s":
            bits |= 0o6000
        elif letter == "t":
            bits |= 0o1000
    return bits


# --------------------------------------------------------------------------------------------
# What gets copied


@dataclass(frozen=True)
class _Node:
    """One thing to put into the rootfs, with the metadata it gets before --chown/--chmod.

    ``host`` is where its content is read (None for a heredoc's ``data``). ``mtime_ns`` None
    means the source's own mtime at copy time (or now, for data). ``digest`` is the BLAKE3 a
    context file must have; ``key`` its path in the context listing. ``inode`` identifies a
    multiply-linked stage file, so its links stay links.
    """

    kind: str  # file, dir, symlink, fifo, socket, chardev, blockdev
    host: Path | None
    mode: int
    uid: int = 0
    gid: int = 0
    mtime_ns: int | None = None
    link: str | None = None
    digest: str | None = None
    key: bytes = b""
    rdev: int = 0
    inode: tuple[int, int] | None = None
    xattrs: bool = False
    data: bytes | None = None
    context: bool = False


class _Tree(Protocol):
    """A filesystem sources are matched in: the build context or a stage's rootfs."""

    def select(self, source: str, exclude: Sequence[str]) -> list[tuple[str, _Node]]:
        """The matches of ``source``: (path as matched, node it resolves to)."""
        ...

    def lookup(self, path: str) -> _Node:
        """The node at ``path`` (root-relative), symlinks followed."""
        ...

    def below(self, node: _Node, exclude: Sequence[str]) -> Iterator[tuple[str, _Node]]:
        """What a directory holds, parents before children, minus ``--exclude``."""
        ...

    def child(self, node: _Node, rel: str) -> _Node:
        """The entry ``rel`` below the directory ``node`` (for parents of re-included files)."""
        ...


def _mode_of(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "chardev"
    return "blockdev"


@dataclass(frozen=True)
class _Where:
    """What errors need to point at the Dockerfile line."""

    keyword: str
    file: str | None
    line: int | None

    def fail(self, message: str) -> CopyFailedError:
        return CopyFailedError(message, file=self.file, line=self.line)

    def changed(self, path: str, detail: str) -> ContextChangedError:
        return ContextChangedError(
            f"{self.keyword}: {path} in the build context changed after the build was planned "
            f"({detail}); run the build again",
            file=self.file,
            line=self.line,
        )


# -- the build context: the plan's index ------------------------------------------------------

_LISTING_MAGIC = b"memobuild.listing.v1\0"
_LISTING_KINDS = {
    ord("f"): "file",
    ord("d"): "dir",
    ord("l"): "symlink",
    ord("p"): "fifo",
    ord("s"): "socket",
    ord("c"): "chardev",
    ord("b"): "blockdev",
}


@dataclass(frozen=True)
class _Entry:
    kind: str
    executable: bool
    digest: bytes
    link: bytes | None


def _read_listing(data: bytes) -> tuple[list[bytes], list[_Entry]]:
    """The entries of ``ContextIndex.listing()`` (see rust/select.rs), sorted by path bytes."""
    if not data.startswith(_LISTING_MAGIC):
        raise ValueError("not a memobuild.listing.v1 context listing")
    pos = len(_LISTING_MAGIC) + 32
    (count,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    paths: list[bytes] = []
    entries: list[_Entry] = []
    for _ in range(count):
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 4
        path = data[pos : pos + length]
        pos += length
        kind = _LISTING_KINDS[data[pos]]
        executable = data[pos + 1] == 1
        digest = data[pos + 2 : pos + 34]
        pos += 34 + 8  # digest, size
        link = None
        if data[pos] == 1:
            (length,) = struct.unpack_from("<I", data, pos + 1)
            link = data[pos + 5 : pos + 5 + length]
            pos += 5 + length
        else:
            pos += 1
        paths.append(path)
        entries.append(_Entry(kind, executable, digest, link))
    return paths, entries


class _PlannedContext(BuildContext):
    """The plan's ``BuildContext`` around an index it already hashed: COPY selects from the
    very walk the cache key was computed from, with the plan's own messages."""

    def __init__(
        self, root: Path, index: _core.ContextIndex, dockerignore: tuple[str, ...]
    ) -> None:
        super().__init__(root, dockerignore=dockerignore, stat_cache=False)
        self._planned = index

    @property
    def index(self) -> _core.ContextIndex:
        return self._planned


class _ContextTree:
    """The build context, as the index lists it; content is read from disk and verified."""

    def __init__(self, context: BuildContext, where: _Where) -> None:
        self.context = context
        self.root = context.root
        self.where = where
        self.paths, self.entries = _read_listing(context.index.listing())
        self.positions = {path: i for i, path in enumerate(self.paths)}

    def select(self, source: str, exclude: Sequence[str]) -> list[tuple[str, _Node]]:
        selection = self.context.select(
            source,
            exclude=tuple(exclude),
            what=self.where.keyword,
            file=self.where.file,
            line=self.where.line,
        )
        return [(path, self.lookup(path)) for path in selection.matches]

    def lookup(self, path: str) -> _Node:
        return self.node(self.resolve(os.fsencode(path)))

    def resolve(self, path: bytes) -> bytes:
        """The listing path ``path`` leads to, symlinks followed inside the context, as
        rust/select.rs resolves it (so a match names the entry the key covered)."""
        todo = [c for c in path.split(b"/") if c and c != b"."]
        todo.reverse()
        current: list[bytes] = []
        links = 0
        while todo:
            name = todo.pop()
            if name == b"..":
                if current:
                    current.pop()
                continue
            candidate = b"/".join([*current, name])
            position = self.positions.get(candidate)
            if position is None:
                raise self.where.changed(os.fsdecode(candidate), "it is no longer listed")
            entry = self.entries[position]
            if entry.kind == "symlink":
                links += 1
                if links > 255:
                    raise self.where.fail(f"{os.fsdecode(path)}: too many levels of symlinks")
                target = entry.link or b""
                if target.startswith(b"/"):
                    current = []
                parts = [c for c in target.split(b"/") if c and c != b"."]
                todo.extend(reversed(parts))
                continue
            current.append(name)
        return b"/".join(current)

    def node(self, key: bytes) -> _Node:
        if key == b"":
            return _Node("dir", self.root, 0o755, key=b"", context=True)
        entry = self.entries[self.positions[key]]
        host = self.root / os.fsdecode(key)
        shown = os.fsdecode(key)
        if entry.kind in ("chardev", "blockdev"):
            raise self.where.fail(
                f"{self.where.keyword}: {shown} is a device file; a build context cannot "
                "provide devices (their content is not part of any cache key)"
            )
        if entry.kind == "file":
            return _Node(
                "file",
                host,
                0o755 if entry.executable else 0o644,
                digest="blake3:" + entry.digest.hex(),
                key=key,
                context=True,
            )
        if entry.kind == "symlink":
            return _Node(
                "symlink", host, 0o777, link=os.fsdecode(entry.link or b""), key=key, context=True
            )
        mode = 0o755 if entry.kind == "dir" else 0o644
        return _Node(entry.kind, host, mode, key=key, context=True)

    def below(self, node: _Node, exclude: Sequence[str]) -> Iterator[tuple[str, _Node]]:
        matcher = DockerIgnore(exclude) if exclude else None
        prefix = node.key + b"/" if node.key else b""
        start = bisect.bisect_left(self.paths, prefix) if prefix else 0
        for position in range(start, len(self.paths)):
            path = self.paths[position]
            if not path.startswith(prefix):
                break
            rel = path[len(prefix) :]
            if matcher is not None and matcher.matches(rel):
                continue
            yield os.fsdecode(rel), self.node(path)

    def child(self, node: _Node, rel: str) -> _Node:
        key = node.key + b"/" + os.fsencode(rel) if node.key else os.fsencode(rel)
        if key not in self.positions:
            raise self.where.changed(os.fsdecode(key), "it is no longer listed")
        return self.node(key)


# -- a stage's or image's rootfs: matched on disk ----------------------------------------------


def _clean_rel(path: str) -> str:
    """Go's ``filepath.Join("/", p)`` without the leading ``/``: ``""`` is the root."""
    return posixpath.normpath("/" + path).lstrip("/")


def _contains_wildcards(name: str) -> bool:
    i = 0
    while i < len(name):
        if name[i] == "\\":
            i += 2
            continue
        if name[i] in "*?[":
            return True
        i += 1
    return False


class _BadPatternError(ValueError):
    """Go's ``filepath.ErrBadPattern``."""


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    star = False
    while pattern.startswith("*"):
        pattern = pattern[1:]
        star = True
    in_range = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif c == "[":
            in_range = True
        elif c == "]":
            in_range = False
        elif c == "*" and not in_range:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def _get_escape(chunk: str) -> tuple[str, str]:
    if chunk == "" or chunk[0] in "-]":
        raise _BadPatternError
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if chunk == "":
            raise _BadPatternError
    rest = chunk[1:]
    if rest == "":
        raise _BadPatternError
    return chunk[0], rest


def _match_chunk(chunk: str, s: str) -> str | None:
    """Go's ``matchChunk``: what is left of ``s`` after ``chunk``, or None; checks syntax to the
    end of the chunk even after a mismatch."""
    failed = False
    while chunk:
        if not failed and s == "":
            failed = True
        c = chunk[0]
        if c == "[":
            r = ""
            if not failed:
                r, s = s[0], s[1:]
            chunk = chunk[1:]
            negated = chunk.startswith("^")
            if negated:
                chunk = chunk[1:]
            matched = False
            ranges = 0
            while True:
                if chunk.startswith("]") and ranges > 0:
                    chunk = chunk[1:]
                    break
                lo, chunk = _get_escape(chunk)
                hi = lo
                if chunk[0] == "-":
                    hi, chunk = _get_escape(chunk[1:])
                if not failed and lo <= r <= hi:
                    matched = True
                ranges += 1
            if matched == negated:
                failed = True
        elif c == "?":
            if not failed:
                if s[0] == "/":
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
        else:
            if c == "\\":
                chunk = chunk[1:]
                if chunk == "":
                    raise _BadPatternError
            if not failed:
                if chunk[0] != s[0]:
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
    return None if failed else s


def _go_match(pattern: str, name: str) -> bool:
    """Go's ``path/filepath.Match`` on Unix (the Python twin of ``go_match`` in
    rust/select.rs, for sources that live in a stage rather than the context)."""
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and chunk == "":
            return "/" not in name
        rest = _match_chunk(chunk, name)
        if rest is not None and (rest == "" or pattern):
            name = rest
            continue
        if star:
            found = False
            i = 0
            while i < len(name) and name[i] != "/":
                rest = _match_chunk(chunk, name[i + 1 :])
                if rest is not None:
                    if not pattern and rest:
                        i += 1
                        continue
                    name = rest
                    found = True
                    break
                i += 1
            if found:
                continue
        while pattern:
            _, chunk, pattern = _scan_chunk(pattern)
            _match_chunk(chunk, "")
        return False
    return name == ""


class _RootfsTree:
    """A stage's or image's rootfs: sources resolved on disk, metadata kept."""

    def __init__(self, root: Path, where: _Where, label: str) -> None:
        self.root = root
        self.where = where
        self.label = label

    def not_found(self, source: str, path: str) -> SourceNotFoundError:
        return SourceNotFoundError(
            f"{self.where.keyword} source {source!r}: {path or '.'} not found in {self.label}",
            file=self.where.file,
            line=self.where.line,
        )

    def node_at(self, host: Path, st: os.stat_result) -> _Node:
        kind = _mode_of(st)
        return _Node(
            kind,
            host,
            stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            link=os.readlink(host) if kind == "symlink" else None,
            rdev=st.st_rdev,
            inode=(st.st_dev, st.st_ino) if kind == "file" and st.st_nlink > 1 else None,
            xattrs=True,
        )

    def resolve(self, source: str, path: str) -> _Node:
        try:
            host = resolve_in_root(self.root, path, follow_last=True)
            st = os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            raise self.not_found(source, path) from None
        except OSError as err:
            raise self.where.fail(
                f"{self.where.keyword} source {source!r}: {err.filename}: {err.strerror}"
            ) from None
        return self.node_at(host, st)

    def select(self, source: str, exclude: Sequence[str]) -> list[tuple[str, _Node]]:
        cleaned = _clean_rel(source)
        parts = cleaned.split("/") if cleaned else []
        wild = next((i for i, part in enumerate(parts) if _contains_wildcards(part)), None)
        if wild is None:
            matches = [(cleaned, self.resolve(source, cleaned))]
        else:
            matches = self.wildcard_matches(source, "/".join(parts[:wild]), "/".join(parts[wild:]))
        if not exclude:
            return matches
        matcher = self.exclude_matcher(exclude)
        return [
            (path, node)
            for path, node in matches
            if node.kind != "file" or not matcher.matches(posixpath.basename(path))
        ]

    def exclude_matcher(self, exclude: Sequence[str]) -> DockerIgnore:
        try:
            return DockerIgnore(exclude)
        except PatternError as err:
            raise self.where.fail(
                f"{self.where.keyword}: invalid --exclude pattern {err.pattern!r}: {err}"
            ) from None

    def wildcard_matches(self, source: str, literal: str, pattern: str) -> list[tuple[str, _Node]]:
        try:
            _go_match(pattern, "")
        except _BadPatternError:
            raise self.where.fail(
                f"{self.where.keyword}: invalid source pattern {source!r}: syntax error in pattern"
            ) from None
        base = resolve_in_root(self.root, literal, follow_last=True)
        try:
            if not stat.S_ISDIR(os.lstat(base).st_mode):
                return []
        except (FileNotFoundError, NotADirectoryError):
            raise self.not_found(source, literal) from None
        # Without a character class a '/' in a name can only match a '/' in the pattern, so
        # nothing deeper than the pattern can match and the walk stops there.
        depth = None if "[" in pattern else pattern.count("/") + 1
        found: list[tuple[str, _Node]] = []

        def walk(directory: Path, prefix: str, level: int) -> None:
            for name in sorted(os.listdir(directory), key=os.fsencode):
                rel = f"{prefix}{name}"
                host = directory / name
                st = os.lstat(host)
                if _go_match(pattern, rel):
                    shown = f"{literal}/{rel}" if literal else rel
                    found.append((shown, self.resolve(source, shown)))
                    continue  # a matched directory is taken whole (filepath.SkipDir)
                if stat.S_ISDIR(st.st_mode) and (depth is None or level + 1 < depth):
                    walk(host, rel + "/", level + 1)

        walk(base, "", 0)
        return found

    def lookup(self, path: str) -> _Node:
        return self.resolve(path, _clean_rel(path))

    def below(self, node: _Node, exclude: Sequence[str]) -> Iterator[tuple[str, _Node]]:
        matcher = self.exclude_matcher(exclude) if exclude else None
        assert node.host is not None  # noqa: S101 - a rootfs node always has a host path

        def walk(directory: Path, prefix: str) -> Iterator[tuple[str, _Node]]:
            for name in sorted(os.listdir(directory), key=os.fsencode):
                rel = f"{prefix}{name}"
                host = directory / name
                st = os.lstat(host)
                excluded = matcher is not None and matcher.matches(rel)
                if not excluded:
                    yield rel, self.node_at(host, st)
                if stat.S_ISDIR(st.st_mode) and (
                    not excluded or (matcher is not None and matcher.has_exceptions)
                ):
                    yield from walk(host, rel + "/")

        yield from walk(node.host, "")

    def child(self, node: _Node, rel: str) -> _Node:
        assert node.host is not None  # noqa: S101 - a rootfs node always has a host path
        host = node.host / rel
        return self.node_at(host, os.lstat(host))


# --------------------------------------------------------------------------------------------
# Writing


class _Writer:
    """Puts nodes into the rootfs: the owner and mode rules, and directory metadata set last."""

    def __init__(
        self,
        rootfs: Path,
        where: _Where,
        *,
        chown: tuple[int, int] | None,
        chmod: _ModeChange | None,
    ) -> None:
        self.rootfs = rootfs
        self.where = where
        self.chown = chown
        self.chmod = chmod
        self.links: dict[tuple[int, int], Path] = {}
        self.dir_metadata: list[tuple[Path, int, int | None]] = []

    def shown(self, host: Path) -> str:
        return container_path(self.rootfs, host)

    def owner(self, node: _Node) -> tuple[int, int]:
        return self.chown if self.chown is not None else (node.uid, node.gid)

    def mode(self, node: _Node) -> int:
        if self.chmod is None:
            return node.mode
        return self.chmod.apply(node.mode, is_dir=node.kind == "dir")

    def new_dir(self, host: Path) -> None:
        uid, gid = self.chown or (0, 0)
        set_owner(host, uid, gid)

    def make_dirs(self, path: str) -> Path:
        """``mkdir -p`` in the rootfs (BuildKit's CreateDestPath): 0755, --chown or root."""
        try:
            return make_dirs_in_root(self.rootfs, path, on_create=self.new_dir)
        except NotADirectoryError as err:
            raise self.where.fail(
                f"{self.where.keyword}: cannot create directory {path}: {err.filename} is not "
                "a directory"
            ) from None

    # -- directories --------------------------------------------------------------------

    def put_dir(self, node: _Node, host: Path, *, overwrite: bool) -> None:
        """Make ``host`` a directory; give it ``node``'s metadata when it is new or when
        ``overwrite`` (fsutil overwrites a nested directory's, never the destination's)."""
        try:
            st: os.stat_result | None = os.lstat(host)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise self.where.fail(
                f"{self.where.keyword}: cannot copy to non-directory: {self.shown(host)}"
            )
        if st is None:
            os.mkdir(host, 0o700)
        if st is None or overwrite:
            set_owner(host, *self.owner(node))
            self.copy_xattrs(node, host)
            mtime = node.mtime_ns
            if mtime is None and node.host is not None:
                mtime = self.source_stat(node).st_mtime_ns
            self.dir_metadata.append((host, self.mode(node), mtime))

    def copy_dir(self, tree: _Tree, node: _Node, target: Path, exclude: Sequence[str]) -> None:
        """Copy what the directory ``node`` holds into the existing directory ``target``."""
        placed = {""}
        for rel, child in tree.below(node, exclude):
            parent = posixpath.dirname(rel)
            if parent not in placed:
                self.put_parents(tree, node, target, parent, placed)
            host = target / rel
            if child.kind == "dir":
                self.put_dir(child, host, overwrite=True)
                placed.add(rel)
            else:
                self.put_leaf(child, host)

    def put_parents(
        self, tree: _Tree, node: _Node, target: Path, parent: str, placed: set[str]
    ) -> None:
        """Directories an --exclude left out but a re-included entry needs (fsutil creates
        them from the source's directories)."""
        parts = parent.split("/")
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            if rel in placed:
                continue
            self.put_dir(tree.child(node, rel), target / rel, overwrite=False)
            placed.add(rel)

    # -- everything else ----------------------------------------------------------------

    def put_leaf(self, node: _Node, host: Path) -> None:
        """Replace whatever non-directory is at ``host`` with ``node``."""
        if node.kind == "socket":
            return  # a tar layer cannot hold a socket, so no image has one
        try:
            remove_for_replace(host, allow_dir=False)
        except IsADirectoryError:
            raise self.where.fail(
                f"{self.where.keyword}: cannot replace directory {self.shown(host)} with a file"
            ) from None
        if node.kind == "file":
            linked = self.links.get(node.inode) if node.inode is not None else None
            if linked is not None:
                os.link(linked, host, follow_symlinks=False)
                return
            source_mtime = self.write_file(node, host)
            if node.inode is not None:
                self.links[node.inode] = host
        elif node.kind == "symlink":
            os.symlink(node.link or "", host)
            source_mtime = None
        elif node.kind == "fifo":
            os.mkfifo(host, 0o600)
            source_mtime = None
        else:
            kind = stat.S_IFCHR if node.kind == "chardev" else stat.S_IFBLK
            os.mknod(host, 0o600 | kind, node.rdev)
            source_mtime = None
        set_owner(host, *self.owner(node))
        if node.kind != "symlink":
            os.chmod(host, self.mode(node))
        self.copy_xattrs(node, host)
        mtime = node.mtime_ns
        if mtime is None and node.host is not None:
            mtime = source_mtime if source_mtime is not None else self.source_stat(node).st_mtime_ns
        if mtime is not None:
            os.utime(host, ns=(mtime, mtime), follow_symlinks=False)

    def source_stat(self, node: _Node) -> os.stat_result:
        assert node.host is not None  # noqa: S101 - only called for nodes read from disk
        try:
            return os.lstat(node.host)
        except OSError as err:
            if node.context and _gone(err):
                raise self.where.changed(os.fsdecode(node.key), err.strerror or "gone") from None
            raise

    def write_file(self, node: _Node, host: Path) -> int | None:
        """Write ``node``'s content to the new file ``host``; returns the source's mtime."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        if node.data is not None:
            fd = os.open(host, flags, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(node.data)
            return None
        assert node.host is not None  # noqa: S101 - a file node without data has a source
        try:
            source = os.open(node.host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            if node.context and _gone(err):
                raise self.where.changed(os.fsdecode(node.key), err.strerror or "gone") from None
            raise
        with contextlib.closing(_Fd(source)):
            st = os.fstat(source)
            if not stat.S_ISREG(st.st_mode):
                if node.context:
                    raise self.where.changed(os.fsdecode(node.key), "it is no longer a file")
                raise self.where.fail(f"{node.host}: no longer a regular file")
            target = os.open(host, flags, 0o600)
            with contextlib.closing(_Fd(target)):
                if node.digest is not None:
                    found = _copy_hashing(source, target)
                    if found != node.digest:
                        os.unlink(host)
                        raise self.where.changed(
                            os.fsdecode(node.key), f"planned {node.digest}, found {found}"
                        )
                else:
                    _copy_fd(source, target, st.st_size)
            return st.st_mtime_ns

    def copy_xattrs(self, node: _Node, host: Path) -> None:
        """A stage file's xattrs (file capabilities, SELinux labels), best effort like
        BuildKit's handler: a filesystem without them must not fail the copy."""
        if not node.xattrs or node.host is None:
            return
        try:
            names = os.listxattr(node.host, follow_symlinks=False)
        except OSError:
            return
        for name in names:
            with contextlib.suppress(OSError):
                value = os.getxattr(node.host, name, follow_symlinks=False)
                os.setxattr(host, name, value, follow_symlinks=False)

    def finish(self) -> None:
        """Directory modes and times last, deepest first: writing into a directory changes its
        mtime, and a read-only directory must not stop its own copy."""
        for host, mode, mtime in reversed(self.dir_metadata):
            os.chmod(host, mode)
            if mtime is not None:
                os.utime(host, ns=(mtime, mtime), follow_symlinks=False)


def _gone(err: OSError) -> bool:
    """Whether opening a path the plan listed failed because the context changed under it
    (ELOOP: the file was replaced by a symlink, which O_NOFOLLOW refuses to open)."""
    return err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


class _Fd:
    """An OS file descriptor for ``contextlib.closing``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


def _copy_fd(source: int, target: int, size: int) -> None:
    """Copy ``source`` to ``target`` in the kernel where it can (sendfile), else by reading."""
    offset = 0
    try:
        while offset < size:
            sent = os.sendfile(target, source, offset, min(size - offset, 1 << 30))
            if sent == 0:
                break
            offset += sent
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    os.lseek(source, offset, os.SEEK_SET)
    while chunk := os.read(source, _CHUNK):
        _write_all(target, chunk)


def _copy_hashing(source: int, target: int) -> str:
    """Copy ``source`` to ``target``; the BLAKE3 of what was copied, ``blake3:<hex>``."""
    hasher = _core.Hasher("blake3")
    while chunk := os.read(source, _CHUNK):
        hasher.update(chunk)
        _write_all(target, chunk)
    return hasher.digest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# --------------------------------------------------------------------------------------------
# The instruction


@dataclass(frozen=True)
class _Placement:
    """One thing a source contributes: a match, a download or a heredoc.

    ``name`` is its file name inside a directory destination; ``below`` (``--parents``) the
    path it keeps below the destination, ``path`` the path it was matched at; ``archive`` that
    ADD unpacks it.
    """

    node: _Node
    name: str
    shown: str
    tree: _Tree | None = None
    path: str = ""
    below: str | None = None
    archive: bool = False


def _destination(dest: str, workdir: str) -> tuple[str, bool]:
    """BuildKit's pathRelativeToWorkingDir + cleanPath: (absolute clean path, names a dir)."""
    if dest in ("", "."):
        dest = "./"
    is_dir = dest.endswith(("/", "/."))
    joined = dest if dest.startswith("/") else posixpath.join("/", workdir or "/", dest)
    cleaned = "/" + posixpath.normpath(joined).lstrip("/")
    return cleaned, is_dir or cleaned == "/"


def _is_git_source(source: str) -> bool:
    """A git repository rather than a file (BuildKit's ParseGitRef, for the forms it takes)."""
    if source.startswith(("git@", "git://", "ssh://")):
        return True
    path = source.split("#", 1)[0].split("?", 1)[0]
    return path.startswith(("http://", "https://")) and path.rstrip("/").endswith(".git")


def apply_copy(
    rootfs: str | os.PathLike[str],
    instruction: CopyInstruction | AddInstruction,
    source: CopySource,
    *,
    workdir: str,
    dockerignore: Sequence[str] = (),
    chown: tuple[int, int] | None = None,
    fetcher: Fetcher | None = None,
    file: str | None = None,
) -> None:
    """Carry out the expanded COPY/ADD ``instruction`` in the stage rootfs ``rootfs``.

    ``source`` says where local sources are read; ``workdir`` is the step's WORKDIR (the
    destination is relative to it). ``dockerignore`` is used only when ``source`` has no
    ``index`` (the context is then hashed here). ``chown`` is ``--chown`` already resolved to
    (uid, gid). ``fetcher`` downloads ADD URLs (default: a private one, removed afterwards).
    ``file`` names the Dockerfile in error messages.

    Errors, all at the instruction's line where it helps: SourceNotFoundError (a literal
    source matches nothing), CopyFailedError (the filesystem cannot take the copy, an unsafe or
    corrupt archive with the ArchiveError as its cause, a git source, a bad --chmod or
    pattern), ContextChangedError, NetworkError and CASIntegrityError (ADD of a URL),
    StorageError (the disk failed: full, read-only, I/O error). See the module docstring for the
    rules.
    """
    root = Path(rootfs)
    where = _Where(instruction.keyword, file, instruction.line)
    try:
        chmod = _ModeChange.parse(instruction.chmod)
    except ValueError as err:
        raise where.fail(str(err)) from None
    dest, dest_is_dir = _destination(instruction.dest, workdir)
    parents = isinstance(instruction, CopyInstruction) and instruction.parents
    with contextlib.ExitStack() as stack:
        remote = isinstance(instruction, AddInstruction) and any(
            is_remote_source(s) for s in instruction.sources
        )
        if fetcher is None and remote:
            fetcher = stack.enter_context(Fetcher())
        try:
            placements = _gather(instruction, source, where, dockerignore, fetcher, parents)
            if len(placements) > 1 and not dest_is_dir and not parents:
                _check_several(root, dest, placements, where)
            writer = _Writer(root, where, chown=chown, chmod=chmod)
            for placement in placements:
                _place(writer, placement, dest, dest_is_dir, instruction, chown)
            writer.finish()
        except MemoBuildError:
            raise
        except OSError as err:
            raise _os_error(err, root, where) from err


# Failures of the disk rather than of the instruction.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def _os_error(err: OSError, root: Path, where: _Where) -> MemoBuildError:
    """An OSError as one line naming the path the way the image names it."""
    name = os.fsdecode(err.filename) if err.filename is not None else ""
    if name.startswith(str(root) + os.sep):
        name = container_path(root, Path(name))
    reason = err.strerror or str(err)
    message = f"{where.keyword}: {name}: {reason}" if name else f"{where.keyword}: {reason}"
    if err.errno in _STORAGE_ERRNOS:
        return StorageError(message)
    return where.fail(message)


def _gather(
    instruction: CopyInstruction | AddInstruction,
    source: CopySource,
    where: _Where,
    dockerignore: Sequence[str],
    fetcher: Fetcher | None,
    parents: bool,
) -> list[_Placement]:
    """Everything the instruction copies, in docker's order (sources, then heredocs), matched
    and downloaded before anything is written."""
    is_add = isinstance(instruction, AddInstruction)
    unpack = instruction.unpack if isinstance(instruction, AddInstruction) else False
    tree: _Tree | None = None
    out: list[_Placement] = []
    for src in instruction.sources:
        if not is_add and src.startswith(("http://", "https://")):
            raise where.fail(f"source can't be a URL for COPY: {src} (use ADD)")
        if is_add and is_remote_source(src):
            if _is_git_source(src):
                raise where.fail(
                    f"ADD {src}: adding a git repository is not supported; clone it in a RUN "
                    "step or a separate build context"
                )
            assert fetcher is not None  # noqa: S101 - made above whenever a source is remote
            checksum = instruction.checksum if isinstance(instruction, AddInstruction) else ""
            fetched = fetcher.fetch(src, checksum=checksum)
            lm = fetched.last_modified
            node = _Node(
                "file",
                fetched.path,
                0o600,
                mtime_ns=int(lm * 1_000_000_000) if lm is not None else None,
            )
            archive = unpack is True and archive_compression(fetched.path, display=src) is not None
            out.append(_Placement(node, fetched.filename, src, archive=archive))
            continue
        if tree is None:
            tree = _tree(source, where, dockerignore, instruction)
        pivot = ""
        if parents and "/./" in src:
            pivot = _clean_rel(src.split("/./", 1)[0])
        for path, node in tree.select(src, instruction.exclude):
            below: str | None = None
            if parents:
                below = _below_pivot(path, pivot, src, where)
            archive = (
                is_add
                and unpack is not False
                and node.kind == "file"
                and node.host is not None
                and archive_compression(node.host, display=path) is not None
            )
            name = posixpath.basename(path) or "."
            out.append(_Placement(node, name, path or ".", tree, path, below, archive))
    for content in instruction.contents:
        data = content.data.encode("utf-8", "surrogateescape")
        node = _Node("file", None, 0o644, data=data)
        name = posixpath.basename(content.path.rstrip("/")) or content.path
        out.append(_Placement(node, name, f"<<{content.path}"))
    return out


def _tree(
    source: CopySource,
    where: _Where,
    dockerignore: Sequence[str],
    instruction: CopyInstruction | AddInstruction,
) -> _Tree:
    if source.is_context:
        patterns = tuple(dockerignore)
        context: BuildContext
        if source.index is not None:
            context = _PlannedContext(source.root, source.index, patterns)
        else:
            context = BuildContext(source.root, dockerignore=patterns)
        return _ContextTree(context, where)
    from_ = instruction.from_ if isinstance(instruction, CopyInstruction) else None
    label = f"{from_!r}" if from_ else "the source filesystem"
    return _RootfsTree(source.root, where, label)


def _below_pivot(path: str, pivot: str, source: str, where: _Where) -> str:
    """The part of a ``--parents`` match kept below the destination."""
    if not pivot:
        return path
    if path == pivot:
        return ""
    if not path.startswith(pivot + "/"):
        raise where.fail(
            f"{where.keyword} --parents source {source!r}: {path} is not below {pivot}"
        )
    return path[len(pivot) + 1 :]


def _check_several(root: Path, dest: str, placements: list[_Placement], where: _Where) -> None:
    """Several things into a destination not written as a directory (see the module doc)."""
    host = resolve_in_root(root, dest)
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(os.lstat(host).st_mode):
            return
    if all(p.node.kind == "dir" or p.archive for p in placements):
        return
    raise where.fail(
        f"When using {where.keyword} with more than one source file, the destination must be a "
        "directory and end with a /"
    )


def _place(
    writer: _Writer,
    placement: _Placement,
    dest: str,
    dest_is_dir: bool,
    instruction: CopyInstruction | AddInstruction,
    chown: tuple[int, int] | None,
) -> None:
    node = placement.node
    root = writer.rootfs
    if placement.archive:
        _extract(writer, placement, dest, chown)
        return
    if placement.below is not None:
        _place_parents(writer, placement, dest, instruction.exclude)
        return
    writer.make_dirs(dest if dest_is_dir else posixpath.dirname(dest))
    target = resolve_in_root(root, dest)
    try:
        st: os.stat_result | None = os.lstat(target)
    except FileNotFoundError:
        st = None
    if node.kind == "dir":
        assert placement.tree is not None  # noqa: S101 - directories come from a tree
        if st is None:
            target = writer.make_dirs(dest)
        elif not stat.S_ISDIR(st.st_mode):
            raise writer.where.fail(
                f"{writer.where.keyword}: cannot copy to non-directory: {writer.shown(target)}"
            )
        writer.copy_dir(placement.tree, node, target, instruction.exclude)
        return
    if st is not None and stat.S_ISDIR(st.st_mode):
        target = target / placement.name
    parent = writer.make_dirs(container_path(root, target.parent))
    writer.put_leaf(node, parent / target.name)


def _place_parents(
    writer: _Writer, placement: _Placement, dest: str, exclude: Sequence[str]
) -> None:
    """``--parents``: recreate the match's directories below the destination."""
    assert placement.tree is not None and placement.below is not None  # noqa: S101 - --parents sets both
    tree, node = placement.tree, placement.node
    current = writer.make_dirs(dest)
    names = [n for n in (placement.below or "").split("/") if n]
    dirs = names if node.kind == "dir" else names[:-1]
    matched = placement.path.split("/") if placement.path else []
    for i, name in enumerate(dirs):
        # The source directory at this depth: the match path shortened from the right.
        upto = len(matched) - (len(names) - i - 1)
        source_dir = tree.lookup("/".join(matched[:upto]))
        current = current / name
        writer.put_dir(source_dir, current, overwrite=False)
    if node.kind == "dir":
        writer.copy_dir(tree, node, current, exclude)
    else:
        writer.put_leaf(node, current / names[-1])


def _extract(
    writer: _Writer, placement: _Placement, dest: str, chown: tuple[int, int] | None
) -> None:
    """ADD of a local archive: unpack into the destination, which is always a directory."""
    node = placement.node
    assert node.host is not None  # noqa: S101 - archives are files on disk
    if node.digest is not None:
        found, _size = _core.digest_file(node.host, "blake3")
        if found != node.digest:
            raise writer.where.changed(placement.shown, f"planned {node.digest}, found {found}")
    host = writer.make_dirs(dest)
    try:
        extract_archive(
            node.host,
            host,
            container_dest=container_path(writer.rootfs, host),
            owner=chown,
            display=placement.shown,
        )
    except ArchiveError as err:
        raise writer.where.fail(f"{writer.where.keyword}: {err}") from err


# --------------------------------------------------------------------------------------------
# Without a rootfs: the copy as layer entries


class LayerLookup(Protocol):
    """What the stage's layers so far hold at a path (root-relative, ``a/b``): ``"dir"``,
    ``"file"``, ``"symlink"``, ``"hardlink"``, ``"other"``, or None for nothing."""

    def __call__(self, path: str) -> str | None: ...


@dataclass(frozen=True)
class DirectCopy:
    """A COPY/ADD from the build context planned as the entries of its layer (what
    :func:`apply_copy` would write into a rootfs that the layers so far make, and the diff
    would then find): rows for :func:`memobuild.build.layers.write_entries_layer`."""

    entries: tuple[LayerEntryRow, ...]
    where: _Where
    keys: dict[bytes, bytes]  # entry name -> the context path it is read from

    def write(self, out: Path, *, source_date_epoch: int | None) -> LayerBlob:
        """Write the layer; a context file that is not what the plan hashed (edited, gone,
        replaced) raises ContextChangedError, as the copy into a rootfs does."""
        try:
            return write_entries_layer(self.entries, out, source_date_epoch=source_date_epoch)
        except LayerFormatError as err:
            entry = os.fsencode(err.entry)
            raise self.where.changed(os.fsdecode(self.keys.get(entry, entry)), err.reason) from None
        except OSError as err:
            name = os.fsdecode(err.filename) if err.filename is not None else ""
            source = next((self.keys[row[0]] for row in self.entries if row[2] == name), None)
            if source is None or not _gone(err):  # the blob's own file, or the disk failed
                raise from_os_error(err) from err
            raise self.where.changed(os.fsdecode(source), err.strerror or "gone") from None


class _NotDirect(Exception):
    """The copy depends on something only a rootfs shows (a symlink on the way, a file where a
    directory goes, ...): it must take the rootfs path, which also reports any error."""


def plan_direct_copy(
    instruction: CopyInstruction | AddInstruction,
    source: CopySource,
    lookup: LayerLookup,
    *,
    workdir: str,
    dockerignore: Sequence[str] = (),
    chown: tuple[int, int] | None = None,
    now_ns: int,
    file: str | None = None,
) -> DirectCopy | None:
    """Plan ``instruction`` as layer entries without a rootfs, or None when that cannot be
    proven to give what :func:`apply_copy` gives (the caller then materialises a rootfs).

    Only context sources (no ``--from``, URL, heredoc or archive ADD); and every path the copy
    writes or passes through, looked up with ``lookup`` in the layers so far, must be missing or
    what the rootfs path would accept without following a symlink: a directory where a
    directory goes, no directory where a file goes. Directories the copy creates get ``now_ns``
    as their mtime (what writing into them gives them in a rootfs); existing directories on
    the way get no entry (their metadata stays that of the layers below). Errors matching the
    sources (SourceNotFoundError, a bad pattern, a device in the context) are raised, as the
    rootfs path raises them.
    """
    if instruction.contents or not source.is_context or source.index is None:
        return None
    if isinstance(instruction, CopyInstruction) and instruction.from_ is not None:
        return None
    if isinstance(instruction, AddInstruction) and any(
        is_remote_source(s) for s in instruction.sources
    ):
        return None
    where = _Where(instruction.keyword, file, instruction.line)
    try:
        chmod = _ModeChange.parse(instruction.chmod)
    except ValueError:
        return None
    dest, dest_is_dir = _destination(instruction.dest, workdir)
    parents = isinstance(instruction, CopyInstruction) and instruction.parents
    placements = _gather(instruction, source, where, dockerignore, None, parents)
    if any(p.archive for p in placements):
        return None
    plan = _DirectPlan(lookup, chown=chown, chmod=chmod, now_ns=now_ns)
    rel_dest = dest.lstrip("/")
    try:
        if len(placements) > 1 and not dest_is_dir and not parents:
            several_ok = plan.kind(rel_dest) == "dir" or all(
                p.node.kind == "dir" for p in placements
            )
            if not several_ok:
                raise _NotDirect
        for placement in placements:
            plan.place(placement, rel_dest, dest_is_dir, instruction.exclude)
    except _NotDirect:
        return None
    return DirectCopy(tuple(plan.rows.values()), where, plan.keys)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class _DirectPlan:
    """:class:`_Writer` and :func:`_place` played against the layers' listing: the same
    decisions, recorded as layer rows instead of written."""

    def __init__(
        self,
        lookup: LayerLookup,
        *,
        chown: tuple[int, int] | None,
        chmod: _ModeChange | None,
        now_ns: int,
    ) -> None:
        self.lookup = lookup
        self.chown = chown
        self.chmod = chmod
        self.now_ns = now_ns
        self.made: dict[str, str] = {}  # path -> kind, for what this copy put there
        self.described: set[str] = set()  # directories whose mode and mtime a put_dir set
        self.rows: dict[str, LayerEntryRow] = {}
        self.keys: dict[bytes, bytes] = {}

    def kind(self, path: str) -> str | None:
        made = self.made.get(path)
        return made if made is not None else self.lookup(path)

    def owner(self, node: _Node) -> tuple[int, int]:
        return self.chown if self.chown is not None else (node.uid, node.gid)

    def mode(self, node: _Node) -> int:
        if self.chmod is None:
            return node.mode
        return self.chmod.apply(node.mode, is_dir=node.kind == "dir")

    def make_dirs(self, path: str) -> None:
        """``make_dirs_in_root``: missing directories 0755, owned by --chown or root."""
        current = ""
        for name in path.split("/"):
            if not name:
                continue
            current = _join(current, name)
            kind = self.kind(current)
            if kind == "dir":
                continue
            if kind is not None:  # a symlink to follow, or not a directory: the rootfs decides
                raise _NotDirect
            uid, gid = self.chown or (0, 0)
            self.made[current] = "dir"
            self.rows[current] = (
                os.fsencode(current),
                "dir",
                None,
                None,
                None,
                0o755,
                uid,
                gid,
                self.now_ns,
            )

    def place(
        self, placement: _Placement, dest: str, dest_is_dir: bool, exclude: Sequence[str]
    ) -> None:
        node = placement.node
        if placement.below is not None:
            self.place_parents(placement, dest, exclude)
            return
        self.make_dirs(dest if dest_is_dir else posixpath.dirname(dest))
        kind = self.kind(dest) if dest else "dir"
        if kind == "symlink":  # resolve_in_root would follow it
            raise _NotDirect
        if node.kind == "dir":
            assert placement.tree is not None  # noqa: S101 - directories come from a tree
            if kind is None:
                self.make_dirs(dest)
            elif kind != "dir":
                raise _NotDirect
            self.copy_dir(placement.tree, node, dest, exclude)
            return
        target = _join(dest, placement.name) if kind == "dir" else dest
        self.put_leaf(node, target)

    def place_parents(self, placement: _Placement, dest: str, exclude: Sequence[str]) -> None:
        assert placement.tree is not None and placement.below is not None  # noqa: S101 - --parents sets both
        tree, node = placement.tree, placement.node
        self.make_dirs(dest)
        current = dest
        names = [n for n in placement.below.split("/") if n]
        dirs = names if node.kind == "dir" else names[:-1]
        matched = placement.path.split("/") if placement.path else []
        for i, name in enumerate(dirs):
            upto = len(matched) - (len(names) - i - 1)
            current = _join(current, name)
            self.put_dir(tree.lookup("/".join(matched[:upto])), current, overwrite=False)
        if node.kind == "dir":
            self.copy_dir(tree, node, current, exclude)
        else:
            self.put_leaf(node, _join(current, names[-1]))

    def copy_dir(self, tree: _Tree, node: _Node, target: str, exclude: Sequence[str]) -> None:
        placed = {""}
        for rel, child in tree.below(node, exclude):
            parent = posixpath.dirname(rel)
            if parent not in placed:
                parts = parent.split("/")
                for i in range(1, len(parts) + 1):
                    upper = "/".join(parts[:i])
                    if upper not in placed:
                        self.put_dir(tree.child(node, upper), _join(target, upper), overwrite=False)
                        placed.add(upper)
            if child.kind == "dir":
                self.put_dir(child, _join(target, rel), overwrite=True)
                placed.add(rel)
            else:
                self.put_leaf(child, _join(target, rel))

    def put_dir(self, node: _Node, path: str, *, overwrite: bool) -> None:
        kind = self.kind(path)
        if kind is not None and kind != "dir":
            raise _NotDirect  # "cannot copy to non-directory"
        if kind is not None and not overwrite:
            return
        # _Writer applies the directory modes and times it gathered in reverse order: the
        # first put of a directory sets them; the owner is the same for every context node.
        if path in self.described:
            return
        if node.host is None:  # pragma: no cover - context nodes always have a host path
            raise _NotDirect
        uid, gid = self.owner(node)
        self.made[path] = "dir"
        self.described.add(path)
        self.rows[path] = (
            os.fsencode(path),
            "dir",
            os.fspath(node.host),
            None,
            None,
            self.mode(node),
            uid,
            gid,
            node.mtime_ns,
        )
        self.keys[os.fsencode(path)] = node.key

    def put_leaf(self, node: _Node, path: str) -> None:
        if node.kind == "socket":
            return  # a tar layer cannot hold a socket
        if node.kind not in ("file", "symlink") or node.host is None:
            raise _NotDirect
        if self.kind(path) == "dir":
            raise _NotDirect  # "cannot replace directory ... with a file"
        uid, gid = self.owner(node)
        name = os.fsencode(path)
        if node.kind == "file":
            if node.digest is None or not node.digest.startswith("blake3:"):
                raise _NotDirect
            digest = bytes.fromhex(node.digest[len("blake3:") :])
            row: LayerEntryRow = (
                name,
                "file",
                os.fspath(node.host),
                None,
                digest,
                self.mode(node),
                uid,
                gid,
                node.mtime_ns,
            )
        else:
            if not node.link:
                raise _NotDirect
            # A symlink's own mode is 0777 on Linux: what the diff of a rootfs records.
            row = (
                name,
                "symlink",
                os.fspath(node.host),
                os.fsencode(node.link),
                None,
                0o777,
                uid,
                gid,
                node.mtime_ns,
            )
        self.made[path] = node.kind
        self.described.discard(path)
        self.rows[path] = row
        self.keys[name] = node.key
