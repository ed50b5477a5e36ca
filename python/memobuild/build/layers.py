"""Layer blobs: what a step changed in a rootfs, as an OCI layer; and layers applied to a rootfs.

The work happens in Rust (``_core``: rust/snapshot.rs, rust/layer.rs). Before a step the executor
takes a stat snapshot of the rootfs (:func:`take_snapshot`); after it, :func:`write_diff_layer`
walks the tree again and writes every added, changed and deleted path as a gzip-compressed OCI
layer tar, computing the blob digest and the diff_id while writing. The same tree always gives
the same bytes: entries sorted, no atime/ctime/user names, gzip at a fixed level in fixed
blocks, and with ``SOURCE_DATE_EPOCH`` every mtime clamped to it.

:func:`unpack_layer` applies a layer (gzip or plain tar) with OCI whiteouts, and returns its diff_id
from the same pass (the caller compares it with what the image claims). It never writes,
links or deletes through a symlink, and refuses absolute names, ``..``, hard links leaving the
root, device nodes when not root, and layers expanding past a byte or entry bound: each a
:class:`~memobuild.errors.LayerSecurityError` naming the layer and the entry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from memobuild import _core
from memobuild._core import Snapshot
from memobuild.errors import (
    InputError,
    LayerFormatError,
    LayerSecurityError,
    MemoBuildError,
    from_os_error,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "LayerBlob",
    "LayerEntryRow",
    "Snapshot",
    "list_layer",
    "source_date_epoch_from_env",
    "take_snapshot",
    "unpack_layer",
    "write_diff_layer",
    "write_entries_layer",
    "write_tree_layer",
]

DEFAULT_MAX_BYTES: int = _core.DEFAULT_MAX_LAYER_BYTES
"""Default bound on a layer's expanded (uncompressed tar) size: 64 GiB."""

DEFAULT_MAX_ENTRIES: int = _core.DEFAULT_MAX_LAYER_ENTRIES
"""Default bound on a layer's number of entries."""

_EPOCH = re.compile(r"[0-9]+")
_MAX_EPOCH = 2**63 - 1

StrPath = str | os.PathLike[str]

LayerEntryRow = tuple[bytes, str, str | None, bytes | None, bytes | None, int, int, int, int | None]
"""One entry of :func:`write_entries_layer`: (name, kind, source, link, blake3, mode, uid, gid,
mtime_ns). ``name`` is the path in the layer (``a/b``); ``kind`` ``"file"``, ``"dir"`` or
``"symlink"``; ``source`` where a file's content is read and where an entry without ``mtime_ns``
takes its mtime from; ``link`` a symlink's target; ``blake3`` the 32-byte digest a file's content
must have."""


@dataclass(frozen=True)
class LayerBlob:
    """A layer blob on disk and the facts its OCI descriptor and image config need."""

    path: Path
    digest: str  # sha256 of the gzip blob: the descriptor digest
    diff_id: str  # sha256 of the uncompressed tar: the image config's rootfs.diff_ids entry
    size: int  # bytes of the gzip blob
    entries: int  # tar entries, whiteouts included


def source_date_epoch_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """``SOURCE_DATE_EPOCH`` as seconds, ``None`` when unset or empty.

    Anything but a non-negative decimal integer is an InputError: a reproducible build that
    silently ignored a typo would not be reproducible.
    """
    env = os.environ if environ is None else environ
    raw = env.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return None
    if not _EPOCH.fullmatch(raw) or int(raw) > _MAX_EPOCH:
        raise InputError(
            f"SOURCE_DATE_EPOCH={raw!r} is not a number of seconds since 1970-01-01 "
            "(a non-negative integer)"
        )
    return int(raw)


def _layer_error(where: StrPath, err: ValueError) -> MemoBuildError:
    entry, reason = (str(a) for a in err.args) if len(err.args) == 2 else ("", str(err))
    if isinstance(err, _core.LayerSecurityError):
        return LayerSecurityError(where, entry, reason)
    return LayerFormatError(where, entry, reason)


def take_snapshot(root: StrPath) -> Snapshot:
    """A stat snapshot of the tree at ``root``, to diff against after a step."""
    try:
        return _core.snapshot(root)
    except _core.LayerFormatError as err:
        raise _layer_error(root, err) from err
    except OSError as err:
        raise from_os_error(err, "directory") from err


def _check_epoch(source_date_epoch: int | None) -> None:
    if source_date_epoch is not None and not 0 <= source_date_epoch <= _MAX_EPOCH:
        raise InputError(f"source_date_epoch must be a non-negative integer: {source_date_epoch}")


