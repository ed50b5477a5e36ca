"""The progress renderers of `memobuild build` (commands/progress.py), fed real builds' events."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from rich.console import Console

from busybox_image import BusyboxImage, make_context
from memobuild.build import events as ev
from memobuild.build.executor import build
from memobuild.cache.store import LocalStore
from memobuild.commands.progress import (
    JsonLines,
    PlainProgress,
    TtyProgress,
    open_progress,
    progress_mode,
)
from memobuild.errors import BuildStepError

DOCKERFILE = """\
FROM busybox
WORKDIR /app
COPY . .
RUN for i in 1 2 3 4 5 6 7 8; do echo line-$i; done; cat hello.txt > out.txt
CMD ["cat", "/app/out.txt"]
"""
RUN_TEXT = "RUN for i in 1 2 3 4 5 6 7 8; do echo line-$i; done; cat hello.txt > out.txt"

TWO_STAGES = """\
FROM busybox AS left
RUN echo left > /left.txt
FROM busybox AS right
RUN echo right > /right.txt
FROM busybox
COPY --from=left /left.txt /left.txt
COPY --from=right /right.txt /right.txt
"""


def record(context: Path, store: LocalStore) -> list[ev.BuildEvent]:
    """The events of a real build of ``context``."""
    events: list[ev.BuildEvent] = []
    build(context, store=store, on_event=events.append)
    return events


def plain_lines(events: list[ev.BuildEvent]) -> list[str]:
    out = io.StringIO()
    progress = PlainProgress(out)
    for event in events:
        progress(event)
    return out.getvalue().splitlines()


class Clock:
    """A clock the test moves by hand, so that the timers the tty view shows are known."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _strip_ansi(text: str) -> str:
    """What a terminal shows of ``text``, near enough: escape sequences and CRs removed."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", text)


def rendered(renderable: object, width: int = 200) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def test_plain_lines_say_what_ran_why_and_what_was_cached(
    tmp_path: Path, base: BusyboxImage, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})
    monkeypatch.chdir(tmp_path)
    first = plain_lines(record(context, store))
    assert first[0] == "building stage-0 of ctx/Dockerfile: 5 steps in 1 stage"
    assert any(line.startswith("#2 WORKDIR /app (miss: ") for line in first)
    assert "#4 line-8" in first
    assert any(line.startswith("#4 DONE ") and "(layer " in line for line in first)
    assert first[-3].startswith("built stage-0 in ")
    assert "5 steps, 0 cached, 5 executed, hit rate 0%" in first[-3]
    assert first[-2:] == [
        "executed, and why:",
        "  steps 1-5: no recorded build of Dockerfile@stage-0 to compare with",
    ]

    (context / "hello.txt").write_text("changed")
    second = plain_lines(record(context, store))
    assert "#1 CACHED FROM busybox" in second
    assert "#2 CACHED WORKDIR /app" in second
    assert "#3 COPY . . (miss: hello.txt changed)" in second
    assert f"#4 {RUN_TEXT} (miss: parent step 3 changed)" in second
    assert "5 steps, 2 cached, 3 executed, hit rate 40%" in second[-5]
    assert second[-4:] == [
        "executed, and why:",
        "  step 3 COPY . .: hello.txt changed",
        f"  step 4 {RUN_TEXT}: parent step 3 changed",
        '  step 5 CMD ["cat", "/app/out.txt"]: parent step 4 changed',
    ]

    again = plain_lines(record(context, store))
    assert all(" CACHED " in line for line in again[1:-1])
    assert again[-1].startswith("built stage-0 in ")
    assert "5 steps, 5 cached, 0 executed, hit rate 100%, 0 B written" in again[-1]


def test_plain_lines_name_stages_when_there_are_several(
    tmp_path: Path, base: BusyboxImage, store: LocalStore
) -> None:
    context = make_context(tmp_path / "ctx", TWO_STAGES)
    lines = plain_lines(record(context, store))
    assert lines[0].endswith(": 7 steps in 3 stages")
    assert any(line.startswith("#2 [left] RUN echo left > /left.txt (miss: ") for line in lines)
    assert any(line.startswith("#4 [right] RUN echo right > /right.txt (miss: ") for line in lines)
    # FROM busybox of stages 2 and 3 is the same step as stage 1's: cached by then.
    assert (
        lines[-1] == "  steps 1-2, 4, 6-7: no recorded build of Dockerfile@stage-2 to compare with"
    )

    (context / "Dockerfile").write_text(TWO_STAGES.replace("echo left", "echo LEFT"))
    lines = plain_lines(record(context, store))
    assert lines[lines.index("executed, and why:") + 1 :] == [
        "  step 2 [left] RUN echo LEFT > /left.txt: instruction changed: "
        "RUN echo left > /left.txt -> RUN echo LEFT > /left.txt",
        "  step 6 [stage-2] COPY --from=left /left.txt /left.txt: --from stage left changed",
        "  step 7 [stage-2] COPY --from=right /right.txt /right.txt: parent step 6 changed",
    ]


def test_a_failed_step_ends_the_plain_lines_with_its_exit_code(
    tmp_path: Path, base: BusyboxImage, store: LocalStore
) -> None:
    context = make_context(tmp_path / "ctx", "FROM busybox\nRUN echo oops; exit 3\n")
    events: list[ev.BuildEvent] = []
    with pytest.raises(BuildStepError):
        build(context, store=store, on_event=events.append)
    lines = plain_lines(events)
    assert lines[-5:-3] == ["#2 oops", "#2 ERROR exit code 3"]
    assert lines[-3].startswith("build failed after ")
    assert lines[-3].endswith("s: 0 cached, 1 executed")  # FROM, recorded; the RUN failed
    assert lines[-2:] == [
        "executed, and why:",
        "  step 1 FROM busybox: no recorded build of Dockerfile@stage-0 to compare with",
    ]


def test_json_lines_are_the_events_in_order(
    tmp_path: Path, base: BusyboxImage, store: LocalStore
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})
    events = record(context, store)
    out = io.StringIO()
    progress = JsonLines(out)
    for event in events:
        progress(event)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows == [ev.event_json(event) for event in events]
    kinds = [row["event"] for row in rows]
    assert kinds[0] == "BuildStarted" and kinds[-1] == "BuildFinished"
    run = [row for row in rows if row.get("step") == 4]
    assert [row["event"] for row in run] == ["StepStarted"] + ["StepOutput"] * 8 + [
        "LayerBuilt",
        "StepExecuted",
    ]
    assert run[0]["reason"] and run[1]["line"] == "line-1" and run[-2]["size"] > 0
    assert rows[-1]["image_digest"].startswith("sha256:") and rows[-1]["hit_rate"] == 0.0


def test_tty_view_shows_running_steps_with_timers_reasons_and_last_lines(
    tmp_path: Path, base: BusyboxImage, store: LocalStore
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})
    record(context, store)
    (context / "hello.txt").write_text("changed")
    events = record(context, store)

    clock = Clock()
    screen = Console(file=io.StringIO(), force_terminal=True, width=160)
    progress = TtyProgress(screen, clock=clock, refresh_per_second=20)
    last_output = max(i for i, e in enumerate(events) if isinstance(e, ev.StepOutput))
    try:
        for event in events[: last_output + 1]:
            if isinstance(event, ev.StepStarted):
                clock.now += 1.0  # each step starts a second after the one before
            progress(event)
        clock.now += 2.5
        view = rendered(progress.view()).splitlines()
    finally:
        progress.close()
    assert view[0].startswith("[+] building stage-0: 3/5 steps, 2 cached")
    assert view[0].endswith("4.5s")  # two steps started, 1 s apart, 2.5 s ago for the last
    assert view[1].startswith(f" => #4 {RUN_TEXT}  (parent step 3 changed)")
    assert view[1].endswith("2.5s")
    assert [line.strip() for line in view[2:]] == [f"│ line-{i}" for i in range(3, 9)]

    for event in events[last_output + 1 :]:
        progress(event)
    progress.close()
    assert rendered(progress.view()).count(" => ") == 0  # nothing runs any more
    out = screen.file
    assert isinstance(out, io.StringIO)
    text = out.getvalue()
    assert "\x1b[" in text  # drawn for a terminal
    scrolled = [line for line in _strip_ansi(text).splitlines() if line.strip()]
    assert any(line.startswith(" => CACHED #2 WORKDIR /app") for line in scrolled)
    assert any(line.startswith(" => #3 COPY . .") for line in scrolled)
    assert any(line.startswith("built stage-0 in ") for line in scrolled)
    assert "  step 3 COPY . .: hello.txt changed" in scrolled


def test_tty_view_as_the_callback_of_a_build_with_parallel_stages(
    tmp_path: Path, base: BusyboxImage, store: LocalStore
) -> None:
    context = make_context(tmp_path / "ctx", TWO_STAGES)
    screen = Console(file=io.StringIO(), force_terminal=True, width=120)
    progress = TtyProgress(screen, refresh_per_second=100)  # redraws race the events
    try:
        build(context, store=store, on_event=progress)
    finally:
        progress.close()
    out = screen.file
    assert isinstance(out, io.StringIO)
    scrolled = _strip_ansi(out.getvalue())
    assert "#2 [left] RUN echo left > /left.txt" in scrolled
    assert "#4 [right] RUN echo right > /right.txt" in scrolled
    assert "built stage-2 in " in scrolled


def test_a_failed_build_stops_the_tty_view_and_says_which_step(
    tmp_path: Path, base: BusyboxImage, store: LocalStore
) -> None:
    context = make_context(tmp_path / "ctx", "FROM busybox\nRUN echo oops; exit 3\n")
    screen = Console(file=io.StringIO(), force_terminal=True, width=120)
    progress = TtyProgress(screen)
    with pytest.raises(BuildStepError):
        build(context, store=store, on_event=progress)
    out = screen.file
    assert isinstance(out, io.StringIO)
    lines = _strip_ansi(out.getvalue()).splitlines()
    error = next(line for line in lines if line.startswith(" => ERROR "))
    assert error.startswith(" => ERROR #2 RUN echo oops; exit 3")
    assert error.rstrip().endswith("exit code 3")
    assert any(line.startswith("build failed after ") for line in lines)


def test_auto_progress_is_tty_only_on_a_capable_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert progress_mode("auto", io.StringIO()) == "plain"
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setenv("TERM", "xterm")
        assert progress_mode("auto", terminal) == "tty"
        monkeypatch.setenv("TERM", "dumb")
        assert progress_mode("auto", terminal) == "plain"
        assert progress_mode("tty", terminal) == "tty"  # asked for by name
    os.close(leader)
    assert progress_mode("json", io.StringIO()) == "json"
    assert isinstance(open_progress("plain", io.StringIO()), PlainProgress)
    assert isinstance(open_progress("json", io.StringIO()), JsonLines)
    assert isinstance(open_progress("tty", io.StringIO()), TtyProgress)
