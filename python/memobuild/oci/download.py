"""Downloading a blob from a registry straight into the local store, verified on the way.

``LocalStore.put_blob_file`` copies a file into the store, hashing it (in Rust) as it goes, and
publishes it only if it matches the digest. Given the read end of a pipe (``/proc/self/fd/N``)
it copies a download as it arrives: the blob is written once, into the store, verified once,
and nothing is stored if it does not match. The downloading thread decompresses the same bytes
for a layer's diff_id (the digest of its uncompressed tar, which the image config claims), so a
layer is read once for both checks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import threading
import zlib

from memobuild.cache.store import LocalStore
from memobuild.errors import CASIntegrityError, InvalidImageError
from memobuild.oci.image import OCI_LAYER, OCI_LAYER_GZIP, Descriptor
from memobuild.oci.layout import DIFF_ID_RECORD
from memobuild.oci.reference import Reference
from memobuild.oci.registry import RegistryClient
from memobuild.verify import Hasher

__all__ = ["OCTET_STREAM", "PIPE_BYTES", "LayerStream", "download_blob_to_store"]

PIPE_BYTES = 1 << 20
OCTET_STREAM = "application/octet-stream"  # a blob that is not a layer: no diff_id


class _GzipDiffId:
    """The diff_id of a gzip layer: its bytes decompressed and hashed on a thread of their own,
    as they arrive, so the download is not held up by it."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._hasher = Hasher("sha256")
        self._inflate = zlib.decompressobj(wbits=31)
        self._error: str | None = None
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="memobuild-pull-diff-id", daemon=True
        )
        self._thread.start()

    def feed(self, data: bytes) -> None:
        self._queue.put(data)

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:
                self._gunzip(data)

    def _gunzip(self, data: bytes) -> None:
        try:
            while data:
                self._hasher.update(self._inflate.decompress(data))
                data = b""
                if self._inflate.eof:  # a gzip member ended; another may follow
                    data = self._inflate.unused_data
                    if data:
                        self._inflate = zlib.decompressobj(wbits=31)
        except zlib.error as err:
            self._error = str(err)

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def result(self, where: str) -> str:
        """The diff_id of everything fed; InvalidImageError if it was not a gzip stream."""
        self.stop()
        if self._error is not None or not self._inflate.eof:
            reason = self._error or "truncated gzip stream"
            raise InvalidImageError(where, f"layer is not valid gzip: {reason}")
        self._hasher.update(self._inflate.flush())
        return self._hasher.digest()


class LayerStream:
    """A BlobSink (``registry.py``) that streams a blob into the store through a pipe, and
    computes a layer's diff_id from the same bytes: for plain layers it is the digest, for
    gzip ones the digest of what they decompress to; zstd layers and other blobs get none
    here (``layout.check_diff_id`` decides what a missing one means)."""

    def __init__(self, store: LocalStore, desc: Descriptor, media_type: str, where: str) -> None:
        self._store = store
        self._desc = desc
        self._media_type = media_type
        self._where = where
        self._thread: threading.Thread | None = None
        self._start()

    def _start(self) -> None:
        read_fd, self._write_fd = os.pipe()
        with contextlib.suppress(OSError):  # fewer, larger hand-overs between the threads
            fcntl.fcntl(self._write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._written = 0
        self._pending = bytearray()
        self._error: BaseException | None = None
        self._diff_id = _GzipDiffId() if self._media_type == OCI_LAYER_GZIP else None
        self._thread = threading.Thread(
            target=self._put, args=(read_fd,), name="memobuild-pull-store", daemon=True
        )
        self._thread.start()

    def _put(self, read_fd: int) -> None:
        try:
            self._store.put_blob_file(f"/proc/self/fd/{read_fd}", self._desc.digest)
        except BaseException as err:  # handed to the downloading thread, raised there
            self._error = err
        finally:
            os.close(read_fd)  # a writer still writing now gets EPIPE instead of blocking

    @property
    def offset(self) -> int:
        return self._written

    def write(self, data: bytes) -> None:
        # Network reads arrive in 64 KiB pieces; handed on in 1 MiB ones, the threads make a
        # sixteenth of the calls (and context switches) for the same bytes.
        self._pending += data
        self._written += len(data)
        if len(self._pending) >= PIPE_BYTES:
            self._flush()

    def _flush(self) -> None:
        data = bytes(self._pending)
        self._pending.clear()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._write_fd, view) :]
        except BrokenPipeError:
            self._join()
            raise self._error or BrokenPipeError("the store stopped reading") from None
        if self._diff_id is not None:
            self._diff_id.feed(data)

    def _join(self) -> None:
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._diff_id is not None:
            self._diff_id.stop()

    def reset(self) -> None:
        """Start over (the registry sent the whole blob again): the partial copy fails its
        verification in the store and is dropped; a new one starts."""
        self._join()
        self._start()

    def finish(self) -> str | None:
        """Wait for the store to verify and publish the blob; return the diff_id (None when
        not computed). CASIntegrityError if the content is not the digest's."""
        self._flush()
        self._join()
        if isinstance(self._error, CASIntegrityError):
            raise CASIntegrityError(
                self._desc.digest, self._error.actual, self._error.size, self._where
            )
        if self._error is not None:
            raise self._error
        if self._media_type == OCI_LAYER:
            return self._desc.digest
        if self._diff_id is None:
            return None
        return self._diff_id.result(self._where)

    def close(self) -> None:
        """Stop the store side if the download was given up (nothing is stored then)."""
        self._join()


def download_blob_to_store(
    client: RegistryClient,
    store: LocalStore,
    ref: Reference,
    desc: Descriptor,
    media_type: str = OCTET_STREAM,
) -> str | None:
    """Download the blob ``desc`` names from ``ref``'s repository into ``store``, verified;
    for a plain or gzip layer (``media_type``) its diff_id is recorded and returned (see
    ``layout.check_diff_id``). CASIntegrityError, and nothing stored, when the content is not
    the digest's; network failures are retried and resumed by the client."""
    sink = LayerStream(store, desc, media_type, f"{ref}: blob {desc.digest}")
    try:
        client.download_blob(ref, desc, sink)
        diff_id = sink.finish()
    finally:
        sink.close()
    if diff_id is not None:
        store.put_record(DIFF_ID_RECORD, desc.digest, diff_id)
    return diff_id
