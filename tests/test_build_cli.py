"""`memobuild build` as a user runs it: progress lines, errors, tags, interrupts and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from busybox_image import BusyboxImage, image_tree, make_busybox_image, make_context
from memobuild.cache.store import LocalStore
from memobuild.cli import main
from memobuild.images import ImageStore


@pytest.fixture
def store(isolated_cache: Path) -> Iterator[LocalStore]:
    with LocalStore(isolated_cache) as opened:
        yield opened


@pytest.fixture
def base(tmp_path: Path, store: LocalStore) -> BusyboxImage:
    return make_busybox_image(tmp_path / "base", store)


def scratch_entries(cache: Path) -> list[str]:
    area = cache / "tmp" / "rootfs"
    return sorted(os.listdir(area)) if area.exists() else []


DOCKERFILE = """\
FROM busybox
WORKDIR /app
COPY . .
RUN echo "built from $(cat hello.txt)" > out.txt
CMD ["cat", "/app/out.txt"]
"""


def test_build_prints_a_line_per_step_and_a_second_build_is_all_cached(
    tmp_path: Path,
    base: BusyboxImage,
    store: LocalStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})
    assert main(["build", str(context), "-t", "app:1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "#3 COPY . ." in out
    assert '#4 RUN echo "built from $(cat hello.txt)" > out.txt' in out
    assert any(line.startswith("#4 DONE ") for line in out)
    assert out[-1].startswith("built stage-0 in ")
    assert "5 steps, 0 cached, 5 executed" in out[-1]
    assert out[-1].endswith("tagged app:1")

    assert main(["build", str(context), "-t", "app:1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "#2 CACHED step 2 WORKDIR /app" in out
    assert "#3 CACHED step 3 COPY . ." in out
    assert not any(" DONE " in line for line in out)
    assert "5 steps, 5 cached, 0 executed" in out[-1]

    image = ImageStore(store).load("app:1")
    assert image is not None
    tree = image_tree(store, image, tmp_path / "out")
    assert (tree / "app" / "out.txt").read_text() == "built from hi\n"


def test_a_failing_step_is_one_error_with_file_line_and_output(
    tmp_path: Path, base: BusyboxImage, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make_context(
        tmp_path / "ctx", "FROM busybox\nRUN echo ok\nRUN echo 'no such target' >&2; exit 7\n"
    )
    assert main(["build", str(context)]) == 1
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    dockerfile = context / "Dockerfile"
    shown = os.path.relpath(dockerfile)
    shown = str(dockerfile) if shown.startswith("..") else shown
    assert err[0] == (
        f"memobuild: error: {shown}:3: step 3 RUN echo 'no such target' >&2; exit 7 failed "
        "with exit code 7"
    )
    assert err[1] == "  | no such target"
    assert "#3 no such target" in captured.out.splitlines()


def test_build_args_target_secrets_and_build_contexts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The base image comes from an OCI layout only: the cache has never seen it.
    with LocalStore(tmp_path / "elsewhere") as other:
        made = make_busybox_image(tmp_path / "base", other)
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox AS first\n"
        "ARG WHO=nobody\n"
        "RUN --mount=type=secret,id=pw wc -c < /run/secrets/pw > /pwlen && echo $WHO > /who\n"
        "FROM first AS second\n"
        "RUN false\n",
    )
    events = tmp_path / "events.jsonl"
    code = main(
        [
            "build",
            str(context),
            "--target",
            "first",
            "--build-arg",
            "WHO=me",
            "--secret",
            f"id=pw,src={secret}",
            "--build-context",
            made.build_context,
            "--events",
            str(events),
            "-t",
            "first",
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out.splitlines()
    assert "built first in " in out[-1]
    with LocalStore() as store:
        image = ImageStore(store).load("first")
        assert image is not None
        tree = image_tree(store, image, tmp_path / "out")
    assert (tree / "who").read_text() == "me\n"
    assert (tree / "pwlen").read_text().strip() == "7"
    kinds = [line.split('"event": "')[1].split('"')[0] for line in events.read_text().splitlines()]
    assert kinds[0] == "BuildStarted" and kinds[-1] == "BuildFinished"
    assert "StepExecuted" in kinds


def test_unknown_base_image_says_how_to_provide_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make_context(tmp_path / "ctx", "FROM alpine:3.20\nRUN true\n")
    assert main(["build", str(context)]) == 2
    err = capsys.readouterr().err
    assert "image 'alpine:3.20' not found" in err
    assert "--build-context alpine:3.20=oci-layout://" in err


# --- interrupted builds --------------------------------------------------------------------


SLOW = """\
FROM busybox
COPY a.txt /a.txt
ARG SLEEP=60
RUN echo sleeping; sleep $SLEEP; echo done > /slept.txt
"""


def _start_build(context: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "memobuild.cli", "build", str(context), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def _wait_for_line(proc: subprocess.Popen[str], wanted: str, timeout: float = 60) -> list[str]:
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip("\n"))
        if line.rstrip("\n") == wanted:
            return seen
    raise AssertionError(f"never printed {wanted!r}; got {seen!r}")


def _sleepers(seconds: str) -> list[int]:
    """Pids of processes running ``sleep <seconds>`` (the step of a build we interrupted)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", seconds.encode()]:
            found.append(int(entry))
    return found


