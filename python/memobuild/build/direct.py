"""Filesystem steps without a rootfs: a step's layer written straight from what it names.

A stage's rootfs is unpacked only when a step needs the filesystem (build/materialise.py); and
a step that ran on it costs a diff of the whole tree, its files written once into the rootfs and
read again into the layer. For the steps that open most Dockerfiles that is all the work there
is: ``WORKDIR /app`` and ``COPY . .`` of a big context write every file twice and then delete
the tree. So while a stage has no rootfs yet, those steps are planned here against the *listing*
of the layers so far (their tar headers, whiteouts applied: :class:`LayerView`) and their layer is
written by Rust straight from the sources (``_core.write_entries_layer``): no rootfs, no diff.

Only when the result is provably the rootfs path's (build/copy.py ``plan_direct_copy`` says
what is checked): anything that depends on what only a rootfs shows (a symlink on the way, a
name resolved through ``/etc/passwd``, an archive to unpack, another stage's files) takes the
rootfs path as before. Two differences, both in directory metadata that no cache key or test
of an image looks at: a directory the step creates gets the build's clock as its mtime, and an
existing directory the step writes into is not put in the layer (in a rootfs its mtime moves, so
the diff would record it with its old mode and owner). A later step that needs the filesystem
unpacks the layers, these included, as for any cache hit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from memobuild import _core
from memobuild.build.copy import CopySource, DirectCopy, plan_direct_copy
from memobuild.build.layers import LayerBlob, LayerEntryRow, write_entries_layer
from memobuild.build.state import step_workdir_after
from memobuild.build.users import resolve_chown
from memobuild.dockerfile.instructions import AddInstruction, CopyInstruction, WorkdirInstruction
from memobuild.dockerfile.stages import Step

__all__ = ["ENABLED", "DirectLayer", "LayerView", "plan_direct_layer"]

ENABLED = True
"""Whether filesystem steps may skip the rootfs; tests switch it off to build the same thing
the rootfs way and compare."""

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
_NUMERIC_CHOWN = re.compile(r"[0-9]+(:[0-9]+)?")

Listing = Sequence[tuple[bytes, str]]


class _Node:
    """One path of the view: its kind and, for a directory, its children by name."""

    __slots__ = ("children", "kind")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.children: dict[bytes, _Node] | None = {} if kind == "dir" else None


class UnclearLayerError(Exception):
    """The layers do something the view does not model (an entry below a non-directory):
    only unpacking them says what they make."""


class LayerView:
    """What a chain of layers makes at each path, from their listings (``list_layer``), with
    the unpacker's rules: an entry replaces what was there unless both are directories, missing
    parents are made as directories, ``.wh.<name>`` deletes ``name`` and all below it,
    ``.wh..wh..opq`` empties its directory of everything the layer did not create before it.
    """

    def __init__(self) -> None:
        self._root = _Node("dir")
        self.layers = 0  # how many listings were applied

    def apply(self, listing: Listing) -> None:
        created: set[bytes] = set()
        for name, kind in listing:
            if not name:
                continue  # the root's own entry
            parent, _, base = name.rpartition(b"/")
            if base.startswith(WHITEOUT):
                directory = self._dir(parent, created)
                if base == OPAQUE:
                    prefix = parent + b"/" if parent else b""
                    for child in list(directory):
                        if prefix + child not in created:
                            del directory[child]
                elif not base.startswith(WHITEOUT + WHITEOUT):  # other aufs metadata: nothing
                    directory.pop(base[len(WHITEOUT) :], None)
                continue
            directory = self._dir(parent, created)
            old = directory.get(base)
            if old is None or old.kind != "dir" or kind != "dir":
                directory[base] = _Node(kind)
            created.add(name)
        self.layers += 1

    def _dir(self, path: bytes, created: set[bytes]) -> dict[bytes, _Node]:
        """The children of the directory ``path``, made (as the unpacker makes missing parents)
        where missing."""
        node = self._root
        done = b""
        for name in path.split(b"/") if path else ():
            done = done + b"/" + name if done else name
            assert node.children is not None  # noqa: S101 - only directories are walked into
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Node("dir")
                created.add(done)
            elif child.kind != "dir":
                raise UnclearLayerError(done.decode("utf-8", "replace"))
            node = child
        assert node.children is not None  # noqa: S101 - a directory by construction
        return node.children

    def kind(self, path: str) -> str | None:
        """``"dir"``, ``"file"``, ``"symlink"``, ``"hardlink"``, ``"other"``, or None."""
        node = self._root
        for name in path.encode("utf-8", "surrogateescape").split(b"/"):
            if not name:
                continue
            if node.children is None:
                return None
            child = node.children.get(name)
            if child is None:
                return None
            node = child
        return node.kind


@dataclass(frozen=True)
class DirectLayer:
    """A step's layer, planned without a rootfs; ``write`` it, or know it is empty."""

    entries: tuple[LayerEntryRow, ...]
    copy: DirectCopy | None = None

    def write(self, out: Path, *, source_date_epoch: int | None) -> LayerBlob:
        if self.copy is not None:
            return self.copy.write(out, source_date_epoch=source_date_epoch)
        return write_entries_layer(self.entries, out, source_date_epoch=source_date_epoch)

    def listing(self) -> list[tuple[bytes, str]]:
        """What :func:`memobuild.build.layers.list_layer` will say of the written layer, so that
        it need not be read back."""
        return [(row[0], row[1]) for row in self.entries]


