"""Layer diff_ids: checked where a layer is first used, not where it is downloaded.

An image config claims, for each layer, the sha256 of its uncompressed tar (``rootfs.diff_ids``).
A blob's digest is verified as it arrives (``download.py``); its diff_id costs a decompression,
so, as containerd does, it is checked when the layer is first *used*:

- unpacked (``build/materialise.py``): the Rust unpacker hashes the tar it applies in the same
  pass, and a layer that is not what its image claims is refused once unpacked, before any
  step runs on it (the scratch tree is discarded with the build);
- put into an image that leaves the build (saved under a tag, exported or pushed) without ever
  having been unpacked: the claim is checked then (:func:`verify_diff_ids`), so a wrong claim
  is never copied into an image built on it.

What a check finds is recorded per blob (a record of kind :data:`DIFF_ID_RECORD`): the next
use, and a later pull of an image that lists the blob, compare against the record instead of
decompressing again, so a blob is decompressed for its diff_id at most once per store. Layers
MemoBuild writes itself are recorded when written (Rust computes both digests as it writes).
"""

from __future__ import annotations

from collections.abc import Iterable

from memobuild.cache.entries import LayerRef
from memobuild.cache.store import LocalStore
from memobuild.errors import CASIntegrityError

__all__ = [
    "DIFF_ID_RECORD",
    "check_recorded_diff_id",
    "diff_id_error",
    "record_diff_id",
    "recorded_diff_id",
    "verify_diff_ids",
]

# Record kind: blob digest -> the diff_id its content was found to have.
DIFF_ID_RECORD = "layer-diff-id"


def recorded_diff_id(store: LocalStore, digest: str) -> str | None:
    """The diff_id found for blob ``digest`` by an earlier check (None: never checked)."""
    known = store.get_record(DIFF_ID_RECORD, digest)
    return known if isinstance(known, str) else None


def record_diff_id(store: LocalStore, digest: str, diff_id: str) -> None:
    """Record what blob ``digest`` was found to uncompress to (unless already recorded)."""
    if recorded_diff_id(store, digest) != diff_id:
        store.put_record(DIFF_ID_RECORD, digest, diff_id)


def diff_id_error(layer: LayerRef, actual: str, where: str) -> CASIntegrityError:
    """The error for a layer whose content is not the diff_id its image claims."""
    return CASIntegrityError(
        layer.diff_id,
        actual,
        layer.size,
        f"{where}: layer {layer.digest} (diff_id): its uncompressed content is not the diff_id "
        "its image config lists; the image is refused",
    )


def check_recorded_diff_id(store: LocalStore, layer: LayerRef, where: str) -> bool:
    """Compare ``layer``'s claimed diff_id with the record, if there is one: True when they
    agree, False when the blob was never checked; CASIntegrityError when they differ."""
    known = recorded_diff_id(store, layer.digest)
    if known is None:
        return False
    if known != layer.diff_id:
        raise diff_id_error(layer, known, where)
    return True


def verify_diff_ids(store: LocalStore, layers: Iterable[LayerRef], where: str) -> None:
    """Make sure every layer's diff_id is what its content uncompresses to, before the layers
    go into an image that leaves the build: from the record, else by decompressing the blob
    once (and recording what it holds). CASIntegrityError for a wrong claim."""
    from memobuild.oci.layout import layer_diff_id  # gzip: only when a check is due

    for layer in layers:
        if check_recorded_diff_id(store, layer, where):
            continue
        actual = layer_diff_id(store.blob_path(layer.digest), layer.media_type)
        if actual is None:  # zstd: taken on trust until unpacked, as containerd does
            continue
        record_diff_id(store, layer.digest, actual)
        if actual != layer.diff_id:
            raise diff_id_error(layer, actual, where)
