"""Why a step would miss the cache: the first input of its key that changed since last time.

Each node of the current plan that the local store cannot answer is matched with its node in
the last recorded plan of the same Dockerfile and target (same stage, aligned by instruction so
that an inserted line does not shift every comparison after it). Their preimages are compared in
key order and the first input that differs is reported in words::

    step 7 COPY src/ /app: src/main.py changed
    step 9 RUN make: build arg VERSION 1.2 -> 1.3
    step 8 RUN go build: parent step 7 changed

For a source digest the two builds' context listings are compared to name the files; a step
whose key did not change at all is reported as missing from the store (never built, or evicted).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass

from memobuild import _core
from memobuild.dockerfile.instructions import (
    AddInstruction,
    BindMount,
    CopyInstruction,
    RunInstruction,
)
from memobuild.plan.model import Plan, PlanNode
from memobuild.plan.record import PlanStore, RecordedNode, RecordedPlan, recorded_plan
from memobuild.plan.sources import SourceChange, diff_source, is_remote_source

__all__ = ["ExplainReport", "Explanation", "explain"]

# How many changed files a message names before it says "and N more".
NAMED_CHANGES = 3
# The key input of an ADD of a URL (without --checksum) before the build downloads it.
REMOTE = "remote"


@dataclass(frozen=True)
class Explanation:
    """Why ``node`` would miss: ``input`` is the preimage entry that changed (None when the key
    itself is unchanged or the step is new), ``old``/``new`` its values, ``changes`` the files
    behind a changed source."""

    node: PlanNode
    reason: str
    input: str | None = None
    old: str | None = None
    new: str | None = None
    changes: tuple[SourceChange, ...] = ()

    @property
    def message(self) -> str:
        return f"{self.node.label}: {self.reason}"


@dataclass(frozen=True)
class ExplainReport:
    """Every step that would miss, explained; ``recorded`` says whether there was an earlier
    build to compare with (without one, every miss is "no recorded build")."""

    plan: Plan
    recorded: bool
    misses: tuple[Explanation, ...]
    hits: int


def explain(store: PlanStore, plan: Plan) -> ExplainReport:
    """Explain every step of ``plan`` that the store would not answer."""
    previous = recorded_plan(store, plan.record_name)
    old_index: _core.ContextIndex | None = None
    if previous is not None and previous.context_digest is not None:
        old_index = previous.context_index(store)
    counterparts = _align(plan, previous) if previous is not None else {}
    recorded_keys = {n.key for n in previous.nodes} if previous is not None else set()
    misses: list[Explanation] = []
    hits = 0
    for node in plan.nodes:
        if store.has_action(node.key):
            hits += 1
            continue
        if previous is None:
            misses.append(
                Explanation(
                    node,
                    f"no recorded build of {plan.record_name} to compare with (each build "
                    "records one; `memobuild plan --record` records this plan)",
                )
            )
            continue
        old: RecordedNode | None
        if node.key in recorded_keys:  # the same work under another name or position
            old = next(n for n in previous.nodes if n.key == node.key)
        else:
            old = counterparts.get(node.id)
        misses.append(_explain_node(plan, previous, node, old, old_index))
    return ExplainReport(plan, previous is not None, tuple(misses), hits)


def _align(plan: Plan, previous: RecordedPlan) -> dict[int, RecordedNode]:
    """Match current nodes to recorded ones, stage by stage, by instruction text."""
    out: dict[int, RecordedNode] = {}
    stage_names = list(dict.fromkeys(node.stage_name for node in plan.nodes))
    for stage_name in stage_names:
        new = plan.stage_nodes(stage_name)
        old = [n for n in previous.nodes if n.stage_name == stage_name]
        matcher = difflib.SequenceMatcher(
            a=[(n.kind, n.text) for n in old], b=[(n.kind, n.text) for n in new], autojunk=False
        )
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal" or tag == "replace":
                for offset in range(min(i2 - i1, j2 - j1)):
                    out[new[j1 + offset].id] = old[i1 + offset]
    return out


def _explain_node(
    plan: Plan,
    previous: RecordedPlan,
    node: PlanNode,
    old: RecordedNode | None,
    old_index: _core.ContextIndex | None,
) -> Explanation:
    if old is None:
        if not any(n.stage_name == node.stage_name for n in previous.nodes):
            return Explanation(node, f"stage {node.stage_name} is not in the last recorded build")
        return Explanation(node, "new step: not in the last recorded build")
    if old.key == node.key:
        return Explanation(
            node, "unchanged since the last recorded build, but not in the local store"
        )
    recorded_inputs = dict(old.preimage)
    for name, value in node.preimage:
        before = recorded_inputs.get(name)
        if before != value:
            return _describe(plan, node, old, name, before, value, old_index)
    current = {name for name, _ in node.preimage}
    for name, value in old.preimage:
        if name not in current:
            return _describe(plan, node, old, name, value, None, old_index)
    return Explanation(node, "the cache key schema changed since the last recorded build")


def _describe(
    plan: Plan,
    node: PlanNode,
    old: RecordedNode,
    name: str,
    before: str | None,
    after: str | None,
    old_index: _core.ContextIndex | None,
) -> Explanation:
    def done(reason: str, changes: tuple[SourceChange, ...] = ()) -> Explanation:
        return Explanation(node, reason, name, before, after, changes)

    head, _, rest = name.partition(" ")
    if name == "parent":
        parent = plan.node_with_key(after or "")
        if node.kind == "FROM":
            return done(f"base stage {parent.stage_name if parent else '?'} changed")
        return done(f"parent step {parent.number} changed" if parent else "parent step changed")
    if name == "image":
        return done(f"base image {_shown(before)} -> {_shown(after)}")
    if name in ("kind", "instruction"):
        if old.text != node.text:
            return done(f"instruction changed: {old.text} -> {node.text}")
        return done(f"expanded instruction changed: {_field_change(before, after)}")
    if name in ("chown", "chmod"):
        return done(f"--{name} {_shown(before)} -> {_shown(after)}")
    if head == "heredoc":
        return done(f"heredoc {rest} changed")
    if name in ("platform", "workdir", "user", "shell"):
        return done(f"{name.upper()} {_shown(before)} -> {_shown(after)}")
    if head in ("arg", "env"):
        what = "build arg" if head == "arg" else "env"
        if before is None:
            return done(f"{what} {rest} set to {after!r}")
        if after is None:
            return done(f"{what} {rest} no longer set (was {before!r})")
        return done(f"{what} {rest} {before} -> {after}")
    if name == "from" or (head == "mount" and rest.endswith(" from")):
        source = plan.node_with_key(after or "")
        label = f"stage {source.stage_name}" if source else _shown(after)
        where = "--from" if name == "from" else f"mount {rest.removesuffix(' from')} from="
        return done(f"{where} {label} changed")
    if head == "source" or (head == "mount" and rest.endswith(" context")):
        return _describe_source(plan, node, name, before, after, old_index, done)
    if head == "mount":
        if before is None or after is None:
            return done(f"--mount {rest} {'added' if before is None else 'removed'}")
        return done(f"--mount {rest} changed: {_field_change(before, after)}")
    return done(f"{name} changed")


def _describe_source(
    plan: Plan,
    node: PlanNode,
    name: str,
    before: str | None,
    after: str | None,
    old_index: _core.ContextIndex | None,
    done: Callable[..., Explanation],
) -> Explanation:
    head, _, rest = name.partition(" ")
    if head == "source":
        source, exclude, wildcards = rest, _excludes(node), True
    else:
        source, exclude, wildcards = _mount_source(node, rest.removesuffix(" context")), (), False
    if before is None:
        return done(f"new source {source}")
    if after is None:
        return done(f"source {source} no longer used")
    if head == "source" and is_remote_source(source):
        return done(_remote_change(source, before, after))
    new_index = plan.context_index
    if old_index is not None and new_index is not None:
        try:
            changes, total = diff_source(
                old_index, new_index, source, exclude=exclude, wildcards=wildcards
            )
        except (OSError, ValueError):
            changes, total = (), 0
        if changes:
            named = ", ".join(f"{c.path} {_verb(c.change)}" for c in changes[:NAMED_CHANGES])
            more = total - min(total, NAMED_CHANGES)
            tail = f" (and {more} more)" if more else ""
            return done(named + tail, changes)
    return done(f"files matched by {source} changed")


def _remote_change(url: str, before: str, after: str) -> str:
    """An ADD of a URL is keyed by ``remote`` until the build downloads it, then by the
    downloaded content's digest (the executor refines the key)."""
    if after == REMOTE:
        return f"{url} is downloaded when the build runs; the step runs if its content changed"
    if before == REMOTE:
        return f"{url} downloaded as {_short_digest(after)}; the recorded plan had not fetched it"
    return f"{url} content changed ({_short_digest(before)} -> {_short_digest(after)})"


def _short_digest(digest: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}:{hex_part[:12]}" if hex_part else digest


def _verb(change: str) -> str:
    return "changed" if change == "modified" else change


def _excludes(node: PlanNode) -> tuple[str, ...]:
    step = node.step
    if step is not None and isinstance(step.instruction, (CopyInstruction, AddInstruction)):
        return step.instruction.exclude
    return ()


def _mount_source(node: PlanNode, target: str) -> str:
    step = node.step
    if step is not None and isinstance(step.instruction, RunInstruction):
        for mount in step.instruction.mounts or ():
            if isinstance(mount, BindMount) and mount.target == target:
                return mount.source or "."
    return "."


def _shown(value: str | None) -> str:
    if value is None:
        return "(none)"
    return value if value else '""'


def _field_change(before: str | None, after: str | None) -> str:
    """The first field of two instruction JSONs that differs, as ``field: old -> new``."""
    try:
        old = json.loads(before or "{}")
        new = json.loads(after or "{}")
    except ValueError:
        return f"{before} -> {after}"
    for field in sorted(set(old) | set(new)):
        if old.get(field) != new.get(field):
            return f"{field}: {json.dumps(old.get(field))} -> {json.dumps(new.get(field))}"
    return f"{before} -> {after}"