def plan_direct_layer(
    step: Step,
    view: Callable[[], LayerView],
    *,
    context: Path,
    context_index: _core.ContextIndex | None,
    dockerignore: Sequence[str],
    now_ns: int,
    file: str,
) -> DirectLayer | None:
    """The layer of ``step`` without a rootfs, or None when it needs one. ``view`` gives the
    stage's layers so far (called only when the step is of a kind this handles)."""
    if not ENABLED:
        return None
    instruction = step.instruction
    try:
        if isinstance(instruction, WorkdirInstruction):
            return _workdir(step, view(), now_ns)
        if isinstance(instruction, (CopyInstruction, AddInstruction)):
            return _copy(
                step, instruction, view(), context, context_index, dockerignore, now_ns, file
            )
    except UnclearLayerError:
        return None
    return None


def _workdir(step: Step, view: LayerView, now_ns: int) -> DirectLayer | None:
    """``mkdir -p`` of the new WORKDIR: missing directories 0755, root's (a USER's ids need
    ``/etc/passwd``, which only a rootfs shows)."""
    if step.user:
        return None
    rows: list[LayerEntryRow] = []
    current = ""
    for name in step_workdir_after(step).split("/"):
        if not name:
            continue
        current = f"{current}/{name}" if current else name
        kind = view.kind(current) if not rows else None
        if kind == "dir":
            continue
        if kind is not None:  # a symlink to follow, or an error to report: the rootfs path
            return None
        rows.append(
            (
                current.encode("utf-8", "surrogateescape"),
                "dir",
                None,
                None,
                None,
                0o755,
                0,
                0,
                now_ns,
            )
        )
    return DirectLayer(tuple(rows))


def _copy(
    step: Step,
    instruction: CopyInstruction | AddInstruction,
    view: LayerView,
    context: Path,
    context_index: _core.ContextIndex | None,
    dockerignore: Sequence[str],
    now_ns: int,
    file: str,
) -> DirectLayer | None:
    chown: tuple[int, int] | None = None
    if instruction.chown:
        if not _NUMERIC_CHOWN.fullmatch(instruction.chown):
            return None  # a name: /etc/passwd and /etc/group are in the rootfs
        chown = resolve_chown(Path("/nonexistent"), instruction.chown)  # numbers: no lookup
    planned = plan_direct_copy(
        instruction,
        CopySource(context, is_context=True, index=context_index),
        view.kind,
        workdir=step.workdir,
        dockerignore=dockerignore,
        chown=chown,
        now_ns=now_ns,
        file=file,
    )
    if planned is None:
        return None
    return DirectLayer(planned.entries, planned)
