"""The OCI image model: an image config, its layers and history, and their JSON documents.

An image is written as three kinds of blob: layer tars, one image config (the runtime defaults
plus ``rootfs.diff_ids``, the digests of the uncompressed layers) and one manifest that names the
config and the layer blobs by digest. The manifest digest is the image's identity, so the JSON
here is *canonical*: keys sorted, no insignificant whitespace, UTF-8. The same ``Image`` always
gives the same bytes and therefore the same digests, on any machine, which is what lets a cache
key name a base image and lets two builds of the same Dockerfile produce the same image.

Reading accepts both OCI and Docker (schema 2) documents, since ``docker save`` archives and
many OCI layouts carry Docker media types; unknown fields are ignored as both specs require,
and fields MemoBuild models are type-checked, so a malformed document is one clear
InvalidImageError rather than a TypeError deep in a build. A config MemoBuild wrote reads back
to an equal ``Image`` (``parse_config(config_json(image)).to_image(image.layers) == image``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memobuild.cache.entries import OCI_LAYER_GZIP, LayerRef
from memobuild.errors import InputError, InvalidDigestError, InvalidImageError
from memobuild.verify import digest_bytes, parse_digest

__all__ = [
    "ANNOTATION_REF_NAME",
    "CONFIG_MEDIA_TYPES",
    "CONTAINERD_IMAGE_NAME",
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER_GZIP",
    "DOCKER_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_MEDIA_TYPES",
    "LAYER_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "MAX_DOCUMENT_BYTES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "Descriptor",
    "DescriptorPlatform",
    "EncodedImage",
    "Healthcheck",
    "HistoryEntry",
    "Image",
    "ImageConfig",
    "Index",
    "Manifest",
    "ParsedConfig",
    "canonical_json",
    "config_json",
    "encode_image",
    "image_digest",
    "index_json",
    "layer_media_type",
    "manifest_json",
    "normalize_image_name",
    "parse_config",
    "parse_index",
    "parse_manifest",
    "sniff_document",
]

# --- media types (image-spec media-types.md; Docker's image manifest v2 schema 2) -------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDISTRIBUTABLE_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_NONDISTRIBUTABLE_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_NONDISTRIBUTABLE_LAYER_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_MEDIA_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
# Every layer media type a reader accepts, mapped to the OCI type MemoBuild records for it:
# an image MemoBuild writes is a pure OCI image even when its base came from docker save.
# Non-distributable and foreign layers are plain layers once their blob is at hand.
LAYER_MEDIA_TYPES: Mapping[str, str] = {
    OCI_LAYER: OCI_LAYER,
    OCI_LAYER_GZIP: OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD: OCI_LAYER_ZSTD,
    OCI_NONDISTRIBUTABLE_LAYER: OCI_LAYER,
    OCI_NONDISTRIBUTABLE_LAYER_GZIP: OCI_LAYER_GZIP,
    OCI_NONDISTRIBUTABLE_LAYER_ZSTD: OCI_LAYER_ZSTD,
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_FOREIGN_LAYER_GZIP: OCI_LAYER_GZIP,
}

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
# containerd (and docker save since 25) put the full image name here, the tag in ref.name.
CONTAINERD_IMAGE_NAME = "io.containerd.image.name"

# Manifests, indexes and configs are read whole into memory: anything larger than this is not a
# document any registry or builder produces (registries cap manifests at 4 MiB).
MAX_DOCUMENT_BYTES = 16 << 20


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no insignificant whitespace, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def layer_media_type(media_type: str, where: str) -> str:
    """The OCI media type MemoBuild records for a layer of ``media_type``; InvalidImageError if
    it is not a layer type MemoBuild can unpack."""
    try:
        return LAYER_MEDIA_TYPES[media_type]
    except KeyError:
        known = ", ".join(sorted({OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD}))
        raise InvalidImageError(
            where, f"unsupported layer media type {media_type!r} (MemoBuild reads {known})"
        ) from None


# --- the model --------------------------------------------------------------------------------


def _str_tuple(value: Iterable[str] | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(f"{what} must be a sequence of str, not a str")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{what} items must be str, not {type(item).__name__}")
    return items


def _optional_str(value: object, what: str) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be a str or None, not {type(value).__name__}")


def _optional_int(value: object, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{what} must be an int or None, not {type(value).__name__}")


@dataclass(frozen=True)
class Healthcheck:
    """HEALTHCHECK as Docker stores it in the config; durations are nanoseconds.

    ``test`` is ``("NONE",)`` to disable a base image's check, ``("CMD", ...)`` for an exec
    form and ``("CMD-SHELL", "cmd")`` for a shell form. None means "not set" (inherit).
    """

    test: tuple[str, ...]
    interval: int | None = None
    timeout: int | None = None
    start_period: int | None = None
    start_interval: int | None = None
    retries: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "test", _str_tuple(self.test, "healthcheck test"))
        for name in ("interval", "timeout", "start_period", "start_interval", "retries"):
            _optional_int(getattr(self, name), f"healthcheck {name}")


@dataclass(frozen=True)
class ImageConfig:
    """The ``config`` object of an image config: what a container starts with.

    None means the field is absent. ``exposed_ports`` and ``volumes`` are sets in JSON (objects
    mapping each key to ``{}``) and are kept sorted and unique; ``labels`` is kept sorted by key,
    so two configs that mean the same are equal and encode to the same bytes. Sequences may be
    given as lists and ``labels`` as a mapping; they are stored as tuples, so an ImageConfig
    is hashable and can be compared or used as a key.
    """

    user: str | None = None
    exposed_ports: tuple[str, ...] | None = None
    env: tuple[str, ...] | None = None  # "KEY=value", in order
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    volumes: tuple[str, ...] | None = None
    working_dir: str | None = None
    labels: tuple[tuple[str, str], ...] | None = None
    stop_signal: str | None = None
    healthcheck: Healthcheck | None = None
    on_build: tuple[str, ...] | None = None
    shell: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("user", "working_dir", "stop_signal"):
            _optional_str(getattr(self, name), name)
        for name in ("env", "entrypoint", "cmd", "on_build", "shell"):
            object.__setattr__(self, name, _str_tuple(getattr(self, name), name))
        for name in ("exposed_ports", "volumes"):
            items = _str_tuple(getattr(self, name), name)
            object.__setattr__(self, name, None if items is None else tuple(sorted(set(items))))
        if self.labels is not None:
            raw: Any = self.labels
            pairs = tuple(raw.items()) if isinstance(raw, Mapping) else tuple(raw)
            for pair in pairs:
                if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
                    raise TypeError(f"labels must be (str, str) pairs, not {pair!r}")
            keys = [key for key, _ in pairs]
            if len(set(keys)) != len(keys):
                raise ValueError("labels must not repeat a key")
            object.__setattr__(self, "labels", tuple(sorted((k, v) for k, v in pairs)))
        if self.healthcheck is not None and not isinstance(self.healthcheck, Healthcheck):
            raise TypeError("healthcheck must be a Healthcheck or None")

    def env_pairs(self) -> tuple[tuple[str, str], ...]:
        """``env`` as (name, value) pairs; an entry without ``=`` has the value ``""``."""
        pairs = []
        for entry in self.env or ():
            name, _, value = entry.partition("=")
            pairs.append((name, value))
        return tuple(pairs)


@dataclass(frozen=True)
class HistoryEntry:
    """One step of an image's history; ``empty_layer`` marks a step that made no layer."""

    created_by: str
    empty_layer: bool = False
    created: str | None = None
    comment: str | None = None
    author: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.created_by, str):
            raise TypeError("history created_by must be a str")
        if not isinstance(self.empty_layer, bool):
            raise TypeError("history empty_layer must be a bool")
        for name in ("created", "comment", "author"):
            _optional_str(getattr(self, name), f"history {name}")


