"""Local archives for ADD: recognised by content, extracted with docker's semantics, and refused
(naming the entry) when they would write outside their destination or create devices.

Archives are built here with ``tarfile`` (and ``zstandard``) from explicit members, so each test
says exactly which entry an attacker or a careless packager put in.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import lzma
import os
import stat
import sys
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from memobuild.build.archive import (
    ArchiveError,
    archive_compression,
    container_path,
    extract_archive,
    make_dirs_in_root,
    resolve_in_root,
    sniff_compression,
)

MTIME = 1_600_000_000


@dataclass
class Member:
    """One tar entry: ``kind`` is file, dir, symlink, hardlink, chardev, blockdev or fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    link: str = ""
    pax: dict[str, str] | None = None


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def tar_bytes(members: Iterable[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = _TYPES[m.kind]
            info.mode = m.mode
            info.uid, info.gid = m.uid, m.gid
            info.mtime = MTIME
            info.linkname = m.link
            if m.pax:
                info.pax_headers = dict(m.pax)
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return out.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data)
    if compression == "bzip2":
        return bz2.compress(data)
    if compression == "xz":
        return lzma.compress(data)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


SAMPLE = [
    Member("app", "dir", mode=0o750, uid=10, gid=20),
    Member("app/run.sh", data=b"#!/bin/sh\necho hi\n", mode=0o755, uid=10, gid=20),
    Member("app/data.txt", data=b"data\n", mode=0o640, uid=11, gid=21),
    Member("app/current", "symlink", link="data.txt"),
    Member("app/again.txt", "hardlink", link="app/data.txt"),
    Member("tmp", "dir", mode=0o1777),
    Member("bin/su", data=b"su", mode=0o4755),
]


# --- recognising archives ---------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["tar", "gzip", "bzip2", "xz", "zstd"])
def test_an_archive_is_recognised_by_content_whatever_its_name(
    tmp_path: Path, compression: str
) -> None:
    path = write(tmp_path / "payload.bin", compress(tar_bytes(SAMPLE), compression))
    assert archive_compression(path) == compression


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "xz", "zstd"])
def test_compressed_data_that_is_not_a_tar_is_not_an_archive(
    tmp_path: Path, compression: str
) -> None:
    path = write(tmp_path / "notes.tar.gz", compress(b"just some text\n" * 100, compression))
    assert sniff_compression(path.read_bytes()[:8]) == compression
    assert archive_compression(path) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"hello\n", b"\0" * 1024, b"\x1f\x8b\x08garbage that is no gzip stream"],
    ids=["empty", "text", "end-of-archive-only", "corrupt-gzip"],
)
def test_files_that_are_not_tar_archives(tmp_path: Path, data: bytes) -> None:
    assert archive_compression(write(tmp_path / "f.tar", data)) is None


def test_only_regular_files_are_archives(tmp_path: Path) -> None:
    real = write(tmp_path / "real.tar", tar_bytes(SAMPLE))
    (tmp_path / "link.tar").symlink_to(real)
    (tmp_path / "dir.tar").mkdir()
    assert archive_compression(tmp_path / "link.tar") is None
    assert archive_compression(tmp_path / "dir.tar") is None
    assert archive_compression(tmp_path / "missing.tar") is None


def test_zstd_without_the_zstandard_package_is_an_error_not_a_silent_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "a.tar.zst", compress(tar_bytes(SAMPLE), "zstd"))
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ArchiveError, match="zstandard package is not installed"):
        archive_compression(path)


# --- extracting -------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["tar", "gzip", "bzip2", "xz", "zstd"])
def test_extraction_keeps_modes_owners_times_links(tmp_path: Path, compression: str) -> None:
    archive = write(tmp_path / "a", compress(tar_bytes(SAMPLE), compression))
    dest = tmp_path / "dest"
    dest.mkdir()
    assert extract_archive(archive, dest) == len(SAMPLE)

    app = dest / "app"
    assert stat.S_IMODE(app.stat().st_mode) == 0o750
    assert (app.stat().st_uid, app.stat().st_gid) == (10, 20)
    assert (app / "run.sh").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((app / "run.sh").stat().st_mode) == 0o755
    data = (app / "data.txt").stat()
    assert (stat.S_IMODE(data.st_mode), data.st_uid, data.st_gid) == (0o640, 11, 21)
    assert data.st_mtime == MTIME
    assert app.stat().st_mtime == MTIME  # set after its children were written
    assert os.readlink(app / "current") == "data.txt"
    assert (app / "again.txt").stat().st_ino == data.st_ino
    # The archive's modes are its content: sticky /tmp and a setuid binary survive.
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((dest / "bin" / "su").stat().st_mode) == 0o4755
    # A parent the archive did not list is made 0755.
    assert stat.S_IMODE((dest / "bin").stat().st_mode) == 0o755


