"""The build graph: one node per step of the stages a target needs, and what each waits for.

A node is a stage's FROM or one of its instructions that makes a layer or changes the image
config: every instruction but ARG, whose only effect (a value in the build environment) is part
of the keys of the steps that see it. ONBUILD triggers a stage inherits from its base stage are
nodes too, placed on the FROM line as BuildKit places them.

Edges (``a -> b``: ``b`` needs ``a`` done first):

* from the previous node of the same stage (the filesystem and config ``b`` starts from);
* from the last node of the stage ``FROM`` names;
* from the last node of the stage ``COPY --from`` or ``RUN --mount from=`` names.

Stages the target does not reach through those edges are pruned (the target defaults to the last
stage, as ``docker build``'s does). Levels come from the Rust scheduler (``_core.dag_levels``):
level 0 holds the FROM nodes of every base-image stage, so independent stages advance side by
side. Nodes are numbered in Dockerfile order, which is also a valid execution order.
"""

from __future__ import annotations

from dataclasses import dataclass

from memobuild.dag import levels as dag_levels
from memobuild.dockerfile.instructions import ArgInstruction
from memobuild.dockerfile.stages import BuildStages, Stage, Step
from memobuild.errors import DagCycleError, DockerfileParseError

__all__ = ["BuildGraph", "GraphNode", "build_graph"]


@dataclass(frozen=True)
class GraphNode:
    """One step of the graph.

    ``position`` is 0 for the FROM node and counts the stage's nodes after it. ``parent`` is the
    node this one builds on (the previous node of the stage, or for a FROM naming a stage that
    stage's last node; None for a FROM of an image). ``inputs`` has one entry per
    ``step.sources`` (``--from``/``from=``, in order): the last node of the stage it names, or
    None for an image. ``deps`` are every node this one waits for, ascending.
    """

    id: int
    stage: int
    position: int
    step: Step | None
    parent: int | None
    inputs: tuple[int | None, ...]
    deps: tuple[int, ...]

    @property
    def is_from(self) -> bool:
        return self.step is None


@dataclass(frozen=True)
class BuildGraph:
    """The nodes, edges and levels of the stages ``target`` needs (``stage_ids``, ascending)."""

    stages: BuildStages
    target: int
    stage_ids: tuple[int, ...]
    nodes: tuple[GraphNode, ...]
    edges: tuple[tuple[int, int], ...]
    levels: tuple[tuple[int, ...], ...]
    stage_levels: tuple[tuple[int, ...], ...]

    def stage(self, index: int) -> Stage:
        return self.stages.stages[index]

    def last_node(self, stage: int) -> int:
        """The id of the last node of a kept stage: what FROM/--from of it builds on."""
        return max(n.id for n in self.nodes if n.stage == stage)

    def level_of(self, node: int) -> int:
        """The level ``node`` is in (a scan: build a dict from ``levels`` for many lookups)."""
        for number, level in enumerate(self.levels):
            if node in level:
                return number
        raise KeyError(node)


def _stage_inputs(stage: Stage) -> list[int]:
    """The stages ``stage`` reads from: its base stage, then ``--from``/``from=`` stages."""
    out = [] if stage.base_stage is None else [stage.base_stage]
    for step in stage.steps:
        out.extend(s.stage for s in step.sources if s.kind == "stage" and s.stage is not None)
    return out


def _resolve_target(stages: BuildStages, target: str | int | None, file: str | None) -> int:
    if target is None:
        return stages.target
    try:
        return stages.stage(target).index
    except KeyError:
        names = [s.name for s in stages.stages if s.name]
        known = ", ".join(names) if names else "none: no stage has a name (FROM ... AS name)"
        raise DockerfileParseError(
            f"target stage {target!r} could not be found; stages: {known}", file=file
        ) from None


def build_graph(
    stages: BuildStages, target: str | int | None = None, *, file: str | None = None
) -> BuildGraph:
    """The graph of the stages ``target`` (name or index; default the build target) needs.

    Raises DockerfileParseError (in ``file``) for an unknown target or stage reference, or when
    stages depend on each other in a cycle, naming them. The front end already refuses a
    reference to a stage that is not defined above, so a cycle here means ``stages`` did not
    come from ``load_stages``; the check is what keeps the scheduler's promise regardless.
    """
    count = len(stages.stages)
    target_index = _resolve_target(stages, target, file)
    kept: set[int] = set()
    todo = [target_index]
    while todo:
        index = todo.pop()
        if index in kept:
            continue
        kept.add(index)
        for dep in _stage_inputs(stages.stages[index]):
            if not 0 <= dep < count:
                raise DockerfileParseError(
                    f"stage {stages.stages[index].display_name} refers to stage {dep}, which "
                    f"does not exist (the Dockerfile has {count} stages)",
                    file=file,
                    line=stages.stages[index].node.start_line or None,
                )
            todo.append(dep)
    stage_ids = tuple(sorted(kept))

    # Number every kept stage's nodes first: a reference may point at any kept stage.
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    next_id = 0
    for index in stage_ids:
        first[index] = next_id
        steps = [
            s for s in stages.stages[index].steps if not isinstance(s.instruction, ArgInstruction)
        ]
        next_id += 1 + len(steps)
        last[index] = next_id - 1

    nodes: list[GraphNode] = []
    edges: list[tuple[int, int]] = []
    for index in stage_ids:
        stage = stages.stages[index]
        node_id = first[index]
        base = None if stage.base_stage is None else last[stage.base_stage]
        nodes.append(_node(node_id, index, 0, None, base, ()))
        position = 0
        for step in stage.steps:
            if isinstance(step.instruction, ArgInstruction):
                continue
            position += 1
            inputs = tuple(
                last[s.stage] if s.kind == "stage" and s.stage is not None else None
                for s in step.sources
            )
            nodes.append(
                _node(node_id + position, index, position, step, node_id + position - 1, inputs)
            )
    for node in nodes:
        edges.extend((dep, node.id) for dep in node.deps)

    try:
        node_levels = dag_levels(len(nodes), edges)
    except DagCycleError as err:
        cycle = [stages.stages[nodes[n].stage].display_name for n in err.nodes]
        unique = list(dict.fromkeys(cycle))
        raise DockerfileParseError(
            "build stages depend on each other in a cycle: " + " -> ".join([*unique, unique[0]]),
            file=file,
            line=stages.stages[nodes[err.nodes[0]].stage].node.start_line or None,
        ) from None

    position_of = {index: i for i, index in enumerate(stage_ids)}
    stage_edges = sorted(
        {
            (position_of[dep], position_of[index])
            for index in stage_ids
            for dep in _stage_inputs(stages.stages[index])
        }
    )
    stage_levels = dag_levels(len(stage_ids), stage_edges)
    return BuildGraph(
        stages=stages,
        target=target_index,
        stage_ids=stage_ids,
        nodes=tuple(nodes),
        edges=tuple(edges),
        levels=tuple(tuple(level) for level in node_levels),
        stage_levels=tuple(tuple(stage_ids[i] for i in level) for level in stage_levels),
    )


def _node(
    node_id: int,
    stage: int,
    position: int,
    step: Step | None,
    parent: int | None,
    inputs: tuple[int | None, ...],
) -> GraphNode:
    deps = {d for d in (parent, *inputs) if d is not None}
    return GraphNode(
        id=node_id,
        stage=stage,
        position=position,
        step=step,
        parent=parent,
        inputs=inputs,
        deps=tuple(sorted(deps)),
    )
