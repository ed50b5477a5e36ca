"""COPY and WORKDIR without a rootfs (build/direct.py) give the image the rootfs path gives.

Every Dockerfile here is built twice into one store: once as a user builds it (a stage that has
no rootfs yet writes its COPY and WORKDIR layers straight from the context), and once with
``--no-cache`` and the direct path switched off (the rootfs is unpacked, the copy written into
it, the diff taken). Both final images are unpacked and compared entry by entry: names, types,
modes, owners, file contents and mtimes, symlink targets. Directory mtimes are the one thing
allowed to differ (build/direct.py says why). Each case also says whether the direct path must
have been taken, so that a fallback cannot hide a broken planner and a planner cannot take a
copy it must leave to the rootfs.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from busybox_image import BusyboxImage, image_tree, make_busybox_image, make_busybox_rootfs_dir
from memobuild.build import direct, executor
from memobuild.build.copy import ContextChangedError, CopyFailedError
from memobuild.build.events import BuildEvent, StepStarted
from memobuild.build.executor import BuildResult, build
from memobuild.build.layers import LayerBlob
from memobuild.cache.store import LocalStore

ROOT = os.geteuid() == 0
pytestmark = pytest.mark.skipif(not ROOT, reason="comparing owners needs root")

# A context with what the rules are about: executable bits, nested and empty directories,
# symlinks (to a file, to a directory, dangling), wildcard fodder and files to exclude.
CONTEXT: dict[str, str | None] = {
    "a.txt": "A\n",
    "b.txt": "B\n",
    "run.sh": "#!/bin/sh\necho run\n",  # made executable below
    "notes.md": "notes\n",
    "src/main.py": "print('main')\n",
    "src/util.py": "util\n",
    "src/debug.log": "log\n",
    "src/pkg/mod.py": "mod\n",
    "src/pkg/tool.sh": "#!/bin/sh\n",  # made executable below
    "src/empty/": None,
    "etc/motd": "hello\n",
}
LINKS = {"src/to-a": "../a.txt", "src/to-pkg": "pkg", "src/dangling": "missing"}
EXECUTABLE = ("run.sh", "src/pkg/tool.sh")


def make_ctx(root: Path, dockerfile: str) -> Path:
    root.mkdir(parents=True)
    (root / "Dockerfile").write_text(dockerfile)
    for name, text in CONTEXT.items():
        path = root / name
        if text is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for name in EXECUTABLE:
        os.chmod(root / name, 0o755)  # noqa: S103 - executables in a context are 0755
    for name, target in LINKS.items():
        (root / name).symlink_to(target)
    # Old, distinct mtimes, so that a copy that took "now" instead would show.
    for i, path in enumerate(sorted(root.rglob("*"))):
        os.utime(path, (1_600_000_000 + i, 1_600_000_000 + i), follow_symlinks=False)
    return root


@pytest.fixture
def base(tmp_path: Path, store: LocalStore) -> BusyboxImage:
    """busybox, with a merged-/usr style symlink (``/lib -> usr/lib``) to resolve through."""
    root = make_busybox_rootfs_dir(tmp_path / "base-rootfs")
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "srv").mkdir()
    (root / "srv" / "old.txt").write_text("old\n")
    (root / "conf" / "motd").mkdir(parents=True)
    return make_busybox_image(tmp_path / "base", store, layer_root=root)


class Spy:
    """Counts the layers each path wrote (empty diffs, which store no layer, not counted):
    direct (from the context) and diffed (from a rootfs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.direct = 0
        self.diffed = 0
        write_direct = direct.DirectLayer.write
        write_diff = executor.write_diff_layer

        def counting_direct(
            layer: direct.DirectLayer, out: Path, *, source_date_epoch: int | None
        ) -> LayerBlob:
            self.direct += 1
            return write_direct(layer, out, source_date_epoch=source_date_epoch)

        def counting_diff(*args: object, **kwargs: object) -> LayerBlob:
            blob = write_diff(*args, **kwargs)  # type: ignore[arg-type]
            self.diffed += blob.entries > 0
            return blob

        monkeypatch.setattr(direct.DirectLayer, "write", counting_direct)
        monkeypatch.setattr(executor, "write_diff_layer", counting_diff)


def entries(tree: Path) -> dict[str, tuple[object, ...]]:
    """Every path below ``tree`` with what the comparison looks at."""
    out: dict[str, tuple[object, ...]] = {}
    for current, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            path = Path(current) / name
            st = os.lstat(path)
            rel = str(path.relative_to(tree))
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, st.st_uid, st.st_gid)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path), st.st_uid, st.st_gid, st.st_mtime_ns)
            else:
                data = path.read_bytes()
                out[rel] = ("file", mode, st.st_uid, st.st_gid, st.st_mtime_ns, data)
    return out


