"""The client of ``memobuild server``: blobs and action entries over HTTP, verified on arrival.

Protocol (see the server package): ``HEAD|GET|PUT /v1/blobs/sha256:<hex>`` and
``HEAD|GET|PUT /v1/actions/<blake3 key>``, ``Authorization: Bearer <token>``. Action entries
travel in exactly the bytes the local store writes (``cache/entries.py``), so the server
validates them with the same code.

Rules this client keeps:

- **Nothing unverified reaches the local store.** A blob is streamed into a
  ``LocalStore.blob_writer``: written once, to a temp file in the store's ``tmp/``, while
  ``_core`` hashes it, and renamed into place only if digest and size match; otherwise
  CASIntegrityError and the temp file is deleted. An action entry is decoded and checked
  (envelope checksum, schema, key) before anyone sees it.
- **Only retryable failures are retried** (``retry.py``): connect errors, timeouts, resets and
  HTTP 429/502/503/504, honouring ``Retry-After``. 401/403 and refusals (400/409/411/413) fail
  at once, as RemoteAuthError or RemoteRejectedError. An operation none of whose attempts could
  connect (refused, unreachable, the short connect timeout) raises RemoteUnreachableError, so
  the caller can stop asking a server that is down.
- **Credentials never appear in messages or logs.** The token lives only in the client's
  headers; a URL with ``user:password@`` is refused (put the token in the environment), and
  messages name the server as ``scheme://host:port/path``.

One ``httpx.Client`` (thread-safe, keep-alive connection pool) serves every thread of a build.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import BinaryIO, TypeVar

import httpx

from memobuild.cache.entries import MAX_ENTRY_BYTES, ActionEntry, decode_action, encode_action
from memobuild.cache.options import TOKEN_ENV, URL_ENV
from memobuild.cache.store import LocalStore
from memobuild.errors import (
    InputError,
    InvalidDigestError,
    NetworkError,
    UnsupportedEntryError,
)
from memobuild.logging import logger
from memobuild.retry import Retrier, RetryAttempt, RetryPolicy, parse_retry_after
from memobuild.verify import parse_digest

__all__ = [
    "DEFAULT_TIMEOUT",
    "RETRYABLE_STATUS",
    "TOKEN_ENV",
    "URL_ENV",
    "RemoteAuthError",
    "RemoteCache",
    "RemoteError",
    "RemoteRejectedError",
    "RemoteUnreachableError",
    "RemoteUnusableError",
]

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
# Connecting to a cache on the same network is quick or broken, and a host that does not answer
# costs every attempt the whole connect timeout, so it is short; a large blob may take a while
# between chunks on a busy server, so reads and writes get longer.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=2.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=16, max_keepalive_connections=8)
CHUNK = 1 << 20
_ACTION_MEDIA_TYPE = "application/vnd.memobuild.action.v1+msgpack"

T = TypeVar("T")


class RemoteError(NetworkError):
    """A remote cache operation failed. ``status`` is the HTTP status (None: no answer);
    ``retry_after`` the seconds the server asked us to wait, if it did."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.retry_after = retry_after
        # No connection could be made (refused, unreachable, connect timeout): the server was
        # never reached, so nothing about the request itself went wrong.
        self.connect_failed = False


class RemoteUnreachableError(RemoteError):
    """Every attempt of one operation failed to connect: the server is down or unreachable.
    Retrying more operations would only cost the build more connect timeouts."""


class RemoteUnusableError(RemoteError):
    """The remote is not a cache this client can use, and asking again will not change that
    (a registry cache ref that names an image, not a cache)."""


class RemoteAuthError(RemoteError):
    """The server refused our credentials (401) or what they allow (403)."""


class RemoteRejectedError(RemoteError):
    """The server refused what we sent (400, 409, 411, 413...): ``detail`` is its reason."""

    def __init__(self, message: str, *, status: int, detail: str) -> None:
        super().__init__(message, status=status)
        self.detail = detail


def _public_url(url: str) -> tuple[httpx.URL, str]:
    """(the base URL, how messages show it); refuses what is not a plain http(s) base URL."""
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError) as err:
        raise InputError(f"remote cache URL: {err}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InputError(
            "remote cache URL must be http://HOST[:PORT][/PATH] or https://..., "
            f"not {parsed.copy_with(username=None, password=None)!s}"
        )
    if parsed.userinfo:
        raise InputError(f"remote cache URL must not hold credentials: set {TOKEN_ENV} instead")
    if parsed.query or parsed.fragment:
        raise InputError("remote cache URL must not have a query or fragment")
    base = parsed.copy_with(path=parsed.path.rstrip("/"))
    return base, str(base)


def _sha256(digest: str) -> str:
    algorithm, _ = parse_digest(digest)
    if algorithm != "sha256":
        raise InvalidDigestError(digest, "blobs are addressed by sha256 digests")
    return digest


