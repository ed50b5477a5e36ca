"""Pulling an image from a registry into the local store: what ``FROM python:3.12-slim`` needs.

``pull(ref, store, platform, policy)`` returns the image for the platform (default: this
host's) with every layer in the local store, verified. What it asks the registry depends on
``policy``, docker's ``--pull``:

- ``missing`` (the default): nothing at all when the store has the image (by name, or by digest
  for a pinned reference); else a pull.
- ``always``: one ``HEAD`` of the tag's manifest to learn its digest; nothing more when the store
  has that digest's image. A reference pinned by digest cannot change, so it is never asked.
- ``never``: never the registry; ImageNotFoundError when the store lacks the image.

A pull reads the manifest (an index is resolved to the platform, see ``platform.py``), the
config and the layers; layers the store lacks are downloaded a few at a time, each streamed into
the store, which publishes it only if it matches its digest (``download.py``; CASIntegrityError
otherwise, and nothing is stored). Transfers that break off are retried and resumed
(``registry.py``). A layer's diff_id, which the config claims, is checked where the layer is
first used, as containerd does (``diff_ids.py``): unpacked, or put into an image that leaves a
build; a pull checks it only against what an earlier use recorded for the blob.

A pulled image is saved in the image store (``images.py``) under its name, as ``docker pull``
does, which also keeps its blobs from gc; records in the store map the registry's digests (of
the index and of the platform's manifest) and the reference to the local image, so a second
pull of the same digest downloads nothing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memobuild.cache.entries import LayerRef
from memobuild.cache.store import LocalStore
from memobuild.dockerfile.stages import Platform
from memobuild.errors import (
    BlobNotFoundError,
    CacheCoherencyError,
    CASIntegrityError,
    DockerfileParseError,
    ImageNotFoundError,
    InputError,
    InvalidImageError,
)
from memobuild.images import ImageStore
from memobuild.logging import logger
from memobuild.oci.blob_sources import remember_sources
from memobuild.oci.diff_ids import check_recorded_diff_id
from memobuild.oci.image import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    Image,
    Manifest,
    layer_media_type,
    parse_config,
    parse_index,
    parse_manifest,
)
from memobuild.oci.platform import compatible_platforms, parse_platform, select_platform
from memobuild.oci.reference import Reference, parse_reference

if TYPE_CHECKING:  # the client (and httpx) load only when the registry is asked
    from memobuild.oci.registry import ManifestResponse, RegistryClient

__all__ = ["PULL_POLICIES", "RECORD_KIND", "PulledImage", "pull", "pull_image"]

PULL_POLICIES = ("missing", "always", "never")
RECORD_KIND = "registry-pull"
RECORD_VERSION = 1
MAX_INDEX_DEPTH = 8


@dataclass(frozen=True)
class PulledImage:
    """What a pull resolved: the image, its digest in the local store (MemoBuild's encoding,
    what cache keys name) and the registry's digest of what the reference named (an index or
    a manifest; None when the store answered without asking the registry)."""

    image: Image
    local_digest: str
    registry_digest: str | None
    downloaded_layers: int  # layers fetched by this pull (0: all were in the store)


# --- records: reference/digest -> local image --------------------------------------------------


def _ref_key(ref: Reference, platform: Platform) -> str:
    return f"ref {ref.name}:{ref.tag} {platform}"


def _digest_key(digest: str, platform: Platform) -> str:
    return f"digest {digest} {platform}"


def _record(store: LocalStore, key: str, field: str) -> str | None:
    value = store.get_record(RECORD_KIND, key)
    if not isinstance(value, dict) or value.get("version") != RECORD_VERSION:
        return None
    found = value.get(field)
    return found if isinstance(found, str) else None


def _put(store: LocalStore, key: str, field: str, value: str) -> None:
    store.put_record(RECORD_KIND, key, {"version": RECORD_VERSION, field: value})


def _runs_on(image: Image, wanted: Platform) -> bool:
    try:
        platform = Platform.parse(image.platform)
    except DockerfileParseError:
        return False
    return platform in compatible_platforms(wanted)


def _load(store: LocalStore, name_or_digest: str, wanted: Platform) -> tuple[Image, str] | None:
    images = ImageStore(store)
    try:
        digest = images.resolve_digest(name_or_digest)
        image = images.load(name_or_digest) if digest is not None else None
    except (CacheCoherencyError, InputError) as err:
        logger.info(f"{name_or_digest}: not usable from the local store ({err}); pulling it")
        return None
    if image is None or digest is None or not _runs_on(image, wanted):
        return None
    return image, digest


def _local_by_digest(store: LocalStore, digest: str, wanted: Platform) -> tuple[Image, str] | None:
    local = _record(store, _digest_key(digest, wanted), "image")
    return _load(store, local, wanted) if local is not None else None


def _local(store: LocalStore, ref: Reference, wanted: Platform) -> tuple[Image, str] | None:
    """The image ``ref`` names for ``wanted`` if the store has it, asking no registry."""
    if ref.digest is not None:
        return _local_by_digest(store, ref.digest, wanted)
    found = _load(store, ref.familiar, wanted)  # pulled or built (-t) under this name
    if found is not None:
        return found
    digest = _record(store, _ref_key(ref, wanted), "digest")
    return _local_by_digest(store, digest, wanted) if digest is not None else None


# --- what the store has ------------------------------------------------------------------


def _have_blob(store: LocalStore, desc: Descriptor) -> bool:
    """Whether the store holds the blob intact (verified now; a corrupt copy is quarantined
    and then downloaded again)."""
    if not store.has_blob(desc.digest):
        return False
    try:
        return store.blob_path(desc.digest).stat().st_size == desc.size
    except (CASIntegrityError, BlobNotFoundError, FileNotFoundError):
        return False


# --- the pull -----------------------------------------------------------------------------


def _resolve_manifest(
    client: RegistryClient, ref: Reference, top: ManifestResponse, wanted: Platform
) -> tuple[Manifest, ManifestResponse, bool]:
    """Follow an index down to the image manifest for ``wanted``: (manifest, its response,
    whether an index was followed)."""
    current, from_index = top, False
    for _ in range(MAX_INDEX_DEPTH):
        where = f"{ref}: {current.digest}"
        if current.media_type in MANIFEST_MEDIA_TYPES:
            return parse_manifest(current.data, where), current, from_index
        index = parse_index(current.data, where)
        entries = [
            d for d in index.manifests if d.media_type in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES
        ]
        chosen = select_platform(entries, wanted, where)
        current, from_index = client.manifest(ref, chosen.digest), True
    raise InvalidImageError(str(ref), f"image indexes nested deeper than {MAX_INDEX_DEPTH}")


def _fetch(
    client: RegistryClient, store: LocalStore, ref: Reference, digest: str | None, wanted: Platform
) -> PulledImage:
    from memobuild.oci.download import download_blob_to_store

    top = client.manifest(ref, digest)
    manifest, resolved, from_index = _resolve_manifest(client, ref, top, wanted)
    where = f"{ref}: manifest {resolved.digest}"
    if store.has_blob(manifest.config.digest):
        config_bytes = store.read_blob(manifest.config.digest)
    else:
        config_bytes = client.blob_bytes(ref, manifest.config)
    parsed = parse_config(config_bytes, f"{ref}: config {manifest.config.digest}")
    if len(manifest.layers) != len(parsed.diff_ids):
        raise InvalidImageError(
            where,
            f"lists {len(manifest.layers)} layer(s) but its config's rootfs.diff_ids has "
            f"{len(parsed.diff_ids)}",
        )
    layers = [
        LayerRef(desc.digest, diff_id, desc.size, layer_media_type(desc.media_type, where))
        for desc, diff_id in zip(manifest.layers, parsed.diff_ids, strict=True)
    ]
    # A blob whose diff_id an earlier use found: the claim is checked now, before anything
    # is downloaded. The others are checked at their first use (diff_ids.py).
    for layer in layers:
        check_recorded_diff_id(store, layer, where)
    missing = {desc.digest: desc for desc in manifest.layers if not _have_blob(store, desc)}
    if missing:
        workers = min(client.options.concurrency, len(missing))
        with ThreadPoolExecutor(workers, thread_name_prefix="memobuild-pull") as pool:
            futures = [
                pool.submit(download_blob_to_store, client, store, ref, desc)
                for desc in missing.values()
            ]
            for future in futures:
                future.result()
    image = parsed.to_image(layers, where)
    if not from_index and not _runs_on(image, wanted):
        logger.warning(
            f"{ref.familiar}: the image is for {image.platform}, not {wanted}: using it anyway "
            "(the registry offers no other platform)"
        )
    names = [ref.familiar] if ref.digest is None else []
    local_digest = ImageStore(store).save(image, names)
    for registry_digest in dict.fromkeys((top.digest, resolved.digest)):
        _put(store, _digest_key(registry_digest, wanted), "image", local_digest)
    if ref.digest is None:
        _put(store, _ref_key(ref, wanted), "digest", top.digest)
    remember_sources(store, ref, [layer.digest for layer in layers])
    logger.info(
        f"pulled {ref.familiar} ({top.digest}, {image.platform}): {len(layers)} layer(s), "
        f"{len(missing)} downloaded"
    )
    return PulledImage(image, local_digest, top.digest, len(missing))


def pull_image(
    ref: str | Reference,
    store: LocalStore,
    platform: str | Platform | None = None,
    policy: str = "missing",
    *,
    client: RegistryClient | None = None,
) -> PulledImage:
    """Like :func:`pull`, with what the pull resolved."""
    reference = ref if isinstance(ref, Reference) else parse_reference(ref)
    wanted = parse_platform(platform)
    if policy not in PULL_POLICIES:
        raise InputError(f"--pull={policy}: expected one of {', '.join(PULL_POLICIES)}")
    if policy != "always" or reference.digest is not None:
        local = _local(store, reference, wanted)
        if local is not None:
            return PulledImage(local[0], local[1], reference.digest, 0)
        if policy == "never":
            raise ImageNotFoundError(
                reference.familiar, f"not in the local store for {wanted}, and --pull=never"
            )
    from memobuild.oci.registry import RegistryClient

    own = client is None
    active = client if client is not None else RegistryClient()
    try:
        digest = reference.digest
        if digest is None and policy == "always":
            digest = active.resolve(reference)
            if digest is not None:
                local = _local_by_digest(store, digest, wanted)
                if local is not None:
                    _put(store, _ref_key(reference, wanted), "digest", digest)
                    if ImageStore(store).resolve_digest(reference.familiar) != local[1]:
                        ImageStore(store).save(local[0], [reference.familiar])
                    return PulledImage(local[0], local[1], digest, 0)
        return _fetch(active, store, reference, digest, wanted)
    finally:
        if own:
            active.close()


def pull(
    ref: str | Reference,
    store: LocalStore,
    platform: str | Platform | None = None,
    policy: str = "missing",
    *,
    client: RegistryClient | None = None,
) -> Image:
    """The image ``ref`` names, for ``platform`` (default: this host's), with its layers in
    ``store``; see the module docstring for what each ``policy`` asks the registry.

    Raises RegistryNotFoundError (no such repository or tag), RegistryAuthError (credentials
    missing or refused), RegistryError/NetworkError (the registry failed, after retries),
    CASIntegrityError (content that does not match its digest: nothing of it is stored),
    InvalidImageError (no image for the platform, or a malformed one) and, with
    ``policy="never"``, ImageNotFoundError.
    """
    return pull_image(ref, store, platform, policy, client=client).image
