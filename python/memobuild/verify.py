"""Content verification: every blob is checked against its digest before it is used."""

from __future__ import annotations

import os

from memobuild import _core
from memobuild._core import Hasher
from memobuild.errors import CASIntegrityError, InvalidDigestError, from_os_error

__all__ = [
    "ALGORITHMS",
    "Hasher",
    "digest_bytes",
    "digest_file",
    "parse_digest",
    "verify_bytes",
    "verify_file",
]

ALGORITHMS = ("sha256", "blake3")


def _invalid(err: ValueError) -> InvalidDigestError:
    if len(err.args) == 2:
        return InvalidDigestError(str(err.args[0]), str(err.args[1]))
    return InvalidDigestError("?", str(err))


def parse_digest(digest: str) -> tuple[str, str]:
    """Split ``sha256:<hex>`` / ``blake3:<hex>`` into (algorithm, hex), validating both parts."""
    try:
        return _core.parse_digest(digest)
    except ValueError as err:
        raise _invalid(err) from err


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    """The digest of ``data`` written ``<algorithm>:<hex>``."""
    try:
        return _core.digest_bytes(data, algorithm)
    except ValueError as err:
        raise _invalid(err) from err


def digest_file(path: str | os.PathLike[str], algorithm: str = "sha256") -> tuple[str, int]:
    """Stream a file through the digest; returns (digest, size)."""
    try:
        return _core.digest_file(path, algorithm)
    except ValueError as err:
        raise _invalid(err) from err
    except OSError as err:
        raise from_os_error(err, "file") from err


def verify_bytes(data: bytes, expected: str, *, where: str | None = None) -> None:
    """Raise CASIntegrityError unless ``data`` hashes to ``expected``."""
    try:
        ok, actual, size = _core.verify_bytes(data, expected)
    except ValueError as err:
        raise _invalid(err) from err
    if not ok:
        raise CASIntegrityError(expected, actual, size, where)


def verify_file(path: str | os.PathLike[str], expected: str) -> int:
    """Raise CASIntegrityError unless the file hashes to ``expected``; returns its size."""
    try:
        ok, actual, size = _core.verify_file(path, expected)
    except ValueError as err:
        raise _invalid(err) from err
    except OSError as err:
        raise from_os_error(err, "file") from err
    if not ok:
        raise CASIntegrityError(expected, actual, size, os.fspath(path))
    return size
