"""The OCI image model: canonical config and manifest JSON, and reading OCI and Docker documents."""

from __future__ import annotations

import hashlib
import json

import pytest

from memobuild.cache.entries import LayerRef
from memobuild.errors import InputError, InvalidDigestError, InvalidImageError
from memobuild.oci.image import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Healthcheck,
    HistoryEntry,
    Image,
    ImageConfig,
    config_json,
    encode_image,
    image_digest,
    layer_media_type,
    manifest_json,
    normalize_image_name,
    parse_config,
    parse_index,
    parse_manifest,
)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYER_A = LayerRef(sha(b"blob-a"), sha(b"tar-a"), 6)
LAYER_B = LayerRef(sha(b"blob-b"), sha(b"blob-b"), 6, OCI_LAYER)


def full_image() -> Image:
    return Image(
        config=ImageConfig(  # noqa: S604 - an image's SHELL, not a subprocess
            user="app:app",
            exposed_ports=("8080/tcp", "53/udp", "8080/tcp"),
            env=("PATH=/usr/bin:/bin", "GREETING=héllo wörld", "EMPTY="),
            entrypoint=("/bin/app",),
            cmd=("--serve",),
            volumes=("/data", "/cache"),
            working_dir="/srv",
            labels={"org.example.b": "2", "org.example.a": "1"},
            stop_signal="SIGTERM",
            healthcheck=Healthcheck(
                ("CMD-SHELL", "curl -f localhost"), interval=30_000_000_000, retries=3
            ),
            on_build=("RUN echo one", "COPY . /x"),
            shell=("/bin/bash", "-c"),
        ),
        layers=(LAYER_A, LAYER_B),
        history=(
            HistoryEntry("ADD rootfs.tar /", created="2024-01-01T00:00:00Z"),
            HistoryEntry("ENV GREETING=hello", empty_layer=True, comment="buildkit"),
            HistoryEntry("RUN make", author="dev@example.com"),
        ),
        architecture="arm",
        os="linux",
        variant="v7",
        created="2024-01-02T03:04:05Z",
        author="Alice <alice@example.com>",
    )


def test_config_json_is_canonical_with_the_spec_field_names() -> None:
    data = config_json(full_image())
    doc = json.loads(data)
    # Canonical: exactly what sorted-key, separator-free encoding of the same document gives.
    assert data == json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert "héllo".encode() in data  # UTF-8, not \u escapes
    assert doc["architecture"] == "arm"
    assert doc["os"] == "linux"
    assert doc["variant"] == "v7"
    assert doc["created"] == "2024-01-02T03:04:05Z"
    assert doc["author"] == "Alice <alice@example.com>"
    assert doc["rootfs"] == {"type": "layers", "diff_ids": [sha(b"tar-a"), sha(b"blob-b")]}
    assert doc["config"] == {
        "User": "app:app",
        "ExposedPorts": {"53/udp": {}, "8080/tcp": {}},
        "Env": ["PATH=/usr/bin:/bin", "GREETING=héllo wörld", "EMPTY="],
        "Entrypoint": ["/bin/app"],
        "Cmd": ["--serve"],
        "Volumes": {"/cache": {}, "/data": {}},
        "WorkingDir": "/srv",
        "Labels": {"org.example.a": "1", "org.example.b": "2"},
        "StopSignal": "SIGTERM",
        "Healthcheck": {
            "Test": ["CMD-SHELL", "curl -f localhost"],
            "Interval": 30_000_000_000,
            "Retries": 3,
        },
        "OnBuild": ["RUN echo one", "COPY . /x"],
        "Shell": ["/bin/bash", "-c"],
    }
    assert doc["history"] == [
        {"created_by": "ADD rootfs.tar /", "created": "2024-01-01T00:00:00Z"},
        {"created_by": "ENV GREETING=hello", "empty_layer": True, "comment": "buildkit"},
        {"created_by": "RUN make", "author": "dev@example.com"},
    ]


def test_absent_fields_are_left_out_and_empty_ones_kept() -> None:
    image = Image(ImageConfig(cmd=(), env=None), (), (), "amd64", "linux")
    doc = json.loads(config_json(image))
    assert doc == {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": []},
        "rootfs": {"type": "layers", "diff_ids": []},
    }


def test_a_config_memobuild_writes_reads_back_equal() -> None:
    image = full_image()
    parsed = parse_config(config_json(image))
    assert parsed.to_image(image.layers) == image
    assert parsed.diff_ids == image.diff_ids
    scratch = Image(ImageConfig(), (), (), "amd64", "linux")
    assert parse_config(config_json(scratch)).to_image(()) == scratch


