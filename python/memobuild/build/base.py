"""Base images for FROM and ``COPY --from=<image>``, found without a registry.

In the order BuildKit looks, an image reference resolves to:

1. ``scratch``: the empty image (no layers, an empty config) for the target platform;
2. a named build context, ``--build-context NAME=...`` (BuildKit's named contexts, matched by
   the normalised name, so ``alpine``, ``alpine:latest`` and ``docker.io/library/alpine`` are
   one name): an OCI layout (``oci-layout://PATH[:TAG]`` or ``oci-layout://PATH@DIGEST``, a
   directory or a tar) or a ``docker save`` archive (``docker-archive://FILE[:NAME:TAG]``);
   a plain local directory (``NAME=PATH``) serves ``COPY --from=NAME`` (the executor reads it
   through ``context()``), not FROM;
3. an image in the local image store (``memobuild build -t``);

and anything else is ImageNotFoundError, whose message lists these ways, since pulling from a
registry is not supported yet. A resolver is made per build and remembers what it resolved, so
that the front end's config lookups (``image_config``) and the executor's ``resolve`` read and
import each image once, and every step of the build sees the same image.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from memobuild.cache.store import LocalStore
from memobuild.dockerfile.stages import BaseImageConfig, Platform, host_platform
from memobuild.errors import ImageNotFoundError, InputError, InvalidDigestError
from memobuild.images import ImageStore
from memobuild.oci.docker_archive import read_docker_archive
from memobuild.oci.image import Image, ImageConfig, normalize_image_name
from memobuild.oci.layout import read_oci_layout
from memobuild.verify import parse_digest

__all__ = [
    "CONTEXT_KINDS",
    "BaseResolver",
    "BuildContextSpec",
    "parse_build_context",
    "scratch_image",
]

CONTEXT_KINDS = ("oci-layout", "docker-archive", "local")
_EXAMPLES = (
    "--build-context NAME=oci-layout:///path/to/layout[:TAG], "
    "--build-context NAME=docker-archive:///path/to/image.tar or "
    "--build-context NAME=/path/to/dir"
)
_LAYOUT_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# BuildKit's other named-context sources: recognised, so the error can say what is missing.
_UNSUPPORTED = {
    "docker-image://": "pulling images from a registry is not supported yet",
    "target:": "overriding a stage with another target is not supported yet",
    "input:": "frontend inputs are not supported",
    "http://": "remote contexts are not supported yet",
    "https://": "remote contexts are not supported yet",
    "git://": "git contexts are not supported yet",
    "git@": "git contexts are not supported yet",
}


@dataclass(frozen=True)
class BuildContextSpec:
    """One ``--build-context``: ``name`` is normalised (``alpine`` -> ``alpine:latest``);
    ``tag`` and ``digest`` select an image in an OCI layout (``tag`` also an image name in a
    multi-image docker save archive)."""

    name: str
    kind: str  # "oci-layout" | "docker-archive" | "local"
    path: Path
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in CONTEXT_KINDS:
            raise ValueError(
                f"build context kind must be one of {CONTEXT_KINDS}, not {self.kind!r}"
            )


def _bad(value: str, reason: str) -> InputError:
    return InputError(f"invalid --build-context {value!r}: {reason}; expected {_EXAMPLES}")


def _split_existing(text: str) -> tuple[str, str | None]:
    """``PATH`` or ``PATH:SUFFIX``: the whole text when it names an existing path (paths may
    contain ':'), else split at the first ':' whose prefix exists, else at the last ':'."""
    if Path(text).exists() or ":" not in text:
        return text, None
    for i, char in enumerate(text):
        if char == ":" and i > 0 and Path(text[:i]).exists():
            return text[:i], text[i + 1 :]
    head, _, tail = text.rpartition(":")
    return head, tail


def parse_build_context(value: str) -> BuildContextSpec:
    """Parse one ``--build-context`` value (``NAME=SOURCE``). InputError, with an example of
    each supported form, for anything else."""
    name, eq, source = value.partition("=")
    if not eq or not name or not source:
        raise _bad(value, "expected NAME=SOURCE")
    try:
        key = normalize_image_name(name)
    except InputError:
        raise _bad(
            value, f"{name!r} is not a name FROM or COPY --from can use (lower case, e.g. base)"
        ) from None
    if "@" in key:
        raise _bad(value, "a build context name cannot hold a digest")
    for prefix, reason in _UNSUPPORTED.items():
        if source.startswith(prefix):
            raise _bad(value, reason)
    if source.startswith("oci-layout://"):
        rest = source[len("oci-layout://") :]
        digest = None
        head, at, tail = rest.rpartition("@")
        if at and ":" in tail:
            try:
                parse_digest(tail)
            except InvalidDigestError as err:
                raise _bad(value, str(err)) from None
            rest, digest = head, tail
        path, tag = _split_existing(rest) if digest is None else (rest, None)
        if tag is not None and not _LAYOUT_TAG.fullmatch(tag):
            raise _bad(value, f"{tag!r} is not a tag (letters, digits, '.', '_', '-')")
        if not path:
            raise _bad(value, "the layout path is empty")
        return BuildContextSpec(key, "oci-layout", Path(path), tag, digest)
    if source.startswith("docker-archive://"):
        path, image_name = _split_existing(source[len("docker-archive://") :])
        if not path:
            raise _bad(value, "the archive path is empty")
        return BuildContextSpec(key, "docker-archive", Path(path), image_name or None)
    if "://" in source:
        raise _bad(value, f"unknown scheme {source.split('://', 1)[0]!r}")
    return BuildContextSpec(key, "local", Path(source))


def scratch_image(platform: Platform | None = None) -> Image:
    """``FROM scratch``: no layers, an empty config, the target platform."""
    target = platform if platform is not None else host_platform()
    return Image(
        config=ImageConfig(),
        layers=(),
        history=(),
        architecture=target.architecture,
        os=target.os,
        variant=target.variant or None,
    )


class BaseResolver:
    """Resolves FROM and ``COPY --from`` image references for one build (thread-safe)."""

    def __init__(self, store: LocalStore, build_contexts: Sequence[BuildContextSpec] = ()) -> None:
        self.store = store
        self.images = ImageStore(store)
        self._contexts: dict[str, BuildContextSpec] = {}
        for spec in build_contexts:
            if spec.name in self._contexts:
                raise InputError(f"--build-context {spec.name!r} is given more than once")
            if not spec.path.exists():
                raise InputError(f"--build-context {spec.name}: {spec.path} does not exist")
            if spec.kind == "local" and not spec.path.is_dir():
                raise InputError(
                    f"--build-context {spec.name}: {spec.path} is not a directory (for an "
                    f"image file use oci-layout:// or docker-archive://)"
                )
            self._contexts[spec.name] = spec
        self._resolved: dict[tuple[str, Platform], Image] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(ref: str) -> str:
        try:
            return normalize_image_name(ref)
        except InputError:
            return ref

    def context(self, name: str) -> BuildContextSpec | None:
        """The named build context ``name`` refers to, if any (the executor reads a ``local``
        one as the source of ``COPY --from=name``)."""
        return self._contexts.get(self._key(name))

    def resolve(self, ref: str, platform: Platform | None = None) -> Image:
        """The image ``ref`` names, for ``platform`` (default: this host's); its layers are in
        the store when this returns. ImageNotFoundError when nothing provides it."""
        target = platform if platform is not None else host_platform()
        key = (self._key(ref), target)
        # One lock for all lookups: a build resolves a handful of bases, and holding it while
        # one is imported keeps two stages from importing the same layout at once.
        with self._lock:
            cached = self._resolved.get(key)
            if cached is None:
                cached = self._resolve(ref, target)
                self._resolved[key] = cached
            return cached

    def _resolve(self, ref: str, platform: Platform) -> Image:
        if ref == "scratch":
            return scratch_image(platform)
        spec = self.context(ref)
        if spec is not None:
            if spec.kind == "oci-layout":
                return read_oci_layout(
                    spec.path, spec.tag, self.store, platform, digest=spec.digest
                )
            if spec.kind == "docker-archive":
                return read_docker_archive(spec.path, self.store, spec.tag)
            raise InputError(
                f"build context {spec.name!r} is a local directory ({spec.path}): it can be "
                f"a source for COPY --from={ref}, not a base image for FROM; give an image "
                f"with --build-context {ref}=oci-layout://PATH or docker-archive://FILE"
            )
        try:
            image = self.images.load(ref)
        except InputError:
            image = None  # not a name the image store can hold: nothing there by that name
        if image is None:
            raise ImageNotFoundError(ref)
        return image

    def image_config(self, ref: str, platform: Platform | None = None) -> BaseImageConfig:
        """What ``ref``'s config gives a stage that starts FROM it: the adapter that
        ``dockerfile.stages.load_stages(resolve_image=resolver.image_config)`` takes."""
        config = self.resolve(ref, platform).config
        return BaseImageConfig(
            env=config.env_pairs(),
            workdir=config.working_dir or "",
            user=config.user or "",
            shell=config.shell or (),
            onbuild=config.on_build or (),
        )
