"""How ``memobuild build`` shows a build while it runs: ``--progress=tty|plain|json``.

Each renderer is an ``on_event`` callback (build/events.py) with a ``close()``:

* :class:`TtyProgress`: a live view drawn with rich (imported only when this view is chosen, so
  the CLI starts fast): the running steps with their timers, stage names, miss reasons and the
  last lines each one printed; finished and cached steps scroll above it.
* :class:`PlainProgress`: one line per happening, numbered like BuildKit's plain output, for CI
  logs and pipes::

      #2 CACHED WORKDIR /app
      #3 CACHED (remote) RUN apk add make
      #3 COPY . . (miss: hello.txt changed)
      #3 DONE 0.0s (layer 1.2 KiB)
      #4 RUN make (miss: parent step 3 changed)
      #4 cc -o app main.c
      #4 DONE 2.1s (layer 48.0 KiB)

  ``[stage]`` precedes the instruction when the build has more than one stage; ``(remote)``
  marks a step the remote cache answered.
* :class:`JsonLines`: every event as one JSON object per line (:func:`events.event_json`),
  errors included (``BuildFailed``); also what ``--events FILE`` writes.

Both human renderers end with the same summary (:func:`summary_lines`): steps, cached,
executed, hit rate, wall time, bytes written, with a remote cache its local hits, remote hits
and uploads, the outputs written and, for every step that ran, why it missed the cache, in
``memobuild explain``'s words. The remote cache's own trouble (switched off, a download that
failed verification) is the one warning the cache logs, not repeated here.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Protocol

from memobuild.build import events as ev
from memobuild.cache.remote_events import REMOTE, UPLOAD
from memobuild.commands.options import format_size

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

__all__ = [
    "BuildTally",
    "JsonLines",
    "PlainProgress",
    "Progress",
    "Tee",
    "TtyProgress",
    "open_progress",
    "progress_mode",
    "summary_lines",
]

TEXT_LIMIT = 100  # characters of an instruction a line shows
OUTPUT_LINES = 6  # lines of a running step's output the tty view keeps
GROUPED_REASON = 3  # steps sharing one reason that the summary lists as one line


class Progress(Protocol):
    """An ``on_event`` callback that may hold a resource (a live display) until closed."""

    def __call__(self, event: ev.BuildEvent) -> None: ...

    def close(self) -> None: ...


def progress_mode(requested: str, stream: IO[str]) -> str:
    """``auto`` made concrete: ``tty`` when ``stream`` is a capable terminal, else ``plain``."""
    if requested != "auto":
        return requested
    interactive = stream.isatty() and os.environ.get("TERM", "") != "dumb"
    return "tty" if interactive else "plain"


def open_progress(mode: str, stream: IO[str]) -> Progress:
    """The renderer for a concrete ``mode`` (see :func:`progress_mode`), writing to ``stream``."""
    if mode == "json":
        return JsonLines(stream)
    if mode == "plain":
        return PlainProgress(stream)
    if mode == "tty":
        from rich.console import Console

        # Asked for by name, the live view is drawn even when the stream is not a terminal.
        return TtyProgress(Console(file=stream, force_terminal=True, highlight=False))
    raise ValueError(f"unknown progress mode {mode!r}")


class Tee:
    """Hands every event to several renderers; closes them all."""

    def __init__(self, renderers: Iterable[Progress]) -> None:
        self.renderers = tuple(renderers)

    def __call__(self, event: ev.BuildEvent) -> None:
        for renderer in self.renderers:
            renderer(event)

    def close(self) -> None:
        for renderer in self.renderers:
            renderer.close()


# --- what the events said ------------------------------------------------------------------


@dataclass(frozen=True)
class RanStep:
    """A step that ran in this build, and why it missed the cache."""

    step: int
    stage: str
    text: str
    reason: str | None


@dataclass
class BuildTally:
    """Everything the renderers need to remember from the events: counts, reasons, layers."""

    clock: Callable[[], float] = time.monotonic
    started: ev.BuildStarted | None = None
    started_at: float = 0.0
    finished: ev.BuildFinished | None = None
    failed: ev.BuildFailed | None = None
    cached: int = 0
    remote_hits: int = 0  # of ``cached``, the steps the remote cache answered
    remote_cache: bool = False  # a remote cache is configured (it sent events)
    uploads: int = 0  # action entries stored on the remote cache
    integrity_failures: int = 0
    remote_disabled: bool = False
    reasons: dict[int, str] = field(default_factory=dict)  # step -> why it missed
    layer_bytes: dict[int, int] = field(default_factory=dict)  # step -> its layer's size
    ran: list[RanStep] = field(default_factory=list)
    outputs: list[ev.OutputWritten] = field(default_factory=list)

    def add(self, event: ev.BuildEvent) -> None:
        if isinstance(event, ev.BuildStarted):
            self.started, self.started_at = event, self.clock()
        elif isinstance(event, ev.StepCached):
            self.cached += 1
            if event.tier == REMOTE:
                self.remote_hits += 1
        elif isinstance(event, ev.StepStarted):
            self.reasons[event.step] = event.reason
        elif isinstance(event, ev.LayerBuilt):
            self.layer_bytes[event.step] = self.layer_bytes.get(event.step, 0) + event.size
        elif isinstance(event, ev.StepExecuted):
            reason = self.reasons.get(event.step)
            self.ran.append(RanStep(event.step, event.stage, event.text, reason))
        elif isinstance(event, ev.OutputWritten):
            self.outputs.append(event)
        elif isinstance(event, ev.BuildFinished):
            self.finished = event
        elif isinstance(event, ev.BuildFailed):
            self.failed = event
        elif isinstance(event, ev.REMOTE_CACHE_EVENTS):
            self.remote_cache = True
            if isinstance(event, ev.RemoteSync):
                if event.direction == UPLOAD and event.kind == "action":
                    self.uploads += 1
            elif isinstance(event, ev.RemoteIntegrityFailure):
                self.integrity_failures += 1
            elif isinstance(event, ev.RemoteDisabled):
                self.remote_disabled = True

    @property
    def multi_stage(self) -> bool:
        return self.started is not None and self.started.stages > 1

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started_at if self.started is not None else 0.0

    def label(self, stage: str, text: str) -> str:
        """``[stage] TEXT`` (the stage only when there are several), shortened for one line."""
        shown = _short(text)
        return f"[{stage}] {shown}" if self.multi_stage else shown


def _short(text: str, limit: int = TEXT_LIMIT) -> str:
    line = " ".join(text.split())  # heredocs and continuations on one line
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _failure(event: ev.BuildFailed) -> str:
    """How a failed step ended: ``exit code 2``, ``killed by SIGKILL``, or the error."""
    code = event.exit_code
    if code is None:
        return event.error.splitlines()[0] if event.error else "failed"
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def summary_lines(tally: BuildTally) -> list[str]:
    """The summary a finished (or failed) build ends with; empty before the build started."""
    if tally.started is None:
        return []
    done = tally.finished
    if done is None:
        stopped = tally.failed is not None and tally.failed.error == "interrupted"
        word = "interrupted" if stopped else "failed"
        lines = [
            f"build {word} after {tally.elapsed:.1f}s: {tally.cached} cached, "
            f"{len(tally.ran)} executed"
        ]
    else:
        lines = [
            f"built {done.target} in {done.duration:.1f}s: {_plural(done.steps, 'step')}, "
            f"{done.cached} cached, {done.executed} executed, hit rate {done.hit_rate:.0%}, "
            f"{format_size(done.bytes_written)} written"
        ]
    cache = _cache_line(tally)
    if cache:
        lines.append(cache)
    if tally.ran:
        lines.append("executed, and why:")
        lines.extend(_reason_lines(tally))
    if tally.outputs:
        lines.append("outputs:")
        for out in tally.outputs:
            digest = f", {out.digest}" if out.digest else ""
            lines.append(f"  {out.type} {out.dest} ({format_size(out.bytes)}{digest})")
    if done is not None and done.tags:
        lines.append(f"tagged {', '.join(done.tags)}")
    return lines


def _cache_line(tally: BuildTally) -> str | None:
    """``cache: 2 local hits, 3 remote hits (1.2 MiB downloaded), 4 uploads (3.4 MiB)``, and
    what went wrong with the remote; None for a build without a remote cache."""
    done = tally.finished
    if not (tally.remote_cache or (done is not None and done.remote_cache)):
        return None
    remote = done.remote_hits if done is not None else tally.remote_hits
    local = done.local_hits if done is not None else tally.cached - tally.remote_hits
    uploads = done.uploads if done is not None else tally.uploads
    line = f"cache: {_plural(local, 'local hit')}, {_plural(remote, 'remote hit')}"
    if done is not None and done.bytes_downloaded:
        line += f" ({format_size(done.bytes_downloaded)} downloaded)"
    line += f", {_plural(uploads, 'upload')}"
    if done is not None and done.bytes_uploaded:
        line += f" ({format_size(done.bytes_uploaded)})"
    trouble = []
    if done is not None and done.upload_failures:
        trouble.append(f"{_plural(done.upload_failures, 'failed upload')}")
    failures = done.integrity_failures if done is not None else tally.integrity_failures
    if failures:
        trouble.append(f"{_plural(failures, 'integrity failure')} (discarded, rebuilt)")
    if tally.remote_disabled:
        trouble.append("remote switched off")
    return line + "".join(f"; {t}" for t in trouble)


def _reason_lines(tally: BuildTally) -> list[str]:
    """``step N TEXT: reason`` for each step that ran; a reason shared by many steps (a first
    build, --no-cache) is said once for all of them, so the summary stays short."""
    ran = sorted(tally.ran, key=lambda r: r.step)
    sharing: dict[str | None, list[int]] = {}
    for step in ran:
        sharing.setdefault(step.reason, []).append(step.step)
    lines = []
    for step in ran:
        steps = sharing[step.reason]
        if step.reason and len(steps) >= GROUPED_REASON:
            if step.step == steps[0]:
                lines.append(f"  steps {_ranges(steps)}: {step.reason}")
            continue
        why = f": {step.reason}" if step.reason else ""
        lines.append(f"  step {step.step} {tally.label(step.stage, step.text)}{why}")
    return lines


def _ranges(numbers: Sequence[int]) -> str:
    """``1-3, 5, 7-8`` for sorted step numbers."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


