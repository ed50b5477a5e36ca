"""Cache keys, schema v1: what a step's result depends on, and nothing else.

A key is ``blake3:<hex>``, the BLAKE3 digest of the msgpack encoding of the array::

    ["memobuild.key.v1", [name, value], [name, value], ...]

whose ``[name, value]`` string pairs are the step's *preimage*, in a fixed order. msgpack frames
every string and array with its length, so the encoding is canonical and no two different
preimages encode to the same bytes. The preimage is kept with the key (and stored with a build's
result) so that ``memobuild explain`` can say which input changed.

Preimage layout, in order (``?`` marks entries present only when they apply):

FROM
    ``parent`` (the base stage's last key) or ``image`` (the reference as written, ``scratch``
    for none; ``<ref>@<manifest digest>`` when the caller identified the image, as a build does,
    so that an image rebuilt under the same name is a miss), ``kind`` = ``FROM``, ``platform``.
Every other step
    ``parent``: the previous step's key.
    ``kind``: the instruction keyword.
    ``instruction``: its expanded arguments as canonical JSON (sorted keys, no whitespace). Only
    what changes the result: ``ENV a b`` and ``ENV a=b`` are the same; a ``--from`` stage is
    represented by that stage's key (below), never by its name, so renaming a stage or writing
    ``--from=0`` instead of ``--from=build`` changes nothing.
    ``chown``, ``chmod`` (COPY/ADD, ``""`` when not given).
    ``heredoc <name>`` ?: ``blake3:`` of each heredoc's content (RUN/CMD/ENTRYPOINT files, COPY/ADD
    contents).
    ``mount <target>`` ?: each RUN ``--mount`` as canonical JSON (type, target, cache ``id``,
    sharing, mode, ...; never a cache's contents or a secret's value), followed by
    ``mount <target> context`` (a bind mount of the context: the digest of the path it mounts) or
    ``mount <target> from`` (a stage's key, or ``image:<ref>``) when it has a source.
    ``platform``, ``workdir``, ``user``, ``shell``: what the step runs as and where.
    ``arg <NAME>`` / ``env <NAME>`` ?: the environment the step can see, sorted by name: for RUN
    every ENV and every ARG declared so far that has a value (the process sees them all); for
    other instructions only the variables their expansion looked up (their results are already
    in ``instruction``; naming them lets ``explain`` say "build arg VERSION 1.2 -> 1.3").
    ``from`` ?: COPY ``--from``: the stage's key or ``image:<ref>`` (``image:<ref>@<digest>``
    when identified).
    ``source <src>`` ?: COPY/ADD, per source in order: the digest of exactly what it selects
    from the context (see :mod:`memobuild.plan.sources`); for an ADD of a URL or git ref,
    ``remote`` (its ``--checksum``, when given, is in ``instruction``).

What never enters: mtime, uid/gid and mode bits other than the executable bit (a checkout's
umask or location must not cost a cache miss), the context's path, the Dockerfile's name, stage
names, build args no step declared, and the proxy build args (HTTP_PROXY and friends), which
BuildKit also keeps out of its cache keys because they say how to fetch, not what to build.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type information

from memobuild import _core
from memobuild.dockerfile.instructions import (
    AddInstruction,
    BindMount,
    CacheMount,
    CmdInstruction,
    CopyInstruction,
    EntrypointInstruction,
    EnvInstruction,
    ExposeInstruction,
    HealthcheckInstruction,
    Instruction,
    LabelInstruction,
    MaintainerInstruction,
    Mount,
    OnbuildInstruction,
    RunInstruction,
    SecretMount,
    ShellInstruction,
    SshMount,
    StopsignalInstruction,
    TmpfsMount,
    UserInstruction,
    VolumeInstruction,
    WorkdirInstruction,
)
from memobuild.dockerfile.stages import Platform, Source, Step
from memobuild.plan.graph import BuildGraph, GraphNode
from memobuild.plan.model import Preimage
from memobuild.plan.sources import BuildContext, SourceSelection, is_remote_source

__all__ = [
    "KEY_SCHEMA",
    "ImageIdentifier",
    "Preimage",
    "StepKey",
    "compute_keys",
    "key_of",
]

KEY_SCHEMA = "memobuild.key.v1"

ImageIdentifier = Callable[[str, Platform], str | None]
"""The manifest digest of the image a reference names for a platform, or None if unknown."""


@dataclass(frozen=True)
class StepKey:
    """A node's key, its preimage, and the context sources it selected."""

    key: str
    preimage: Preimage
    sources: tuple[SourceSelection, ...] = ()
    unresolved: tuple[str, ...] = ()  # inputs the plan cannot see (remote ADD sources)