def write_diff_layer(
    root: StrPath,
    before: Snapshot,
    out: StrPath,
    *,
    source_date_epoch: int | None = None,
    exclude: Sequence[StrPath] = (),
) -> LayerBlob:
    """Write what changed in ``root`` since ``before`` as a layer blob at ``out``.

    ``exclude`` lists rootfs-relative paths that never go into the layer, nor anything below
    them (the mount points a sandbox used: ``proc``, ``dev``, ``run/secrets``).
    """
    if isinstance(exclude, (str, bytes)):
        raise InputError(f"exclude must be a sequence of paths, not the string {exclude!r}")
    _check_epoch(source_date_epoch)
    try:
        digest, diff_id, size, entries = _core.write_diff_layer(
            root, before, out, source_date_epoch, list(exclude)
        )
    except (_core.LayerSecurityError, _core.LayerFormatError) as err:
        raise _layer_error(root, err) from err
    except ValueError as err:
        # An exclude path with '..' or naming the root, or a snapshot of another directory.
        raise InputError(" ".join(str(a) for a in err.args)) from err
    except OSError as err:
        raise from_os_error(err) from err
    return LayerBlob(Path(out), digest, diff_id, size, entries)


def write_tree_layer(
    root: StrPath, out: StrPath, *, source_date_epoch: int | None = None
) -> LayerBlob:
    """Write the whole tree at ``root`` as one layer blob at ``out`` (base images, tests)."""
    _check_epoch(source_date_epoch)
    try:
        digest, diff_id, size, entries = _core.write_tree_layer(root, out, source_date_epoch)
    except (_core.LayerSecurityError, _core.LayerFormatError) as err:
        raise _layer_error(root, err) from err
    except OSError as err:
        raise from_os_error(err) from err
    return LayerBlob(Path(out), digest, diff_id, size, entries)


def write_entries_layer(
    entries: Sequence[LayerEntryRow], out: StrPath, *, source_date_epoch: int | None = None
) -> LayerBlob:
    """Write ``entries`` as one layer blob at ``out``, in the format :func:`write_diff_layer`
    writes (sorted the same way, whatever their order here): a layer made from what a step
    names rather than from a diff of a rootfs.

    A file whose content is not its ``blake3`` (or that shrank, grew, or is no longer a regular
    file) raises LayerFormatError naming its entry; an OSError (a source that cannot be opened,
    or ``out``) is raised as it is, with its filename, for the caller to tell which.
    """
    if isinstance(entries, (str, bytes)):
        raise InputError("entries must be a sequence of rows")
    _check_epoch(source_date_epoch)
    try:
        digest, diff_id, size, count = _core.write_entries_layer(
            list(entries), out, source_date_epoch
        )
    except (_core.LayerSecurityError, _core.LayerFormatError) as err:
        raise _layer_error(out, err) from err
    return LayerBlob(Path(out), digest, diff_id, size, count)


def list_layer(path: StrPath) -> list[tuple[bytes, str]]:
    """The entries of the layer at ``path``, in archive order: (canonical name, kind), kind
    one of ``"dir"``, ``"file"``, ``"symlink"``, ``"hardlink"``, ``"other"``. Whiteouts are
    listed as the ``.wh.`` files they are. Read from the tar headers only; the same names and
    bounds as :func:`unpack_layer` (LayerSecurityError, LayerFormatError)."""
    try:
        return _core.list_layer(path, DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES)
    except (_core.LayerSecurityError, _core.LayerFormatError) as err:
        raise _layer_error(path, err) from err
    except OSError as err:
        raise from_os_error(err) from err


def unpack_layer(
    path: StrPath,
    root: StrPath,
    *,
    max_bytes: int | None = None,
    max_entries: int | None = None,
) -> str:
    """Apply the layer at ``path`` (gzip or plain tar) on top of the directory ``root``; returns
    its diff_id (``sha256:`` of the uncompressed tar, hashed in the same pass).

    ``max_bytes`` bounds the expanded tar size and ``max_entries`` the number of entries
    (defaults :data:`DEFAULT_MAX_BYTES`, :data:`DEFAULT_MAX_ENTRIES`). A refused entry raises
    LayerSecurityError, a malformed layer LayerFormatError; entries before it stay applied.
    """
    limits = {"max_bytes": max_bytes, "max_entries": max_entries}
    for name, value in limits.items():
        if value is not None and value < 0:
            raise InputError(f"{name} must not be negative: {value}")
    try:
        _, _, diff_id = _core.unpack_layer(
            path,
            root,
            DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
            DEFAULT_MAX_ENTRIES if max_entries is None else max_entries,
        )
    except (_core.LayerSecurityError, _core.LayerFormatError) as err:
        raise _layer_error(path, err) from err
    except OSError as err:
        raise from_os_error(err) from err
    return diff_id
