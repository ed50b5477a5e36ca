"""A tiny busybox root filesystem for tests that run real commands in a sandbox.

``make_busybox_rootfs(path)`` builds an image-like tree: ``/bin/busybox`` (the host's static
busybox, from the busybox-static package that ``scripts/install-system-deps`` installs) with a
symlink per applet, and ``/etc/passwd`` and ``/etc/group`` with root, a user ``app`` (1000:1000,
also in group ``staff`` 50) and ``nobody``. It is a few MB and builds in milliseconds, so every
test can have its own.

``tree_state(path)`` records every entry's lstat data (mode, owner, size, mtime, symlink target)
so a test can prove that a run left the tree exactly as it was.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

USER_DB = """\
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:App User:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

GROUP_DB = """\
root:x:0:
staff:x:50:app
app:x:1000:
nogroup:x:65534:
"""

_PT_INTERP = 3


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (runs in an empty rootfs)."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit only; all CI hosts are
            return False
        endian = "<" if header[5] == 1 else ">"
        phoff = struct.unpack_from(endian + "Q", header, 32)[0]
        phentsize, phnum = struct.unpack_from(endian + "HH", header, 54)
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            if struct.unpack(endian + "I", f.read(4))[0] == _PT_INTERP:
                return False
    return True


def static_busybox() -> Path:
    """The host's static busybox; a clear error if only a dynamic one (or none) is installed."""
    for candidate in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if candidate and os.path.exists(candidate):
            path = Path(os.path.realpath(candidate))
            if _is_static_elf(path):
                return path
    raise RuntimeError(
        "the sandbox tests need a static busybox: run scripts/install-system-deps "
        "(apt-get install busybox-static)"
    )


def make_busybox_rootfs(root: Path, *, passwd: str = USER_DB, group: str = GROUP_DB) -> Path:
    """Create a busybox rootfs at ``root`` (which must not exist yet) and return it."""
    busybox = static_busybox()
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(passwd)
    (root / "etc" / "group").write_text(group)
    return root


def tree_state(root: Path) -> dict[str, tuple[int, int, int, int, int, str]]:
    """Every path under ``root`` (``""`` for the root itself) with its lstat data."""
    state: dict[str, tuple[int, int, int, int, int, str]] = {}
    for current, dirs, files in os.walk(root):
        for name in ["", *dirs, *files]:
            path = os.path.join(current, name) if name else current
            if name == "" and current != str(root):
                continue
            info = os.lstat(path)
            target = os.readlink(path) if os.path.islink(path) else ""
            rel = os.path.relpath(path, root) if path != str(root) else ""
            state[rel] = (
                info.st_mode,
                info.st_uid,
                info.st_gid,
                info.st_size,
                info.st_mtime_ns,
                target,
            )
    return state