def key_of(preimage: Sequence[tuple[str, str]]) -> str:
    """The key of a preimage: BLAKE3 over msgpack ``[KEY_SCHEMA, [name, value], ...]``."""
    data = msgpack.packb(
        [KEY_SCHEMA, *([name, value] for name, value in preimage)],
        use_bin_type=True,
        unicode_errors="surrogateescape",
    )
    return _core.digest_bytes(data, "blake3")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _content_digest(text: str) -> str:
    return _core.digest_bytes(text.encode("utf-8", "surrogateescape"), "blake3")


# --------------------------------------------------------------------------------------------
# The expanded instruction, as the canonical JSON of what affects the result


def _instruction_fields(instruction: Instruction) -> dict[str, Any]:
    """The arguments of ``instruction`` that change its result (chown/chmod, heredoc contents,
    mounts and --from are keyed separately)."""
    if isinstance(instruction, RunInstruction):
        return {
            "cmd": list(instruction.cmd_line),
            "shell_form": instruction.prepend_shell,
            "network": instruction.network,
            "security": instruction.security,
            "heredocs": [[f.name, f.chomp] for f in instruction.files],
        }
    if isinstance(instruction, CopyInstruction):
        return {
            "sources": list(instruction.sources),
            "heredocs": [c.path for c in instruction.contents],
            "dest": instruction.dest,
            "link": instruction.link,
            "parents": instruction.parents,
            "exclude": list(instruction.exclude),
        }
    if isinstance(instruction, AddInstruction):
        return {
            "sources": list(instruction.sources),
            "heredocs": [c.path for c in instruction.contents],
            "dest": instruction.dest,
            "link": instruction.link,
            "keep_git_dir": instruction.keep_git_dir,
            "checksum": instruction.checksum,
            "unpack": instruction.unpack,
            "exclude": list(instruction.exclude),
        }
    if isinstance(instruction, (EnvInstruction, LabelInstruction)):
        return {"pairs": [[p.key, p.value] for p in instruction.pairs]}
    if isinstance(instruction, WorkdirInstruction):
        return {"path": instruction.path}
    if isinstance(instruction, UserInstruction):
        return {"user": instruction.user}
    if isinstance(instruction, ExposeInstruction):
        return {"ports": list(instruction.exposed or instruction.ports)}
    if isinstance(instruction, VolumeInstruction):
        return {"volumes": list(instruction.volumes)}
    if isinstance(instruction, (CmdInstruction, EntrypointInstruction)):
        cmd = None if instruction.cmd_line is None else list(instruction.cmd_line)
        return {
            "cmd": cmd,
            "shell_form": instruction.prepend_shell,
            "heredocs": [[f.name, f.chomp] for f in instruction.files],
        }
    if isinstance(instruction, ShellInstruction):
        return {"shell": list(instruction.shell)}
    if isinstance(instruction, HealthcheckInstruction):
        return {
            "test": list(instruction.test),
            "interval": instruction.interval,
            "timeout": instruction.timeout,
            "start_period": instruction.start_period,
            "start_interval": instruction.start_interval,
            "retries": instruction.retries,
        }
    if isinstance(instruction, StopsignalInstruction):
        return {"signal": instruction.signal}
    if isinstance(instruction, OnbuildInstruction):
        return {"expression": instruction.expression}
    if isinstance(instruction, MaintainerInstruction):
        return {"maintainer": instruction.maintainer}
    raise TypeError(f"no cache key layout for {instruction.keyword}")  # pragma: no cover


def _mount_fields(mount: Mount) -> dict[str, Any]:
    """A mount's settings. ``from`` is only its kind here; the stage key follows separately."""
    fields = {
        f.name: getattr(mount, f.name) for f in dataclasses.fields(mount) if f.name != "from_"
    }
    fields["type"] = {
        BindMount: "bind",
        CacheMount: "cache",
        TmpfsMount: "tmpfs",
        SecretMount: "secret",
        SshMount: "ssh",
    }[type(mount)]
    if isinstance(mount, (BindMount, CacheMount)):
        fields["from"] = "context" if mount.from_ is None and isinstance(mount, BindMount) else ""
    return fields


# --------------------------------------------------------------------------------------------
# Preimages


def _image_value(ref: str, platform: Platform, identify: ImageIdentifier | None) -> str:
    """An image reference as a key sees it: ``ref@digest`` once identified."""
    if identify is None or ref == "scratch":
        return ref
    digest = identify(ref, platform)
    return ref if digest is None else f"{ref}@{digest}"


def _source_value(
    source: Source,
    input_node: int | None,
    keys: Sequence[StepKey],
    platform: Platform,
    identify: ImageIdentifier | None,
) -> str:
    """What a ``--from``/``from=`` reference contributes: the stage's key, or the image."""
    if input_node is not None:
        return keys[input_node].key
    return f"image:{_image_value(source.image or 'scratch', platform, identify)}"


def _environment(step: Step) -> list[tuple[str, str]]:
    """``arg NAME``/``env NAME`` entries: all of them for RUN, else the ones expansion used."""
    env = dict(step.env)
    declared = {name for name, value in step.args if value is not None}
    if isinstance(step.instruction, RunInstruction):
        names = sorted(env)
    else:
        names = sorted(name for name in step.refs if name in env)
    return [(f"{'arg' if name in declared else 'env'} {name}", env[name]) for name in names]


