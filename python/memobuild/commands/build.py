"""`memobuild build`: build an image from a Dockerfile, reusing every step the cache holds.

Takes ``docker build``'s spelling: a context ``PATH`` (default ``.``), ``-f/--file`` (relative to
the current directory, default ``PATH/Dockerfile``), ``-t/--tag`` (repeatable), ``--build-arg``,
``--target``, ``--no-cache``, ``--build-context NAME=oci-layout://PATH[:TAG]`` (or
``docker-archive://FILE``, or a directory) and ``--secret id=ID,src=FILE|env=VAR``. Progress is
one plain line per step, numbered like BuildKit's plain output::

    #3 CACHED step 3 COPY . /app
    #4 RUN make
    #4 cc -o app main.c
    #4 DONE 2.1s

and a summary line at the end. ``--events FILE`` also writes every build event as a JSON line.
SIGTERM stops a build the way Ctrl-C does: running steps are killed, the scratch directories
removed, and everything already stored stays for the next build.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

from memobuild.build import events as ev
from memobuild.commands.options import add_build_selection
from memobuild.commands.plan import parse_build_args

if TYPE_CHECKING:
    from memobuild.build.executor import BuildResult

__all__ = ["add_parser", "run_build"]


class _Printer:
    """Turns build events into the plain progress lines (and JSON lines with --events)."""

    def __init__(self, out: IO[str], events: IO[str] | None) -> None:
        self.out = out
        self.events = events

    def __call__(self, event: ev.BuildEvent) -> None:
        if self.events is not None:
            self.events.write(json.dumps(ev.event_json(event), ensure_ascii=False) + "\n")
            self.events.flush()
        line = self._line(event)
        if line is not None:
            print(line, file=self.out, flush=True)

    @staticmethod
    def _line(event: ev.BuildEvent) -> str | None:
        if isinstance(event, ev.BuildStarted):
            stages = "1 stage" if event.stages == 1 else f"{event.stages} stages"
            where = _shown(event.dockerfile)
            return f"building {event.target} of {where}: {event.steps} steps in {stages}"
        if isinstance(event, ev.StepCached):
            return f"#{event.step} CACHED step {event.step} {event.text}"
        if isinstance(event, ev.StepStarted):
            return f"#{event.step} {event.text}"
        if isinstance(event, ev.StepOutput):
            return f"#{event.step} {event.line}"
        if isinstance(event, ev.StepExecuted):
            if event.text.startswith("FROM"):
                return f"#{event.step} {event.text}"
            return f"#{event.step} DONE {event.duration:.1f}s"
        return None


def _shown(path: str) -> str:
    """A path relative to the current directory when it is below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def _summary(result: BuildResult) -> str:
    names = f", tagged {', '.join(result.tags)}" if result.tags else ""
    return (
        f"built {result.plan.target} in {result.duration:.1f}s: {len(result.steps)} steps, "
        f"{result.cached} cached, {result.executed} executed; image {result.digest}{names}"
    )


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind the build like Ctrl-C, so its clean-up runs."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_build(args: argparse.Namespace) -> int:
    from memobuild.build.executor import build

    dockerfile = Path(args.file).absolute() if args.file else Path("Dockerfile")  # in PATH
    build_args = parse_build_args(args.build_arg or (), os.environ)
    events = open(args.events, "w", encoding="utf-8") if args.events else None  # noqa: SIM115
    try:
        with _sigterm_as_interrupt():
            result = build(
                args.path,
                dockerfile,
                target=args.target,
                build_args=build_args,
                tags=tuple(args.tag or ()),
                build_contexts=tuple(args.build_context or ()),
                secrets=tuple(args.secret or ()),
                no_cache=args.no_cache,
                on_event=_Printer(sys.stdout, events),
            )
    finally:
        if events is not None:
            events.close()
    print(_summary(result), flush=True)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "build",
        help="build an image from a Dockerfile",
        description="Build the target stage of a Dockerfile. Every step whose cache key the "
        "local store holds is reused without running; the others run isolated (bubblewrap, "
        "else chroot) and are stored for the next build.",
    )
    p.add_argument("path", nargs="?", default=".", metavar="PATH", help="the build context")
    p.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="the Dockerfile (default: PATH/Dockerfile); relative to the current directory",
    )
    p.add_argument(
        "-t",
        "--tag",
        action="append",
        metavar="NAME[:TAG]",
        help="save the image in the local image store under this name (repeatable)",
    )
    p.add_argument(
        "--no-cache", action="store_true", help="run every step (results are still stored)"
    )
    add_build_selection(p)
    p.add_argument(
        "--secret",
        action="append",
        metavar="id=ID,src=FILE|env=VAR",
        help="a secret RUN --mount=type=secret can read; never stored (repeatable)",
    )
    p.add_argument(
        "--events", metavar="FILE", help="also write every build event to FILE as JSON lines"
    )
    p.set_defaults(func=run_build)
