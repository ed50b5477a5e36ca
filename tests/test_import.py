"""`memobuild import SOURCE NAME`: a root filesystem (directory or tar) as a one-layer image.

Real directories and real tars (made by GNU tar, as a user would), through the real command;
then real builds FROM the imported images, the example of examples/multistage among them.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from busybox_image import image_tree, layer_members, make_busybox_rootfs_dir
from memobuild.cache.store import LocalStore
from memobuild.images import ImageStore, import_image
from memobuild.oci.image import OCI_LAYER, OCI_LAYER_GZIP, Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BASE_PATH = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(*args: str, stdin: bytes | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    # The autouse isolated_cache fixture has set MEMOBUILD_CACHE_DIR in os.environ.
    done = subprocess.run(
        [sys.executable, "-m", "memobuild.cli", *args],
        capture_output=True,
        input=stdin,
        env={**os.environ, **env},
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def load(cache: Path, name: str) -> Image:
    with LocalStore(cache) as store:
        image = ImageStore(store).load(name)
    assert image is not None, f"{name} is not in the store"
    return image


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_busybox_rootfs_dir(tmp_path / "rootfs")


def tar_of(root: Path, dest: Path, *flags: str) -> Path:
    """``tar -C root [flags] -cf dest .``: the archive a user would make of a rootfs."""
    subprocess.run(["tar", "-C", str(root), *flags, "-cf", str(dest), "."], check=True)
    return dest


# --- directories ----------------------------------------------------------------------------


def test_import_a_directory(rootfs: Path, isolated_cache: Path) -> None:
    done = run("import", str(rootfs), "busybox")
    assert done.returncode == 0, done.stderr
    assert f"imported {rootfs} (directory, " in done.stdout
    assert "as busybox:latest" in done.stdout

    image = load(isolated_cache, "busybox:latest")
    assert done.stdout.splitlines()[-1] == ImageStore(LocalStore(isolated_cache)).resolve_digest(
        "busybox"
    )
    assert len(image.layers) == 1 and image.layers[0].media_type == OCI_LAYER_GZIP
    assert image.created is None  # no SOURCE_DATE_EPOCH: no wall-clock time in the image
    assert [h.created_by for h in image.history] == ["memobuild import"]
    assert image.config.cmd is None and image.config.env is None  # docker import's empty config
    with LocalStore(isolated_cache) as store:
        members = layer_members(store, image.layers[0])
        tree = image_tree(store, image, Path(rootfs.parent / "unpacked"))
    assert {"bin/busybox", "bin/sh", "etc/passwd", "tmp", "home/app"} <= set(members)
    assert os.readlink(tree / "bin" / "sh") == "busybox"
    assert (tree / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (tree / "home" / "app").stat().st_uid == 1000  # owners kept
    assert "busybox:latest" in run("images").stdout


def test_same_tree_same_digest_with_source_date_epoch(tmp_path: Path, isolated_cache: Path) -> None:
    first = make_busybox_rootfs_dir(tmp_path / "one")
    second = make_busybox_rootfs_dir(tmp_path / "elsewhere" / "two")
    os.utime(second / "etc" / "passwd", (2_000_000_000, 2_000_000_000))  # a later mtime
    a = run("import", str(first), "a", SOURCE_DATE_EPOCH="1700000000")
    b = run("import", str(second), "b", SOURCE_DATE_EPOCH="1700000000")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout.splitlines()[-1] == b.stdout.splitlines()[-1]
    image = load(isolated_cache, "a")
    assert image.created == "2023-11-14T22:13:20Z"
    assert image.history[0].created == "2023-11-14T22:13:20Z"

    bad = run("import", str(first), "c", SOURCE_DATE_EPOCH="yesterday")
    assert bad.returncode == 2 and "SOURCE_DATE_EPOCH" in bad.stderr


def test_changes_set_the_config(rootfs: Path, isolated_cache: Path) -> None:
    done = run(
        "import",
        str(rootfs),
        "base:1",
        "--change",
        BASE_PATH,
        "--change",
        "ENV HOME_DIR=/home/app GREETING=hello",
        "-c",
        'CMD ["sh"]',
        "-c",
        "WORKDIR /srv",
        "-c",
        "USER app",
        "-c",
        "EXPOSE 8080/tcp",
        "-c",
        'LABEL org.opencontainers.image.title="busybox base"',
        "-c",
        "ENV APP_HOME=$HOME_DIR/srv",
        "-m",
        "from the host's busybox",
        "--platform",
        "linux/arm64",
    )
    assert done.returncode == 0, done.stderr
    image = load(isolated_cache, "base:1")
    config = image.config
    assert config.env == (
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME_DIR=/home/app",
        "GREETING=hello",
        "APP_HOME=/home/app/srv",
    )
    assert config.cmd == ("sh",)
    assert config.working_dir == "/srv"
    assert config.user == "app"
    assert config.exposed_ports == ("8080/tcp",)
    assert config.labels == (("org.opencontainers.image.title", "busybox base"),)
    assert image.history[0].comment == "from the host's busybox"
    assert image.platform == "linux/arm64"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("RUN echo hi", "not an instruction import can apply"),
        ("FROM alpine", "not an instruction import can apply"),
        ("CMD sh\nRUN rm -rf /", "one instruction per --change"),
        ("ENV", "--change 'ENV'"),
    ],
)
def test_a_change_import_cannot_apply_is_a_usage_error(
    rootfs: Path, isolated_cache: Path, change: str, message: str
) -> None:
    done = run("import", str(rootfs), "x", "--change", change)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert done.stderr.startswith("memobuild: error: --change ")
    assert json.loads(run("images", "--json").stdout) == []


# --- tars -----------------------------------------------------------------------------------


def test_import_a_plain_tar_keeps_it_as_the_layer(
    rootfs: Path, tmp_path: Path, isolated_cache: Path
) -> None:
    archive = tar_of(rootfs, tmp_path / "rootfs.tar", "--owner=0", "--group=0")
    done = run("import", str(archive), "fromtar:plain")
    assert done.returncode == 0, done.stderr
    assert "(tar, " in done.stdout
    image = load(isolated_cache, "fromtar:plain")
    layer = image.layers[0]
    data = archive.read_bytes()
    assert layer.media_type == OCI_LAYER
    assert layer.digest == layer.diff_id == sha256(data)
    assert layer.size == len(data)
    with LocalStore(isolated_cache) as store:
        tree = image_tree(store, image, tmp_path / "unpacked")
    assert (tree / "bin" / "busybox").read_bytes() == (rootfs / "bin" / "busybox").read_bytes()
    assert (tree / "home" / "app").stat().st_uid == 0  # what the tar says (--owner=0)


@pytest.mark.parametrize(
    ("flag", "kind", "decompress"),
    [
        ("-z", "tar+gzip", gzip.decompress),
        ("-j", "tar+bzip2", bz2.decompress),
        ("-J", "tar+xz", lzma.decompress),
    ],
)
def test_import_a_compressed_tar(
    rootfs: Path, tmp_path: Path, isolated_cache: Path, flag: str, kind: str, decompress: object
) -> None:
    archive = tar_of(rootfs, tmp_path / "rootfs.tar.x", flag)
    done = run("import", str(archive), "fromtar:1")
    assert done.returncode == 0, done.stderr
    assert f"({kind}, " in done.stdout
    layer = load(isolated_cache, "fromtar:1").layers[0]
    data = archive.read_bytes()
    assert callable(decompress)
    plain = decompress(data)
    assert layer.diff_id == sha256(plain)
    if kind == "tar+gzip":  # stored as it is
        assert (layer.media_type, layer.digest, layer.size) == (
            OCI_LAYER_GZIP,
            sha256(data),
            len(data),
        )
    else:  # layers are plain or gzip: stored decompressed
        assert (layer.media_type, layer.digest, layer.size) == (
            OCI_LAYER,
            sha256(plain),
            len(plain),
        )


def test_import_a_tar_from_stdin(rootfs: Path, tmp_path: Path, isolated_cache: Path) -> None:
    archive = tar_of(rootfs, tmp_path / "rootfs.tar")
    done = run("import", "-", "piped", stdin=archive.read_bytes())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported - (tar, ")
    assert load(isolated_cache, "piped").layers[0].digest == sha256(archive.read_bytes())


def _raw_tar(path: Path, name: str, *, link: str | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        if link is not None:
            info.type, info.linkname = tarfile.LNKTYPE, link
            tar.addfile(info)
        else:
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    return path


def test_sources_import_cannot_use_are_clear_errors(tmp_path: Path, isolated_cache: Path) -> None:
    missing = run("import", str(tmp_path / "nope"), "x")
    assert missing.returncode == 2
    assert f"{tmp_path / 'nope'}: no such file or directory" in missing.stderr

    text = tmp_path / "notes.txt"
    text.write_text("not an archive\n" * 100)
    not_tar = run("import", str(text), "x")
    assert not_tar.returncode == 2 and f"{text}: not a tar archive" in not_tar.stderr

    zstd = tmp_path / "rootfs.tar.zst"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(64))
    assert "zstd -d" in run("import", str(zstd), "x").stderr

    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(gzip.compress(_raw_tar(tmp_path / "t.tar", "a.txt").read_bytes())[:40])
    cut = run("import", str(truncated), "x")
    assert cut.returncode == 2 and str(truncated) in cut.stderr

    absolute = run("import", str(_raw_tar(tmp_path / "abs.tar", "/etc/passwd")), "x")
    assert absolute.returncode == 2 and "'/etc/passwd' is an absolute path" in absolute.stderr
    escape = run("import", str(_raw_tar(tmp_path / "up.tar", "../../etc/x")), "x")
    assert escape.returncode == 2 and "leaves the root" in escape.stderr
    link = run("import", str(_raw_tar(tmp_path / "ln.tar", "a", link="../x")), "x")
    assert link.returncode == 2 and "hard link target '../x' leaves the root" in link.stderr

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a directory or a tar file" in run("import", str(fifo), "x").stderr
    assert run("import", str(tmp_path), "bad@name").returncode == 2
    platform = run("import", str(tmp_path), "x", "--platform", "linux/vax")
    assert platform.returncode == 2 and "invalid platform 'linux/vax'" in platform.stderr
    assert json.loads(run("images", "--json").stdout) == []


def test_the_api_without_names_stores_an_unnamed_image(rootfs: Path, isolated_cache: Path) -> None:
    with LocalStore(isolated_cache) as store:
        result = import_image(store, rootfs, source_date_epoch=0)
        assert result.names == () and result.source_kind == "directory"
        assert result.entries > 200  # busybox's applet links
        assert ImageStore(store).load(result.digest) == result.image
        assert ImageStore(store).list() == []


# --- builds FROM an imported image ----------------------------------------------------------


def test_build_from_an_imported_directory_and_tar(
    rootfs: Path, tmp_path: Path, isolated_cache: Path
) -> None:
    assert run("import", str(rootfs), "busybox", "-c", BASE_PATH).returncode == 0
    archive = tar_of(rootfs, tmp_path / "rootfs.tgz", "-z")
    assert run("import", str(archive), "tarbox:1", "-c", BASE_PATH).returncode == 0
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "greeting.txt").write_text("hello\n")
    (context / "Dockerfile").write_text(
        "FROM busybox AS one\n"
        "COPY greeting.txt /srv/\n"
        "RUN id -un > /srv/user && cat /srv/greeting.txt | tr a-z A-Z > /srv/loud\n"
        "FROM tarbox:1\n"
        "COPY --from=one /srv/ /srv/\n"
        "RUN test -x /bin/busybox && ls /srv > /srv/listing\n"
    )
    built = run("build", str(context), "-t", "app:1")
    assert built.returncode == 0, built.stdout + built.stderr
    with LocalStore(isolated_cache) as store:
        image = ImageStore(store).load("app:1")
        assert image is not None
        tree = image_tree(store, image, tmp_path / "app")
    assert (tree / "srv" / "loud").read_text() == "HELLO\n"
    assert (tree / "srv" / "user").read_text() == "root\n"
    assert (tree / "srv" / "listing").read_text().split() == [
        "greeting.txt",
        "listing",
        "loud",
        "user",
    ]


def test_build_the_multistage_example(rootfs: Path, tmp_path: Path, isolated_cache: Path) -> None:
    """examples/multistage, as scripts/demo builds it: three stages, then a rebuild that hits
    every step, then a one-line change that reruns the build and test stages."""
    imported = run("import", str(rootfs), "busybox:latest", "-c", BASE_PATH, "-c", 'CMD ["sh"]')
    assert imported.returncode == 0, imported.stderr
    context = tmp_path / "multistage"
    shutil.copytree(EXAMPLES / "multistage", context)
    events = tmp_path / "events.jsonl"

    def build() -> list[str]:
        done = run("build", str(context), "-t", "multistage:demo", "--events", str(events))
        assert done.returncode == 0, done.stdout + done.stderr
        return [json.loads(line)["event"] for line in events.read_text().splitlines()]

    cold = build()
    assert cold.count("StepExecuted") >= 13
    with LocalStore(isolated_cache) as store:
        image = ImageStore(store).load("multistage:demo")
        assert image is not None
        tree = image_tree(store, image, tmp_path / "final")
    assert image.config.entrypoint == ("wordstat",) and image.config.cmd == ("--help",)
    report = (tree / "usr" / "share" / "wordstat" / "test-report.txt").read_text()
    assert report.endswith("all checks passed\n") and "FAIL" not in report
    assert (tree / "usr" / "local" / "bin" / "wordstat").stat().st_mode & 0o111
    assert not (tree / "src").exists()  # the build stage's sources stay in the build stage

    assert build().count("StepExecuted") == 0  # nothing changed: every step cached

    (context / "docs" / "NOTES.md").write_text("edited\n")  # .dockerignore'd: still no rerun
    assert build().count("StepExecuted") == 0
    main = context / "src" / "main.sh"
    main.write_text(main.read_text().replace("n=5\n", "n=3\n"))
    rerun = build()
    assert 0 < rerun.count("StepExecuted") < len(cold)