def _from_preimage(
    graph: BuildGraph,
    node: GraphNode,
    keys: Sequence[StepKey],
    identify: ImageIdentifier | None,
) -> Preimage:
    stage = graph.stage(node.stage)
    parent = None if node.parent is None else keys[node.parent].key
    if parent is None:
        base = ("image", _image_value(stage.base, stage.platform, identify))
    else:
        base = ("parent", parent)
    return (base, ("kind", "FROM"), ("platform", str(stage.platform)))


SelectFn = Callable[[str, tuple[str, ...], bool, str, int], SourceSelection]


def _step_preimage(
    graph: BuildGraph,
    node: GraphNode,
    keys: Sequence[StepKey],
    select: SelectFn,
    identify: ImageIdentifier | None,
) -> StepKey:
    step = node.step
    if step is None or node.parent is None:
        raise ValueError(f"node {node.id} is a FROM node, not a step")
    instruction = step.instruction
    stage = graph.stage(node.stage)
    keyword = instruction.keyword
    line = step.line
    entries: list[tuple[str, str]] = [
        ("parent", keys[node.parent].key),
        ("kind", keyword),
        ("instruction", _json(_instruction_fields(instruction))),
    ]
    selections: list[SourceSelection] = []
    unresolved: list[str] = []
    tail: list[tuple[str, str]] = []

    if isinstance(instruction, (CopyInstruction, AddInstruction)):
        entries.append(("chown", instruction.chown))
        entries.append(("chmod", instruction.chmod))
        entries.extend((f"heredoc {c.path}", _content_digest(c.data)) for c in instruction.contents)
        from_stage = isinstance(instruction, CopyInstruction) and instruction.from_ is not None
        if from_stage:
            tail.append(
                (
                    "from",
                    _source_value(step.sources[0], node.inputs[0], keys, stage.platform, identify),
                )
            )
        for source in instruction.sources:
            if from_stage:
                continue  # paths inside another stage: its key covers them
            if isinstance(instruction, AddInstruction) and is_remote_source(source):
                tail.append((f"source {source}", "remote"))
                if not instruction.checksum:
                    unresolved.append(source)
                continue
            selection = select(source, instruction.exclude, True, keyword, line)
            selections.append(selection)
            tail.append((f"source {source}", selection.digest))
    elif isinstance(instruction, (RunInstruction, CmdInstruction, EntrypointInstruction)):
        entries.extend((f"heredoc {f.name}", _content_digest(f.data)) for f in instruction.files)
    if isinstance(instruction, RunInstruction):
        source_index = 0
        for mount in instruction.mounts or ():
            name = f"mount {getattr(mount, 'target', None) or getattr(mount, 'id', '')}"
            entries.append((name, _json(_mount_fields(mount))))
            if isinstance(mount, (BindMount, CacheMount)) and mount.from_ is not None:
                value = _source_value(
                    step.sources[source_index],
                    node.inputs[source_index],
                    keys,
                    stage.platform,
                    identify,
                )
                source_index += 1
                entries.append((f"{name} from", value))
            elif isinstance(mount, BindMount):
                selection = select(mount.source or ".", (), False, "RUN --mount", line)
                selections.append(selection)
                entries.append((f"{name} context", selection.digest))

    entries.append(("platform", str(stage.platform)))
    entries.append(("workdir", step.workdir))
    entries.append(("user", step.user))
    entries.append(("shell", _json(list(step.shell))))
    entries.extend(_environment(step))
    entries.extend(tail)
    preimage = tuple(entries)
    return StepKey(key_of(preimage), preimage, tuple(selections), tuple(unresolved))


def compute_keys(
    graph: BuildGraph,
    context: BuildContext,
    *,
    file: str | None = None,
    identify_image: ImageIdentifier | None = None,
) -> tuple[StepKey, ...]:
    """Every node's key, in node order (a node's inputs always come before it).

    The context is walked only if some step reads from it. Errors (a source not in the
    context, a bad pattern) are DockerfileParseErrors at ``file``:line. ``identify_image``
    names the exact image behind FROM and ``--from`` image references (a build passes it; without
    it a key names an image by its reference alone).
    """

    def select(
        source: str, exclude: tuple[str, ...], wildcards: bool, what: str, line: int
    ) -> SourceSelection:
        return context.select(
            source, exclude=exclude, wildcards=wildcards, what=what, file=file, line=line
        )

    keys: list[StepKey] = []
    for node in graph.nodes:
        if node.step is None:
            preimage = _from_preimage(graph, node, keys, identify_image)
            keys.append(StepKey(key_of(preimage), preimage))
        else:
            keys.append(_step_preimage(graph, node, keys, select, identify_image))
    return tuple(keys)
