"""What the hybrid cache reports while a build runs: typed events and a counters snapshot.

Events follow build/events.py: frozen dataclasses whose fields are str, int, float or bool, so
``event_json`` turns them into JSON unchanged. They may arrive from upload threads; the build's
event stream serialises its callback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DOWNLOAD",
    "LOCAL",
    "REMOTE",
    "UPLOAD",
    "CacheHit",
    "CacheMiss",
    "CacheStats",
    "RemoteCacheEvent",
    "RemoteCacheEventCallback",
    "RemoteDisabled",
    "RemoteIntegrityFailure",
    "RemoteSync",
]

LOCAL = "local"
REMOTE = "remote"
DOWNLOAD = "download"
UPLOAD = "upload"


@dataclass(frozen=True)
class CacheHit:
    """A step's key was answered; ``tier`` says by which cache ("local" or "remote")."""

    key: str
    tier: str


@dataclass(frozen=True)
class CacheMiss:
    """Neither cache could answer for ``key``: the step runs."""

    key: str


@dataclass(frozen=True)
class RemoteSync:
    """One transfer with the remote cache that completed."""

    direction: str  # "download" | "upload"
    kind: str  # "blob" | "action"
    digest: str  # the blob's digest, or the action's key
    size: int  # bytes transferred
    duration: float  # seconds


@dataclass(frozen=True)
class RemoteIntegrityFailure:
    """Something downloaded did not match its digest (or was not a valid entry): it was
    discarded, never stored or used, and the lookup became a miss."""

    url: str
    digest: str
    reason: str


@dataclass(frozen=True)
class RemoteDisabled:
    """The remote cache was switched off for the rest of the build (the circuit breaker)."""

    url: str
    reason: str


RemoteCacheEvent = CacheHit | CacheMiss | RemoteSync | RemoteIntegrityFailure | RemoteDisabled
RemoteCacheEventCallback = Callable[[RemoteCacheEvent], None]


@dataclass(frozen=True)
class CacheStats:
    """Counters of one hybrid cache's life (one build): what the build summary shows."""

    local_hits: int = 0
    remote_hits: int = 0
    misses: int = 0
    uploads: int = 0  # action entries stored on the remote
    upload_failures: int = 0
    uploads_skipped: int = 0  # not attempted: the remote was switched off or refused uploads
    blobs_downloaded: int = 0
    bytes_downloaded: int = 0
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0
    verification_failures: int = 0
    remote_failures: int = 0  # remote operations that failed after their retries
    retries: int = 0
    remote_disabled: bool = False
