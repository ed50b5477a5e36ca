"""Registries: references, platform selection, credentials, and pull/push against a real
docker-registry (CNCF distribution 2.8) on 127.0.0.1, cross-checked with skopeo."""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from busybox_image import BusyboxImage, make_busybox_image
from flaky_proxy import Faults, FlakyProxy
from memobuild.cache.store import LocalStore
from memobuild.dockerfile.stages import Platform, host_platform
from memobuild.errors import (
    CASIntegrityError,
    ImageNotFoundError,
    InputError,
    InvalidImageError,
    NetworkError,
    RegistryAuthError,
    RegistryError,
    RegistryNotFoundError,
)
from memobuild.images import ImageStore
from memobuild.logging import logger
from memobuild.oci.auth import (
    Credentials,
    parse_challenges,
    resolve_credentials,
)
from memobuild.oci.download import BlobStream
from memobuild.oci.image import (
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    DescriptorPlatform,
    Image,
    encode_image,
    index_json,
    normalize_image_name,
)
from memobuild.oci.layout import read_oci_layout, write_oci_layout
from memobuild.oci.platform import select_platform
from memobuild.oci.pull import pull, pull_image
from memobuild.oci.push import push, push_image
from memobuild.oci.reference import parse_reference
from memobuild.oci.registry import RegistryClient, RegistryOptions
from memobuild.retry import RetryPolicy
from memobuild.verify import digest_bytes
from registry_fixture import (
    Registry,
    TokenServer,
    clear_registry_environment,
    make_random_image,
    running_registry,
    secure_registry_fixture,
)

