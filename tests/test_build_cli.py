"""`memobuild build` as a user runs it: progress, digest, exit codes, errors, tags, interrupts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from busybox_image import (
    BusyboxImage,
    image_tree,
    make_busybox_image,
    make_context,
    scratch_entries,
)
from memobuild.cache.store import LocalStore
from memobuild.cli import main
from memobuild.images import ImageStore

DOCKERFILE = """\
FROM busybox
WORKDIR /app
COPY . .
RUN echo "built from $(cat hello.txt)" > out.txt
CMD ["cat", "/app/out.txt"]
"""


def test_build_shows_progress_on_stderr_and_prints_the_digest_on_stdout(
    tmp_path: Path,
    base: BusyboxImage,
    store: LocalStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})
    assert main(["build", str(context), "-t", "app:1"]) == 0
    captured = capsys.readouterr()
    digest = ImageStore(store).resolve_digest("app:1")
    assert digest is not None and captured.out == f"{digest}\n"
    err = captured.err.splitlines()  # not a terminal: plain lines
    assert any(line.startswith("#3 COPY . . (miss: ") for line in err)
    assert any(
        line.startswith('#4 RUN echo "built from $(cat hello.txt)" > out.txt (') for line in err
    )
    assert any(line.startswith("#4 DONE ") for line in err)
    summary = next(line for line in err if line.startswith("built stage-0 in "))
    assert "5 steps, 0 cached, 5 executed, hit rate 0%" in summary
    assert err[-1] == "tagged app:1"

    assert main(["build", str(context), "-t", "app:1"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{digest}\n"
    err = captured.err.splitlines()
    assert "#2 CACHED WORKDIR /app" in err
    assert "#3 CACHED COPY . ." in err
    assert not any(" DONE " in line for line in err)
    assert "5 steps, 5 cached, 0 executed, hit rate 100%, 0 B written" in err[-2]
    assert "executed, and why:" not in err

    image = ImageStore(store).load("app:1")
    assert image is not None
    tree = image_tree(store, image, tmp_path / "out")
    assert (tree / "app" / "out.txt").read_text() == "built from hi\n"

    (context / "hello.txt").write_text("bye")
    assert main(["build", str(context)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "#3 COPY . . (miss: hello.txt changed)" in err
    assert err[-4:] == [
        "executed, and why:",
        "  step 3 COPY . .: hello.txt changed",
        '  step 4 RUN echo "built from $(cat hello.txt)" > out.txt: parent step 3 changed',
        '  step 5 CMD ["cat", "/app/out.txt"]: parent step 4 changed',
    ]


def test_a_failing_step_is_one_error_with_file_line_and_output(
    tmp_path: Path, base: BusyboxImage, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make_context(
        tmp_path / "ctx", "FROM busybox\nRUN echo ok\nRUN echo 'no such target' >&2; exit 7\n"
    )
    assert main(["build", str(context)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.splitlines()
    dockerfile = context / "Dockerfile"
    shown = os.path.relpath(dockerfile)
    shown = str(dockerfile) if shown.startswith("..") else shown
    # The progress, then the error as a compiler prints it, with what the step said.
    failed = err.index("#3 ERROR exit code 7")
    assert err[failed + 1].startswith("build failed after ")
    assert err[failed + 2 : failed + 5] == [
        "executed, and why:",
        "  step 1 FROM busybox: no recorded build of Dockerfile@stage-0 to compare with",
        "  step 2 RUN echo ok: no recorded build of Dockerfile@stage-0 to compare with",
    ]
    assert err[-2:] == [
        f"memobuild: error: {shown}:3: step 3 RUN echo 'no such target' >&2; exit 7 failed "
        "with exit code 7",
        "  | no such target",
    ]
    assert "#3 no such target" in err


# --- exit codes, stdout and --progress, in a child process as a user runs them ---------------


def strip_ansi(text: str) -> str:
    """What a terminal shows of ``text``, near enough: escape sequences and CRs removed."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", text)


