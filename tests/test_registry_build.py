"""Builds that use registries: push what MemoBuild built, pull it back as a base image with an
empty store, --pull policies, --platform from an image index, credentials from the Docker config
file over TLS with a custom CA, and the CLI's flags, messages and exit codes. Against a real
docker-registry (CNCF distribution 2.8) on 127.0.0.1, cross-checked with skopeo."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from busybox_image import image_tree, make_busybox_image, make_context
from memobuild.build.base import BaseResolver
from memobuild.build.executor import build
from memobuild.build.layers import write_tree_layer
from memobuild.build.planning import plan_build
from memobuild.cache.entries import LayerRef
from memobuild.cache.store import LocalStore
from memobuild.dockerfile.stages import host_platform
from memobuild.errors import CASIntegrityError, ImageNotFoundError, InputError, RegistryAuthError
from memobuild.images import ImageStore
from memobuild.oci.diff_ids import recorded_diff_id
from memobuild.oci.image import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    DescriptorPlatform,
    HistoryEntry,
    Image,
    encode_image,
    image_digest,
    index_json,
)
from memobuild.oci.pull import pull_image
from memobuild.oci.push import push
from memobuild.oci.reference import parse_reference
from memobuild.oci.registry import RegistryClient, RegistryOptions
from memobuild.verify import digest_bytes
from registry_fixture import (
    Registry,
    clear_registry_environment,
    free_port,
    secure_registry_fixture,
)

USER, PASSWORD = "builder", "build-and-push-Pa55"
HOST = host_platform()
OTHER_ARCH = "arm64" if HOST.architecture != "arm64" else "amd64"

APP = """\
FROM busybox
COPY hello.txt /hello.txt
RUN wc -c < /hello.txt > /size.txt
CMD ["cat", "/hello.txt"]
"""
HELLO = "hello from the registry\n"


@pytest.fixture(autouse=True)
def no_ambient_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test starts without credentials: an empty Docker config and no overrides."""
    return clear_registry_environment(tmp_path, monkeypatch, also=("MEMOBUILD_REMOTE_URL",))


secure_registry = secure_registry_fixture(USER, PASSWORD)