def build_both(
    tmp_path: Path,
    store: LocalStore,
    monkeypatch: pytest.MonkeyPatch,
    dockerfile: str,
    on_event: Callable[[BuildEvent], None] | None = None,
    made_by_run: tuple[str, ...] = (),
) -> tuple[BuildResult, BuildResult, Spy]:
    """The direct build (its spy returned) and the rootfs build of ``dockerfile``, compared.
    Files in ``made_by_run`` are written by a RUN, at each build's own time: their mtimes are
    left out of the comparison."""
    context = make_ctx(tmp_path / "ctx", dockerfile)
    spy = Spy(monkeypatch)
    started = time.time_ns() - 1_000_000_000  # file times are whole seconds in a layer
    first = build(context, store=store, on_event=on_event)
    monkeypatch.setattr(direct, "ENABLED", False)
    second = build(context, store=store, no_cache=True)
    monkeypatch.setattr(direct, "ENABLED", True)
    one = entries(image_tree(store, first.image, tmp_path / "direct"))
    two = entries(image_tree(store, second.image, tmp_path / "rootfs"))
    # Files a build makes itself (a RUN's output, a heredoc) carry each build's own time.
    made = [k for k, v in one.items() if v[0] == "file" and int(str(v[4])) >= started]
    for name in {*made_by_run, *made}:
        one[name], two[name] = one[name][:4] + one[name][5:], two[name][:4] + two[name][5:]
    assert one.keys() == two.keys()
    assert {k: v for k, v in one.items() if v != two[k]} == {}
    return first, second, spy


FROM = "FROM busybox\n"

# (Dockerfile after FROM, how many of its layers the direct path must have written)
DIRECT_CASES = [
    ("WORKDIR /app\nCOPY . .\n", 2),
    ("COPY src/ /app/\n", 1),
    ("COPY src /app\n", 1),
    ("COPY a.txt run.sh /dir/\n", 1),
    ("COPY a.txt /renamed.txt\n", 1),
    ("COPY *.txt src/*.py /wild/\n", 1),
    ("COPY src/p* /wild-dirs/\n", 1),
    ("COPY --chown=1000:50 src /owned/\n", 1),
    ("COPY --chown=1000 a.txt /owned-one\n", 1),
    ("COPY --chmod=0640 src /modes/\n", 1),
    ("COPY --chmod=u+x,g-r,o= src run.sh /sym-modes/\n", 1),
    ("COPY --exclude=*.log --exclude=pkg/*.sh src /ex/\n", 1),
    ("COPY --exclude=src --exclude=!src/pkg . /reinclude/\n", 1),
    ("COPY --parents src/pkg/mod.py a.txt /par/\n", 1),
    ("COPY --parents ./src/./pkg/*.sh ./src/*.py /pivot/\n", 1),
    ("COPY --parents src/pkg /pardir\n", 1),
    ("COPY src/to-pkg /followed/\n", 1),
    ("COPY src/to-a /followed-file\n", 1),
    ("WORKDIR /srv/app\nCOPY a.txt ./\n", 2),
    ("WORKDIR /srv\nCOPY src ./\n", 1),  # /srv exists: WORKDIR has nothing to write
    ("COPY a.txt /etc/\n", 1),
    ("COPY a.txt /etc/passwd\n", 1),  # replaces a base file
    ("COPY . /\n", 1),  # merges into /etc, /srv, ... (their metadata from the context)
    ("COPY src/ /app/\nCOPY notes.md /app/src-notes\nCOPY etc /app/\n", 3),
    ("ADD a.txt src /added/\n", 1),
    ("WORKDIR /w\nCOPY --link a.txt .\n", 2),
    ("COPY src /app/\nCOPY a.txt /app/pkg\n", 2),  # into the directory a copy made
]


@pytest.mark.parametrize(("body", "direct_layers"), DIRECT_CASES, ids=[c[0] for c in DIRECT_CASES])
def test_a_direct_copy_gives_the_rootfs_result(
    tmp_path: Path,
    store: LocalStore,
    base: BusyboxImage,
    monkeypatch: pytest.MonkeyPatch,
    body: str,
    direct_layers: int,
) -> None:
    first, second, spy = build_both(tmp_path, store, monkeypatch, FROM + body)
    assert spy.direct == direct_layers
    assert spy.diffed == direct_layers  # the second build wrote the same layers from a rootfs
    assert [s.key for s in first.steps] == [s.key for s in second.steps]


# (Dockerfile after FROM, layers the direct path may write before it has to stop)
FALLBACK_CASES = [
    ("COPY a.txt /lib/\n", 0),  # /lib is a symlink in the base
    ("COPY src /lib/x/\n", 0),
    ("WORKDIR /lib/app\n", 0),
    ("COPY a.txt /bin/sh\n", 0),  # the destination is a symlink (to busybox)
    ("COPY src /app/\nCOPY a.txt /app/to-pkg/\n", 1),  # a symlink this build copied
    ("COPY --chown=app src /named/\n", 0),  # a user name needs /etc/passwd
    ("USER app\nWORKDIR /home/app/w\n", 0),
    ("COPY <<EOF /heredoc.txt\nhello\nEOF\n", 0),
    ("COPY --from=busybox /etc/passwd /from-image\n", 0),
]


