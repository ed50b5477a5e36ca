"""A small busybox base image for real builds: in a store under a name, and as an OCI layout.

``make_busybox_image(workdir, store)`` takes the busybox rootfs of ``tests/rootfs.py`` (the
host's static busybox with a symlink per applet, ``/etc/passwd`` and ``/etc/group`` with root and
a non-root user ``app`` 1000:1000), adds what a base image has (``/tmp`` 1777, ``/root``,
``/home/app`` owned by app), packs it with ``write_tree_layer`` into a one-layer image, saves it
in ``store`` as ``busybox:latest`` and writes it as an OCI layout directory, for
``--build-context busybox=oci-layout://<layout>``. The layer is written with SOURCE_DATE_EPOCH 0,
so the image (and its digest) is the same in every store and every test.

Helpers for looking at results: :func:`image_tree` unpacks an image's layers into a directory
(the final filesystem, whiteouts applied), :func:`layer_members` lists a layer blob's tar
entries and :func:`layer_bytes` returns everything a layer holds, names and contents, to search
for a string that must not be there. :func:`scratch_entries` is what builds left in a cache
dir's scratch area.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from memobuild.build.layers import unpack_layer, write_tree_layer
from memobuild.cache.entries import LayerRef
from memobuild.cache.store import LocalStore
from memobuild.dockerfile.stages import host_platform
from memobuild.images import ImageStore
from memobuild.oci.image import HistoryEntry, Image, ImageConfig
from memobuild.oci.layout import write_oci_layout
from rootfs import make_busybox_rootfs

BASE_NAME = "busybox"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class BusyboxImage:
    """The base image as a test uses it."""

    name: str  # what FROM names: saved under it in the store
    image: Image
    digest: str  # manifest digest
    layout: Path  # an OCI layout directory holding it, tagged "latest"

    @property
    def build_context(self) -> str:
        """The ``--build-context`` value that provides this image from its layout."""
        return f"{self.name}=oci-layout://{self.layout}:latest"


def make_busybox_rootfs_dir(root: Path) -> Path:
    """The busybox tree with the directories every base image has."""
    make_busybox_rootfs(root)
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)  # noqa: S103 - a base image's /tmp is world-writable
    (root / "root").mkdir(mode=0o700)
    home = root / "home" / "app"
    home.mkdir(parents=True)
    os.chown(home, 1000, 1000)
    return root


def make_busybox_image(
    workdir: Path, store: LocalStore, *, name: str = BASE_NAME, layer_root: Path | None = None
) -> BusyboxImage:
    """Build the base image under ``workdir`` and save it in ``store`` as ``name``.

    ``layer_root`` packs an existing tree instead of the standard busybox rootfs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    root = layer_root if layer_root is not None else make_busybox_rootfs_dir(workdir / "rootfs")
    blob = write_tree_layer(root, workdir / "base-layer.tar.gz", source_date_epoch=0)
    store.put_blob_file(blob.path, blob.digest)
    blob.path.unlink()
    platform = host_platform()
    image = Image(
        config=ImageConfig(env=(f"PATH={BASE_PATH}",), cmd=("sh",)),
        layers=(LayerRef(blob.digest, blob.diff_id, blob.size),),
        history=(HistoryEntry(created_by="busybox rootfs (tests/busybox_image.py)"),),
        architecture=platform.architecture,
        os=platform.os,
        variant=platform.variant or None,
    )
    digest = ImageStore(store).save(image, [name])
    layout = workdir / f"{name}-layout"
    write_oci_layout(image, store, layout, tag="latest")
    return BusyboxImage(name=name, image=image, digest=digest, layout=layout)


def image_tree(store: LocalStore, image: Image, dest: Path) -> Path:
    """Unpack every layer of ``image`` into ``dest``: the filesystem a container would see."""
    dest.mkdir(parents=True, exist_ok=True)
    for layer in image.layers:
        unpack_layer(store.blob_path(layer.digest), dest)
    return dest


def _open_layer(store: LocalStore, layer: LayerRef) -> tarfile.TarFile:
    data = store.read_blob(layer.digest)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:")


def layer_members(store: LocalStore, layer: LayerRef) -> list[str]:
    """The entry names of a layer blob, in tar order (``./`` and trailing ``/`` stripped)."""
    with _open_layer(store, layer) as tar:
        return [m.name.removeprefix("./").rstrip("/") for m in tar.getmembers()]


def layer_bytes(store: LocalStore, layer: LayerRef) -> bytes:
    """Every entry name, link target and file content of a layer, concatenated."""
    out = bytearray()
    with _open_layer(store, layer) as tar:
        for member in tar.getmembers():
            out += member.name.encode() + b"\0" + member.linkname.encode() + b"\0"
            if member.isfile():
                extracted = tar.extractfile(member)
                if extracted is not None:
                    out += extracted.read()
    return bytes(out)


def make_context(root: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    """A build context at ``root``: its Dockerfile and the given text files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def scratch_entries(cache: Path, settle: float = 10.0) -> list[str]:
    """What is left in the builds' scratch area of the cache dir ``cache`` (nothing, after any
    build has returned) once the background removers a build starts (build/rootfs.py) are
    done, waiting at most ``settle`` seconds for them."""
    area = cache / "tmp" / "rootfs"
    deadline = time.monotonic() + settle
    while True:
        left = sorted(os.listdir(area)) if area.exists() else []
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)
