"""Plans kept in the store: each build records its plan so ``explain`` can compare with it.

Two record kinds (``LocalStore.put_record``):

* ``plan``, named ``<Dockerfile>@<target>`` (:attr:`Plan.record_name`): per node its stage,
  position, instruction, key and preimage; the last record of that name is what ``explain``
  compares with.
* ``context-listing``, named by the context's Merkle digest: every entry of the hashed context
  (path, type, digest; compact bytes from Rust), so that ``explain`` can name the files behind
  a changed source digest. Content-addressed, so an unchanged context is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from memobuild import _core
from memobuild.logging import logger
from memobuild.plan.model import Plan, Preimage

__all__ = [
    "LISTING_RECORD",
    "PLAN_RECORD",
    "PLAN_RECORD_SCHEMA",
    "PlanStore",
    "RecordedNode",
    "RecordedPlan",
    "cache_hits",
    "record_plan",
    "recorded_plan",
]

PLAN_RECORD = "plan"
LISTING_RECORD = "context-listing"
PLAN_RECORD_SCHEMA = "memobuild.plan.v1"
# A listing costs ~80 bytes a file; past this (about 600,000 files) explain names the changed
# source but not the files in it, rather than writing records the store would refuse.
MAX_LISTING_BYTES = 48 << 20


class PlanStore(Protocol):
    """What planning needs of a store (``memobuild.cache.store.LocalStore`` provides it)."""

    def has_action(self, key: str) -> bool: ...
    def put_record(self, kind: str, name: str, value: Any) -> None: ...
    def get_record(self, kind: str, name: str) -> Any | None: ...


@dataclass(frozen=True)
class RecordedNode:
    """One node of a recorded plan."""

    stage_name: str
    position: int
    kind: str
    text: str
    key: str
    preimage: Preimage


@dataclass(frozen=True)
class RecordedPlan:
    """A plan as an earlier build recorded it."""

    name: str
    context_digest: str | None
    listing: str | None
    nodes: tuple[RecordedNode, ...]

    def context_index(self, store: PlanStore) -> _core.ContextIndex | None:
        """The recorded context's entries, if they were kept and are still readable."""
        if self.listing is None:
            return None
        data = store.get_record(LISTING_RECORD, self.listing)
        if not isinstance(data, bytes):
            return None
        try:
            return _core.ContextIndex.from_listing(data)
        except ValueError as err:
            logger.warning(f"context listing {self.listing}: {err}; file names are unavailable")
            return None


def cache_hits(store: PlanStore, plan: Plan) -> tuple[bool, ...]:
    """Per node, whether the local store holds a result for its key (a cheap existence check)."""
    return tuple(store.has_action(node.key) for node in plan.nodes)


def _listing_name(digest: str) -> str:
    return digest.split(":", 1)[1]


def record_plan(store: PlanStore, plan: Plan) -> None:
    """Record ``plan`` as the last build of its Dockerfile and target (what a build calls when
    it finishes, and ``memobuild plan --record``). A record that already says exactly this (a
    no-change rebuild) is left as it is: rewriting it would cost two fsyncs for nothing."""
    listing: str | None = None
    previous = store.get_record(PLAN_RECORD, plan.record_name)
    index = plan.context_index
    if index is not None:
        listing = _listing_name(index.digest)
        already = isinstance(previous, dict) and previous.get("listing") == listing
        if not already:
            data = index.listing()
            if len(data) <= MAX_LISTING_BYTES:
                store.put_record(LISTING_RECORD, listing, data)
            else:
                listing = None
    value = {
        "schema": PLAN_RECORD_SCHEMA,
        "dockerfile": plan.dockerfile_name,
        "target": plan.target,
        "platform": plan.platform,
        "context_digest": plan.context_digest,
        "listing": listing,
        "nodes": [
            [n.stage_name, n.position, n.kind, n.text, n.key, [list(p) for p in n.preimage]]
            for n in plan.nodes
        ],
    }
    if value != previous:
        store.put_record(PLAN_RECORD, plan.record_name, value)


def recorded_plan(store: PlanStore, name: str) -> RecordedPlan | None:
    """The plan last recorded under ``name``, or None if there is none (or it is unreadable)."""
    value = store.get_record(PLAN_RECORD, name)
    if value is None:
        return None
    try:
        return _decode(name, value)
    except (TypeError, ValueError, KeyError) as err:
        logger.warning(f"recorded plan {name!r} is not usable ({err}); ignoring it")
        return None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return value


def _optional_text(value: Any, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _decode(name: str, value: Any) -> RecordedPlan:
    if not isinstance(value, dict) or value.get("schema") != PLAN_RECORD_SCHEMA:
        raise ValueError(f"not a {PLAN_RECORD_SCHEMA} record")
    nodes = []
    for raw in value["nodes"]:
        stage_name, position, kind, text, key, preimage = raw
        if not isinstance(position, int):
            raise TypeError("position must be an int")
        pairs = tuple(
            (_text(pair[0], "preimage name"), _text(pair[1], "preimage value")) for pair in preimage
        )
        nodes.append(
            RecordedNode(
                _text(stage_name, "stage"),
                position,
                _text(kind, "kind"),
                _text(text, "text"),
                _text(key, "key"),
                pairs,
            )
        )
    return RecordedPlan(
        name=name,
        context_digest=_optional_text(value.get("context_digest"), "context_digest"),
        listing=_optional_text(value.get("listing"), "listing"),
        nodes=tuple(nodes),
    )
