"""Base images without a registry: OCI layouts, docker save archives, named build contexts,
the local image store and scratch, as FROM and COPY --from see them.

Layouts and archives are built here by hand, following image-layout.md and docker's save
format, from real tar.gz layers made with tarfile and gzip, then read back.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from memobuild.build.base import (
    BaseResolver,
    BuildContextSpec,
    parse_build_context,
    scratch_image,
)
from memobuild.cache.entries import LayerRef
from memobuild.cache.store import LocalStore
from memobuild.dockerfile.parser import parse
from memobuild.dockerfile.stages import BaseImageConfig, Platform, host_platform, load_stages
from memobuild.errors import CASIntegrityError, ImageNotFoundError, InputError, InvalidImageError
from memobuild.images import ImageStore
from memobuild.oci.docker_archive import read_docker_archive
from memobuild.oci.image import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    HistoryEntry,
    Image,
    ImageConfig,
    image_digest,
)
from memobuild.oci.layout import read_oci_layout, write_oci_layout

HOST = host_platform()
OTHER_ARCH = "s390x" if HOST.architecture != "s390x" else "ppc64le"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _zero(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class Layer:
    """A real layer: a small directory tarred with tarfile, gzipped with gzip."""

    def __init__(self, tmp_path: Path, files: dict[str, str], *, compress: bool = True) -> None:
        src = tmp_path / f"src-{hashlib.sha256(repr(files).encode()).hexdigest()[:12]}"
        for name, text in files.items():
            path = src / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(src.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(src)), recursive=False, filter=_zero)
        self.tar = buf.getvalue()
        self.blob = gzip.compress(self.tar, mtime=0) if compress else self.tar
        self.digest = sha(self.blob)
        self.diff_id = sha(self.tar)
        self.media_type = OCI_LAYER_GZIP if compress else OCI_LAYER
        self.files = files

    @property
    def ref(self) -> LayerRef:
        return LayerRef(self.digest, self.diff_id, len(self.blob), self.media_type)


def config_doc(layers: list[Layer], *, arch: str | None = None, **config: Any) -> dict[str, Any]:
    return {
        "architecture": arch or HOST.architecture,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }


class Layout:
    """An OCI image layout written by hand: blobs/sha256/<hex>, oci-layout, index.json."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes) -> dict[str, Any]:
        digest = sha(data)
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    def image(self, layers: list[Layer], config: dict[str, Any]) -> dict[str, Any]:
        config_desc = {"mediaType": OCI_CONFIG, **self.blob(json.dumps(config).encode())}
        layer_descs = [{"mediaType": layer.media_type, **self.blob(layer.blob)} for layer in layers]
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc,
            "layers": layer_descs,
        }
        return {"mediaType": OCI_MANIFEST, **self.blob(json.dumps(manifest).encode())}

    def nested(self, entries: list[tuple[dict[str, Any], str]]) -> dict[str, Any]:
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {**desc, "platform": {"os": "linux", "architecture": arch}}
                for desc, arch in entries
            ],
        }
        return {"mediaType": OCI_INDEX, **self.blob(json.dumps(index).encode())}

    def index(self, *entries: tuple[dict[str, Any], str | None]) -> None:
        manifests = []
        for desc, tag in entries:
            item = dict(desc)
            if tag is not None:
                item["annotations"] = {"org.opencontainers.image.ref.name": tag}
            manifests.append(item)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        (self.root / "index.json").write_text(json.dumps(index))