def skopeo_inspect(ref: str, *options: str) -> dict[str, object]:
    done = subprocess.run(
        ["skopeo", "inspect", *options, f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    value = json.loads(done.stdout)
    assert isinstance(value, dict)
    return value


def digests(image: Image) -> list[str]:
    return [layer.digest for layer in image.layers]


def manifest_requests(registry: Registry, since: int) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in registry.requests()[since:] if "/manifests/" in r.path]


# --- push, and pull back with an empty store ----------------------------------------------------


def test_push_then_pull_back_as_a_base_with_an_empty_store(
    registry: Registry, tmp_path: Path
) -> None:
    host = registry.host
    ref = f"{host}/build/app:1"
    with LocalStore(tmp_path / "a") as store:
        make_busybox_image(tmp_path / "base", store)
        context = make_context(tmp_path / "ctx", APP, {"hello.txt": HELLO})
        first = build(context, store=store, tags=[ref], push=True, insecure_registries=[host])
        (out,) = first.outputs
        assert (out.type, out.dest, out.digest, out.pushed) == ("image", ref, first.digest, (ref,))
        config = encode_image(first.image).config
        assert out.bytes == sum(layer.size for layer in first.image.layers) + len(config)
        uploads = registry.count("PUT", r"^/v2/build/app/blobs/uploads/")
        assert uploads == len(first.image.layers) + 1  # the layers and the config

        # type=image,push=true to a second tag of a no-change rebuild: every blob is there.
        second = build(
            context,
            store=store,
            outputs=[f"type=image,name={host}/build/app:2,push=true"],
            insecure_registries=[host],
        )
        assert second.executed == 0
        assert [(o.digest, o.bytes, o.pushed) for o in second.outputs] == [
            (first.digest, 0, (f"{host}/build/app:2",))
        ]
        assert registry.count("PUT", r"^/v2/build/app/blobs/uploads/") == uploads
    for tag in ("1", "2"):  # skopeo reads MemoBuild's manifest, unchanged
        inspect = skopeo_inspect(f"{host}/build/app:{tag}", "--tls-verify=false")
        assert inspect["Digest"] == first.digest
        assert inspect["Layers"] == digests(first.image)

    # Another build, with an empty store, starts FROM it: by tag and pinned by digest.
    pinned = f"{host}/build/app@{first.digest}"
    downstream = make_context(
        tmp_path / "down",
        f"FROM {pinned} AS pinned\n"
        "RUN cp /size.txt /pinned-size.txt\n"
        f"FROM {ref}\n"
        "COPY --from=pinned /pinned-size.txt /\n"
        "RUN cat /hello.txt /size.txt /pinned-size.txt > /all.txt\n",
    )
    cache = tmp_path / "b"
    with LocalStore(cache) as empty:
        pulled = build(downstream, store=empty, insecure_registries=[host])
        assert digests(pulled.image)[: len(first.image.layers)] == digests(first.image)
        size = f"{len(HELLO)}\n"
        tree = image_tree(empty, pulled.image, tmp_path / "tree")
        assert (tree / "all.txt").read_text() == HELLO + size + size
        assert pulled.image.config.cmd == ("cat", "/hello.txt")  # the base's config came too
        # memobuild plan and explain (a resolver without a registry) key it the same way.
        offline = plan_build(downstream, "Dockerfile", BaseResolver(empty))
        assert offline.keys == pulled.plan.keys
        recorded = pull_image(ref, empty, policy="never")  # what the pull recorded
        resolved = BaseResolver(empty).resolve(ref)
        assert image_digest(resolved) == recorded.local_digest == first.digest

        # A no-change rebuild with --pull=missing asks the registry nothing at all ...
        before = len(registry.requests())
        again = build(downstream, store=empty, insecure_registries=[host])
        assert (again.executed, again.digest) == (0, pulled.digest)
        assert len(registry.requests()) == before
        # ... and with --pull=always one manifest HEAD (the pinned one is never asked), and
        # the keys are the same: the pulled image is the image the store had.
        again = build(downstream, store=empty, pull="always", insecure_registries=[host])
        assert (again.executed, again.digest) == (0, pulled.digest)
        assert manifest_requests(registry, before) == [("HEAD", "/v2/build/app/manifests/1")]
        assert not any("/blobs/" in r.path for r in registry.requests()[before:])

    # The rebuild that asks no registry does not even load the HTTP client; one that asks does.
    script = (
        "import sys, memobuild\n"
        "r = memobuild.build(sys.argv[1], pull=sys.argv[2], insecure_registries=[sys.argv[3]])\n"
        "print(r.executed, r.digest, 'httpx' in sys.modules)\n"
    )
    env = {**os.environ, "MEMOBUILD_CACHE_DIR": str(cache)}
    for policy, loaded in (("missing", "False"), ("always", "True")):
        done = subprocess.run(
            [sys.executable, "-c", script, str(downstream), policy, host],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["0", pulled.digest, loaded]

    # --pull=never with an empty store: a clear error, and not one request.
    before = len(registry.requests())
    with (
        LocalStore(tmp_path / "c") as nothing,
        pytest.raises(ImageNotFoundError, match=r"not in the local store for .*--pull=never"),
    ):
        build(downstream, store=nothing, pull="never", insecure_registries=[host])
    assert len(registry.requests()) == before


def test_a_tag_the_registry_lacks_is_image_not_found(registry: Registry, tmp_path: Path) -> None:
    context = make_context(tmp_path / "ctx", f"FROM {registry.host}/no/such:1\nRUN true\n")
    with LocalStore(tmp_path / "s") as store, pytest.raises(ImageNotFoundError) as caught:
        build(context, store=store, insecure_registries=[registry.host])
    message = str(caught.value)
    assert f"image '{registry.host}/no/such:1' not found ({registry.host}: GET manifest" in message
    assert "HTTP 404" in message
    assert isinstance(caught.value, InputError)  # exit status 2: fix the Dockerfile


def scratch_trees_left(store: LocalStore, wait: float = 30.0) -> list[Path]:
    """The build scratch trees still in the store once their (background) removal is done."""
    area = store.root / "tmp" / "rootfs"
    deadline = time.monotonic() + wait
    while True:
        left = [p for p in area.iterdir() if p.is_dir()] if area.is_dir() else []
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_a_base_whose_config_lies_about_a_diff_id_is_refused_at_first_use(
    registry: Registry, tmp_path: Path
) -> None:
    """A pull checks each blob's digest only (as skopeo does); the diff_id its config claims is
    checked where the layer is first used. An image whose config claims a wrong one is
    refused there, with a clear error, and leaves nothing behind that a later build could use:
    no step stored on it, no scratch tree, every blob whole, and the blob's true diff_id
    recorded, so the next use refuses it without unpacking."""
    host = registry.host
    ref = f"{host}/bad/base:1"
    with LocalStore(tmp_path / "src") as src:
        base = make_busybox_image(tmp_path / "base", src)
        [layer] = base.image.layers
        wrong = dataclasses.replace(layer, diff_id=digest_bytes(b"another layer's tar"))
        liar = dataclasses.replace(base.image, layers=(wrong,))
        with RegistryClient(RegistryOptions(insecure=frozenset({host}))) as client:
            push(liar, src, ref, client=client)
    message = (
        rf"layer {layer.digest} \(diff_id\): its uncompressed content is not the diff_id its "
        "image config lists; the image is refused"
    )

    run = make_context(tmp_path / "run", f"FROM {ref}\nRUN echo hi > /hi.txt\n")
    with LocalStore(tmp_path / "a") as store:
        with pytest.raises(CASIntegrityError, match=message) as caught:
            build(run, store=store, insecure_registries=[host])
        assert wrong.diff_id in str(caught.value) and layer.diff_id in str(caught.value)
        # Pulled (the blob is whole), but nothing was built on it, and no tree is left.
        assert store.read_blob(layer.digest)
        assert [a.layers for a in store.list_actions()] == [0]  # the FROM step's entry alone
        assert scratch_trees_left(store) == []
        assert recorded_diff_id(store, layer.digest) == layer.diff_id
        # The next build refuses it too (from the record, before unpacking anything).
        with pytest.raises(CASIntegrityError, match=message):
            build(run, store=store, insecure_registries=[host])

    # A build that never unpacks the base (a config-only step) refuses to save or export an
    # image that would carry the wrong claim.
    label = make_context(tmp_path / "label", f"FROM {ref}\nLABEL checked=yes\n")
    with LocalStore(tmp_path / "b") as store:
        with pytest.raises(CASIntegrityError, match=message):
            build(label, store=store, tags=["bad:1"], insecure_registries=[host])
        assert ImageStore(store).resolve_digest("bad:1") is None

    # The honest image, pulled into a store that has never seen the blob, builds fine, and its
    # layer's diff_id is checked once, in the unpack itself.
    honest = f"{host}/good/base:1"
    with (
        LocalStore(tmp_path / "src") as src,
        RegistryClient(RegistryOptions(insecure=frozenset({host}))) as client,
    ):
        push(base.image, src, honest, client=client)
    good = make_context(tmp_path / "good", f"FROM {honest}\nRUN echo hi > /hi.txt\n")
    with LocalStore(tmp_path / "c") as store:
        built = build(good, store=store, tags=["good:1"], insecure_registries=[host])
        assert built.executed == 2
        assert recorded_diff_id(store, layer.digest) == layer.diff_id


# --- platforms ----------------------------------------------------------------------------------


def test_platform_picks_the_base_from_an_image_index(registry: Registry, tmp_path: Path) -> None:
    """An index with this host's image and one for another architecture (same busybox, so it
    runs here, plus a marker layer): --platform picks the entry, and TARGETPLATFORM follows."""
    host = registry.host
    with LocalStore(tmp_path / "src") as src:
        base = make_busybox_image(tmp_path / "base", src)
        entries = []
        for arch in (HOST.architecture, OTHER_ARCH):
            tree = tmp_path / f"marker-{arch}"
            tree.mkdir()
            (tree / "marker").write_text(f"{arch}\n")
            blob = write_tree_layer(tree, tmp_path / f"marker-{arch}.tar.gz", source_date_epoch=0)
            src.put_blob_file(blob.path, blob.digest)
            variant = HOST.variant if arch == HOST.architecture else None
            image = Image(
                config=base.image.config,
                layers=(*base.image.layers, LayerRef(blob.digest, blob.diff_id, blob.size)),
                history=(*base.image.history, HistoryEntry(created_by=f"marker {arch}")),
                architecture=arch,
                os="linux",
                variant=variant or None,
            )
            ref = parse_reference(f"{host}/multi/base:{arch}")
            options = RegistryOptions(insecure=frozenset({host}))
            with RegistryClient(options) as client:
                digest = push(image, src, ref, client=client)
                encoded = encode_image(image)
                platform = DescriptorPlatform("linux", arch, variant or "")
                entries.append(
                    Descriptor(OCI_MANIFEST, digest, len(encoded.manifest), (), platform)
                )
        with RegistryClient(RegistryOptions(insecure=frozenset({host}))) as client:
            client.put_manifest(
                parse_reference(f"{host}/multi/base:1"), index_json(entries), OCI_INDEX
            )

    context = make_context(
        tmp_path / "ctx",
        f"FROM {host}/multi/base:1\n"
        "ARG TARGETPLATFORM\n"
        'RUN echo "$TARGETPLATFORM $(cat /marker)" > /seen.txt\n',
    )
    with LocalStore(tmp_path / "store") as store:
        mine = build(context, store=store, insecure_registries=[host])
        other = build(
            context, store=store, platform=f"linux/{OTHER_ARCH}", insecure_registries=[host]
        )
        assert (mine.image.architecture, other.image.architecture) == (
            HOST.architecture,
            OTHER_ARCH,
        )
        assert (image_tree(store, mine.image, tmp_path / "mine") / "seen.txt").read_text() == (
            f"{HOST} {HOST.architecture}\n"
        )
        seen = (image_tree(store, other.image, tmp_path / "other") / "seen.txt").read_text()
        assert seen == f"linux/{OTHER_ARCH} {OTHER_ARCH}\n"
        # Both are in the store now, each found for its platform without asking again.
        before = len(registry.requests())
        again = build(
            context, store=store, platform=f"linux/{OTHER_ARCH}", insecure_registries=[host]
        )
        assert (again.executed, again.digest) == (0, other.digest)
        assert len(registry.requests()) == before


# --- authentication and TLS ---------------------------------------------------------------------


def test_push_and_pull_with_docker_config_credentials_over_tls(
    secure_registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_ambient_credentials: Path,
) -> None:
    host = secure_registry.host
    ref = f"{host}/private/app:1"
    assert secure_registry.ca is not None
    monkeypatch.setenv("MEMOBUILD_REGISTRY_CA", str(secure_registry.ca))  # verified, not insecure
    with LocalStore(tmp_path / "a") as store:
        make_busybox_image(tmp_path / "base", store)
        context = make_context(tmp_path / "ctx", APP, {"hello.txt": HELLO})
        with pytest.raises(RegistryAuthError, match=f"push {ref}: .*requires authentication"):
            build(context, store=store, tags=[ref], push=True)
        pair = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (no_ambient_credentials / "config.json").write_text(
            json.dumps({"auths": {host: {"auth": pair}}})
        )
        built = build(context, store=store, tags=[ref], push=True)
        assert built.executed == 0  # the failed push had stored every step
        assert [o.pushed for o in built.outputs] == [(ref,)]
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(secure_registry.ca, certs / "ca.crt")
    inspect = skopeo_inspect(ref, "--cert-dir", str(certs), "--creds", f"{USER}:{PASSWORD}")
    assert inspect["Digest"] == built.digest

    downstream = make_context(tmp_path / "down", f"FROM {ref}\nRUN cat /hello.txt > /copy.txt\n")
    with LocalStore(tmp_path / "b") as empty:
        pulled = build(downstream, store=empty)
        tree = image_tree(empty, pulled.image, tmp_path / "tree")
    assert (tree / "copy.txt").read_text() == HELLO


# --- the command line ---------------------------------------------------------------------------


def memobuild(cache: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memobuild.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "MEMOBUILD_CACHE_DIR": str(cache), **env},
        timeout=300,
        check=False,
    )


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("memobuild: error:")]


