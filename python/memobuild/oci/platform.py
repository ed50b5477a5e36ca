"""Choosing one image out of a multi-platform index, as containerd's default matcher does.

``--platform`` (default: this host's) names what a build wants. An index entry matches when its
normalised platform is the wanted one; failing that, when it is an older variant the wanted
machine also runs (``linux/arm/v7`` runs ``v6`` and ``v5`` images, ``linux/amd64/v3`` runs
``v2`` and plain ``amd64``, ``linux/arm64/v9`` runs ``arm64``), the newest such variant first.
Entries without a platform or with ``unknown/unknown`` (BuildKit's attestation manifests) never
match.
"""

from __future__ import annotations

from collections.abc import Sequence

from memobuild.dockerfile.stages import Platform, host_platform
from memobuild.errors import DockerfileParseError, InputError, InvalidImageError
from memobuild.oci.image import Descriptor, DescriptorPlatform

__all__ = ["compatible_platforms", "parse_platform", "select_platform"]

# Older variants a machine of each architecture also runs, newest first (containerd's
# platforms.Only). "" is the plain architecture.
_OLDER_VARIANTS: dict[str, tuple[str, ...]] = {
    "arm": ("v8", "v7", "v6", "v5"),
    "amd64": ("v4", "v3", "v2", ""),
    "arm64": ("v9.5", "v9.4", "v9.3", "v9.2", "v9.1", "v9", "v8.9", "v8.8", "v8.7", "v8.6",
              "v8.5", "v8.4", "v8.3", "v8.2", "v8.1", ""),
}  # fmt: skip


def parse_platform(text: str | Platform | None) -> Platform:
    """``--platform`` as a Platform; None means this host's. InputError for a bad spelling."""
    if text is None:
        return host_platform()
    if isinstance(text, Platform):
        return text
    try:
        return Platform.parse(text)
    except DockerfileParseError as err:
        raise InputError(f"--platform: {err.reason}") from None


def compatible_platforms(wanted: Platform) -> list[Platform]:
    """Every platform an image may be for to run on ``wanted``, best first."""
    out = [wanted]
    variants = _OLDER_VARIANTS.get(wanted.architecture)
    if variants is not None and wanted.variant in variants:
        older = variants[variants.index(wanted.variant) + 1 :]
        out += [Platform(wanted.os, wanted.architecture, variant) for variant in older]
    return out


def _normalised(declared: DescriptorPlatform | None) -> Platform | None:
    if declared is None or not declared.os or not declared.architecture:
        return None
    try:
        return Platform.parse(str(declared))
    except DockerfileParseError:
        return None  # unknown/unknown attestations, or a platform this MemoBuild cannot name


def _listing(candidates: Sequence[Descriptor]) -> str:
    names = sorted({str(d.platform) for d in candidates if d.platform is not None})
    return ", ".join(names) if names else "no platforms listed"


def select_platform(candidates: Sequence[Descriptor], wanted: Platform, where: str) -> Descriptor:
    """The entry of an index for ``wanted``: an exact match, else the best compatible one; the
    first listed among equals. InvalidImageError, listing what there is, when none fits."""
    if not candidates:
        raise InvalidImageError(where, "the image index lists no images")
    ranked = {platform: rank for rank, platform in enumerate(compatible_platforms(wanted))}
    best: tuple[int, Descriptor] | None = None
    for desc in candidates:
        platform = _normalised(desc.platform)
        rank = ranked.get(platform) if platform is not None else None
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, desc)
    if best is None:
        raise InvalidImageError(
            where, f"no image for {wanted} in the index (it has: {_listing(candidates)})"
        )
    return best[1]
