"""A stage's chain: its layers and image config so far, and the config change each step makes.

Kaniko's trick, which the executor relies on: as long as steps hit the cache, a stage is nothing
but this chain (layer references and a config), and nothing touches the disk. Every step's
effect on the image config is computed here once, when the step runs, as a small msgpack-able
*change* that is stored in its action entry; a later build that hits the entry applies the
stored change and never looks at the instruction again. The change is a pure function of the
step and the chain before it, and both are covered by the step's cache key, so applying the
stored change gives exactly what running the step would.

Change format (``ActionEntry.config``)::

    {"config": {<field>: <value>, ...}, "history": {"created_by": str, "comment": str}}

with these fields, applied in order of appearance:

    env [[k, v]...]       set (existing names keep their place, new ones are appended)
    labels [[k, v]...]    set
    exposed_ports [p...]  add        volumes [p...]  add        on_build [expr...]  append
    user, working_dir, stop_signal, author: str   set
    cmd, entrypoint: [str...] | None              set (None clears)
    shell: [str...]                               set
    healthcheck: {"test": [...], "interval": ns, ...}   set
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from memobuild.cache.entries import LayerRef
from memobuild.dockerfile.instructions import (
    AddInstruction,
    CmdInstruction,
    CopyInstruction,
    EntrypointInstruction,
    EnvInstruction,
    ExposeInstruction,
    HealthcheckInstruction,
    Instruction,
    LabelInstruction,
    MaintainerInstruction,
    OnbuildInstruction,
    RunInstruction,
    ShellInstruction,
    StopsignalInstruction,
    UserInstruction,
    VolumeInstruction,
    WorkdirInstruction,
)
from memobuild.dockerfile.stages import Step
from memobuild.oci.image import Healthcheck, HistoryEntry, Image, ImageConfig

__all__ = [
    "HISTORY_COMMENT",
    "StageChain",
    "apply_config_changes",
    "config_changes",
    "created_by",
    "rfc3339",
]

HISTORY_COMMENT = "buildkit.dockerfile.v0"  # what BuildKit writes; docker history shows it


def rfc3339(timestamp: float) -> str:
    """``2024-01-02T03:04:05Z``: whole seconds in UTC, as SOURCE_DATE_EPOCH images carry it."""
    moment = datetime.fromtimestamp(int(timestamp), tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _go_list(items: Sequence[str]) -> str:
    """A string list the way Go's ``%q`` prints it (what ``docker history`` shows for CMD)."""
    return "[" + " ".join(json.dumps(item, ensure_ascii=False) for item in items) + "]"


def _shell_command(step: Step, cmd_line: Sequence[str], prepend_shell: bool) -> list[str]:
    return [*step.shell, " ".join(cmd_line)] if prepend_shell else list(cmd_line)


def created_by(step: Step, text: str) -> str:
    """The history ``created_by`` of a step, as ``docker history`` shows a BuildKit build.

    ``text`` is the instruction as written (for COPY/ADD, whose sources docker shows as given).
    """
    instruction = step.instruction
    if isinstance(instruction, RunInstruction):
        argv = _shell_command(step, instruction.cmd_line, instruction.prepend_shell)
        return f"RUN {' '.join(argv)} # buildkit"
    if isinstance(instruction, (CopyInstruction, AddInstruction)):
        return f"{text} # buildkit"
    if isinstance(instruction, (EnvInstruction, LabelInstruction)):
        pairs = " ".join(f"{p.key}={p.value}" for p in instruction.pairs)
        return f"{instruction.keyword} {pairs}"
    if isinstance(instruction, WorkdirInstruction):
        return f"WORKDIR {step_workdir_after(step)}"
    if isinstance(instruction, UserInstruction):
        return f"USER {instruction.user}"
    if isinstance(instruction, ExposeInstruction):
        ports = instruction.exposed or instruction.ports
        return "EXPOSE map[" + " ".join(f"{p}:{{}}" for p in ports) + "]"
    if isinstance(instruction, VolumeInstruction):
        return f"VOLUME [{' '.join(instruction.volumes)}]"
    if isinstance(instruction, (CmdInstruction, EntrypointInstruction)):
        argv = _shell_command(step, instruction.cmd_line or (), instruction.prepend_shell)
        return f"{instruction.keyword} {_go_list(argv)}"
    if isinstance(instruction, ShellInstruction):
        return f"SHELL [{' '.join(instruction.shell)}]"
    if isinstance(instruction, StopsignalInstruction):
        return f"STOPSIGNAL {instruction.signal}"
    if isinstance(instruction, OnbuildInstruction):
        return f"ONBUILD {instruction.expression}"
    if isinstance(instruction, MaintainerInstruction):
        return f"MAINTAINER {instruction.maintainer}"
    return text


