"""Pushing an image from the local store to a registry: ``memobuild build --push``.

The blobs go first, a few at a time: each layer (read from the store, verified as it is looked
up) and then the config. A blob the repository already has is skipped after one ``HEAD``; one
that another repository of the same registry is known to hold (``blob_sources.py``) is mounted
from there when the registry allows it; anything else is uploaded, small blobs in one request
and large ones in chunks (``registry.py``). The manifest goes last, so the tag never names an
image whose blobs are not all there, and the registry's digest for it must be the one MemoBuild
computed: that digest is what ``push`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from memobuild.cache.store import LocalStore
from memobuild.errors import InvalidImageError
from memobuild.logging import logger
from memobuild.oci.blob_sources import mount_sources, remember_sources
from memobuild.oci.image import OCI_MANIFEST, Image, encode_image
from memobuild.oci.reference import Reference, parse_reference
from memobuild.oci.registry import RegistryClient, UploadResult

__all__ = ["PushResult", "push", "push_image"]


@dataclass(frozen=True)
class PushResult:
    """What a push did: the manifest digest, the reference pushed, and per blob whether it was
    already there, mounted or uploaded."""

    digest: str
    ref: Reference
    blobs: tuple[UploadResult, ...]

    def count(self, how: str) -> int:
        """How many blobs were ``"exists"``, ``"mounted"`` or ``"uploaded"``."""
        return sum(1 for blob in self.blobs if blob.how == how)


def _push_blob(
    client: RegistryClient,
    store: LocalStore,
    ref: Reference,
    digest: str,
    size: int,
    mount_from: Sequence[str],
) -> UploadResult:
    path = store.blob_path(digest)  # verified now: a corrupt blob is never sent
    actual = path.stat().st_size
    if actual != size:
        raise InvalidImageError(path, f"blob {digest} is {actual} bytes, the image says {size}")
    sources = [*mount_sources(store, ref, digest), *mount_from]
    return client.upload_blob(ref, digest, size, path, list(dict.fromkeys(sources)))


def push_image(
    image: Image,
    store: LocalStore,
    ref: str | Reference,
    *,
    client: RegistryClient | None = None,
    mount_from: Sequence[str] = (),
) -> PushResult:
    """Like :func:`push`, with what was done for each blob."""
    reference = ref if isinstance(ref, Reference) else parse_reference(ref)
    encoded = encode_image(image)
    store.put_blob_bytes(encoded.config, encoded.config_digest)
    layers = {layer.digest: layer.size for layer in image.layers}
    own = client is None
    active = client if client is not None else RegistryClient()
    try:
        workers = max(1, min(active.options.concurrency, len(layers)))
        with ThreadPoolExecutor(workers, thread_name_prefix="memobuild-push") as pool:
            futures = [
                pool.submit(_push_blob, active, store, reference, digest, size, mount_from)
                for digest, size in layers.items()
            ]
            results = [future.result() for future in futures]
        results.append(
            _push_blob(
                active, store, reference, encoded.config_digest, len(encoded.config), mount_from
            )
        )
        digest = active.put_manifest(reference, encoded.manifest, OCI_MANIFEST)
    finally:
        if own:
            active.close()
    remember_sources(store, reference, [*layers, encoded.config_digest])
    result = PushResult(digest, reference, tuple(results))
    # Debug: the build reports the push once (``pushed REF@DIGEST``, after its summary).
    logger.debug(
        f"pushed {reference.familiar}@{digest}: {len(results)} blob(s), "
        f"{result.count('exists')} already there, {result.count('mounted')} mounted"
    )
    return result


def push(
    image: Image,
    store: LocalStore,
    ref: str | Reference,
    *,
    client: RegistryClient | None = None,
    mount_from: Sequence[str] = (),
) -> str:
    """Push ``image`` (its blobs in ``store``) to ``ref`` (``registry/repo[:tag]``, ``latest``
    by default) and return its manifest digest. ``mount_from``: more repository paths on the
    same registry to try mounting blobs from. Errors as for ``pull``."""
    return push_image(image, store, ref, client=client, mount_from=mount_from).digest
