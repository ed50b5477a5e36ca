"""HTTP(S) downloads for ``ADD <url>``, verified against ``--checksum``.

A download is streamed to a temporary file (never held in memory) while its SHA-256 is computed,
so the executor can refine the key of an ADD whose URL had no ``--checksum`` (the plan cannot
see what a URL holds; see ``PlanNode.unresolved``). With ``--checksum`` (``sha256:``,
``sha384:`` or ``sha512:``, as BuildKit accepts) a mismatch is a :class:`CASIntegrityError` and
nothing is kept: content that is not what the Dockerfile pinned must never reach a layer.

What the file is called in the image follows docker: the last element of the URL's path, else
the ``filename`` of a ``Content-Disposition`` header, else BuildKit's ``__unnamed__``. Its
mtime is the ``Last-Modified`` header when the server sends one (docker does the same).

Failures are :class:`NetworkError` naming the URL: unreachable or offline (``retryable``), a
timeout (``retryable``), an HTTP error status (retryable only for 408, 429 and 5xx), a body
shorter than its ``Content-Length``. Retryable failures are retried a few times with exponential
backoff and full jitter before giving up, as the cache clients do. Only ``http`` and ``https``
are fetched, redirects included (urllib would follow a redirect to ``ftp:``).

One :class:`Fetcher` serves one build: it owns a temporary directory that :meth:`Fetcher.close`
removes, and it downloads each URL once, so that the key the executor computes from a download
and the layer that ``apply_copy`` writes from it come from the same bytes.
"""

from __future__ import annotations

import email.message
import hashlib
import os
import posixpath
import random
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.client import HTTPException, HTTPMessage, HTTPResponse
from pathlib import Path
from types import TracebackType
from typing import IO

from memobuild.errors import CASIntegrityError, InvalidDigestError, NetworkError

__all__ = ["DEFAULT_FILENAME", "FetchedFile", "Fetcher", "parse_checksum"]

DEFAULT_FILENAME = "__unnamed__"
"""BuildKit's name for a download whose URL and headers give none."""

_CHUNK = 1 << 20
_CHECKSUM = re.compile(r"(sha256|sha384|sha512):([0-9a-f]+)")
_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class FetchedFile:
    """A downloaded file: where it is, what the image calls it, and what it holds.

    ``last_modified`` is seconds since the epoch (None without a usable header); ``digest`` is
    ``sha256:<hex>`` of the content, whatever ``--checksum`` used.
    """

    path: Path
    filename: str
    last_modified: float | None
    digest: str
    size: int
    url: str


