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

:func:`import_image` makes a one-layer image from a root filesystem, as ``docker import`` does
(``memobuild import``): a directory is packed into a deterministic layer (entries sorted, mtimes
clamped to SOURCE_DATE_EPOCH when given); a tar file (plain, gzip, bzip2 or xz) is read once,
checked entry by entry and stored as the layer itself, so its owners, modes and times are the
image's. ``--change`` instructions (CMD, ENV, ...) set the image config.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

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
    OCI_LAYER,
    OCI_LAYER_GZIP,
    HistoryEntry,
    Image,
    encode_image,
    normalize_image_name,
    parse_config,
    parse_manifest,
)
from memobuild.verify import Hasher, parse_digest

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from memobuild.oci.image import ImageConfig

__all__ = ["ImageInfo", "ImageStore", "ImportResult", "import_image", "normalize_tag", "pin_name"]

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


# --- import: a root filesystem as a one-layer image ----------------------------------------------

# Instructions ``--change`` may give: the ones that only change the image config (docker's list).
CHANGE_INSTRUCTIONS = frozenset(
    {
        "cmd",
        "entrypoint",
        "env",
        "expose",
        "healthcheck",
        "label",
        "onbuild",
        "stopsignal",
        "user",
        "volume",
        "workdir",
    }
)
IMPORT_CREATED_BY = "memobuild import"
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_image` stored."""

    digest: str  # manifest digest
    names: tuple[str, ...]  # as stored (``busybox`` -> ``busybox:latest``)
    image: Image
    source_kind: str  # "directory", "tar", "tar+gzip", "tar+bzip2" or "tar+xz"
    entries: int  # entries in the layer


def import_image(
    store: LocalStore,
    source: str | os.PathLike[str],
    names: Sequence[str] = (),
    *,
    changes: Sequence[str] = (),
    message: str | None = None,
    platform: str | None = None,
    source_date_epoch: int | None = None,
) -> ImportResult:
    """Make a one-layer image of the root filesystem at ``source`` and save it under ``names``.

    ``source`` is a directory (packed as the layer, entries sorted, owners and modes kept, mtimes
    clamped to ``source_date_epoch``) or a tar file, plain or gzip, bzip2 or xz compressed
    (checked entry by entry and stored as the layer as it is; bzip2 and xz are stored
    decompressed, as layers are plain or gzip). ``changes`` are Dockerfile instructions that set
    the config (``CMD ["sh"]``, ``ENV PATH=/bin``; docker import's ``--change``), ``message`` the
    history comment, ``platform`` the image's ``os/arch[/variant]`` (default: this machine's).
    ``created`` is ``source_date_epoch`` when given and absent otherwise, so importing the same
    input twice gives the same digest. Without names the image is stored but not kept from gc.
    """
    from memobuild.build.state import rfc3339
    from memobuild.dockerfile.stages import Platform, host_platform

    tags = tuple(normalize_tag(name) for name in names)
    config = _config_from_changes(changes)
    target = Platform.parse(platform) if platform else host_platform()  # InputError if bad
    if source_date_epoch is not None and source_date_epoch < 0:
        raise InputError(f"source_date_epoch must not be negative: {source_date_epoch}")
    path = Path(source)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(
            f"{path}: no such file or directory (import takes a root filesystem directory or "
            "a tar file)"
        ) from None
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None
    with tempfile.TemporaryDirectory(prefix="memobuild-import-") as scratch:
        if stat.S_ISDIR(info.st_mode):
            layer, entries, kind = _directory_layer(store, path, Path(scratch), source_date_epoch)
        elif stat.S_ISREG(info.st_mode):
            layer, entries, kind = _tar_layer(store, path, Path(scratch))
        else:
            raise InputError(f"{path}: not a directory or a tar file")
    created = rfc3339(source_date_epoch) if source_date_epoch is not None else None
    image = Image(
        config=config,
        layers=(layer,),
        history=(HistoryEntry(created_by=IMPORT_CREATED_BY, created=created, comment=message),),
        architecture=target.architecture,
        os=target.os,
        variant=target.variant or None,
        created=created,
    )
    digest = ImageStore(store).save(image, tags)
    return ImportResult(digest=digest, names=tags, image=image, source_kind=kind, entries=entries)


def _config_from_changes(changes: Sequence[str]) -> ImageConfig:
    """The image config ``changes`` set, applied in order on an empty one, as docker import's
    ``--change`` does (values expanded with the variables earlier changes set)."""
    from memobuild.build.state import apply_config_changes, config_changes
    from memobuild.dockerfile import parse
    from memobuild.dockerfile.stages import load_stages
    from memobuild.errors import DockerfileParseError
    from memobuild.oci.image import ImageConfig

    config = ImageConfig()
    if isinstance(changes, str):
        raise InputError(f"changes must be a sequence of instructions, not the string {changes!r}")
    if not changes:
        return config
    for change in changes:
        where = f"--change {change!r}"
        if "\n" in change or "\r" in change:
            raise InputError(f"{where}: one instruction per --change, on one line")
        try:
            nodes = parse(change + "\n", filename="--change").nodes
        except DockerfileParseError as err:
            raise InputError(f"{where}: {err.reason}") from None
        if len(nodes) != 1 or nodes[0].keyword not in CHANGE_INSTRUCTIONS:
            allowed = ", ".join(sorted(k.upper() for k in CHANGE_INSTRUCTIONS))
            raise InputError(f"{where}: not an instruction import can apply ({allowed})")
    text = "FROM scratch\n" + "".join(change + "\n" for change in changes)
    try:
        stage = load_stages(parse(text, filename="--change")).stages[0]
    except DockerfileParseError as err:
        index = (err.line or 2) - 2
        change = changes[index] if 0 <= index < len(changes) else changes[-1]
        raise InputError(f"--change {change!r}: {err.reason}") from None
    author = None
    cmd_set = False
    for step in stage.steps:
        update = config_changes(step, cmd_set=cmd_set)
        config, author = apply_config_changes(config, author, update)
        cmd_set = cmd_set or update.get("cmd") is not None
    return config


def _directory_layer(
    store: LocalStore, root: Path, scratch: Path, source_date_epoch: int | None
) -> tuple[LayerRef, int, str]:
    from memobuild.build.layers import write_tree_layer

    blob = write_tree_layer(root, scratch / "layer.tar.gz", source_date_epoch=source_date_epoch)
    store.put_blob_file(blob.path, blob.digest)
    return LayerRef(blob.digest, blob.diff_id, blob.size, OCI_LAYER_GZIP), blob.entries, "directory"


class _Tee(io.RawIOBase):
    """Reads through ``stream``, hashing what goes by and copying it to ``sink`` if one is
    given: one read of a tar gives its digest, its check and (for bzip2/xz) its plain copy."""

    def __init__(
        self, stream: IO[bytes] | io.BufferedIOBase, hasher: Hasher, sink: IO[bytes] | None = None
    ) -> None:
        super().__init__()
        self._stream = stream
        self.hasher = hasher
        self._sink = sink

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._stream.read(len(view))
        view[: len(data)] = data
        self.hasher.update(data)
        if self._sink is not None:
            self._sink.write(data)
        return len(data)


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(6)
    if head.startswith(_ZSTD_MAGIC):
        raise InputError(
            f"{path}: zstd-compressed tar: decompress it first (zstd -d), or give a plain, "
            "gzip, bzip2 or xz tar"
        )
    if head.startswith(_GZIP_MAGIC):
        return "tar+gzip"
    if head.startswith(_BZIP2_MAGIC):
        return "tar+bzip2"
    if head.startswith(_XZ_MAGIC):
        return "tar+xz"
    return "tar"


def _check_member(path: Path, member: tarfile.TarInfo) -> None:
    """Refuse, at import, the entries no layer may hold (unpacking would refuse them later,
    in the middle of a build): names leaving the root, hard links to outside it."""
    for what, name in (("entry", member.name), ("hard link target", member.linkname)):
        if what == "hard link target" and not member.islnk():
            continue
        if name.startswith("/"):
            raise InputError(
                f"{path}: {what} {name!r} is an absolute path; a layer holds names relative to "
                "the root (make the tar with tar -C ROOT -cf FILE .)"
            )
        if ".." in name.split("/"):
            raise InputError(f"{path}: {what} {name!r} leaves the root ('..')")


def _decompressor(kind: str, stream: IO[bytes]) -> IO[bytes] | io.BufferedIOBase:
    if kind == "tar+gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if kind == "tar+bzip2":
        return bz2.BZ2File(stream, mode="rb")
    if kind == "tar+xz":
        return lzma.LZMAFile(stream, mode="rb")
    return stream


def _tar_layer(store: LocalStore, path: Path, scratch: Path) -> tuple[LayerRef, int, str]:
    kind = _sniff(path)
    recompress = kind in ("tar+bzip2", "tar+xz")
    plain_copy = scratch / "layer.tar"
    blob_hasher = Hasher("sha256")
    tar_hasher = Hasher("sha256")
    entries = 0
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(path.open("rb"))
        sink = stack.enter_context(plain_copy.open("wb")) if recompress else None
        blob_stream = io.BufferedReader(_Tee(raw, blob_hasher), _CHUNK)
        decompressed = _decompressor(kind, blob_stream)
        stack.callback(decompressed.close)
        tar_stream = io.BufferedReader(_Tee(decompressed, tar_hasher, sink), _CHUNK)
        try:
            with tarfile.open(fileobj=tar_stream, mode="r|") as tar:
                for member in tar:
                    _check_member(path, member)
                    entries += 1
            while tar_stream.read(_CHUNK):  # the end-of-archive padding counts too
                pass
            while blob_stream.read(_CHUNK):
                pass
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
            reason = "not a tar archive" if entries == 0 else f"damaged after {entries} entries"
            raise InputError(f"{path}: {reason} ({kind}: {err})") from None
    if recompress:
        digest = tar_hasher.digest()
        store.put_blob_file(plain_copy, digest)
        return LayerRef(digest, digest, plain_copy.stat().st_size, OCI_LAYER), entries, kind
    digest = blob_hasher.digest()
    # Verified again while copied: a file changed since it was read is refused, not stored.
    store.put_blob_file(path, digest)
    media_type = OCI_LAYER_GZIP if kind == "tar+gzip" else OCI_LAYER
    return LayerRef(digest, tar_hasher.digest(), blob_hasher.size, media_type), entries, kind
