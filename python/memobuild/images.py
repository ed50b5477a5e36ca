"""The local image store: images MemoBuild built, by name, inside the local cache.

An image is its blobs in the store (layers, config, manifest, addressed by sha256 like any
other blob) plus a name that points at its manifest digest. The names live in one record
(kind ``images``) mapping each name to its manifest digest and what ``memobuild images`` shows,
so listing never reads a blob; read-modify-write of that record holds ``images.lock`` so that
two builds tagging at once cannot lose each other's names.

The cache's gc and prune remove blobs that no action entry references, and a tagged image's
config and manifest (and the layers of an image whose steps were evicted) are referenced by
nothing else. So every tagged image is *pinned* in the store (``LocalStore.pin``) under the pin
name ``image:<manifest digest>``, listing all its blobs: neither gc nor prune removes them while
the image has a name. When the last name of an image goes, the pin is removed
(``LocalStore.unpin``), which releases the blobs to gc and prune. An image whose blobs went
anyway (removed by hand) is reported as such, never returned half-present.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memobuild.cache.entries import LayerRef
from memobuild.cache.lock import StoreLock
from memobuild.cache.store import LocalStore
from memobuild.errors import (
    BlobNotFoundError,
    CacheCoherencyError,
    InputError,
    InvalidDigestError,
    InvalidImageError,
)
from memobuild.oci.image import (
    Image,
    encode_image,
    normalize_image_name,
    parse_config,
    parse_manifest,
)
from memobuild.verify import parse_digest

__all__ = ["ImageInfo", "ImageStore", "normalize_tag", "pin_name"]

RECORD_KIND = "images"
RECORD_NAME = "local"
RECORD_VERSION = 1


@dataclass(frozen=True)
class ImageInfo:
    """One name in the local image store, as ``memobuild images`` lists it."""

    name: str
    digest: str  # manifest digest
    created: str | None  # the image config's created time, if it has one
    size: int  # bytes of its blobs in the store: layers (as stored), config, manifest
    tagged: float  # unix time the name was (last) given


def normalize_tag(name: str) -> str:
    """A name to tag an image with, in its stored spelling (``app`` -> ``app:latest``).
    A digest is not a name an image can be given."""
    normalized = normalize_image_name(name)
    if "@" in normalized:
        raise InputError(f"cannot tag an image as {name!r}: a digest names content, use name[:tag]")
    return normalized


def pin_name(manifest_digest: str) -> str:
    """The name of the store pin that keeps an image's blobs alive while it has a name."""
    parse_digest(manifest_digest)
    return f"image:{manifest_digest}"