@dataclass(frozen=True)
class Image:
    """A whole image: its config and its layers in order, bottom first.

    ``created`` is an RFC 3339 time or None: MemoBuild leaves it out unless asked for one
    (SOURCE_DATE_EPOCH), because a wall-clock time would give every build a new digest.
    """

    config: ImageConfig
    layers: tuple[LayerRef, ...]
    history: tuple[HistoryEntry, ...]
    architecture: str
    os: str
    variant: str | None = None
    created: str | None = None
    author: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.config, ImageConfig):
            raise TypeError("config must be an ImageConfig")
        layers = tuple(self.layers)
        for layer in layers:
            if not isinstance(layer, LayerRef):
                raise TypeError(f"layers must be LayerRef, not {type(layer).__name__}")
        history = tuple(self.history)
        for entry in history:
            if not isinstance(entry, HistoryEntry):
                raise TypeError(f"history must be HistoryEntry, not {type(entry).__name__}")
        for name in ("architecture", "os"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"image {name} must be a non-empty str, not {value!r}")
        for name in ("variant", "created", "author"):
            _optional_str(getattr(self, name), f"image {name}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "history", history)

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(layer.diff_id for layer in self.layers)

    @property
    def platform(self) -> str:
        """``os/architecture[/variant]``, as ``--platform`` spells it."""
        tail = f"/{self.variant}" if self.variant else ""
        return f"{self.os}/{self.architecture}{tail}"


# --- writing ----------------------------------------------------------------------------------


def _config_object(config: ImageConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if config.user is not None:
        out["User"] = config.user
    if config.exposed_ports is not None:
        out["ExposedPorts"] = {port: {} for port in config.exposed_ports}
    if config.env is not None:
        out["Env"] = list(config.env)
    if config.entrypoint is not None:
        out["Entrypoint"] = list(config.entrypoint)
    if config.cmd is not None:
        out["Cmd"] = list(config.cmd)
    if config.volumes is not None:
        out["Volumes"] = {volume: {} for volume in config.volumes}
    if config.working_dir is not None:
        out["WorkingDir"] = config.working_dir
    if config.labels is not None:
        out["Labels"] = dict(config.labels)
    if config.stop_signal is not None:
        out["StopSignal"] = config.stop_signal
    if config.healthcheck is not None:
        check = config.healthcheck
        health: dict[str, Any] = {"Test": list(check.test)}
        for key, value in (
            ("Interval", check.interval),
            ("Timeout", check.timeout),
            ("StartPeriod", check.start_period),
            ("StartInterval", check.start_interval),
            ("Retries", check.retries),
        ):
            if value is not None:
                health[key] = value
        out["Healthcheck"] = health
    if config.on_build is not None:
        out["OnBuild"] = list(config.on_build)
    if config.shell is not None:
        out["Shell"] = list(config.shell)
    return out


def _history_object(entry: HistoryEntry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if entry.created_by:
        out["created_by"] = entry.created_by
    if entry.empty_layer:
        out["empty_layer"] = True
    for key in ("created", "comment", "author"):
        value = getattr(entry, key)
        if value is not None:
            out[key] = value
    return out


def config_json(image: Image) -> bytes:
    """The image config document (``application/vnd.oci.image.config.v1+json``)."""
    doc: dict[str, Any] = {
        "architecture": image.architecture,
        "os": image.os,
        "config": _config_object(image.config),
        "rootfs": {"type": "layers", "diff_ids": list(image.diff_ids)},
    }
    if image.variant:
        doc["variant"] = image.variant
    if image.created is not None:
        doc["created"] = image.created
    if image.author is not None:
        doc["author"] = image.author
    if image.history:
        doc["history"] = [_history_object(entry) for entry in image.history]
    return canonical_json(doc)


def _descriptor_object(
    media_type: str,
    digest: str,
    size: int,
    annotations: Mapping[str, str] | None = None,
    platform: DescriptorPlatform | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        out["annotations"] = dict(annotations)
    if platform is not None:
        out["platform"] = platform.to_json()
    return out


def manifest_json(
    config_digest: str,
    config_size: int,
    layers: Sequence[LayerRef],
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """The image manifest document (``application/vnd.oci.image.manifest.v1+json``)."""
    _check_sha256(config_digest, "config digest")
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor_object(OCI_CONFIG, config_digest, config_size),
        "layers": [
            _descriptor_object(layer.media_type, layer.digest, layer.size) for layer in layers
        ],
    }
    if annotations:
        doc["annotations"] = _check_annotations(annotations)
    return canonical_json(doc)


def index_json(
    manifests: Sequence[Descriptor], annotations: Mapping[str, str] | None = None
) -> bytes:
    """An image index document (what an OCI layout's ``index.json`` holds)."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            _descriptor_object(d.media_type, d.digest, d.size, dict(d.annotations), d.platform)
            for d in manifests
        ],
    }
    if annotations:
        doc["annotations"] = _check_annotations(annotations)
    return canonical_json(doc)


@dataclass(frozen=True)
class EncodedImage:
    """An image's config and manifest blobs, with their digests: what gets stored or written."""

    config: bytes
    config_digest: str
    manifest: bytes
    manifest_digest: str


def encode_image(image: Image, annotations: Mapping[str, str] | None = None) -> EncodedImage:
    """The config and manifest of ``image``; the manifest digest is the image's identity."""
    config = config_json(image)
    config_digest = digest_bytes(config, "sha256")
    manifest = manifest_json(config_digest, len(config), image.layers, annotations)
    return EncodedImage(config, config_digest, manifest, digest_bytes(manifest, "sha256"))


def image_digest(image: Image) -> str:
    """The manifest digest MemoBuild writes ``image`` under: stable across machines and runs,
    and what a cache key uses to name a base image."""
    return encode_image(image).manifest_digest


def _check_sha256(digest: str, what: str) -> str:
    algorithm, _ = parse_digest(digest)
    if algorithm != "sha256":
        raise InvalidDigestError(digest, f"{what} must be a sha256 digest")
    return digest


def _check_annotations(annotations: Mapping[str, str]) -> dict[str, str]:
    for key, value in annotations.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"annotations must map str to str, not {key!r}: {value!r}")
    return dict(annotations)


# --- reading ----------------------------------------------------------------------------------


def _load_object(data: bytes, where: str, what: str) -> dict[str, Any]:
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InvalidImageError(where, f"{what} is {len(data)} bytes; no {what} is that large")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise InvalidImageError(where, f"{what} is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise InvalidImageError(where, f"{what} is not a JSON object")
    return doc


class _Reader:
    """Typed field access on one JSON object, with errors that name the document and field."""

    def __init__(self, doc: Mapping[str, Any], where: str, prefix: str = "") -> None:
        self.doc = doc
        self.where = where
        self.prefix = prefix

    def fail(self, key: str, expected: str) -> InvalidImageError:
        value = self.doc.get(key)
        return InvalidImageError(
            self.where,
            f"field {self.prefix + key!r} must be {expected}, not {json.dumps(value)[:80]}",
        )

    def str_(self, key: str, *, required: bool = False) -> str | None:
        value = self.doc.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or (required and not value):
            raise self.fail(key, "a non-empty string" if required else "a string")
        return value

    def int_(self, key: str, *, required: bool = False) -> int | None:
        value = self.doc.get(key)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "an integer")
        return value

    def bool_(self, key: str) -> bool:
        value = self.doc.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def str_list(self, key: str) -> tuple[str, ...] | None:
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "an array of strings")
        return tuple(value)

    def str_set(self, key: str) -> tuple[str, ...] | None:
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, "an object")
        return tuple(value)

    def str_map(self, key: str) -> dict[str, str] | None:
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.fail(key, "an object of strings")
        return value

    def obj(self, key: str, *, required: bool = False) -> _Reader | None:
        value = self.doc.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, "an object")
        return _Reader(value, self.where, f"{self.prefix}{key}.")

    def list_(self, key: str, *, required: bool = False) -> list[Any]:
        value = self.doc.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list):
            raise self.fail(key, "an array")
        return value

    def items(self, key: str, *, required: bool = False) -> list[_Reader]:
        out = []
        for i, item in enumerate(self.list_(key, required=required)):
            if not isinstance(item, dict):
                raise InvalidImageError(
                    self.where, f"field '{self.prefix}{key}[{i}]' must be an object"
                )
            out.append(_Reader(item, self.where, f"{self.prefix}{key}[{i}]."))
        return out

    def digest(self, key: str) -> str:
        value = self.str_(key, required=True)
        assert value is not None  # noqa: S101 - required=True never returns None
        try:
            return _check_sha256(value, f"{self.prefix}{key}")
        except InvalidDigestError as err:
            raise InvalidImageError(
                self.where, f"field {self.prefix + key!r}: {err} (MemoBuild reads sha256 only)"
            ) from None