FAST_RETRY = RetryPolicy(max_attempts=10, initial=0.01, cap=0.05)
USER, PASSWORD = "ci-bot", "s3cret-Pa55word-never-logged"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_ambient_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test starts without credentials: an empty Docker config and no overrides."""
    return clear_registry_environment(tmp_path, monkeypatch)


secure_registry = secure_registry_fixture(USER, PASSWORD)


@pytest.fixture
def busybox(tmp_path: Path) -> tuple[LocalStore, BusyboxImage]:
    store = LocalStore(tmp_path / "store")
    return store, make_busybox_image(tmp_path / "busybox", store)


def client_for(registry: Registry, **options: object) -> RegistryClient:
    settings: dict[str, object] = {"insecure": frozenset({registry.host}), "retry": FAST_RETRY}
    settings.update(options)
    return RegistryClient(RegistryOptions(**settings))  # type: ignore[arg-type]


def skopeo(*args: str) -> str:
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def layer_bytes(store: LocalStore, image: Image) -> list[bytes]:
    return [store.read_blob(layer.digest) for layer in image.layers]


# --- references -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "full", "registry"),
    [
        ("alpine", "docker.io/library/alpine:latest", "registry-1.docker.io"),
        ("alpine:3.20", "docker.io/library/alpine:3.20", "registry-1.docker.io"),
        ("library/alpine", "docker.io/library/alpine:latest", "registry-1.docker.io"),
        ("docker.io/alpine", "docker.io/library/alpine:latest", "registry-1.docker.io"),
        ("index.docker.io/user/app:1", "docker.io/user/app:1", "registry-1.docker.io"),
        ("user/app", "docker.io/user/app:latest", "registry-1.docker.io"),
        ("myhost/app", "docker.io/myhost/app:latest", "registry-1.docker.io"),
        ("localhost/app", "localhost/app:latest", "localhost"),
        ("localhost:5000/app:v1", "localhost:5000/app:v1", "localhost:5000"),
        ("127.0.0.1:5000/team/app", "127.0.0.1:5000/team/app:latest", "127.0.0.1:5000"),
        ("[::1]:5000/app", "[::1]:5000/app:latest", "[::1]:5000"),
        ("Registry.Example.com/a/b/c:x_y.z-1", "Registry.Example.com/a/b/c:x_y.z-1", None),
        ("ghcr.io/org/app@sha256:" + "a" * 64, "ghcr.io/org/app@sha256:" + "a" * 64, None),
        ("app:1@sha256:" + "b" * 64, "docker.io/library/app:1@sha256:" + "b" * 64, None),
        ("a__b/c--d.e_f", "docker.io/a__b/c--d.e_f:latest", None),
    ],
)
def test_references_normalise_as_docker_does(text: str, full: str, registry: str | None) -> None:
    ref = parse_reference(text)
    assert str(ref) == full
    assert parse_reference(str(ref)) == ref  # the full form reads back to the same reference
    assert ref.familiar == normalize_image_name(text)  # the image store's spelling agrees
    if registry is not None:
        assert ref.registry == registry


def test_reference_parts_and_defaults() -> None:
    digest = "sha256:" + "c" * 64
    ref = parse_reference(f"localhost:5000/team/app:1.0@{digest}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (
        "localhost:5000",
        "team/app",
        "1.0",
        digest,
    )
    assert ref.identifier == digest  # the digest decides what is pulled
    assert ref.scope("pull,push") == "repository:team/app:pull,push"
    assert parse_reference("app", default_tag=False).tag is None
    assert parse_reference("app").with_digest(digest).familiar == f"app:latest@{digest}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Alpine", "lowercase"),
        ("docker.io/Library/alpine", "lowercase"),
        ("a" * 64, "image ID"),
        ("alpine:", "not a tag"),
        ("alpine:-x", "not a tag"),
        ("alpine:" + "t" * 129, "not a tag"),
        ("alpine@sha256:abc", "sha256"),
        ("alpine@sha512:" + "a" * 128, "sha256"),
        ("alpine@md5", "not a digest"),
        ("-app", "repository path"),
        ("app-", "repository path"),
        ("a//b", "repository path"),
        ("host:port:1/app", "registry host"),
        ("a b", "white space"),
        ("x" * 256, "255"),
    ],
)
def test_invalid_references_say_why(text: str, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        parse_reference(text)


# --- platform selection -----------------------------------------------------------------------


def entry(platform: str | None, digest_char: str) -> Descriptor:
    plat = None
    if platform is not None:
        parts = platform.split("/")
        plat = DescriptorPlatform(parts[0], parts[1], parts[2] if len(parts) > 2 else "")
    return Descriptor(OCI_MANIFEST, "sha256:" + digest_char * 64, 100, (), plat)


def test_platform_selection_exact_compatible_and_attestations() -> None:
    entries = [
        entry("unknown/unknown", "0"),
        entry("linux/amd64", "1"),
        entry("linux/arm64/v8", "2"),
        entry("linux/arm/v6", "3"),
        entry("linux/arm/v7", "4"),
        entry(None, "5"),
    ]
    pick = lambda text: select_platform(entries, Platform.parse(text), "idx").digest[-1]  # noqa: E731
    assert pick("linux/amd64") == "1"
    assert pick("linux/arm64") == "2"  # arm64/v8 is arm64
    assert pick("linux/arm/v7") == "4"  # exact beats compatible
    assert pick("linux/arm/v8") == "4"  # v8 runs v7, the newest older variant
    assert select_platform(entries[3:4], Platform.parse("linux/arm/v7"), "idx") == entries[3]
    assert pick("linux/amd64/v3") == "1"  # amd64/v3 runs plain amd64
    with pytest.raises(InvalidImageError, match=r"no image for linux/s390x.*linux/amd64"):
        select_platform(entries, Platform.parse("linux/s390x"), "idx")
    with pytest.raises(InvalidImageError, match="no image for linux/arm/v5"):
        select_platform(entries, Platform.parse("linux/arm/v5"), "idx")


# --- credentials ------------------------------------------------------------------------------


def write_docker_config(directory: Path, doc: dict[str, object]) -> None:
    (directory / "config.json").write_text(json.dumps(doc))


def test_challenges_are_parsed() -> None:
    header = (
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:a/b:pull,push", Basic realm="x, y"'
    )
    bearer, basic = parse_challenges(header)
    assert bearer.scheme == "bearer"
    assert bearer.get("realm") == "https://auth.example.com/token"
    assert bearer.get("scope") == "repository:a/b:pull,push"
    assert (basic.scheme, basic.get("realm")) == ("basic", "x, y")
    assert parse_challenges('Basic realm="a \\"quoted\\" realm"')[0].get("realm") == (
        'a "quoted" realm'
    )


def test_docker_config_auths(no_ambient_credentials: Path) -> None:
    encoded = base64.b64encode(b"alice:pa:ss").decode()
    write_docker_config(
        no_ambient_credentials,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": encoded},
                "ghcr.io": {"username": "bob", "password": "pw"},
                "https://registry.example.com/v2/": {"identitytoken": "refresh"},
                "quay.io": {"registrytoken": "bearer-token"},
            }
        },
    )
    hub = resolve_credentials("registry-1.docker.io")
    assert hub is not None and (hub.username, hub.password) == ("alice", "pa:ss")
    assert resolve_credentials("docker.io") == hub
    ghcr = resolve_credentials("ghcr.io")
    assert ghcr is not None and (ghcr.username, ghcr.password) == ("bob", "pw")
    example = resolve_credentials("registry.example.com")
    assert example is not None and example.identity_token == "refresh"  # noqa: S105 - test data
    quay = resolve_credentials("quay.io")
    assert quay is not None and quay.registry_token == "bearer-token"  # noqa: S105 - test data
    assert resolve_credentials("other.example.com") is None
    assert "pa:ss" not in repr(hub) and "refresh" not in repr(example)


def test_docker_config_credential_helpers(
    no_ambient_credentials: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """credHelpers and credsStore run docker-credential-<name> get with the server on stdin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "helper.log"
    for name, user in (("memotest", "helper-user"), ("memostore", "<token>")):
        helper = bin_dir / f"docker-credential-{name}"
        helper.write_text(
            "#!/bin/sh\n"
            '[ "$1" = get ] || exit 1\n'
            f'read server; echo "{name} $server" >> {log}\n'
            'case "$server" in *unknown*) echo "credentials not found in native keychain"; '
            "exit 1;; esac\n"
            f'printf \'{{"ServerURL":"%s","Username":"{user}",'
            f'"Secret":"from-{name}"}}\' "$server"\n'
        )
        helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    write_docker_config(
        no_ambient_credentials,
        {
            "credHelpers": {"ghcr.io": "memotest", "broken.example.com": "not-installed"},
            "credsStore": "memostore",
            "auths": {"ghcr.io": {"auth": base64.b64encode(b"ignored:ignored").decode()}},
        },
    )
    ghcr = resolve_credentials("ghcr.io")
    assert ghcr is not None and (ghcr.username, ghcr.password) == ("helper-user", "from-memotest")
    hub = resolve_credentials("docker.io")
    assert hub is not None and hub.identity_token == "from-memostore"  # noqa: S105 - test data
    assert resolve_credentials("unknown.example.com") is None
    assert log.read_text().splitlines() == [
        "memotest ghcr.io",
        "memostore https://index.docker.io/v1/",
        "memostore unknown.example.com",
    ]
    with pytest.raises(RegistryAuthError, match="docker-credential-not-installed"):
        resolve_credentials("broken.example.com")