def step_workdir_after(step: Step) -> str:
    """The absolute WORKDIR a WORKDIR step sets (the stage loader resolved it; the step records
    what it saw before, so resolve the same way)."""
    instruction = step.instruction
    if not isinstance(instruction, WorkdirInstruction):
        return step.workdir
    path = instruction.path
    if not path.startswith("/"):
        path = posixpath.join("/", step.workdir, path)
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def _nonzero(value: int) -> int | None:
    return value or None


def config_changes(step: Step, *, cmd_set: bool) -> dict[str, Any]:
    """The image-config change ``step`` makes (empty for RUN/COPY/ADD), msgpack-ready.

    ``cmd_set`` says whether a CMD ran earlier in this stage: an ENTRYPOINT clears a CMD it
    inherited from the base (BuildKit's rule), and keeps one the same stage set.
    """
    instruction: Instruction = step.instruction
    if isinstance(instruction, EnvInstruction):
        return {"env": [[p.key, p.value] for p in instruction.pairs]}
    if isinstance(instruction, LabelInstruction):
        return {"labels": [[p.key, p.value] for p in instruction.pairs]}
    if isinstance(instruction, WorkdirInstruction):
        return {"working_dir": step_workdir_after(step)}
    if isinstance(instruction, UserInstruction):
        return {"user": instruction.user}
    if isinstance(instruction, ExposeInstruction):
        return {"exposed_ports": list(instruction.exposed or instruction.ports)}
    if isinstance(instruction, VolumeInstruction):
        return {"volumes": list(instruction.volumes)}
    if isinstance(instruction, CmdInstruction):
        return {"cmd": _shell_command(step, instruction.cmd_line, instruction.prepend_shell)}
    if isinstance(instruction, EntrypointInstruction):
        entrypoint = (
            None
            if instruction.cmd_line is None
            else _shell_command(step, instruction.cmd_line, instruction.prepend_shell)
        )
        changes: dict[str, Any] = {"entrypoint": entrypoint}
        if not cmd_set:
            changes["cmd"] = None
        return changes
    if isinstance(instruction, ShellInstruction):
        return {"shell": list(instruction.shell)}
    if isinstance(instruction, HealthcheckInstruction):
        return {
            "healthcheck": {
                "test": list(instruction.test),
                "interval": _nonzero(instruction.interval),
                "timeout": _nonzero(instruction.timeout),
                "start_period": _nonzero(instruction.start_period),
                "start_interval": _nonzero(instruction.start_interval),
                "retries": _nonzero(instruction.retries),
            }
        }
    if isinstance(instruction, StopsignalInstruction):
        return {"stop_signal": instruction.signal}
    if isinstance(instruction, OnbuildInstruction):
        return {"on_build": [instruction.expression]}
    if isinstance(instruction, MaintainerInstruction):
        return {"author": instruction.maintainer}
    return {}


def _set_pairs(
    current: Sequence[tuple[str, str]], updates: Sequence[Sequence[str]]
) -> list[tuple[str, str]]:
    out = list(current)
    for key, value in updates:
        for i, (name, _) in enumerate(out):
            if name == key:
                out[i] = (key, value)
                break
        else:
            out.append((key, value))
    return out