def test_cli_push_pull_flags_and_exit_codes(registry: Registry, tmp_path: Path) -> None:
    host = registry.host
    cache = tmp_path / "cache"
    with LocalStore(cache) as store:
        make_busybox_image(tmp_path / "base", store)
    context = make_context(tmp_path / "ctx", APP, {"hello.txt": HELLO})
    done = memobuild(
        cache, "build", str(context), "--progress=plain", "--push", "-t", f"{host}/cli/app:1",
        "-o", f"type=registry,name={host}/cli/app:2", "--insecure-registry", host,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    digest = done.stdout.strip()
    assert digest.startswith("sha256:")
    assert done.stderr.splitlines()[-2:] == [
        f"pushed {host}/cli/app:2@{digest}",
        f"pushed {host}/cli/app:1@{digest}",
    ]
    assert skopeo_inspect(f"{host}/cli/app:1", "--tls-verify=false")["Digest"] == digest

    downstream = make_context(tmp_path / "down", f"FROM {host}/cli/app:2\nRUN cp /hello.txt /c\n")
    empty = tmp_path / "empty"
    never = memobuild(empty, "build", "--pull=never", str(downstream))
    assert never.returncode == 2
    (line,) = error_lines(never)
    assert f"image '{host}/cli/app:2' not found (not in the local store for " in line
    assert "--pull=never" in line

    # A bare --pull is always, and leaves the context where it is.
    before = len(registry.requests())
    pulled = memobuild(empty, "build", "--pull", str(downstream), "--insecure-registry", host)
    assert pulled.returncode == 0, pulled.stderr
    assert manifest_requests(registry, before)[0] == ("HEAD", "/v2/cli/app/manifests/2")

    for args, message in (
        (["--platform", "linux/"], "--platform: invalid platform 'linux/'"),
        (["--pull=sometimes"], "ignored explicit argument 'sometimes'"),
        (["--insecure-registry", f"http://{host}"], "expected HOST[:PORT]"),
        (["--push"], "--push needs -t NAME"),
    ):
        bad = memobuild(cache, "build", str(context), *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert message in bad.stderr

    # A registry nobody answers at: exit 1, one line that names it, no traceback.
    port = free_port()
    gone = make_context(tmp_path / "gone", f"FROM 127.0.0.1:{port}/gone/app:1\nRUN true\n")
    unreachable = memobuild(
        empty, "build", str(gone), "--insecure-registry", f"127.0.0.1:{port}",
        MEMOBUILD_RETRY_MAX_ATTEMPTS="2",
    )  # fmt: skip
    assert unreachable.returncode == 1
    (line,) = error_lines(unreachable)
    assert line.startswith(f"memobuild: error: pull 127.0.0.1:{port}/gone/app:1: 127.0.0.1:{port}")
    assert "Connect" in line and "Traceback" not in unreachable.stderr
