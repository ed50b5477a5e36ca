"""Typed build events: what a build tells its caller while it runs.

The executor hands each event to an optional ``on_event`` callback. The CLI prints them as plain
lines; ``--events FILE`` (and anything else that wants a machine-readable trace) turns them into
JSON with :func:`event_json`. Events are plain frozen dataclasses so that a caller can match on
their type, and every field is a str, int, float, bool or a tuple of those, so that the JSON form
is a faithful copy.

Events from stages running in parallel arrive from several threads; the executor serialises the
calls, so a callback never runs twice at once and needs no locking of its own.

A build with a remote cache (``--cache-from``/``--cache-to``) also reports the hybrid cache's
events (cache/remote_events.py): ``CacheHit`` and ``CacheMiss`` by tier for each lookup,
``RemoteSync`` for each completed transfer (direction, bytes, duration; uploads come from
background threads, all before ``BuildFinished``), ``RemoteIntegrityFailure`` for a download
that failed verification and was discarded, and ``RemoteDisabled`` when the remote was switched
off for the rest of the build. A build without a remote cache sends none of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memobuild.cache.remote_events import (
    LOCAL,
    CacheHit,
    CacheMiss,
    RemoteDisabled,
    RemoteIntegrityFailure,
    RemoteSync,
)

__all__ = [
    "REMOTE_CACHE_EVENTS",
    "BuildEvent",
    "BuildFailed",
    "BuildFinished",
    "BuildStarted",
    "CacheHit",
    "CacheMiss",
    "EventCallback",
    "LayerBuilt",
    "OutputWritten",
    "RemoteDisabled",
    "RemoteIntegrityFailure",
    "RemoteSync",
    "StepCached",
    "StepExecuted",
    "StepOutput",
    "StepStarted",
    "event_json",
]


@dataclass(frozen=True)
class BuildStarted:
    """The plan is made: how many steps the build has and how many the cache may answer."""

    context: str
    dockerfile: str
    target: str
    steps: int
    stages: int
    levels: int


@dataclass(frozen=True)
class StepCached:
    """A step's result came from the cache: its layers were chained, nothing ran. ``tier``
    says which cache answered: ``"local"``, or ``"remote"`` (downloaded, verified and stored
    locally in this build)."""

    step: int  # 1-based, as messages say "step N"
    stage: str
    text: str
    key: str
    layers: int
    tier: str = LOCAL


@dataclass(frozen=True)
class StepStarted:
    """A step missed the cache and starts running now; ``reason`` says why it missed, in
    ``memobuild explain``'s words (``src/main.py changed``, ``build arg V 1 -> 2``,
    ``--no-cache``)."""

    step: int
    stage: str
    text: str
    key: str
    reason: str


@dataclass(frozen=True)
class StepOutput:
    """One line a running step printed (stdout and stderr interleaved, newline stripped)."""

    step: int
    stage: str
    line: str


@dataclass(frozen=True)
class LayerBuilt:
    """A step's filesystem changes became a layer blob in the store."""

    step: int
    stage: str
    digest: str
    diff_id: str
    size: int
    entries: int


@dataclass(frozen=True)
class StepExecuted:
    """A step ran to success and its result is stored under ``key``."""

    step: int
    stage: str
    text: str
    key: str
    duration: float
    layers: int


@dataclass(frozen=True)
class OutputWritten:
    """The image (or its filesystem) was exported as one ``--output`` asked; ``digest`` is the
    manifest digest for ``oci`` and ``docker`` outputs, None for ``local`` and ``tar``."""

    type: str
    dest: str
    digest: str | None
    bytes: int


@dataclass(frozen=True)
class BuildFinished:
    """The build succeeded. ``bytes_written``: layer bytes this build added to the store plus
    the bytes of its outputs; ``hit_rate``: the share of steps the cache answered (0.0-1.0).

    ``local_hits + remote_hits == cached``. ``remote_cache`` says whether a remote cache was
    configured; then ``uploads`` counts the action entries stored on it (with their layers),
    ``upload_failures`` those that could not be, ``integrity_failures`` the downloads that
    failed verification (discarded, the step rebuilt), and ``bytes_downloaded`` and
    ``bytes_uploaded`` the layer bytes moved."""

    target: str
    image_digest: str  # the manifest digest: the image's identity
    manifest_digest: str | None  # set when the image was saved under tags
    tags: tuple[str, ...]
    steps: int
    cached: int
    executed: int
    duration: float
    bytes_written: int
    hit_rate: float
    local_hits: int = 0
    remote_hits: int = 0
    remote_cache: bool = False
    uploads: int = 0
    upload_failures: int = 0
    integrity_failures: int = 0
    bytes_downloaded: int = 0
    bytes_uploaded: int = 0


@dataclass(frozen=True)
class BuildFailed:
    """The build stopped; ``step`` is 0 when no single step is to blame."""

    error: str
    step: int = 0
    exit_code: int | None = None


BuildEvent = (
    BuildStarted
    | StepCached
    | StepStarted
    | StepOutput
    | LayerBuilt
    | StepExecuted
    | OutputWritten
    | BuildFinished
    | BuildFailed
    | CacheHit
    | CacheMiss
    | RemoteSync
    | RemoteIntegrityFailure
    | RemoteDisabled
)
EventCallback = Callable[[BuildEvent], None]
# The events only a build with a remote cache sends (for isinstance).
REMOTE_CACHE_EVENTS = (CacheHit, CacheMiss, RemoteSync, RemoteIntegrityFailure, RemoteDisabled)


def event_json(event: BuildEvent) -> dict[str, Any]:
    """The event as a JSON-ready dict: ``{"event": "StepCached", ...fields}``."""
    body: dict[str, Any] = {"event": type(event).__name__}
    for item in dataclasses.fields(event):
        value = getattr(event, item.name)
        body[item.name] = list(value) if isinstance(value, tuple) else value
    return body
