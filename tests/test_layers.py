"""Layer blobs from real directories, read back by tarfile and GNU tar, and unpacked safely."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from memobuild.build.layers import (
    LayerBlob,
    source_date_epoch_from_env,
    take_snapshot,
    unpack_layer,
    write_diff_layer,
    write_tree_layer,
)
from memobuild.errors import (
    InputError,
    LayerError,
    LayerFormatError,
    LayerSecurityError,
    MemoBuildError,
    PathNotFoundError,
)

IS_ROOT = os.geteuid() == 0
EPOCH = 1_600_000_000  # 2020-09-13, older than anything a test writes
GNU_TAR = shutil.which("tar")


# --- helpers --------------------------------------------------------------------------------


def members(blob: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(blob, "r:*") as tf:
        return tf.getmembers()


def names(blob: Path) -> list[str]:
    """Entry names as written (directories keep their trailing slash)."""
    return [m.name + ("/" if m.isdir() else "") for m in members(blob)]


def content(blob: Path, name: str) -> bytes:
    with tarfile.open(blob, "r:*") as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()


def layer_order(name: str) -> tuple[tuple[int, bytes], ...]:
    """The documented entry order: depth-first, opaque marker, then whiteouts, then the other
    children of each directory by name bytes."""
    parts = name.rstrip("/").split("/")
    return tuple(
        (0 if p == ".wh..wh..opq" else 1 if p.startswith(".wh.") else 2, os.fsencode(p))
        for p in parts
    )


def write(path: Path, data: str | bytes = "", mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        path.chmod(mode)
    return path


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    """What a filesystem holds, as far as a layer carries it: type, mode, owner, whole-second
    mtime, content or link target, and which paths share an inode."""
    inodes: dict[int, list[str]] = {}
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = p.read_bytes()
                inodes.setdefault(st.st_ino, []).append(rel)
            else:
                body = None
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                None if stat.S_ISLNK(st.st_mode) else int(st.st_mtime),
                body,
            )
    for group in inodes.values():
        for rel in group:
            out[rel] = (*out[rel], tuple(sorted(group)))
    return out


def xattrs_supported(path: Path) -> bool:
    try:
        os.setxattr(path, "user.memobuild.probe", b"1")
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    os.removexattr(path, "user.memobuild.probe")
    return True


def build_base(root: Path) -> None:
    write(root / "etc/hosts", "127.0.0.1 localhost\n")
    write(root / "etc/motd", "hello")
    write(root / "etc/conf.d/a.conf", "a")
    write(root / "etc/conf.d/b.conf", "b")
    write(root / "usr/bin/tool", "#!/bin/sh\n", mode=0o644)
    write(root / "var/cache/x", "x")
    write(root / "var/cache/y", "y")
    write(root / "data", "data")
    write(root / "lib/libc.so", "elf")
    write(root / "unchanged/keep", "keep")
    os.link(root / "unchanged/keep", root / "unchanged/keep2")
    (root / "usr/lib").mkdir(parents=True)


def mutate(root: Path) -> None:
    """One of each kind of change a step can make."""
    motd = root / "etc/motd"
    before = motd.stat()
    motd.write_text("HELLO")  # same size, and the mtime put back: only ctime tells
    os.utime(motd, ns=(before.st_atime_ns, before.st_mtime_ns))
    write(root / "etc/new", "new")
    (root / "etc/hosts").unlink()
    shutil.rmtree(root / "etc/conf.d")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "data").unlink()
    write(root / "data/inner", "inner")  # file -> directory
    shutil.rmtree(root / "lib")
    (root / "lib").symlink_to("usr/lib")  # directory -> symlink
    for name in ("x", "y"):
        (root / "var/cache" / name).unlink()
    write(root / "var/cache/z", "z")  # emptied and refilled: opaque


# --- writing --------------------------------------------------------------------------------


def test_tree_layer_digests_order_and_readers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build_base(root)
    write(root / ("long-" + "n" * 140), "long name")
    write(root / "ünïcödé.txt", "utf-8 name")
    (root / "far").symlink_to("/" + "t" * 120)
    write(root / "etc-x", "sorts after etc/ in a depth-first walk, before it in plain order")
    write(root / "etc/-dash", "sorts before .wh. names in plain order")
    out = tmp_path / "layer.tar.gz"

    blob = write_tree_layer(root, out, source_date_epoch=EPOCH)

    assert isinstance(blob, LayerBlob) and blob.path == out
    data = out.read_bytes()
    assert blob.size == len(data)
    assert blob.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blob.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    listed = names(out)
    assert blob.entries == len(listed)
    assert listed == sorted(listed, key=layer_order)
    assert listed.index("etc/-dash") > listed.index("etc/")
    assert listed.index("etc-x") > listed.index("etc/motd")
    assert "long-" + "n" * 140 in listed and "ünïcödé.txt" in listed
    by_name = {m.name: m for m in members(out)}
    assert by_name["far"].linkname == "/" + "t" * 120
    assert by_name["unchanged/keep2"].islnk()
    assert by_name["unchanged/keep2"].linkname == "unchanged/keep"
    for m in by_name.values():
        assert (m.uname, m.gname) == ("", "")
        assert not {"atime", "ctime"} & set(m.pax_headers)
    assert content(out, "ünïcödé.txt") == b"utf-8 name"
    # No leftover temporary files next to the blob.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.tar.gz", "root"]


@pytest.mark.skipif(GNU_TAR is None, reason="GNU tar is not installed")
def test_gnu_tar_lists_and_extracts_the_layer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build_base(root)
    write(root / ("deep/" * 30 + "file"), "deep")
    (root / "far").symlink_to("/" + "t" * 120)
    out = tmp_path / "layer.tar.gz"
    write_tree_layer(root, out)
    assert GNU_TAR is not None
    listing = subprocess.run(
        [GNU_TAR, "-tzvf", str(out)], check=True, capture_output=True, text=True
    )
    assert listing.stderr == ""
    listed = [line.split(None, 5)[5] for line in listing.stdout.splitlines()]
    assert [n.split(" -> ")[0].split(" link to ")[0] for n in listed] == names(out)
    dest = tmp_path / "gnu"
    dest.mkdir()
    subprocess.run([GNU_TAR, "-xzf", str(out), "-C", str(dest)], check=True)
    assert describe(dest) == describe(root)


def test_diff_layer_holds_exactly_the_changes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build_base(root)
    before = take_snapshot(root)
    assert len(before) == before.entries == 20
    mutate(root)
    out = tmp_path / "diff.tar.gz"

    blob = write_diff_layer(root, before, out)

    assert names(out) == [
        "data/",
        "data/inner",
        "etc/",
        "etc/.wh.conf.d",  # the deleted directory only, not its children
        "etc/.wh.hosts",
        "etc/motd",
        "etc/new",
        "lib",
        "usr/",
        "usr/bin/",
        "usr/bin/tool",
        "var/",
        "var/cache/",
        "var/cache/.wh..wh..opq",
        "var/cache/z",
    ]
    assert blob.entries == 15
    by_name = {m.name: m for m in members(out)}
    assert content(out, "etc/motd") == b"HELLO"
    assert by_name["lib"].issym() and by_name["lib"].linkname == "usr/lib"
    assert by_name["data"].isdir()
    assert stat.S_IMODE(by_name["usr/bin/tool"].mode) == 0o755
    assert by_name["etc/.wh.hosts"].isreg() and by_name["etc/.wh.hosts"].size == 0


def test_unchanged_tree_gives_an_empty_layer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build_base(root)
    before = take_snapshot(root)
    blob = write_diff_layer(root, before, tmp_path / "empty.tar.gz")
    assert blob.entries == 0
    assert names(blob.path) == []
    # An empty layer is still a valid gzip tar: two zero blocks.
    assert gzip.decompress(blob.path.read_bytes()) == bytes(1024)


def test_excluded_mount_points_never_reach_the_layer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build_base(root)
    (root / "run/secrets").mkdir(parents=True)
    before = take_snapshot(root)
    write(root / "proc/1/status", "mounted")
    write(root / "run/secrets/token", "s3cret")
    write(root / "dev/null", "")
    write(root / "etc/new", "new")
    blob = write_diff_layer(
        root, before, tmp_path / "l.tar.gz", exclude=["proc", "/run/secrets/", "dev"]
    )
    listed = names(blob.path)
    assert "etc/new" in listed
    assert not [n for n in listed if n.startswith(("proc", "dev", "run/secrets"))]
    assert b"s3cret" not in gzip.decompress(blob.path.read_bytes())
    with pytest.raises(InputError, match="exclude"):
        write_diff_layer(root, before, tmp_path / "x.tar.gz", exclude="proc")
    with pytest.raises(InputError, match=r"\.\."):
        write_diff_layer(root, before, tmp_path / "x.tar.gz", exclude=["run/../etc"])


def test_hardlinks_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "bin/busybox", "multi-call binary", mode=0o755)
    for name in ("bin/sh", "sbin/init", "bin/ash"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.link(root / "bin/busybox", root / name)
    (root / "rel").symlink_to("bin/busybox")
    (root / "abs").symlink_to("/bin/busybox")
    (root / "dangling").symlink_to("no/such/file")
    out = tmp_path / "l.tar.gz"
    write_tree_layer(root, out)

    by_name = {m.name: m for m in members(out)}
    assert by_name["bin/ash"].isreg()  # first in layer order carries the content
    for name in ("bin/busybox", "bin/sh", "sbin/init"):
        assert by_name[name].islnk() and by_name[name].linkname == "bin/ash"
        assert by_name[name].size == 0
    assert (by_name["rel"].linkname, by_name["abs"].linkname) == ("bin/busybox", "/bin/busybox")
    assert by_name["dangling"].linkname == "no/such/file"

    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_layer(out, dest)
    inos = {os.stat(dest / n).st_ino for n in ("bin/ash", "bin/busybox", "bin/sh", "sbin/init")}
    assert len(inos) == 1
    assert os.readlink(dest / "abs") == "/bin/busybox"
    assert describe(dest) == describe(root)


def test_xattrs_are_carried(tmp_path: Path) -> None:
    root = tmp_path / "root"
    f = write(root / "bin/ping", "icmp")
    d = root / "bin"
    if not xattrs_supported(f):
        pytest.skip("this filesystem cannot store extended attributes")
    os.setxattr(f, "user.mime_type", b"application/x-executable")
    os.setxattr(f, "user.binary", b"\x00\x01\xff\n=")
    os.setxattr(d, "user.dir", b"yes")
    out = tmp_path / "l.tar.gz"
    write_tree_layer(root, out)
    by_name = {m.name: m for m in members(out)}
    assert by_name["bin/ping"].pax_headers["SCHILY.xattr.user.mime_type"] == (
        "application/x-executable"
    )
    assert "SCHILY.xattr.user.dir" in by_name["bin"].pax_headers
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_layer(out, dest)
    assert os.getxattr(dest / "bin/ping", "user.binary") == b"\x00\x01\xff\n="
    assert os.getxattr(dest / "bin/ping", "user.mime_type") == b"application/x-executable"
    assert os.getxattr(dest / "bin", "user.dir") == b"yes"


def test_mode_and_owner_as_on_disk(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "usr/bin/sudo", "suid", mode=0o4755)
    write(root / "usr/bin/wall", "sgid", mode=0o2755)
    write(root / "etc/shadow", "secret", mode=0o640)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "srv").mkdir(mode=0o700)
    os.mkfifo(root / "fifo")
    os.chmod(root / "fifo", 0o620)
    owner = (1234, 5678) if IS_ROOT else (os.getuid(), os.getgid())
    if IS_ROOT:
        os.chown(root / "etc/shadow", *owner)
        os.chown(root / "srv", *owner)
        (root / "usr/bin/sudo").chmod(0o4755)  # chown clears setuid; set it again
    out = tmp_path / "l.tar.gz"
    write_tree_layer(root, out)
    by_name = {m.name: m for m in members(out)}
    assert stat.S_IMODE(by_name["usr/bin/sudo"].mode) == 0o4755
    assert stat.S_IMODE(by_name["usr/bin/wall"].mode) == 0o2755
    assert stat.S_IMODE(by_name["tmp"].mode) == 0o1777
    assert stat.S_IMODE(by_name["srv"].mode) == 0o700
    assert by_name["fifo"].isfifo() and stat.S_IMODE(by_name["fifo"].mode) == 0o620
    assert (by_name["etc/shadow"].uid, by_name["etc/shadow"].gid) == owner
    assert (by_name["srv"].uid, by_name["srv"].gid) == owner
    if IS_ROOT:
        dest = tmp_path / "dest"
        dest.mkdir()
        unpack_layer(out, dest)
        assert describe(dest) == describe(root)


def test_mtimes_are_clamped_to_source_date_epoch(tmp_path: Path) -> None:
    root = tmp_path / "root"
    old = write(root / "old", "from 2001")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    new = write(root / "new", "from now")
    (root / "dir").mkdir()
    plain = tmp_path / "plain.tar.gz"
    write_tree_layer(root, plain)
    times = {m.name: m.mtime for m in members(plain)}
    assert times["old"] == 1_000_000_000
    assert times["new"] == int(new.stat().st_mtime) > EPOCH
    clamped = tmp_path / "clamped.tar.gz"
    write_tree_layer(root, clamped, source_date_epoch=EPOCH)
    times = {m.name: m.mtime for m in members(clamped)}
    assert times == {"old": 1_000_000_000, "new": EPOCH, "dir": EPOCH}


def _build_twice(tmp_path: Path, tag: str) -> tuple[LayerBlob, LayerBlob]:
    root = tmp_path / tag / "rootfs"
    build_base(root)
    (root / "link").symlink_to("etc/motd")
    os.link(root / "etc/motd", root / "etc/motd.hard")
    if xattrs_supported(root / "etc/motd"):
        os.setxattr(root / "etc/motd", "user.origin", b"test")
    base = write_tree_layer(root, tmp_path / tag / "base.tar.gz", source_date_epoch=EPOCH)
    before = take_snapshot(root)
    mutate(root)
    diff = write_diff_layer(root, before, tmp_path / tag / "diff.tar.gz", source_date_epoch=EPOCH)
    return base, diff


def test_identical_trees_give_byte_identical_blobs(tmp_path: Path) -> None:
    first = _build_twice(tmp_path, "one")
    time.sleep(1.1)  # different mtimes, inodes and directories the second time
    second = _build_twice(tmp_path, "two")
    for a, b in zip(first, second, strict=True):
        assert (a.digest, a.diff_id, a.size, a.entries) == (b.digest, b.diff_id, b.size, b.entries)
        assert a.path.read_bytes() == b.path.read_bytes()


def test_large_files_span_gzip_blocks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rnd = os.urandom(3 << 20)
    write(root / "random.bin", rnd)
    write(root / "zeros.bin", bytes(5 << 20))
    out = tmp_path / "l.tar.gz"
    blob = write_tree_layer(root, out)
    tar = gzip.decompress(out.read_bytes())
    assert blob.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert content(out, "random.bin") == rnd
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_layer(out, dest)
    assert (dest / "random.bin").read_bytes() == rnd
    assert (dest / "zeros.bin").stat().st_size == 5 << 20


def test_whiteout_names_in_a_rootfs_cannot_be_layered(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    before = take_snapshot(root)
    write(root / "etc/.wh.passwd", "")
    with pytest.raises(LayerFormatError) as info:
        write_diff_layer(root, before, tmp_path / "l.tar.gz")
    assert info.value.entry == "etc/.wh.passwd"
    assert "etc/.wh.passwd" in str(info.value)
    assert not (tmp_path / "l.tar.gz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["root"]


def test_snapshot_errors_are_memobuild_errors(tmp_path: Path) -> None:
    with pytest.raises(PathNotFoundError):
        take_snapshot(tmp_path / "missing")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    snap = take_snapshot(a)
    assert snap.root == a.resolve()
    with pytest.raises(InputError, match="snapshot was taken of"):
        write_diff_layer(b, snap, tmp_path / "l.tar.gz")
    with pytest.raises(InputError):
        write_tree_layer(a, tmp_path / "l.tar.gz", source_date_epoch=-1)


def test_source_date_epoch_from_env() -> None:
    assert source_date_epoch_from_env({}) is None
    assert source_date_epoch_from_env({"SOURCE_DATE_EPOCH": ""}) is None
    assert source_date_epoch_from_env({"SOURCE_DATE_EPOCH": "1700000000"}) == 1_700_000_000
    assert source_date_epoch_from_env({"SOURCE_DATE_EPOCH": "0"}) == 0
    for bad in ("-1", "1.5", " 12", "12 ", "abc", "١٢", str(2**63)):
        with pytest.raises(InputError, match="SOURCE_DATE_EPOCH"):
            source_date_epoch_from_env({"SOURCE_DATE_EPOCH": bad})


def test_source_date_epoch_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "123")
    assert source_date_epoch_from_env() == 123
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert source_date_epoch_from_env() is None


# --- unpacking ------------------------------------------------------------------------------


def test_stacked_layers_reproduce_the_final_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build_base(root)
    base = write_tree_layer(root, tmp_path / "base.tar.gz")
    before = take_snapshot(root)
    mutate(root)
    diff = write_diff_layer(root, before, tmp_path / "diff.tar.gz")

    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_layer(base.path, dest)
    unpack_layer(diff.path, dest)

    assert describe(dest) == describe(root)
    # The whiteouts did their work.
    assert not (dest / "etc/hosts").exists()
    assert not (dest / "etc/conf.d").exists()
    assert sorted(p.name for p in (dest / "var/cache").iterdir()) == ["z"]
    assert (dest / "lib").is_symlink() and not (dest / "usr/lib/libc.so").exists()
    assert (dest / "data/inner").read_text() == "inner"
    assert not list(dest.rglob(".wh.*"))


def test_unpack_accepts_plain_tar_and_foreign_whiteouts(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    write(dest / "keep/old", "old")
    write(dest / "opq/lower", "lower")
    write(dest / "opq/sub/lower", "lower")
    write(dest / "gone", "gone")
    # Written the way other tools do: ./ prefixes, the opaque marker after new children.
    layer = tmp_path / "foreign.tar"
    with tarfile.open(layer, "w", format=tarfile.GNU_FORMAT) as tf:
        add_dir(tf, "./opq")
        add_dir(tf, "./opq/sub")
        add_file(tf, "./opq/sub/new", b"new")
        add_file(tf, "./opq/.wh..wh..opq", b"")
        add_file(tf, "./.wh.gone", b"")
        add_file(tf, "./.wh.never-existed", b"")
        add_file(tf, "./implied/parent/file", b"x")
    unpack_layer(layer, dest)
    assert (dest / "keep/old").read_text() == "old"
    assert (dest / "opq/sub/new").read_text() == "new"
    assert not (dest / "opq/lower").exists()
    assert not (dest / "opq/sub/lower").exists()
    assert not (dest / "gone").exists()
    assert (dest / "implied/parent/file").read_text() == "x"
    assert stat.S_IMODE((dest / "implied").stat().st_mode) == 0o755


def add_file(tf: tarfile.TarFile, name: str, data: bytes, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for k, v in attrs.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data))


def add_dir(tf: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tf.addfile(info)


def add_link(tf: tarfile.TarFile, name: str, target: str, *, hard: bool = False) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    tf.addfile(info)


# One archive member, for building malicious layers.
Member = Callable[[tarfile.TarFile], None]


def file_(name: str, data: bytes = b"pwned", **attrs: object) -> Member:
    return lambda tf: add_file(tf, name, data, **attrs)


def dir_(name: str) -> Member:
    return lambda tf: add_dir(tf, name)


def symlink(name: str, target: str | Path) -> Member:
    return lambda tf: add_link(tf, name, str(target))


def hardlink(name: str, target: str | Path) -> Member:
    return lambda tf: add_link(tf, name, str(target), hard=True)


def malicious(tmp_path: Path, *entries: Member, gz: bool = False) -> Path:
    path = tmp_path / ("evil.tar.gz" if gz else "evil.tar")
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for add in entries:
            add(tf)
    return path


@pytest.fixture
def jail(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A root to unpack into and a sibling directory outside it that must stay untouched."""
    outside = tmp_path / "outside"
    write(outside / "secret", "do not touch")
    write(outside / "victim", "do not delete")
    root = tmp_path / "jail" / "root"
    root.mkdir(parents=True)
    yield root, outside
    assert sorted(p.name for p in outside.iterdir()) == ["secret", "victim"]
    assert (outside / "secret").read_text() == "do not touch"
    assert sorted(p.name for p in (tmp_path / "jail").iterdir()) == ["root"]