@pytest.mark.parametrize(
    ("body", "direct_layers"), FALLBACK_CASES, ids=[c[0] for c in FALLBACK_CASES]
)
def test_a_copy_the_layers_cannot_prove_takes_the_rootfs_path(
    tmp_path: Path,
    store: LocalStore,
    base: BusyboxImage,
    monkeypatch: pytest.MonkeyPatch,
    body: str,
    direct_layers: int,
) -> None:
    _, _, spy = build_both(tmp_path, store, monkeypatch, FROM + body)
    assert spy.direct == direct_layers
    assert spy.diffed > direct_layers  # the first build had to diff a rootfs too


ERROR_CASES = [
    ("COPY src/ /srv/old.txt/\n", "/srv/old.txt is not a directory"),
    ("COPY etc /conf/\n", "cannot replace directory /conf/motd with a file"),
    ("COPY src /srv/old.txt/x/\n", "/srv/old.txt is not a directory"),
]


@pytest.mark.parametrize(("body", "message"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_a_copy_the_rootfs_refuses_fails_as_it_does(
    tmp_path: Path,
    store: LocalStore,
    base: BusyboxImage,
    monkeypatch: pytest.MonkeyPatch,
    body: str,
    message: str,
) -> None:
    context = make_ctx(tmp_path / "ctx", FROM + body)
    spy = Spy(monkeypatch)
    with pytest.raises(CopyFailedError) as direct_error:
        build(context, store=store)
    monkeypatch.setattr(direct, "ENABLED", False)
    with pytest.raises(CopyFailedError) as rootfs_error:
        build(context, store=store)
    assert str(direct_error.value) == str(rootfs_error.value)
    assert message in str(rootfs_error.value)
    assert spy.direct == 0


def test_a_later_run_sees_what_a_direct_copy_wrote(
    tmp_path: Path, store: LocalStore, base: BusyboxImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _, spy = build_both(
        tmp_path,
        store,
        monkeypatch,
        FROM + "WORKDIR /app\nCOPY . .\nRUN cat a.txt src/to-a > both.txt && ls src > ls.txt\n",
        made_by_run=("app/both.txt", "app/ls.txt"),
    )
    assert spy.direct == 2  # WORKDIR and COPY; the RUN unpacked them like cached layers
    tree = image_tree(store, first.image, tmp_path / "check")
    assert (tree / "app" / "both.txt").read_text() == "A\nA\n"
    assert (tree / "app" / "ls.txt").read_text().split() == [
        "dangling",
        "debug.log",
        "empty",
        "main.py",
        "pkg",
        "to-a",
        "to-pkg",
        "util.py",
    ]


def test_a_copy_after_a_cached_step_is_still_direct(
    tmp_path: Path, store: LocalStore, base: BusyboxImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = make_ctx(tmp_path / "ctx", FROM + "WORKDIR /app\nCOPY src/ ./src/\nCOPY a.txt .\n")
    build(context, store=store)
    (context / "a.txt").write_text("changed\n")
    spy = Spy(monkeypatch)
    result = build(context, store=store)
    assert result.executed == 1
    assert spy.direct == 1 and spy.diffed == 0
    tree = image_tree(store, result.image, tmp_path / "tree")
    assert (tree / "app" / "a.txt").read_text() == "changed\n"
    assert (tree / "app" / "src" / "pkg" / "mod.py").read_text() == "mod\n"


def test_a_context_file_edited_during_the_build_stops_it(
    tmp_path: Path, store: LocalStore, base: BusyboxImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = make_ctx(tmp_path / "ctx", FROM + "COPY src /app/\n")
    spy = Spy(monkeypatch)

    def edit(event: BuildEvent) -> None:
        if isinstance(event, StepStarted) and event.text.startswith("COPY"):
            (context / "src" / "pkg" / "mod.py").write_text("edited after planning\n")

    with pytest.raises(ContextChangedError, match=r":2: COPY: src/pkg/mod.py in the build context"):
        build(context, store=store, on_event=edit)
    assert spy.direct == 1


def test_a_context_file_deleted_during_the_build_stops_it(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_ctx(tmp_path / "ctx", FROM + "COPY src /app/\n")

    def delete(event: BuildEvent) -> None:
        if isinstance(event, StepStarted) and event.text.startswith("COPY"):
            (context / "src" / "util.py").unlink()

    with pytest.raises(ContextChangedError, match=r":2: COPY: src/util.py in the build context"):
        build(context, store=store, on_event=delete)


def test_directories_a_direct_copy_creates_get_the_build_time(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_ctx(tmp_path / "ctx", FROM + "COPY a.txt /new/deep/\n")
    before = time.time()
    result = build(context, store=store)
    tree = image_tree(store, result.image, tmp_path / "tree")
    for name in ("new", "new/deep"):
        assert os.lstat(tree / name).st_mtime >= int(before)
    assert (
        os.lstat(tree / "new" / "deep" / "a.txt").st_mtime == os.lstat(context / "a.txt").st_mtime
    )
