"""`memobuild build`: build an image from a Dockerfile, reusing every step the cache holds.

Takes ``docker build``'s spelling: a context ``PATH`` (default ``.``), ``-f/--file`` (relative to
the current directory, default ``PATH/Dockerfile``), ``-t/--tag`` (repeatable), ``--build-arg``,
``--target``, ``--no-cache``, ``--build-context NAME=oci-layout://PATH[:TAG]`` (or
``docker-archive://FILE``, or a directory), ``--secret id=ID,src=FILE|env=VAR`` and
``-o/--output`` in BuildKit's syntax (``type=oci|docker|local|tar,dest=...``, repeatable), and
``--cache-from``/``--cache-to`` in ``docker buildx``'s (``type=memobuild,url=URL`` or a bare
``http(s)://`` URL: a ``memobuild server`` to pull steps from and push them to;
``type=registry,ref=REF[,mode=max|min]``: a registry repository's tag, reached like pulls and
pushes; ``$MEMOBUILD_REMOTE_URL`` does both when neither flag is given,
``$MEMOBUILD_REMOTE_TOKEN`` is a server's bearer token). A remote cache that fails never fails
the build: one warning, and the build goes on with the local cache.

Registries, as with ``docker buildx build``: base images the local store lacks are pulled
(``--pull[=missing|always|never]``: bare ``--pull`` is ``always``; give a value with ``=``, so
``--pull PATH`` stays the context), for ``--platform OS/ARCH[/VARIANT]`` (default this host's);
``--insecure-registry HOST[:PORT]`` (repeatable) allows plain HTTP or unverified TLS for that
registry only; ``--push`` pushes the image to every ``-t`` name, and
``--output type=image,name=REF,push=true`` (or ``type=registry,name=REF``) to REF. Each push
prints ``pushed REF@DIGEST`` on stderr after the summary.

Where things go, as with ``docker buildx build``: progress and the summary are for people and go
to stderr (``--progress``, commands/progress.py: a live view on a terminal, plain lines
elsewhere); stdout gets one line, the image digest, so ``IMAGE=$(memobuild build .)`` works.
``--progress=json`` is for programs: stdout then carries every build event as a JSON line instead
(the last is ``BuildFinished``, with ``image_digest``, or ``BuildFailed``). ``--events FILE``
writes the same JSON lines to a file, whatever the progress mode.

Exit status: 0 built; 1 a step failed (or anything else failed while working); 2 a usage or
Dockerfile error (cli.py). SIGTERM stops a build the way Ctrl-C does (130): running steps are
killed, the scratch directories removed, and everything already stored stays for the next build.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from memobuild.commands.options import add_build_selection
from memobuild.commands.plan import parse_build_args
from memobuild.errors import InputError, MemoBuildError

if TYPE_CHECKING:
    from memobuild.build.events import BuildEvent
    from memobuild.commands.progress import Progress

__all__ = ["PROGRESS_MODES", "add_parser", "run_build"]

PROGRESS_MODES = ("auto", "tty", "plain", "json")
# --pull's values: build/base.py's PULL_POLICIES, spelled out so that the parser (made for every
# command) does not import the builder.
PULL_POLICIES = ("missing", "always", "never")


@contextlib.contextmanager
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


def _open_events(path: str) -> IO[str]:
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as err:
        raise InputError(f"--events {path}: cannot write: {err.strerror or err}") from None


def _one_cache(values: list[str] | None, flag: str) -> str | None:
    """The value of a cache flag given at most once (a build has one remote of each kind)."""
    if not values:
        return None
    if len(values) > 1:
        raise InputError(f"{flag} may be given once, not {len(values)} times")
    return values[0]


class _PullPolicy(argparse.Action):
    """``--pull`` (``always``) and ``--pull=missing|always|never``: like pflag's optional
    value, a value must be attached with ``=``, so that ``--pull PATH`` keeps PATH the
    context, as in ``docker build --pull .``."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.pop("nargs", None)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def format_usage(self) -> str:
        return "--pull[=missing|always|never]"

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        _, _, policy = (option_string or "").partition("=")
        setattr(namespace, self.dest, policy or "always")