def _blake3(key: str) -> str:
    algorithm, _ = parse_digest(key)
    if algorithm != "blake3":
        raise InvalidDigestError(key, "action keys are blake3 digests")
    return key


def _detail(response: httpx.Response) -> str:
    """The server's reason for an error status, short and printable."""
    try:
        text = response.read().decode("utf-8", "replace")
    except httpx.HTTPError:
        return ""
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    if isinstance(body, dict):
        parts = [str(body.get("error", ""))]
        parts += [f"{k}={v}" for k, v in body.items() if k != "error"]
        return "; ".join(p for p in parts if p)[:300]
    return str(body)[:300]


class RemoteCache:
    """A ``memobuild server`` (or anything speaking its protocol) at ``url``.

    ``token`` defaults to ``$MEMOBUILD_REMOTE_TOKEN``; ``policy`` to the defaults with any
    ``MEMOBUILD_RETRY_*`` applied (both read from ``environ``, default ``os.environ``).
    Thread-safe; ``close()`` when done (also wakes retries that are waiting, and makes every
    later call fail at once).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        policy: RetryPolicy | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._base, self.url = _public_url(url)
        token = token if token is not None else env.get(TOKEN_ENV) or None
        if token is not None and (not token.strip() or any(c in token for c in "\r\n")):
            raise InputError("remote cache token must be one non-empty line")
        self.authenticated = token is not None
        self.policy = policy if policy is not None else RetryPolicy.from_env(env)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._retries = 0
        self._retrier = Retrier(self.policy, sleep=self._closed.wait, on_retry=self._count_retry)
        headers = {"User-Agent": "memobuild"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token.strip()}"
        self._client = httpx.Client(
            base_url=self._base,
            headers=headers,
            timeout=timeout,
            limits=limits,
            follow_redirects=False,  # a redirect could carry the token elsewhere
            # trust_env stays on: HTTPS_PROXY/NO_PROXY and SSL_CERT_FILE apply, as for pip/curl.
        )

    def __repr__(self) -> str:
        return f"RemoteCache({self.url!r})"

    def __enter__(self) -> RemoteCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def retries(self) -> int:
        """How many attempts have been retried so far."""
        return self._retries

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        self._closed.set()
        self._client.close()

    def _count_retry(self, attempt: RetryAttempt) -> None:
        with self._lock:
            self._retries += 1

    # --- one request ------------------------------------------------------------------------

    def _where(self, path: str) -> str:
        return f"{self.url}{path}"

    def _check_open(self, what: str) -> None:
        if self._closed.is_set():
            raise RemoteError(f"{self.url}: {what}: the remote cache client is closed")

    def _status_error(self, response: httpx.Response, what: str) -> RemoteError:
        status = response.status_code
        if status == 401:
            how = "refused the token" if self.authenticated else f"needs a token ({TOKEN_ENV})"
            return RemoteAuthError(f"{self.url}: {what}: the server {how} (401)", status=status)
        if status == 403:
            return RemoteAuthError(
                f"{self.url}: {what}: the token does not allow this (403)", status=status
            )
        if status in RETRYABLE_STATUS:
            return RemoteError(
                f"{self.url}: {what}: {status} {response.reason_phrase}",
                status=status,
                retryable=True,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        detail = _detail(response)
        message = f"{self.url}: {what}: {status} {response.reason_phrase}" + (
            f": {detail}" if detail else ""
        )
        if 400 <= status < 500:
            return RemoteRejectedError(message, status=status, detail=detail)
        return RemoteError(message, status=status)

    def _transport_error(self, err: httpx.HTTPError, what: str) -> RemoteError:
        if isinstance(err, httpx.TimeoutException):
            timeout = RemoteError(
                f"{self.url}: {what}: timed out ({type(err).__name__})", retryable=True
            )
            timeout.connect_failed = isinstance(err, httpx.ConnectTimeout)
            return timeout
        retryable = isinstance(err, httpx.NetworkError | httpx.RemoteProtocolError)
        reason = str(err) or type(err).__name__
        error = RemoteError(f"{self.url}: {what}: {reason}", retryable=retryable)
        error.connect_failed = isinstance(err, httpx.ConnectError)
        return error

    def _attempt(self, what: str, operation: Callable[[], T]) -> T:
        """One attempt: httpx's errors become RemoteError (retryable or not)."""
        self._check_open(what)
        try:
            return operation()
        except httpx.HTTPError as err:
            raise self._transport_error(err, what) from err
        except RuntimeError as err:  # httpx: "the client has been closed", from another thread
            if self._closed.is_set():
                raise RemoteError(f"{self.url}: {what}: the remote cache client is closed") from err
            raise

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        """``operation`` under the retry policy; RemoteUnreachableError when no attempt could
        connect at all."""
        failures: list[RemoteError] = []

        def attempt() -> T:
            try:
                return self._attempt(what, operation)
            except RemoteError as err:
                failures.append(err)
                raise

        try:
            return self._retrier.call(attempt, what=what)
        except RemoteError as err:
            if not failures or not all(f.connect_failed for f in failures):
                raise
            count = len(failures)
            unreachable = RemoteUnreachableError(
                f"{err} (could not connect, {count} attempt{'s' if count != 1 else ''})"
            )
            unreachable.connect_failed = True
            raise unreachable from err

    def _head(self, path: str, what: str) -> bool:
        def once() -> bool:
            response = self._client.head(path)
            if response.status_code == 404:
                return False
            if response.status_code == 200:
                return True
            raise self._status_error(response, what)

        return self._call(what, once)

    # --- blobs ------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        """Whether the server holds the blob."""
        path = f"/v1/blobs/{_sha256(digest)}"
        return self._head(path, f"HEAD {path}")

    def get_blob(self, digest: str, dest: LocalStore, size: int | None = None) -> int | None:
        """Download a blob into ``dest``, verified; returns its size, or None if the server does
        not have it. ``size``, when known (a layer's), is enforced as the download streams.
        Raises CASIntegrityError when the content does not match (nothing is stored)."""
        path = f"/v1/blobs/{_sha256(digest)}"
        what = f"GET {path}"

        def once() -> int | None:
            with self._client.stream("GET", path) as response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    raise self._status_error(response, what)
                return self._receive_blob(response, digest, dest, size)

        return self._call(what, once)

    def _receive_blob(
        self, response: httpx.Response, digest: str, dest: LocalStore, size: int | None
    ) -> int:
        where = self._where(response.url.path)
        announced = response.headers.get("Content-Length")
        limit = size
        if limit is None and announced is not None and announced.isdigit():
            limit = int(announced)
        # Written once, hashed as it arrives; more bytes than ``limit`` stop the read at once
        # (they are not the blob), and nothing is stored unless digest and size match.
        with dest.blob_writer(digest, limit, where) as writer:
            for chunk in response.iter_bytes(CHUNK):
                writer.write(chunk)
            received = writer.offset
            writer.commit()
        return received

    def put_blob(self, digest: str, source: LocalStore, *, force: bool = False) -> int:
        """Upload a blob from ``source`` (verified there first) unless the server has it;
        returns the bytes sent (0 when it was already there). ``force`` uploads even if the
        server says it has it: its copy failed verification, and an upload replaces it."""
        path = f"/v1/blobs/{_sha256(digest)}"
        if not force and self.has_blob(digest):
            return 0
        blob = source.blob_path(digest)  # verified now: never upload corrupt bytes
        size = blob.stat().st_size
        what = f"PUT {path}"

        def once() -> int:
            with open(blob, "rb") as body:
                response = self._client.put(
                    path,
                    content=_file_chunks(body),
                    headers={
                        "Content-Length": str(size),
                        "Content-Type": "application/octet-stream",
                        "X-MemoBuild-Size": str(size),
                    },
                )
            if response.status_code in (200, 201):
                return size if response.status_code == 201 else 0
            raise self._status_error(response, what)

        return self._call(what, once)

    # --- action entries ---------------------------------------------------------------------

    def has_action(self, key: str) -> bool:
        path = f"/v1/actions/{_blake3(key)}"
        return self._head(path, f"HEAD {path}")

    def get_action(self, key: str) -> ActionEntry | None:
        """The entry the server holds for ``key`` (checked: envelope, schema, key), or None.
        Raises CorruptEntryError when what arrives is not a valid entry for ``key``."""
        path = f"/v1/actions/{_blake3(key)}"
        what = f"GET {path}"

        def once() -> bytes | None:
            with self._client.stream("GET", path) as response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    raise self._status_error(response, what)
                data = bytearray()
                for chunk in response.iter_bytes(CHUNK):
                    data += chunk
                    if len(data) > MAX_ENTRY_BYTES:
                        break  # decode_action refuses it as too large
                return bytes(data)

        data = self._call(what, once)
        if data is None:
            return None
        try:
            return decode_action(data, self._where(path), key)
        except UnsupportedEntryError as err:
            logger.info(f"{err}; treating it as a miss")
            return None

    def put_action(self, entry: ActionEntry) -> None:
        """Store ``entry`` on the server; its layer blobs must be there already (else the
        server answers 409, raised as RemoteRejectedError)."""
        path = f"/v1/actions/{_blake3(entry.key)}"
        data = encode_action(entry)
        what = f"PUT {path}"

        def once() -> None:
            response = self._client.put(
                path, content=data, headers={"Content-Type": _ACTION_MEDIA_TYPE}
            )
            if response.status_code not in (200, 201, 204):
                raise self._status_error(response, what)

        self._call(what, once)

    def action_size(self, entry: ActionEntry) -> int:
        """The bytes ``entry`` takes on the wire (for transfer accounting)."""
        return len(encode_action(entry))


def _file_chunks(body: BinaryIO) -> Iterator[bytes]:
    """A file's contents in CHUNK-sized pieces (httpx's own file reading uses 64 KiB)."""
    while chunk := body.read(CHUNK):
        yield chunk