def _optional_list(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def apply_config_changes(
    config: ImageConfig, author: str | None, changes: Mapping[str, Any]
) -> tuple[ImageConfig, str | None]:
    """``config`` (and the image author) after a stored change; raises ValueError for a change
    this MemoBuild cannot read (the caller treats the entry as a miss)."""
    updates: dict[str, Any] = {}
    for name, value in changes.items():  # a dict: each field at most once per change
        if name == "env":
            pairs = _set_pairs(config.env_pairs(), value)
            updates["env"] = tuple(f"{k}={v}" for k, v in pairs)
        elif name == "labels":
            updates["labels"] = dict(_set_pairs(config.labels or (), value))
        elif name in ("exposed_ports", "volumes", "on_build"):
            updates[name] = (*(getattr(config, name) or ()), *value)
        elif name in ("user", "working_dir", "stop_signal"):
            if not isinstance(value, str):
                raise ValueError(f"config change {name!r} must be a string")
            updates[name] = value
        elif name in ("cmd", "entrypoint"):
            updates[name] = _optional_list(value)
        elif name == "shell":
            updates[name] = tuple(value)
        elif name == "healthcheck":
            updates[name] = Healthcheck(
                test=tuple(value["test"]),
                interval=value.get("interval"),
                timeout=value.get("timeout"),
                start_period=value.get("start_period"),
                start_interval=value.get("start_interval"),
                retries=value.get("retries"),
            )
        elif name == "author":
            author = str(value)
        else:
            raise ValueError(f"unknown config change {name!r}")
    try:
        return dataclasses.replace(config, **updates), author
    except (TypeError, KeyError) as err:
        raise ValueError(f"malformed config change: {err}") from err


@dataclass
class StageChain:
    """A stage's result so far: layers bottom first, image config, history.

    ``cmd_set`` tracks BuildKit's per-stage "CMD was set here" flag for the ENTRYPOINT rule.
    """

    layers: list[LayerRef]
    config: ImageConfig
    history: list[HistoryEntry]
    architecture: str
    os: str
    variant: str | None = None
    author: str | None = None
    cmd_set: bool = False
    keys: list[str] = field(default_factory=list)

    @classmethod
    def from_image(cls, image: Image) -> StageChain:
        return cls(
            layers=list(image.layers),
            config=image.config,
            history=list(image.history),
            architecture=image.architecture,
            os=image.os,
            variant=image.variant,
            author=image.author,
        )

    @classmethod
    def scratch(cls, os_name: str, architecture: str, variant: str | None) -> StageChain:
        return cls(
            layers=[],
            config=ImageConfig(),
            history=[],
            architecture=architecture,
            os=os_name,
            variant=variant,
        )

    def fork(self) -> StageChain:
        """A copy for a stage that starts FROM this one (BuildKit resets ``cmd_set``)."""
        return dataclasses.replace(
            self, layers=list(self.layers), history=list(self.history), cmd_set=False, keys=[]
        )

    def apply(
        self,
        key: str,
        layers: Sequence[LayerRef],
        changes: Mapping[str, Any],
        created: str | None,
    ) -> None:
        """Chain one step's stored result: its layers, its config change, its history line.

        All or nothing: a change this MemoBuild cannot read raises ValueError (or TypeError)
        before anything is applied, so the caller can run the step instead.
        """
        config_part = changes.get("config", {})
        history_part = changes.get("history", {})
        if not isinstance(config_part, Mapping) or not isinstance(history_part, Mapping):
            raise ValueError("action entry config must hold 'config' and 'history' maps")
        created_by_text = history_part.get("created_by", "")
        comment = history_part.get("comment")
        if not isinstance(created_by_text, str) or not isinstance(comment, (str, type(None))):
            raise ValueError("malformed history in action entry")
        config, author = apply_config_changes(self.config, self.author, config_part)
        # One history line per layer (a step makes at most one), or one empty_layer line.
        history = [
            HistoryEntry(
                created_by=created_by_text,
                empty_layer=not layers,
                created=created,
                comment=comment if index == 0 else None,
            )
            for index in range(max(len(layers), 1))
        ]
        self.config, self.author = config, author
        if config_part.get("cmd") is not None:
            self.cmd_set = True
        self.layers.extend(layers)
        self.history.extend(history)
        self.keys.append(key)

    def image(self, created: str | None) -> Image:
        return Image(
            config=self.config,
            layers=tuple(self.layers),
            history=tuple(self.history),
            architecture=self.architecture,
            os=self.os,
            variant=self.variant,
            created=created,
            author=self.author,
        )