def test_environment_overrides(
    no_ambient_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_docker_config(
        no_ambient_credentials, {"auths": {"ghcr.io": {"username": "file", "password": "f"}}}
    )
    monkeypatch.setenv("MEMOBUILD_REGISTRY_USER", "env-user")
    monkeypatch.setenv("MEMOBUILD_REGISTRY_PASSWORD", "env-pw")
    # Without MEMOBUILD_REGISTRY_HOST they are for no registry: an error, never sent anywhere.
    for host in ("ghcr.io", "docker.io"):
        with pytest.raises(InputError, match="MEMOBUILD_REGISTRY_HOST is not") as unnamed:
            resolve_credentials(host)
        assert "env-pw" not in str(unnamed.value)
    monkeypatch.setenv("MEMOBUILD_REGISTRY_HOST", "GHCR.io")
    found = resolve_credentials("ghcr.io")  # named: the environment beats the config file
    assert found is not None and (found.username, found.password) == ("env-user", "env-pw")
    monkeypatch.setenv("MEMOBUILD_REGISTRY_HOST", "registry.example.com, quay.io")
    found = resolve_credentials("ghcr.io")  # not listed: the config file's
    assert found is not None and found.username == "file"
    assert resolve_credentials("docker.io") is None  # not listed: nothing is sent to Hub
    assert resolve_credentials("quay.io") == Credentials(
        "MEMOBUILD_REGISTRY_USER/MEMOBUILD_REGISTRY_PASSWORD", "env-user", "env-pw"
    )
    monkeypatch.setenv("MEMOBUILD_REGISTRY_TOKEN", "tok")
    token = resolve_credentials("quay.io")
    assert token is not None and token.registry_token == "tok"  # noqa: S105 - test data
    monkeypatch.delenv("MEMOBUILD_REGISTRY_TOKEN")
    monkeypatch.delenv("MEMOBUILD_REGISTRY_PASSWORD")
    with pytest.raises(InputError, match="MEMOBUILD_REGISTRY_PASSWORD is not set"):
        resolve_credentials("quay.io")


def test_status_errors_say_what_and_whether_to_retry() -> None:
    client = RegistryClient(RegistryOptions())
    request = httpx.Request("GET", "https://r.example.com/v2/a/manifests/1")
    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
    cases = [
        (404, RegistryNotFoundError, False),
        (403, RegistryAuthError, False),
        (400, RegistryError, False),
        (500, RegistryError, True),
        (503, RegistryError, True),
        (429, RegistryError, True),
    ]
    for status, kind, retryable in cases:
        response = httpx.Response(
            status, content=body.encode(), headers={"Retry-After": "2"}, request=request
        )
        err = client._status_error("r.example.com", response, "GET manifest a:1")
        assert type(err) is kind
        assert err.retryable is retryable
        assert err.status == status and err.code == "MANIFEST_UNKNOWN"
        assert "r.example.com: GET manifest a:1: HTTP" in str(err)
    assert err.retry_after == 2.0
    client.close()


# --- push and pull against the registry -------------------------------------------------------


def test_push_then_pull_into_an_empty_store(
    registry: Registry, busybox: tuple[LocalStore, BusyboxImage], tmp_path: Path
) -> None:
    store, base = busybox
    ref = f"{registry.host}/memobuild/busybox:1"
    with client_for(registry) as client:
        digest = push(base.image, store, ref, client=client)
    assert digest == base.digest  # the registry stored MemoBuild's manifest unchanged

    empty = LocalStore(tmp_path / "empty")
    with client_for(registry) as client:
        pulled = pull_image(ref, empty, client=client)
    assert pulled.image == base.image
    assert pulled.local_digest == digest == pulled.registry_digest
    assert layer_bytes(empty, pulled.image) == layer_bytes(store, base.image)
    # Saved under its name like docker pull, and its blobs pinned against gc.
    assert ImageStore(empty).resolve_digest(f"{registry.host}/memobuild/busybox:1") == digest

    # skopeo reads the same manifest digest, and copies the image out byte for byte.
    inspect = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))
    assert inspect["Digest"] == digest
    assert inspect["Layers"] == [layer.digest for layer in base.image.layers]
    layout = tmp_path / "skopeo-layout"
    skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:copied")
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    again = read_oci_layout(layout, "copied", LocalStore(tmp_path / "third"))
    assert again == base.image


