"""Build outputs (``--output``): real multi-stage builds exported as OCI layouts, docker save
archives, root filesystem trees and tars, checked with real clients (skopeo, umoci, buildah)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from busybox_image import make_busybox_image, make_context
from memobuild.build.executor import BuildResult, build
from memobuild.build.outputs import OutputResult, OutputSpec, export_output, parse_output
from memobuild.cache.store import LocalStore
from memobuild.errors import InputError, StorageError
from memobuild.images import ImageStore
from memobuild.oci.docker_archive import read_docker_archive
from memobuild.oci.image import config_json, encode_image
from memobuild.oci.layout import read_oci_layout

EPOCH = 1700000000
CREATED = "2023-11-14T22:13:20Z"

# Two stages; the final one sets every field of the image config, deletes base files
# (whiteouts), changes owners and modes, and makes a symlink, a hard link and a fifo.
DOCKERFILE = """\
FROM busybox AS tools
WORKDIR /src
COPY app.sh .
RUN mkdir -p /out/bin && cp app.sh /out/bin/app && chmod 0755 /out/bin/app \\
 && ln -s app /out/bin/app-link && echo data > /out/data.txt

FROM busybox
LABEL org.opencontainers.image.title=demo version=1.0
ENV APP_HOME=/srv/app MODE=prod
WORKDIR /srv/app
COPY --from=tools /out/ ./
RUN rm /bin/vi && rm -rf /root && mkdir -p /var/lib/app && chown 1000:1000 /var/lib/app \\
 && chmod 0750 /var/lib/app && ln data.txt data-hard.txt && chmod 0640 data.txt \\
 && mkfifo fifo
