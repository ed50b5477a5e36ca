"""Turning layer chains into directories: a stage's working rootfs, and the trees steps read from.

A stage's rootfs exists only once a step needs the filesystem (Kaniko's rule: hits chain layer
references, nothing is unpacked). Then every layer so far is unpacked in order into a fresh
scratch directory, each blob verified by the store on the way (``LocalStore.blob_path``) and
unpacked by the Rust unpacker, which refuses path traversal and symlink escapes and hashes the
tar it applies, so a layer that is not the diff_id its image claims is refused right there.

:class:`SourceTrees` provides what ``COPY --from`` and ``RUN --mount from=`` read: another stage's
final filesystem, an image's, or nothing (``scratch``). Each is made at most once per build, on
first use, and shared read-only by every step that reads it; a stage that ran keeps its working
rootfs for this when another stage reads from it, so that only a stage whose every step hit has
to be unpacked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from memobuild.build.base import BaseResolver
from memobuild.build.layers import unpack_layer
from memobuild.build.rootfs import ScratchDir
from memobuild.cache.entries import LayerRef
from memobuild.cache.store import LocalStore
from memobuild.dockerfile.stages import Platform
from memobuild.oci.diff_ids import check_recorded_diff_id, diff_id_error, record_diff_id

__all__ = ["SourceTrees", "materialise"]


def materialise(store: LocalStore, layers: Sequence[LayerRef], dest: Path) -> Path:
    """Unpack ``layers`` (bottom first) into the directory ``dest``; returns ``dest``.

    Each layer's diff_id is checked against its claim (``oci/diff_ids.py``): before unpacking
    when an earlier use recorded it, else from the unpacker's own hash of the tar it applied.
    A wrong claim raises CASIntegrityError with ``dest`` partly written: the caller's scratch
    tree, discarded with the failed build, so nothing runs on it and nothing is stored.
    """
    for layer in layers:
        where = f"unpacking into {dest.name}"
        checked = check_recorded_diff_id(store, layer, where)
        actual = unpack_layer(store.blob_path(layer.digest), dest)
        if checked:
            continue
        record_diff_id(store, layer.digest, actual)  # what the blob is, whatever was claimed
        if actual != layer.diff_id:
            raise diff_id_error(layer, actual, where)
    return dest


class SourceTrees:
    """The directories other stages and images provide to a build's steps (thread-safe).

    ``stage_layers(index)`` must give a finished stage's layers; the executor only asks for a
    stage's tree after that stage has finished, which the build's level order guarantees.
    """

    def __init__(
        self,
        store: LocalStore,
        scratch: ScratchDir,
        resolver: BaseResolver,
        stage_layers: Callable[[int], Sequence[LayerRef]],
    ) -> None:
        self._store = store
        self._scratch = scratch
        self._resolver = resolver
        self._stage_layers = stage_layers
        self._lock = threading.Lock()
        self._locks: dict[object, threading.Lock] = {}
        self._trees: dict[object, Path] = {}

    def _entry_lock(self, key: object) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def adopt_stage(self, index: int, rootfs: Path) -> None:
        """Use a finished stage's working rootfs as its final tree (no unpacking needed)."""
        with self._entry_lock(("stage", index)):
            self._trees[("stage", index)] = rootfs

    def stage(self, index: int, label: str) -> Path:
        """The final filesystem of stage ``index``, unpacked on first use."""
        key = ("stage", index)
        with self._entry_lock(key):
            tree = self._trees.get(key)
            if tree is None:
                tree = materialise(
                    self._store, self._stage_layers(index), self._scratch.new_dir(f"{label}-final")
                )
                self._trees[key] = tree
            return tree

    def is_local_context(self, ref: str) -> bool:
        """Whether ``ref`` names a local directory build context (``NAME=PATH``), which COPY
        reads like the build context rather than like an image."""
        spec = self._resolver.context(ref)
        return spec is not None and spec.kind == "local"

    def image(self, ref: str, platform: Platform) -> Path:
        """The filesystem of image ``ref`` (or a local directory build context's path)."""
        spec = self._resolver.context(ref)
        if spec is not None and spec.kind == "local":
            return spec.path
        key = ("image", ref, platform)
        with self._entry_lock(key):
            tree = self._trees.get(key)
            if tree is None:
                image = self._resolver.resolve(ref, platform)
                tree = materialise(self._store, image.layers, self._scratch.new_dir(f"image-{ref}"))
                self._trees[key] = tree
            return tree

    def empty(self) -> Path:
        """An empty directory (``--from=scratch``)."""
        key = ("scratch",)
        with self._entry_lock(key):
            tree = self._trees.get(key)
            if tree is None:
                tree = self._scratch.new_dir("scratch")
                self._trees[key] = tree
            return tree

    def release(self) -> None:
        """Remove every tree made here, in the background (the scratch directory's removal
        would too; this frees the space as soon as the last level that reads them is done)."""
        with self._lock:
            trees = list(self._trees.values())
            self._trees.clear()
        for tree in trees:
            self._scratch.discard(tree)
