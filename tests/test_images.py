"""The local image store (`-t name`, `memobuild images`, `memobuild rmi`) on a real cache dir."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from memobuild.cache.entries import LayerRef
from memobuild.cache.store import LocalStore
from memobuild.errors import CacheCoherencyError, InputError
from memobuild.images import ImageStore, pin_name
from memobuild.oci.image import HistoryEntry, Image, ImageConfig, image_digest


def make_layer(store: LocalStore, tmp_path: Path, name: str, text: str) -> LayerRef:
    """A real tar.gz layer of a one-file directory, stored in ``store``."""
    src = tmp_path / f"layer-{name}"
    src.mkdir()
    (src / name).write_text(text)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(src / name, arcname=name)
    blob = gzip.compress(buf.getvalue(), mtime=0)
    digest = store.put_blob_bytes(blob)
    assert digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    return LayerRef(digest, "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest(), len(blob))


def make_image(layers: list[LayerRef], cmd: str = "app", created: str | None = None) -> Image:
    return Image(
        config=ImageConfig(cmd=(cmd,)),
        layers=tuple(layers),
        history=tuple(HistoryEntry(f"COPY {i}") for i in range(len(layers))),
        architecture="amd64",
        os="linux",
        created=created,
    )


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    with LocalStore(tmp_path / "cache") as s:
        yield s  # type: ignore[misc]


def test_save_then_load_by_any_spelling_of_the_name(tmp_path: Path, store: LocalStore) -> None:
    layer = make_layer(store, tmp_path, "a.txt", "a")
    image = make_image([layer], created="2024-05-06T07:08:09Z")
    images = ImageStore(store)
    digest = images.save(image, ["app", "registry.example.com/team/app:1.0"])
    assert digest == image_digest(image)
    for name in ("app", "app:latest", "docker.io/library/app", "registry.example.com/team/app:1.0"):
        assert images.load(name) == image
    assert images.load(digest) == image
    assert images.load(f"app@{digest}") == image
    assert images.load("app:2") is None
    assert images.load("sha256:" + "0" * 64) is None
    # The config and manifest are real blobs in the store, addressed by their digests.
    manifest = json.loads(store.read_blob(digest))
    assert manifest["layers"][0]["digest"] == layer.digest
    assert store.has_blob(manifest["config"]["digest"])


def test_list_shows_every_name_sorted(tmp_path: Path, store: LocalStore) -> None:
    a = make_layer(store, tmp_path, "a.txt", "a" * 100)
    b = make_layer(store, tmp_path, "b.txt", "b")
    images = ImageStore(store)
    first = images.save(make_image([a, b], created="2024-01-01T00:00:00Z"), ["zeta:1", "alpha"])
    second = images.save(make_image([a], cmd="other"), ["mid"])
    listing = images.list()
    assert [(i.name, i.digest) for i in listing] == [
        ("alpha:latest", first),
        ("mid:latest", second),
        ("zeta:1", first),
    ]
    assert listing[0].created == "2024-01-01T00:00:00Z" and listing[1].created is None
    manifest = store.read_blob(first)
    config_size = json.loads(manifest)["config"]["size"]
    assert listing[0].size == a.size + b.size + len(manifest) + config_size


def test_save_refuses_an_image_whose_layers_are_not_stored(
    tmp_path: Path, store: LocalStore
) -> None:
    missing = LayerRef("sha256:" + "1" * 64, "sha256:" + "2" * 64, 10)
    images = ImageStore(store)
    with pytest.raises(CacheCoherencyError, match="1111"):
        images.save(make_image([missing]), ["broken"])
    assert images.list() == []
    with pytest.raises(InputError, match="digest names content"):
        images.save(make_image([]), ["app@sha256:" + "a" * 64])
    with pytest.raises(InputError, match="invalid image name"):
        images.save(make_image([]), ["Not/Valid"])


def test_tagged_images_survive_prune_and_removed_ones_do_not(
    tmp_path: Path, store: LocalStore
) -> None:
    shared = make_layer(store, tmp_path, "shared.txt", "shared")
    own = make_layer(store, tmp_path, "own.txt", "own")
    images = ImageStore(store)
    keep = images.save(make_image([shared], cmd="keep"), ["keep"])
    drop = images.save(make_image([shared, own], cmd="drop"), ["drop", "drop:2"])

    store.prune(min_age=0)  # removes every blob nothing references, however recent
    assert images.load("keep") is not None and images.load("drop:2") is not None

    assert images.remove("drop") is True
    store.prune(min_age=0)
    assert images.load("drop:2") is not None  # still named

    assert images.remove("drop:2") is True
    assert images.remove("drop:2") is False
    store.prune(min_age=0)
    assert not store.has_blob(drop) and not store.has_blob(own.digest)
    assert images.load(drop) is None
    assert store.has_blob(keep) and store.has_blob(shared.digest)
    assert images.load("keep") == make_image([shared], cmd="keep")


def test_retagging_moves_the_name_and_releases_the_old_image(
    tmp_path: Path, store: LocalStore
) -> None:
    layer = make_layer(store, tmp_path, "v.txt", "v")
    images = ImageStore(store)
    old = images.save(make_image([layer], cmd="v1"), ["app"])
    new = images.save(make_image([layer], cmd="v2"), ["app"])
    assert [i.digest for i in images.list()] == [new]
    pins = store.pins()
    assert pin_name(old) not in pins
    assert len(pins[pin_name(new)]) == 3  # manifest, config, the layer
    store.prune(min_age=0)
    assert not store.has_blob(old) and images.load("app") == make_image([layer], cmd="v2")


def test_a_tagged_image_survives_gc_to_zero_and_rmi_releases_it(
    tmp_path: Path, store: LocalStore
) -> None:
    layer = make_layer(store, tmp_path, "g.txt", "g")
    images = ImageStore(store)
    digest = images.save(make_image([layer], cmd="g"), ["app"])
    blobs = store.pins()[pin_name(digest)]
    report = store.gc(0, min_age=0)
    assert report.removed_blobs == 0 and not report.reached  # pinned bytes still count
    store.prune(min_age=0)
    assert all(store.has_blob(d) for d in blobs)
    assert images.load("app") == make_image([layer], cmd="g")
    assert store.list_actions() == []  # an image pin is not an action entry

    assert images.remove("app") is True
    assert store.pins() == {}
    store.prune(min_age=0)
    assert not any(store.has_blob(d) for d in blobs)


def test_remove_by_digest_removes_every_name(tmp_path: Path, store: LocalStore) -> None:
    layer = make_layer(store, tmp_path, "d.txt", "d")
    images = ImageStore(store)
    digest = images.save(make_image([layer]), ["one", "two"])
    images.save(make_image([layer], cmd="x"), ["three"])
    assert images.remove(digest) is True
    assert [i.name for i in images.list()] == ["three:latest"]


def test_an_image_whose_blobs_vanished_says_to_rebuild(tmp_path: Path, store: LocalStore) -> None:
    layer = make_layer(store, tmp_path, "gone.txt", "gone")
    images = ImageStore(store)
    images.save(make_image([layer]), ["app"])
    hex_part = layer.digest.split(":")[1]
    (store.root / "blobs" / "sha256" / hex_part[:2] / hex_part).unlink()
    with pytest.raises(CacheCoherencyError, match=r"build it again.*memobuild rmi app"):
        images.load("app")


def _tag_many(cache: str, prefix: str, tmp: str) -> None:
    with LocalStore(cache) as store:
        layer = make_layer(store, Path(tmp), f"{prefix}.txt", prefix)
        images = ImageStore(store)
        for i in range(8):
            images.save(make_image([layer], cmd=f"{prefix}{i}"), [f"{prefix}:{i}"])


def test_concurrent_tagging_loses_no_name(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    LocalStore(cache).close()
    context = multiprocessing.get_context("spawn")
    workers = []
    for prefix in ("left", "right"):
        (tmp_path / prefix).mkdir()
        workers.append(
            context.Process(target=_tag_many, args=(str(cache), prefix, str(tmp_path / prefix)))
        )
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    with LocalStore(cache) as store:
        names = [i.name for i in ImageStore(store).list()]
    assert names == sorted(f"{p}:{i}" for p in ("left", "right") for i in range(8))


# --- the commands -----------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # The autouse isolated_cache fixture has set MEMOBUILD_CACHE_DIR in os.environ.
    return subprocess.run(
        [sys.executable, "-m", "memobuild.cli", *args], capture_output=True, text=True
    )


def test_images_and_rmi_commands(tmp_path: Path, isolated_cache: Path) -> None:
    empty = run("images")
    assert empty.returncode == 0 and "no images" in empty.stdout

    with LocalStore(isolated_cache) as store:
        layer = make_layer(store, tmp_path, "c.txt", "c")
        digest = ImageStore(store).save(make_image([layer]), ["web", "web:1.2"])

    table = run("images")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "DIGEST", "CREATED", "TAGGED", "SIZE"]
    assert lines[1].startswith("web:1.2 ") and digest[7:19] in lines[1]
    assert lines[2].startswith("web:latest ")

    listing = json.loads(run("images", "--json").stdout)
    assert [(i["name"], i["digest"]) for i in listing] == [
        ("web:1.2", digest),
        ("web:latest", digest),
    ]
    assert set(listing[0]) == {"name", "digest", "created", "size", "tagged"}

    ls = run("cache", "ls")
    assert ls.returncode == 0, ls.stderr
    assert "blake3:" not in ls.stdout  # the image's pin is not a cached action
    assert json.loads(run("cache", "ls", "--json").stdout) == []

    removed = run("rmi", "web")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == "untagged: web\n"
    missing = run("rmi", "web", "web:1.2")
    assert missing.returncode == 2, missing.stderr
    assert "memobuild: error: no such image: web" in missing.stderr
    assert "untagged: web:1.2" in missing.stdout
    assert json.loads(run("images", "--json").stdout) == []