# --- JSON lines ----------------------------------------------------------------------------


class JsonLines:
    """Every event as one JSON object per line, flushed as it happens."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: ev.BuildEvent) -> None:
        self.out.write(json.dumps(ev.event_json(event), ensure_ascii=False) + "\n")
        self.out.flush()

    def close(self) -> None:
        """Nothing to release: the caller owns the stream."""


# --- plain lines ---------------------------------------------------------------------------


class PlainProgress:
    """BuildKit-like plain lines (see the module docstring), then the summary."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.tally = BuildTally()
        self._announced: set[int] = set()  # steps whose start line is out

    def __call__(self, event: ev.BuildEvent) -> None:
        self.tally.add(event)
        for line in self._lines(event):
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        """Nothing to release: the caller owns the stream."""

    def _lines(self, event: ev.BuildEvent) -> list[str]:
        tally = self.tally
        if isinstance(event, ev.BuildStarted):
            return [
                f"building {event.target} of {_shown(event.dockerfile)}: "
                f"{_plural(event.steps, 'step')} in {_plural(event.stages, 'stage')}"
            ]
        if isinstance(event, ev.StepCached):
            where = " (remote)" if event.tier == REMOTE else ""
            return [f"#{event.step} CACHED{where} {tally.label(event.stage, event.text)}"]
        if isinstance(event, ev.StepStarted):
            self._announced.add(event.step)
            why = f" (miss: {event.reason})" if event.reason else ""
            return [f"#{event.step} {tally.label(event.stage, event.text)}{why}"]
        if isinstance(event, ev.StepOutput):
            return [f"#{event.step} {event.line}"]
        if isinstance(event, ev.StepExecuted):
            lines = []
            if event.step not in self._announced:  # a step that ran without a start event
                lines.append(f"#{event.step} {tally.label(event.stage, event.text)}")
            layer = tally.layer_bytes.get(event.step)
            size = f" (layer {format_size(layer)})" if layer else ""
            lines.append(f"#{event.step} DONE {event.duration:.1f}s{size}")
            return lines
        if isinstance(event, ev.BuildFailed):
            lines = [f"#{event.step} ERROR {_failure(event)}"] if event.step else []
            return lines + summary_lines(tally)
        if isinstance(event, ev.BuildFinished):
            return summary_lines(tally)
        return []