def refused(layer: Path, root: Path, **limits: int) -> LayerSecurityError:
    with pytest.raises(LayerSecurityError) as info:
        unpack_layer(layer, root, **limits)
    err = info.value
    assert isinstance(err, LayerError) and isinstance(err, MemoBuildError)
    assert str(layer) in str(err)
    assert repr(err.entry) in str(err)
    return err


def fresh(root: Path) -> None:
    shutil.rmtree(root)
    root.mkdir()


def test_path_traversal_is_refused(tmp_path: Path, jail: tuple[Path, Path]) -> None:
    root, _outside = jail
    for name in ("../../outside/secret", "a/../../../outside/victim", "../root2"):
        err = refused(malicious(tmp_path, file_(name), gz=True), root)
        assert err.entry == name
        assert ".." in err.reason


def test_absolute_paths_are_refused(tmp_path: Path, jail: tuple[Path, Path]) -> None:
    root, outside = jail
    target = str(outside / "secret")
    err = refused(malicious(tmp_path, file_(target)), root)
    assert err.entry == target
    assert "absolute" in err.reason


def test_writes_through_symlinks_are_refused(tmp_path: Path, jail: tuple[Path, Path]) -> None:
    root, outside = jail
    cases = {
        "escape/secret": [symlink("escape", outside), file_("escape/secret")],
        "up/outside/secret": [symlink("up", "../.."), file_("up/outside/secret")],
        "escape/.wh.victim": [symlink("escape", outside), file_("escape/.wh.victim", b"")],
        "escape/.wh..wh..opq": [symlink("escape", outside), file_("escape/.wh..wh..opq", b"")],
        # tarfile writes directory names with a trailing slash; the error names them as written.
        "escape/newdir/": [symlink("escape", outside), dir_("escape/newdir")],
    }
    for entry, members_ in cases.items():
        err = refused(malicious(tmp_path, *members_), root)
        assert err.entry == entry
        assert "symbolic link" in err.reason
        fresh(root)
    # A symlink from a lower layer is no way out either.
    (root / "lower").symlink_to(outside)
    assert refused(malicious(tmp_path, file_("lower/secret")), root).entry == "lower/secret"


