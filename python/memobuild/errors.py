"""One hierarchy for every error MemoBuild raises.

Each error says what went wrong and where, and carries ``retryable``: whether doing the same
thing again may succeed (a network blip) or not (a corrupt blob, a broken Dockerfile).
"""

from __future__ import annotations

import os


class MemoBuildError(Exception):
    """Base of every MemoBuild error."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(MemoBuildError):
    """The user gave MemoBuild something it cannot use: a missing path, a bad argument."""


class PathNotFoundError(InputError, FileNotFoundError):
    """A path that must exist does not."""

    def __init__(self, path: str | os.PathLike[str], what: str = "path") -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {what} does not exist")


class NotADirectoryInputError(InputError, NotADirectoryError):
    """A path that must be a directory is something else."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: not a directory")


class UnreadablePathError(InputError, PermissionError):
    """A file or directory MemoBuild must read cannot be read."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: cannot read: {reason}")


class InvalidDigestError(InputError, ValueError):
    """A digest string is not ``sha256:<64 hex>`` or ``blake3:<64 hex>``."""

    def __init__(self, digest: str, reason: str) -> None:
        self.digest = digest
        super().__init__(f"invalid digest {digest!r}: {reason}")


class PatternError(InputError, ValueError):
    """An ignore pattern (.dockerignore or gitignore) is malformed."""

    def __init__(self, pattern: str, reason: str, source: str | None = None) -> None:
        self.pattern = pattern
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid pattern {pattern!r}: {reason}")


class CASIntegrityError(MemoBuildError):
    """Content did not hash to the digest it is stored or announced under."""

    def __init__(self, expected: str, actual: str, size: int, where: str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        self.size = size
        self.where = where
        prefix = f"{where}: " if where else ""
        super().__init__(
            f"{prefix}content integrity check failed: expected {expected}, "
            f"got {actual} ({size} bytes)"
        )


class NetworkError(MemoBuildError):
    """A remote cache or registry could not be reached or answered badly."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class RegistryError(NetworkError):
    """A container registry refused or failed a request: says which registry, what was asked and
    what it answered (``status``, and the Distribution API error ``code`` when it gave one)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.code = code
        self.retry_after = retry_after


class RegistryAuthError(RegistryError):
    """A registry refused the credentials given for it, or asked for credentials there are none
    of. Never retried; the message names where the credentials came from, never the secret."""


class RegistryNotFoundError(RegistryError):
    """A registry has no such repository, tag, manifest or blob (404)."""


class StorageError(MemoBuildError):
    """The local store could not read or write (disk full, permissions, I/O error)."""


class CacheCoherencyError(MemoBuildError):
    """A cache entry refers to content that is missing or inconsistent."""


class BlobNotFoundError(StorageError):
    """A blob asked for by digest is not in the local store."""

    def __init__(self, digest: str, path: str | os.PathLike[str]) -> None:
        self.digest = digest
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: blob {digest} is not in the cache")


class CorruptEntryError(StorageError):
    """A stored action entry or record cannot be decoded or fails its checksum."""

    def __init__(self, where: str | os.PathLike[str], reason: str) -> None:
        self.where = os.fspath(where)
        self.reason = reason
        super().__init__(f"{self.where}: corrupt cache entry: {reason}")


class UnsupportedEntryError(StorageError):
    """A stored entry was written by a MemoBuild with another schema: not corrupt, not usable."""

    def __init__(self, where: str | os.PathLike[str], found: object, supported: object) -> None:
        self.where = os.fspath(where)
        self.found = found
        self.supported = supported
        super().__init__(
            f"{self.where}: cache entry has format {found!r}; this MemoBuild reads {supported!r}"
        )


class DockerfileParseError(InputError):
    """A Dockerfile cannot be read; says file:line:col like a compiler does."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.reason = message
        where = file or ("Dockerfile" if line is not None else "")
        if line is not None:
            where += f":{line}"
            if column:
                where += f":{column}"
        super().__init__(f"{where}: {message}" if where else message)


class StepFailedError(MemoBuildError):
    """A build step ran and exited non-zero."""

    def __init__(self, step: str, exit_code: int, *, where: str | None = None) -> None:
        self.step = step
        self.exit_code = exit_code
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}step {step!r} failed with exit code {exit_code}")


class SandboxUnavailableError(MemoBuildError):
    """No isolation mechanism (bubblewrap, chroot as root) can run build steps here."""