USER app
EXPOSE 8080 53/udp
VOLUME /var/lib/app
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --retries=2 CMD ["/srv/app/bin/app", "health"]
ONBUILD RUN echo child
SHELL ["/bin/sh", "-ec"]
ENTRYPOINT ["/srv/app/bin/app"]
CMD ["serve"]
"""
FILES = {"app.sh": '#!/bin/sh\necho app "$@"\n'}


def run(*command: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result


def skopeo_json(*args: str) -> dict[str, object]:
    value = json.loads(run("skopeo", *args).stdout)
    assert isinstance(value, dict)
    return value


def build_demo(workdir: Path, store: LocalStore, **kwargs: object) -> BuildResult:
    make_busybox_image(workdir / "base", store)
    context = make_context(workdir / "ctx", DOCKERFILE, FILES)
    return build(
        context,
        store=store,
        build_args={"SOURCE_DATE_EPOCH": str(EPOCH)},
        **kwargs,  # type: ignore[arg-type]
    )


class Demo:
    """The demo image, built once for the module, and a way to export it."""

    def __init__(self, result: BuildResult, store: LocalStore) -> None:
        self.result = result
        self.image = result.image
        self.store = store

    def export(self, value: str, tags: tuple[str, ...] = ()) -> OutputResult:
        return export_output(parse_output(value), self.image, self.store, tags=tags)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    workdir = tmp_path_factory.mktemp("demo")
    with LocalStore(workdir / "cache") as store:
        yield Demo(build_demo(workdir, store), store)


# --- comparing file trees ---------------------------------------------------------------------

Entry = tuple[str, int, int, int, str]  # kind, mode bits, uid, gid, content digest / link target


def tree_entries(root: Path) -> dict[str, Entry]:
    """Every path below ``root`` with what a container would see of it."""
    out: dict[str, Entry] = {}
    for current, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(current) / name
            info = path.lstat()
            mode = info.st_mode
            if stat.S_ISLNK(mode):
                kind, what = "symlink", os.readlink(path)
            elif stat.S_ISDIR(mode):
                kind, what = "dir", ""
            elif stat.S_ISREG(mode):
                kind, what = "file", hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISFIFO(mode):
                kind, what = "fifo", ""
            else:
                kind, what = f"other {stat.S_IFMT(mode):o}", ""
            out[path.relative_to(root).as_posix()] = (
                kind,
                stat.S_IMODE(mode),
                info.st_uid,
                info.st_gid,
                what,
            )
    return out


def tar_entries(path: Path) -> tuple[list[str], dict[str, Entry]]:
    """The member names of a tar in order, and each path as :func:`tree_entries` gives it
    (a hard link has the content of the file it links to)."""
    names: list[str] = []
    out: dict[str, Entry] = {}
    contents: dict[str, str] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            names.append(member.name)
            name = member.name.rstrip("/")
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                contents[name] = hashlib.sha256(extracted.read()).hexdigest()
                kind, what = "file", contents[name]
            elif member.islnk():
                kind, what = "file", contents[member.linkname]
            elif member.issym():
                kind, what = "symlink", member.linkname
            elif member.isdir():
                kind, what = "dir", ""
            elif member.isfifo():
                kind, what = "fifo", ""
            else:
                kind, what = f"other {member.type!r}", ""
            out[name] = (kind, member.mode & 0o7777, member.uid, member.gid, what)
    return names, out


# --- parse_output -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("out", OutputSpec("local", Path("out"))),
        ("./dist/rootfs", OutputSpec("local", Path("dist/rootfs"))),
        ("build=1", OutputSpec("local", Path("build=1"))),  # buildx: a path, not a key
        ("type=local,dest=out", OutputSpec("local", Path("out"))),
        ("type=tar,dest=rootfs.tar", OutputSpec("tar", Path("rootfs.tar"))),
        ("type=oci,dest=out.tar", OutputSpec("oci", Path("out.tar"))),
        (
            "TYPE=oci,Dest=out,name=app:1.0,tar=false",
            OutputSpec("oci", Path("out"), "app:1.0", (("tar", "false"),)),
        ),
        (
            'type=docker,dest=img.tar,"name=app:1.0,registry.example.com/team/app:2"',
            OutputSpec("docker", Path("img.tar"), "app:1.0,registry.example.com/team/app:2"),
        ),
        (
            "type=docker,dest=img.tar,compression=gzip",
            OutputSpec("docker", Path("img.tar"), None, (("compression", "gzip"),)),
        ),
    ],
)
def test_parse_output_reads_buildkit_syntax(value: str, expected: OutputSpec) -> None:
    assert parse_output(value) == expected


def test_output_spec_names_and_tar_choice() -> None:
    spec = parse_output('type=docker,dest=img.tar,"name=app:1.0, web"')
    assert spec.names == ("app:1.0", "web")
    assert spec.as_tar
    assert parse_output("type=oci,dest=out.tar").as_tar
    assert not parse_output("type=oci,dest=out").as_tar
    assert parse_output("type=oci,dest=out,tar=true").as_tar
    assert not parse_output("type=oci,dest=out.tar,tar=0").as_tar
    assert not parse_output("out").as_tar
    # str() gives a spelling that parses back to the same spec.
    assert parse_output(str(spec)) == spec
    # type=image goes by name; type=registry is type=image,push=true, as in buildx.
    pushed = parse_output('type=image,"name=r.example.com/a:1,r.example.com/b",push=true')
    assert pushed == OutputSpec(
        "image", None, "r.example.com/a:1,r.example.com/b", (("push", "true"),)
    )
    assert pushed.push and pushed.names == ("r.example.com/a:1", "r.example.com/b")
    assert parse_output("type=registry,name=r.example.com/a:1").push
    assert not parse_output("type=registry,name=r.example.com/a:1,push=false").push
    assert not parse_output("type=image,name=app:1").push
    assert parse_output(str(pushed)) == pushed
    with pytest.raises(InputError, match="has no dest"):
        _ = pushed.path


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("-", "standard output"),
        ("dest=out", "type= is required"),
        ("type=image,dest=out", "type=image has no dest=: it saves the image under name="),
        ("type=registry,dest=out,name=r.example.com/a", "type=registry has no dest="),
        ("type=image,name=r.example.com/a,push=maybe", "push='maybe' must be true or false"),
        ("type=image,name=r.example.com/a@sha256:" + "0" * 64, "names a tag, not a digest"),
        ("type=image,name=Not/Valid", "repository name must be lowercase"),
        (
            "type=image,name=a,tar=true",
            r"unknown key 'tar' for type=image \(it takes name=, push=\)",
        ),
        ("type=cacheonly", "every build already fills the cache"),
        ("type=zip,dest=out", "unknown type 'zip'"),
        ("type=oci", "dest= is required"),
        ("type=docker,dest=", "dest= is required"),
        ("type=tar,dest=-", "standard output"),
        ("type=local,dest=out,name=app", "name= names an image"),
        ("type=local,dest=out,mode=delete", "unknown key 'mode' for type=local"),
        ("type=oci,dest=out,push=true", r"unknown key 'push' for type=oci \(it takes"),
        ("type=docker,dest=out,tar=false", "unknown key 'tar' for type=docker"),
        ("type=oci,dest=out,tar=maybe", "tar='maybe' must be true or false"),
        ("type=oci,dest=out,compression=zstd", "MemoBuild writes gzip layers"),
        ("type=oci,dest=out,dest=other", "dest= is given twice"),
        ("type=oci,dest=out,oops", "'oops' is not key=value"),
        ("type=docker,dest=x.tar,name=Not Valid", "invalid image name"),
        ("type=docker,dest=x.tar,name=app@sha256:" + "0" * 64, "a digest names content"),
        ("type=oci,dest=x,name=", "name= is empty"),
    ],
)
def test_parse_output_errors_name_the_flag_value(value: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        parse_output(value)
    assert f"--output {value!r}" in str(caught.value)


# --- the image config ----------------------------------------------------------------------------


def test_the_image_config_carries_every_field(tmp_path: Path, demo: Demo) -> None:
    out = demo.export(f"type=oci,dest={tmp_path / 'oci'},name=demo:1.0")
    raw = run("skopeo", "inspect", "--config", "--raw", f"oci:{tmp_path / 'oci'}:1.0").stdout
    assert raw.encode() == config_json(demo.image)  # skopeo reads the very bytes we wrote
    config = json.loads(raw)
    assert config["created"] == CREATED
    assert config["rootfs"] == {"type": "layers", "diff_ids": list(demo.image.diff_ids)}
    assert config["config"] == {
        "User": "app",
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "APP_HOME=/srv/app",
            "MODE=prod",
        ],
        "Entrypoint": ["/srv/app/bin/app"],
        "Cmd": ["serve"],
        "WorkingDir": "/srv/app",
        "ExposedPorts": {"53/udp": {}, "8080/tcp": {}},
        "Volumes": {"/var/lib/app": {}},
        "Labels": {"org.opencontainers.image.title": "demo", "version": "1.0"},
        "StopSignal": "SIGTERM",
        "Healthcheck": {
            "Test": ["CMD", "/srv/app/bin/app", "health"],
            "Interval": 30_000_000_000,
            "Timeout": 3_000_000_000,
            "Retries": 2,
        },
        "OnBuild": ["RUN echo child"],
        "Shell": ["/bin/sh", "-ec"],
    }
    history = config["history"]
    created_by = [h["created_by"] for h in history]
    assert created_by[1:] == [
        "LABEL org.opencontainers.image.title=demo version=1.0",
        "ENV APP_HOME=/srv/app MODE=prod",
        "WORKDIR /srv/app",
        "COPY --from=tools /out/ ./ # buildkit",
        "RUN /bin/sh -c rm /bin/vi && rm -rf /root && mkdir -p /var/lib/app && chown 1000:1000 "
        "/var/lib/app  && chmod 0750 /var/lib/app && ln data.txt data-hard.txt && chmod 0640 "
        "data.txt  && mkfifo fifo # buildkit",
        "USER app",
        "EXPOSE map[53/udp:{} 8080/tcp:{}]",
        "VOLUME [/var/lib/app]",
        "STOPSIGNAL SIGTERM",
        created_by[10],  # HEALTHCHECK: checked below
        "ONBUILD RUN echo child",
        "SHELL [/bin/sh -ec]",
        'ENTRYPOINT ["/srv/app/bin/app"]',
        'CMD ["serve"]',
    ]
    assert created_by[10].startswith("HEALTHCHECK")
    assert {h["created"] for h in history[1:]} == {CREATED}
    # One history entry per layer, the others marked empty.
    assert sum(1 for h in history if not h.get("empty_layer")) == len(demo.image.layers)
    assert out.digest == demo.result.digest


# --- type=oci ---------------------------------------------------------------------------------


def test_oci_layout_directory_and_tar_are_read_by_skopeo(tmp_path: Path, demo: Demo) -> None:
    layers = [layer.digest for layer in demo.image.layers]
    directory = demo.export(f"type=oci,dest={tmp_path / 'oci'}", tags=("demo:1.0",))
    assert directory == OutputResult(
        "oci", str(tmp_path / "oci"), demo.result.digest, directory.bytes
    )
    blobs = tmp_path / "oci" / "blobs" / "sha256"
    assert directory.bytes == sum(p.stat().st_size for p in blobs.iterdir()) + sum(
        (tmp_path / "oci" / name).stat().st_size for name in ("index.json", "oci-layout")
    )
    info = skopeo_json("inspect", f"oci:{tmp_path / 'oci'}:1.0")
    assert info["Digest"] == demo.result.digest
    assert info["Layers"] == layers
    assert info["Created"] == CREATED
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    assert [m["annotations"] for m in index["manifests"]] == [
        {
            "io.containerd.image.name": "docker.io/library/demo:1.0",
            "org.opencontainers.image.ref.name": "1.0",
        }
    ]

    archive = demo.export(f"type=oci,dest={tmp_path / 'image.tar'},name=demo:1.0")
    assert archive.bytes == (tmp_path / "image.tar").stat().st_size
    assert archive.digest == demo.result.digest
    info = skopeo_json("inspect", f"oci-archive:{tmp_path / 'image.tar'}:1.0")
    assert info["Digest"] == demo.result.digest
    assert info["Layers"] == layers
    # tar=true makes a tar whatever the name; tar=false a directory.
    demo.export(f"type=oci,dest={tmp_path / 'image.oci'},tar=true")
    assert tarfile.is_tarfile(tmp_path / "image.oci")
    demo.export(f"type=oci,dest={tmp_path / 'dir.tar'},tar=false")
    assert (tmp_path / "dir.tar" / "index.json").is_file()


def test_skopeo_copy_of_the_oci_layout_keeps_every_digest(tmp_path: Path, demo: Demo) -> None:
    demo.export(f"type=oci,dest={tmp_path / 'oci'},name=demo:1.0")
    demo.export(f"type=oci,dest={tmp_path / 'oci.tar'},name=demo:1.0")
    run("skopeo", "copy", f"oci:{tmp_path / 'oci'}:1.0", f"oci:{tmp_path / 'copy'}:copied")
    run("skopeo", "copy", f"oci-archive:{tmp_path / 'oci.tar'}:1.0", f"dir:{tmp_path / 'dir'}")
    copied = skopeo_json("inspect", f"oci:{tmp_path / 'copy'}:copied")
    assert copied["Digest"] == demo.result.digest
    manifest = (tmp_path / "dir" / "manifest.json").read_bytes()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == demo.result.digest
    # The copy reads back as the very image, layers verified against their digests.
    with LocalStore(tmp_path / "fresh") as fresh:
        assert read_oci_layout(tmp_path / "copy", "copied", fresh) == demo.image


def test_an_oci_directory_keeps_other_images_and_names(tmp_path: Path, demo: Demo) -> None:
    dest = tmp_path / "oci"
    demo.export(f"type=oci,dest={dest},name=app:1.0")
    demo.export(f"type=oci,dest={dest},name=web:1.0")
    demo.export(f"type=oci,dest={dest},name=app:1.0")  # replaces its own entry
    index = json.loads((dest / "index.json").read_text())
    names = [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]
    assert names == ["docker.io/library/web:1.0", "docker.io/library/app:1.0"]


# --- type=docker ------------------------------------------------------------------------------


def test_docker_archive_is_a_docker_save_archive(tmp_path: Path, demo: Demo) -> None:
    dest = tmp_path / "image.tar"
    out = demo.export(f'type=docker,dest={dest},"name=demo:1.0,registry.example.com/team/demo"')
    assert out.digest == demo.result.digest
    assert out.bytes == dest.stat().st_size
    encoded = encode_image(demo.image)
    with tarfile.open(dest) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        repositories = json.loads(tar.extractfile("repositories").read())  # type: ignore[union-attr]
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert names == sorted(names, key=lambda n: (not n.endswith("/"), n))
    top = demo.image.layers[-1].digest.split(":")[1]
    assert manifest == [
        {
            "Config": "blobs/sha256/" + encoded.config_digest.split(":")[1],
            "RepoTags": ["demo:1.0", "registry.example.com/team/demo:latest"],
            "Layers": ["blobs/sha256/" + layer.digest.split(":")[1] for layer in demo.image.layers],
        }
    ]
    assert repositories == {"demo": {"1.0": top}, "registry.example.com/team/demo": {"latest": top}}
    assert [m["digest"] for m in index["manifests"]] == [demo.result.digest] * 2
    # MemoBuild's own reader takes it back, by either name.
    with LocalStore(tmp_path / "fresh") as fresh:
        assert read_docker_archive(dest, fresh, "registry.example.com/team/demo") == demo.image


def test_skopeo_reads_and_copies_the_docker_archive(tmp_path: Path, demo: Demo) -> None:
    dest = tmp_path / "image.tar"
    demo.export(f"type=docker,dest={dest}", tags=("demo:1.0",))
    encoded = encode_image(demo.image)
    for ref in (f"docker-archive:{dest}", f"docker-archive:{dest}:demo:1.0"):
        info = skopeo_json("inspect", ref)
        # docker-archive: serves the layers uncompressed, so skopeo names them by diff_id.
        assert info["Layers"] == list(demo.image.diff_ids)
        assert info["Env"] == list(demo.image.config.env or ())
        raw = run("skopeo", "inspect", "--config", "--raw", ref).stdout
        assert raw.encode() == encoded.config
    # The archive is an OCI layout too (Docker 25+ save format).
    assert skopeo_json("inspect", f"oci-archive:{dest}:1.0")["Digest"] == demo.result.digest
    # Copied as it is (dir: keeps docker's manifest), the config is the very blob built and
    # every layer is served as the tar its diff_id names.
    run("skopeo", "copy", f"docker-archive:{dest}:demo:1.0", f"dir:{tmp_path / 'dir'}")
    manifest = json.loads((tmp_path / "dir" / "manifest.json").read_text())
    assert manifest["config"]["digest"] == encoded.config_digest
    assert [layer["digest"] for layer in manifest["layers"]] == list(demo.image.diff_ids)
    for layer in manifest["layers"]:
        blob = (tmp_path / "dir" / layer["digest"].split(":")[1]).read_bytes()
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
    # Copied into an OCI layout, skopeo rewrites the config as an OCI one (dropping Docker's
    # Healthcheck, OnBuild and Shell) and recompresses the layers; the content stays the same.
    run("skopeo", "copy", f"docker-archive:{dest}:demo:1.0", f"oci:{tmp_path / 'copy'}:c")
    with LocalStore(tmp_path / "fresh") as fresh:
        copied = read_oci_layout(tmp_path / "copy", "c", fresh)
    assert copied.diff_ids == demo.image.diff_ids
    assert copied.config.env == demo.image.config.env
    assert copied.config.entrypoint == demo.image.config.entrypoint


@pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed")
def test_buildah_loads_the_docker_archive_as_podman_load_does(tmp_path: Path, demo: Demo) -> None:
    dest = tmp_path / "image.tar"
    demo.export(f"type=docker,dest={dest},name=demo:1.0")
    storage = ["--root", str(tmp_path / "root"), "--runroot", str(tmp_path / "run")]
    storage += ["--storage-driver", "vfs"]
    image_id = run("buildah", *storage, "pull", "-q", f"docker-archive:{dest}").stdout.strip()
    # An image's ID is its config digest: the same image that was built.
    assert "sha256:" + image_id == encode_image(demo.image).config_digest
    listed = run("buildah", *storage, "images", "--format", "{{.Name}}:{{.Tag}}").stdout
    assert "demo:1.0" in listed


# --- type=local and type=tar ------------------------------------------------------------------


def test_umoci_unpack_gives_the_same_tree_as_type_local(tmp_path: Path, demo: Demo) -> None:
    demo.export(f"type=oci,dest={tmp_path / 'oci'},name=demo:1.0")
    command = ["umoci", "unpack", "--image", f"{tmp_path / 'oci'}:1.0", str(tmp_path / "bundle")]
    if os.geteuid() != 0:
        command.insert(2, "--rootless")
    run(*command)
    out = demo.export(str(tmp_path / "local"))
    assert out == OutputResult("local", str(tmp_path / "local"), None, out.bytes)
    local = tree_entries(tmp_path / "local")
    assert local == tree_entries(tmp_path / "bundle" / "rootfs")
    # What the Dockerfile did is all there: whiteouts applied, owners, modes and links kept.
    assert "bin/vi" not in local and "root" not in local and "bin/sh" in local
    if os.geteuid() == 0:  # as root, owners are kept
        assert local["var/lib/app"][:4] == ("dir", 0o750, 1000, 1000)
    assert local["srv/app/bin/app-link"][::4] == ("symlink", "app")
    assert local["srv/app/data.txt"] == local["srv/app/data-hard.txt"]
    assert local["srv/app/data.txt"][1] == 0o640
    assert local["srv/app/fifo"][0] == "fifo"
    assert (tmp_path / "local" / "srv/app/data.txt").stat().st_nlink == 2
    assert out.bytes == sum(
        (tmp_path / "local" / path).stat().st_size
        for path, entry in local.items()
        if entry[0] == "file"
    )
    # SOURCE_DATE_EPOCH: every path has its time, as BuildKit's local exporter gives it.
    times = {(tmp_path / "local" / p).lstat().st_mtime for p in local}
    assert times == {EPOCH}


def test_type_tar_holds_the_type_local_tree(tmp_path: Path, demo: Demo) -> None:
    demo.export(str(tmp_path / "local"))
    out = demo.export(f"type=tar,dest={tmp_path / 'rootfs.tar'}")
    assert out == OutputResult("tar", str(tmp_path / "rootfs.tar"), None, out.bytes)
    assert out.bytes == (tmp_path / "rootfs.tar").stat().st_size
    names, entries = tar_entries(tmp_path / "rootfs.tar")
    assert entries == tree_entries(tmp_path / "local")
    assert not any(n.startswith(("/", "./")) for n in names)
    with tarfile.open(tmp_path / "rootfs.tar") as tar:
        assert {m.mtime for m in tar} == {EPOCH}


def test_type_local_writes_into_a_non_empty_directory(tmp_path: Path, demo: Demo) -> None:
    dest = tmp_path / "dest"
    (dest / "bin").mkdir(parents=True)
    (dest / "keep.txt").write_text("mine\n")
    (dest / "bin" / "vi").write_text("the user's, not the image's\n")
    (dest / "etc").write_text("a file where the image has a directory\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "srv").symlink_to(outside)  # replaced, never written through
    demo.export(f"type=local,dest={dest}")
    assert (dest / "keep.txt").read_text() == "mine\n"
    # The image's whiteout of /bin/vi deletes only the image's own file, never the user's.
    assert (dest / "bin" / "vi").read_text() == "the user's, not the image's\n"
    assert (dest / "bin" / "sh").is_symlink()
    assert (dest / "etc" / "passwd").is_file()
    assert not (dest / "srv").is_symlink() and (dest / "srv" / "app" / "data.txt").is_file()
    assert list(outside.iterdir()) == []
    assert not any(p.name.startswith(".memobuild-export-") for p in dest.iterdir())
    demo.export(str(tmp_path / "fresh"))
    expected = tree_entries(tmp_path / "fresh")
    got = tree_entries(dest)
    assert {k: v for k, v in got.items() if k in expected} == expected
    assert set(got) - set(expected) == {"keep.txt", "bin/vi"}


def test_an_image_without_layers_exports_empty_filesystems(tmp_path: Path) -> None:
    context = make_context(tmp_path / "ctx", 'FROM scratch\nCMD ["/app"]\n')
    with LocalStore(tmp_path / "cache") as store:
        image = build(context, store=store).image
        assert image.layers == ()
        outputs = [
            export_output(parse_output(value), image, store, tags=("empty:1",))
            for value in (
                f"type=docker,dest={tmp_path / 'image.tar'}",
                f"type=tar,dest={tmp_path / 'rootfs.tar'}",
                str(tmp_path / "rootfs"),
            )
        ]
    assert skopeo_json("inspect", f"docker-archive:{tmp_path / 'image.tar'}")["Layers"] == []
    with tarfile.open(tmp_path / "rootfs.tar") as tar:
        assert tar.getnames() == []
    assert list((tmp_path / "rootfs").iterdir()) == []
    assert [o.bytes for o in outputs[1:]] == [(tmp_path / "rootfs.tar").stat().st_size, 0]


# --- determinism and errors -------------------------------------------------------------------


def test_two_clean_builds_give_byte_identical_outputs(tmp_path: Path, demo: Demo) -> None:
    with LocalStore(tmp_path / "cache") as store:
        again = build_demo(tmp_path, store)
        assert again.executed > 0  # a clean store: every step ran again
        assert encode_image(again.image) == encode_image(demo.image)
        for kind, name in (("oci", "oci.tar"), ("docker", "docker.tar"), ("tar", "rootfs.tar")):
            spec = f"type={kind},dest={tmp_path / 'two' / name}"
            export_output(parse_output(spec), again.image, store, tags=("demo:1.0",))
            demo.export(f"type={kind},dest={tmp_path / 'one' / name}", tags=("demo:1.0",))
            one = (tmp_path / "one" / name).read_bytes()
            assert one == (tmp_path / "two" / name).read_bytes(), name


@pytest.mark.parametrize(
    "value",
    [
        "type=oci,dest={blocked}/oci",
        "type=oci,dest={blocked}/oci.tar",
        "type=docker,dest={blocked}/image.tar",
        "type=local,dest={blocked}/rootfs",
        "type=tar,dest={blocked}/rootfs.tar",
        "type=docker,dest={directory}",
        "type=tar,dest={directory}",
        "type=local,dest={blocked}",
    ],
)
def test_a_destination_that_cannot_be_written_is_one_clear_error(
    tmp_path: Path, demo: Demo, value: str
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory\n")
    directory = tmp_path / "a-dir"
    directory.mkdir()
    spec = parse_output(value.format(blocked=blocked, directory=directory))
    with pytest.raises(StorageError) as caught:
        export_output(spec, demo.image, demo.store)
    message = str(caught.value)
    assert message.startswith(f"output type={spec.type}: ")
    assert str(blocked if "blocked" in value else directory) in message
    assert "\n" not in message
    # Nothing half-written is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir", "a-file"]
    assert list(directory.iterdir()) == []


def test_an_oci_destination_that_is_another_directory_is_refused(
    tmp_path: Path, demo: Demo
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.c").write_text("int main;\n")
    with pytest.raises(InputError, match="not empty and not an OCI layout"):
        demo.export(f"type=oci,dest={tmp_path / 'src'}")
    assert [p.name for p in (tmp_path / "src").iterdir()] == ["main.c"]


# --- through the build ------------------------------------------------------------------------


def test_build_writes_its_outputs(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "cache") as store:
        result = build_demo(
            tmp_path,
            store,
            tags=("demo:1.0",),
            outputs=(
                f"type=oci,dest={tmp_path / 'oci.tar'}",
                parse_output(f"type=docker,dest={tmp_path / 'docker.tar'}"),
                str(tmp_path / "rootfs"),
            ),
        )
    assert [(o.type, o.dest, o.digest) for o in result.outputs] == [
        ("oci", str(tmp_path / "oci.tar"), result.digest),
        ("docker", str(tmp_path / "docker.tar"), result.digest),
        ("local", str(tmp_path / "rootfs"), None),
    ]
    assert skopeo_json("inspect", f"oci-archive:{tmp_path / 'oci.tar'}:1.0")["Digest"] == (
        result.digest
    )
    assert skopeo_json("inspect", f"docker-archive:{tmp_path / 'docker.tar'}:demo:1.0")[
        "Layers"
    ] == list(result.image.diff_ids)
    assert (tmp_path / "rootfs" / "srv" / "app" / "bin" / "app").is_file()


def test_a_bad_output_fails_the_build_before_any_step_runs(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "cache") as store, pytest.raises(InputError, match="--output"):
        build_demo(tmp_path, store, outputs=("type=zip,dest=out",))
    with LocalStore(tmp_path / "cache") as store:
        assert list(store.root.glob("actions/*/*")) == []


def test_type_image_saves_the_image_under_its_names(tmp_path: Path, demo: Demo) -> None:
    out = demo.export("type=image,name=registry.example.com/team/demo:2")
    assert out == OutputResult("image", "registry.example.com/team/demo:2", demo.result.digest, 0)
    images = ImageStore(demo.store)
    assert images.resolve_digest("registry.example.com/team/demo:2") == demo.result.digest
    tagged = demo.export("type=image", tags=("demo-tag:3",))  # no name=: the -t names
    assert tagged.dest == "demo-tag:3" and tagged.pushed == ()
    assert images.load("demo-tag:3") == demo.image
    with pytest.raises(InputError, match="give the image a name"):
        demo.export("type=image")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outputs": ("type=image",)}, "give the image a name"),
        ({"outputs": ("type=registry",)}, "give the image a name"),
        ({"push": True}, "--push needs -t NAME"),
        ({"push": True, "tags": ("r.example.com/a@sha256:" + "0" * 64,)}, "not a digest"),
        ({"pull": "sometimes"}, "--pull=sometimes: expected missing"),
        ({"platform": "linux/"}, "--platform: invalid platform 'linux/'"),
        ({"insecure_registries": ("http://r.example.com",)}, "without a scheme"),
    ],
)
def test_registry_options_are_checked_before_any_step_runs(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with LocalStore(tmp_path / "cache") as store, pytest.raises(InputError, match=message):
        build_demo(tmp_path, store, **kwargs)
    with LocalStore(tmp_path / "cache") as store:
        assert list(store.root.glob("actions/*/*")) == []