class ImageStore:
    """Named images in a LocalStore. Safe to share between processes."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self._lock = StoreLock(store.root / "images.lock")

    # -- the name record ---------------------------------------------------------------------

    def _read_names(self) -> dict[str, dict[str, Any]]:
        value = self.store.get_record(RECORD_KIND, RECORD_NAME)
        if not isinstance(value, dict) or value.get("version") != RECORD_VERSION:
            return {}
        names = value.get("names")
        if not isinstance(names, dict):
            return {}
        return {
            name: row
            for name, row in names.items()
            if isinstance(name, str) and isinstance(row, dict) and _valid_row(row)
        }

    def _write_names(self, names: dict[str, dict[str, Any]]) -> None:
        self.store.put_record(RECORD_KIND, RECORD_NAME, {"version": RECORD_VERSION, "names": names})

    # -- the API -----------------------------------------------------------------------------

    def save(self, image: Image, names: Sequence[str]) -> str:
        """Store ``image`` (its layer blobs must be in the store already) and give it every
        name in ``names``; returns its manifest digest. A name that pointed at another image
        moves here, as ``docker tag`` does. With no names, config and manifest are stored but
        nothing pins them: they last until the next prune, like any unreferenced blob."""
        tags = [normalize_tag(name) for name in names]
        encoded = encode_image(image)
        self.store.put_blob_bytes(encoded.config, encoded.config_digest)
        self.store.put_blob_bytes(encoded.manifest, encoded.manifest_digest)
        if not tags:
            return encoded.manifest_digest
        blobs = [
            encoded.manifest_digest,
            encoded.config_digest,
            *(layer.digest for layer in image.layers),
        ]
        size = len(encoded.manifest) + len(encoded.config)
        size += sum(
            layer.size for layer in {layer.digest: layer for layer in image.layers}.values()
        )
        with self._lock.exclusive():
            # pin checks every blob is present: CacheCoherencyError, and no name is written, if
            # a layer is missing.
            self.store.pin(pin_name(encoded.manifest_digest), blobs)
            names_now = self._read_names()
            replaced = {names_now[t]["manifest"] for t in tags if t in names_now}
            now = time.time()
            for tag in tags:
                names_now[tag] = {
                    "manifest": encoded.manifest_digest,
                    "config": encoded.config_digest,
                    "created": image.created,
                    "size": size,
                    "tagged": now,
                }
            self._write_names(names_now)
            self._release_unnamed(replaced - {encoded.manifest_digest}, names_now)
        return encoded.manifest_digest

    def _release_unnamed(self, digests: set[str], names: dict[str, dict[str, Any]]) -> None:
        still_named = {row["manifest"] for row in names.values()}
        for digest in sorted(digests - still_named):
            self.store.unpin(pin_name(digest))

    def resolve_digest(self, name_or_digest: str) -> str | None:
        """The manifest digest a name points at; a digest (``sha256:...`` or ``name@sha256:...``)
        is returned as is. None for an unknown name."""
        if name_or_digest.startswith("sha256:"):
            try:
                parse_digest(name_or_digest)
            except InvalidDigestError as err:
                raise InputError(str(err)) from None
            return name_or_digest
        normalized = normalize_image_name(name_or_digest)
        if "@" in normalized:
            return normalized.split("@", 1)[1]
        row = self._read_names().get(normalized)
        return str(row["manifest"]) if row is not None else None

    def load(self, name_or_digest: str) -> Image | None:
        """The image a name or manifest digest names, or None if there is none. Config and
        manifest are verified now; layers are checked present (they are verified when used).
        An image whose blobs the cache has dropped is CacheCoherencyError, saying to rebuild."""
        digest = self.resolve_digest(name_or_digest)
        if digest is None:
            return None
        named = not name_or_digest.startswith("sha256:") and "@" not in name_or_digest
        try:
            manifest_bytes = self.store.read_blob(digest)
        except BlobNotFoundError:
            if named:
                raise self._gone(name_or_digest, digest) from None
            return None
        where = f"image {name_or_digest}"
        manifest = parse_manifest(manifest_bytes, f"{where}: manifest {digest}")
        try:
            config_bytes = self.store.read_blob(manifest.config.digest)
        except BlobNotFoundError:
            raise self._gone(name_or_digest, digest) from None
        parsed = parse_config(config_bytes, f"{where}: config {manifest.config.digest}")
        if len(manifest.layers) != len(parsed.diff_ids):
            raise InvalidImageError(where, "manifest and config disagree on the layer count")
        layers = []
        for desc, diff_id in zip(manifest.layers, parsed.diff_ids, strict=True):
            if not self.store.has_blob(desc.digest):
                raise self._gone(name_or_digest, digest)
            layers.append(LayerRef(desc.digest, diff_id, desc.size, desc.media_type))
        return parsed.to_image(layers, where)

    @staticmethod
    def _gone(name: str, digest: str) -> CacheCoherencyError:
        return CacheCoherencyError(
            f"image {name} ({digest}): its blobs are no longer in the cache (removed by "
            f"memobuild cache gc or by hand); build it again, or remove the name with "
            f"memobuild rmi {name}"
        )

    def list(self) -> list[ImageInfo]:
        """Every name, sorted."""
        return [
            ImageInfo(
                name=name,
                digest=row["manifest"],
                created=row["created"],
                size=row["size"],
                tagged=row["tagged"],
            )
            for name, row in sorted(self._read_names().items())
        ]

    def remove(self, name: str) -> bool:
        """Remove a name (or, given a manifest digest, every name of that image); False if there
        was none. The image's blobs are released to gc once no name points at it."""
        with self._lock.exclusive():
            names = self._read_names()
            if name.startswith("sha256:"):
                parse_digest(name)
                doomed = [n for n, row in names.items() if row["manifest"] == name]
            else:
                normalized = normalize_image_name(name)
                doomed = [normalized] if normalized in names else []
            if not doomed:
                return False
            digests = {names[n]["manifest"] for n in doomed}
            for n in doomed:
                del names[n]
            self._write_names(names)
            self._release_unnamed(digests, names)
        return True


def _valid_row(row: dict[str, Any]) -> bool:
    """Whether a stored row has the fields and types this version writes; anything else is
    skipped rather than trusted (a record from a newer MemoBuild, or a damaged one)."""
    manifest = row.get("manifest")
    if not isinstance(manifest, str):
        return False
    try:
        parse_digest(manifest)
    except InvalidDigestError:
        return False
    return (
        isinstance(row.get("config"), str)
        and (row.get("created") is None or isinstance(row.get("created"), str))
        and isinstance(row.get("size"), int)
        and isinstance(row.get("tagged"), (int, float))
    )