def _wait_until(condition: object, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


def _assert_store_is_sound(cache: Path) -> None:
    with LocalStore(cache) as store:
        for info in store.list_actions():
            assert store.get_action(info.key) is not None, info.key
        report = store.prune(min_age=0, verify=True)
        assert report.quarantined == 0
        assert store.stats()["integrity_failures"] == 0


def test_kill_9_during_a_run_leaves_the_store_consistent_and_the_next_build_succeeds(
    tmp_path: Path, base: BusyboxImage, isolated_cache: Path
) -> None:
    context = make_context(tmp_path / "ctx", SLOW, {"a.txt": "a\n"})
    proc = _start_build(context, "--build-arg", "SLEEP=61")
    try:
        _wait_for_line(proc, "#3 sleeping")
        assert _wait_until(lambda: _sleepers("61"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The step died with the build (bubblewrap's --die-with-parent), and the killed build's
    # scratch directory is still there: nothing could clean it up.
    assert _wait_until(lambda: not _sleepers("61"))
    assert len(scratch_entries(isolated_cache)) == 2  # its directory and its lock file

    _assert_store_is_sound(isolated_cache)
    done = subprocess.run(
        [sys.executable, "-m", "memobuild.cli", "build", str(context), "--build-arg", "SLEEP=0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "#2 CACHED step 2 COPY a.txt /a.txt" in lines  # stored before the kill
    assert "1 executed" in lines[-1]
    assert scratch_entries(isolated_cache) == []  # swept, and its own removed
    _assert_store_is_sound(isolated_cache)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_build_cleans_up_and_the_next_build_succeeds(
    tmp_path: Path, base: BusyboxImage, isolated_cache: Path, sig: signal.Signals
) -> None:
    seconds = "62" if sig == signal.SIGINT else "63"
    context = make_context(tmp_path / "ctx", SLOW, {"a.txt": "a\n"})
    proc = _start_build(context, "--build-arg", f"SLEEP={seconds}")
    try:
        _wait_for_line(proc, "#3 sleeping")
        assert _wait_until(lambda: _sleepers(seconds))
        started = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - started < 10
    assert proc.returncode == 130
    assert "interrupted" in err
    assert not _sleepers(seconds)
    assert scratch_entries(isolated_cache) == []
    _assert_store_is_sound(isolated_cache)
    done = subprocess.run(
        [sys.executable, "-m", "memobuild.cli", "build", str(context), "--build-arg", "SLEEP=0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "#2 CACHED step 2 COPY a.txt /a.txt" in done.stdout.splitlines()


def test_plan_and_explain_agree_with_what_a_build_stored(
    tmp_path: Path, base: BusyboxImage, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})
    assert main(["plan", str(context)]) == 0
    assert "0 would hit, 5 would miss" in capsys.readouterr().out
    assert main(["build", str(context)]) == 0
    capsys.readouterr()
    assert main(["plan", str(context)]) == 0
    assert "5 would hit, 0 would miss" in capsys.readouterr().out

    (context / "hello.txt").write_text("changed")
    assert main(["explain", str(context)]) == 0
    out = capsys.readouterr().out
    assert "hello.txt" in out
    assert "3 of 5 steps would miss" in out


def test_no_cache_runs_every_step_again(
    tmp_path: Path, base: BusyboxImage, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})
    assert main(["build", str(context)]) == 0
    capsys.readouterr()
    assert main(["build", str(context), "--no-cache"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert not any("CACHED" in line for line in out)
    assert "5 steps, 0 cached, 5 executed" in out[-1]


def test_ctrl_c_stops_parallel_stages_and_cleans_up(
    tmp_path: Path, base: BusyboxImage, isolated_cache: Path
) -> None:
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox AS a\n"
        "RUN echo sleeping-a; sleep 64\n"
        "FROM busybox AS b\n"
        "RUN echo sleeping-b; sleep 64\n"
        "FROM busybox\n"
        "COPY --from=a /bin/sh /a\n"
        "COPY --from=b /bin/sh /b\n",
    )
    proc = _start_build(context)
    try:
        seen = _wait_for_line(proc, "#2 sleeping-a")
        if "#4 sleeping-b" not in seen:
            _wait_for_line(proc, "#4 sleeping-b")
        assert _wait_until(lambda: len(_sleepers("64")) == 2)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - started < 10
    assert proc.returncode == 130, err
    assert not _sleepers("64")
    assert scratch_entries(isolated_cache) == []
    _assert_store_is_sound(isolated_cache)


def test_paths_are_taken_as_docker_build_takes_them(
    tmp_path: Path,
    base: BusyboxImage,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_context(tmp_path / "ctx", "FROM busybox\nCOPY a.txt /from-default.txt\n", {"a.txt": "a"})
    (tmp_path / "other.Dockerfile").write_text("FROM busybox\nCOPY a.txt /from-other.txt\n")
    monkeypatch.chdir(tmp_path)
    # PATH relative to the current directory, the Dockerfile inside it by default ...
    assert main(["build", "ctx", "-t", "default"]) == 0
    assert "building stage-0 of ctx/Dockerfile" in capsys.readouterr().out
    assert main(["plan", "ctx"]) == 0
    assert "2 would hit, 0 would miss" in capsys.readouterr().out
    # ... and -f relative to the current directory, not to PATH.
    assert main(["build", "ctx", "-f", "other.Dockerfile", "-t", "other"]) == 0
    assert "building stage-0 of other.Dockerfile" in capsys.readouterr().out
    with LocalStore() as store:
        images = ImageStore(store)
        default, other = images.load("default"), images.load("other")
        assert default is not None and other is not None
        assert default.history[-1].created_by == "COPY a.txt /from-default.txt # buildkit"
        assert other.history[-1].created_by == "COPY a.txt /from-other.txt # buildkit"
