"""The build plan as plain data: what the CLI prints, ``explain`` compares and a build runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from memobuild import _core
from memobuild.dockerfile.stages import BuildStages, Step
from memobuild.plan.sources import SourceSelection

__all__ = ["Plan", "PlanNode", "Preimage"]

Preimage = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PlanNode:
    """One step of the plan.

    ``id`` is 0-based in Dockerfile order over the stages the target needs; ``number`` (1-based)
    is what messages call "step N". ``position`` is 0 for the stage's FROM. ``deps`` are the
    ids of the nodes this one waits for. ``sources`` are the context sources it selected (COPY,
    ADD, RUN bind mounts); ``unresolved`` the inputs a plan cannot see (an ADD of a URL without
    ``--checksum``), whose key the build must refine once fetched.
    """

    id: int
    stage: int
    stage_name: str
    position: int
    line: int
    kind: str
    text: str
    deps: tuple[int, ...]
    level: int
    key: str
    preimage: Preimage
    step: Step | None = field(default=None, compare=False, repr=False)
    sources: tuple[SourceSelection, ...] = ()
    unresolved: tuple[str, ...] = ()

    @property
    def number(self) -> int:
        return self.id + 1

    @property
    def label(self) -> str:
        """``step N <instruction as written>``, on one line."""
        return f"step {self.number} {self.text}"


@dataclass(frozen=True)
class Plan:
    """What building ``target`` of ``dockerfile`` with ``context`` would do, with every key.

    ``dockerfile_name`` is the Dockerfile's path relative to the context (absolute when it lies
    outside): with ``target`` it names the plan's record in the store, so that a checkout moved
    elsewhere still finds its previous build. ``levels`` group node ids that can run together;
    ``stage_levels`` do the same for stage indexes. ``context_index`` is the hashed context
    (None when no step reads the context).
    """

    context: Path
    dockerfile: Path
    dockerfile_name: str
    target: str
    platform: str
    build_args: tuple[tuple[str, str], ...]
    dockerignore: tuple[str, ...]
    nodes: tuple[PlanNode, ...]
    edges: tuple[tuple[int, int], ...]
    levels: tuple[tuple[int, ...], ...]
    stage_levels: tuple[tuple[int, ...], ...]
    warnings: tuple[str, ...] = ()
    stages: BuildStages | None = field(default=None, compare=False, repr=False)
    context_index: _core.ContextIndex | None = field(default=None, compare=False, repr=False)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(node.key for node in self.nodes)

    @property
    def preimages(self) -> tuple[Preimage, ...]:
        return tuple(node.preimage for node in self.nodes)

    @property
    def record_name(self) -> str:
        """The store record this plan is filed under: ``<Dockerfile>@<target>``."""
        return f"{self.dockerfile_name}@{self.target}"

    @property
    def context_digest(self) -> str | None:
        return None if self.context_index is None else self.context_index.digest

    def stage_nodes(self, stage_name: str) -> tuple[PlanNode, ...]:
        return tuple(node for node in self.nodes if node.stage_name == stage_name)

    def node_with_key(self, key: str) -> PlanNode | None:
        for node in self.nodes:
            if node.key == key:
                return node
        return None