def test_hardlink_escapes_are_refused(tmp_path: Path, jail: tuple[Path, Path]) -> None:
    root, outside = jail
    for target in ("../../outside/secret", str(outside / "secret"), "/etc/passwd"):
        err = refused(malicious(tmp_path, hardlink("h", target)), root)
        assert err.entry == "h"
        assert "hard link target" in err.reason
    # Through a symlink the layer planted first.
    err = refused(
        malicious(tmp_path, symlink("escape", outside), hardlink("h", "escape/secret")), root
    )
    assert err.entry == "h"
    assert "symbolic link" in err.reason
    assert (outside / "secret").stat().st_nlink == 1


def test_expansion_bounds(tmp_path: Path, jail: tuple[Path, Path]) -> None:
    root, _ = jail
    # A small gzip bomb: 8 MiB of zeros compress to a few KiB.
    layer = malicious(tmp_path, file_("small", b"ok"), file_("bomb", bytes(8 << 20)), gz=True)
    assert layer.stat().st_size < 64 << 10
    err = refused(layer, root, max_bytes=1 << 20)
    assert err.entry == "bomb"
    assert str(1 << 20) in err.reason
    assert not (root / "bomb").exists()
    fresh(root)
    many = malicious(tmp_path, *(file_(f"f{i}", b"") for i in range(5)))
    err = refused(many, root, max_entries=3)
    assert err.entry == "f3"
    assert "more than 3 entries" in err.reason
    # Within the bounds the same layers apply.
    fresh(root)
    unpack_layer(layer, root, max_bytes=9 << 20)
    assert (root / "bomb").stat().st_size == 8 << 20
    with pytest.raises(InputError):
        unpack_layer(layer, root, max_bytes=-1)


