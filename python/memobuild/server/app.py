"""The cache server's HTTP face: routes, auth, limits, errors and metrics, on aiohttp.

Why aiohttp rather than Starlette + uvicorn: both are well kept, but this server's hot paths are
exactly where they differ.

- Large GETs: aiohttp hands an open file to ``loop.sendfile``, so a 256 MiB blob goes from the
  page cache to the socket in the kernel without passing through Python. uvicorn has no
  zero-copy send; Starlette's FileResponse reads and sends 64 KiB chunks through a thread each.
- Large PUTs: aiohttp's ``StreamReader`` gives whatever bytes have arrived, with flow control
  (the socket is paused when its buffer is full), so the body can be hashed and written in
  1 MiB batches in a worker thread while the next batch arrives (bodies.py).
- Control: ``Expect: 100-continue`` can be refused per route (a 413, 401 or 403 before the
  client sends a byte); a half-read request can be closed rather than drained; idle connections
  and unfinished headers are cut after ``keepalive_timeout``. One package (C-accelerated HTTP
  parser included) rather than three.

Range is parsed here (one ``bytes=a-b`` range, as OCI clients send) rather than through
``FileResponse``, which would also look for ``.gz``/``.br`` siblings of blob files and reopen
the file by path after the lease is taken.

Routes (all JSON errors are ``{"error": ...}`` plus details):

    GET  /healthz                      200 "ok" (never needs a token)
    GET  /metrics                      Prometheus text
    HEAD|GET|PUT /v1/blobs/sha256:<hex>
    HEAD|GET|PUT /v1/actions/blake3:<hex>
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from aiohttp import HttpVersion11, web

from memobuild.cache.entries import MAX_ENTRY_BYTES, decode_action
from memobuild.errors import (
    CacheCoherencyError,
    CorruptEntryError,
    InvalidDigestError,
    MemoBuildError,
    UnsupportedEntryError,
)
from memobuild.logging import logger
from memobuild.server.auth import Access, TokenSet
from memobuild.server.bodies import BodyIncomplete, BodyTimeout, read_all, stream_to
from memobuild.server.config import ServerConfig
from memobuild.server.eviction import Evictor
from memobuild.server.metrics import ServerMetrics
from memobuild.server.recency import DEFAULT_INTERVAL, UseRecorder
from memobuild.server.storage import BlobUpload, ServerStore, UploadResult
from memobuild.verify import parse_digest

__all__ = ["ACTION_MEDIA_TYPE", "DIGEST_HEADER", "SIZE_HEADER", "ServerState", "create_app"]

DIGEST_HEADER = "X-MemoBuild-Digest"
SIZE_HEADER = "X-MemoBuild-Size"
ACTION_MEDIA_TYPE = "application/vnd.memobuild.action.v1+msgpack"
# Bodies up to this size are read whole and stored in one worker-thread call; larger ones are
# streamed (bodies.stream_to).
SMALL_BODY = 256 << 10
_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII | re.IGNORECASE)
BLOB_ROUTE = "/v1/blobs/{digest}"
ACTION_ROUTE = "/v1/actions/{key}"
_WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ServerState:
    """Everything a request handler needs; one per application."""

    config: ServerConfig
    store: ServerStore
    tokens: TokenSet | None  # None: no auth (loopback only, see run.py)
    metrics: ServerMetrics
    recorder: UseRecorder
    evictor: Evictor


STATE = web.AppKey("memobuild_server_state", ServerState)


# --- responses -------------------------------------------------------------------------------


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _error(status: int, message: str, **details: Any) -> web.Response:
    return _json(status, {"error": message, **details})


def _not_found(request: web.Request) -> web.Response:
    if request.method == "HEAD":
        return web.Response(status=404)
    return _error(404, "not found")


class _Refused(Exception):
    """Raised by request parsing helpers: answer with ``response``."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _digest_param(request: web.Request, name: str, algorithm: str) -> str:
    value = request.match_info[name]
    try:
        algo, _ = parse_digest(value)
    except InvalidDigestError as err:
        raise _Refused(_error(400, str(err))) from err
    if algo != algorithm:
        raise _Refused(_error(400, f"expected a {algorithm} digest, not {value!r}"))
    return value


def _body_length(request: web.Request, limit: int, what: str) -> int:
    """The request's Content-Length, refused if absent (chunked) or over ``limit``."""
    if request.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
        raise _Refused(_error(411, "Content-Length required (chunked bodies are not accepted)"))
    length = request.content_length
    if length is None:
        raise _Refused(_error(411, "Content-Length required"))
    if length > limit:
        raise _Refused(_error(413, f"{what} of {length} bytes is over the limit", limit=limit))
    return length


