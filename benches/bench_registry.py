"""Registry pull and push of a 200 MB image, side by side with ``skopeo copy``.

The image: four gzip layers of 50 MB of random bytes each (incompressible, so 200 MB go over
the wire), packed by MemoBuild's layer writer. The registry: Debian's docker-registry on
127.0.0.1, plain HTTP, started by the fixture. The anchors:

- pull: ``skopeo copy docker://127.0.0.1:PORT/bench/pull:1 oci:DIR:1`` into a new directory,
  against ``memobuild.oci.pull`` into a new, empty local store (every layer downloaded,
  verified by sha256, stored and fsynced, the image named). Neither decompresses a layer: its
  diff_id is checked where it is first used (``oci/diff_ids.py``), as containerd does, and
  skopeo copies layers as they are;
- push: ``skopeo copy oci:LAYOUT:1 docker://127.0.0.1:PORT/bench/push:1`` against
  ``memobuild.oci.push`` from the local store, each round into an emptied registry (its storage
  deleted in the untimed setup), so every blob is uploaded.

skopeo pays its process start-up (a few ms) and MemoBuild its client set-up; both pay the
connections. Target: MemoBuild no slower than skopeo.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from memobuild.cache.store import LocalStore
from memobuild.oci.image import Image
from memobuild.oci.layout import write_oci_layout
from memobuild.oci.pull import pull_image
from memobuild.oci.push import push
from memobuild.oci.registry import RegistryClient, RegistryOptions
from registry_fixture import Registry, make_random_image, running_registry

LAYERS = 4
LAYER_BYTES = 50 << 20
ROUNDS = 3


class Source:
    """The benchmark image: in a store (for MemoBuild) and as an OCI layout (for skopeo)."""

    def __init__(self, workdir: Path) -> None:
        self.store = LocalStore(workdir / "store")
        self.image: Image = make_random_image(
            self.store, workdir / "image", layers=LAYERS, layer_bytes=LAYER_BYTES, files_per_layer=5
        )
        self.layout = workdir / "layout"
        write_oci_layout(self.image, self.store, self.layout, tag="1")
        self.bytes = sum(layer.size for layer in self.image.layers)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="memobuild-bench-registry-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def source(workdir: Path) -> Source:
    return Source(workdir / "source")


@pytest.fixture(scope="module")
def registry(workdir: Path) -> Iterator[Registry]:
    with running_registry(workdir / "registry") as running:
        yield running


def options(registry: Registry) -> RegistryOptions:
    return RegistryOptions(insecure=frozenset({registry.host}))


def skopeo_copy(source: str, dest: str) -> None:
    subprocess.run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false", source, dest],
        check=True,
    )


@pytest.fixture(scope="module")
def pushed(registry: Registry, source: Source) -> str:
    ref = f"{registry.host}/bench/pull:1"
    with RegistryClient(options(registry)) as client:
        push(source.image, source.store, ref, client=client)
    return ref


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def test_pull_memobuild(
    benchmark: Any, registry: Registry, source: Source, pushed: str, workdir: Path
) -> None:
    benchmark.group = "registry pull, 200 MB image"
    benchmark.extra_info["impl"] = "memobuild"
    target = workdir / "pulled-store"

    def setup() -> None:
        fresh(target)

    def run() -> None:
        with RegistryClient(options(registry)) as client:
            result = pull_image(pushed, LocalStore(target), client=client)
        assert result.downloaded_layers == LAYERS

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    assert LocalStore(target).read_blob(source.image.layers[0].digest)


def test_pull_skopeo(
    benchmark: Any, registry: Registry, source: Source, pushed: str, workdir: Path
) -> None:
    benchmark.group = "registry pull, 200 MB image"
    benchmark.extra_info["impl"] = "skopeo"
    target = workdir / "pulled-layout"

    def setup() -> None:
        fresh(target)

    benchmark.pedantic(
        lambda: skopeo_copy(f"docker://{pushed}", f"oci:{target}:1"),
        setup=setup,
        rounds=ROUNDS,
        iterations=1,
    )
    assert (target / "blobs/sha256" / source.image.layers[0].digest.split(":")[1]).exists()


def empty_registry(registry: Registry) -> None:
    """Delete everything the registry stores (it keeps no cache beside its storage)."""
    shutil.rmtree(registry.root / "docker", ignore_errors=True)


@pytest.fixture(scope="module")
def push_registry(workdir: Path) -> Iterator[Registry]:
    with running_registry(workdir / "push-registry") as running:
        yield running


def test_push_memobuild(benchmark: Any, push_registry: Registry, source: Source) -> None:
    benchmark.group = "registry push, 200 MB image"
    benchmark.extra_info["impl"] = "memobuild"
    ref = f"{push_registry.host}/bench/push:1"

    def run() -> None:
        with RegistryClient(options(push_registry)) as client:
            push(source.image, source.store, ref, client=client)

    benchmark.pedantic(
        run, setup=lambda: empty_registry(push_registry), rounds=ROUNDS, iterations=1
    )
    assert push_registry.blob_file(source.image.layers[0].digest).stat().st_size > 0


def test_push_skopeo(benchmark: Any, push_registry: Registry, source: Source) -> None:
    benchmark.group = "registry push, 200 MB image"
    benchmark.extra_info["impl"] = "skopeo"
    ref = f"{push_registry.host}/bench/push:1"
    benchmark.pedantic(
        lambda: skopeo_copy(f"oci:{source.layout}:1", f"docker://{ref}"),
        setup=lambda: empty_registry(push_registry),
        rounds=ROUNDS,
        iterations=1,
    )
    assert push_registry.blob_file(source.image.layers[0].digest).stat().st_size > 0
