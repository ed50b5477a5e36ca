"""Ignore files: ``.dockerignore`` with docker's semantics, and ``.gitignore``.

``.dockerignore`` patterns behave exactly as in ``docker build`` (BuildKit and the moby
``patternmatcher`` library): every pattern is anchored at the context root, ``*`` and ``?`` stay
within one path element, ``**`` spans any number of directories, ``!`` marks an exception, the
last matching pattern wins, and a path is excluded when it or one of its parent directories is.
The matching itself happens in Rust (``memobuild._core``).

``.gitignore`` lines follow git (with the ``ignore`` crate, ripgrep's matcher): a path below an
ignored directory stays ignored whatever ``!`` lines say, since git never looks inside.

A malformed pattern raises :class:`memobuild.errors.PatternError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from memobuild import _core
from memobuild.errors import (
    NotADirectoryInputError,
    PathNotFoundError,
    PatternError,
    from_os_error,
)

__all__ = [
    "DockerIgnore",
    "GitIgnore",
    "StrOrBytesPath",
    "dockerignore_path",
    "load_dockerignore",
    "read_dockerignore",
]

StrOrBytesPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]

# Bytes that are not UTF-8 come back from surrogateescape as U+DC80..U+DCFF. Go, which docker
# is written in, sees each of them as U+FFFD when it matches a pattern.
_UNDECODABLE = {code: "\ufffd" for code in range(0xDC80, 0xDD00)}


def _text(value: str | bytes) -> str:
    """Text the Rust core can take: UTF-8 as is, every other byte as U+FFFD."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    return value.translate(_UNDECODABLE)


def _pattern_error(err: ValueError, source: str | None) -> PatternError:
    if len(err.args) == 2:
        return PatternError(str(err.args[0]), str(err.args[1]), source)
    return PatternError("", str(err), source)


def _strings(values: Iterable[str], what: str) -> list[str]:
    if isinstance(values, str | bytes):
        raise TypeError(
            f"{what} must be a sequence of strings, not a single {type(values).__name__}"
        )
    out = []
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"{what} must be strings, got {type(value).__name__}")
        out.append(_text(value))
    return out


def read_dockerignore(text: str | bytes) -> list[str]:
    """The patterns of a ``.dockerignore`` file, as docker reads them.

    A UTF-8 byte-order mark is dropped; a line whose first character is ``#`` is a comment (so
    ``" #x"`` is a pattern); surrounding whitespace is trimmed and empty lines skipped; each
    pattern is cleaned like a path (``./a/../b`` becomes ``b``) and loses a leading ``/``; an
    exception keeps its ``!`` (``"! /a "`` becomes ``"!a"``). A lone ``!`` is kept and refused
    later, by :class:`DockerIgnore`.
    """
    return _core.read_dockerignore(_text(text))


class DockerIgnore:
    """``.dockerignore`` patterns, compiled.

    >>> ignore = DockerIgnore(["*.md", "!README*.md", "README-secret.md"])
    >>> ignore.matches("notes.md"), ignore.matches("README.md"), ignore.matches("README-secret.md")
    (True, False, True)

    ``patterns`` are as :func:`read_dockerignore` returns them (raw lines are normalised the same
    way). ``source`` names where they came from in error messages.
    """

    __slots__ = ("_matcher", "source")

    def __init__(self, patterns: Iterable[str], *, source: str | None = None) -> None:
        self.source = source
        try:
            self._matcher = _core.DockerIgnore(_strings(patterns, "patterns"))
        except ValueError as err:
            raise _pattern_error(err, source) from None

    @property
    def patterns(self) -> list[str]:
        """The cleaned patterns; exceptions keep their leading ``!``."""
        return self._matcher.patterns

    @property
    def has_exceptions(self) -> bool:
        """Whether some pattern is a ``!`` exception."""
        return self._matcher.has_exceptions

    def matches(self, path: StrOrBytesPath) -> bool:
        """Whether ``path`` (relative to the build context) is excluded from it.

        The path is cleaned first (``./a//b/`` is ``a/b``, a leading ``/`` is dropped). The
        context root itself, and a path that leaves it through ``..``, are never excluded.
        Bytes and surrogate-escaped strings carry file names that are not UTF-8.
        """
        return self._matcher.matches(path)

    def __repr__(self) -> str:
        return f"DockerIgnore({self.patterns!r})"


class GitIgnore:
    """The lines of one ``.gitignore``, taken as sitting at the root of the tree.

    >>> ignore = GitIgnore(["build/", "!build/keep.txt", "*.log"])
    >>> ignore.matches("build", is_dir=True), ignore.matches("build/keep.txt")
    (True, True)

    An element holding several lines is split at newlines. ``source`` names where the lines came
    from in error messages.
    """

    __slots__ = ("_matcher", "source")

    def __init__(self, lines: Iterable[str], *, source: str | None = None) -> None:
        self.source = source
        try:
            self._matcher = _core.GitIgnore(_strings(lines, "lines"))
        except ValueError as err:
            raise _pattern_error(err, source) from None

    def matches(self, path: StrOrBytesPath, is_dir: bool = False) -> bool:
        """Whether ``path`` (relative to the root) is ignored.

        ``is_dir`` (or a trailing ``/`` on the path) says whether the path is a directory,
        which patterns ending in ``/`` need.
        A path below an ignored directory is ignored, whatever ``!`` lines say. The path is
        cleaned first; the root, and a path that leaves it through ``..``, are never ignored.
        """
        return self._matcher.matches(path, is_dir)

    def __repr__(self) -> str:
        return f"GitIgnore(source={self.source!r})"


def dockerignore_path(
    context_dir: str | os.PathLike[str], dockerfile: str | os.PathLike[str] | None = None
) -> Path | None:
    """The ignore file ``docker build`` would use for this context and Dockerfile, if any.

    ``<Dockerfile>.dockerignore`` beside the Dockerfile wins (``app.Dockerfile`` has
    ``app.Dockerfile.dockerignore``); otherwise ``<context>/.dockerignore``. ``dockerfile``
    defaults to ``<context>/Dockerfile``; a relative one is taken from the current directory, as
    ``docker build -f`` does, and ``"-"`` (a Dockerfile read from stdin) has no file of its own.
    """
    context = Path(context_dir)
    if not context.exists():
        raise PathNotFoundError(context, "build context")
    if not context.is_dir():
        raise NotADirectoryInputError(context)
    candidates = []
    if dockerfile is None:
        candidates.append(context / "Dockerfile.dockerignore")
    elif os.fspath(dockerfile) != "-":
        file = Path(dockerfile)
        candidates.append(file.with_name(file.name + ".dockerignore"))
    candidates.append(context / ".dockerignore")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def load_dockerignore(
    context_dir: str | os.PathLike[str], dockerfile: str | os.PathLike[str] | None = None
) -> list[str]:
    """The ``.dockerignore`` patterns for a build, as :func:`read_dockerignore` returns them.

    The file is the one :func:`dockerignore_path` picks; no file means no patterns.
    """
    path = dockerignore_path(context_dir, dockerfile)
    if path is None:
        return []
    try:
        data = path.read_bytes()
    except OSError as err:
        raise from_os_error(err, ".dockerignore") from err
    return read_dockerignore(data)
