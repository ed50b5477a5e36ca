"""Blob verification: digests of bytes and files, and every way a check can fail."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import blake3
import pytest

from memobuild.errors import (
    CASIntegrityError,
    InvalidDigestError,
    MemoBuildError,
    PathNotFoundError,
)
from memobuild.verify import (
    Hasher,
    digest_bytes,
    digest_file,
    parse_digest,
    verify_bytes,
    verify_file,
)

DATA = b"memobuild" * 1000


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def b3(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


@pytest.mark.parametrize("algorithm, ref", [("sha256", sha), ("blake3", b3)])
def test_digests_match_reference_implementations(tmp_path: Path, algorithm, ref) -> None:
    for size in (0, 1, 4095, 1 << 20, (1 << 20) + 1, 5 * (1 << 20) + 3):
        data = os.urandom(size)
        assert digest_bytes(data, algorithm) == ref(data)
        f = tmp_path / f"blob{size}"
        f.write_bytes(data)
        assert digest_file(f, algorithm) == (ref(data), size)


def test_verify_success(tmp_path: Path) -> None:
    verify_bytes(DATA, sha(DATA))
    verify_bytes(DATA, b3(DATA))
    f = tmp_path / "blob"
    f.write_bytes(DATA)
    assert verify_file(f, sha(DATA)) == len(DATA)


def test_verify_bytes_mismatch_carries_expected_actual_and_size() -> None:
    wrong = sha(b"something else")
    with pytest.raises(CASIntegrityError) as info:
        verify_bytes(DATA, wrong, where="upload")
    err = info.value
    assert (err.expected, err.actual, err.size) == (wrong, sha(DATA), len(DATA))
    assert not err.retryable
    assert str(err).startswith("upload: content integrity check failed")


def test_verify_file_truncated_blob(tmp_path: Path) -> None:
    f = tmp_path / "blob"
    f.write_bytes(DATA[:-1])
    with pytest.raises(CASIntegrityError) as info:
        verify_file(f, sha(DATA))
    assert info.value.size == len(DATA) - 1
    assert info.value.where == str(f)


def test_verify_file_same_digest_other_algorithm_is_a_mismatch(tmp_path: Path) -> None:
    f = tmp_path / "blob"
    f.write_bytes(DATA)
    fake = "blake3:" + hashlib.sha256(DATA).hexdigest()
    with pytest.raises(CASIntegrityError):
        verify_file(f, fake)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256",
        "sha256:",
        "md5:" + "0" * 32,
        "sha256:" + "0" * 63,
        "sha256:" + "0" * 65,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "sha256:../../etc/passwd" + "0" * 44,
        "SHA256:" + "0" * 64,
    ],
)
def test_bad_digest_strings(bad: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidDigestError) as info:
        verify_bytes(b"", bad)
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, MemoBuildError)
    with pytest.raises(InvalidDigestError):
        parse_digest(bad)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(InvalidDigestError):
        verify_file(tmp_path / "f", bad)


def test_parse_digest() -> None:
    assert parse_digest(sha(b"")) == ("sha256", hashlib.sha256(b"").hexdigest())


def test_unknown_algorithm() -> None:
    with pytest.raises(InvalidDigestError, match="md5"):
        digest_bytes(b"", "md5")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PathNotFoundError, match="absent"):
        verify_file(tmp_path / "absent", sha(b""))
    with pytest.raises(PathNotFoundError, match="absent"):
        digest_file(tmp_path / "absent")


def test_directory_is_not_a_blob(tmp_path: Path) -> None:
    with pytest.raises(MemoBuildError, match=str(tmp_path)):
        verify_file(tmp_path, sha(b""))


@pytest.mark.parametrize("algorithm, ref", [("sha256", sha), ("blake3", b3)])
def test_streaming_hasher(algorithm, ref) -> None:
    h = Hasher(algorithm)
    assert h.algorithm == algorithm
    chunks = [os.urandom(n) for n in (0, 1, 100_000, 7)]
    for c in chunks:
        h.update(c)
    assert h.size == sum(map(len, chunks))
    assert h.digest() == ref(b"".join(chunks))
    h.update(b"more")  # digest() does not end the stream
    assert h.digest() == ref(b"".join(chunks) + b"more")


def test_hasher_rejects_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="md5"):
        Hasher("md5")