def run_build(args: argparse.Namespace) -> int:
    # Imported here, as every module a build needs: other commands start without them.
    from memobuild.build import events as ev
    from memobuild.build.executor import build
    from memobuild.commands.progress import JsonLines, Tee, open_progress, progress_mode

    mode = progress_mode(args.progress, sys.stderr)
    renderers: list[Progress] = [open_progress(mode, sys.stdout if mode == "json" else sys.stderr)]
    events = _open_events(args.events) if args.events else None
    if events is not None:
        renderers.append(JsonLines(events))
    progress = Tee(renderers)
    ended = False
    pushed: list[str] = []

    def on_event(event: BuildEvent) -> None:
        nonlocal ended
        ended = ended or isinstance(event, ev.BuildFinished | ev.BuildFailed)
        progress(event)

    try:
        dockerfile = Path(args.file).absolute() if args.file else Path("Dockerfile")  # in PATH
        build_args = parse_build_args(args.build_arg or (), os.environ)
        cache_from = _one_cache(args.cache_from, "--cache-from")
        cache_to = _one_cache(args.cache_to, "--cache-to")
        with _sigterm_as_interrupt():
            result = build(
                args.path,
                dockerfile,
                target=args.target,
                build_args=build_args,
                tags=tuple(args.tag or ()),
                outputs=tuple(args.output or ()),
                build_contexts=tuple(args.build_context or ()),
                secrets=tuple(args.secret or ()),
                no_cache=args.no_cache,
                on_event=on_event,
                cache_from=cache_from,
                cache_to=cache_to,
                pull=args.pull,
                platform=args.platform,
                insecure_registries=tuple(args.insecure_registry or ()),
                push=args.push,
            )
        pushed = [f"pushed {ref}@{out.digest}" for out in result.outputs for ref in out.pushed]
        if mode != "json":
            print(result.digest, flush=True)
    except MemoBuildError as err:
        if not ended:  # failed before the build could say so: the event stream still ends
            on_event(ev.BuildFailed(str(err)))
        raise
    except BrokenPipeError:
        # Whoever read the progress or the digest went away (`| head`): the build stopped,
        # cleaned up, and ends quietly, as other command-line tools do on a closed pipe.
        _discard_output()
        return 1
    finally:
        progress.close()
        if events is not None:
            events.close()
    for line in pushed:  # after the summary (and the live view) is done
        print(line, file=sys.stderr, flush=True)
    return 0


def _discard_output() -> None:
    """Point stdout and stderr at /dev/null, so that nothing written later (a buffer flushed at
    exit, the live view's last frame) fails on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "build",
        help="build an image from a Dockerfile",
        description="Build the target stage of a Dockerfile. Every step whose cache key the "
        "local store (or a remote cache, --cache-from) holds is reused without running; the "
        "others run isolated (bubblewrap, else chroot) and are stored for the next build (and "
        "uploaded, --cache-to).",
        epilog="Progress and the summary (steps, cached, executed, hit rate, wall time, bytes "
        "written, outputs, and why each executed step missed the cache) go to stderr; stdout "
        "gets one line, the image digest. With --progress=json, stdout gets the build events "
        "instead, one JSON object per line, ending with BuildFinished (image_digest) or "
        "BuildFailed. Remote cache: MEMOBUILD_REMOTE_URL stands for both --cache-from and "
        "--cache-to when neither is given, MEMOBUILD_REMOTE_TOKEN is its bearer token; a remote "
        "that is down, refuses the token or sends bad bytes costs one warning, never the build. "
        "Exit status: 0 built, 1 a step failed (or the build failed while working), 2 a usage "
        "or Dockerfile error.",
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
        "-o",
        "--output",
        action="append",
        metavar="SPEC",
        help="also write the result: type=oci,dest=DIR|FILE.tar (OCI image layout), "
        "type=docker,dest=FILE.tar (for docker load), type=local,dest=DIR (the root "
        "filesystem), type=tar,dest=FILE; a bare DIR means type=local (repeatable)",
    )
    p.add_argument(
        "--no-cache", action="store_true", help="run every step (results are still stored)"
    )
    p.add_argument(
        "--cache-from",
        action="append",
        metavar="URL",
        help="also look steps up in this remote cache: a memobuild server "
        "(type=memobuild,url=http://HOST:PORT or just the URL) or a registry "
        "(type=registry,ref=REGISTRY/REPO:TAG); hits are downloaded, verified and kept in the "
        "local cache",
    )
    p.add_argument(
        "--cache-to",
        action="append",
        metavar="URL",
        help="upload this build's steps to this remote cache (same spelling; for a registry "
        "add mode=min to export only the image's steps, mode=max, the default, every step), "
        "in the background; the build waits for the uploads only at the end, at most 60s",
    )
    add_build_selection(p)
    p.add_argument(
        *(f"--pull={policy}" if policy else "--pull" for policy in ("", *PULL_POLICIES)),
        dest="pull",
        action=_PullPolicy,
        default="missing",
        help="when to ask registries for base images: missing (the default) pulls what the "
        "local store lacks, always (bare --pull) asks for each tag's current image, never "
        "uses the local store only",
    )
    p.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT]",
        help="the platform to build for and pull base images for (default: this host's); "
        "TARGETPLATFORM and friends follow it",
    )
    p.add_argument(
        "--insecure-registry",
        action="append",
        metavar="HOST[:PORT]",
        help="a registry that may be spoken to over plain HTTP or TLS without verification "
        "(a test registry; repeatable); every other one is verified",
    )
    p.add_argument(
        "--push",
        action="store_true",
        help="push the image to every -t name (a registry reference, e.g. "
        "registry.example.com/team/app:1) and print the pushed digest",
    )
    p.add_argument(
        "--secret",
        action="append",
        metavar="id=ID,src=FILE|env=VAR",
        help="a secret RUN --mount=type=secret can read; never stored (repeatable)",
    )
    p.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="auto",
        help="tty: a live view; plain: one line per step event, for logs; json: one JSON "
        "event per line on stdout; auto (default): tty when stderr is a terminal, else plain",
    )
    p.add_argument(
        "--events", metavar="FILE", help="also write every build event to FILE as JSON lines"
    )
    p.set_defaults(func=run_build)