def test_equal_images_encode_to_equal_bytes_and_digests() -> None:
    a = full_image()
    b = Image(
        config=ImageConfig(  # noqa: S604 - an image's SHELL, not a subprocess
            user="app:app",
            exposed_ports=["53/udp", "8080/tcp"],  # type: ignore[arg-type]
            env=["PATH=/usr/bin:/bin", "GREETING=héllo wörld", "EMPTY="],  # type: ignore[arg-type]
            entrypoint=("/bin/app",),
            cmd=("--serve",),
            volumes=("/cache", "/data"),
            working_dir="/srv",
            labels=(("org.example.a", "1"), ("org.example.b", "2")),
            stop_signal="SIGTERM",
            healthcheck=Healthcheck(
                ("CMD-SHELL", "curl -f localhost"), interval=30_000_000_000, retries=3
            ),
            on_build=("RUN echo one", "COPY . /x"),
            shell=("/bin/bash", "-c"),
        ),
        layers=[LAYER_A, LAYER_B],  # type: ignore[arg-type]
        history=full_image().history,
        architecture="arm",
        os="linux",
        variant="v7",
        created="2024-01-02T03:04:05Z",
        author="Alice <alice@example.com>",
    )
    assert a == b
    assert hash(a.config) == hash(b.config)
    assert encode_image(a) == encode_image(b)
    assert image_digest(a) == image_digest(b)
    # ... and any change, however small, is a different image.
    c = Image(a.config, a.layers, a.history, a.architecture, a.os, a.variant, None, a.author)
    assert image_digest(c) != image_digest(a)


def test_manifest_json_follows_the_image_manifest_spec() -> None:
    config = config_json(full_image())
    data = manifest_json(
        sha(config), len(config), [LAYER_A, LAYER_B], {"org.opencontainers.image.title": "x"}
    )
    doc = json.loads(data)
    assert doc == {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": LAYER_A.digest, "size": 6},
            {"mediaType": OCI_LAYER, "digest": LAYER_B.digest, "size": 6},
        ],
        "annotations": {"org.opencontainers.image.title": "x"},
    }
    assert b" " not in data and b"\n" not in data
    encoded = encode_image(full_image())
    assert encoded.config == config
    assert encoded.config_digest == sha(config)
    assert encoded.manifest_digest == sha(encoded.manifest)
    assert json.loads(encoded.manifest)["config"]["digest"] == sha(config)


def test_manifest_json_refuses_a_malformed_config_digest() -> None:
    with pytest.raises(InvalidDigestError):
        manifest_json("sha256:1234", 1, [])
    with pytest.raises(InvalidDigestError):
        manifest_json("blake3:" + "0" * 64, 1, [])


def test_parse_config_reads_a_docker_config_and_ignores_unknown_fields() -> None:
    docker_config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-05-01T10:00:00.123456789Z",
        "docker_version": "24.0.5",
        "container": "3f1c",
        "container_config": {"Cmd": ["/bin/sh", "-c", '#(nop) CMD ["sh"]']},
        "config": {
            "Hostname": "",
            "AttachStdin": False,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "Image": "sha256:abc",
            "Volumes": None,
            "WorkingDir": "",
            "Entrypoint": None,
            "OnBuild": None,
            "Labels": None,
            "ExposedPorts": {"80/tcp": {}},
            "ArgsEscaped": True,
            "Healthcheck": {"Test": ["NONE"]},
        },
        "rootfs": {"type": "layers", "diff_ids": [sha(b"tar-a")]},
        "history": [
            {"created": "2023-05-01T10:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:x in /"},
            {"created_by": '/bin/sh -c #(nop)  CMD ["sh"]', "empty_layer": True},
        ],
    }
    parsed = parse_config(json.dumps(docker_config).encode())
    assert parsed.architecture == "amd64"
    assert parsed.created == "2023-05-01T10:00:00.123456789Z"
    assert parsed.config == ImageConfig(
        env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
        cmd=("sh",),
        working_dir="",
        exposed_ports=("80/tcp",),
        healthcheck=Healthcheck(("NONE",)),
    )
    assert parsed.history[1] == HistoryEntry('/bin/sh -c #(nop)  CMD ["sh"]', empty_layer=True)
    assert parsed.config.env_pairs() == (
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    )
    image = parsed.to_image([LAYER_A])
    assert image.layers == (LAYER_A,)


