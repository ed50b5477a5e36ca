"""A tiny inotify watcher (ctypes), to prove which files a call opens — even when run as root."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from pathlib import Path
from types import TracebackType

IN_OPEN = 0x00000020
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class OpenWatcher:
    """Records the paths opened beneath the given directories while it is active."""

    def __init__(self, *dirs: Path) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.watches: dict[int, Path] = {}
        for top in dirs:
            for dirpath, dirnames, _ in os.walk(top):
                self._watch(Path(dirpath))
                dirnames[:] = [d for d in dirnames if not Path(dirpath, d).is_symlink()]
        self.opened_files: list[Path] = []
        self.opened_dirs: list[Path] = []
        self.collect()  # the walk above opened directories too: start from a clean slate
        self.opened_files.clear()
        self.opened_dirs.clear()

    def _watch(self, path: Path) -> None:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), IN_OPEN)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.watches[wd] = path

    def collect(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            pos = 0
            while pos < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                path = self.watches[wd] / os.fsdecode(name) if name else self.watches[wd]
                (self.opened_dirs if mask & IN_ISDIR else self.opened_files).append(path)

    def __enter__(self) -> OpenWatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.collect()
        os.close(self.fd)
