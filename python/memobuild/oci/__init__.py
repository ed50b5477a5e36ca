"""OCI images: the image model and its canonical JSON (image.py), OCI layouts (layout.py) and
``docker save`` archives (docker_archive.py).

Nothing here talks to a registry; blobs come from and go to the local store.
"""

from __future__ import annotations

from memobuild.oci.image import (
    EncodedImage,
    Healthcheck,
    HistoryEntry,
    Image,
    ImageConfig,
    ParsedConfig,
    config_json,
    encode_image,
    image_digest,
    manifest_json,
    normalize_image_name,
    parse_config,
)

__all__ = [
    "EncodedImage",
    "Healthcheck",
    "HistoryEntry",
    "Image",
    "ImageConfig",
    "ParsedConfig",
    "config_json",
    "encode_image",
    "image_digest",
    "manifest_json",
    "normalize_image_name",
    "parse_config",
]