def test_second_pull_asks_at_most_one_manifest_request(registry: Registry, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "src")
    image = make_random_image(store, tmp_path / "img", layers=2, layer_bytes=64 << 10)
    ref = f"{registry.host}/cached/app:1"
    with client_for(registry) as client:
        digest = push(image, store, ref, client=client)
    local = LocalStore(tmp_path / "local")
    repo = r"^/v2/cached/app/"
    with client_for(registry) as client:
        pull(ref, local, client=client)
    first = len(registry.requests())
    assert registry.count("GET", repo + "blobs/") == 3  # config and two layers

    with client_for(registry) as client:  # policy missing: the store answers
        assert pull(ref, local, client=client) == image
    assert len(registry.requests()) == first

    with client_for(registry) as client:  # always: one HEAD, nothing downloaded
        result = pull_image(ref, local, policy="always", client=client)
    assert result.image == image and result.downloaded_layers == 0
    new = registry.requests()[first:]
    assert [(r.method, r.path) for r in new if r.path != "/v2/"] == [
        ("HEAD", "/v2/cached/app/manifests/1")
    ]

    count = len(registry.requests())
    with client_for(registry) as client:  # pinned by digest: never asks
        assert pull(f"{registry.host}/cached/app@{digest}", local, policy="always") == image
        assert pull(ref, local, policy="never", client=client) == image
    assert len(registry.requests()) == count

    with pytest.raises(ImageNotFoundError):
        pull(ref, LocalStore(tmp_path / "nothing"), policy="never")
    with pytest.raises(InputError, match="--pull=sometimes"):
        pull(ref, local, policy="sometimes")


def test_retag_is_seen_by_pull_always(registry: Registry, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "src")
    first = make_random_image(store, tmp_path / "a", layer_bytes=16 << 10)
    second = make_random_image(store, tmp_path / "b", layer_bytes=16 << 10)
    ref = f"{registry.host}/moving/app:stable"
    local = LocalStore(tmp_path / "local")
    with client_for(registry) as client:
        push(first, store, ref, client=client)
        assert pull(ref, local, client=client) == first
        push(second, store, ref, client=client)
        assert pull(ref, local, client=client) == first  # missing: the local copy
        assert pull(ref, local, policy="always", client=client) == second
        assert pull(ref, local, client=client) == second  # and the name moved with it


def test_second_push_skips_blobs_and_mounts_across_repositories(
    registry: Registry, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "src")
    image = make_random_image(store, tmp_path / "img", layers=2, layer_bytes=32 << 10)
    with client_for(registry) as client:
        first = push_image(image, store, f"{registry.host}/team/one:1", client=client)
        assert first.count("uploaded") == 3
        again = push_image(image, store, f"{registry.host}/team/one:2", client=client)
        assert again.count("exists") == 3 and again.digest == first.digest
        other = push_image(image, store, f"{registry.host}/team/two:1", client=client)
    assert other.count("mounted") == 3
    assert {blob.mounted_from for blob in other.blobs} == {"team/one"}
    assert registry.count("POST", r"^/v2/team/two/blobs/uploads/\?mount=sha256") == 3
    assert registry.count("PATCH", r"^/v2/team/two/") == 0
    # A store that never saw team/one can still mount when told where to look.
    fresh = LocalStore(tmp_path / "fresh")
    for layer in image.layers:
        fresh.put_blob_bytes(store.read_blob(layer.digest), layer.digest)
    with client_for(registry) as client:
        told = push_image(
            image, fresh, f"{registry.host}/team/three:1", client=client, mount_from=["team/one"]
        )
    assert told.count("mounted") == 3