@dataclass(frozen=True)
class ParsedConfig:
    """An image config read from JSON: everything of an Image except the layer blobs, which the
    manifest names. ``to_image`` joins the two and checks that they agree."""

    config: ImageConfig
    history: tuple[HistoryEntry, ...]
    architecture: str
    os: str
    variant: str | None
    created: str | None
    author: str | None
    diff_ids: tuple[str, ...]

    def to_image(self, layers: Sequence[LayerRef], where: str = "image config") -> Image:
        """The Image with ``layers``, whose diff_ids must be this config's rootfs.diff_ids."""
        layers = tuple(layers)
        if len(layers) != len(self.diff_ids):
            raise InvalidImageError(
                where,
                f"the manifest lists {len(layers)} layer(s) but the config's rootfs.diff_ids "
                f"has {len(self.diff_ids)}",
            )
        for i, (layer, diff_id) in enumerate(zip(layers, self.diff_ids, strict=True)):
            if layer.diff_id != diff_id:
                raise InvalidImageError(
                    where,
                    f"layer {i} ({layer.digest}) has diff_id {layer.diff_id}, the config says "
                    f"{diff_id}",
                )
        return Image(
            config=self.config,
            layers=layers,
            history=self.history,
            architecture=self.architecture,
            os=self.os,
            variant=self.variant,
            created=self.created,
            author=self.author,
        )


