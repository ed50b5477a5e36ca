"""OCI image layouts (image-layout.md): read one as a base image, write an image as one.

A layout is a directory, or a tar of one, holding ``oci-layout`` (the version), ``index.json``
(an image index naming the images, usually with ``org.opencontainers.image.ref.name`` as the
tag) and ``blobs/<alg>/<hex>``. Reading follows index.json to one image manifest (by tag, else
the only image; a nested index is resolved to the wanted platform), verifies every blob it
touches against its digest and size, and imports the layers into the local store, so the build
only ever uses content the store has verified. Blob paths are built from validated digests,
never from names in the input, and nothing from a tar is extracted to the file system.

Writing is deterministic: the same image and tag give the same files, and as a tar the same
bytes (sorted entries, zero times and owners). A directory is updated in place, as skopeo and
buildx do: other images in its index.json are kept, one with the same tag is replaced, and
index.json is written last so that a reader never sees it name a blob that is not there yet.
An image can be named by a bare tag (``ref.name``, as skopeo writes) or by image names, which
are written as BuildKit and ``docker save`` write them (``io.containerd.image.name`` the full
reference, ``ref.name`` its tag). The pieces (:func:`layout_blobs`, :func:`index_entries`,
:func:`write_tar_file`) are shared with the ``docker save`` writer, whose archives hold an OCI
layout too.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from memobuild.cache.entries import LayerRef
from memobuild.cache.store import LocalStore
from memobuild.dockerfile.stages import Platform, host_platform
from memobuild.errors import (
    CASIntegrityError,
    DockerfileParseError,
    InputError,
    InvalidImageError,
    PathNotFoundError,
    StorageError,
    UnreadablePathError,
)
from memobuild.oci.diff_ids import verify_diff_ids
from memobuild.oci.image import (
    ANNOTATION_REF_NAME,
    CONTAINERD_IMAGE_NAME,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_DOCUMENT_BYTES,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    DescriptorPlatform,
    EncodedImage,
    Image,
    Manifest,
    encode_image,
    index_json,
    layer_media_type,
    normalize_image_name,
    parse_config,
    parse_index,
    parse_manifest,
    sniff_document,
)
from memobuild.verify import Hasher, parse_digest, verify_bytes, verify_file

__all__ = [
    "LAYOUT_VERSION",
    "LayoutBlobs",
    "TarArchive",
    "check_diff_id",
    "import_blob_stream",
    "index_entries",
    "layer_diff_id",
    "layout_blobs",
    "oci_layout_json",
    "platform_matches",
    "qualified_image_name",
    "read_oci_layout",
    "write_oci_layout",
    "write_tar_file",
]

LAYOUT_VERSION = "1.0.0"
# Blobs up to this size are imported from a tar through memory; larger ones through a temp file.
IN_MEMORY_BLOB = 64 << 20
COPY_CHUNK = 1 << 20
# Nested indexes deeper than this are a loop or an attack, not an image.
MAX_INDEX_DEPTH = 8
# annotations.md: the grammar of org.opencontainers.image.ref.name.
_REF_NAME = re.compile(
    r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*"
)


class PlatformLike(Protocol):
    """What selection needs of a platform, normalised as ``dockerfile.stages.Platform`` is."""

    @property
    def os(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def variant(self) -> str: ...


def platform_matches(declared: DescriptorPlatform | None, wanted: PlatformLike) -> bool:
    """Whether an index entry is for ``wanted``, comparing containerd-normalised platforms
    (``arm64/v8`` is ``arm64``, ``arm`` is ``arm/v7``). Entries without a platform, or with one
    that is not a real platform (``unknown/unknown`` attestations), never match."""
    if declared is None or not declared.os or not declared.architecture:
        return False
    try:
        parsed = Platform.parse(str(declared))
    except DockerfileParseError:
        return False
    return parsed == Platform(wanted.os, wanted.architecture, wanted.variant)


# --- blob sources -----------------------------------------------------------------------------


def _blob_name(digest: str) -> str:
    algorithm, hex_part = parse_digest(digest)  # validated before it becomes a path
    return f"blobs/{algorithm}/{hex_part}"


def _check_descriptor_size(desc: Descriptor, actual: int, where: str) -> None:
    if actual != desc.size:
        raise InvalidImageError(
            where, f"blob {desc.digest} is {actual} bytes, its descriptor says {desc.size}"
        )


def _use_stored_blob(store: LocalStore, desc: Descriptor, where: str) -> bool:
    """If the store already holds the blob (verified now, and its use recorded so gc keeps it
    for this build), there is nothing to copy. A corrupt stored copy has just been quarantined:
    then the caller imports it again from the source."""
    if not store.has_blob(desc.digest):
        return False
    try:
        path = store.blob_path(desc.digest)
    except CASIntegrityError:
        return False
    _check_descriptor_size(desc, path.stat().st_size, where)
    return True


def import_blob_stream(store: LocalStore, stream: IO[bytes], desc: Descriptor, where: str) -> None:
    """Put the blob read from ``stream`` into the store, verified against ``desc`` (digest and
    size). Small blobs go through memory; large ones through a temp file, since the store's
    streaming put takes a path."""
    if _use_stored_blob(store, desc, where):
        return
    if desc.size <= IN_MEMORY_BLOB:
        data = stream.read(desc.size + 1)
        _check_descriptor_size(desc, len(data), where)
        store.put_blob_bytes(data, desc.digest)
        return
    with tempfile.NamedTemporaryFile(prefix="memobuild-blob-") as tmp:
        shutil.copyfileobj(stream, tmp, COPY_CHUNK)
        tmp.flush()
        _check_descriptor_size(desc, tmp.tell(), where)
        store.put_blob_file(tmp.name, desc.digest)


def layer_diff_id(path: Path, media_type: str) -> str | None:
    """The sha256 of a layer blob's uncompressed tar; None for zstd, which this Python cannot
    decompress (its diff_id is then taken on trust, as containerd does until unpack)."""
    if media_type == OCI_LAYER_ZSTD:
        return None
    hasher = Hasher("sha256")
    try:
        with open(path, "rb") as raw:
            stream: io.BufferedIOBase = raw
            if media_type == OCI_LAYER_GZIP:
                stream = gzip.GzipFile(fileobj=raw)  # reads through raw, closed with it
            while chunk := stream.read(COPY_CHUNK):
                hasher.update(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise InvalidImageError(path, f"layer is not a valid {media_type}: {err}") from None
    return hasher.digest()


def check_diff_id(
    store: LocalStore, digest: str, media_type: str, diff_id: str, where: str
) -> None:
    """Check now that a stored layer blob uncompresses to ``diff_id``, as the image config
    claims (see ``diff_ids.py``, which records the result per blob, so it is made once)."""
    size = store.blob_path(digest).stat().st_size
    verify_diff_ids(store, [LayerRef(digest, diff_id, size, media_type)], where)


class TarArchive:
    """Random access to the regular files of a tar (plain or compressed) by normalised name.

    Names are looked up, never extracted, so ``../`` or absolute names in the archive cannot
    reach the file system. Hard and symbolic links inside the archive are followed the way
    ``docker save`` uses them (a layer shared by two images is stored once and linked).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
        except FileNotFoundError as err:
            raise PathNotFoundError(path, "archive") from err
        except IsADirectoryError as err:
            raise InputError(f"{path}: is a directory, not a tar archive") from err
        except PermissionError as err:
            raise UnreadablePathError(path, err.strerror or "permission denied") from err
        except (tarfile.TarError, OSError, EOFError) as err:
            raise InvalidImageError(path, f"not a readable tar archive: {err}") from None
        self._members: dict[str, tarfile.TarInfo] = {}
        try:
            for member in self._tar:
                name = self.normalise(member.name)
                if name:
                    self._members[name] = member
        except (tarfile.TarError, OSError, EOFError) as err:
            self._tar.close()
            raise InvalidImageError(path, f"truncated or corrupt tar archive: {err}") from None

    @staticmethod
    def normalise(name: str) -> str:
        parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".")]
        return "/".join(parts)

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> TarArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, name: str) -> bool:
        member = self._members.get(self.normalise(name))
        return member is not None and (member.isfile() or member.islnk() or member.issym())

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        member = self._members.get(self.normalise(name))
        stream = None
        if member is not None:
            try:
                stream = self._tar.extractfile(member)
            except (tarfile.TarError, KeyError):
                stream = None  # a link to a member that is not in the archive
        if stream is None:
            raise InvalidImageError(self.path, f"{name} is missing from the archive")
        with stream:
            try:
                yield stream
            except (tarfile.TarError, EOFError) as err:
                raise InvalidImageError(self.path, f"{name}: corrupt archive: {err}") from None

    def read(self, name: str, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        with self.open(name) as stream:
            data = stream.read(limit + 1)
        if len(data) > limit:
            raise InvalidImageError(self.path, f"{name} is larger than {limit} bytes")
        return data


class _Layout(Protocol):
    where: str

    def has(self, name: str) -> bool: ...
    def read(self, name: str, limit: int = MAX_DOCUMENT_BYTES) -> bytes: ...
    def import_blob(self, store: LocalStore, desc: Descriptor) -> None: ...


class _DirLayout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    def read(self, name: str, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        path = self.root / name
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise InvalidImageError(self.where, f"{name} is missing") from None
        except OSError as err:
            raise UnreadablePathError(path, err.strerror or str(err)) from err
        if len(data) > limit:
            raise InvalidImageError(self.where, f"{name} is larger than {limit} bytes")
        return data

    def import_blob(self, store: LocalStore, desc: Descriptor) -> None:
        name = _blob_name(desc.digest)
        path = self.root / name
        if not path.is_file():
            raise InvalidImageError(self.where, f"blob {desc.digest} is missing ({name})")
        _check_descriptor_size(desc, path.stat().st_size, self.where)
        if not _use_stored_blob(store, desc, self.where):
            store.put_blob_file(path, desc.digest)


class _TarLayout:
    def __init__(self, archive: TarArchive) -> None:
        self.archive = archive
        self.where = str(archive.path)

    def has(self, name: str) -> bool:
        return self.archive.has(name)

    def read(self, name: str, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
        return self.archive.read(name, limit)

    def import_blob(self, store: LocalStore, desc: Descriptor) -> None:
        name = _blob_name(desc.digest)
        if not self.archive.has(name):
            raise InvalidImageError(self.where, f"blob {desc.digest} is missing ({name})")
        with self.archive.open(name) as stream:
            import_blob_stream(store, stream, desc, f"{self.where}: {name}")


def _read_blob(layout: _Layout, desc: Descriptor, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """A small blob (manifest, index, config) from the layout, verified against ``desc``."""
    name = _blob_name(desc.digest)
    if not layout.has(name):
        raise InvalidImageError(layout.where, f"blob {desc.digest} is missing ({name})")
    data = layout.read(name, limit)
    verify_bytes(data, desc.digest, where=f"{layout.where}: {name}")
    _check_descriptor_size(desc, len(data), layout.where)
    return data


@contextmanager
def _open_layout(path: Path) -> Iterator[_Layout]:
    if path.is_dir():
        yield _DirLayout(path)
        return
    if not path.exists():
        raise PathNotFoundError(path, "OCI layout")
    with TarArchive(path) as archive:
        yield _TarLayout(archive)


# --- reading ----------------------------------------------------------------------------------


def _check_layout_file(layout: _Layout) -> None:
    if not layout.has("oci-layout"):
        raise InvalidImageError(
            layout.where,
            "not an OCI image layout: no oci-layout file (for a docker save archive, use "
            "docker-archive:// instead of oci-layout://)",
        )
    try:
        doc = json.loads(layout.read("oci-layout", 1 << 16))
    except (UnicodeDecodeError, ValueError) as err:
        raise InvalidImageError(layout.where, f"oci-layout is not valid JSON: {err}") from None
    version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
    if not isinstance(version, str) or version.split(".")[0] != "1":
        raise InvalidImageError(
            layout.where,
            f"oci-layout has imageLayoutVersion {json.dumps(version)}; MemoBuild reads 1.x",
        )


def _ref_names(desc: Descriptor) -> list[str]:
    return [
        name
        for name in (desc.annotation(ANNOTATION_REF_NAME), desc.annotation(CONTAINERD_IMAGE_NAME))
        if name
    ]


def _matches_tag(desc: Descriptor, tag: str) -> bool:
    for name in _ref_names(desc):
        if name == tag:
            return True
        # Older containerd exports put a whole reference in ref.name: match its tag part.
        if "/" in name or ":" in name:
            head, colon, name_tag = name.rpartition(":")
            if colon and "/" not in name_tag and name_tag == tag and head:
                return True
    return False


def _describe(candidates: Sequence[Descriptor]) -> str:
    tags = sorted({n for d in candidates for n in _ref_names(d)})
    if tags:
        return "tags: " + ", ".join(tags)
    platforms = sorted({str(d.platform) for d in candidates if d.platform is not None})
    if platforms:
        return "platforms: " + ", ".join(platforms)
    return "digests: " + ", ".join(d.digest for d in candidates)


def _pick(
    candidates: Sequence[Descriptor], platform: PlatformLike, where: str, what: str
) -> Descriptor:
    """One descriptor out of several: the only one, else the one for ``platform``."""
    if not candidates:
        raise InvalidImageError(where, f"{what} holds no image")
    if len(candidates) == 1:
        return candidates[0]
    matching = [d for d in candidates if platform_matches(d.platform, platform)]
    if len(matching) == 1:
        return matching[0]
    wanted = f"{platform.os}/{platform.architecture}" + (
        f"/{platform.variant}" if platform.variant else ""
    )
    if not matching:
        raise InvalidImageError(
            where, f"{what} has no image for {wanted} ({_describe(candidates)})"
        )
    raise InvalidImageError(
        where,
        f"{what} has {len(matching)} images for {wanted}; name one by tag or digest "
        f"({_describe(matching)})",
    )


def _descriptor_for_blob(layout: _Layout, digest: str) -> Descriptor:
    """A descriptor for a manifest or index named only by digest (``oci-layout://PATH@DIGEST``
    where index.json does not list it): media type and size come from the verified blob."""
    name = _blob_name(digest)
    if not layout.has(name):
        raise InvalidImageError(layout.where, f"no manifest or index with digest {digest}")
    data = layout.read(name)
    verify_bytes(data, digest, where=f"{layout.where}: {name}")
    return Descriptor(sniff_document(data, f"{layout.where}: {digest}"), digest, len(data))


def _select_top(
    layout: _Layout,
    index_descs: Sequence[Descriptor],
    tag: str | None,
    digest: str | None,
    platform: PlatformLike,
    where: str,
) -> Descriptor:
    known = [d for d in index_descs if d.media_type in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES]
    if digest is not None:
        for desc in known:
            if desc.digest == digest:
                return desc
        # Not listed at the top: any manifest or index blob of the layout may be named.
        return _descriptor_for_blob(layout, digest)
    if tag is not None:
        tagged = [d for d in known if _matches_tag(d, tag)]
        if not tagged:
            raise InvalidImageError(
                where, f"no image tagged {tag!r} in index.json ({_describe(known) or 'empty'})"
            )
        return _pick(tagged, platform, where, f"tag {tag!r}")
    if len(known) > 1:
        # buildx reads oci-layout://PATH as PATH:latest when several images are listed.
        latest = [d for d in known if "latest" in _ref_names(d)]
        if latest:
            known = latest
        elif not any(d.platform is not None for d in known):
            raise InvalidImageError(
                where,
                f"index.json lists {len(known)} images; name one with oci-layout://PATH:TAG or "
                f"oci-layout://PATH@DIGEST ({_describe(known)})",
            )
    return _pick(known, platform, where, "index.json")


def _resolve_manifest(
    layout: _Layout, desc: Descriptor, platform: PlatformLike
) -> tuple[Manifest, bytes, str]:
    """Follow ``desc`` through nested indexes to an image manifest: (manifest, bytes, digest)."""
    for _ in range(MAX_INDEX_DEPTH):
        data = _read_blob(layout, desc)
        where = f"{layout.where}: {desc.digest}"
        media_type = desc.media_type or sniff_document(data, where)
        if media_type in MANIFEST_MEDIA_TYPES:
            return parse_manifest(data, where), data, desc.digest
        if media_type not in INDEX_MEDIA_TYPES:
            raise InvalidImageError(where, f"unsupported media type {media_type!r}")
        index = parse_index(data, where)
        known = [
            d for d in index.manifests if d.media_type in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES
        ]
        desc = _pick(known, platform, where, "the image index")
    raise InvalidImageError(layout.where, f"image indexes nested deeper than {MAX_INDEX_DEPTH}")


def read_oci_layout(
    path: str | os.PathLike[str],
    tag: str | None,
    store: LocalStore,
    platform: PlatformLike | None = None,
    *,
    digest: str | None = None,
) -> Image:
    """The image ``tag`` (or ``digest``, or the only image) of the layout at ``path``, a
    directory or a tar of one, with its layers imported into ``store``.

    A multi-platform image is resolved to ``platform`` (default: this host's). Every blob read
    is verified (CASIntegrityError on a mismatch); a layout that is malformed, lacks a blob or
    has no such image is InvalidImageError.
    """
    root = Path(path)
    wanted = platform if platform is not None else host_platform()
    if digest is not None:
        try:
            parse_digest(digest)
        except InputError as err:
            raise InvalidImageError(root, str(err)) from None
    with _open_layout(root) as layout:
        _check_layout_file(layout)
        index = parse_index(layout.read("index.json"), f"{layout.where}: index.json")
        top = _select_top(layout, index.manifests, tag, digest, wanted, layout.where)
        manifest, manifest_bytes, manifest_digest = _resolve_manifest(layout, top, wanted)
        where = f"{layout.where}: manifest {manifest_digest}"
        config_bytes = _read_blob(layout, manifest.config)
        parsed = parse_config(config_bytes, f"{layout.where}: config {manifest.config.digest}")
        if len(manifest.layers) != len(parsed.diff_ids):
            raise InvalidImageError(
                where,
                f"lists {len(manifest.layers)} layer(s) but its config's rootfs.diff_ids has "
                f"{len(parsed.diff_ids)}",
            )
        layers = []
        for desc, diff_id in zip(manifest.layers, parsed.diff_ids, strict=True):
            media_type = layer_media_type(desc.media_type, where)
            layout.import_blob(store, desc)
            check_diff_id(store, desc.digest, media_type, diff_id, where)
            layers.append(LayerRef(desc.digest, diff_id, desc.size, media_type))
        store.put_blob_bytes(config_bytes, manifest.config.digest)
        store.put_blob_bytes(manifest_bytes, manifest_digest)
        return parsed.to_image(layers, where)


# --- writing ----------------------------------------------------------------------------------


def _check_ref_name(tag: str) -> None:
    if not _REF_NAME.fullmatch(tag):
        raise InputError(
            f"invalid OCI layout tag {tag!r}: use letters, digits and separators (- . _ : @ + /), "
            "e.g. 'latest' or 'v1.2'"
        )


def qualified_image_name(name: str) -> str:
    """The full reference that containerd and ``docker save`` put in ``io.containerd.image.name``
    (``app:1.0`` is ``docker.io/library/app:1.0``); InputError for an invalid name or one with
    a digest, which names content rather than an image to tag."""
    normalized = normalize_image_name(name)
    if "@" in normalized:
        raise InputError(f"cannot name an image {name!r}: a digest names content, use name[:tag]")
    head, slash, _ = normalized.partition("/")
    if slash and ("." in head or ":" in head or head == "localhost" or head.lower() != head):
        return normalized
    return f"docker.io/{normalized}" if slash else f"docker.io/library/{normalized}"


def _blob_sources(
    image: Image,
    store: LocalStore,
    config: bytes,
    config_digest: str,
    manifest: bytes,
    manifest_digest: str,
) -> list[tuple[str, Path | bytes]]:
    """(blob name, source) for every blob of the image, deduplicated, in name order. Layer
    sources are the store's files, verified as they are looked up."""
    blobs: dict[str, Path | bytes] = {
        _blob_name(config_digest): config,
        _blob_name(manifest_digest): manifest,
    }
    for layer in image.layers:
        name = _blob_name(layer.digest)
        if name not in blobs:
            path = store.blob_path(layer.digest)
            if path.stat().st_size != layer.size:
                raise InvalidImageError(
                    path,
                    f"layer {layer.digest} is {path.stat().st_size} bytes, the image "
                    f"says {layer.size}",
                )
            blobs[name] = path
    return sorted(blobs.items())


@dataclass(frozen=True)
class LayoutBlobs:
    """What an image contributes to a layout besides index.json: its encoded config and
    manifest, every blob by its layout name (``blobs/sha256/<hex>``, in name order), and the
    untagged index entry for its manifest (with the image's platform)."""

    encoded: EncodedImage
    blobs: tuple[tuple[str, Path | bytes], ...]
    manifest: Descriptor
    config_name: str  # the config blob's layout name
    layer_names: tuple[str, ...]  # the layer blobs' layout names, bottom first


def layout_blobs(image: Image, store: LocalStore) -> LayoutBlobs:
    """The blobs of ``image`` as a layout holds them; layer files come from ``store``."""
    encoded = encode_image(image)
    blobs = _blob_sources(
        image,
        store,
        encoded.config,
        encoded.config_digest,
        encoded.manifest,
        encoded.manifest_digest,
    )
    platform = DescriptorPlatform(image.os, image.architecture, image.variant or "")
    entry = Descriptor(OCI_MANIFEST, encoded.manifest_digest, len(encoded.manifest), (), platform)
    return LayoutBlobs(
        encoded=encoded,
        blobs=tuple(blobs),
        manifest=entry,
        config_name=_blob_name(encoded.config_digest),
        layer_names=tuple(_blob_name(layer.digest) for layer in image.layers),
    )


def index_entries(
    manifest: Descriptor, tag: str | None = None, names: Sequence[str] = ()
) -> list[Descriptor]:
    """The index.json entries naming ``manifest``: one with ``tag`` as its
    ``org.opencontainers.image.ref.name``, and one per image name in ``names`` the way BuildKit,
    containerd and ``docker save`` write them (``io.containerd.image.name`` the full reference,
    ref.name its tag), so that ``docker load`` and ``ctr import`` name the image. No tag and no
    names: one untagged entry."""
    entries = []
    if tag is not None:
        _check_ref_name(tag)
        entries.append(dataclasses.replace(manifest, annotations=((ANNOTATION_REF_NAME, tag),)))
    for name in dict.fromkeys(qualified_image_name(n) for n in names):
        annotations = ((ANNOTATION_REF_NAME, name.rsplit(":", 1)[1]), (CONTAINERD_IMAGE_NAME, name))
        entries.append(dataclasses.replace(manifest, annotations=annotations))
    return entries or [manifest]


def oci_layout_json() -> bytes:
    """The ``oci-layout`` file every layout starts with."""
    return json.dumps({"imageLayoutVersion": LAYOUT_VERSION}, separators=(",", ":")).encode()


def _write_atomic(path: Path, data: bytes | Path) -> None:
    """Write a file beside its final name and rename it into place."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(data, Path):
                with open(data, "rb") as src:
                    shutil.copyfileobj(src, out, COPY_CHUNK)
            else:
                out.write(data)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _replaces(new: Descriptor, old: Descriptor) -> bool:
    """Whether writing index entry ``new`` drops ``old`` from an existing index.json: the same
    tag (and, where both carry one, the same full image name), or the same image untagged."""
    tag = new.annotation(ANNOTATION_REF_NAME)
    if tag is None:
        return old.annotation(ANNOTATION_REF_NAME) is None and old.digest == new.digest
    if old.annotation(ANNOTATION_REF_NAME) != tag:
        return False
    new_name = new.annotation(CONTAINERD_IMAGE_NAME)
    old_name = old.annotation(CONTAINERD_IMAGE_NAME)
    return new_name is None or old_name is None or new_name == old_name


def _write_dir(
    root: Path, blobs: Sequence[tuple[str, Path | bytes]], entries: Sequence[Descriptor]
) -> None:
    existing: list[Descriptor] = []
    if (root / "index.json").exists():
        layout = _DirLayout(root)
        _check_layout_file(layout)
        index = parse_index(layout.read("index.json"), f"{root}: index.json")
        # Keep every other image and tag; drop the entries these replace.
        existing = [d for d in index.manifests if not any(_replaces(e, d) for e in entries)]
    elif root.exists() and any(root.iterdir()):
        raise InputError(
            f"{root}: not empty and not an OCI layout; choose a new or empty directory"
        )
    for name, source in blobs:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file():
            try:
                verify_file(target, "sha256:" + target.name)
                continue  # already there, and intact
            except CASIntegrityError:
                pass  # overwrite a corrupt copy
        _write_atomic(target, source)
    _write_atomic(root / "oci-layout", oci_layout_json())
    _write_atomic(root / "index.json", index_json([*existing, *entries]))


def _tar_info(name: str, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info


def write_tar_file(dest: Path, files: Sequence[tuple[str, Path | bytes]]) -> None:
    """Write ``files`` (archive name, content or file to copy) as one tar at ``dest``, in the
    given order after their parent directories (sorted), with zero times and owners, so that
    the same files give the same bytes. Written beside ``dest`` and renamed into place: a
    reader never sees a partial archive, and a failure leaves any previous one intact."""
    if dest.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            directories = sorted(
                {str(parent) + "/" for n, _ in files for parent in PurePosixPath(n).parents}
                - {"./"}
            )
            for directory in directories:
                tar.addfile(_tar_info(directory, directory=True))
            for name, source in files:
                if isinstance(source, Path):
                    with open(source, "rb") as src:
                        tar.addfile(_tar_info(name, os.fstat(src.fileno()).st_size), src)
                else:
                    tar.addfile(_tar_info(name, len(source)), io.BytesIO(source))
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_oci_layout(
    image: Image,
    store: LocalStore,
    dest: str | os.PathLike[str],
    tag: str | None = None,
    *,
    names: Sequence[str] = (),
    tar: bool | None = None,
) -> str:
    """Write ``image`` as an OCI layout at ``dest`` and return its manifest digest.

    ``dest`` is written as one tar (replaced whole) when ``tar`` is true, or when ``tar`` is
    None and ``dest`` ends in ``.tar``; otherwise it is a directory, created or updated (an image
    with the same tag is replaced, others are kept). ``tag`` becomes the
    ``org.opencontainers.image.ref.name`` annotation; each of ``names`` (image names such as
    ``app:1.0``) adds an entry as BuildKit's oci exporter writes it (see :func:`index_entries`).
    Layer blobs come from ``store`` and are verified as they are copied out.
    """
    target = Path(dest)
    contents = layout_blobs(image, store)
    entries = index_entries(contents.manifest, tag, names)
    as_tar = target.suffix == ".tar" if tar is None else tar
    try:
        if as_tar:
            files: list[tuple[str, Path | bytes]] = [
                ("oci-layout", oci_layout_json()),
                ("index.json", index_json(entries)),
                *contents.blobs,
            ]
            write_tar_file(target, files)
        else:
            _write_dir(target, contents.blobs, entries)
    except OSError as err:
        raise StorageError(
            f"{err.filename or target}: cannot write: {err.strerror or err}"
        ) from err
    return contents.encoded.manifest_digest
