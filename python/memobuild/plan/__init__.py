"""The build plan: Dockerfile + context -> graph of steps, each with its cache key.

Public API::

    plan(context, dockerfile="Dockerfile", target=None, build_args=None, *,
         platform=None, stat_cache=True, resolve_image=None, identify_image=None) -> Plan
    Plan     .nodes .edges .levels .stage_levels .keys .preimages .target .platform
             .warnings .record_name .context_digest
    PlanNode .id .number .stage .stage_name .position .line .kind .text .deps .level .key
             .preimage .sources .unresolved .label
    record_plan(store, plan)            # what a finished build records, for explain
    explain(store, plan) -> ExplainReport
    cache_hits(store, plan) -> tuple[bool, ...]

The modules, one job each: :mod:`~memobuild.plan.graph` (stages -> nodes, edges, levels),
:mod:`~memobuild.plan.sources` (COPY/ADD sources matched in the context and digested),
:mod:`~memobuild.plan.keys` (schema v1 keys and their preimages), :mod:`~memobuild.plan.model`
(the dataclasses), :mod:`~memobuild.plan.record` (plans kept in the store) and
:mod:`~memobuild.plan.explain` (why a step would miss).

Note: ``memobuild.plan`` the *function* is what ``import memobuild`` exposes, and it shadows this
package as an attribute of ``memobuild``; import the modules by their full names
(``from memobuild.plan.keys import key_of``), which always works.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path

from memobuild.dockerfile.parser import parse, read_dockerfile
from memobuild.dockerfile.stages import BuildStages, ImageResolver, load_stages
from memobuild.errors import NotADirectoryInputError, PathNotFoundError, UnreadablePathError
from memobuild.ignore import dockerignore_path, load_dockerignore
from memobuild.plan.explain import ExplainReport, Explanation, explain
from memobuild.plan.graph import BuildGraph, GraphNode, build_graph
from memobuild.plan.keys import KEY_SCHEMA, ImageIdentifier, StepKey, compute_keys, key_of
from memobuild.plan.model import Plan, PlanNode, Preimage
from memobuild.plan.record import cache_hits, record_plan, recorded_plan
from memobuild.plan.sources import BuildContext, SourceNotFoundError, SourceSelection

__all__ = [
    "KEY_SCHEMA",
    "BuildContext",
    "BuildGraph",
    "ExplainReport",
    "Explanation",
    "GraphNode",
    "ImageIdentifier",
    "Plan",
    "PlanNode",
    "Preimage",
    "SourceNotFoundError",
    "SourceSelection",
    "StepKey",
    "build_graph",
    "cache_hits",
    "compute_keys",
    "explain",
    "key_of",
    "plan",
    "record_plan",
    "recorded_plan",
]


def plan(
    context: str | os.PathLike[str],
    dockerfile: str | os.PathLike[str] = "Dockerfile",
    target: str | None = None,
    build_args: Mapping[str, str] | None = None,
    *,
    platform: str | None = None,
    stat_cache: bool | str | os.PathLike[str] = True,
    resolve_image: ImageResolver | None = None,
    identify_image: ImageIdentifier | None = None,
) -> Plan:
    """Plan building ``target`` (default: the last stage) of ``dockerfile`` with ``context``.

    A relative ``dockerfile`` is taken inside the context, as docker's SDKs take it (the CLI
    resolves ``-f`` against the current directory first, as ``docker build`` does). The
    ``.dockerignore`` is ``<dockerfile>.dockerignore`` when it exists, else the context's.
    ``platform`` is the target platform (default: this machine's). ``stat_cache`` is True for the
    default stat cache, False to read every file, or a path. ``resolve_image`` gives base images'
    configs to the front end (ENV, WORKDIR, USER, SHELL, ONBUILD) and ``identify_image`` their
    manifest digests to the keys; a build passes both (``memobuild.build.planning``), so that
    what a step sees of its base and which base it is are part of its key.

    Nothing is built or fetched and the store is not touched. Raises DockerfileParseError
    (file:line) for Dockerfile problems and sources missing from the context, and InputError
    subclasses for a missing context or Dockerfile.
    """
    context_path = Path(context)
    if not context_path.exists():
        raise PathNotFoundError(context_path, "build context")
    if not context_path.is_dir():
        raise NotADirectoryInputError(context_path)
    dockerfile_path = Path(dockerfile)
    if not dockerfile_path.is_absolute():
        dockerfile_path = context_path / dockerfile_path
    shown = _shown_path(dockerfile_path)
    df = parse(_read_dockerfile(dockerfile_path, shown), filename=shown)
    stages = load_stages(
        df,
        build_args=build_args,
        target_platform=platform,
        target=target,
        resolve_image=resolve_image,
    )
    graph = build_graph(stages, target, file=shown)
    patterns = tuple(load_dockerignore(context_path, dockerfile_path))
    build_context = BuildContext(
        context_path,
        dockerignore=patterns,
        ignore_file=dockerignore_path(context_path, dockerfile_path),
        stat_cache=stat_cache,
    )
    keys = compute_keys(graph, build_context, file=shown, identify_image=identify_image)
    level = {node: number for number, ids in enumerate(graph.levels) for node in ids}
    nodes = tuple(
        _plan_node(graph, node, key, level[node.id])
        for node, key in zip(graph.nodes, keys, strict=True)
    )
    warnings = [f"{shown}:{w.line}: {w.message}" for w in (*df.warnings, *stages.warnings)]
    warnings.extend(_reference_warnings(graph, shown))
    unused = stages.unused_build_args(graph.target)
    if unused:
        names = ", ".join(sorted(unused))
        warnings.append(f"build arg(s) not consumed by any stage the target needs: {names}")
    return Plan(
        context=context_path,
        dockerfile=dockerfile_path,
        dockerfile_name=_record_path(context_path, dockerfile_path),
        target=graph.stage(graph.target).display_name,
        platform=str(stages.target_platform),
        build_args=tuple(sorted((build_args or {}).items())),
        dockerignore=patterns,
        nodes=nodes,
        edges=graph.edges,
        levels=graph.levels,
        stage_levels=graph.stage_levels,
        warnings=tuple(warnings),
        stages=stages,
        context_index=build_context.index if build_context.hashed else None,
    )


def _plan_node(graph: BuildGraph, node: GraphNode, key: StepKey, level: int) -> PlanNode:
    stage = graph.stage(node.stage)
    source_node = stage.node if node.step is None else node.step.node
    text = " ".join((source_node.original or source_node.keyword.upper()).split())
    return PlanNode(
        id=node.id,
        stage=node.stage,
        stage_name=stage.display_name,
        position=node.position,
        line=source_node.start_line,
        kind="FROM" if node.step is None else node.step.instruction.keyword,
        text=text,
        deps=node.deps,
        level=level,
        key=key.key,
        preimage=key.preimage,
        step=node.step,
        sources=key.sources,
        unresolved=key.unresolved,
    )


def _read_dockerfile(path: Path, shown: str) -> str:
    """The Dockerfile's text, read as ``memobuild parse`` reads it (read_dockerfile)."""
    try:
        with path.open("rb") as file:
            return read_dockerfile(file, shown)
    except FileNotFoundError:
        raise PathNotFoundError(shown, "Dockerfile") from None
    except IsADirectoryError:
        raise UnreadablePathError(shown, "is a directory, not a Dockerfile") from None
    except OSError as err:
        raise UnreadablePathError(shown, err.strerror or str(err)) from None


def _shown_path(path: Path) -> str:
    """How messages name a file: relative to the current directory when below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _record_path(context: Path, dockerfile: Path) -> str:
    """The Dockerfile relative to the context (POSIX), or absolute when it lies outside."""
    real_context = context.resolve()
    real_file = dockerfile.resolve()
    try:
        return real_file.relative_to(real_context).as_posix()
    except ValueError:
        return real_file.as_posix()


def _reference_warnings(graph: BuildGraph, shown: str) -> list[str]:
    """Image references that look like a mistyped or misplaced stage name.

    They are legal (BuildKit would try to pull them), so this warns rather than fails: a FROM
    naming a stage defined further down, or a ``--from`` a letter away from a stage's name.
    """
    stages: BuildStages = graph.stages
    names = {s.name: s for s in stages.stages if s.name}
    out: list[str] = []

    def check(ref: str, what: str, line: int, before: int) -> None:
        if any(c in ref for c in "/:@"):
            return
        lowered = ref.lower()
        if lowered in names and names[lowered].index >= before:
            out.append(
                f"{shown}:{line}: {what} {ref!r} names the stage on line "
                f"{names[lowered].node.start_line}, which is not above this one; FROM sees only "
                "earlier stages, so it is taken as an image"
            )
            return
        close = difflib.get_close_matches(lowered, list(names), n=1, cutoff=0.8)
        if close:
            out.append(
                f"{shown}:{line}: {what} {ref!r} is not a stage name (did you mean "
                f"{close[0]!r}?); it is taken as an image"
            )

    for index in graph.stage_ids:
        stage = stages.stages[index]
        if stage.base_stage is None and stage.base != "scratch":
            check(stage.base, "FROM", stage.node.start_line, index)
        for step in stage.steps:
            for source in step.sources:
                if source.kind == "image" and source.image is not None:
                    check(source.image, "--from", step.line, index)
    return out