def test_chown_owns_every_extracted_entry(tmp_path: Path) -> None:
    archive = write(tmp_path / "a.tar", tar_bytes(SAMPLE))
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_archive(archive, dest, owner=(1000, 1001))
    for path in [dest / "app", dest / "app/run.sh", dest / "app/current", dest / "bin"]:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (1000, 1001), path


def test_entries_replace_files_and_merge_directories(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "app").mkdir(parents=True)
    (dest / "app" / "keep.txt").write_text("kept")
    (dest / "app" / "data.txt").write_text("old")
    (dest / "bin").mkdir()
    (dest / "bin" / "su").mkdir()  # a directory where the archive has a file
    (dest / "bin" / "su" / "x").write_text("x")
    archive = write(tmp_path / "a.tar", tar_bytes(SAMPLE))
    extract_archive(archive, dest)
    assert (dest / "app" / "keep.txt").read_text() == "kept"
    assert (dest / "app" / "data.txt").read_text() == "data\n"
    assert (dest / "bin" / "su").read_bytes() == b"su"  # docker: RemoveAll, then create


def test_the_destination_entry_itself_is_left_alone(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    archive = write(tmp_path / "a.tar", tar_bytes([Member("./", "dir", mode=0o777), *SAMPLE]))
    extract_archive(archive, dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700


def test_absolute_symlinks_are_fine_when_the_destination_is_the_image_root(
    tmp_path: Path,
) -> None:
    # FROM scratch + ADD rootfs.tar.xz /: the classic use of ADD.
    rootfs = [
        Member("usr/bin", "dir", mode=0o755),
        Member("usr/bin/busybox", data=b"bb", mode=0o755),
        Member("bin", "symlink", link="usr/bin"),
        Member("usr/bin/sh", "symlink", link="/usr/bin/busybox"),
    ]
    archive = write(tmp_path / "rootfs.tar", compress(tar_bytes(rootfs), "xz"))
    dest = tmp_path / "rootfs"
    dest.mkdir()
    extract_archive(archive, dest, container_dest="/")
    assert os.readlink(dest / "usr/bin/sh") == "/usr/bin/busybox"
    assert (dest / "bin" / "busybox").read_bytes() == b"bb"


def test_members_are_resolved_inside_the_destination(tmp_path: Path) -> None:
    """A symlink to /etc, already there or from the archive, leads to <dest>/etc."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "host-etc").symlink_to("/etc")
    archive = write(
        tmp_path / "a.tar",
        tar_bytes(
            [
                Member("host-etc/passwd", data=b"inside"),
                Member("etc2", "symlink", link="/etc"),
                Member("etc2/shadow", data=b"inside too"),
            ]
        ),
    )
    before = Path("/etc/passwd").read_bytes()
    extract_archive(archive, dest, container_dest="/")
    assert (dest / "etc" / "passwd").read_bytes() == b"inside"
    assert (dest / "etc" / "shadow").read_bytes() == b"inside too"
    assert Path("/etc/passwd").read_bytes() == before
    assert not Path("/etc/shadow").is_symlink()


def test_pax_xattrs_are_restored_where_the_filesystem_allows(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_text("")
    try:
        os.setxattr(probe, "user.memobuild", b"1")
    except OSError as err:
        pytest.skip(f"no user xattrs on this filesystem: {err.strerror}")
    archive = write(
        tmp_path / "a.tar",
        tar_bytes([Member("f", data=b"x", pax={"SCHILY.xattr.user.origin": "archive"})]),
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_archive(archive, dest)
    assert os.getxattr(dest / "f", "user.origin") == b"archive"


# --- refusing ---------------------------------------------------------------------------------

MALICIOUS = {
    "traversal": ([Member("../evil", data=b"x")], "../evil", "outside the destination"),
    "nested traversal": (
        [Member("a/../../evil", data=b"x")],
        "a/../../evil",
        "outside the destination",
    ),
    "absolute name": ([Member("/evil", data=b"x")], "/evil", "absolute path"),
    "relative symlink escape": (
        [Member("up", "symlink", link="../../../..")],
        "up",
        "points outside the destination",
    ),
    "absolute symlink elsewhere in the image": (
        [Member("conf", "symlink", link="/etc/shadow")],
        "conf",
        "points outside the destination",
    ),
    "hard link out": (
        [Member("h", "hardlink", link="../../etc/passwd")],
        "h",
        "outside the destination",
    ),
    "absolute hard link": (
        [Member("h", "hardlink", link="/etc/passwd")],
        "h",
        "outside the destination",
    ),
    "hard link to nothing extracted": (
        [Member("h", "hardlink", link="never/extracted")],
        "h",
        "not in the archive",
    ),
    "char device": ([Member("dev/mem", "chardev")], "dev/mem", "device files"),
    "block device": ([Member("dev/sda", "blockdev")], "dev/sda", "device files"),
    "fifo": ([Member("pipe", "fifo")], "pipe", "FIFOs"),
}


@pytest.mark.parametrize("case", list(MALICIOUS), ids=list(MALICIOUS))
def test_unsafe_entries_are_refused_and_named(tmp_path: Path, case: str) -> None:
    members, entry, reason = MALICIOUS[case]
    archive = write(tmp_path / "evil.tar.gz", compress(tar_bytes(members), "gzip"))
    outer = tmp_path / "outer"
    dest = outer / "image" / "app"
    dest.mkdir(parents=True)
    with pytest.raises(ArchiveError) as info:
        extract_archive(archive, dest, container_dest="/app", display="evil.tar.gz")
    err = info.value
    assert err.entry == entry
    assert reason in str(err)
    assert f"evil.tar.gz: entry {entry!r}" in str(err)
    assert sorted(p.name for p in outer.rglob("*")) == ["app", "image"]
    assert not (tmp_path / "evil").exists()


def test_a_refused_entry_after_good_ones_stops_the_extraction(tmp_path: Path) -> None:
    archive = write(
        tmp_path / "a.tar",
        tar_bytes([Member("ok.txt", data=b"ok"), Member("../evil", data=b"x")]),
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match=r"'\.\./evil'"):
        extract_archive(archive, dest)
    assert not (tmp_path / "evil").exists()


def test_symlinks_that_stay_inside_the_destination_are_allowed(tmp_path: Path) -> None:
    archive = write(
        tmp_path / "a.tar",
        tar_bytes(
            [
                Member("lib/x.so.1", data=b"so"),
                Member("lib/x.so", "symlink", link="x.so.1"),
                Member("bin/x", "symlink", link="../lib/x.so"),
                Member("bin/abs", "symlink", link="/opt/app/lib/x.so.1"),
            ]
        ),
    )
    dest = tmp_path / "image" / "opt" / "app"
    dest.mkdir(parents=True)
    extract_archive(archive, dest, container_dest="/opt/app")
    assert (dest / "bin" / "x").read_bytes() == b"so"
    assert os.readlink(dest / "bin" / "abs") == "/opt/app/lib/x.so.1"


def test_a_corrupt_archive_is_an_error_naming_it(tmp_path: Path) -> None:
    whole = compress(tar_bytes([Member("big", data=os.urandom(200_000))]), "gzip")
    archive = write(tmp_path / "cut.tar.gz", whole[: len(whole) // 2])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match=r"cut\.tar\.gz: corrupt archive"):
        extract_archive(archive, dest, display="cut.tar.gz")


def test_a_file_where_the_archive_needs_a_directory_names_the_entry(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "lib").write_text("a file")
    archive = write(tmp_path / "a.tar", tar_bytes([Member("lib/x.so", data=b"so")]))
    with pytest.raises(ArchiveError, match=r"entry 'lib/x\.so': cannot extract: not a directory"):
        extract_archive(archive, dest)


# --- paths inside a root ----------------------------------------------------------------------


def test_resolve_in_root_treats_the_root_as_slash(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "lib").symlink_to("/usr/lib")
    (root / "up").symlink_to("../../../../..")
    (root / "rel").symlink_to("usr/./lib/../lib")
    assert resolve_in_root(root, "/lib/x") == root / "usr" / "lib" / "x"
    assert resolve_in_root(root, "up/etc/passwd") == root / "etc" / "passwd"
    assert resolve_in_root(root, "../../etc") == root / "etc"
    assert resolve_in_root(root, "rel") == root / "usr" / "lib"
    assert resolve_in_root(root, "lib", follow_last=False) == root / "lib"
    assert container_path(root, root / "usr" / "lib") == "/usr/lib"
    assert container_path(root, root) == "/"


def test_symlink_loops_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError) as info:
        resolve_in_root(tmp_path, "a/x")
    assert info.value.errno == errno.ELOOP


def test_make_dirs_in_root_creates_inside_and_refuses_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").symlink_to("/nonexistent/etc")
    (root / "file").write_text("")
    made: list[str] = []
    host = make_dirs_in_root(root, "/etc/app", on_create=lambda p: made.append(p.name))
    assert host == root / "nonexistent" / "etc" / "app"
    assert host.is_dir()
    assert made == ["nonexistent", "etc", "app"]
    assert stat.S_IMODE(host.stat().st_mode) == 0o755
    with pytest.raises(NotADirectoryError) as info:
        make_dirs_in_root(root, "/file/sub")
    assert info.value.filename == "/file"