def test_large_blobs_go_in_chunks(registry: Registry, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "src")
    image = make_random_image(store, tmp_path / "img", layer_bytes=600 << 10)
    size = image.layers[0].size
    with client_for(registry, chunk_size=128 << 10) as client:
        push(image, store, f"{registry.host}/chunked/app:1", client=client)
    patches = registry.count("PATCH", r"^/v2/chunked/app/blobs/uploads/")
    assert patches == -(-size // (128 << 10))  # one per 128 KiB chunk of the layer
    with client_for(registry) as client:
        pulled = pull(f"{registry.host}/chunked/app:1", LocalStore(tmp_path / "o"), client=client)
    assert pulled == image


def test_pull_of_images_skopeo_pushed_multi_platform_and_docker_types(
    registry: Registry, tmp_path: Path
) -> None:
    """An OCI index with two platforms, copied with skopeo --all, and the same as Docker
    schema 2 (manifest list and manifests) with --format v2s2."""
    store = LocalStore(tmp_path / "src")
    amd64 = make_random_image(store, tmp_path / "amd64", layer_bytes=32 << 10)
    arm64 = make_random_image(
        store, tmp_path / "arm64", layer_bytes=32 << 10, architecture="arm64", variant="v8"
    )
    layout = tmp_path / "layout"
    entries = []
    for tag, image in (("amd64", amd64), ("arm64", arm64)):
        write_oci_layout(image, store, layout, tag=tag)
        encoded = encode_image(image)
        platform = DescriptorPlatform("linux", image.architecture, image.variant or "")
        entries.append(
            Descriptor(OCI_MANIFEST, encoded.manifest_digest, len(encoded.manifest), (), platform)
        )
    # An attestation-like entry, as BuildKit adds: never chosen.
    unknown = DescriptorPlatform("unknown", "unknown")
    entries.append(Descriptor(OCI_MANIFEST, entries[0].digest, entries[0].size, (), unknown))
    index = index_json(entries)
    index_digest = digest_bytes(index)
    (layout / "blobs/sha256" / index_digest.split(":")[1]).write_bytes(index)
    top = json.loads((layout / "index.json").read_text())
    top["manifests"].append(
        {
            "mediaType": OCI_INDEX,
            "digest": index_digest,
            "size": len(index),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
    )
    (layout / "index.json").write_text(json.dumps(top))

    oci_ref = f"{registry.host}/multi/oci:1"
    docker_ref = f"{registry.host}/multi/docker:1"
    source = f"oci:{layout}:multi"
    skopeo("copy", "-q", "--all", "--dest-tls-verify=false", source, f"docker://{oci_ref}")
    skopeo(
        "copy", "-q", "--all", "--format", "v2s2", "--dest-tls-verify=false", source,
        f"docker://{docker_ref}",
    )  # fmt: skip
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{docker_ref}"))
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"

    for ref in (oci_ref, docker_ref):
        local = LocalStore(tmp_path / ("local-" + ref.rsplit("/", 1)[1].replace(":", "-")))
        with client_for(registry) as client:
            got_arm = pull_image(ref, local, "linux/arm64", client=client)
            got_amd = pull(ref, local, Platform("linux", "amd64"), client=client)
            with pytest.raises(InvalidImageError, match=r"no image for linux/s390x .*linux/arm64"):
                pull(ref, local, "linux/s390x", client=client)
        assert got_arm.image.architecture == "arm64"
        assert got_arm.image.diff_ids == arm64.diff_ids
        assert got_amd.architecture == "amd64" and got_amd.diff_ids == amd64.diff_ids
        assert layer_bytes(local, got_amd) == layer_bytes(store, amd64)
        if ref == oci_ref:
            assert got_arm.registry_digest == index_digest
        # Pinned by the index digest: both platforms answer from the store now.
        pinned = f"{ref.rsplit(':', 1)[0]}@{got_arm.registry_digest}"
        count = len(registry.requests())
        assert pull(pinned, local, "linux/arm64").diff_ids == arm64.diff_ids
        assert len(registry.requests()) == count


def test_missing_repository_and_tag(registry: Registry, tmp_path: Path) -> None:
    with client_for(registry) as client, pytest.raises(RegistryNotFoundError) as caught:
        pull(f"{registry.host}/no/such:1", LocalStore(tmp_path / "s"), client=client)
    assert caught.value.code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")
    assert not caught.value.retryable
    assert registry.count("GET", r"^/v2/no/such/manifests/1$") == 1  # not retried


def test_blob_served_with_wrong_content_is_refused(registry: Registry, tmp_path: Path) -> None:
    """The registry's copy of a layer is corrupted on disk; it serves it as is. The pull fails
    with CASIntegrityError, stores nothing of that layer, and does not retry."""
    store = LocalStore(tmp_path / "src")
    image = make_random_image(store, tmp_path / "img", layer_bytes=256 << 10)
    ref = f"{registry.host}/corrupt/app:1"
    with client_for(registry) as client:
        push(image, store, ref, client=client)
    layer = image.layers[0]
    blob = registry.blob_file(layer.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    blob.write_bytes(bytes(data))

    local = LocalStore(tmp_path / "local")
    with client_for(registry) as client, pytest.raises(CASIntegrityError) as caught:
        pull(ref, local, client=client)
    assert caught.value.expected == layer.digest
    assert caught.value.actual == digest_bytes(bytes(data))
    assert not local.has_blob(layer.digest)
    assert ImageStore(local).resolve_digest(f"{registry.host}/corrupt/app:1") is None
    assert registry.count("GET", rf"^/v2/corrupt/app/blobs/{layer.digest}$") == 1


def test_registry_behind_a_flaky_proxy_is_survived(registry: Registry, tmp_path: Path) -> None:
    """Dropped and reset connections, and responses cut off mid-blob: pushes and pulls retry,
    and a download that broke off resumes from where it stopped (HTTP 206)."""
    store = LocalStore(tmp_path / "src")
    image = make_random_image(store, tmp_path / "img", layers=2, layer_bytes=1 << 20)
    faults = Faults(drop=0.15, reset=0.15, cut=0.25, cut_after=400_000)
    with FlakyProxy(("127.0.0.1", registry.port), faults, seed=7) as proxy:
        host = f"127.0.0.1:{proxy.port}"
        options = {"insecure": frozenset({host}), "retry": FAST_RETRY, "concurrency": 1}
        with RegistryClient(RegistryOptions(**options)) as client:  # type: ignore[arg-type]
            digest = push(image, store, f"{host}/flaky/app:1", client=client)
            local = LocalStore(tmp_path / "local")
            pulled = pull(f"{host}/flaky/app:1", local, client=client)
    assert pulled == image
    assert layer_bytes(local, pulled) == layer_bytes(store, image)
    assert digest == encode_image(image).manifest_digest
    assert proxy.fates["drop"] + proxy.fates["reset"] > 0
    assert proxy.fates["cut"] > 0
    assert any(
        r.status == 206 and r.path.startswith("/v2/flaky/app/blobs/") for r in registry.requests()
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fds_settle_at(expected: int, timeout: float = 5.0) -> bool:
    """Whether the open descriptors come back to at most ``expected`` within ``timeout``: the
    in-process FlakyProxy closes its relayed sockets on its own threads, a moment after the
    client does (and an earlier test's background threads may close theirs meanwhile, so the
    count can end lower), while a leaked file stays open for good."""
    deadline = time.monotonic() + timeout
    while open_fds() > expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_every_retry_resumes_the_download(registry: Registry, tmp_path: Path) -> None:
    """Every blob response is cut after 300 kB: a 1 MB layer arrives only because each retry
    asks for the rest (Range), and too few attempts fail cleanly, storing nothing."""
    store = LocalStore(tmp_path / "src")
    image = make_random_image(store, tmp_path / "img", layer_bytes=1 << 20, files_per_layer=1)
    layer = image.layers[0]
    with client_for(registry) as client:
        push(image, store, f"{registry.host}/resume/app:1", client=client)
    with FlakyProxy(("127.0.0.1", registry.port), Faults(cut=1.0, cut_after=300_000)) as proxy:
        host = f"127.0.0.1:{proxy.port}"
        ref = f"{host}/resume/app:1"
        few = RetryPolicy(max_attempts=3, initial=0.0, cap=0.0)
        local = LocalStore(tmp_path / "few")
        fds = open_fds()
        with (
            RegistryClient(RegistryOptions(insecure=frozenset({host}), retry=few)) as client,
            pytest.raises(NetworkError, match="broken off after"),
        ):
            pull(ref, local, client=client)
        assert not local.has_blob(layer.digest)
        assert fds_settle_at(fds)  # the store side of the stream was stopped and closed
        many = RetryPolicy(max_attempts=12, initial=0.0, cap=0.0)
        with RegistryClient(RegistryOptions(insecure=frozenset({host}), retry=many)) as client:
            pulled = pull(ref, LocalStore(tmp_path / "many"), client=client)
    assert pulled == image
    ranges = [r for r in registry.requests() if r.path == f"/v2/resume/app/blobs/{layer.digest}"]
    assert sum(1 for r in ranges if r.status == 206) >= layer.size // 300_000


def test_blob_stream_starts_over_and_refuses_wrong_content(tmp_path: Path) -> None:
    """The sink a blob download writes into: a restart (a registry that ignores Range sends
    the whole blob again) drops the partial copy; content that does not match is not stored."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        payload = os.urandom(300_000)
        info = tarfile.TarInfo("data.bin")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    blob = gzip.compress(tar.getvalue())
    desc = Descriptor(OCI_LAYER_GZIP, digest_bytes(blob), len(blob))
    store, other = LocalStore(tmp_path / "s"), LocalStore(tmp_path / "other")
    fds = open_fds()
    sink = BlobStream(store, desc, "test layer")
    sink.write(blob[:70_000])
    sink.reset()
    assert sink.offset == 0
    for start in range(0, len(blob), 65536):
        sink.write(blob[start : start + 65536])
    assert sink.finish() == desc.digest
    sink.close()
    assert store.read_blob(desc.digest) == blob

    sink = BlobStream(other, desc, "test layer")
    sink.write(os.urandom(len(blob)))
    with pytest.raises(CASIntegrityError, match="test layer"):
        sink.finish()
    sink.close()
    assert not other.has_blob(desc.digest)
    assert open_fds() == fds


# --- TLS and authentication -------------------------------------------------------------------


def secure_client(registry: Registry, **options: object) -> RegistryClient:
    settings: dict[str, object] = {"retry": FAST_RETRY, "ca_bundle": registry.ca}
    settings.update(options)
    return RegistryClient(RegistryOptions(**settings))  # type: ignore[arg-type]


def test_tls_is_verified_unless_asked(
    secure_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = f"{secure_registry.host}/tls/app:1"
    store = LocalStore(tmp_path / "s")
    monkeypatch.setenv("MEMOBUILD_REGISTRY_USER", USER)
    monkeypatch.setenv("MEMOBUILD_REGISTRY_PASSWORD", PASSWORD)
    monkeypatch.setenv("MEMOBUILD_REGISTRY_HOST", secure_registry.host)
    image = make_random_image(store, tmp_path / "img", layer_bytes=16 << 10)
    with (
        RegistryClient(RegistryOptions(retry=FAST_RETRY)) as client,
        pytest.raises(RegistryError, match=r"TLS error.*MEMOBUILD_REGISTRY_CA") as caught,
    ):
        push(image, store, ref, client=client)
    assert not caught.value.retryable
    with secure_client(secure_registry) as client:  # its CA given: verified and accepted
        digest = push(image, store, ref, client=client)
    insecure = RegistryOptions(insecure=frozenset({secure_registry.host}), retry=FAST_RETRY)
    with RegistryClient(insecure) as client:  # insecure: TLS without verification
        assert pull(ref, LocalStore(tmp_path / "o1"), client=client) == image
    monkeypatch.setenv("MEMOBUILD_REGISTRY_CA", str(secure_registry.ca))
    with RegistryClient(RegistryOptions.from_env()) as client:  # the CA from the environment
        assert pull_image(ref, LocalStore(tmp_path / "o2"), client=client).local_digest == digest


def test_authentication_refused_and_accepted(
    secure_registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_ambient_credentials: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = LocalStore(tmp_path / "s")
    image = make_random_image(store, tmp_path / "img", layer_bytes=16 << 10)
    ref = f"{secure_registry.host}/private/app:1"
    messages: list[str] = []
    sink = logger.add(messages.append, level="DEBUG", format="{message}")
    caplog.set_level(logging.DEBUG)
    try:
        with secure_client(secure_registry) as client, pytest.raises(RegistryAuthError) as none:
            pull(ref, LocalStore(tmp_path / "o0"), client=client)
        assert "requires authentication" in str(none.value)

        monkeypatch.setenv("MEMOBUILD_REGISTRY_USER", USER)
        monkeypatch.setenv("MEMOBUILD_REGISTRY_PASSWORD", "wrong-" + PASSWORD)
        monkeypatch.setenv("MEMOBUILD_REGISTRY_HOST", secure_registry.host)
        with secure_client(secure_registry) as client, pytest.raises(RegistryAuthError) as wrong:
            push(image, store, ref, client=client)
        assert "refused the credentials from MEMOBUILD_REGISTRY_USER" in str(wrong.value)
        assert f"as {USER!r}" in str(wrong.value)
        assert not wrong.value.retryable

        monkeypatch.setenv("MEMOBUILD_REGISTRY_PASSWORD", PASSWORD)  # right, from the env
        with secure_client(secure_registry) as client:
            digest = push(image, store, ref, client=client)

        monkeypatch.delenv("MEMOBUILD_REGISTRY_USER")
        monkeypatch.delenv("MEMOBUILD_REGISTRY_PASSWORD")
        pair = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        write_docker_config(
            no_ambient_credentials, {"auths": {secure_registry.host: {"auth": pair}}}
        )
        with secure_client(secure_registry) as client:  # right, from the Docker config
            pulled = pull_image(ref, LocalStore(tmp_path / "o1"), client=client)
        assert pulled.local_digest == digest and pulled.image == image

        bad = base64.b64encode(f"{USER}:nope".encode()).decode()
        write_docker_config(
            no_ambient_credentials, {"auths": {secure_registry.host: {"auth": bad}}}
        )
        with secure_client(secure_registry) as client, pytest.raises(RegistryAuthError) as cfg:
            pull(ref, LocalStore(tmp_path / "o2"), client=client)
        assert str(no_ambient_credentials / "config.json") in str(cfg.value)
    finally:
        logger.remove(sink)
    captured = capfd.readouterr()
    everything = "\n".join(
        [*messages, captured.out, captured.err, caplog.text, str(none.value), str(wrong.value)]
    )
    assert "pulled" in everything  # the logs were captured at all
    for secret in (PASSWORD, pair, base64.b64encode(f"{USER}:wrong-{PASSWORD}".encode()).decode()):
        assert secret not in everything
    requests = secure_registry.requests()
    assert requests and all(PASSWORD not in r.path for r in requests)


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Token authentication: the registry sends clients to a token service for bearer JWTs."""
    workdir = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(workdir, USER, PASSWORD)
    try:
        with running_registry(workdir, token_server=tokens) as running:
            running.tokens = tokens  # type: ignore[attr-defined]
            yield running
    finally:
        tokens.stop()


def test_bearer_token_flow(
    token_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anonymous tokens pull public images; pushes get a pull,push token with the credentials;
    a token is fetched once per scope set and reused; a mount asks for both repositories;
    wrong credentials are refused by the token service with a clear error."""
    tokens: TokenServer = token_registry.tokens  # type: ignore[attr-defined]
    store = LocalStore(tmp_path / "s")
    image = make_random_image(store, tmp_path / "img", layers=3, layer_bytes=16 << 10)
    public = f"{token_registry.host}/public/app:1"
    options = RegistryOptions(insecure=frozenset({token_registry.host}), retry=FAST_RETRY)

    with RegistryClient(options) as client, pytest.raises(RegistryAuthError):
        push(image, store, public, client=client)  # anonymous: no push access
    monkeypatch.setenv("MEMOBUILD_REGISTRY_USER", USER)
    monkeypatch.setenv("MEMOBUILD_REGISTRY_PASSWORD", "wrong")
    monkeypatch.setenv("MEMOBUILD_REGISTRY_HOST", token_registry.host)
    with RegistryClient(options) as client, pytest.raises(RegistryAuthError) as wrong:
        push(image, store, public, client=client)
    assert "refused the credentials from MEMOBUILD_REGISTRY_USER" in str(wrong.value)
    assert tokens.requests[-1].status == 401

    monkeypatch.setenv("MEMOBUILD_REGISTRY_PASSWORD", PASSWORD)
    del tokens.requests[:]
    with RegistryClient(options) as client:
        digest = push(image, store, public, client=client)
        push(image, store, f"{token_registry.host}/private/app:1", client=client)  # mounts
    assert [(r.user, r.scopes) for r in tokens.requests] == [
        (USER, ("repository:public/app:pull,push",)),
        (USER, ("repository:private/app:pull,push",)),
        (USER, ("repository:private/app:pull,push", "repository:public/app:pull")),
    ]
    assert token_registry.count("POST", r"^/v2/private/app/blobs/uploads/\?mount=") == 4

    monkeypatch.delenv("MEMOBUILD_REGISTRY_USER")
    monkeypatch.delenv("MEMOBUILD_REGISTRY_PASSWORD")
    del tokens.requests[:]
    with RegistryClient(options) as client:  # anonymous pull of a public image
        pulled = pull_image(public, LocalStore(tmp_path / "o1"), client=client)
        with pytest.raises(RegistryAuthError):
            pull(f"{token_registry.host}/private/app:1", LocalStore(tmp_path / "o2"), client=client)
    assert pulled.local_digest == digest
    assert tokens.requests[0] == type(tokens.requests[0])(
        None, ("repository:public/app:pull",), 200
    )
    assert len([r for r in tokens.requests if r.scopes == ("repository:public/app:pull",)]) == 1


def test_pull_without_a_client_uses_the_environment(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pull() with no client makes one from the environment: a plain-HTTP registry is refused
    unless it is named insecure, which only a client's options can do."""
    store = LocalStore(tmp_path / "s")
    image = make_random_image(store, tmp_path / "img", layer_bytes=8 << 10)
    with client_for(registry) as client:
        push(image, store, f"{registry.host}/env/app:1", client=client)
    monkeypatch.setenv("MEMOBUILD_RETRY_MAX_ATTEMPTS", "1")
    with pytest.raises(RegistryError, match="TLS error"):
        pull(f"{registry.host}/env/app:1", LocalStore(tmp_path / "o"))


def test_registry_options_validate(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="CA bundle does not exist"):
        RegistryOptions(ca_bundle=tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(InputError, match="not a PEM CA bundle"):
        RegistryClient(RegistryOptions(ca_bundle=not_pem))
    with pytest.raises(InputError, match="concurrency"):
        RegistryOptions(concurrency=0)


def test_fixture_tools_are_installed() -> None:
    """The registry tests need these; a missing one must fail loudly, not skip."""
    for tool in ("docker-registry", "skopeo", "openssl"):
        assert shutil.which(tool), f"{tool} is not installed (scripts/install-system-deps)"


def test_host_platform_is_the_default(registry: Registry, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    host = host_platform()
    image = make_random_image(
        store, tmp_path / "img", layer_bytes=8 << 10, architecture=host.architecture
    )
    with client_for(registry) as client:
        push(image, store, f"{registry.host}/host/app:1", client=client)
        assert (
            pull(f"{registry.host}/host/app:1", LocalStore(tmp_path / "o"), client=client) == image
        )