def parse_checksum(checksum: str) -> tuple[str, str]:
    """``sha256:<hex>`` (or sha384/sha512) as (algorithm, hex); InvalidDigestError otherwise."""
    match = _CHECKSUM.fullmatch(checksum)
    if match is None:
        raise InvalidDigestError(checksum, "expected sha256:, sha384: or sha512: and hex digits")
    algorithm, digest = match.groups()
    if len(digest) != _HEX_LENGTHS[algorithm]:
        raise InvalidDigestError(
            checksum, f"a {algorithm} digest has {_HEX_LENGTHS[algorithm]} hex digits"
        )
    return algorithm, digest


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): ADD never reads ftp: or file: URLs."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(
                newurl, code, f"redirect to a non-HTTP URL {newurl!r}", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _filename(url: str, headers: HTTPMessage) -> str:
    """docker's getFilenameForDownload, with BuildKit's ``__unnamed__`` as the last resort."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    if path and not path.endswith("/"):
        name = _safe_name(posixpath.basename(path))
        if name:
            return name
    disposition = headers.get("Content-Disposition")
    if disposition:
        message = email.message.Message()
        message["Content-Disposition"] = disposition
        given = message.get_filename()
        if given and not given.endswith("/"):
            name = _safe_name(posixpath.basename(given))
            if name:
                return name
    return DEFAULT_FILENAME


def _safe_name(name: str) -> str | None:
    """A name that can be one path element: not empty, ``.``/``..``, nor holding NUL."""
    if name in ("", ".", "..") or "\0" in name or "/" in name:
        return None
    return name


def _last_modified(headers: HTTPMessage) -> float | None:
    value = headers.get("Last-Modified")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class Fetcher:
    """Downloads ``ADD`` URLs for one build (see the module docstring).

    ``directory`` holds the downloads (default: a new temporary directory, removed by
    :meth:`close`; give a directory on the build's scratch filesystem for large files).
    ``timeout`` bounds connecting and each read, in seconds. ``attempts`` counts tries of a
    retryable failure; ``backoff`` is the first retry's maximum delay, doubled each time.
    ``opener`` and ``sleep`` are for tests.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 30.0,
        attempts: int = 3,
        backoff: float = 0.5,
        user_agent: str = "memobuild",
        opener: urllib.request.OpenerDirector | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._owned = directory is None
        if directory is None:
            directory = tempfile.mkdtemp(prefix="memobuild-fetch-")
        self.directory = Path(directory)
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.user_agent = user_agent
        self._opener = opener or urllib.request.build_opener(_HTTPOnlyRedirects())
        self._sleep = sleep
        self._fetched: dict[str, FetchedFile] = {}
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Remove the downloads (and the directory, if the fetcher made it)."""
        if self._closed:
            return
        self._closed = True
        for fetched in self._fetched.values():
            fetched.path.unlink(missing_ok=True)
        self._fetched.clear()
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- fetching -------------------------------------------------------------------------

    def fetch(self, url: str, *, checksum: str = "") -> FetchedFile:
        """Download ``url`` (once per fetcher) and verify it against ``checksum`` if given.

        Raises NetworkError (unreachable, timeout, HTTP error, truncated body),
        CASIntegrityError (content does not match ``checksum``; the download is deleted) and
        InvalidDigestError (a malformed ``checksum``).
        """
        if self._closed:
            raise ValueError("fetch() on a closed Fetcher")
        expected = parse_checksum(checksum) if checksum else None
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise NetworkError(f"cannot fetch {url}: only http and https URLs", retryable=False)
        fetched = self._fetched.get(url)
        if fetched is None:
            fetched = self._download_with_retries(url, expected)
            self._fetched[url] = fetched
        elif expected is not None:
            self._verify_file(fetched, expected)
        return fetched

    def _download_with_retries(self, url: str, expected: tuple[str, str] | None) -> FetchedFile:
        attempt = 0
        while True:
            try:
                return self._download(url, expected)
            except NetworkError as err:
                attempt += 1
                if not err.retryable or attempt >= self.attempts:
                    raise
                self._sleep(random.uniform(0, self.backoff * (2 ** (attempt - 1))))  # noqa: S311 - jitter

    def _download(self, url: str, expected: tuple[str, str] | None) -> FetchedFile:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked to be http(s)
            url, headers={"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
        )
        fd, name = tempfile.mkstemp(prefix="fetch-", dir=self.directory)
        path = Path(name)
        keep = False
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    response: HTTPResponse = self._opener.open(request, timeout=self.timeout)
                except urllib.error.HTTPError as err:
                    err.close()
                    raise NetworkError(
                        f"cannot fetch {url}: HTTP {err.code} {err.reason}",
                        retryable=err.code in _RETRYABLE_STATUS,
                    ) from None
                with response:
                    headers = response.headers
                    sha256, other, size = self._stream(response, out, expected)
                    length = headers.get("Content-Length")
                    if length is not None and length.isdigit() and int(length) != size:
                        raise NetworkError(
                            f"cannot fetch {url}: the connection ended after {size} of "
                            f"{length} bytes"
                        )
            fetched = FetchedFile(
                path=path,
                filename=_filename(url, headers),
                last_modified=_last_modified(headers),
                digest=f"sha256:{sha256}",
                size=size,
                url=url,
            )
            if expected is not None:
                algorithm, want = expected
                got = sha256 if algorithm == "sha256" else other
                if got != want:
                    raise CASIntegrityError(
                        f"{algorithm}:{want}", f"{algorithm}:{got}", size, where=url
                    )
            keep = True
            return fetched
        except NetworkError:
            raise
        except urllib.error.URLError as err:
            raise NetworkError(f"cannot fetch {url}: {_reason(err.reason)}{_HINT}") from None
        except (TimeoutError, ConnectionError, HTTPException, OSError) as err:
            raise NetworkError(f"cannot fetch {url}: {_reason(err)}{_HINT}") from None
        finally:
            if not keep:
                path.unlink(missing_ok=True)

    def _stream(
        self, response: HTTPResponse, out: IO[bytes], expected: tuple[str, str] | None
    ) -> tuple[str, str, int]:
        """Copy the body to ``out``: (sha256 hex, hex of the checksum's algorithm, size)."""
        sha256 = hashlib.sha256()
        algorithm = expected[0] if expected is not None else "sha256"
        other = sha256 if algorithm == "sha256" else hashlib.new(algorithm)
        size = 0
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            sha256.update(chunk)
            if other is not sha256:
                other.update(chunk)
            out.write(chunk)
            size += len(chunk)
        return sha256.hexdigest(), other.hexdigest(), size

    def _verify_file(self, fetched: FetchedFile, expected: tuple[str, str]) -> None:
        algorithm, want = expected
        digest = hashlib.new(algorithm)
        with open(fetched.path, "rb") as file:
            for chunk in iter(lambda: file.read(_CHUNK), b""):
                digest.update(chunk)
        got = digest.hexdigest()
        if got != want:
            raise CASIntegrityError(
                f"{algorithm}:{want}", f"{algorithm}:{got}", fetched.size, where=fetched.url
            )


_HINT = " (is the network reachable? proxies come from HTTP_PROXY/HTTPS_PROXY/NO_PROXY)"


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError) or type(reason).__name__ == "timeout":
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    text = str(reason)
    return text or type(reason).__name__
