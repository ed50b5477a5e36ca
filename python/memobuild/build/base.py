"""Base images for FROM and ``COPY --from=<image>``: named contexts, the local store, registries.

In the order BuildKit looks, an image reference resolves to:

1. ``scratch``: the empty image (no layers, an empty config) for the target platform;
2. a named build context, ``--build-context NAME=...`` (BuildKit's named contexts, matched by
   the normalised name, so ``alpine``, ``alpine:latest`` and ``docker.io/library/alpine`` are
   one name): an OCI layout (``oci-layout://PATH[:TAG]`` or ``oci-layout://PATH@DIGEST``, a
   directory or a tar), a ``docker save`` archive (``docker-archive://FILE[:NAME:TAG]``) or
   an image in a registry (``docker-image://REF``, pulled as FROM REF would be); a plain
   local directory (``NAME=PATH``) serves ``COPY --from=NAME`` (the executor reads it through
   ``context()``), not FROM;
3. the image the reference names, for the platform, as ``oci/pull.py`` finds it under the
   pull policy (``--pull``): with ``missing`` (the default) from the local store when it is
   there (built with ``-t``, imported, or pulled before) and pulled from its registry when it
   is not; with ``always`` the registry is asked which image the tag names now (one manifest
   ``HEAD``; nothing is downloaded when the store has it); with ``never`` the store only.

A resolver without a registry (``memobuild plan`` and ``explain``, which never touch the
network) answers from the local store alone. Anything nothing provides is ImageNotFoundError,
whose message lists these ways; a registry that has no such image says so in it.

The registry client is made only when a reference is not in the local store (``registry`` may
be a function that makes it, ``oci/session.py``), so a build whose bases are all local never
loads the HTTP stack. The image found locally and the image a pull returns are the same image,
with the same digest (``image_digest``), so cache keys do not change when an image is pulled
again or found in the store. A resolver is made per build and remembers what it resolved, so
that the front end's config lookups (``image_config``) and the executor's ``resolve`` read and
import each image once, and every step of the build sees the same image.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from memobuild.cache.store import LocalStore
from memobuild.dockerfile.stages import BaseImageConfig, Platform, host_platform
from memobuild.errors import (
    CacheCoherencyError,
    ImageNotFoundError,
    InputError,
    InvalidDigestError,
    MemoBuildError,
    NetworkError,
    RegistryNotFoundError,
)
from memobuild.images import ImageStore
from memobuild.oci.docker_archive import read_docker_archive
from memobuild.oci.image import Image, ImageConfig, normalize_image_name
from memobuild.oci.layout import read_oci_layout
from memobuild.oci.platform import compatible_platforms
from memobuild.oci.pull import PULL_POLICIES, pull_image
from memobuild.oci.reference import Reference, parse_reference
from memobuild.verify import parse_digest

if TYPE_CHECKING:
    from memobuild.oci.registry import RegistryClient

__all__ = [
    "CONTEXT_KINDS",
    "PULL_POLICIES",
    "BaseResolver",
    "BuildContextSpec",
    "RegistryProvider",
    "check_pull_policy",
    "parse_build_context",
    "scratch_image",
]

CONTEXT_KINDS = ("oci-layout", "docker-archive", "docker-image", "local")
# A registry client, or a function that makes one when it is first needed (oci/session.py).
RegistryProvider = Union["RegistryClient", Callable[[], "RegistryClient"]]
_EXAMPLES = (
    "--build-context NAME=oci-layout:///path/to/layout[:TAG], "
    "--build-context NAME=docker-archive:///path/to/image.tar, "
    "--build-context NAME=docker-image://REGISTRY/REPO[:TAG] or "
    "--build-context NAME=/path/to/dir"
)
_LAYOUT_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# BuildKit's other named-context sources: recognised, so the error can say what is missing.
_UNSUPPORTED = {
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
    kind: str  # "oci-layout" | "docker-archive" | "docker-image" | "local"
    path: Path
    tag: str | None = None
    digest: str | None = None
    image: str | None = None  # docker-image: the reference to pull

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
    if source.startswith("docker-image://"):
        image = source[len("docker-image://") :]
        try:
            parse_reference(image)
        except InputError as err:
            raise _bad(value, str(err)) from None
        return BuildContextSpec(key, "docker-image", Path(), image=image)
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


def check_pull_policy(policy: str) -> str:
    """``policy`` if it is one of docker's ``--pull`` values; InputError otherwise."""
    if policy not in PULL_POLICIES:
        raise InputError(
            f"--pull={policy}: expected missing (the default: pull what the local store lacks), "
            "always (ask the registry for the tag's current image) or never (the local store only)"
        )
    return policy


