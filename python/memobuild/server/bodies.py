"""Reading request bodies: bounded in time, and pipelined with the work done on them.

A body is read chunk by chunk from aiohttp's stream. Each read may wait at most ``timeout``
seconds (a client that stops sending is cut off) and the whole body at most
``ServerConfig.deadline(length)`` (a client that trickles is cut off too). Chunks are gathered
into batches of ``BATCH`` bytes, handed to the sinks (the hasher, the temp file) in worker
threads, in parallel (hashing and writing both release the GIL), while the event loop reads the
next batch: one batch in flight at a time, which keeps memory per upload bounded and the
socket's backpressure intact. A batch is the list of chunks as aiohttp delivered them: joining
them into one buffer would copy every byte again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiohttp import StreamReader, web

from memobuild.server.config import ServerConfig

__all__ = ["BATCH", "BodyIncomplete", "BodyTimeout", "read_all", "stream_to"]

BATCH = 1 << 20


class BodyTimeout(Exception):
    """The client sent too slowly, or stopped."""


class BodyIncomplete(Exception):
    """The body ended before its Content-Length (the client went away)."""


class _Reader:
    """One body's reads, each bounded by the idle timeout and the overall deadline."""

    def __init__(
        self,
        content: StreamReader,
        length: int,
        config: ServerConfig,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._content = content
        self._left = length
        self._idle = config.timeout
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + config.deadline(length)
        self._on_bytes = on_bytes

    async def read(self) -> bytes:
        """The next chunk; b"" once ``length`` bytes have come."""
        if self._left <= 0:
            return b""
        wait = min(self._idle, self._deadline - self._loop.time())
        try:
            chunk = await asyncio.wait_for(self._content.readany(), max(wait, 0.0))
        except asyncio.TimeoutError as err:
            raise BodyTimeout from err
        except (web.RequestPayloadError, OSError) as err:  # e.g. the client closed early
            raise BodyIncomplete(str(err) or type(err).__name__) from err
        if not chunk:
            raise BodyIncomplete(f"body ended {self._left} bytes short of its Content-Length")
        self._left -= len(chunk)
        self._on_bytes(len(chunk))
        return chunk


async def read_all(
    content: StreamReader, length: int, config: ServerConfig, on_bytes: Callable[[int], None]
) -> bytes:
    """The whole body (for small bodies: action entries, small blobs)."""
    reader = _Reader(content, length, config, on_bytes)
    parts: list[bytes] = []
    while chunk := await reader.read():
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def stream_to(
    content: StreamReader,
    length: int,
    config: ServerConfig,
    sinks: Sequence[Callable[[list[bytes]], None]],
    on_bytes: Callable[[int], None],
) -> None:
    """Feed the body to every one of ``sinks`` in batches of about BATCH bytes (lists of the
    chunks as they came, so nothing is copied on the way). The sinks of a batch run at once,
    each in a worker thread; the next batch is handed over once they are all done with it."""
    reader = _Reader(content, length, config, on_bytes)
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[None]] = []
    batch: list[bytes] = []
    batched = 0
    try:
        while True:
            chunk = await reader.read()
            if chunk:
                batch.append(chunk)
                batched += len(chunk)
            if batch and (batched >= BATCH or not chunk):
                await _all_done(pending)
                pending = [loop.run_in_executor(None, sink, batch) for sink in sinks]
                batch, batched = [], 0
            if not chunk:
                break
        await _all_done(pending)
    finally:
        if pending:
            # Let the work in flight finish before the caller closes the file under it
            # (BlobUpload.close waits for it too); the error that got us here is the news.
            await asyncio.wait(pending)
            for future in pending:
                if not future.cancelled():
                    future.exception()


async def _all_done(pending: list[asyncio.Future[None]]) -> None:
    """Wait for every future; raise the first failure once all are done."""
    if pending:
        await asyncio.wait(pending)
        for future in pending:
            future.result()
        pending.clear()