@pytest.mark.parametrize(
    "doc, message",
    [
        (b"not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}', "'architecture'"),
        (b'{"architecture": "amd64", "os": "linux"}', "'rootfs'"),
        (
            b'{"architecture": "amd64", "os": "linux", "rootfs": {"type": "x", "diff_ids": []}}',
            "not 'layers'",
        ),
        (
            b'{"architecture": "amd64", "os": "linux", '
            b'"rootfs": {"type": "layers", "diff_ids": ["md5:abc"]}}',
            "rootfs.diff_ids[0]",
        ),
        (
            b'{"architecture": "amd64", "os": "linux", "config": {"Env": "A=1"}, '
            b'"rootfs": {"type": "layers", "diff_ids": []}}',
            "'config.Env' must be an array of strings",
        ),
        (
            b'{"architecture": "amd64", "os": "linux", "config": {"Labels": {"a": 1}}, '
            b'"rootfs": {"type": "layers", "diff_ids": []}}',
            "'config.Labels'",
        ),
        (
            b'{"architecture": "amd64", "os": "linux", "history": [{"empty_layer": "yes"}], '
            b'"rootfs": {"type": "layers", "diff_ids": []}}',
            "'history[0].empty_layer'",
        ),
    ],
)
def test_parse_config_refuses_malformed_documents(doc: bytes, message: str) -> None:
    with pytest.raises(InvalidImageError, match=None) as info:
        parse_config(doc, "base.json")
    assert message in str(info.value)
    assert str(info.value).startswith("base.json: ")


def test_to_image_checks_layers_against_diff_ids() -> None:
    parsed = parse_config(config_json(full_image()))
    with pytest.raises(InvalidImageError, match="2"):
        parsed.to_image([LAYER_A])
    with pytest.raises(InvalidImageError, match="diff_id"):
        parsed.to_image([LAYER_B, LAYER_A])


def test_parse_manifest_accepts_oci_and_docker_and_refuses_the_rest() -> None:
    layer = {"mediaType": DOCKER_LAYER_GZIP, "digest": sha(b"l"), "size": 1}
    docker = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": sha(b"c"), "size": 1},
        "layers": [layer],
    }
    manifest = parse_manifest(json.dumps(docker).encode())
    assert manifest.config.digest == sha(b"c")
    assert layer_media_type(manifest.layers[0].media_type, "x") == OCI_LAYER_GZIP

    artifact = {**docker, "mediaType": OCI_MANIFEST}
    artifact["config"] = {
        "mediaType": "application/vnd.example+json",
        "digest": sha(b"c"),
        "size": 1,
    }
    with pytest.raises(InvalidImageError, match="not a container image"):
        parse_manifest(json.dumps(artifact).encode())
    with pytest.raises(InvalidImageError, match="image index"):
        parse_manifest(
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
        )
    with pytest.raises(InvalidImageError, match="schemaVersion 1"):
        parse_manifest(json.dumps({"schemaVersion": 1, "fsLayers": []}).encode())
    bad_digest = {
        **docker,
        "config": {"mediaType": DOCKER_CONFIG, "digest": "sha512:" + "a" * 128, "size": 1},
    }
    with pytest.raises(InvalidImageError, match="sha256"):
        parse_manifest(json.dumps(bad_digest).encode())
    with pytest.raises(InvalidImageError, match="unsupported layer media type"):
        layer_media_type("application/vnd.example.layer", "x")


def test_parse_index_reads_platforms_and_annotations() -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": sha(b"m"),
                "size": 10,
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }
        ],
    }
    parsed = parse_index(json.dumps(index).encode())
    (desc,) = parsed.manifests
    assert desc.platform is not None and str(desc.platform) == "linux/arm64/v8"
    assert desc.annotation("org.opencontainers.image.ref.name") == "v1"
    with pytest.raises(InvalidImageError, match="size"):
        parse_index(
            json.dumps({**index, "manifests": [{**index["manifests"][0], "size": -1}]}).encode()
        )  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("app", "app:latest"),
        ("app:1.0", "app:1.0"),
        ("library/app", "app:latest"),
        ("docker.io/library/app:2", "app:2"),
        ("index.docker.io/team/app", "team/app:latest"),
        ("registry.example.com:5000/team/app", "registry.example.com:5000/team/app:latest"),
        ("localhost/app:dev", "localhost/app:dev"),
        ("app@sha256:" + "a" * 64, "app@sha256:" + "a" * 64),
    ],
)
def test_normalize_image_name(ref: str, expected: str) -> None:
    assert normalize_image_name(ref) == expected


@pytest.mark.parametrize("ref", ["App", "app:", "-app", "a" * 64, "app:bad tag", ""])
def test_normalize_image_name_refuses_invalid_names(ref: str) -> None:
    with pytest.raises(InputError, match="invalid image name"):
        normalize_image_name(ref)


def test_model_refuses_wrong_types() -> None:
    with pytest.raises(ValueError, match="architecture"):
        Image(ImageConfig(), (), (), "", "linux")
    with pytest.raises(TypeError, match="str"):
        ImageConfig(env="A=1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="repeat"):
        ImageConfig(labels=(("a", "1"), ("a", "2")))
    with pytest.raises(TypeError, match="LayerRef"):
        Image(ImageConfig(), ("sha256:x",), (), "amd64", "linux")  # type: ignore[arg-type]
