"""The executor, through real builds: a busybox base image, real sandboxed RUN steps, real layers.

Every test builds Dockerfiles on the small busybox image of ``tests/busybox_image.py`` in its
own cache dir and looks at what a user would: which steps ran, the image's filesystem and config,
what the store holds, and what is left on disk.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import http.server
import io
import os
import shlex
import signal
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from busybox_image import (
    BusyboxImage,
    image_tree,
    layer_bytes,
    layer_members,
    make_busybox_image,
    make_busybox_rootfs_dir,
    make_context,
    scratch_entries,
)
from memobuild.build import rootfs as rootfs_module
from memobuild.build.base import BaseResolver
from memobuild.build.events import BuildEvent, StepExecuted, StepOutput, StepStarted
from memobuild.build.executor import NOT_USABLE_REASON, BuildResult, build
from memobuild.build.planning import plan_build
from memobuild.build.rootfs import ScratchArea
from memobuild.cache.entries import LayerRef
from memobuild.cache.store import LocalStore
from memobuild.dockerfile.stages import host_platform
from memobuild.errors import BuildStepError, ImageNotFoundError, LayerSecurityError
from memobuild.images import ImageStore
from memobuild.oci.image import HistoryEntry, Image, ImageConfig, config_json


def executed(result: BuildResult) -> list[str]:
    return [s.text for s in result.steps if s.status == "executed"]


def tree_of(store: LocalStore, result: BuildResult, dest: Path) -> Path:
    return image_tree(store, result.image, dest)


MULTI_STAGE = """\
FROM busybox AS deps
WORKDIR /app
COPY deps.txt .
RUN sort deps.txt > installed.txt

