"""A client for the OCI Distribution API v1.1: manifests and blobs, read and written.

One ``RegistryClient`` serves every registry a build talks to. Per registry it finds out once
how to talk to it (``GET /v2/``: the scheme, and which authentication it asks for, see
``auth.py``), then sends each operation with the right Authorization header. Every operation is
retried under the retry policy (``retry.py``) when its failure is retryable: connection errors,
timeouts, dropped connections, HTTP 429 and 5xx. A 401 is answered by authenticating, once;
403 and 404 and other client errors are final, with the registry's own error code and message.

TLS is verified against the system's CA store, plus a CA bundle when one is given
(``MEMOBUILD_REGISTRY_CA`` or ``RegistryOptions.ca_bundle``). Only a registry named in
``RegistryOptions.insecure`` (``--insecure-registry``) is spoken to without verification, and
over plain HTTP when it does not speak TLS at all.

Blob downloads are streamed into a caller's ``BlobSink`` and resumed where they broke off
(``Range``) when a retry follows a dropped connection. Uploads skip blobs the repository has
(``HEAD``), try cross-repository mounts, and send small blobs in one ``PUT`` and large ones in
``PATCH`` chunks, so a failed chunk is resent alone.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar, Union
from urllib.parse import urljoin

import httpx

from memobuild import __version__
from memobuild.errors import (
    CASIntegrityError,
    InputError,
    InvalidImageError,
    MemoBuildError,
    NetworkError,
    RegistryAuthError,
    RegistryError,
    RegistryNotFoundError,
)
from memobuild.logging import logger
from memobuild.oci.auth import Authenticator, Credentials
from memobuild.oci.image import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_DOCUMENT_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    sniff_document,
)
from memobuild.oci.reference import Reference
from memobuild.retry import Retrier, RetryAttempt, RetryPolicy, parse_retry_after
from memobuild.verify import digest_bytes, parse_digest, verify_bytes

__all__ = [
    "ENV_CA",
    "MANIFEST_ACCEPT",
    "BlobSink",
    "ManifestResponse",
    "RegistryClient",
    "RegistryOptions",
    "UploadResult",
]

ENV_CA = "MEMOBUILD_REGISTRY_CA"
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
_T = TypeVar("_T")
BlobSource = Union[bytes, str, "os.PathLike[str]"]  # a blob's content, or the file holding it
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
UPLOAD_READ = 1 << 20


@dataclass(frozen=True)
class RegistryOptions:
    """How to talk to registries.

    ``insecure``: registries (host[:port], as a reference names them) that may be spoken to
    over plain HTTP or TLS without verification; nothing else is. ``ca_bundle``: a PEM file of
    extra trusted CAs. ``timeout``: seconds a connect, read or write may stall.
    ``concurrency``: blobs moved at once. Blobs larger than ``chunk_size`` are uploaded in
    ``PATCH`` chunks of that size.
    """

    insecure: frozenset[str] = frozenset()
    ca_bundle: Path | None = None
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 3
    chunk_size: int = 32 << 20
    user_agent: str = f"memobuild/{__version__}"

    def __post_init__(self) -> None:
        object.__setattr__(self, "insecure", frozenset(self.insecure))
        if self.concurrency < 1:
            raise InputError(f"registry concurrency must be >= 1, not {self.concurrency}")
        if self.chunk_size < 1 << 16:
            raise InputError(f"registry chunk size must be >= 64 KiB, not {self.chunk_size}")
        if self.ca_bundle is not None and not Path(self.ca_bundle).is_file():
            raise InputError(f"{self.ca_bundle}: CA bundle does not exist")

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        insecure: Sequence[str] = (),
        ca_bundle: str | os.PathLike[str] | None = None,
    ) -> RegistryOptions:
        """Options from arguments, with ``MEMOBUILD_REGISTRY_CA`` as the CA bundle when none is
        given and the retry policy from ``MEMOBUILD_RETRY_*``."""
        env = os.environ if environ is None else environ
        bundle = ca_bundle if ca_bundle is not None else (env.get(ENV_CA) or None)
        return cls(
            insecure=frozenset(insecure),
            ca_bundle=Path(bundle) if bundle is not None else None,
            retry=RetryPolicy.from_env(env),
        )


@dataclass(frozen=True)
class ManifestResponse:
    """A manifest or index as the registry served it: bytes, media type, digest (verified)."""

    data: bytes
    media_type: str
    digest: str

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES


@dataclass(frozen=True)
class UploadResult:
    """What pushing one blob took: ``"exists"`` (nothing sent), ``"mounted"`` (from
    ``mounted_from``) or ``"uploaded"``."""

    digest: str
    how: str
    mounted_from: str | None = None


class BlobSink(Protocol):
    """Where a downloaded blob goes: bytes in order from ``offset``; ``reset`` starts over."""

    @property
    def offset(self) -> int: ...
    def write(self, data: bytes) -> None: ...
    def reset(self) -> None: ...


def _is_tls_error(err: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _registry_error_detail(response: httpx.Response) -> tuple[str | None, str]:
    """(first error code, "CODE: message; ...") from a Distribution API error body."""
    try:
        doc = json.loads(response.content[:65536])
    except (ValueError, httpx.ResponseNotRead):
        return None, ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return None, ""
    parts, first = [], None
    for item in errors[:3]:
        if isinstance(item, dict):
            code, message = item.get("code"), item.get("message")
            first = first or (code if isinstance(code, str) else None)
            parts.append(f"{code}: {message}" if message else str(code))
    return first, "; ".join(parts)


class RegistryClient:
    """Talks to registries; thread-safe (one connection pool per trust setting)."""

    def __init__(
        self,
        options: RegistryOptions | None = None,
        *,
        credentials: Callable[[str], Credentials | None] | None = None,
        on_retry: Callable[[RetryAttempt], None] | None = None,
    ) -> None:
        self.options = options if options is not None else RegistryOptions.from_env()
        self._retrier = Retrier(self.options.retry, on_retry=on_retry)
        timeout = httpx.Timeout(self.options.timeout)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        headers = {"User-Agent": self.options.user_agent}
        context = ssl.create_default_context()
        if self.options.ca_bundle is not None:
            try:
                context.load_verify_locations(cafile=os.fspath(self.options.ca_bundle))
            except (OSError, ssl.SSLError) as err:
                raise InputError(f"{self.options.ca_bundle}: not a PEM CA bundle: {err}") from None
        self._verified = httpx.Client(
            verify=context, timeout=timeout, limits=limits, headers=headers, follow_redirects=True
        )
        self._unverified = httpx.Client(
            verify=False,  # noqa: S501 - only for registries the user named insecure
            timeout=timeout,
            limits=limits,
            headers=headers,
            follow_redirects=True,
        )
        self.auth = Authenticator(self._send_token_request, credentials)
        self._bases: dict[str, str] = {}
        self._lock = threading.Lock()
        self._ping_lock = threading.Lock()
        self._owner = True

    def sharing(self, *, on_retry: Callable[[RetryAttempt], None] | None = None) -> RegistryClient:
        """A client for another user in the same build (a registry cache beside the pulls and
        pushes): it shares this one's connections, what it learnt of each registry and its
        tokens, and has its own retry hook (``on_retry``). Closing it closes nothing shared."""
        view = copy.copy(self)
        view._retrier = Retrier(self.options.retry, on_retry=on_retry)
        view._owner = False
        return view

    def close(self) -> None:
        if self._owner:
            self._verified.close()
            self._unverified.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- connections ----------------------------------------------------------------------

    def _client(self, registry: str) -> httpx.Client:
        return self._unverified if registry in self.options.insecure else self._verified

    def _send_token_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.netloc.decode("ascii")
        client = self._unverified if host in self.options.insecure else self._verified
        response = client.send(request)
        response.read()
        return response

    def _connect_error(self, registry: str, err: httpx.HTTPError) -> MemoBuildError:
        tls = _is_tls_error(err)
        if tls is not None:
            hint = (
                f"give its CA certificate (a PEM file) with {ENV_CA}, or, for a test registry "
                f"only, --insecure-registry {registry}"
            )
            if registry in self.options.insecure:
                hint = "it is marked insecure but its TLS handshake still failed"
            return RegistryError(f"{registry}: TLS error: {tls.reason or tls}; {hint}")
        return NetworkError(f"{registry}: {type(err).__name__}: {err or 'connection failed'}")

    def _base(self, registry: str) -> str:
        """``scheme://registry`` after one ``GET /v2/`` (which also learns the registry's
        authentication challenge). Insecure registries that do not speak TLS get http."""
        with self._lock:
            known = self._bases.get(registry)
        if known is not None:
            return known
        with self._ping_lock:  # one ping per registry, however many threads ask at once
            with self._lock:
                known = self._bases.get(registry)
            return known if known is not None else self._ping(registry)

    def _ping(self, registry: str) -> str:
        schemes = ["https", "http"] if registry in self.options.insecure else ["https"]
        last: MemoBuildError | None = None
        for scheme in schemes:
            base = f"{scheme}://{registry}"
            try:
                response = self._client(registry).get(f"{base}/v2/")
            except httpx.HTTPError as err:
                last = self._connect_error(registry, err)
                if _is_tls_error(err) is None:
                    break  # not a TLS problem: plain HTTP will not fare better
                continue
            if response.status_code == 401:
                self.auth.learn(registry, response)
            elif response.status_code == 200:
                self.auth.no_challenge(registry)
            elif response.status_code in RETRYABLE_STATUS:
                raise self._status_error(registry, response, "GET /v2/")
            with self._lock:
                self._bases[registry] = base
            logger.debug(f"{registry}: speaking to {base}")
            return base
        assert last is not None  # noqa: S101 - the loop ran at least once
        raise last

    # --- one request ----------------------------------------------------------------------

    def _status_error(self, registry: str, response: httpx.Response, what: str) -> RegistryError:
        code, detail = _registry_error_detail(response)
        status = response.status_code
        message = f"{registry}: {what}: HTTP {status}" + (f" ({detail})" if detail else "")
        if status == 403:
            return RegistryAuthError(message + ": access denied", status=status, code=code)
        if status == 404:
            return RegistryNotFoundError(message, status=status, code=code)
        return RegistryError(
            message,
            status=status,
            code=code,
            retryable=status in RETRYABLE_STATUS,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )

    def _send(
        self,
        registry: str,
        scopes: Sequence[str],
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | Callable[[], Iterator[bytes]] | None = None,
        params: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send one request, authenticating on a 401 (then once more). ``body`` is bytes or
        makes a fresh stream per send. The caller checks the status; with ``stream`` it closes
        the response, else the body has been read. Transport failures become NetworkError."""
        client = self._client(registry)
        # Merged, not replaced: an upload URL carries the registry's own state in its query.
        target = httpx.URL(url).copy_merge_params(params) if params else httpx.URL(url)
        for attempt in (1, 2):
            content = body() if callable(body) else body
            request = client.build_request(
                method, target, headers=dict(headers or {}), content=content
            )
            authorization = self.auth.header(registry, scopes)
            if authorization is not None:
                request.headers["Authorization"] = authorization
            try:
                response = client.send(request, stream=stream)
            except httpx.HTTPError as err:
                raise self._connect_error(registry, err) from None
            if response.status_code != 401:
                return response
            response.read()
            response.close()
            if attempt == 2:
                raise self.auth.refused(registry, scopes)
            self.auth.challenged(registry, scopes, response)
        raise AssertionError("unreachable")

    def _call(self, what: str, operation: Callable[[], _T]) -> _T:
        return self._retrier.call(operation, what=what)

    # --- manifests ------------------------------------------------------------------------

    def _manifest_url(self, ref: Reference, identifier: str | None = None) -> str:
        return f"{self._base(ref.registry)}/v2/{ref.path}/manifests/{identifier or ref.identifier}"

    def manifest(self, ref: Reference, digest: str | None = None) -> ManifestResponse:
        """The manifest or index ``ref`` names (or ``digest`` in its repository), verified: by
        digest when asked by digest, else against the registry's ``Docker-Content-Digest``."""
        wanted = digest or ref.digest
        what = f"GET manifest {ref.path}:{wanted or ref.identifier}"

        def get() -> ManifestResponse:
            response = self._send(
                ref.registry,
                [ref.scope("pull")],
                "GET",
                self._manifest_url(ref, wanted),
                headers={"Accept": MANIFEST_ACCEPT},
                stream=True,
            )
            with contextlib.closing(response):
                if response.status_code != 200:
                    response.read()
                    raise self._status_error(ref.registry, response, what)
                data = self._read_limited(ref.registry, response, MAX_DOCUMENT_BYTES, what)
            actual = digest_bytes(data, "sha256")
            claimed = wanted or response.headers.get("docker-content-digest")
            if claimed is not None and claimed.startswith("sha256:") and claimed != actual:
                raise CASIntegrityError(claimed, actual, len(data), f"{ref.registry}: {what}")
            header_type = response.headers.get("content-type", "").split(";")[0].strip()
            media_type = sniff_document(data, f"{ref}: manifest {actual}")
            if media_type not in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
                media_type = header_type
            if media_type not in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
                raise InvalidImageError(
                    f"{ref}",
                    f"the registry served a {media_type or 'document'} that is neither "
                    "an image manifest nor an image index (a Docker schema 1 image?)",
                )
            return ManifestResponse(data, media_type, actual)

        return self._call(what, get)

    def resolve(self, ref: Reference) -> str | None:
        """The digest ``ref``'s tag points at, from one ``HEAD`` (no body, and not counted by
        Docker Hub's pull limit); None if the registry does not say."""
        what = f"HEAD manifest {ref.path}:{ref.identifier}"

        def head() -> str | None:
            response = self._send(
                ref.registry,
                [ref.scope("pull")],
                "HEAD",
                self._manifest_url(ref),
                headers={"Accept": MANIFEST_ACCEPT},
            )
            if response.status_code != 200:
                raise self._status_error(ref.registry, response, what)
            digest = response.headers.get("docker-content-digest")
            if not isinstance(digest, str):
                return None
            try:
                parse_digest(digest)
            except MemoBuildError:
                return None
            return digest

        return self._call(what, head)

    def put_manifest(self, ref: Reference, data: bytes, media_type: str) -> str:
        """Push a manifest under ``ref``'s tag (or digest); returns its digest, checked against
        what the registry computed."""
        digest = digest_bytes(data, "sha256")
        if ref.digest is not None and ref.digest != digest:
            raise InputError(f"{ref}: the manifest's digest is {digest}, not the one named")
        what = f"PUT manifest {ref.path}:{ref.identifier}"

        def put() -> str:
            response = self._send(
                ref.registry,
                [ref.scope("pull,push")],
                "PUT",
                self._manifest_url(ref, ref.tag if ref.digest is None else ref.digest),
                headers={"Content-Type": media_type},
                body=data,
            )
            if response.status_code not in (200, 201):
                raise self._status_error(ref.registry, response, what)
            answered = response.headers.get("docker-content-digest")
            if answered is not None and answered != digest:
                raise CASIntegrityError(digest, answered, len(data), f"{ref.registry}: {what}")
            return digest

        return self._call(what, put)

    # --- blobs: reading -------------------------------------------------------------------

    def _blob_url(self, ref: Reference, digest: str) -> str:
        parse_digest(digest)
        return f"{self._base(ref.registry)}/v2/{ref.path}/blobs/{digest}"

    @staticmethod
    def _read_limited(registry: str, response: httpx.Response, limit: int, what: str) -> bytes:
        out = bytearray()
        try:
            for chunk in response.iter_bytes():
                out += chunk
                if len(out) > limit:
                    raise InvalidImageError(registry, f"{what}: larger than {limit} bytes")
        except httpx.HTTPError as err:
            raise NetworkError(f"{registry}: {what}: {type(err).__name__}: {err}") from None
        return bytes(out)

    def blob_bytes(self, ref: Reference, desc: Descriptor) -> bytes:
        """A small blob (an image config), verified against ``desc``."""
        if desc.size > MAX_DOCUMENT_BYTES:
            raise InvalidImageError(str(ref), f"blob {desc.digest} is {desc.size} bytes")
        what = f"GET blob {ref.path}@{desc.digest}"

        def get() -> bytes:
            response = self._send(
                ref.registry, [ref.scope("pull")], "GET", self._blob_url(ref, desc.digest),
                stream=True,
            )  # fmt: skip
            with contextlib.closing(response):
                if response.status_code != 200:
                    response.read()
                    raise self._status_error(ref.registry, response, what)
                data = self._read_limited(ref.registry, response, desc.size, what)
            verify_bytes(data, desc.digest, where=f"{ref.registry}: {what}")
            return data

        return self._call(what, get)

    def download_blob(self, ref: Reference, desc: Descriptor, sink: BlobSink) -> None:
        """Stream the blob into ``sink``, ``desc.size`` bytes in all. A retry after a broken
        transfer asks for the rest only (``Range``); a registry that answers with the whole
        blob instead makes the sink start over. The caller verifies the digest."""
        what = f"GET blob {ref.path}@{desc.digest}"
        url = self._blob_url(ref, desc.digest)

        def get() -> None:
            start = sink.offset
            if start > desc.size:
                sink.reset()
                start = 0
            if start == desc.size and desc.size > 0:
                return
            # The blob's exact bytes: no transfer compression, which would also garble ranges.
            headers = {"Accept-Encoding": "identity"}
            if start:
                headers["Range"] = f"bytes={start}-"
            response = self._send(
                ref.registry, [ref.scope("pull")], "GET", url, headers=headers, stream=True
            )
            with contextlib.closing(response):
                if response.status_code == 200 and start:
                    sink.reset()  # the registry ignored the range: take it from the start
                elif response.status_code == 206 and start:
                    first = response.headers.get("content-range", "").split(" ")[-1].split("-")[0]
                    if first != str(start):
                        raise RegistryError(
                            f"{ref.registry}: {what}: asked for bytes from {start}, got "
                            f"{response.headers.get('content-range')!r}"
                        )
                elif response.status_code != 200:
                    response.read()
                    raise self._status_error(ref.registry, response, what)
                try:
                    for chunk in response.iter_raw():
                        if sink.offset + len(chunk) > desc.size:
                            raise CASIntegrityError(
                                desc.digest, "(more bytes than its size)", sink.offset + len(chunk),
                                f"{ref.registry}: {what}",
                            )  # fmt: skip
                        sink.write(chunk)
                except httpx.HTTPError as err:
                    raise NetworkError(
                        f"{ref.registry}: {what}: broken off after {sink.offset} of "
                        f"{desc.size} bytes ({type(err).__name__})"
                    ) from None
            if sink.offset != desc.size:
                raise NetworkError(
                    f"{ref.registry}: {what}: ended after {sink.offset} of {desc.size} bytes"
                )

        self._call(what, get)

    # --- blobs: writing -------------------------------------------------------------------

    def blob_exists(self, ref: Reference, digest: str) -> bool:
        """Whether ``ref``'s repository has the blob (one ``HEAD``)."""
        what = f"HEAD blob {ref.path}@{digest}"

        def head() -> bool:
            response = self._send(
                ref.registry, [ref.scope("pull,push")], "HEAD", self._blob_url(ref, digest)
            )
            if response.status_code == 200:
                return True
            if response.status_code == 404:
                return False
            raise self._status_error(ref.registry, response, what)

        return self._call(what, head)

    def _location(self, ref: Reference, response: httpx.Response, what: str) -> str:
        location: str | None = response.headers.get("location")
        if not location:
            raise RegistryError(f"{ref.registry}: {what}: no Location in the answer")
        return urljoin(str(response.request.url), location)

    def _start_upload(self, ref: Reference, digest: str, mount_from: str | None) -> str | None:
        """POST an upload session and return its URL; with ``mount_from`` (a repository path
        in the same registry) ask to mount the blob from there instead: None if it was."""
        scopes = [ref.scope("pull,push")]
        params: dict[str, str] = {}
        if mount_from is not None:
            scopes.append(f"repository:{mount_from}:pull")
            params = {"mount": digest, "from": mount_from}
        what = f"POST upload {ref.path}" + (f" (mount from {mount_from})" if mount_from else "")
        response = self._send(
            ref.registry,
            scopes,
            "POST",
            f"{self._base(ref.registry)}/v2/{ref.path}/blobs/uploads/",
            params=params,
            body=b"",
        )
        if response.status_code == 201 and mount_from is not None:
            return None
        if response.status_code != 202:
            raise self._status_error(ref.registry, response, what)
        return self._location(ref, response, what)

    def _upload_offset(self, ref: Reference, location: str) -> int | None:
        """How many bytes an upload session holds (``GET``, its ``Range``); None if the
        registry no longer knows the session."""
        response = self._send(ref.registry, [ref.scope("pull,push")], "GET", location)
        if response.status_code == 404:
            return None
        if response.status_code != 204:
            raise self._status_error(ref.registry, response, "GET upload status")
        last = response.headers.get("range", "0--1").rsplit("-", 1)[-1]
        return int(last) + 1 if last.isdigit() else 0

    def upload_blob(
        self,
        ref: Reference,
        digest: str,
        size: int,
        source: BlobSource,
        mount_from: Sequence[str] = (),
    ) -> UploadResult:
        """Put the blob (``source``: its bytes, or the file holding it) into ``ref``'s
        repository unless it is there already, mounting it from one of ``mount_from``
        (repository paths in the same registry) when the registry lets it. Blobs up to
        ``chunk_size`` go in one PUT, larger ones in PATCH chunks; a retry after a failed
        chunk continues where the registry says it stands."""
        if self.blob_exists(ref, digest):
            return UploadResult(digest, "exists")
        session = _UploadSession()
        for source in mount_from:
            if source == ref.path:
                continue
            try:
                location = self._call(
                    f"mount {digest} from {source}",
                    functools.partial(self._start_upload, ref, digest, source),
                )
            except (RegistryAuthError, RegistryNotFoundError) as err:
                logger.debug(f"{ref.registry}: no mount of {digest} from {source}: {err}")
                continue
            if location is None:
                return UploadResult(digest, "mounted", source)
            # Not mounted: the registry opened an upload session instead; use it.
            session.location = location
            break
        what = f"upload {ref.path}@{digest} ({size} bytes)"
        attempt = functools.partial(self._upload_attempt, ref, digest, size, source, session)
        self._call(what, attempt)
        return UploadResult(digest, "uploaded")

    def _upload_attempt(
        self,
        ref: Reference,
        digest: str,
        size: int,
        source: BlobSource,
        session: _UploadSession,
    ) -> None:
        what = f"upload {ref.path}@{digest}"
        if session.location is not None and session.started:
            offset = self._upload_offset(ref, session.location)
            if offset is None or offset > size:
                session.location = None
            else:
                session.offset = offset
        if session.location is None:
            session.location = self._start_upload(ref, digest, None)
            session.offset = 0
        assert session.location is not None  # noqa: S101 - no mount was asked for
        session.started = True
        if size <= self.options.chunk_size and session.offset == 0:
            self._finish(ref, session.location, digest, source, size, what)
            return
        while session.offset < size:
            length = min(self.options.chunk_size, size - session.offset)
            session.location = self._patch(ref, session.location, source, session.offset, length)
            session.offset += length
        self._finish(ref, session.location, digest, None, 0, what)

    def _patch(self, ref: Reference, url: str, source: BlobSource, offset: int, length: int) -> str:
        what = f"PATCH upload {ref.path} bytes {offset}-{offset + length - 1}"
        response = self._send(
            ref.registry,
            [ref.scope("pull,push")],
            "PATCH",
            url,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + length - 1}",
                "Content-Length": str(length),
            },
            body=functools.partial(_part, source, offset, length),
        )
        if response.status_code != 202:
            raise self._status_error(ref.registry, response, what)
        return self._location(ref, response, what)

    def _finish(
        self,
        ref: Reference,
        url: str,
        digest: str,
        source: BlobSource | None,
        length: int,
        what: str,
    ) -> None:
        """The closing ``PUT ?digest=``, with the whole blob (monolithic) or nothing."""
        body: bytes | Callable[[], Iterator[bytes]] = b""
        if source is not None:
            body = functools.partial(_part, source, 0, length)
        response = self._send(
            ref.registry,
            [ref.scope("pull,push")],
            "PUT",
            url,
            params={"digest": digest},
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            body=body,
        )
        if response.status_code != 201:
            code, _ = _registry_error_detail(response)
            if code == "DIGEST_INVALID":
                raise CASIntegrityError(
                    digest, "another digest (computed by the registry)", length, what
                )
            raise self._status_error(ref.registry, response, f"{what}: PUT")


@dataclass
class _UploadSession:
    """An upload in progress, kept across retries so a retry can resume it."""

    location: str | None = None
    offset: int = 0
    started: bool = False


def _part(source: BlobSource, offset: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of the blob from ``offset``: a slice of bytes, or read from the file
    as they are sent."""
    if isinstance(source, bytes):
        yield source[offset : offset + length]
        return
    path = source
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left > 0:
            chunk = f.read(min(UPLOAD_READ, left))
            if not chunk:
                raise InputError(f"{path}: shorter than the {offset + length} bytes expected")
            left -= len(chunk)
            yield chunk