def tar_dir(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    return dest


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def docker_save(
    dest: Path, images: list[tuple[list[Layer], dict[str, Any], list[str]]], *, oci: bool = False
) -> Path:
    """A docker save archive: legacy layout (<id>/layer.tar, <hex>.json), or Docker 25's
    (blobs/sha256/<hex>). A layer shared by two images is stored once and symlinked, as docker
    does."""
    entries = []
    seen: dict[str, str] = {}
    with tarfile.open(dest, "w") as tar:
        for layers, config, tags in images:
            config_bytes = json.dumps(config).encode()
            config_hex = sha(config_bytes).split(":")[1]
            config_name = f"blobs/sha256/{config_hex}" if oci else f"{config_hex}.json"
            add_bytes(tar, config_name, config_bytes)
            layer_names = []
            for i, layer in enumerate(layers):
                if oci:
                    name = f"blobs/sha256/{layer.digest.split(':')[1]}"
                    if name not in seen:
                        add_bytes(tar, name, layer.blob)
                        seen[name] = name
                else:
                    layer_id = hashlib.sha256(f"{config_hex}{i}".encode()).hexdigest()
                    name = f"{layer_id}/layer.tar"
                    if layer.digest in seen:
                        link = tarfile.TarInfo(name)
                        link.type = tarfile.SYMTYPE
                        link.linkname = f"../{seen[layer.digest]}"
                        tar.addfile(link)
                    else:
                        add_bytes(tar, name, layer.blob)
                        add_bytes(tar, f"{layer_id}/VERSION", b"1.0")
                        seen[layer.digest] = name
                layer_names.append(name)
            entries.append({"Config": config_name, "RepoTags": tags, "Layers": layer_names})
        add_bytes(tar, "manifest.json", json.dumps(entries).encode())
    return dest


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    with LocalStore(tmp_path / "cache") as s:
        yield s  # type: ignore[misc]


def blob_bytes(store: LocalStore, digest: str) -> bytes:
    return store.read_blob(digest)


# --- OCI layouts ------------------------------------------------------------------------------


def test_read_oci_layout_by_tag_imports_verified_layers(tmp_path: Path, store: LocalStore) -> None:
    base = Layer(tmp_path, {"etc/os-release": "ID=test\n"})
    app = Layer(tmp_path, {"app/main.py": "print('hi')\n"})
    layout = Layout(tmp_path / "layout")
    v1 = layout.image([base], config_doc([base], Env=["PATH=/bin", "A=1"], WorkingDir="/srv"))
    v2 = layout.image([base, app], config_doc([base, app], User="nobody", Cmd=["python"]))
    layout.index((v1, "v1"), (v2, "v2"))

    image = read_oci_layout(layout.root, "v2", store)

    assert image.layers == (base.ref, app.ref)
    assert image.config.user == "nobody"
    assert image.config.cmd == ("python",)
    assert image.architecture == HOST.architecture
    assert image.history == (HistoryEntry("layer 0"), HistoryEntry("layer 1"))
    for layer in (base, app):
        assert blob_bytes(store, layer.digest) == layer.blob
    first = read_oci_layout(layout.root, "v1", store)
    assert first.config.env == ("PATH=/bin", "A=1") and first.config.working_dir == "/srv"


def test_read_oci_layout_selection_errors_name_what_is_there(
    tmp_path: Path, store: LocalStore
) -> None:
    layer = Layer(tmp_path, {"a": "a"})
    layout = Layout(tmp_path / "layout")
    one = layout.image([layer], config_doc([layer]))
    two = layout.image([layer], config_doc([layer], User="x"))
    layout.index((one, "v1"), (two, "v2"))
    with pytest.raises(InvalidImageError, match=r"no image tagged 'v3'.*tags: v1, v2"):
        read_oci_layout(layout.root, "v3", store)
    with pytest.raises(InvalidImageError, match=r"lists 2 images; name one with"):
        read_oci_layout(layout.root, None, store)
    # With one image listed, no tag is needed; and buildx's default tag "latest" is honoured.
    layout.index((one, None))
    assert read_oci_layout(layout.root, None, store).config.user is None
    layout.index((one, "v1"), (two, "latest"))
    assert read_oci_layout(layout.root, None, store).config.user == "x"
    # And by digest, listed or not.
    layout.index((one, "v1"))
    assert read_oci_layout(layout.root, None, store, digest=two["digest"]).config.user == "x"


def test_read_oci_layout_resolves_a_multi_platform_index(tmp_path: Path, store: LocalStore) -> None:
    native = Layer(tmp_path, {"native": "yes"})
    foreign = Layer(tmp_path, {"foreign": "yes"})
    layout = Layout(tmp_path / "layout")
    host_image = layout.image([native], config_doc([native], arch=HOST.architecture))
    other_image = layout.image([foreign], config_doc([foreign], arch=OTHER_ARCH))
    attestation = {"mediaType": OCI_MANIFEST, **layout.blob(b"{}")}
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**other_image, "platform": {"os": "linux", "architecture": OTHER_ARCH}},
            {**host_image, "platform": {"os": "linux", "architecture": HOST.architecture}},
            {**attestation, "platform": {"os": "unknown", "architecture": "unknown"}},
        ],
    }
    layout.index(({"mediaType": OCI_INDEX, **layout.blob(json.dumps(index).encode())}, "multi"))

    assert read_oci_layout(layout.root, "multi", store).layers == (native.ref,)
    other = read_oci_layout(layout.root, "multi", store, Platform("linux", OTHER_ARCH))
    assert other.layers == (foreign.ref,) and other.architecture == OTHER_ARCH
    with pytest.raises(InvalidImageError, match=r"no image for linux/riscv64.*platforms:"):
        read_oci_layout(layout.root, "multi", store, Platform("linux", "riscv64"))