def _pairs(mapping: Mapping[str, str] | None) -> tuple[tuple[str, str], ...] | None:
    return None if mapping is None else tuple(mapping.items())


def _parse_healthcheck(reader: _Reader) -> Healthcheck | None:
    health = reader.obj("Healthcheck")
    if health is None:
        return None
    return Healthcheck(
        test=health.str_list("Test") or (),
        interval=health.int_("Interval"),
        timeout=health.int_("Timeout"),
        start_period=health.int_("StartPeriod"),
        start_interval=health.int_("StartInterval"),
        retries=health.int_("Retries"),
    )


def parse_config(data: bytes, where: str = "image config") -> ParsedConfig:
    """Read an OCI or Docker image config. Raises InvalidImageError naming ``where``."""
    doc = _Reader(_load_object(data, where, "image config"), where)
    conf = doc.obj("config")
    config = ImageConfig()
    if conf is not None:
        config = ImageConfig(
            user=conf.str_("User"),
            exposed_ports=conf.str_set("ExposedPorts"),
            env=conf.str_list("Env"),
            entrypoint=conf.str_list("Entrypoint"),
            cmd=conf.str_list("Cmd"),
            volumes=conf.str_set("Volumes"),
            working_dir=conf.str_("WorkingDir"),
            labels=_pairs(conf.str_map("Labels")),
            stop_signal=conf.str_("StopSignal"),
            healthcheck=_parse_healthcheck(conf),
            on_build=conf.str_list("OnBuild"),
            shell=conf.str_list("Shell"),
        )
    rootfs = doc.obj("rootfs", required=True)
    assert rootfs is not None  # noqa: S101 - required=True never returns None
    if rootfs.str_("type", required=True) != "layers":
        raise InvalidImageError(where, f"rootfs.type is {rootfs.doc.get('type')!r}, not 'layers'")
    diff_ids = []
    for i, value in enumerate(rootfs.list_("diff_ids", required=True)):
        if not isinstance(value, str):
            raise InvalidImageError(where, f"rootfs.diff_ids[{i}] must be a string")
        try:
            diff_ids.append(_check_sha256(value, "diff_id"))
        except InvalidDigestError as err:
            raise InvalidImageError(where, f"rootfs.diff_ids[{i}]: {err}") from None
    history = tuple(
        HistoryEntry(
            created_by=item.str_("created_by") or "",
            empty_layer=item.bool_("empty_layer"),
            created=item.str_("created"),
            comment=item.str_("comment"),
            author=item.str_("author"),
        )
        for item in doc.items("history")
    )
    return ParsedConfig(
        config=config,
        history=history,
        architecture=_required(doc, "architecture"),
        os=_required(doc, "os"),
        variant=doc.str_("variant") or None,
        created=doc.str_("created"),
        author=doc.str_("author"),
        diff_ids=tuple(diff_ids),
    )