def memobuild(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``memobuild ARGS`` (the installed command); the cache dir comes from the environment."""
    return subprocess.run(
        ["memobuild", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
    )


def test_exit_codes(tmp_path: Path, base: BusyboxImage) -> None:
    good = make_context(tmp_path / "good", "FROM busybox\nRUN echo fine > /fine\n")
    built = memobuild("build", str(good))
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith("sha256:") and len(built.stdout.strip()) == 71

    broken = make_context(tmp_path / "broken", "FROM busybox\nRUN echo ok\nCOPY\n")
    syntax = memobuild("build", str(broken))
    assert syntax.returncode == 2
    assert syntax.stdout == ""
    dockerfile = broken / "Dockerfile"
    assert syntax.stderr.splitlines()[-1].startswith(f"memobuild: error: {dockerfile}:3")

    failing = make_context(tmp_path / "failing", "FROM busybox\nRUN echo before; exit 3\n")
    step = memobuild("build", str(failing))
    assert step.returncode == 1
    assert step.stdout == ""
    assert step.stderr.splitlines()[-2:] == [
        f"memobuild: error: {failing / 'Dockerfile'}:2: step 2 RUN echo before; exit 3 failed "
        "with exit code 3",
        "  | before",
    ]

    bad_output = memobuild("build", str(good), "-o", "type=nonsense,dest=x")
    assert bad_output.returncode == 2
    assert "type=nonsense,dest=x" in bad_output.stderr.splitlines()[-1]
    assert " DONE " not in bad_output.stderr  # refused before anything ran

    missing = memobuild("build", str(tmp_path / "no-such-context"))
    assert missing.returncode == 2
    assert "no-such-context" in missing.stderr.splitlines()[-1]

    usage = memobuild("build", str(good), "--progress=fancy")
    assert usage.returncode == 2
    assert "invalid choice: 'fancy'" in usage.stderr

    unwritable = memobuild("build", str(good), "--events", str(tmp_path / "no" / "dir" / "x"))
    assert unwritable.returncode == 2
    assert unwritable.stderr.startswith("memobuild: error: --events ")


def test_progress_json_is_one_event_per_line_on_stdout(tmp_path: Path, base: BusyboxImage) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})
    done = memobuild("build", str(context), "--progress=json", "-t", "app:json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [row["event"] for row in rows]
    assert kinds[0] == "BuildStarted" and kinds[-1] == "BuildFinished"
    assert kinds.count("StepStarted") == kinds.count("StepExecuted") == 5
    assert [row["step"] for row in rows if row["event"] == "StepExecuted"] == [1, 2, 3, 4, 5]
    started = [row for row in rows if row["event"] == "StepStarted"]
    assert all(row["reason"] for row in started)
    layer = next(row for row in rows if row["event"] == "LayerBuilt")
    assert layer["size"] > 0 and layer["digest"].startswith("sha256:")
    finished = rows[-1]
    assert finished["tags"] == ["app:json"] and finished["executed"] == 5
    with LocalStore() as store:
        assert finished["image_digest"] == ImageStore(store).resolve_digest("app:json")

    failing = make_context(tmp_path / "failing", "FROM busybox\nRUN echo before; exit 3\n")
    failed = memobuild("build", str(failing), "--progress=json")
    assert failed.returncode == 1
    last = json.loads(failed.stdout.splitlines()[-1])
    assert (last["event"], last["step"], last["exit_code"]) == ("BuildFailed", 2, 3)
    assert failed.stderr.startswith("memobuild: error: ")  # people still read stderr

    usage = memobuild("build", str(context), "--progress=json", "--build-arg", "=x")
    assert usage.returncode == 2
    [only] = [json.loads(line) for line in usage.stdout.splitlines()]
    assert only["event"] == "BuildFailed" and "--build-arg" in only["error"]


def test_outputs_are_written_and_listed_in_the_summary(
    tmp_path: Path, base: BusyboxImage, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})
    layout, rootfs = tmp_path / "layout", tmp_path / "rootfs"
    args = ["build", str(context), "-o", f"type=oci,dest={layout}", "--output", str(rootfs)]
    assert main(args) == 0
    captured = capsys.readouterr()
    digest = captured.out.strip()
    err = captured.err.splitlines()
    listed = err[err.index("outputs:") + 1 :]
    assert listed[0].startswith(f"  oci {layout} (") and listed[0].endswith(f", {digest})")
    assert re.fullmatch(rf"  local {re.escape(str(rootfs))} \(\d+(\.\d)? [KMG]?i?B\)", listed[1])
    assert len(listed) == 2
    assert (rootfs / "app" / "out.txt").read_text() == "built from hi\n"
    index = json.loads((layout / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest]

    assert main([*args, "--progress=json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    written = [row for row in rows if row["event"] == "OutputWritten"]
    assert [(w["type"], w["dest"], w["digest"]) for w in written] == [
        ("oci", str(layout), digest),
        ("local", str(rootfs), None),
    ]
    assert all(w["bytes"] > 0 for w in written)
    assert rows[-1]["bytes_written"] == sum(w["bytes"] for w in written)  # no new layers


def test_a_reader_that_goes_away_stops_the_build_quietly(
    tmp_path: Path, base: BusyboxImage, isolated_cache: Path
) -> None:
    context = make_context(tmp_path / "ctx", "FROM busybox\nRUN echo a; sleep 1; echo b\n")
    proc = subprocess.Popen(
        ["memobuild", "build", str(context), "--progress=json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = json.loads(proc.stdout.readline())  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert first["event"] == "BuildStarted"
    assert err == ""  # no traceback, nothing half-said
    assert scratch_entries(isolated_cache) == []


def test_progress_auto_draws_the_live_view_on_a_terminal(
    tmp_path: Path, base: BusyboxImage
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})
    leader, follower = os.openpty()
    proc = subprocess.Popen(
        ["memobuild", "build", str(context)],
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "120"},
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, screen.decode()
    assert out.startswith("sha256:")
    drawn = screen.decode()
    assert "\x1b[" in drawn  # drawn, not printed line by line
    text = strip_ansi(drawn)
    assert " => #4 RUN echo" in text
    assert "built stage-0 in " in text
    assert "#4 DONE" not in text  # that is the plain form


def test_progress_tty_and_plain_are_drawn_as_asked(
    tmp_path: Path, base: BusyboxImage, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})
    assert main(["build", str(context), "--progress=tty"]) == 0
    drawn = capsys.readouterr().err
    err = strip_ansi(drawn)
    assert "\x1b[" in drawn and " => #3 COPY . ." in err and "#3 DONE" not in err
    assert main(["build", str(context), "--progress=plain"]) == 0
    err = capsys.readouterr().err
    assert "\x1b[" not in err and "#3 CACHED COPY . ." in err.splitlines()


def test_help_names_every_flag_and_where_output_goes() -> None:
    shown = memobuild("build", "--help")
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    for flag in (
        "-f FILE",
        "-t NAME[:TAG]",
        "-o SPEC, --output SPEC",
        "--build-arg",
        "--target STAGE",
        "--no-cache",
        "--build-context",
        "--secret",
        "--progress {auto,tty,plain,json}",
        "--events FILE",
    ):
        assert flag in text, flag
    assert "stdout gets one line, the image digest" in text
    assert "0 built, 1 a step failed" in text and "2 a usage or Dockerfile error" in text


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
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert any(line.startswith("built first in ") for line in captured.err.splitlines())
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
    assert main(["build", "--pull=never", str(context)]) == 2  # never Docker Hub itself
    err = capsys.readouterr().err
    assert "image 'alpine:3.20' not found (not in the local store for " in err
    assert "--build-context alpine:3.20=oci-layout://" in err


# --- interrupted builds --------------------------------------------------------------------


SLOW = """\
FROM busybox
COPY a.txt /a.txt
ARG SLEEP=60
RUN echo sleeping; sleep $SLEEP; echo done > /slept.txt
"""


def _start_build(context: Path, *extra: str) -> subprocess.Popen[str]:
    """A build in a child process; its progress (stderr) is read line by line."""
    return subprocess.Popen(
        [sys.executable, "-m", "memobuild.cli", "build", str(context), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def _wait_for_line(proc: subprocess.Popen[str], wanted: str, timeout: float = 60) -> list[str]:
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
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
    assert len(scratch_entries(isolated_cache, settle=0)) == 2  # its directory and lock file

    _assert_store_is_sound(isolated_cache)
    done = subprocess.run(
        [sys.executable, "-m", "memobuild.cli", "build", str(context), "--build-arg", "SLEEP=0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "#2 CACHED COPY a.txt /a.txt" in lines  # stored before the kill
    assert "3 steps, 2 cached, 1 executed" in next(
        line for line in lines if line.startswith("built ")
    )
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
    assert "#2 CACHED COPY a.txt /a.txt" in done.stderr.splitlines()


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
    err = capsys.readouterr().err.splitlines()
    assert not any("CACHED" in line for line in err)
    assert "#3 COPY . . (miss: --no-cache)" in err
    assert err[-2:] == ["executed, and why:", "  steps 1-5: --no-cache"]
    summary = next(line for line in err if line.startswith("built "))
    assert "5 steps, 0 cached, 5 executed" in summary


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
    assert "building stage-0 of ctx/Dockerfile" in capsys.readouterr().err
    assert main(["plan", "ctx"]) == 0
    assert "2 would hit, 0 would miss" in capsys.readouterr().out
    # ... and -f relative to the current directory, not to PATH.
    assert main(["build", "ctx", "-f", "other.Dockerfile", "-t", "other"]) == 0
    assert "building stage-0 of other.Dockerfile" in capsys.readouterr().err
    with LocalStore() as store:
        images = ImageStore(store)
        default, other = images.load("default"), images.load("other")
        assert default is not None and other is not None
        assert default.history[-1].created_by == "COPY a.txt /from-default.txt # buildkit"
        assert other.history[-1].created_by == "COPY a.txt /from-other.txt # buildkit"
