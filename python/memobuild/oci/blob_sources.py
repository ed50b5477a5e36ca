"""Which registry repositories are known to hold a blob: what makes cross-repository mounts work.

A push to ``registry/team/app`` of a layer pulled from ``registry/base/python`` need not send the
layer: the registry can link it from the other repository (``POST ?mount=<digest>&from=...``),
if the pusher may read there. So every pull and push notes, per blob, the repositories it came
from or went to (a small record in the local store), and a push offers the ones on the same
registry as mount sources. The list is short and best-effort: a stale entry costs one refused
mount request, after which the blob is uploaded as usual.
"""

from __future__ import annotations

from collections.abc import Iterable

from memobuild.cache.store import LocalStore
from memobuild.oci.reference import Reference

__all__ = ["MAX_SOURCES", "RECORD_KIND", "mount_sources", "remember_sources"]

RECORD_KIND = "registry-blob-source"
MAX_SOURCES = 8  # per blob; the most recent kept


def _known(store: LocalStore, digest: str) -> list[str]:
    value = store.get_record(RECORD_KIND, digest)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str)]


def remember_sources(store: LocalStore, ref: Reference, digests: Iterable[str]) -> None:
    """Note that ``ref``'s repository holds each blob in ``digests``."""
    where = ref.name
    for digest in dict.fromkeys(digests):
        known = _known(store, digest)
        if known and known[-1] == where:
            continue
        others = [item for item in known if item != where]
        updated = [*others[-(MAX_SOURCES - 1) :], where]
        store.put_record(RECORD_KIND, digest, updated)


def mount_sources(store: LocalStore, ref: Reference, digest: str) -> list[str]:
    """Repository paths on ``ref``'s registry, other than ``ref``'s, known to hold the blob,
    most recent first: candidates for a cross-repository mount."""
    prefix = ref.domain + "/"
    return [
        item[len(prefix) :]
        for item in reversed(_known(store, digest))
        if item.startswith(prefix) and item != ref.name
    ]