def _required(doc: _Reader, key: str) -> str:
    value = doc.str_(key, required=True)
    assert value is not None  # noqa: S101 - required=True never returns None
    return value


@dataclass(frozen=True)
class DescriptorPlatform:
    """The ``platform`` of an index entry, as written (``unknown/unknown`` for attestations)."""

    os: str
    architecture: str
    variant: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        tail = f"/{self.variant}" if self.variant else ""
        return f"{self.os}/{self.architecture}{tail}"


@dataclass(frozen=True)
class Descriptor:
    """A reference to a blob: its media type, sha256 digest and size (descriptor.md)."""

    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = ()
    platform: DescriptorPlatform | None = None

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


def _parse_descriptor(item: _Reader, default_media_type: str | None = None) -> Descriptor:
    media_type = item.str_("mediaType") or default_media_type
    if media_type is None:
        raise item.fail("mediaType", "a media type string")
    size = item.int_("size", required=True)
    assert size is not None  # noqa: S101 - required=True never returns None
    if size < 0:
        raise item.fail("size", "a size >= 0")
    platform = None
    plat = item.obj("platform")
    if plat is not None:
        platform = DescriptorPlatform(
            os=plat.str_("os") or "",
            architecture=plat.str_("architecture") or "",
            variant=plat.str_("variant") or "",
        )
    annotations = item.str_map("annotations") or {}
    return Descriptor(
        media_type=media_type,
        digest=item.digest("digest"),
        size=size,
        annotations=tuple(sorted(annotations.items())),
        platform=platform,
    )


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Index:
    """An image index (OCI) or manifest list (Docker)."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: tuple[tuple[str, str], ...] = ()


def _schema_version(doc: _Reader, what: str) -> None:
    version = doc.doc.get("schemaVersion")
    if version != 2:
        raise InvalidImageError(
            doc.where, f"{what} has schemaVersion {json.dumps(version)}; MemoBuild reads 2"
        )


def parse_manifest(data: bytes, where: str = "manifest") -> Manifest:
    """Read an image manifest; refuses an index, an artifact without an image config, or a
    Docker schema 1 manifest, each with a message that says which it is."""
    doc = _Reader(_load_object(data, where, "manifest"), where)
    media_type = doc.str_("mediaType") or OCI_MANIFEST
    if media_type in INDEX_MEDIA_TYPES or "manifests" in doc.doc:
        raise InvalidImageError(where, "is an image index, not an image manifest")
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise InvalidImageError(where, f"unsupported manifest media type {media_type!r}")
    _schema_version(doc, "manifest")
    config_reader = doc.obj("config", required=True)
    assert config_reader is not None  # noqa: S101 - required=True never returns None
    config = _parse_descriptor(config_reader)
    if config.media_type not in CONFIG_MEDIA_TYPES:
        raise InvalidImageError(
            where,
            f"config media type is {config.media_type!r}: this is not a container image "
            "(an artifact, a signature or an attestation?)",
        )
    layers = tuple(_parse_descriptor(item) for item in doc.items("layers", required=True))
    annotations = doc.str_map("annotations") or {}
    return Manifest(media_type, config, layers, tuple(sorted(annotations.items())))


def parse_index(data: bytes, where: str = "index") -> Index:
    """Read an image index or Docker manifest list."""
    doc = _Reader(_load_object(data, where, "image index"), where)
    media_type = doc.str_("mediaType") or OCI_INDEX
    if media_type in MANIFEST_MEDIA_TYPES or "layers" in doc.doc:
        raise InvalidImageError(where, "is an image manifest, not an image index")
    if media_type not in INDEX_MEDIA_TYPES:
        raise InvalidImageError(where, f"unsupported index media type {media_type!r}")
    _schema_version(doc, "image index")
    manifests = tuple(_parse_descriptor(item) for item in doc.items("manifests", required=True))
    annotations = doc.str_map("annotations") or {}
    return Index(media_type, manifests, tuple(sorted(annotations.items())))


def sniff_document(data: bytes, where: str) -> str:
    """The media type of a manifest or index blob from its content, for descriptors that do not
    say (old layouts): ``mediaType`` when present, else its shape."""
    doc = _load_object(data, where, "manifest")
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc or "config" in doc:
        return OCI_MANIFEST
    raise InvalidImageError(where, "is neither an image manifest nor an image index")


# --- image names ------------------------------------------------------------------------------

# distribution/reference's grammar: [domain/]path[:tag][@digest], path components lower case.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_DOMAIN_RE = re.compile(_DOMAIN)
_REMAINDER = re.compile(
    rf"(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
_DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


def normalize_image_name(ref: str, *, default_tag: bool = True) -> str:
    """An image name in the one spelling MemoBuild stores and compares: Docker's familiar form
    (``docker.io/library/app`` is ``app``) with ``:latest`` when no tag or digest is given, so
    ``app``, ``app:latest`` and ``docker.io/library/app:latest`` name the same image.
    InputError if ``ref`` is not a valid reference."""
    head, slash, rest = ref.partition("/")
    # Docker's rule: the first component is a registry if it looks like a host name.
    has_domain = bool(slash) and (
        "." in head or ":" in head or head == "localhost" or head.lower() != head
    )
    domain = head if has_domain else None
    match = _REMAINDER.fullmatch(rest if has_domain else ref)
    if (
        match is None
        or (domain is not None and not _DOMAIN_RE.fullmatch(domain))
        or re.fullmatch(r"[a-f0-9]{64}", ref)
    ):
        raise InputError(
            f"invalid image name {ref!r}: expected [registry/]name[:tag][@sha256:digest] with a "
            "lower-case name, e.g. app, app:1.0 or registry.example.com/team/app:1.0"
        )
    path, tag, digest = match.group("path"), match.group("tag"), match.group("digest")
    if domain in _DOCKER_HUB:
        domain = None
    if domain is None and path.startswith("library/") and path.count("/") == 1:
        path = path[len("library/") :]
    if tag is None and digest is None and default_tag:
        tag = "latest"
    name = f"{domain}/{path}" if domain else path
    if tag is not None:
        name += f":{tag}"
    if digest is not None:
        name += f"@{digest}"
    return name
