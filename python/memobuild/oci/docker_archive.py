"""``docker save`` archives as base images.

The archive's ``manifest.json`` is a JSON array with one entry per saved image::

    [{"Config": "<config file>", "RepoTags": ["app:1.0"], "Layers": ["<layer file>", ...]}]

Docker up to 24 names the files ``<hex>.json`` and ``<id>/layer.tar`` (a layer shared between
images stored once and symlinked); Docker 25+ writes an OCI layout inside the archive and names
``blobs/sha256/<hex>`` files. Both are read through manifest.json, so both work. Layers are
plain tars (older Docker) or gzip (containerd image store); either way the layer is stored
as-is, with the matching OCI media type: its ``diff_id`` (the sha256 of the uncompressed tar) is
computed while reading and must equal the config's ``rootfs.diff_ids`` entry, so a corrupt or
mismatched layer is refused before it can enter a build. Recompressing plain layers would cost
a gzip pass per build for no gain in a local store; an exporter can compress when it writes.

Writing (:func:`write_docker_archive`) produces what Docker 25+ ``docker save`` produces: an OCI
layout (``oci-layout``, ``index.json`` with each name as ``io.containerd.image.name`` and its tag
as ``ref.name``, ``blobs/sha256/...``) plus the ``manifest.json`` and ``repositories`` files
that every ``docker load`` reads. So one file loads with ``docker load`` (legacy and containerd
image stores), ``podman load`` and ``skopeo``'s ``docker-archive:`` transport, and is also a
valid OCI layout. Layers are written as they are stored, gzip-compressed: every loader
decompresses layer files (docker's legacy loader and containers/image detect the compression),
and the OCI manifest inside, whose digest is the image's identity, names them with their real
media type. The archive is deterministic (sorted entries, zero times and owners) and replaced
atomically (temp file and rename).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from memobuild.cache.entries import LayerRef
from memobuild.cache.store import LocalStore
from memobuild.errors import CASIntegrityError, InputError, InvalidImageError, StorageError
from memobuild.oci.image import (
    MAX_DOCUMENT_BYTES,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    Descriptor,
    Image,
    index_json,
    normalize_image_name,
    parse_config,
)
from memobuild.oci.layout import (
    COPY_CHUNK,
    TarArchive,
    import_blob_stream,
    index_entries,
    layout_blobs,
    oci_layout_json,
    write_tar_file,
)
from memobuild.verify import Hasher, digest_bytes

__all__ = ["ArchiveEntry", "read_docker_archive", "repo_tags", "write_docker_archive"]

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# File names that carry their content's digest: <hex>.json (legacy config), blobs/sha256/<hex>.
_DIGEST_NAME = re.compile(r"(?:.*/)?(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?")


@dataclass(frozen=True)
class ArchiveEntry:
    """One image of a docker save archive, as its manifest.json lists it."""

    config: str
    layers: tuple[str, ...]
    repo_tags: tuple[str, ...]


def _parse_entries(data: bytes, where: str) -> list[ArchiveEntry]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise InvalidImageError(where, f"manifest.json is not valid JSON: {err}") from None
    if not isinstance(doc, list):
        raise InvalidImageError(where, "manifest.json is not a JSON array")
    entries = []
    for i, item in enumerate(doc):
        config = item.get("Config") if isinstance(item, dict) else None
        layers = item.get("Layers") if isinstance(item, dict) else None
        tags = (item.get("RepoTags") if isinstance(item, dict) else None) or []
        if (
            not isinstance(config, str)
            or not isinstance(layers, list)
            or not all(isinstance(layer, str) for layer in layers)
            or not isinstance(tags, list)
            or not all(isinstance(tag, str) for tag in tags)
        ):
            raise InvalidImageError(
                where,
                f"manifest.json entry {i} must have Config (a file name), Layers (file names) "
                "and optionally RepoTags (names)",
            )
        entries.append(ArchiveEntry(config, tuple(layers), tuple(tags)))
    return entries


def _same_name(a: str, b: str) -> bool:
    try:
        return normalize_image_name(a) == normalize_image_name(b)
    except InputError:
        return a == b


def _choose(entries: list[ArchiveEntry], tag: str | None, where: str) -> ArchiveEntry:
    if not entries:
        raise InvalidImageError(where, "manifest.json lists no images")
    if tag is not None:
        for entry in entries:
            if any(_same_name(tag, repo_tag) for repo_tag in entry.repo_tags):
                return entry
        tags = sorted({t for e in entries for t in e.repo_tags})
        raise InvalidImageError(
            where, f"no image named {tag!r} in the archive (it has: {', '.join(tags) or 'none'})"
        )
    if len(entries) == 1:
        return entries[0]
    tags = sorted({t for e in entries for t in e.repo_tags})
    raise InvalidImageError(
        where,
        f"the archive holds {len(entries)} images; name one with "
        f"docker-archive://FILE:NAME:TAG (it has: {', '.join(tags) or 'untagged images'})",
    )


def _check_named_digest(name: str, actual: str, size: int, where: str) -> None:
    """A file named by its digest must hash to it: the one check a legacy archive allows."""
    match = _DIGEST_NAME.fullmatch(name)
    if match is not None and actual != f"sha256:{match.group(1)}":
        raise CASIntegrityError(f"sha256:{match.group(1)}", actual, size, f"{where}: {name}")


class _HashingReader:
    """Passes reads through, hashing what went by: lets gzip decompress and the compressed
    digest be computed in the same single read of the layer."""

    def __init__(self, stream: IO[bytes], hasher: Hasher) -> None:
        self.stream = stream
        self.hasher = hasher

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.hasher.update(data)
        return data

    def seek(self, offset: int, /) -> object:
        raise io.UnsupportedOperation("a layer is hashed in one forward read")


def _layer_digests(stream: IO[bytes], where: str) -> tuple[str, str, int, str]:
    """(blob digest, diff_id, blob size, OCI media type) of a layer file, in one read."""
    head = stream.read(4)
    stream.seek(0)
    if head.startswith(_ZSTD_MAGIC):
        raise InvalidImageError(
            where,
            "zstd-compressed layer: MemoBuild reads plain and gzip layers from docker "
            "save archives (save the image as an OCI layout and use oci-layout:// instead)",
        )
    blob = Hasher("sha256")
    if not head.startswith(_GZIP_MAGIC):
        while chunk := stream.read(COPY_CHUNK):
            blob.update(chunk)
        digest = blob.digest()
        return digest, digest, blob.size, OCI_LAYER
    tar = Hasher("sha256")
    reader = _HashingReader(stream, blob)
    try:
        with gzip.GzipFile(fileobj=reader, mode="rb") as unzipped:
            while chunk := unzipped.read(COPY_CHUNK):
                tar.update(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise InvalidImageError(where, f"corrupt gzip layer: {err}") from None
    while chunk := reader.read(COPY_CHUNK):  # anything gzip left unread still counts
        pass
    return blob.digest(), tar.digest(), blob.size, OCI_LAYER_GZIP


def _import_layer(
    archive: TarArchive, store: LocalStore, name: str, diff_id: str, where: str
) -> LayerRef:
    layer_where = f"{where}: {name}"
    with archive.open(name) as stream:
        digest, actual_diff_id, size, media_type = _layer_digests(stream, layer_where)
        _check_named_digest(name, digest, size, where)
        if actual_diff_id != diff_id:
            raise CASIntegrityError(diff_id, actual_diff_id, size, f"{layer_where} (diff_id)")
        stream.seek(0)
        import_blob_stream(store, stream, Descriptor(media_type, digest, size), layer_where)
    return LayerRef(digest, diff_id, size, media_type)


def read_docker_archive(
    path: str | os.PathLike[str], store: LocalStore, tag: str | None = None
) -> Image:
    """The image in the ``docker save`` archive at ``path`` (plain or compressed tar), with its
    layers imported into ``store``. An archive with several images needs ``tag``, one of its
    RepoTags. Integrity failures are CASIntegrityError, malformed archives InvalidImageError."""
    archive_path = Path(path)
    where = str(archive_path)
    with TarArchive(archive_path) as archive:
        if not archive.has("manifest.json"):
            hint = (
                "; it is an OCI layout: use oci-layout:// instead of docker-archive://"
                if archive.has("index.json") and archive.has("oci-layout")
                else ""
            )
            raise InvalidImageError(where, f"not a docker save archive: no manifest.json{hint}")
        entry = _choose(_parse_entries(archive.read("manifest.json"), where), tag, where)
        config_bytes = archive.read(entry.config, MAX_DOCUMENT_BYTES)
        config_digest = digest_bytes(config_bytes, "sha256")
        _check_named_digest(entry.config, config_digest, len(config_bytes), where)
        parsed = parse_config(config_bytes, f"{where}: {entry.config}")
        if len(entry.layers) != len(parsed.diff_ids):
            raise InvalidImageError(
                where,
                f"manifest.json lists {len(entry.layers)} layer(s) for {entry.config} but its "
                f"rootfs.diff_ids has {len(parsed.diff_ids)}",
            )
        layers = [
            _import_layer(archive, store, name, diff_id, where)
            for name, diff_id in zip(entry.layers, parsed.diff_ids, strict=True)
        ]
        store.put_blob_bytes(config_bytes, config_digest)
        return parsed.to_image(layers, where)


# --- writing ----------------------------------------------------------------------------------


def repo_tags(names: Sequence[str]) -> list[str]:
    """``names`` as ``docker save`` lists them in RepoTags: Docker's familiar form with a tag
    (``docker.io/library/app`` is ``app:latest``), each once, in the order given. InputError
    for an invalid name or one with a digest (a digest names content, not a tag)."""
    tags: dict[str, None] = {}
    for name in names:
        normalized = normalize_image_name(name)
        if "@" in normalized:
            raise InputError(
                f"cannot name an image {name!r} in a docker archive: a digest names content, "
                "use name[:tag]"
            )
        tags[normalized] = None
    return list(tags)


def _manifest_json(config: str, tags: Sequence[str], layers: Sequence[str]) -> bytes:
    # Docker's field order (Config, RepoTags, Layers), compact, like json.Marshal.
    entry = {"Config": config, "RepoTags": list(tags), "Layers": list(layers)}
    return json.dumps([entry], separators=(",", ":")).encode()


def _repositories_json(tags: Sequence[str], top_layer: str) -> bytes:
    """The legacy ``repositories`` file: repository -> tag -> the top layer's id (the hex of
    its digest, as Docker 25 writes it)."""
    repositories: dict[str, dict[str, str]] = {}
    for tag in tags:
        repository, _, name = tag.rpartition(":")  # a normalized name always ends in :tag
        repositories.setdefault(repository, {})[name] = top_layer
    return json.dumps(repositories, sort_keys=True, separators=(",", ":")).encode()


def write_docker_archive(
    image: Image,
    store: LocalStore,
    dest: str | os.PathLike[str],
    names: Sequence[str] = (),
) -> str:
    """Write ``image`` as a ``docker save`` archive at ``dest`` and return its manifest digest.

    ``names`` (``app``, ``app:1.0``, ``registry.example.com/team/app:1.0``) become the image's
    RepoTags; with none the image loads untagged, as ``docker load`` shows a saved image ID.
    Layer blobs come from ``store``, verified as they are looked up. ``dest`` is replaced whole
    and atomically; a file that cannot be written is one StorageError naming it.
    """
    tags = repo_tags(names)
    target = Path(dest)
    contents = layout_blobs(image, store)
    files: list[tuple[str, Path | bytes]] = [
        *contents.blobs,
        ("index.json", index_json(index_entries(contents.manifest, None, tags))),
        ("manifest.json", _manifest_json(contents.config_name, tags, contents.layer_names)),
        ("oci-layout", oci_layout_json()),
    ]
    if tags and contents.layer_names:
        top_layer = contents.layer_names[-1].rsplit("/", 1)[1]
        files.append(("repositories", _repositories_json(tags, top_layer)))
    try:
        write_tar_file(target, sorted(files, key=lambda item: item[0]))
    except OSError as err:
        raise StorageError(
            f"{err.filename or target}: cannot write: {err.strerror or err}"
        ) from err
    return contents.encoded.manifest_digest
