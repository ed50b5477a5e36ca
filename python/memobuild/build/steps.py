"""Carrying out one filesystem step (RUN, COPY, ADD, WORKDIR) in a stage's working rootfs.

The executor decides *whether* a step runs and turns what it changed into a layer; this module
only makes the change. Everything a step reads from outside its rootfs (the context, another
stage, an image, a secret, a download) comes in through :class:`StepResources`, so a step can
never reach anything its cache key does not name.

RUN is translated here into the sandbox's :class:`RunSpec`: the argv BuildKit would run
(including its heredoc rules), the environment the step saw plus proxy build args and secret
variables, and one mount spec per ``--mount``. A RUN that exits non-zero raises
:class:`StepExit`; the executor adds the step's label and line and makes it a BuildStepError.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from memobuild import _core
from memobuild.build.archive import make_dirs_in_root, resolve_in_root, set_owner
from memobuild.build.copy import CopySource, apply_copy
from memobuild.build.fetch import Fetcher
from memobuild.build.materialise import SourceTrees
from memobuild.build.rootfs import ScratchDir
from memobuild.build.sandbox import (
    BindSpec,
    CacheSpec,
    MountSpec,
    RunSpec,
    Sandbox,
    SecretSpec,
    TmpfsSpec,
    command_argv,
)
from memobuild.build.state import step_workdir_after
from memobuild.build.users import resolve_chown, resolve_user
from memobuild.dockerfile.instructions import (
    AddInstruction,
    BindMount,
    CacheMount,
    CopyInstruction,
    RunInstruction,
    SecretMount,
    SshMount,
    TmpfsMount,
    WorkdirInstruction,
)
from memobuild.dockerfile.stages import Platform, Source, Step
from memobuild.errors import InputError

__all__ = ["OUTPUT_TAIL", "StepExit", "StepResources", "execute_step", "needs_rootfs"]

OUTPUT_TAIL = 20  # lines of a failed step's output an error shows
HEREDOC_DIR = "/dev/pipes"  # where BuildKit mounts a RUN heredoc script that has a shebang
_HEREDOC_WORD = re.compile(r"<<(-?)(['\"]?)([^'\"\s]+)\2")


class StepExit(Exception):
    """A RUN exited non-zero: its exit code and the last lines it printed."""

    def __init__(self, exit_code: int, tail: tuple[str, ...]) -> None:
        super().__init__(f"exit code {exit_code}")
        self.exit_code = exit_code
        self.tail = tail


@dataclass
class StepResources:
    """What steps read from outside their rootfs, for one build.

    ``sandbox`` is called only when a RUN actually runs (so a build whose RUNs all hit never
    needs bubblewrap); ``file`` names the Dockerfile in error messages.
    """

    context: Path
    context_index: _core.ContextIndex | None
    dockerignore: tuple[str, ...]
    proxy_env: tuple[tuple[str, str], ...]
    secrets: Mapping[str, bytes]
    trees: SourceTrees
    sandbox: Callable[[], Sandbox]
    fetcher: Fetcher
    scratch: ScratchDir
    file: str


def needs_rootfs(step: Step) -> bool:
    """Whether a step changes the filesystem (every other one only changes the config)."""
    return isinstance(
        step.instruction, (RunInstruction, CopyInstruction, AddInstruction, WorkdirInstruction)
    )


def execute_step(
    step: Step,
    rootfs: Path,
    platform: Platform,
    resources: StepResources,
    *,
    stage_label: Callable[[int], str],
    output: Callable[[str], None],
) -> tuple[str, ...]:
    """Make ``step``'s change in ``rootfs``; returns rootfs-relative paths that must not enter
    the layer (where this run mounted something). Raises StepExit for a RUN that failed."""
    instruction = step.instruction
    if isinstance(instruction, RunInstruction):
        return _run(step, instruction, rootfs, platform, resources, stage_label, output)
    if isinstance(instruction, (CopyInstruction, AddInstruction)):
        _copy(step, instruction, rootfs, platform, resources, stage_label)
        return ()
    if isinstance(instruction, WorkdirInstruction):
        _workdir(step, rootfs)
        return ()
    raise TypeError(f"{instruction.keyword} does not change the filesystem")  # pragma: no cover


# --- WORKDIR -----------------------------------------------------------------------------------


def _workdir(step: Step, rootfs: Path) -> None:
    """``mkdir -p`` inside the rootfs, owned by the current USER as BuildKit makes it."""
    uid = gid = 0
    if step.user:
        user = resolve_user(rootfs, step.user)
        uid, gid = user.uid, user.gid

    def own(path: Path) -> None:
        if (uid, gid) != (0, 0):
            set_owner(path, uid, gid)

    path = step_workdir_after(step)
    try:
        make_dirs_in_root(rootfs, path, on_create=own)
    except NotADirectoryError as err:
        raise InputError(f"WORKDIR {path}: {err.filename or path} is not a directory") from None


# --- COPY / ADD --------------------------------------------------------------------------------


def _tree_for(
    source: Source, platform: Platform, resources: StepResources, stage_label: Callable[[int], str]
) -> tuple[Path, bool]:
    """The directory a ``--from``/``from=`` source names, and whether it is a local context
    directory (read like the build context: modes normalised)."""
    if source.kind == "stage" and source.stage is not None:
        return resources.trees.stage(source.stage, stage_label(source.stage)), False
    if source.kind == "image" and source.image is not None:
        tree = resources.trees.image(source.image, platform)
        return tree, resources.trees.is_local_context(source.image)
    return resources.trees.empty(), False


def _copy(
    step: Step,
    instruction: CopyInstruction | AddInstruction,
    rootfs: Path,
    platform: Platform,
    resources: StepResources,
    stage_label: Callable[[int], str],
) -> None:
    if isinstance(instruction, CopyInstruction) and instruction.from_ is not None:
        tree, local = _tree_for(step.sources[0], platform, resources, stage_label)
        source = CopySource(tree, is_context=local)
        dockerignore: tuple[str, ...] = ()
    else:
        source = CopySource(resources.context, is_context=True, index=resources.context_index)
        dockerignore = resources.dockerignore
    chown = resolve_chown(rootfs, instruction.chown) if instruction.chown else None
    apply_copy(
        rootfs,
        instruction,
        source,
        workdir=step.workdir,
        dockerignore=dockerignore,
        chown=chown,
        fetcher=resources.fetcher,
        file=resources.file,
    )


# --- RUN ---------------------------------------------------------------------------------------


def _chomp(data: str) -> str:
    """``<<-EOF``: leading tabs go from every line (BuildKit's ChompHeredocContent)."""
    return re.sub(r"(?m)^\t+", "", data)


def _run_argv(
    step: Step, instruction: RunInstruction, resources: StepResources
) -> tuple[tuple[str, ...], list[MountSpec]]:
    """The argv BuildKit runs for a RUN, and any mount its heredoc script needs.

    Heredocs (BuildKit's dispatchRun): when the whole command is one heredoc, its body is the
    script: a body with a shebang is written to a file and executed, any other body is given to
    the shell as the command. Otherwise the bodies follow the command line, as a shell would
    read them from the Dockerfile.
    """
    json_form = not instruction.prepend_shell
    args = list(instruction.cmd_line)
    if not instruction.files or json_form:
        return command_argv(step.shell, args, json_form), []
    first = instruction.files[0]
    whole = _HEREDOC_WORD.fullmatch(args[0].strip()) if len(args) == 1 else None
    if whole is not None and whole.group(3) == first.name:
        data = _chomp(first.data) if first.chomp else first.data
        if data.startswith("#!"):
            script = resources.scratch.new_file(f"heredoc-{first.name}")
            script.write_text(data)
            script.chmod(0o755)
            target = f"{HEREDOC_DIR}/{first.name}"
            return (target,), [BindSpec(target=target, source=script, readonly=True)]
        return command_argv(step.shell, [data], False), []
    full = args[0] if args else ""
    for inline in instruction.files:
        data = _chomp(inline.data) if inline.chomp else inline.data
        full += "\n" + data + inline.name
    return command_argv(step.shell, [full], False), []


def _mounts(
    step: Step,
    instruction: RunInstruction,
    platform: Platform,
    resources: StepResources,
    stage_label: Callable[[int], str],
    env: dict[str, str],
) -> list[MountSpec]:
    specs: list[MountSpec] = []
    sources = iter(step.sources)
    for mount in instruction.mounts or ():
        if isinstance(mount, BindMount):
            if mount.from_ is None:
                base, what = resources.context, "the build context"
            else:
                base, _local = _tree_for(next(sources), platform, resources, stage_label)
                what = f"--mount from={mount.from_}"
            # Resolved as if base were /: a symlink in the source can never lead outside it.
            try:
                host = resolve_in_root(base, mount.source or "/")
            except OSError as err:
                raise InputError(
                    f"RUN --mount=type=bind,target={mount.target}: {mount.source}: "
                    f"{err.strerror or err}"
                ) from None
            if not host.exists():
                raise InputError(
                    f"RUN --mount=type=bind,target={mount.target}: {mount.source or '/'} does "
                    f"not exist in {what}"
                )
            specs.append(BindSpec(target=mount.target, source=host, readonly=mount.readonly))
        elif isinstance(mount, CacheMount):
            if mount.from_ is not None:
                next(sources)  # seeding a cache from a stage is not supported: it starts empty
            specs.append(
                CacheSpec(
                    target=mount.target,
                    id=mount.id,
                    sharing=mount.sharing,
                    readonly=mount.readonly,
                    mode=0o755 if mount.mode is None else mount.mode,
                    uid=mount.uid or 0,
                    gid=mount.gid or 0,
                )
            )
        elif isinstance(mount, TmpfsMount):
            specs.append(TmpfsSpec(target=mount.target, size=mount.size or None))
        elif isinstance(mount, SecretMount):
            data = resources.secrets.get(mount.id)
            if data is None:
                if mount.required:
                    raise InputError(
                        f"secret {mount.id!r} is required by RUN --mount=type=secret but was not "
                        f"given; pass --secret id={mount.id},src=FILE (or env=VAR)"
                    )
                continue
            if mount.target is not None:
                specs.append(
                    SecretSpec(
                        target=mount.target,
                        data=data,
                        mode=mount.mode,
                        uid=mount.uid,
                        gid=mount.gid,
                    )
                )
            if mount.env is not None:
                env[mount.env] = data.decode("utf-8", "surrogateescape")
        elif isinstance(mount, SshMount) and mount.required:
            raise InputError("RUN --mount=type=ssh is not supported yet")
    return specs


class _Lines:
    """Splits a step's output chunks into lines for the event stream."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self._emit(line.rstrip(b"\r").decode("utf-8", "replace"))

    def flush(self) -> None:
        if self._pending:
            self._emit(self._pending.decode("utf-8", "replace"))
            self._pending = b""


def _tail(log: bytes, lines: int = OUTPUT_TAIL) -> tuple[str, ...]:
    text = log.decode("utf-8", "replace").rstrip("\n")
    if not text:
        return ()
    return tuple(deque(text.split("\n"), maxlen=lines))


def _run(
    step: Step,
    instruction: RunInstruction,
    rootfs: Path,
    platform: Platform,
    resources: StepResources,
    stage_label: Callable[[int], str],
    output: Callable[[str], None],
) -> tuple[str, ...]:
    if instruction.security == "insecure":
        raise InputError(
            "RUN --security=insecure is not supported (MemoBuild grants no entitlements)"
        )
    env = dict(step.env)
    env.update(resources.proxy_env)
    argv, extra = _run_argv(step, instruction, resources)
    mounts = [*extra, *_mounts(step, instruction, platform, resources, stage_label, env)]
    spec = RunSpec(
        argv=argv,
        env=tuple(env.items()),
        workdir=step.workdir,
        user=step.user,
        network=instruction.network,
        mounts=tuple(mounts),
    )
    lines = _Lines(output)
    result = resources.sandbox().run(rootfs, spec, output=lines.feed)
    lines.flush()
    if result.exit_code != 0:
        raise StepExit(result.exit_code, _tail(result.log))
    return result.mount_points