def test_oversized_extended_headers_are_refused(tmp_path: Path, jail: tuple[Path, Path]) -> None:
    root, _ = jail
    layer = malicious(tmp_path, file_("f", b"", pax_headers={"comment": "x" * (2 << 20)}))
    err = refused(layer, root)
    assert "extended header" in err.reason


def test_corrupt_layers_are_format_errors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "f", os.urandom(100_000))
    good = write_tree_layer(root, tmp_path / "good.tar.gz").path
    data = good.read_bytes()
    dest = tmp_path / "dest"
    dest.mkdir()
    cases = {
        "truncated": data[: len(data) // 2],
        "flipped": data[:200] + bytes([data[200] ^ 0xFF]) + data[201:],
        "not a tar": b"this is not an archive" * 40,
        "zstd": b"\x28\xb5\x2f\xfd" + bytes(100),
    }
    for what, blob in cases.items():
        bad = tmp_path / f"{what}.tar.gz"
        bad.write_bytes(blob)
        with pytest.raises(LayerFormatError) as info:
            unpack_layer(bad, dest)
        assert str(bad) in str(info.value), what
    with pytest.raises(PathNotFoundError):
        unpack_layer(tmp_path / "missing.tar.gz", dest)


def _run_unpack_as(tmp_path: Path, prefix: list[str], layer: Path, *, drop_to: int | None) -> str:
    """Unpack ``layer`` into work/root in a child process, optionally after dropping to uid
    ``drop_to``; returns what the child printed (the error class and entry, or "ok")."""
    work = tmp_path / "work"
    (work / "root").mkdir(parents=True)
    shutil.copy(layer, work / "layer.tar")
    work.chmod(0o755)
    if drop_to is not None:
        os.chown(work / "root", drop_to, drop_to)
    code = f"""
import os, sys
from memobuild.build.layers import unpack_layer
from memobuild.errors import LayerSecurityError
os.chdir({str(work)!r})
if {drop_to!r} is not None:
    os.setgroups([])
    os.setgid({drop_to!r})
    os.setuid({drop_to!r})
try:
    unpack_layer("layer.tar", "root")
except LayerSecurityError as err:
    print("refused", err.entry, err.reason)
else:
    print("ok")
"""
    done = subprocess.run(
        [*prefix, sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def _device_layer(tmp_path: Path) -> Path:
    def build(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("dev/null")
        info.type = tarfile.CHRTYPE
        info.devmajor, info.devminor = 1, 3
        info.mode = 0o666
        tf.addfile(info)

    return malicious(tmp_path, build)


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_device_nodes_need_cap_mknod(tmp_path: Path) -> None:
    layer = _device_layer(tmp_path)
    drop = ["setpriv", "--inh-caps=-mknod", "--bounding-set=-mknod", "--"]
    out = _run_unpack_as(tmp_path, drop, layer, drop_to=None)
    assert out.startswith("refused dev/null"), out
    assert "CAP_MKNOD" in out
    assert not (tmp_path / "work/root/dev/null").exists()
    # With the capability, root creates it.
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_layer(layer, dest)
    st = (dest / "dev/null").lstat()
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)


@pytest.mark.skipif(not IS_ROOT, reason="drops from root to an unprivileged user")
def test_unprivileged_unpack_refuses_devices_and_strips_setuid(tmp_path: Path) -> None:
    nobody = 65534
    layer = _device_layer(tmp_path)
    out = _run_unpack_as(tmp_path, [], layer, drop_to=nobody)
    assert out.startswith("refused dev/null"), out
    shutil.rmtree(tmp_path / "work")

    layer = malicious(
        tmp_path,
        file_("bin/su", b"suid root", mode=0o4755, uid=0, gid=0),
        file_("bin/wall", b"sgid tty", mode=0o2755, uid=0, gid=5),
    )
    assert _run_unpack_as(tmp_path, [], layer, drop_to=nobody) == "ok"
    for name in ("bin/su", "bin/wall"):
        st = (tmp_path / "work/root" / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o755, name
        assert (st.st_uid, st.st_gid) == (nobody, nobody), name
