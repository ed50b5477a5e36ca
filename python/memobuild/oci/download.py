"""Downloading a blob from a registry straight into the local store, verified on the way.

The blob goes through a ``LocalStore.blob_writer``: written once, into a temp file in the store,
hashed (in Rust) as it arrives, and published only if it matches its digest and size; nothing
is stored otherwise. A thread of its own decompresses the same bytes for a layer's diff_id (the
digest of its uncompressed tar, which the image config claims), so a layer is read once for
both checks and the download is not held up by the decompression.
"""

from __future__ import annotations

import queue
import threading
import zlib
from typing import TYPE_CHECKING

from memobuild.cache.store import BlobWriter, LocalStore
from memobuild.errors import InvalidImageError
from memobuild.oci.image import OCI_LAYER, OCI_LAYER_GZIP, Descriptor
from memobuild.oci.layout import DIFF_ID_RECORD
from memobuild.verify import Hasher

if TYPE_CHECKING:
    from memobuild.oci.reference import Reference
    from memobuild.oci.registry import RegistryClient

__all__ = ["HAND_OVER_BYTES", "OCTET_STREAM", "LayerStream", "download_blob_to_store"]

# Network reads arrive in 64 KiB pieces; handed on in 1 MiB ones, the store and the diff_id
# thread get a sixteenth of the calls (and the threads a sixteenth of the hand-overs).
HAND_OVER_BYTES = 1 << 20
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
    """A BlobSink (``registry.py``) that writes a blob into the store as it arrives and
    computes a layer's diff_id from the same bytes: for plain layers it is the digest, for
    gzip ones the digest of what they decompress to; zstd layers and other blobs get none
    here (``layout.check_diff_id`` decides what a missing one means)."""

    def __init__(self, store: LocalStore, desc: Descriptor, media_type: str, where: str) -> None:
        self._desc = desc
        self._media_type = media_type
        self._where = where
        self._writer: BlobWriter = store.blob_writer(desc.digest, desc.size, where)
        self._start()

    def _start(self) -> None:
        self._written = 0
        self._pending = bytearray()
        self._diff_id = _GzipDiffId() if self._media_type == OCI_LAYER_GZIP else None

    @property
    def offset(self) -> int:
        return self._written

    def write(self, data: bytes) -> None:
        self._pending += data
        self._written += len(data)
        if len(self._pending) >= HAND_OVER_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = bytes(self._pending)
        self._pending.clear()
        self._writer.write(data)
        if self._diff_id is not None:
            self._diff_id.feed(data)

    def _stop_diff_id(self) -> None:
        if self._diff_id is not None:
            self._diff_id.stop()

    def reset(self) -> None:
        """Start over (the registry sent the whole blob again): what was written is dropped."""
        self._stop_diff_id()
        self._writer.reset()
        self._start()

    def finish(self) -> str | None:
        """Verify the blob and publish it in the store; return the diff_id (None when not
        computed). CASIntegrityError, and nothing stored, if the content is not the digest's."""
        self._flush()
        try:
            self._writer.commit()
        finally:
            self._stop_diff_id()
        if self._media_type == OCI_LAYER:
            return self._desc.digest
        if self._diff_id is None:
            return None
        return self._diff_id.result(self._where)

    def close(self) -> None:
        """Give the download up if it was not finished (nothing is stored then)."""
        self._writer.abort()
        self._stop_diff_id()


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