FROM busybox AS final
WORKDIR /app
COPY --from=deps /app/installed.txt ./
COPY src/ ./src/
RUN cat src/main.txt installed.txt > built.txt
COPY README.md .
CMD ["cat", "/app/built.txt"]
"""
MULTI_FILES = {
    "deps.txt": "zlib\nacl\n",
    "src/main.txt": "main v1\n",
    "src/util.txt": "util\n",
    "README.md": "readme\n",
}


def test_a_second_build_executes_nothing(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(tmp_path / "ctx", MULTI_STAGE, MULTI_FILES)
    first = build(context, store=store)
    assert "RUN sort deps.txt > installed.txt" in executed(first)
    assert "RUN cat src/main.txt installed.txt > built.txt" in executed(first)
    assert (tree_of(store, first, tmp_path / "one") / "app" / "built.txt").read_text() == (
        "main v1\nacl\nzlib\n"
    )

    events: list[BuildEvent] = []
    second = build(context, store=store, on_event=events.append)
    assert executed(second) == []
    assert second.cached == len(second.steps) == len(first.steps)
    assert not any(isinstance(e, StepStarted) for e in events)
    assert second.digest == first.digest
    assert second.image == first.image
    assert scratch_entries(store.root) == []


def test_editing_one_source_reruns_exactly_the_steps_after_its_copy(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(tmp_path / "ctx", MULTI_STAGE, MULTI_FILES)
    first = build(context, store=store)

    (context / "src" / "main.txt").write_text("main v2\n")
    second = build(context, store=store)
    assert executed(second) == [
        "COPY src/ ./src/",
        "RUN cat src/main.txt installed.txt > built.txt",
        "COPY README.md .",
        'CMD ["cat", "/app/built.txt"]',
    ]
    tree = tree_of(store, second, tmp_path / "two")
    assert (tree / "app" / "built.txt").read_text() == "main v2\nacl\nzlib\n"
    # The unchanged layers below the edit are the very same blobs.
    assert second.image.layers[:3] == first.image.layers[:3]

    (context / "deps.txt").write_text("zlib\nacl\nbash\n")
    third = build(context, store=store)
    assert executed(third) == [
        "COPY deps.txt .",
        "RUN sort deps.txt > installed.txt",
        "COPY --from=deps /app/installed.txt ./",
        "COPY src/ ./src/",
        "RUN cat src/main.txt installed.txt > built.txt",
        "COPY README.md .",
        'CMD ["cat", "/app/built.txt"]',
    ]


def reasons(result: BuildResult) -> dict[str, str | None]:
    """Instruction -> the reason its record gives, for every step that ran."""
    return {s.text: s.reason for s in result.steps if s.status == "executed"}


def started_reasons(events: list[BuildEvent]) -> dict[str, str]:
    return {e.text: e.reason for e in events if isinstance(e, StepStarted)}


REASONS = """\
FROM busybox
ARG VERSION=1.0
WORKDIR /app
COPY src/ ./src/
RUN echo $VERSION > version.txt
"""


def test_every_step_that_runs_says_why_in_its_event_and_its_record(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(tmp_path / "ctx", REASONS, {"src/main.txt": "v1\n", "src/b.txt": "b"})

    def run(version: str = "1.0", no_cache: bool = False) -> tuple[BuildResult, dict[str, str]]:
        events: list[BuildEvent] = []
        result = build(
            context,
            store=store,
            build_args={"VERSION": version},
            no_cache=no_cache,
            on_event=events.append,
        )
        started = started_reasons(events)
        assert started == reasons(result), "StepStarted and StepRecord must agree"
        # Every executed step was announced, FROM included, and cached ones have no reason.
        ran = [e.text for e in events if isinstance(e, StepExecuted)]
        assert sorted(ran) == sorted(started)
        assert all(s.reason is None for s in result.steps if s.status == "cached")
        return result, started

    _, first = run()
    assert set(first.values()) == {"no recorded build of Dockerfile@stage-0 to compare with"}
    assert len(first) == 4  # ARG is not a step

    (context / "src" / "main.txt").write_text("v2\n")
    _, changed = run()
    assert changed == {
        "COPY src/ ./src/": "src/main.txt changed",
        "RUN echo $VERSION > version.txt": "parent step 3 changed",
    }

    _, new_arg = run("2.0")
    assert new_arg == {"RUN echo $VERSION > version.txt": "build arg VERSION 1.0 -> 2.0"}

    (context / "Dockerfile").write_text(REASONS + "RUN echo more > more.txt\n")
    _, new_step = run("2.0")
    assert new_step == {"RUN echo more > more.txt": "new step: not in the last recorded build"}

    no_cache, forced = run("2.0", no_cache=True)
    assert set(forced.values()) == {"--no-cache"}
    assert no_cache.executed == len(no_cache.steps) == 5


def test_a_step_the_store_cannot_deliver_says_so(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(tmp_path / "ctx", REASONS, {"src/main.txt": "v1\n"})
    first = build(context, store=store)
    (layer,) = next(s for s in first.steps if s.text.startswith("RUN")).layers
    hex_part = layer.digest.split(":")[1]
    (store.root / "blobs" / "sha256" / hex_part[:2] / hex_part).unlink()  # evicted by hand
    again = build(context, store=store)
    assert reasons(again) == {"RUN echo $VERSION > version.txt": NOT_USABLE_REASON}


def test_two_independent_stages_run_side_by_side(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox AS a\n"
        "RUN sleep 2 && echo a > /a.txt\n"
        "FROM busybox AS b\n"
        "RUN sleep 2 && echo b > /b.txt\n"
        "FROM busybox\n"
        "COPY --from=a /a.txt /a.txt\n"
        "COPY --from=b /b.txt /b.txt\n",
    )
    started_at: dict[int, float] = {}

    def note(event: BuildEvent) -> None:
        if isinstance(event, StepStarted):
            started_at[event.step] = time.monotonic()

    begin = time.monotonic()
    result = build(context, store=store, on_event=note)
    elapsed = time.monotonic() - begin
    runs = [s for s in result.steps if s.text.startswith("RUN sleep 2")]
    assert len(runs) == 2 and all(s.duration >= 2.0 for s in runs)
    assert abs(started_at[2] - started_at[4]) < 1.0, started_at
    # One after the other, the build would take at least as long as the two steps together.
    assert elapsed < runs[0].duration + runs[1].duration - 0.5, f"took {elapsed:.2f}s"
    print(f"two independent 2 s stages: {elapsed:.2f}s")
    tree = tree_of(store, result, tmp_path / "out")
    assert (tree / "a.txt").read_text() == "a\n"
    assert (tree / "b.txt").read_text() == "b\n"


def test_a_failing_stage_stops_the_stage_running_beside_it(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox AS slow\n"
        "RUN sleep 30\n"
        "FROM busybox AS broken\n"
        "RUN sleep 0.5; exit 4\n"
        "FROM busybox\n"
        "COPY --from=slow /bin/sh /a\n"
        "COPY --from=broken /bin/sh /b\n",
    )
    begin = time.monotonic()
    with pytest.raises(BuildStepError) as caught:
        build(context, store=store)
    assert time.monotonic() - begin < 10
    assert caught.value.exit_code == 4
    assert caught.value.line == 4
    assert scratch_entries(store.root) == []


def test_a_failing_run_reports_its_exit_code_line_and_output_and_keeps_earlier_steps(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    dockerfile = (
        "FROM busybox\n"
        "COPY a.txt /a.txt\n"
        "RUN echo before > /before.txt\n"
        "RUN echo 'compiling'; echo 'error: it broke' >&2; exit 3\n"
        "RUN echo never\n"
    )
    context = make_context(tmp_path / "ctx", dockerfile, {"a.txt": "a\n"})
    with pytest.raises(BuildStepError) as caught:
        build(context, store=store)
    err = caught.value
    assert err.exit_code == 3
    assert err.line == 4
    assert err.file.endswith("Dockerfile")
    assert err.output == ("compiling", "error: it broke")
    text = str(err)
    assert text.startswith(
        f"{err.file}:4: step 4 RUN echo 'compiling'; echo 'error: it broke' >&2; exit 3 "
        "failed with exit code 3\n"
    )
    assert "  | error: it broke" in text
    assert scratch_entries(store.root) == []

    # Everything before the failing step was stored, the failing step was not.
    keys = plan_build(context, "Dockerfile", BaseResolver(store)).keys
    assert [store.has_action(k) for k in keys[:3]] == [True, True, True]
    assert not store.has_action(keys[3])

    (context / "Dockerfile").write_text(dockerfile.replace("exit 3", "exit 0"))
    fixed = build(context, store=store)
    assert executed(fixed) == [
        "RUN echo 'compiling'; echo 'error: it broke' >&2; exit 0",
        "RUN echo never",
    ]


def test_user_workdir_env_and_shell_reach_run(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox\n"
        "ENV GREETING=hello\n"
        "USER app\n"
        "WORKDIR /work/dir\n"
        'SHELL ["/bin/env", "MARK=from-shell", "/bin/sh", "-c"]\n'
        'RUN echo "$GREETING $(pwd) $(id -u):$(id -g) $MARK $HOME" > out.txt\n'
        'RUN ["/bin/sh", "-c", "echo exec-form $MARK. > exec.txt"]\n',
    )
    result = build(context, store=store)
    tree = tree_of(store, result, tmp_path / "out")
    out = tree / "work" / "dir" / "out.txt"
    assert out.read_text() == "hello /work/dir 1000:1000 from-shell /home/app\n"
    assert (out.stat().st_uid, out.stat().st_gid) == (1000, 1000)
    # WORKDIR made the directory as the USER; exec form does not go through SHELL.
    assert (tree / "work" / "dir").stat().st_uid == 1000
    assert (tree / "work" / "dir" / "exec.txt").read_text() == "exec-form .\n"
    config = result.image.config
    assert config.user == "app"
    assert config.working_dir == "/work/dir"
    assert "GREETING=hello" in (config.env or ())
    assert config.shell == ("/bin/env", "MARK=from-shell", "/bin/sh", "-c")


def test_a_cache_mount_persists_between_builds_and_never_enters_a_layer(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox\n"
        "ARG RUN_ID\n"
        "RUN --mount=type=cache,target=/var/cache/thing "
        "echo run-$RUN_ID >> /var/cache/thing/log && cp /var/cache/thing/log /seen.txt\n",
    )
    first = build(context, build_args={"RUN_ID": "1"}, store=store)
    second = build(context, build_args={"RUN_ID": "2"}, store=store)
    assert executed(second) == [executed(first)[-1]]
    tree = tree_of(store, second, tmp_path / "out")
    assert (tree / "seen.txt").read_text() == "run-1\nrun-2\n"
    assert not (tree / "var").exists()
    for result in (first, second):
        # The RUN's layer holds its one file, nothing of the cache, of its mount point or of
        # the sandbox's /etc/hosts and /etc/resolv.conf stubs.
        assert len(result.image.layers) == 2
        assert set(layer_members(store, result.image.layers[-1])) == {"seen.txt"}


def test_a_secret_is_readable_during_run_and_absent_from_every_layer_and_the_image(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    value = "s3cr3t-Zq9-value"
    secret_file = tmp_path / "token.txt"
    secret_file.write_text(value)
    digest = hashlib.sha256(value.encode()).hexdigest()
    # The steps prove they read the secret by writing its hash: the value itself appears
    # nowhere in the Dockerfile, so any trace of it in the image is a leak.
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox\n"
        "RUN --mount=type=secret,id=token sha256sum /run/secrets/token | cut -c1-64 > /file.txt\n"
        "RUN --mount=type=secret,id=token,env=TOKEN "
        'printf %s "$TOKEN" | sha256sum | cut -c1-64 > /env.txt\n',
    )
    result = build(context, secrets=[f"id=token,src={secret_file}"], store=store, tags=["s:1"])
    tree = tree_of(store, result, tmp_path / "out")
    assert (tree / "file.txt").read_text() == digest + "\n"
    assert (tree / "env.txt").read_text() == digest + "\n"
    assert not (tree / "run").exists()
    for layer in result.image.layers:
        data = layer_bytes(store, layer)
        assert value.encode() not in data
        assert b"run/secrets" not in data
    assert value.encode() not in config_json(result.image)
    # Nowhere in the cache dir at all: no blob, entry, record or stray temp file holds it.
    for current, _dirs, files in os.walk(store.root):
        for name in files:
            path = Path(current, name)
            if path.is_file() and not path.is_symlink():
                raw = path.read_bytes()
                assert value.encode() not in raw, path
                if raw[:2] == b"\x1f\x8b":
                    assert value.encode() not in gzip.decompress(raw), path


def test_a_required_secret_that_is_missing_fails_before_anything_runs(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox\nRUN touch /x\n"
        "RUN --mount=type=secret,id=api,required cat /run/secrets/api\n",
    )
    with pytest.raises(Exception, match="secret 'api' is required"):
        build(context, store=store)


def test_whiteouts_delete_files_in_the_final_filesystem(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox\n"
        "RUN mkdir -p /data/keep /data/gone && echo a > /data/keep/a && echo b > /data/gone/b"
        " && echo c > /data/c\n"
        "RUN rm -rf /data/gone /data/c /bin/vi /etc/group\n",
    )
    result = build(context, store=store)
    last = layer_members(store, result.image.layers[-1])
    assert {"data/.wh.gone", "data/.wh.c", "bin/.wh.vi", "etc/.wh.group"} <= set(last)
    tree = tree_of(store, result, tmp_path / "out")
    assert (tree / "data" / "keep" / "a").read_text() == "a\n"
    assert not (tree / "data" / "gone").exists()
    assert not (tree / "data" / "c").exists()
    assert not (tree / "bin" / "vi").exists()
    assert not (tree / "etc" / "group").exists()
    assert (tree / "etc" / "passwd").exists()


def test_layer_digests_are_identical_across_two_clean_builds_with_source_date_epoch(
    tmp_path: Path,
) -> None:
    dockerfile = (
        "FROM busybox AS gen\n"
        "RUN mkdir /out && echo generated > /out/gen.txt && ln -s gen.txt /out/link\n"
        "FROM busybox\n"
        "WORKDIR /app\n"
        "COPY . .\n"
        "COPY --from=gen /out/ ./gen/\n"
        "RUN date > /app/not-a-timestamp-in-the-tar.txt; touch /app/now\n"
    )
    results = []
    for run in ("one", "two"):
        context = make_context(
            tmp_path / run / "ctx", dockerfile, {"a.txt": "a\n", "sub/b.txt": "b\n"}
        )
        time.sleep(1.1)  # different wall-clock mtimes for everything the two builds write
        with LocalStore(tmp_path / run / "cache") as clean:
            make_busybox_image(tmp_path / run / "base", clean)
            results.append(
                build(context, build_args={"SOURCE_DATE_EPOCH": "1700000000"}, store=clean)
            )
    one, two = results
    assert one.executed == two.executed > 0
    # `date` differs between the runs, so that one layer differs by content; every other layer
    # and every timestamp the image carries is the same.
    assert [layer.digest for layer in one.image.layers[:-1]] == [
        layer.digest for layer in two.image.layers[:-1]
    ]
    assert one.image.created == two.image.created == "2023-11-14T22:13:20Z"
    assert {h.created for h in one.image.history[1:]} == {"2023-11-14T22:13:20Z"}


def test_identical_clean_builds_give_the_same_image_digest(tmp_path: Path) -> None:
    dockerfile = (
        "FROM busybox\n"
        "WORKDIR /app\n"
        "COPY . .\n"
        "RUN echo built > /app/out.txt && mkdir -p /var/lib/x && rm /bin/vi\n"
        'CMD ["cat", "/app/out.txt"]\n'
    )
    digests = []
    for run in ("one", "two"):
        context = make_context(tmp_path / run / "ctx", dockerfile, {"a.txt": "a\n"})
        time.sleep(1.1)
        with LocalStore(tmp_path / run / "cache") as clean:
            make_busybox_image(tmp_path / run / "base", clean)
            result = build(context, build_args={"SOURCE_DATE_EPOCH": "1700000000"}, store=clean)
        digests.append((result.digest, [layer.digest for layer in result.image.layers]))
    assert digests[0] == digests[1]


def _evil_layer(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if kind == "traversal":
            data = b"escaped\n"
            info = tarfile.TarInfo("../../escaped.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        else:
            link = tarfile.TarInfo("etc")
            link.type = tarfile.SYMTYPE
            link.linkname = "/tmp/memobuild-symlink-escape-target"  # noqa: S108 - the bait
            tar.addfile(link)
            data = b"pwned\n"
            info = tarfile.TarInfo("etc/pwned.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["traversal", "symlink-escape"])
def test_a_malicious_base_layer_is_refused(
    tmp_path: Path, store: LocalStore, base: BusyboxImage, kind: str
) -> None:
    plain = _evil_layer(kind)
    blob = gzip.compress(plain, mtime=0)
    digest = store.put_blob_bytes(blob)
    layer = LayerRef(digest, "sha256:" + hashlib.sha256(plain).hexdigest(), len(blob))
    platform = host_platform()
    evil = Image(
        config=ImageConfig(),
        layers=(*base.image.layers, layer),
        history=(HistoryEntry("busybox"), HistoryEntry("evil")),
        architecture=platform.architecture,
        os=platform.os,
    )
    ImageStore(store).save(evil, ["evil"])
    outside = Path("/tmp/memobuild-symlink-escape-target")  # noqa: S108 - must stay empty
    outside.mkdir(exist_ok=True)
    context = make_context(tmp_path / "a" / "b" / "ctx", "FROM evil\nRUN touch /x\n")
    try:
        with pytest.raises(LayerSecurityError):
            build(context, store=store)
        assert not (outside / "pwned.txt").exists()
        assert not (tmp_path / "escaped.txt").exists()
        assert not (tmp_path / "a" / "escaped.txt").exists()
        assert not (store.root / "tmp" / "escaped.txt").exists()
        assert scratch_entries(store.root) == []
    finally:
        (outside / "pwned.txt").unlink(missing_ok=True)
        outside.rmdir()


def test_a_base_image_rebuilt_under_the_same_name_is_a_miss(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(
        tmp_path / "ctx", "FROM busybox\nRUN cat /etc/motd > /seen.txt || true\n"
    )
    first = build(context, store=store)
    assert (tree_of(store, first, tmp_path / "one") / "seen.txt").read_text() == ""

    root = make_busybox_rootfs_dir(tmp_path / "rootfs2")
    (root / "etc" / "motd").write_text("version 2\n")
    make_busybox_image(tmp_path / "base2", store, layer_root=root)
    second = build(context, store=store)
    assert executed(second) == ["FROM busybox", "RUN cat /etc/motd > /seen.txt || true"]
    assert (tree_of(store, second, tmp_path / "two") / "seen.txt").read_text() == "version 2\n"


def test_a_base_image_from_an_oci_layout_build_context(tmp_path: Path) -> None:
    # A store that has never seen the image: the layout provides it.
    with LocalStore(tmp_path / "other-cache") as elsewhere:
        made = make_busybox_image(tmp_path / "base", elsewhere)
    with LocalStore(tmp_path / "cache") as fresh:
        context = make_context(tmp_path / "ctx", "FROM busybox\nRUN echo hi > /hi.txt\n")
        with pytest.raises(ImageNotFoundError):
            build(context, store=fresh, pull="never")  # never Docker Hub's busybox
        result = build(context, build_contexts=[made.build_context], store=fresh)
        assert result.image.layers[0] == made.image.layers[0]
        assert (image_tree(fresh, result.image, tmp_path / "out") / "hi.txt").read_text() == "hi\n"


def test_run_output_is_streamed_line_by_line(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(
        tmp_path / "ctx", "FROM busybox\nRUN echo one; sleep 0.3; echo two; printf three\n"
    )
    lines: list[tuple[float, str]] = []

    def note(event: BuildEvent) -> None:
        if isinstance(event, StepOutput):
            lines.append((time.monotonic(), event.line))

    build(context, store=store, on_event=note)
    assert [text for _, text in lines] == ["one", "two", "three"]
    assert lines[1][0] - lines[0][0] > 0.2  # "one" arrived before the command finished


def test_config_instructions_change_only_the_config(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox\n"
        "LABEL org.example.team=build version=1\n"
        "EXPOSE 8080 53/udp\n"
        "VOLUME /data\n"
        "STOPSIGNAL SIGINT\n"
        'ENTRYPOINT ["/bin/sh", "-c"]\n'
        'CMD ["echo hi"]\n'
        "WORKDIR /\n"
        "ONBUILD RUN echo child\n"
        "HEALTHCHECK --interval=5s CMD true\n",
    )
    result = build(context, store=store)
    assert len(result.image.layers) == 1  # only the base layer: WORKDIR / created nothing
    config = result.image.config
    assert dict(config.labels or ()) == {"org.example.team": "build", "version": "1"}
    assert config.exposed_ports == ("53/udp", "8080/tcp")
    assert config.volumes == ("/data",)
    assert config.stop_signal == "SIGINT"
    assert config.entrypoint == ("/bin/sh", "-c")
    assert config.cmd == ("echo hi",)  # set after ENTRYPOINT in the same stage: kept
    assert config.on_build == ("RUN echo child",)
    assert config.healthcheck is not None and config.healthcheck.interval == 5_000_000_000
    history = result.image.history
    assert len(history) == 10 and all(h.empty_layer for h in history[1:])
    assert history[2].created_by == "EXPOSE map[53/udp:{} 8080/tcp:{}]"
    # The cached result gives the same config without running anything.
    again = build(context, store=store)
    assert again.executed == 0 and again.image == result.image


def test_entrypoint_clears_an_inherited_cmd(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(tmp_path / "ctx", 'FROM busybox\nENTRYPOINT ["/bin/true"]\n')
    assert base.image.config.cmd == ("sh",)
    result = build(context, store=store)
    assert result.image.config.entrypoint == ("/bin/true",)
    assert result.image.config.cmd is None


def test_run_heredocs(tmp_path: Path, store: LocalStore, base: BusyboxImage) -> None:
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox\n"
        "RUN <<EOF\n"
        "echo first > /one.txt\n"
        "echo second >> /one.txt\n"
        "EOF\n"
        "RUN <<EOF\n"
        "#!/bin/sh\n"
        'echo "script $0" > /two.txt\n'
        "EOF\n"
        "RUN cat <<EOT > /three.txt\n"
        "inline\n"
        "EOT\n",
    )
    result = build(context, store=store)
    tree = tree_of(store, result, tmp_path / "out")
    assert (tree / "one.txt").read_text() == "first\nsecond\n"
    assert (tree / "two.txt").read_text() == "script /dev/pipes/EOF\n"
    assert (tree / "three.txt").read_text() == "inline\n"
    assert not (tree / "dev").exists()


def test_bind_mounts_from_the_context_and_another_stage(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox AS tools\n"
        "RUN mkdir /tools && echo tool > /tools/t.txt\n"
        "FROM busybox\n"
        "RUN --mount=type=bind,source=conf,target=/conf "
        "--mount=type=bind,from=tools,source=/tools,target=/t "
        "cat /conf/c.txt /t/t.txt > /both.txt\n",
        {"conf/c.txt": "conf\n"},
    )
    result = build(context, store=store)
    tree = tree_of(store, result, tmp_path / "out")
    assert (tree / "both.txt").read_text() == "conf\ntool\n"
    assert not (tree / "conf").exists() and not (tree / "t").exists()
    assert not (tree / "tools").exists()


def test_a_build_started_while_another_runs_on_the_same_cache_is_safe(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(tmp_path / "ctx", MULTI_STAGE, MULTI_FILES)
    results: list[BuildResult] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with LocalStore(store.root) as own:
                results.append(build(context, store=own))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 2
    # Both may have run the same steps (the last entry stored wins); either way the cache
    # answers every step now, with layers that make the right filesystem.
    third = build(context, store=store)
    assert third.executed == 0
    built = tree_of(store, third, tmp_path / "out") / "app" / "built.txt"
    assert built.read_text() == "main v1\nacl\nzlib\n"
    assert scratch_entries(store.root) == []
    for info in store.list_actions():
        assert store.get_action(info.key) is not None


def test_two_stages_with_the_same_steps_run_them_once(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox AS one\n"
        "RUN sleep 1 && echo shared > /shared.txt\n"
        "RUN echo one > /one.txt\n"
        "FROM busybox AS two\n"
        "RUN sleep 1 && echo shared > /shared.txt\n"
        "RUN echo two > /two.txt\n"
        "FROM busybox\n"
        "COPY --from=one /one.txt /shared.txt /\n"
        "COPY --from=two /two.txt /\n",
    )
    result = build(context, store=store)
    shared = [s for s in result.steps if s.text.startswith("RUN sleep 1")]
    assert sorted(s.status for s in shared) == ["cached", "executed"]
    assert shared[0].key == shared[1].key
    tree = tree_of(store, result, tmp_path / "out")
    assert sorted(p.name for p in tree.glob("*.txt")) == ["one.txt", "shared.txt", "two.txt"]


class _Files(http.server.BaseHTTPRequestHandler):
    content = b"v1\n"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.content)))
        self.end_headers()
        self.wfile.write(self.content)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/data.txt"
    finally:
        server.shutdown()
        server.server_close()
        _Files.content = b"v1\n"


def test_add_of_a_url_without_checksum_is_keyed_by_what_it_downloads(
    tmp_path: Path, store: LocalStore, base: BusyboxImage, http_url: str
) -> None:
    context = make_context(
        tmp_path / "ctx",
        f"FROM busybox\nADD {http_url} /data.txt\nRUN cp /data.txt /copy.txt\nRUN echo after\n",
    )
    first = build(context, store=store)
    assert len(executed(first)) == 4
    again = build(context, store=store)
    assert executed(again) == []
    assert again.digest == first.digest

    _Files.content = b"v2 changed\n"
    changed = build(context, store=store)
    assert executed(changed) == [
        f"ADD {http_url} /data.txt",
        "RUN cp /data.txt /copy.txt",
        "RUN echo after",
    ]
    # Explained against the keys the download refined, not the plan's "remote" placeholder.
    old_digest = hashlib.sha256(b"v1\n").hexdigest()[:12]
    new_digest = hashlib.sha256(b"v2 changed\n").hexdigest()[:12]
    assert reasons(changed) == {
        f"ADD {http_url} /data.txt": (
            f"{http_url} content changed (sha256:{old_digest} -> sha256:{new_digest})"
        ),
        "RUN cp /data.txt /copy.txt": "parent step 2 changed",
        "RUN echo after": "parent step 3 changed",
    }
    assert (tree_of(store, changed, tmp_path / "out") / "copy.txt").read_text() == "v2 changed\n"
    # The recorded plan carries the refined keys, so the next build's keys match them.
    assert changed.plan.nodes[1].key != first.plan.nodes[1].key
    assert dict(changed.plan.nodes[1].preimage)[f"source {http_url}"].startswith("sha256:")


def test_a_sweep_removes_dead_builds_scratch_and_never_a_live_one(tmp_path: Path) -> None:
    area = ScratchArea(tmp_path / "cache")
    live = area.create()
    rootfs = live.new_dir("stage-rootfs")
    (rootfs / "file").write_text("in use")
    # What a build killed with SIGKILL leaves: its directory and an unlocked lock file.
    dead = area.root / "build-1-dead"
    (dead / "rootfs" / "etc").mkdir(parents=True)
    (dead / "rootfs" / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.chmod(dead / "rootfs" / "etc", 0o500)
    (area.root / "build-1-dead.lock").touch()
    assert area.sweep() == 1
    assert sorted(os.listdir(area.root)) == sorted([live.path.name, live.path.name + ".lock"])
    assert (rootfs / "file").read_text() == "in use"
    live.close()
    deadline = time.monotonic() + 10
    while os.listdir(area.root) and time.monotonic() < deadline:  # a background remover's job
        time.sleep(0.05)
    assert os.listdir(area.root) == []


def test_a_scratch_directory_of_empty_directories_is_removed_at_once(tmp_path: Path) -> None:
    area = ScratchArea(tmp_path / "cache")
    scratch = area.create()
    scratch.new_dir("downloads")
    scratch.new_dir("outputs")
    scratch.close()
    assert os.listdir(area.root) == []  # no background remover for a no-change rebuild


def _gated_remover(monkeypatch: pytest.MonkeyPatch, gate: Path) -> None:
    """Background removers that wait until ``gate`` is gone before they start deleting."""
    wait = f"while [ -e {shlex.quote(str(gate))} ]; do sleep 0.05; done;"
    script = rootfs_module.REMOVER_SCRIPT
    assert script.startswith("{ ")
    monkeypatch.setattr(rootfs_module, "REMOVER_SCRIPT", "{ " + wait + script[1:])


def _lock_is_held(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_build_returns_before_its_scratch_tree_is_removed(
    tmp_path: Path, store: LocalStore, base: BusyboxImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    _gated_remover(monkeypatch, gate)
    context = make_context(tmp_path / "ctx", "FROM busybox\nRUN echo hi > /hi.txt\n")
    build(context, store=store)
    # The build's directory (its stage rootfs in it) and its lock file, which the waiting
    # remover holds: a sweep by another build leaves them alone.
    left = scratch_entries(store.root, settle=0)
    assert len(left) == 2, left
    area = store.root / "tmp" / "rootfs"
    tree = area / left[0]
    assert any(tree.rglob("hi.txt"))
    assert _lock_is_held(area / left[1])
    assert ScratchArea(store.root).sweep() == 0
    gate.unlink()
    assert scratch_entries(store.root) == []


def test_a_tree_a_killed_remover_left_is_removed_by_the_next_build(
    tmp_path: Path, store: LocalStore, base: BusyboxImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = tmp_path / "remover-pids"
    # A remover that only holds the lock until it is killed.
    stuck = (
        f"{{ echo $$ >> {shlex.quote(str(pids))}; exec sleep 60; }} </dev/null >/dev/null 2>&1 &"
    )
    real = rootfs_module.REMOVER_SCRIPT
    monkeypatch.setattr(rootfs_module, "REMOVER_SCRIPT", stuck)
    context = make_context(tmp_path / "ctx", "FROM busybox\nRUN echo hi > /hi.txt\n")
    build(context, store=store)
    area = store.root / "tmp" / "rootfs"
    left = scratch_entries(store.root, settle=0)
    assert len(left) == 2, left
    deadline = time.monotonic() + 10
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in {int(line) for line in pids.read_text().split()}:
        os.killpg(pid, signal.SIGKILL)  # the remover's session: sh and its sleep
    deadline = time.monotonic() + 10
    while _lock_is_held(area / left[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(os.listdir(area)) == left  # nothing removed it
    monkeypatch.setattr(rootfs_module, "REMOVER_SCRIPT", real)
    build(context, store=store)  # sweeps it first, then removes its own
    assert scratch_entries(store.root) == []
