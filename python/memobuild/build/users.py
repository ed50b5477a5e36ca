"""User and group lookups inside an image's root filesystem, with Docker's rules.

``USER`` and ``COPY --chown`` name users the way the *image* knows them, so the lookups read the
rootfs's ``/etc/passwd`` and ``/etc/group``, never the host's (the host's NSS would answer for a
different system). The rules are BuildKit's, which uses ``moby/sys/user``:

* ``USER uid:gid`` with both numeric is taken as is, without reading any file and without
  supplementary groups (BuildKit's fast path).
* ``USER name`` or ``USER uid`` looks the user up in ``/etc/passwd`` (a number always matches by
  uid): the primary group and home come from the entry, and the supplementary groups are every
  ``/etc/group`` entry that lists the user's name. A numeric uid with no entry is allowed, with
  gid 0 and home ``/``; a name with no entry is an error.
* ``USER user:group`` replaces the primary group by the named (or numeric) group and, as Docker
  does, drops the supplementary groups.
* ``COPY --chown=name`` takes uid and gid from the passwd entry; ``--chown=1000`` means
  ``1000:1000`` (the number is used for the group too, without a lookup).

Paths inside the rootfs are resolved with :func:`resolve_in_root`, which follows symlinks as if
the rootfs were ``/``: an image whose ``/etc/passwd`` is an absolute symlink must not make
MemoBuild read the host's file.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from memobuild.build import archive
from memobuild.errors import InputError

__all__ = [
    "MAX_ID",
    "GroupEntry",
    "PasswdEntry",
    "ResolvedUser",
    "read_group",
    "read_passwd",
    "resolve_chown",
    "resolve_in_root",
    "resolve_user",
]

MAX_ID = (1 << 31) - 1
"""The largest uid/gid Docker accepts (moby/sys/user's maxID)."""


@dataclass(frozen=True)
class ResolvedUser:
    """Who a RUN step runs as: ids, home directory (for ``HOME``) and supplementary groups."""

    uid: int
    gid: int
    home: str = "/"
    extra_gids: tuple[int, ...] = ()


@dataclass(frozen=True)
class PasswdEntry:
    """One line of ``/etc/passwd``."""

    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    """One line of ``/etc/group``; ``members`` is the comma-separated fourth field."""

    name: str
    gid: int
    members: tuple[str, ...]


def resolve_in_root(root: Path, path: str) -> str:
    """The absolute, symlink-free path that ``path`` names when ``root`` is ``/``.

    Symlinks are followed as the kernel would inside a chroot (containerd's ``fs.RootPath``),
    by :func:`memobuild.build.archive.resolve_in_root`, which COPY and ADD use too; this face
    returns the path as the image sees it. A loop is an :class:`InputError`.
    """
    try:
        host = archive.resolve_in_root(root, path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(f"{path}: too many levels of symbolic links inside {root}") from err
        raise
    relative = host.relative_to(root).as_posix()
    return "/" if relative == "." else "/" + relative


def _read_lines(root: Path, path: str) -> list[list[str]] | None:
    """The colon-separated fields of each line of ``path`` in the rootfs; None if it is absent."""
    host_path = root / resolve_in_root(root, path).lstrip("/")
    try:
        data = host_path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError as err:
        raise InputError(f"{path} in the image is a directory, not a file") from err
    except PermissionError as err:
        raise InputError(f"{path} in the image cannot be read: {err.strerror}") from err
    lines = []
    for raw in data.decode("utf-8", "surrogateescape").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            lines.append(line.split(":"))
    return lines


def _parse_id(text: str) -> int | None:
    """A decimal id in Docker's range, or None (Go's Atoi plus moby's range check)."""
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def read_passwd(root: Path) -> list[PasswdEntry] | None:
    """The rootfs's ``/etc/passwd`` entries in file order; None when the file does not exist.

    Lines whose uid or gid is not a number (NIS ``+`` lines, damage) are skipped rather than
    read as 0, so that they can never match a lookup for root.
    """
    lines = _read_lines(root, "/etc/passwd")
    if lines is None:
        return None
    entries = []
    for fields in lines:
        fields += [""] * (7 - len(fields))
        uid, gid = _parse_id(fields[2]), _parse_id(fields[3])
        if uid is None or gid is None:
            continue
        entries.append(PasswdEntry(name=fields[0], uid=uid, gid=gid, home=fields[5]))
    return entries


def read_group(root: Path) -> list[GroupEntry] | None:
    """The rootfs's ``/etc/group`` entries in file order; None when the file does not exist."""
    lines = _read_lines(root, "/etc/group")
    if lines is None:
        return None
    entries = []
    for fields in lines:
        fields += [""] * (4 - len(fields))
        gid = _parse_id(fields[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in fields[3].split(",") if m.strip())
        entries.append(GroupEntry(name=fields[0], gid=gid, members=members))
    return entries


def _numeric(text: str, what: str, spec: str) -> int | None:
    """``text`` as an id if it is all digits (out of range is an error), else None."""
    if text.isascii() and text.isdigit():
        value = int(text)
        if value > MAX_ID:
            raise InputError(f"{what} {spec!r}: {text} is out of range (0 to {MAX_ID})")
        return value
    if text.startswith("-") and text[1:].isdigit():
        raise InputError(f"{what} {spec!r}: {text} is out of range (0 to {MAX_ID})")
    return None


def _find_group(root: Path, name: str, what: str, spec: str) -> int:
    groups = read_group(root)
    for group in groups or ():
        if group.name == name:
            return group.gid
    missing = " (the image has no /etc/group)" if groups is None else ""
    raise InputError(f"{what} {spec!r}: no group named {name!r} in /etc/group{missing}")


def _find_user_by_name(root: Path, name: str, what: str, spec: str) -> PasswdEntry:
    users = read_passwd(root)
    for user in users or ():
        if user.name == name:
            return user
    missing = " (the image has no /etc/passwd)" if users is None else ""
    raise InputError(f"{what} {spec!r}: no user named {name!r} in /etc/passwd{missing}")


def resolve_user(rootfs: Path, spec: str) -> ResolvedUser:
    """Resolve a ``USER`` value against the rootfs, as BuildKit does before it starts a RUN.

    ``""`` is root. See the module docstring for the rules; a user or group name that the image
    does not define is an :class:`InputError` naming the value and the file it was looked up in.
    """
    if spec == "":
        return ResolvedUser(uid=0, gid=0, home=_home_of(rootfs, 0))
    user_part, has_group, group_part = spec.partition(":")
    if has_group and user_part == "":
        raise InputError(f"USER {spec!r}: the user part is empty (write USER user[:group])")
    if has_group and group_part == "":
        raise InputError(f"USER {spec!r}: the group part is empty (write USER user[:group])")
    uid = _numeric(user_part, "USER", spec)
    gid = _numeric(group_part, "USER", spec) if has_group else None

    if uid is not None and gid is not None:
        # BuildKit's fast path: both numeric, no files read (HOME still comes from passwd).
        return ResolvedUser(uid=uid, gid=gid, home=_home_of(rootfs, uid))

    if uid is None:
        entry: PasswdEntry | None = _find_user_by_name(rootfs, user_part, "USER", spec)
    else:
        entry = next((u for u in read_passwd(rootfs) or () if u.uid == uid), None)

    name: str | None = None
    if entry is not None:
        resolved_uid, primary_gid, home, name = entry.uid, entry.gid, entry.home or "/", entry.name
    elif uid is not None:
        # A numeric uid that passwd does not know: allowed, with gid 0 and home "/".
        resolved_uid, primary_gid, home = uid, 0, "/"
    else:  # pragma: no cover - _find_user_by_name raises instead
        raise InputError(f"USER {spec!r}: no such user")

    if has_group:
        if gid is None:
            gid = _find_group(rootfs, group_part, "USER", spec)
        return ResolvedUser(uid=resolved_uid, gid=gid, home=home)

    extra: tuple[int, ...] = ()
    if name is not None:
        extra = tuple(dict.fromkeys(g.gid for g in read_group(rootfs) or () if name in g.members))
    return ResolvedUser(uid=resolved_uid, gid=primary_gid, home=home, extra_gids=extra)


def _home_of(rootfs: Path, uid: int) -> str:
    """The passwd home of ``uid``, else ``/`` (runc's default for HOME)."""
    for user in read_passwd(rootfs) or ():
        if user.uid == uid:
            return user.home or "/"
    return "/"


def resolve_chown(rootfs: Path, spec: str) -> tuple[int, int]:
    """Resolve ``COPY --chown``/``ADD --chown`` to (uid, gid) as BuildKit's file ops do.

    A user name takes uid and primary gid from ``/etc/passwd``; a numeric user is used for the
    group as well (``--chown=1000`` is ``1000:1000``, whatever passwd says). An explicit group,
    by name or number, replaces the gid.
    """
    user_part, has_group, group_part = spec.partition(":")
    if user_part == "":
        raise InputError(f"--chown {spec!r}: the user part is empty (write --chown=user[:group])")
    if has_group and group_part == "":
        raise InputError(f"--chown {spec!r}: the group part is empty (write --chown=user[:group])")
    uid = _numeric(user_part, "--chown", spec)
    if uid is not None:
        gid = uid
    else:
        entry = _find_user_by_name(rootfs, user_part, "--chown", spec)
        uid, gid = entry.uid, entry.gid
    if has_group:
        numeric_gid = _numeric(group_part, "--chown", spec)
        gid = (
            numeric_gid
            if numeric_gid is not None
            else _find_group(rootfs, group_part, "--chown", spec)
        )
    return uid, gid
