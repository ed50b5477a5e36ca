"""An OCI registry as the shared build cache: ``--cache-to|--cache-from type=registry,ref=REF``.

Teams that outgrow one cache server already run a registry (GHCR, ECR, Harbor, CNCF
distribution on S3); this stores MemoBuild's cache in one repository of it, with no code on the
server:

- every cached layer is a blob of the repository, uploaded as an image's layers are (``HEAD``
  first, a cross-repository mount when the store knows a source, else an upload);
- every action entry is a small blob of its own, in exactly the bytes the local store writes
  (``application/vnd.memobuild.action.v1+msgpack``);
- one OCI image manifest tagged ``REF``, with ``artifactType``
  ``application/vnd.memobuild.cache.v1`` and the empty config, lists the entry blobs (annotated
  with their key and the digests of their layers) and then every layer blob they name, so a
  registry's garbage collection keeps what the cache needs.

Reading is lazy: the manifest is fetched on the first lookup (one request); an entry's blob only
when its key is looked up, and layers only when the build takes that hit, so a runner downloads
the layers of its hits and nothing else. Writing: ``put_blob`` and ``put_action`` upload at once
(the entry after its layers, as ``HybridCache`` orders them); ``close`` publishes the manifest:
this build's entries first, then those REF listed when it was re-read just before, up to
``MAX_ENTRIES``. Two builds closing at the same moment race on the tag (the last one wins; the
other's entries stay in the registry, unlisted until written again): a cache may forget, never
lie, since every blob is verified against its digest and every entry against its key.

``RegistryCache`` is a ``hybrid.CacheRemote``, as ``RemoteCache`` is: it raises
``RemoteAuthError`` for refused credentials, so a read-only token turns uploads off and keeps
downloads, and ``RemoteUnusableError`` when REF names something that is not a cache (an
image), so the build switches it off at once, with one warning, and never overwrites the tag.
Which entries a build exports (``mode=max`` every step's, ``mode=min`` only those of the steps
whose layers are in the image) is ``HybridCache``'s choice, made from what the executor says.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from memobuild.cache.entries import MAX_ENTRY_BYTES, ActionEntry, decode_action, encode_action
from memobuild.cache.remote import RemoteAuthError, RemoteUnusableError
from memobuild.cache.store import LocalStore
from memobuild.errors import (
    InputError,
    InvalidDigestError,
    InvalidImageError,
    RegistryAuthError,
    RegistryNotFoundError,
    UnsupportedEntryError,
)
from memobuild.logging import logger
from memobuild.oci.blob_sources import mount_sources, remember_sources
from memobuild.oci.download import download_blob_to_store
from memobuild.oci.image import (
    MANIFEST_MEDIA_TYPES,
    OCI_MANIFEST,
    Descriptor,
    canonical_json,
)
from memobuild.oci.reference import Reference, parse_reference
from memobuild.oci.registry import RegistryClient, RegistryOptions
from memobuild.verify import digest_bytes, parse_digest

__all__ = [
    "ARTIFACT_TYPE",
    "ENTRY_MEDIA_TYPE",
    "MAX_ENTRIES",
    "RegistryCache",
]

ARTIFACT_TYPE = "application/vnd.memobuild.cache.v1"
ENTRY_MEDIA_TYPE = "application/vnd.memobuild.action.v1+msgpack"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
ANNOTATION_KEY = "dev.memobuild.action.key"
ANNOTATION_LAYERS = "dev.memobuild.action.layers"
ANNOTATION_VERSION = "dev.memobuild.cache.version"
CACHE_VERSION = "1"
# Registries refuse manifests over 4 MiB; an entry's descriptor takes a few hundred bytes.
MAX_ENTRIES = 4000
_T = TypeVar("_T")


@dataclass(frozen=True)
class _Listed:
    """One entry as the cache manifest lists it."""

    key: str
    blob: Descriptor
    layers: tuple[Descriptor, ...]


def _entry_descriptor(listed: _Listed) -> dict[str, object]:
    layers = ",".join(f"{d.digest}:{d.size}:{d.media_type}" for d in listed.layers)
    return {
        "mediaType": ENTRY_MEDIA_TYPE,
        "digest": listed.blob.digest,
        "size": listed.blob.size,
        "annotations": {
            ANNOTATION_KEY: listed.key,
            ANNOTATION_LAYERS: layers,
        },
    }


def _parse_entry(item: object, where: str) -> _Listed | None:
    """An entry descriptor of the cache manifest; None for its layer descriptors."""
    if not isinstance(item, dict) or item.get("mediaType") != ENTRY_MEDIA_TYPE:
        return None
    annotations = item.get("annotations")
    digest, size = item.get("digest"), item.get("size")
    key = annotations.get(ANNOTATION_KEY) if isinstance(annotations, dict) else None
    layers = annotations.get(ANNOTATION_LAYERS, "") if isinstance(annotations, dict) else ""
    if (
        not isinstance(key, str)
        or not isinstance(digest, str)
        or isinstance(size, bool)
        or not isinstance(size, int)
        or not isinstance(layers, str)
    ):
        raise InvalidImageError(where, f"malformed entry descriptor {json.dumps(item)[:200]}")
    try:
        parse_digest(digest)
        parse_digest(key)
    except InvalidDigestError as err:
        raise InvalidImageError(where, f"entry descriptor: {err}") from None
    blob = Descriptor(ENTRY_MEDIA_TYPE, digest, size)
    return _Listed(key, blob, _parse_layers(layers, where))


def _parse_layers(text: str, where: str) -> tuple[Descriptor, ...]:
    layers = []
    for item in filter(None, text.split(",")):
        parts = item.split(":", 3)  # sha256, hex, size, media type
        if len(parts) != 4 or not parts[2].isdigit():
            raise InvalidImageError(where, f"malformed {ANNOTATION_LAYERS} item {item!r}")
        digest = f"{parts[0]}:{parts[1]}"
        try:
            parse_digest(digest)
        except InvalidDigestError as err:
            raise InvalidImageError(where, f"{ANNOTATION_LAYERS}: {err}") from None
        layers.append(Descriptor(parts[3], digest, int(parts[2])))
    return tuple(layers)


class RegistryCache:
    """A remote cache in a registry repository, for ``HybridCache`` (thread-safe)."""

    def __init__(
        self,
        ref: str | Reference,
        *,
        client: RegistryClient | None = None,
        options: RegistryOptions | None = None,
    ) -> None:
        """``client``: the build's client (``oci/session.py``), shared through
        ``RegistryClient.sharing`` (its connections, registries and tokens; its owner closes
        it); else one made from ``options`` (default: from the environment), closed by
        ``close``. Either way this cache counts its own retries."""
        self.ref = ref if isinstance(ref, Reference) else parse_reference(ref)
        if self.ref.digest is not None:
            raise InputError(f"{self.ref}: a registry cache is named by a tag, not a digest")
        self.url = f"registry://{self.ref}"
        self._retries = 0
        self._client = (
            client.sharing(on_retry=self._count_retry)
            if client is not None
            else RegistryClient(options, on_retry=self._count_retry)
        )
        self._lock = threading.Lock()
        self._listed: dict[str, _Listed] | None = None
        self._written: dict[str, _Listed] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"RegistryCache({str(self.ref)!r})"

    def _count_retry(self, _attempt: object) -> None:
        with self._lock:
            self._retries += 1

    @property
    def retries(self) -> int:
        """Retries of this cache's requests so far."""
        return self._retries

    @property
    def closed(self) -> bool:
        return self._closed

    # --- the manifest ---------------------------------------------------------------------

    def _read_manifest(self) -> dict[str, _Listed]:
        """The entries REF lists now ({} when there is no such tag yet)."""
        try:
            response = self._client.manifest(self.ref)
        except RegistryNotFoundError:
            return {}
        where = f"{self.url}: manifest {response.digest}"
        if response.media_type not in MANIFEST_MEDIA_TYPES:
            raise self._not_a_cache(where, "an image index")
        try:
            doc = json.loads(response.data)
        except ValueError as err:
            raise InvalidImageError(where, f"is not JSON: {err}") from None
        if not isinstance(doc, dict) or doc.get("artifactType") != ARTIFACT_TYPE:
            found = doc.get("artifactType") if isinstance(doc, dict) else None
            raise self._not_a_cache(where, f"artifactType {found!r}")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise InvalidImageError(where, "has no layers array")
        listed: dict[str, _Listed] = {}
        for item in layers:
            entry = _parse_entry(item, where)
            if entry is not None and entry.key not in listed:
                listed[entry.key] = entry
        return listed

    def _not_a_cache(self, where: str, found: str) -> RemoteUnusableError:
        """REF names something else (an image): never read as a cache, never overwritten."""
        return RemoteUnusableError(
            f"{where} is not a MemoBuild cache ({found}): the cache ref must name a tag of its "
            "own, not an image"
        )

    def _index(self) -> dict[str, _Listed]:
        with self._lock:
            if self._listed is not None:
                return self._listed
        listed = self._auth(self._read_manifest)
        with self._lock:
            if self._listed is None:
                self._listed = listed
            return self._listed

    @staticmethod
    def _auth(operation: Callable[[], _T]) -> _T:
        try:
            return operation()
        except RegistryAuthError as err:
            raise RemoteAuthError(str(err), status=err.status) from None

    # --- what HybridCache calls -------------------------------------------------------------

    def has_action(self, key: str) -> bool:
        return key in self._index()

    def get_action(self, key: str) -> ActionEntry | None:
        """The entry for ``key``, downloaded and checked (digest, envelope, key), or None.
        Raises CorruptEntryError when the blob is not a valid entry for ``key``."""
        listed = self._index().get(key)
        if listed is None:
            return None
        if listed.blob.size > MAX_ENTRY_BYTES:
            raise InvalidImageError(self.url, f"entry {key} is {listed.blob.size} bytes")
        data = self._auth(lambda: self._client.blob_bytes(self.ref, listed.blob))
        try:
            return decode_action(data, f"{self.url}: entry {listed.blob.digest}", key)
        except UnsupportedEntryError as err:
            logger.info(f"{err}; treating it as a miss")
            return None

    def action_size(self, entry: ActionEntry) -> int:
        return len(encode_action(entry))

    def has_blob(self, digest: str) -> bool:
        return self._auth(lambda: self._client.blob_exists(self.ref, digest))

    def get_blob(self, digest: str, dest: LocalStore, size: int | None = None) -> int | None:
        """Download a blob into ``dest``, verified; its size, or None if the repository does
        not have it (CASIntegrityError, and nothing stored, if the content is wrong)."""
        if size is None:
            raise InputError(f"{self.url}: a blob is fetched with its size (from its entry)")
        desc = Descriptor("application/octet-stream", digest, size)
        try:
            self._auth(lambda: download_blob_to_store(self._client, dest, self.ref, desc))
        except RegistryNotFoundError:
            return None
        return size

    def put_blob(self, digest: str, source: LocalStore, *, force: bool = False) -> int:
        """Upload a blob of ``source`` unless the repository has it; the bytes sent (0 when it
        was there or mounted). ``force`` is accepted for the interface: a registry verifies
        every upload and keeps one copy per digest, so there is no bad copy to replace.
        RemoteUnusableError, before anything is sent, when REF names something else."""
        self._index()
        path = source.blob_path(digest)  # verified: a corrupt local blob is never sent
        size = path.stat().st_size
        mounts = mount_sources(source, self.ref, digest)
        result = self._auth(lambda: self._client.upload_blob(self.ref, digest, size, path, mounts))
        remember_sources(source, self.ref, [digest])
        return size if result.how == "uploaded" else 0

    def put_action(self, entry: ActionEntry) -> None:
        """Upload the entry's blob and list it in the manifest ``close`` publishes; its layers
        must have been put first."""
        self._index()
        data = encode_action(entry)
        digest = digest_bytes(data, "sha256")
        self._auth(lambda: self._client.upload_blob(self.ref, digest, len(data), data))
        layers = tuple(
            Descriptor(layer.media_type, layer.digest, layer.size) for layer in entry.layers
        )
        listed = _Listed(entry.key, Descriptor(ENTRY_MEDIA_TYPE, digest, len(data)), layers)
        with self._lock:
            self._written[entry.key] = listed
            if self._listed is not None:
                self._listed[entry.key] = listed

    def publish(self) -> str | None:
        """Push the manifest listing this build's entries and, after them, those REF lists
        now; its digest, or None when this build wrote nothing."""
        with self._lock:
            written = list(self._written.values())
        if not written:
            return None
        current = self._auth(self._read_manifest)
        merged = {listed.key: listed for listed in written}
        for key, listed in current.items():
            if len(merged) >= MAX_ENTRIES:
                break
            merged.setdefault(key, listed)
        self._auth(
            lambda: self._client.upload_blob(
                self.ref, digest_bytes(EMPTY_CONFIG), len(EMPTY_CONFIG), EMPTY_CONFIG
            )
        )
        layers: dict[str, Descriptor] = {}
        for listed in merged.values():
            for layer in listed.layers:
                layers.setdefault(layer.digest, layer)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {
                "mediaType": EMPTY_MEDIA_TYPE,
                "digest": digest_bytes(EMPTY_CONFIG),
                "size": len(EMPTY_CONFIG),
            },
            "layers": [_entry_descriptor(listed) for listed in merged.values()]
            + [
                {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
                for d in layers.values()
            ],
            "annotations": {ANNOTATION_VERSION: CACHE_VERSION},
        }
        data = canonical_json(doc)
        digest = self._auth(lambda: self._client.put_manifest(self.ref, data, OCI_MANIFEST))
        logger.info(f"{self.url}: published {len(merged)} cache entries ({digest})")
        return digest

    def close(self) -> None:
        """Publish what this build wrote (a failure is logged, never raised: the build is
        done) and close the client if this cache made it."""
        if self._closed:
            return
        self._closed = True
        try:
            self.publish()
        except Exception as err:  # any failure: a cache must never fail a finished build
            logger.warning(f"{self.url}: could not publish the cache manifest: {err}")
        finally:
            self._client.close()  # a shared client's view: closes nothing shared