def _runs_on(image: Image, platform: Platform) -> bool:
    """Whether ``image`` is for ``platform`` or a platform that machine also runs."""
    try:
        own = Platform.parse(image.platform)
    except InputError:
        return False
    return own in compatible_platforms(platform)


def _while_pulling(err: MemoBuildError, ref: Reference) -> MemoBuildError:
    """Say which image was being pulled, keeping the error's type (and so its exit status)."""
    prefix = f"pull {ref.familiar}: "
    if not err.message.startswith(prefix):
        err.message = prefix + err.message
        err.args = (err.message,)
    return err


class BaseResolver:
    """Resolves FROM and ``COPY --from`` image references for one build (thread-safe).

    ``pull_policy`` is ``--pull`` (``missing``, ``always``, ``never``). ``registry`` is the
    client pulls go through, or a function that makes it on first use; without one nothing is
    pulled, as for ``--pull=never``.
    """

    def __init__(
        self,
        store: LocalStore,
        build_contexts: Sequence[BuildContextSpec] = (),
        *,
        pull_policy: str = "missing",
        registry: RegistryProvider | None = None,
    ) -> None:
        self.store = store
        self.images = ImageStore(store)
        self.pull_policy = check_pull_policy(pull_policy)
        self._registry = registry
        self._contexts: dict[str, BuildContextSpec] = {}
        for spec in build_contexts:
            if spec.name in self._contexts:
                raise InputError(f"--build-context {spec.name!r} is given more than once")
            if spec.kind != "docker-image" and not spec.path.exists():
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
            if spec.kind == "docker-image" and spec.image is not None:
                return self._image(spec.image, platform)
            raise InputError(
                f"build context {spec.name!r} is a local directory ({spec.path}): it can be "
                f"a source for COPY --from={ref}, not a base image for FROM; give an image "
                f"with --build-context {ref}=oci-layout://PATH or docker-archive://FILE"
            )
        return self._image(ref, platform)

    def _image(self, ref: str, platform: Platform) -> Image:
        """The image ``ref`` names, from the local store or its registry as the pull policy
        says (see the module docstring)."""
        try:
            reference = parse_reference(ref)
        except InputError as err:
            raise ImageNotFoundError(ref, str(err)) from None
        policy = self.pull_policy if self._registry is not None else "never"
        elsewhere: str | None = None  # the platform of a local image for another one
        if policy != "always" or reference.digest is not None:
            local, elsewhere = self._local(ref, reference, platform)
            if local is not None:
                return local
        detail = f"the local image is for {elsewhere}, not {platform}" if elsewhere else None
        if policy == "never":
            if self._registry is not None:  # --pull=never, rather than plan's local look-up
                detail = f"{detail or f'not in the local store for {platform}'}, and --pull=never"
            raise ImageNotFoundError(ref, detail)
        return self._pull(ref, reference, platform, policy, detail)

    def _local(
        self, ref: str, reference: Reference, platform: Platform
    ) -> tuple[Image | None, str | None]:
        """(the image for ``platform`` in the local store, the platform of one by that name
        for another platform), asking no registry."""
        elsewhere = None
        if reference.digest is None:  # by name: built with -t, imported, or pulled before
            try:
                image = self.images.load(ref)
            except InputError:
                image = None  # not a name the image store holds
            if image is not None:
                if _runs_on(image, platform):
                    return image, None
                elsewhere = image.platform
        try:  # what earlier pulls recorded: a reference's digest, a digest's local image
            return pull_image(reference, self.store, platform, "never").image, None
        except ImageNotFoundError:
            return None, elsewhere

    def _client(self) -> RegistryClient:
        registry = self._registry
        if registry is None:  # pragma: no cover - _image pulls only with a registry
            raise ValueError("no registry to pull from")
        return registry() if callable(registry) else registry

    def _pull(
        self, ref: str, reference: Reference, platform: Platform, policy: str, detail: str | None
    ) -> Image:
        try:
            return pull_image(reference, self.store, platform, policy, client=self._client()).image
        except RegistryNotFoundError as err:
            reason = f"{detail}; {err}" if detail else str(err)
            raise ImageNotFoundError(ref, reason) from None
        except (NetworkError, CacheCoherencyError) as err:
            raise _while_pulling(err, reference) from None

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