class DagCycleError(InputError, ValueError):
    """A dependency graph has a cycle; ``nodes`` lists the nodes on one cycle, in order."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes
        path = " -> ".join(str(n) for n in [*nodes, nodes[0]]) if nodes else "?"
        super().__init__(f"dependency cycle: {path}")


def from_os_error(err: OSError, what: str = "path") -> MemoBuildError:
    """Turn an OSError raised by the Rust core (always with a filename) into a MemoBuildError."""
    path = err.filename if err.filename is not None else "?"
    if isinstance(err, FileNotFoundError):
        return PathNotFoundError(path, what)
    if isinstance(err, NotADirectoryError):
        return NotADirectoryInputError(path)
    if isinstance(err, PermissionError):
        return UnreadablePathError(path, err.strerror or "permission denied")
    return StorageError(f"{path}: {err.strerror or err}")


class ImageNotFoundError(InputError):
    """A base image (FROM, COPY --from) that nothing provides: not scratch, not a named build
    context, not in the local store, and not pulled (``--pull=never``, or its registry has no
    such repository or tag, said in ``detail``).

    The message lists every way MemoBuild finds an image: a user who wrote ``FROM alpine``
    needs to know what to do next, not only that the lookup failed.
    """

    def __init__(self, ref: str, detail: str | None = None) -> None:
        self.ref = ref
        self.detail = detail
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"image {ref!r} not found{extra}: memobuild build pulls it from its registry "
            f"(docker.io unless the name starts with a host, as in localhost:5000/app) unless "
            f"--pull=never; or give it as a named build context, --build-context "
            f"{ref}=oci-layout://PATH[:TAG] or --build-context {ref}=docker-archive://FILE "
            f"(from docker save), or build it with memobuild and tag it with -t {ref} first "
            "(memobuild images lists the local images)"
        )


class InvalidImageError(InputError):
    """An OCI layout, docker-save archive, manifest or image config that cannot be used.

    Raised for malformed or inconsistent input (a missing index.json, a config whose diff_ids do
    not match its layers, a media type MemoBuild cannot unpack); content that does not match its
    digest is CASIntegrityError instead, so that callers can tell corruption from a bad format.
    """

    def __init__(self, where: str | os.PathLike[str], reason: str) -> None:
        self.where = os.fspath(where)
        self.reason = reason
        super().__init__(f"{self.where}: {reason}")


class BuildStepError(StepFailedError):
    """A build step's command exited non-zero; reads like a compiler error.

    ``Dockerfile:7: step 5 RUN make failed with exit code 2``, followed by the last lines the
    step printed, because the user's next question is always "what did it say?". ``step`` is the
    step's label (``step 5 RUN make``), ``file``/``line`` where the instruction is, ``output``
    those last lines. Nothing of the step was stored; every step before it was.
    """

    def __init__(
        self,
        step: str,
        exit_code: int,
        *,
        file: str,
        line: int,
        output: tuple[str, ...] = (),
    ) -> None:
        import signal  # here, not at the top: this file's imports are shared by every module

        self.step = step
        self.exit_code = exit_code
        self.file = file
        self.line = line
        self.output = tuple(output)
        headline = f"{file}:{line}: {step} failed with exit code {exit_code}"
        if exit_code < 0:
            try:
                name = signal.Signals(-exit_code).name
            except ValueError:
                name = f"signal {-exit_code}"
            headline = f"{file}:{line}: {step} was killed by {name}"
        body = "".join(f"\n  | {text}" for text in self.output)
        MemoBuildError.__init__(self, headline + body)


class LayerError(MemoBuildError):
    """A layer cannot be written or applied; says which layer (or rootfs) and which entry."""

    _label = "entry"

    def __init__(self, where: str | os.PathLike[str], entry: str, reason: str) -> None:
        self.where = os.fspath(where)
        self.entry = entry
        self.reason = reason
        what = f"{self._label} {entry!r}: " if entry else ""
        super().__init__(f"{self.where}: {what}{reason}")


class LayerFormatError(LayerError):
    """A layer tar is malformed, or a rootfs path cannot be put in a layer (a ``.wh.`` name)."""


class LayerSecurityError(LayerError):
    """A layer entry was refused: applying it could write outside the root (``..``, an absolute
    path, a symlink or hard link leading out), create a device node without privileges, or
    expand the layer past its byte or entry bound."""

    _label = "refused entry"