def test_read_oci_layout_refuses_corrupt_and_missing_blobs(
    tmp_path: Path, store: LocalStore
) -> None:
    layer = Layer(tmp_path, {"file": "content"})
    layout = Layout(tmp_path / "layout")
    layout.index((layout.image([layer], config_doc([layer])), "v1"))
    blob = layout.root / "blobs" / "sha256" / layer.digest.split(":")[1]
    blob.write_bytes(layer.blob[:-1] + bytes([layer.blob[-1] ^ 1]))
    with pytest.raises(CASIntegrityError, match=layer.digest):
        read_oci_layout(layout.root, "v1", store)
    assert not store.has_blob(layer.digest)
    blob.unlink()
    with pytest.raises(InvalidImageError, match=f"blob {layer.digest} is missing"):
        read_oci_layout(layout.root, "v1", store)
    (layout.root / "oci-layout").unlink()
    with pytest.raises(InvalidImageError, match="docker-archive://"):
        read_oci_layout(layout.root, "v1", store)


def test_read_oci_layout_checks_config_against_manifest(tmp_path: Path, store: LocalStore) -> None:
    layer = Layer(tmp_path, {"file": "content"})
    other = Layer(tmp_path, {"file": "other"})
    layout = Layout(tmp_path / "layout")
    layout.index((layout.image([layer], config_doc([other])), "v1"))
    with pytest.raises(CASIntegrityError, match=rf"\(diff_id\).*expected {other.diff_id}"):
        read_oci_layout(layout.root, "v1", store)
    # The finding is remembered per blob: a second read fails the same way, without the work.
    with pytest.raises(CASIntegrityError, match="diff_id"):
        read_oci_layout(layout.root, "v1", store)
    good = Layout(tmp_path / "good")
    good.index((good.image([layer], config_doc([layer])), "v1"))
    assert read_oci_layout(good.root, "v1", store).diff_ids == (layer.diff_id,)


def test_read_oci_layout_from_a_tar(tmp_path: Path, store: LocalStore) -> None:
    layer = Layer(tmp_path, {"bin/tool": "#!/bin/sh\n"})
    layout = Layout(tmp_path / "layout")
    layout.index((layout.image([layer], config_doc([layer], Entrypoint=["/bin/tool"])), "v1"))
    archive = tar_dir(layout.root, tmp_path / "layout.tar")
    image = read_oci_layout(archive, "v1", store)
    assert image.layers == (layer.ref,)
    assert image.config.entrypoint == ("/bin/tool",)
    assert blob_bytes(store, layer.digest) == layer.blob