def _shown(path: str) -> str:
    """A path relative to the current directory when it is below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


# --- the live terminal view ----------------------------------------------------------------


@dataclass
class _Running:
    """A step the tty view shows as running."""

    step: int
    stage: str
    text: str
    reason: str
    since: float
    output: deque[str] = field(default_factory=lambda: deque(maxlen=OUTPUT_LINES))


class TtyProgress:
    """A live view of the build on a rich Console (see the module docstring).

    Events arrive on the executor's threads and the view is redrawn on rich's refresh thread:
    the state is guarded by one lock, and never held while printing, so the two cannot wait
    for each other.
    """

    def __init__(
        self,
        console: Console,
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_per_second: float = 10,
    ) -> None:
        from rich.live import Live

        self.console = console
        self.tally = BuildTally(clock)
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[int, _Running] = {}
        self._live: Live = Live(
            console=console,
            get_renderable=self.view,
            refresh_per_second=refresh_per_second,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live_on = False

    def __call__(self, event: ev.BuildEvent) -> None:
        with self._lock:
            self.tally.add(event)
            printed = self._apply(event)
        if isinstance(event, ev.BuildStarted) and not self._live_on:
            self._live.start()
            self._live_on = True
        if isinstance(event, ev.BuildFinished | ev.BuildFailed):
            self.close()
        for renderable in printed:
            self.console.print(renderable)

    def close(self) -> None:
        if self._live_on:
            self._live_on = False
            self._live.stop()

    def _apply(self, event: ev.BuildEvent) -> list[RenderableType]:
        """Update the running steps; return what scrolls above the live view."""
        from rich.text import Text

        tally = self.tally
        if isinstance(event, ev.BuildStarted):
            return [
                Text.assemble(
                    ("building ", "bold"),
                    (event.target, "bold cyan"),
                    f" of {_shown(event.dockerfile)}: {_plural(event.steps, 'step')} in "
                    f"{_plural(event.stages, 'stage')}",
                )
            ]
        if isinstance(event, ev.StepCached):
            if event.tier == REMOTE:
                prefix, style = " => CACHED (remote) ", "magenta"
            else:
                prefix, style = " => CACHED ", "blue"
            return [self._row(prefix, event.step, event.stage, event.text, "", style)]
        if isinstance(event, ev.StepStarted):
            self._running[event.step] = _Running(
                event.step, event.stage, event.text, event.reason, self._clock()
            )
        elif isinstance(event, ev.StepOutput):
            running = self._running.get(event.step)
            if running is not None:
                running.output.append(_printable(event.line))
        elif isinstance(event, ev.StepExecuted):
            self._running.pop(event.step, None)
            layer = tally.layer_bytes.get(event.step)
            size = f"{format_size(layer)}  " if layer else ""
            timing = f"{size}{event.duration:.1f}s"
            return [self._row(" => ", event.step, event.stage, event.text, timing, "green")]
        elif isinstance(event, ev.BuildFailed):
            failed = self._running.get(event.step) if event.step else None
            self._running.clear()
            rows: list[RenderableType] = []
            if failed is not None:
                rows.append(
                    self._row(
                        " => ERROR ", failed.step, failed.stage, failed.text, _failure(event), "red"
                    )
                )
            return rows + self._summary("bold red")
        elif isinstance(event, ev.BuildFinished):
            return self._summary("bold green")
        return []

    def _row(
        self, prefix: str, step: int, stage: str, text: str, right: str, style: str
    ) -> RenderableType:
        """One step as a line: ``prefix #N [stage] TEXT`` on the left, ``right`` on the right."""
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        left = Text.assemble((prefix, style), f"#{step} {self.tally.label(stage, text)}")
        grid.add_row(left, Text(right, style=style))
        return grid

    def _summary(self, style: str) -> list[RenderableType]:
        from rich.text import Text

        lines = summary_lines(self.tally)
        return [Text(line, style=style if i == 0 else "") for i, line in enumerate(lines)]

    def view(self) -> RenderableType:
        """The live part of the view: the build's timer, then each running step with its timer,
        why it missed, and the last lines it printed."""
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            tally = self.tally
            started = tally.started
            running = sorted(self._running.values(), key=lambda r: r.step)
            now = self._clock()
            grid = Table.grid(expand=True, padding=(0, 1))
            grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
            grid.add_column(justify="right", no_wrap=True)
            if started is None:
                return grid
            done = tally.cached + len(tally.ran)
            remote = f" ({tally.remote_hits} remote)" if tally.remote_hits else ""
            grid.add_row(
                Text.assemble(
                    ("[+] ", "bold"),
                    f"building {started.target}: {done}/{started.steps} steps, "
                    f"{tally.cached} cached{remote}",
                ),
                Text(f"{tally.elapsed:.1f}s", style="bold"),
            )
            for step in running:
                left = Text.assemble(
                    (" => ", "yellow"), f"#{step.step} {tally.label(step.stage, step.text)}"
                )
                if step.reason:
                    left.append(f"  ({step.reason})", style="dim")
                grid.add_row(left, Text(f"{now - step.since:.1f}s", style="yellow"))
                for line in step.output:
                    grid.add_row(Text(f"    │ {line}", style="dim"), "")
            return grid


def _printable(line: str) -> str:
    """A step's output line without control characters that would move the cursor."""
    return "".join(c if c.isprintable() else " " for c in line.expandtabs(4))
