"""A registry as the shared build cache, against a real docker-registry on 127.0.0.1: two
runners share one cache ref; the second gets the first's entries and only its hits' layers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from memobuild.cache.entries import ActionEntry
from memobuild.cache.hybrid import HybridCache
from memobuild.cache.options import CacheOption, parse_cache_option
from memobuild.cache.registry_cache import ARTIFACT_TYPE, RegistryCache
from memobuild.cache.remote import RemoteUnusableError
from memobuild.cache.store import LocalStore
from memobuild.errors import CASIntegrityError, InputError
from memobuild.logging import logger
from memobuild.oci.push import push
from memobuild.oci.reference import parse_reference
from memobuild.oci.registry import RegistryClient, RegistryOptions
from memobuild.retry import RetryPolicy
from memobuild.verify import digest_bytes
from registry_fixture import Registry, make_random_image, running_registry

FAST_RETRY = RetryPolicy(max_attempts=3, initial=0.01, cap=0.05)


def options(registry: Registry) -> RegistryOptions:
    return RegistryOptions(insecure=frozenset({registry.host}), retry=FAST_RETRY)


def make_entries(store: LocalStore, workdir: Path, count: int) -> list[ActionEntry]:
    """``count`` entries, each with its own random layer in ``store``."""
    entries = []
    for index in range(count):
        image = make_random_image(store, workdir / f"step-{index}", layer_bytes=64 << 10)
        key = digest_bytes(f"step {index} {workdir}".encode(), "blake3")
        entries.append(
            ActionEntry(
                key=key,
                layers=image.layers,
                config={"Env": [f"STEP={index}"]},
                preimage=(("instruction", f"RUN step {index}"),),
                created=time.time(),
            )
        )
    return entries


def runner(store: LocalStore, registry: Registry, ref: str, **kw: bool) -> HybridCache:
    return HybridCache(store, RegistryCache(ref, options=options(registry)), **kw)


def test_cache_spec_parsing() -> None:
    spec = parse_cache_option("type=registry,ref=ghcr.io/org/cache:main,mode=min", "--cache-to")
    assert spec == CacheOption("registry", "ghcr.io/org/cache:main", (("mode", "min"),))
    assert spec.mode == "min" and str(spec) == "type=registry,ref=ghcr.io/org/cache:main,mode=min"
    plain = parse_cache_option("type=registry, ref=cache")
    assert (plain.url, plain.mode) == ("docker.io/library/cache:latest", "max")
    for bad, reason in [
        ("type=local,ref=x", "unknown cache type 'local'"),
        ("type=registry", "needs ref="),
        ("type=registry,ref=x,mode=all", "mode must be max or min"),
        ("type=registry,ref=x,color=red", "takes ref= and mode=, not color="),
        ("type=registry,ref=x@sha256:" + "a" * 64, "not a digest"),
        ("registry", "expected key=value fields"),
        ("type=registry,ref=Bad", "lowercase"),
    ]:
        with pytest.raises(InputError, match=reason) as caught:
            parse_cache_option(bad, "--cache-to")
        assert str(caught.value).startswith("--cache-to")


def test_two_runners_share_a_registry_cache(registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/cache/app:main"
    first = LocalStore(tmp_path / "first")
    entries = make_entries(first, tmp_path / "layers", 3)
    with runner(first, registry, ref) as cache:
        for entry in entries:
            cache.put_action(entry)
    report = cache.close()
    assert report.uploaded == 3 and report.failed == 0

    with RegistryClient(options(registry)) as client:
        manifest = json.loads(client.manifest(parse_reference(ref)).data)
    assert manifest["artifactType"] == ARTIFACT_TYPE
    listed = [d for d in manifest["layers"] if "annotations" in d]
    assert {d["annotations"]["dev.memobuild.action.key"] for d in listed} == {
        e.key for e in entries
    }
    # Every layer the entries name is listed too, so registry gc keeps it.
    assert {e.layers[0].digest for e in entries} <= {d["digest"] for d in manifest["layers"]}

    second = LocalStore(tmp_path / "second")
    before = len(registry.requests())
    with runner(second, registry, ref, push=False) as cache:
        hit = cache.get_action(entries[1].key)
        assert cache.get_action(digest_bytes(b"never built", "blake3")) is None
    assert hit == entries[1]
    assert second.get_action(entries[1].key) == entries[1]  # now a local hit
    assert second.read_blob(entries[1].layers[0].digest) == first.read_blob(
        entries[1].layers[0].digest
    )
    gets = [r.path for r in registry.requests()[before:] if r.method == "GET"]
    assert sum(1 for p in gets if "/manifests/" in p) == 1  # one manifest read, lazily
    blob_gets = [p.rsplit("/", 1)[1] for p in gets if "/blobs/" in p]
    assert entries[1].layers[0].digest in blob_gets
    for other in (entries[0], entries[2]):  # only the hit's layer came down
        assert other.layers[0].digest not in blob_gets
        assert not second.has_blob(other.layers[0].digest)


def test_publishing_merges_with_what_the_ref_lists(registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/cache/merge:main"
    store = LocalStore(tmp_path / "s")
    old, new = make_entries(store, tmp_path / "a", 2), make_entries(store, tmp_path / "b", 1)
    with runner(store, registry, ref) as cache:
        for entry in old:
            cache.put_action(entry)
    with runner(LocalStore(tmp_path / "t"), registry, ref) as cache:
        cache.local.put_blob_file(store.blob_path(new[0].layers[0].digest))
        cache.put_action(new[0])
    reader = RegistryCache(ref, options=options(registry))
    try:
        assert all(reader.has_action(e.key) for e in [*old, *new])
        assert reader.get_action(old[0].key) == old[0]
    finally:
        reader.close()


def test_wrong_content_and_foreign_manifests_are_refused(
    registry: Registry, tmp_path: Path
) -> None:
    ref = f"{registry.host}/cache/bad:main"
    store = LocalStore(tmp_path / "s")
    entries = make_entries(store, tmp_path / "a", 1)
    with runner(store, registry, ref) as cache:
        cache.put_action(entries[0])
    with RegistryClient(options(registry)) as client:
        manifest = json.loads(client.manifest(parse_reference(ref)).data)
    reader = RegistryCache(ref, options=options(registry))
    entry_blob = next(d for d in manifest["layers"] if "annotations" in d)
    path = registry.blob_file(entry_blob["digest"])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CASIntegrityError):
        reader.get_action(entries[0].key)
    # Through HybridCache the bad entry is a miss, never an error and never stored.
    other = LocalStore(tmp_path / "o")
    with runner(other, registry, ref, push=False) as cache:
        assert cache.get_action(entries[0].key) is None
    assert other.get_action(entries[0].key) is None
    reader.close()

    image = make_random_image(store, tmp_path / "img", layer_bytes=4 << 10)
    with RegistryClient(options(registry)) as client:
        push(image, store, f"{registry.host}/cache/image:main", client=client)
    not_cache = RegistryCache(f"{registry.host}/cache/image:main", options=options(registry))
    with pytest.raises(RemoteUnusableError, match="not a MemoBuild cache"):
        not_cache.has_action(entries[0].key)
    not_cache.close()


def test_a_cache_that_cannot_publish_does_not_fail_the_build(tmp_path: Path) -> None:
    """The registry goes away before the build ends: close warns, and raises nothing."""
    store = LocalStore(tmp_path / "s")
    entry = make_entries(store, tmp_path / "a", 1)[0]
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    try:
        with running_registry(tmp_path / "short-lived") as short:
            cache = RegistryCache(f"{short.host}/cache/gone:main", options=options(short))
            cache.put_blob(entry.layers[0].digest, store)
            cache.put_action(entry)
        cache.close()
    finally:
        logger.remove(sink)
    assert cache.closed
    assert any("could not publish the cache manifest" in w for w in warnings)
