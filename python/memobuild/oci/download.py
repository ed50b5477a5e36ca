"""Downloading a blob from a registry straight into the local store, verified on the way.

The blob goes through a ``LocalStore.blob_writer``: written once, into a temp file in the store,
hashed (in Rust) as it arrives, and published only if it matches its digest and size; nothing
is stored otherwise. That is all a download checks, as ``skopeo copy`` and containerd's fetch
do: a layer's diff_id (the digest of its uncompressed tar, which the image config claims)
costs a decompression, and is checked where the layer is first used (``diff_ids.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memobuild.cache.store import BlobWriter, LocalStore
from memobuild.oci.image import Descriptor

if TYPE_CHECKING:
    from memobuild.oci.reference import Reference
    from memobuild.oci.registry import RegistryClient

__all__ = ["HAND_OVER_BYTES", "BlobStream", "download_blob_to_store"]

# Network reads arrive in 64 KiB pieces; handed on in 1 MiB ones, the store (a Rust hash that
# releases the GIL, then a write) gets a sixteenth of the calls.
HAND_OVER_BYTES = 1 << 20


class BlobStream:
    """A BlobSink (``registry.py``) that writes a blob into the store as it arrives."""

    def __init__(self, store: LocalStore, desc: Descriptor, where: str) -> None:
        self._writer: BlobWriter = store.blob_writer(desc.digest, desc.size, where)
        self._pending = bytearray()
        self._written = 0

    @property
    def offset(self) -> int:
        return self._written

    def write(self, data: bytes) -> None:
        self._pending += data
        self._written += len(data)
        if len(self._pending) >= HAND_OVER_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write(bytes(self._pending))
            self._pending.clear()

    def reset(self) -> None:
        """Start over (the registry sent the whole blob again): what was written is dropped."""
        self._pending.clear()
        self._writer.reset()
        self._written = 0

    def finish(self) -> str:
        """Verify the blob and publish it in the store; its digest. CASIntegrityError, and
        nothing stored, if the content is not the digest's."""
        self._flush()
        return self._writer.commit()

    def close(self) -> None:
        """Give the download up if it was not finished (nothing is stored then)."""
        self._writer.abort()


def download_blob_to_store(
    client: RegistryClient, store: LocalStore, ref: Reference, desc: Descriptor
) -> None:
    """Download the blob ``desc`` names from ``ref``'s repository into ``store``, verified.
    CASIntegrityError, and nothing stored, when the content is not the digest's; network
    failures are retried and resumed by the client."""
    sink = BlobStream(store, desc, f"{ref}: blob {desc.digest}")
    try:
        client.download_blob(ref, desc, sink)
        sink.finish()
    finally:
        sink.close()
