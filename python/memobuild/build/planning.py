"""Planning a build with its base images known: the plan a build runs and ``memobuild plan`` shows.

``plan()`` itself never looks for images. A build must, for two reasons: the front end needs each
base image's config (its ENV, WORKDIR, USER, SHELL and ONBUILD triggers shape every step), and
the cache keys must name the exact image, not just the reference, or an image rebuilt under the
same name would answer with stale layers. Both come from one :class:`BaseResolver`, so the front
end, the keys and the executor all see the same image.

``strict=False`` is for ``memobuild plan``/``explain``, which must work before any image is
available: an image that cannot be found then contributes only its reference, as it did before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from memobuild.build.base import BaseResolver
from memobuild.dockerfile.stages import BaseImageConfig, Platform
from memobuild.errors import ImageNotFoundError, InputError
from memobuild.hashing import hash_tree
from memobuild.oci.image import image_digest
from memobuild.plan import Plan, plan

__all__ = ["plan_build"]


def plan_build(
    context: str | os.PathLike[str],
    dockerfile: str | os.PathLike[str],
    resolver: BaseResolver,
    *,
    target: str | None = None,
    build_args: Mapping[str, str] | None = None,
    platform: str | None = None,
    strict: bool = True,
) -> Plan:
    """``plan()`` with base image configs and identities from ``resolver``.

    With ``strict`` (a build), an image nothing provides is ImageNotFoundError here, before any
    step runs; without it the reference stands for itself.
    """

    def resolve_image(ref: str, target_platform: Platform) -> BaseImageConfig | None:
        spec = resolver.context(ref)
        if spec is not None and spec.kind == "local":
            return None  # a directory, not an image: FROM will say so when it resolves it
        try:
            return resolver.image_config(ref, target_platform)
        except ImageNotFoundError:
            if strict:
                raise
            return None

    def identify_image(ref: str, target_platform: Platform) -> str | None:
        spec = resolver.context(ref)
        if spec is not None and spec.kind == "local":
            # COPY --from=<a local directory context>: its content is its identity.
            return hash_tree(spec.path).digest
        try:
            return image_digest(resolver.resolve(ref, target_platform))
        except InputError:  # ImageNotFoundError, or a build context FROM cannot use
            if strict:
                raise
            return None

    return plan(
        context,
        dockerfile,
        target=target,
        build_args=build_args,
        platform=platform,
        resolve_image=resolve_image,
        identify_image=identify_image,
    )