def _declared_size(request: web.Request) -> int | None:
    value = request.headers.get(SIZE_HEADER)
    if value is None:
        return None
    if not value.isdigit():
        raise _Refused(_error(400, f"{SIZE_HEADER} must be a number of bytes, not {value!r}"))
    return int(value)


def _blob_limit(config: ServerConfig) -> int:
    if config.max_size is None:
        return config.max_blob_size
    return min(config.max_blob_size, config.max_size)


# --- auth, metrics and errors (middlewares) ----------------------------------------------------


def _auth_refusal(state: ServerState, request: web.Request) -> web.Response | None:
    if state.tokens is None or request.path == "/healthz":
        return None
    header = request.headers.get("Authorization")
    access = state.tokens.check(header)
    if access is Access.NONE:
        challenge = 'Bearer realm="memobuild"'
        if header is not None:
            challenge += ', error="invalid_token"'
        response = _error(401, "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = challenge
        return response
    needed = Access.WRITE if request.method in _WRITE_METHODS else Access.READ
    if access < needed:
        response = _error(403, "this token is read-only")
        response.headers["WWW-Authenticate"] = (
            'Bearer realm="memobuild", error="insufficient_scope"'
        )
        return response
    return None


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "other"


def _count(state: ServerState, request: web.Request, status: int, started: float) -> None:
    route = _route(request)
    state.metrics.requests.labels(request.method, route, str(status)).inc()
    state.metrics.request_seconds.labels(request.method, route).observe(
        time.perf_counter() - started
    )


def _close_if_body_unread(request: web.Request, response: web.StreamResponse) -> None:
    # Answering before the body is read: close the connection rather than let aiohttp read and
    # discard what may be gigabytes.
    if request.body_exists and not request.content.is_eof():
        response.force_close()


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth, then the handler; every answer is counted, every known error mapped to a status."""
    state = request.app[STATE]
    started = time.perf_counter()
    response: web.StreamResponse
    try:
        refusal = _auth_refusal(state, request)
        response = refusal if refusal is not None else await handler(request)
    except _Refused as refused:
        response = refused.response
    except web.HTTPException as exc:
        response = exc
    except (MemoBuildError, OSError) as err:
        logger.error(f"{request.method} {request.path}: {err}")
        response = _error(500, str(err))
    if not response.prepared:
        _close_if_body_unread(request, response)
    _count(state, request, response.status, started)
    return response


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: refuse a PUT before its body is sent when we can."""
    state = request.app[STATE]
    started = time.perf_counter()
    try:
        refusal = _auth_refusal(state, request)
        if refusal is None and request.method == "PUT":
            blobs = _route(request) == BLOB_ROUTE
            limit = _blob_limit(state.config) if blobs else MAX_ENTRY_BYTES
            _body_length(request, limit, "blob" if blobs else "action entry")
    except _Refused as refused:
        refusal = refused.response
    if refusal is not None:
        refusal.force_close()
        _count(state, request, refusal.status, started)
        return refusal
    if request.version < HttpVersion11:
        return None  # HTTP/1.0 has no interim responses: the body just follows
    if request.headers.get("Expect", "").lower() != "100-continue":
        failed = _error(417, "only 'Expect: 100-continue' is understood")
        failed.force_close()
        _count(state, request, failed.status, started)
        return failed
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None


# --- blobs -----------------------------------------------------------------------------------


async def head_blob(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    digest = _digest_param(request, "digest", "sha256")
    size = state.store.blob_size(digest)
    if size is None:
        state.metrics.misses.labels("blob").inc()
        return _not_found(request)
    state.metrics.hits.labels("blob").inc()
    return await _empty(request, 200, size, {DIGEST_HEADER: digest, "Accept-Ranges": "bytes"})


async def _empty(
    request: web.Request, status: int, length: int, headers: dict[str, str]
) -> web.StreamResponse:
    """A HEAD answer: the headers a GET would send, with the GET's Content-Length."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = length
    await response.prepare(request)
    await response.write_eof()
    return response


@dataclass(frozen=True)
class _ByteRange:
    start: int
    count: int
    partial: bool


def _byte_range(header: str | None, size: int) -> _ByteRange | None:
    """The part of a ``size``-byte blob a Range header asks for; None if unsatisfiable. A
    malformed or multi-range header is ignored (the whole blob), as RFC 9110 allows."""
    whole = _ByteRange(0, size, partial=False)
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return whole
    first, last = match.group(1), match.group(2)
    if not first:  # bytes=-N: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            return None
        start = max(size - suffix, 0)
        return _ByteRange(start, size - start, partial=True)
    start = int(first)
    if last and int(last) < start:
        return whole
    if start >= size:
        return None
    end = min(int(last), size - 1) if last else size - 1
    return _ByteRange(start, end - start + 1, partial=True)


async def get_blob(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    digest = _digest_param(request, "digest", "sha256")
    blob = await asyncio.to_thread(state.store.open_blob, digest)
    if blob is None:
        state.metrics.misses.labels("blob").inc()
        return _not_found(request)
    try:
        state.recorder.blob_used(digest)
        part = _byte_range(request.headers.get("Range"), blob.size)
        if part is None:
            refusal = _error(416, "range not satisfiable", size=blob.size)
            refusal.headers["Content-Range"] = f"bytes */{blob.size}"
            return refusal
        headers = {DIGEST_HEADER: digest, "Accept-Ranges": "bytes"}
        if part.partial:
            end = part.start + part.count - 1
            headers["Content-Range"] = f"bytes {part.start}-{end}/{blob.size}"
        response = web.StreamResponse(status=206 if part.partial else 200, headers=headers)
        response.content_type = "application/octet-stream"
        response.content_length = part.count
        await response.prepare(request)
        if part.count:
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("client went away")
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(
                    loop.sendfile(transport, blob.file, part.start, part.count),
                    state.config.deadline(part.count),
                )
            except (asyncio.TimeoutError, ConnectionError, OSError) as err:
                # Headers are out: the only way to say "failed" is to cut the connection.
                logger.info(f"GET {digest}: transfer cut off ({type(err).__name__})")
                transport.abort()
                return response
        await response.write_eof()
        state.metrics.bytes_sent.inc(part.count)
        state.metrics.hits.labels("blob").inc()
        return response
    finally:
        blob.close()


def _store_small_blob(
    state: ServerState, digest: str, data: bytes, declared: int | None
) -> UploadResult:
    upload = state.store.start_upload(digest)
    try:
        upload.write(data)
        result = state.store.finish_upload(upload, declared)
    finally:
        upload.close()
    if result.stored:
        state.evictor.run()
    return result


def _finish_large_blob(
    state: ServerState, upload: BlobUpload, declared: int | None
) -> UploadResult:
    result = state.store.finish_upload(upload, declared)
    upload.close()
    if result.stored:
        state.evictor.run()
    return result


async def put_blob(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    digest = _digest_param(request, "digest", "sha256")
    length = _body_length(request, _blob_limit(config), "blob")
    declared = _declared_size(request)
    received = state.metrics.bytes_received.inc
    try:
        if length <= SMALL_BODY:
            data = await read_all(request.content, length, config, received)
            result = await asyncio.to_thread(_store_small_blob, state, digest, data, declared)
        else:
            started = time.perf_counter()
            upload = await asyncio.to_thread(state.store.start_upload, digest)
            try:
                sinks = (upload.hash_chunks, upload.write_chunks)
                await stream_to(request.content, length, config, sinks, received)
                streamed = time.perf_counter()
                result = await asyncio.to_thread(_finish_large_blob, state, upload, declared)
            finally:
                upload.close()
            logger.debug(
                f"PUT {digest}: {length} bytes received and hashed in {streamed - started:.3f}s, "
                f"stored in {time.perf_counter() - streamed:.3f}s"
            )
    except BodyTimeout:
        logger.info(f"PUT {digest}: client too slow; gave up after {config.timeout:g}s idle")
        return _error(408, "request body too slow", timeout=config.timeout)
    except BodyIncomplete as err:
        logger.info(f"PUT {digest}: incomplete body ({err}); nothing stored")
        return _error(400, f"incomplete body: {err}")
    if not result.stored:
        reason = "digest" if result.digest != digest else "size"
        state.metrics.verification_failures.labels(reason).inc()
        logger.warning(
            f"PUT {digest}: refused, the body is {result.digest} ({result.size} bytes"
            + (f", declared {declared}" if declared is not None else "")
            + ")"
        )
        return _error(
            400,
            f"{reason} mismatch",
            expected=digest,
            actual=result.digest,
            size=result.size,
            declared_size=declared,
        )
    return _json(
        200 if result.existed else 201,
        {"digest": digest, "size": result.size},
        headers={DIGEST_HEADER: digest},
    )


# --- action entries ----------------------------------------------------------------------------


async def head_action(request: web.Request) -> web.StreamResponse:
    return await _get_action(request, body=False)


async def get_action(request: web.Request) -> web.StreamResponse:
    return await _get_action(request, body=True)


async def _get_action(request: web.Request, *, body: bool) -> web.StreamResponse:
    state = request.app[STATE]
    key = _digest_param(request, "key", "blake3")
    hit = await asyncio.to_thread(state.store.lookup_action, key)
    if hit is None:
        state.metrics.misses.labels("action").inc()
        state.recorder.action_miss()
        return _not_found(request)
    state.metrics.hits.labels("action").inc()
    state.recorder.action_hit(key, [layer.digest for layer in hit.entry.layers])
    headers = {"Content-Type": ACTION_MEDIA_TYPE}
    if not body:
        return await _empty(request, 200, len(hit.data), headers)
    state.metrics.bytes_sent.inc(len(hit.data))
    return web.Response(body=hit.data, headers=headers)


@dataclass(frozen=True)
class _ActionOutcome:
    status: int
    body: dict[str, Any]
    reason: str | None = None  # the verification failure, when refused


def _store_action(state: ServerState, key: str, data: bytes) -> _ActionOutcome:
    try:
        entry = decode_action(data, "request body")
    except (CorruptEntryError, UnsupportedEntryError) as err:
        return _ActionOutcome(400, {"error": "invalid action entry", "detail": str(err)}, "entry")
    if entry.key != key:
        return _ActionOutcome(
            400, {"error": "key mismatch", "expected": key, "actual": entry.key}, "key"
        )
    store = state.store
    with store.leased(layer.digest for layer in entry.layers):
        missing = store.missing_blobs(entry)
        existed = store.has_action(key)
        if not missing:
            try:
                store.put_action(entry)
            except CacheCoherencyError:
                missing = store.missing_blobs(entry)
    if missing:
        return _ActionOutcome(409, {"error": "missing blobs", "missing": missing})
    state.evictor.run()
    return _ActionOutcome(200 if existed else 201, {"key": key, "layers": len(entry.layers)})


async def put_action(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    key = _digest_param(request, "key", "blake3")
    length = _body_length(request, MAX_ENTRY_BYTES, "action entry")
    try:
        data = await read_all(
            request.content, length, state.config, state.metrics.bytes_received.inc
        )
    except BodyTimeout:
        return _error(408, "request body too slow", timeout=state.config.timeout)
    except BodyIncomplete as err:
        return _error(400, f"incomplete body: {err}")
    outcome = await asyncio.to_thread(_store_action, state, key, data)
    if outcome.reason is not None:
        state.metrics.verification_failures.labels(outcome.reason).inc()
        logger.warning(f"PUT action {key}: refused: {outcome.body}")
    return _json(outcome.status, outcome.body)


# --- service ----------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


async def metrics(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    text, content_type = await asyncio.to_thread(state.metrics.render)
    response = web.Response(body=text)
    response.headers["Content-Type"] = content_type
    return response


async def _flush_uses(state: ServerState) -> None:
    while True:
        await asyncio.sleep(DEFAULT_INTERVAL)
        try:
            await asyncio.to_thread(state.recorder.flush)
        except MemoBuildError as err:
            logger.warning(f"cannot record last uses: {err}")


def create_app(
    config: ServerConfig, tokens: TokenSet | None, store: ServerStore
) -> web.Application:
    """The application for ``store`` (which it closes on shutdown)."""
    recorder = UseRecorder(store)
    server_metrics = ServerMetrics.create(lambda: float(store.total_bytes()))
    state = ServerState(
        config=config,
        store=store,
        tokens=tokens,
        metrics=server_metrics,
        recorder=recorder,
        evictor=Evictor(store, config.max_size, recorder, server_metrics),
    )
    app = web.Application(middlewares=[_observe])
    app[STATE] = state
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/metrics", metrics, allow_head=False)
    blobs = app.router.add_resource(BLOB_ROUTE)
    blobs.add_route("HEAD", head_blob)
    blobs.add_route("GET", get_blob)
    blobs.add_route("PUT", put_blob, expect_handler=_expect)
    actions = app.router.add_resource(ACTION_ROUTE)
    actions.add_route("HEAD", head_action)
    actions.add_route("GET", get_action)
    actions.add_route("PUT", put_action, expect_handler=_expect)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        flusher = asyncio.create_task(_flush_uses(state))
        yield
        flusher.cancel()
        with suppress(asyncio.CancelledError):
            await flusher
        await asyncio.to_thread(recorder.flush)
        store.close()

    app.cleanup_ctx.append(lifecycle)
    return app
