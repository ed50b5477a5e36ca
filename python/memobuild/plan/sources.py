"""COPY/ADD sources: what they select from the build context, and the digest of exactly that.

The context is walked and hashed once per plan, in Rust (``_core.ContextIndex``: the tree walk
of ``hash_tree`` with its stat cache and ``.dockerignore`` filter), and every source of every
step is resolved against that one walk. No per-file Python object is ever made: a directory
source (``COPY . .``, ``COPY src/ /app``) costs one lookup of its Merkle digest, a wildcard
source one pass over the entries below its literal prefix.

Matching follows ``docker build`` (BuildKit and tonistiigi/fsutil's copy):

* A source is relative to the context root: a leading ``/`` means the root too, ``..`` cannot
  leave it, ``.`` is the whole context, and a directory stands for its contents.
* Wildcards (``*``, ``?``, ``[...]``; ``\\`` escapes) use Go's ``filepath.Match``: ``*`` never
  crosses a ``/`` and does match a leading dot. A matched directory is taken whole. A wildcard
  that matches nothing copies nothing, as in BuildKit; a malformed one is an error here
  (BuildKit silently matches nothing, which hides typos).
* Symlinks in a source path, the last element included, are followed inside the context.
* What ``.dockerignore`` excludes is not in the context at all: a source cannot match it, and a
  literal source naming it is "not found", exactly as with ``docker build``. The ignore file is
  ``<Dockerfile>.dockerignore`` beside the Dockerfile when there is one, else the context's.
* ``--exclude`` patterns apply below each matched directory and to matched files' names.

A selection's digest covers, per match, its path, type, executable bit and digest (file content
or directory Merkle digest): never mtime, owner or the rest of the mode, so neither a checkout's
umask nor its location changes it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from memobuild import _core
from memobuild.errors import DockerfileParseError, PatternError, from_os_error
from memobuild.hashing import default_stat_cache_path

__all__ = [
    "REMOTE_PREFIXES",
    "BuildContext",
    "SourceChange",
    "SourceNotFoundError",
    "SourceSelection",
    "diff_source",
    "is_remote_source",
]

# ADD fetches these instead of reading the context (BuildKit: HTTP(S) URLs and git refs).
REMOTE_PREFIXES = ("http://", "https://", "git://", "git@", "ssh://")


def is_remote_source(source: str) -> bool:
    """Whether an ADD source is fetched (URL or git ref) rather than read from the context."""
    return source.startswith(REMOTE_PREFIXES)


class SourceNotFoundError(DockerfileParseError):
    """A COPY/ADD/bind-mount source names a path that is not in the build context.

    Reported as a Dockerfile error (file:line) because the line is what the user fixes, with a
    hint when ``.dockerignore`` is the reason.
    """


@dataclass(frozen=True)
class SourceSelection:
    """What one source selected: its digest, the paths it matched, the files they hold."""

    source: str
    digest: str
    matches: tuple[str, ...]
    files: int


@dataclass(frozen=True)
class SourceChange:
    """One path a source covers that differs between two builds."""

    path: str
    change: str  # "added", "removed" or "modified"


class BuildContext:
    """A build context directory, hashed on first use and then shared by every source.

    ``dockerignore`` holds the patterns in force (from ``ignore_file``). ``stat_cache`` is True
    for the default location under the cache dir (shared with ``hash_tree``), False for none, or
    a file path.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        dockerignore: tuple[str, ...] = (),
        ignore_file: Path | None = None,
        stat_cache: bool | str | os.PathLike[str] = True,
    ) -> None:
        self.root = Path(root)
        self.dockerignore = dockerignore
        self.ignore_file = ignore_file
        self._stat_cache = stat_cache
        self._index: _core.ContextIndex | None = None
        self.seconds = 0.0

    @property
    def hashed(self) -> bool:
        """Whether the context has been walked (a plan without context sources never walks)."""
        return self._index is not None

    @property
    def index(self) -> _core.ContextIndex:
        """The hashed context, walking it the first time."""
        if self._index is None:
            patterns = list(self.dockerignore) or None
            if self._stat_cache is True:
                cache: str | os.PathLike[str] | None = default_stat_cache_path(
                    self.root, dockerignore=patterns
                )
            elif self._stat_cache is False:
                cache = None
            else:
                cache = self._stat_cache
            started = time.perf_counter()
            try:
                self._index = _core.ContextIndex.hash(self.root, patterns, cache)
            except OSError as err:
                raise from_os_error(err, "build context") from err
            except ValueError as err:
                source = str(self.ignore_file) if self.ignore_file else None
                raise PatternError(str(err.args[0]), str(err.args[-1]), source) from err
            self.seconds = time.perf_counter() - started
        return self._index

    def select(
        self,
        source: str,
        *,
        exclude: tuple[str, ...] = (),
        wildcards: bool = True,
        what: str = "COPY",
        file: str | None = None,
        line: int | None = None,
    ) -> SourceSelection:
        """Resolve ``source`` and digest what it selects.

        ``wildcards`` is False for a bind mount's ``source``, which names one path. Errors are
        DockerfileParseErrors at ``file:line`` naming ``what`` (the instruction).
        """
        index = self.index  # outside the try: a bad .dockerignore reports itself
        try:
            digest, matches, files = index.select(source, list(exclude), wildcards)
        except FileNotFoundError as err:
            raise SourceNotFoundError(
                self._not_found_message(what, source, str(err.filename)), file=file, line=line
            ) from None
        except OSError as err:
            raise DockerfileParseError(
                f"{what} source {source!r}: {err.filename}: {err.strerror}", file=file, line=line
            ) from None
        except ValueError as err:
            pattern, reason = (str(a) for a in err.args) if len(err.args) == 2 else ("", str(err))
            flag = "--exclude pattern" if pattern != source else "source pattern"
            raise DockerfileParseError(
                f"{what}: invalid {flag} {pattern!r}: {reason}", file=file, line=line
            ) from None
        return SourceSelection(source, digest, tuple(path for path, _ in matches), files)

    def _not_found_message(self, what: str, source: str, missing: str) -> str:
        message = f"{what} source {source!r}: {missing or '.'} not found in the build context"
        if self.dockerignore and _ignored(self.root, self.dockerignore, missing):
            where = self.ignore_file.name if self.ignore_file else ".dockerignore"
            message += f" (it is excluded by {where})"
        return message


def _ignored(root: Path, patterns: tuple[str, ...], rel: str) -> bool:
    """Whether ``rel`` exists on disk but ``.dockerignore`` excludes it: worth saying so."""
    if not rel or not os.path.lexists(root / rel):
        return False
    return _core.DockerIgnore(list(patterns)).matches(rel)


def diff_source(
    old: _core.ContextIndex,
    new: _core.ContextIndex,
    source: str,
    *,
    exclude: tuple[str, ...] = (),
    wildcards: bool = True,
    limit: int = 20,
) -> tuple[tuple[SourceChange, ...], int]:
    """The paths ``source`` covers that differ from ``old`` (an earlier build's context) to
    ``new``: up to ``limit`` of them in path order, and how many there are in all."""
    changes, total = old.diff(new, source, list(exclude), wildcards, limit)
    return tuple(SourceChange(path, change) for path, change in changes), total