def test_large_blobs_are_imported_through_a_temp_file(
    tmp_path: Path, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import memobuild.oci.layout as layout_module

    monkeypatch.setattr(layout_module, "IN_MEMORY_BLOB", 0)
    layer = Layer(tmp_path, {"big": "x" * 5000})
    plain = Layer(tmp_path, {"plain": "y" * 5000}, compress=False)
    layout = Layout(tmp_path / "layout")
    layout.index((layout.image([layer], config_doc([layer])), "v1"))
    assert read_oci_layout(tar_dir(layout.root, tmp_path / "l.tar"), "v1", store).layers == (
        layer.ref,
    )
    archive = docker_save(tmp_path / "save.tar", [([plain], config_doc([plain]), [])])
    assert read_docker_archive(archive, store).diff_ids == (plain.diff_id,)
    assert blob_bytes(store, layer.digest) == layer.blob
    assert blob_bytes(store, plain.diff_id) == plain.tar


# --- writing layouts --------------------------------------------------------------------------


def built_image(tmp_path: Path, store: LocalStore) -> tuple[Image, list[Layer]]:
    layers = [
        Layer(tmp_path, {"etc/hello.txt": "hello\n"}),
        Layer(tmp_path, {"srv/app.txt": "app\n"}, compress=False),
    ]
    for layer in layers:
        store.put_blob_bytes(layer.blob)
    image = Image(
        config=ImageConfig(env=("PATH=/bin",), cmd=("/bin/sh",), working_dir="/srv"),
        layers=tuple(layer.ref for layer in layers),
        history=(HistoryEntry("COPY hello.txt /etc/"), HistoryEntry("COPY app.txt /srv/")),
        architecture=HOST.architecture,
        os="linux",
    )
    return image, layers


def test_write_oci_layout_round_trips_and_is_deterministic(
    tmp_path: Path, store: LocalStore
) -> None:
    image, _ = built_image(tmp_path, store)
    digest = write_oci_layout(image, store, tmp_path / "out", tag="v1")
    assert digest == image_digest(image)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "v1"}
    assert index["manifests"][0]["digest"] == digest
    assert json.loads((tmp_path / "out" / "oci-layout").read_text()) == {
        "imageLayoutVersion": "1.0.0"
    }
    with LocalStore(tmp_path / "other-cache") as fresh:
        assert read_oci_layout(tmp_path / "out", "v1", fresh) == image

    write_oci_layout(image, store, tmp_path / "a.tar", tag="v1")
    write_oci_layout(image, store, tmp_path / "b.tar", tag="v1")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with LocalStore(tmp_path / "third-cache") as fresh:
        assert read_oci_layout(tmp_path / "a.tar", "v1", fresh) == image


def test_write_oci_layout_updates_a_directory_in_place(tmp_path: Path, store: LocalStore) -> None:
    image, _ = built_image(tmp_path, store)
    other = Image(ImageConfig(user="x"), image.layers, image.history, image.architecture, "linux")
    write_oci_layout(image, store, tmp_path / "out", tag="v1")
    write_oci_layout(other, store, tmp_path / "out", tag="v2")
    write_oci_layout(other, store, tmp_path / "out", tag="v1")  # v1 moves to the new image
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    tags = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    assert tags == {"v1": image_digest(other), "v2": image_digest(other)}
    assert read_oci_layout(tmp_path / "out", "v2", store) == other
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(InputError, match="not an OCI layout"):
        write_oci_layout(image, store, tmp_path / "junk")


def test_skopeo_reads_the_layout_we_write(tmp_path: Path, store: LocalStore) -> None:
    image, layers = built_image(tmp_path, store)
    digest = write_oci_layout(image, store, tmp_path / "out", tag="v1")
    result = subprocess.run(
        ["skopeo", "inspect", f"oci:{tmp_path / 'out'}:v1"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["Digest"] == digest
    assert info["Layers"] == [layer.digest for layer in layers]
    assert info["Architecture"] == HOST.architecture
    assert info["Env"] == ["PATH=/bin"]
    write_oci_layout(image, store, tmp_path / "out.tar", tag="v1")
    archive = subprocess.run(
        ["skopeo", "inspect", f"oci-archive:{tmp_path / 'out.tar'}:v1"],
        capture_output=True,
        text=True,
    )
    assert archive.returncode == 0, archive.stderr
    assert json.loads(archive.stdout)["Digest"] == digest


def test_docker_archive_written_by_skopeo_reads_back(tmp_path: Path, store: LocalStore) -> None:
    image, _ = built_image(tmp_path, store)
    write_oci_layout(image, store, tmp_path / "out", tag="v1")
    archive = tmp_path / "saved.tar"
    result = subprocess.run(
        ["skopeo", "copy", f"oci:{tmp_path / 'out'}:v1", f"docker-archive:{archive}:app:v1"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    with LocalStore(tmp_path / "fresh") as fresh:
        loaded = read_docker_archive(archive, fresh)
        assert loaded.diff_ids == image.diff_ids
        assert loaded.config == image.config
        for layer in loaded.layers:
            assert fresh.has_blob(layer.digest)


def test_umoci_unpacks_the_layout_we_write(tmp_path: Path, store: LocalStore) -> None:
    image, _ = built_image(tmp_path, store)
    write_oci_layout(image, store, tmp_path / "out", tag="v1")
    command = ["umoci", "unpack", "--image", f"{tmp_path / 'out'}:v1", str(tmp_path / "bundle")]
    if os.geteuid() != 0:
        command.insert(2, "--rootless")
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "etc" / "hello.txt").read_text() == "hello\n"
    assert (rootfs / "srv" / "app.txt").read_text() == "app\n"
    runtime = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert runtime["process"]["cwd"] == "/srv"
    assert runtime["process"]["args"] == ["/bin/sh"]


# --- docker save archives ---------------------------------------------------------------------


@pytest.mark.parametrize("oci_format", [False, True], ids=["legacy", "docker25"])
def test_read_docker_archive_plain_and_gzip_layers(
    tmp_path: Path, store: LocalStore, oci_format: bool
) -> None:
    plain = Layer(tmp_path, {"etc/plain": "plain"}, compress=False)
    zipped = Layer(tmp_path, {"etc/zipped": "zipped"})
    config = config_doc([plain, zipped], Env=["PATH=/bin"], Cmd=["sh"])
    archive = docker_save(
        tmp_path / "save.tar", [([plain, zipped], config, ["base:1"])], oci=oci_format
    )

    image = read_docker_archive(archive, store)

    assert image.layers == (
        LayerRef(plain.diff_id, plain.diff_id, len(plain.tar), OCI_LAYER),
        LayerRef(zipped.digest, zipped.diff_id, len(zipped.blob), OCI_LAYER_GZIP),
    )
    assert image.config.cmd == ("sh",)
    assert blob_bytes(store, plain.diff_id) == plain.tar
    assert blob_bytes(store, zipped.digest) == zipped.blob


def test_read_docker_archive_with_shared_layers_needs_a_name(
    tmp_path: Path, store: LocalStore
) -> None:
    shared = Layer(tmp_path, {"shared": "s"}, compress=False)
    own = Layer(tmp_path, {"own": "o"}, compress=False)
    archive = docker_save(
        tmp_path / "save.tar",
        [
            ([shared], config_doc([shared], User="one"), ["one:latest"]),
            ([shared, own], config_doc([shared, own], User="two"), ["two:v2"]),
        ],
    )
    with pytest.raises(InvalidImageError, match=r"holds 2 images.*one:latest, two:v2"):
        read_docker_archive(archive, store)
    two = read_docker_archive(archive, store, "two:v2")  # its first layer is a symlink
    assert two.config.user == "two" and two.diff_ids == (shared.diff_id, own.diff_id)
    assert read_docker_archive(archive, store, "docker.io/library/one").config.user == "one"
    with pytest.raises(InvalidImageError, match="no image named 'three'"):
        read_docker_archive(archive, store, "three")


def test_read_docker_archive_refuses_mismatched_layers(tmp_path: Path, store: LocalStore) -> None:
    layer = Layer(tmp_path, {"a": "a"})
    other = Layer(tmp_path, {"b": "b"})
    archive = docker_save(tmp_path / "save.tar", [([layer], config_doc([other]), [])])
    with pytest.raises(CASIntegrityError, match=r"diff_id"):
        read_docker_archive(archive, store)
    assert not store.has_blob(layer.digest)


def test_read_docker_archive_compressed_and_wrong_kind(tmp_path: Path, store: LocalStore) -> None:
    layer = Layer(tmp_path, {"a": "a"})
    archive = docker_save(tmp_path / "save.tar", [([layer], config_doc([layer]), ["x:1"])])
    compressed = tmp_path / "save.tar.gz"
    compressed.write_bytes(gzip.compress(archive.read_bytes()))
    assert read_docker_archive(compressed, store).layers == (layer.ref,)

    layout = Layout(tmp_path / "layout")
    layout.index((layout.image([layer], config_doc([layer])), "v1"))
    with pytest.raises(InvalidImageError, match="use oci-layout://"):
        read_docker_archive(tar_dir(layout.root, tmp_path / "layout.tar"), store)
    (tmp_path / "garbage.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InvalidImageError, match="not a readable tar"):
        read_docker_archive(tmp_path / "garbage.tar", store)


# --- --build-context --------------------------------------------------------------------------


def test_parse_build_context_forms(tmp_path: Path) -> None:
    layout = tmp_path / "lay:out"  # a ':' in the path itself
    layout.mkdir()
    assert parse_build_context(f"base=oci-layout://{layout}") == BuildContextSpec(
        "base:latest", "oci-layout", layout
    )
    assert parse_build_context(f"base=oci-layout://{layout}:v1") == BuildContextSpec(
        "base:latest", "oci-layout", layout, "v1"
    )
    digest = "sha256:" + "ab" * 32
    assert parse_build_context(f"alpine:3.19=oci-layout://{layout}@{digest}") == BuildContextSpec(
        "alpine:3.19", "oci-layout", layout, None, digest
    )
    assert parse_build_context("img=docker-archive:///no/such/img.tar") == BuildContextSpec(
        "img:latest", "docker-archive", Path("/no/such/img.tar")
    )
    archive = tmp_path / "img.tar"
    archive.write_bytes(b"")
    assert parse_build_context(f"img=docker-archive://{archive}:app:v1") == BuildContextSpec(
        "img:latest", "docker-archive", archive, "app:v1"
    )
    assert parse_build_context(f"docker.io/library/src={tmp_path}") == BuildContextSpec(
        "src:latest", "local", tmp_path
    )


@pytest.mark.parametrize(
    "value, message",
    [
        ("base", "expected NAME=SOURCE"),
        ("=oci-layout:///x", "expected NAME=SOURCE"),
        ("Base=/x", "not a name FROM or COPY --from can use"),
        ("base=docker-image://Alpine", "repository name must be lowercase"),
        ("base=target:build", "not supported"),
        ("base=https://example.com/ctx.tar", "not supported"),
        ("base=s3://bucket/x", "unknown scheme 's3'"),
        ("base=oci-layout:///x@sha256:12", "invalid digest"),
        ("base=oci-layout://", "path is empty"),
    ],
)
def test_parse_build_context_errors_show_examples(value: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_build_context(value)
    assert message in str(info.value)
    assert "oci-layout://" in str(info.value) and "docker-archive://" in str(info.value)


# --- the resolver -----------------------------------------------------------------------------


def test_scratch_is_empty_for_the_target_platform(store: LocalStore) -> None:
    resolver = BaseResolver(store)
    image = resolver.resolve("scratch")
    assert image.layers == () and image.config == ImageConfig()
    assert (image.os, image.architecture) == (HOST.os, HOST.architecture)
    arm = resolver.resolve("scratch", Platform("linux", "arm", "v7"))
    assert (arm.architecture, arm.variant) == ("arm", "v7")
    assert arm == scratch_image(Platform("linux", "arm", "v7"))


def test_named_contexts_satisfy_from_by_normalised_name(tmp_path: Path, store: LocalStore) -> None:
    layer = Layer(tmp_path, {"etc/alpine-release": "3.19\n"})
    layout = Layout(tmp_path / "layout")
    layout.index((layout.image([layer], config_doc([layer], User="alp")), "3.19"))
    plain = Layer(tmp_path, {"etc/debian_version": "12\n"}, compress=False)
    archive = docker_save(tmp_path / "deb.tar", [([plain], config_doc([plain], User="deb"), [])])
    resolver = BaseResolver(
        store,
        [
            parse_build_context(f"alpine=oci-layout://{layout.root}:3.19"),
            parse_build_context(f"debian:12=docker-archive://{archive}"),
        ],
    )
    assert resolver.resolve("alpine").config.user == "alp"
    assert resolver.resolve("docker.io/library/alpine:latest").config.user == "alp"
    assert resolver.resolve("debian:12").config.user == "deb"
    with pytest.raises(ImageNotFoundError):
        resolver.resolve("debian")  # debian:latest is not debian:12


def test_resolved_images_are_remembered_for_the_build(tmp_path: Path, store: LocalStore) -> None:
    layer = Layer(tmp_path, {"a": "a"})
    layout = Layout(tmp_path / "layout")
    layout.index((layout.image([layer], config_doc([layer])), None))
    resolver = BaseResolver(store, [parse_build_context(f"base=oci-layout://{layout.root}")])
    first = resolver.resolve("base")
    shutil.rmtree(layout.root)  # a second lookup must not read the layout again
    assert resolver.resolve("base") is first


def test_local_image_store_images_resolve(tmp_path: Path, store: LocalStore) -> None:
    layer = Layer(tmp_path, {"srv/app": "app"})
    store.put_blob_bytes(layer.blob)
    image = Image(ImageConfig(cmd=("/srv/app",)), (layer.ref,), (), HOST.architecture, "linux")
    ImageStore(store).save(image, ["myapp:1.0"])
    resolver = BaseResolver(store)
    assert resolver.resolve("myapp:1.0") == image
    with pytest.raises(ImageNotFoundError):
        resolver.resolve("myapp")  # myapp:latest was never tagged


def test_unknown_images_say_what_to_do(store: LocalStore) -> None:
    with pytest.raises(ImageNotFoundError) as info:
        BaseResolver(store).resolve("alpine:3.19")
    message = str(info.value)
    assert "'alpine:3.19' not found" in message
    assert "memobuild build pulls it from its registry" in message
    assert "--build-context alpine:3.19=oci-layout://PATH" in message
    assert "docker-archive://FILE" in message
    assert "-t alpine:3.19" in message
    assert isinstance(info.value, InputError)


def test_local_directory_contexts_serve_copy_not_from(tmp_path: Path, store: LocalStore) -> None:
    (tmp_path / "ctx").mkdir()
    spec = parse_build_context(f"files={tmp_path / 'ctx'}")
    resolver = BaseResolver(store, [spec])
    assert resolver.context("files") == spec
    assert resolver.context("docker.io/library/files:latest") == spec
    assert resolver.context("other") is None
    with pytest.raises(InputError, match="COPY --from=files, not a base image"):
        resolver.resolve("files")


def test_resolver_checks_contexts_up_front(tmp_path: Path, store: LocalStore) -> None:
    with pytest.raises(InputError, match="does not exist"):
        BaseResolver(store, [parse_build_context(f"a=oci-layout://{tmp_path / 'missing'}")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        BaseResolver(store, [parse_build_context(f"a={tmp_path / 'file'}")])
    with pytest.raises(InputError, match="more than once"):
        BaseResolver(store, [parse_build_context(f"a={tmp_path}")] * 2)


def test_image_config_feeds_load_stages(tmp_path: Path, store: LocalStore) -> None:
    layer = Layer(tmp_path, {"a": "a"})
    layout = Layout(tmp_path / "layout")
    config = config_doc(
        [layer],
        Env=["PATH=/opt/bin:/bin", "LANG=C.UTF-8"],
        WorkingDir="/work",
        User="builder",
        Shell=["/bin/bash", "-c"],
        OnBuild=["ENV FROM_TRIGGER=1"],
    )
    layout.index((layout.image([layer], config), None))
    resolver = BaseResolver(store, [parse_build_context(f"base=oci-layout://{layout.root}")])
    assert resolver.image_config("base", HOST) == BaseImageConfig(  # noqa: S604 - not a subprocess
        env=(("PATH", "/opt/bin:/bin"), ("LANG", "C.UTF-8")),
        workdir="/work",
        user="builder",
        shell=("/bin/bash", "-c"),
        onbuild=("ENV FROM_TRIGGER=1",),
    )
    dockerfile = parse("FROM base\nRUN echo $LANG\n")
    (stage,) = load_stages(dockerfile, resolve_image=resolver.image_config).stages
    env = dict(stage.env)
    assert env["PATH"] == "/opt/bin:/bin" and env["LANG"] == "C.UTF-8"
    assert env["FROM_TRIGGER"] == "1"  # the base's ONBUILD trigger ran
    assert (stage.workdir, stage.user, stage.shell) == ("/work", "builder", ("/bin/bash", "-c"))
    with pytest.raises(ImageNotFoundError):
        load_stages(parse("FROM nothere\n"), resolve_image=resolver.image_config)


def test_local_images_are_looked_up_for_the_platform(tmp_path: Path, store: LocalStore) -> None:
    layer = Layer(tmp_path, {"srv/app": "app"})
    store.put_blob_bytes(layer.blob)
    other = Image(ImageConfig(), (layer.ref,), (), OTHER_ARCH, "linux")
    ImageStore(store).save(other, ["multi:1"])
    other_platform = Platform("linux", OTHER_ARCH)
    assert BaseResolver(store).resolve("multi:1", other_platform) == other
    with pytest.raises(ImageNotFoundError) as info:
        BaseResolver(store).resolve("multi:1")  # for this host: not the image in the store
    assert f"the local image is for linux/{OTHER_ARCH}, not {HOST}" in str(info.value)
    never = BaseResolver(store, pull_policy="never", registry=lambda: pytest.fail("no registry"))
    with pytest.raises(ImageNotFoundError, match=r"not in the local store for .*--pull=never"):
        never.resolve("elsewhere:1")
    with pytest.raises(InputError, match="--pull=sometimes: expected missing"):
        BaseResolver(store, pull_policy="sometimes")


def test_docker_image_contexts_name_a_registry_image(store: LocalStore) -> None:
    spec = parse_build_context("base=docker-image://localhost:5000/team/base:1")
    assert (spec.name, spec.kind, spec.image) == (
        "base:latest",
        "docker-image",
        "localhost:5000/team/base:1",
    )
    resolver = BaseResolver(store, [spec])  # nothing on disk to check
    assert resolver.context("base") == spec
    with pytest.raises(ImageNotFoundError, match="localhost:5000/team/base:1"):
        resolver.resolve("base")  # no registry given: the local store only, which lacks it
