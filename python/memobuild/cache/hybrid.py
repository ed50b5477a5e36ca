"""The cache a build talks to: the local store first, then a remote cache; never a failed build.

``HybridCache`` answers the calls the executor makes on its store for steps (``lookup`` and
``probe``, which also say which tier answered, ``get_action``, ``has_action``, ``put_action``,
``put_blob_file``, ``blob_path``, ``root``):

- **Lookups** go to the local store; on a local miss (and with ``pull``) the remote is asked.
  A remote hit downloads the entry and every layer blob the local store lacks, each verified
  (``CacheRemote.get_blob``), stores them locally, and then answers *from the local store*, so
  the build only ever reads verified local files, and the next build hits locally.
- **Stores** go to the local store at once (as before); with ``push`` the entry is then queued
  for upload on a small pool of background threads (blobs first, then the entry, which the
  server refuses while a blob it names is missing) while the build goes on. A step the *local*
  store answers is exported too, as BuildKit exports a whole build's cache: a background
  ``HEAD`` asks the push remote whether it has the entry, and it is uploaded if not. Each key
  is queued once per build. ``close(timeout)`` waits for the uploads, at most ``timeout``
  seconds, and reports what did not finish.
- **Failures never fail the build.** A remote failure (after ``retry.py``'s retries) makes the
  lookup a miss or the upload skipped; it is counted and logged at info level. After
  ``failure_threshold`` failed operations in a row, at once when one operation could not
  connect on any attempt (the server is down: every further try would cost connect timeouts),
  or at once when the server refuses the token (401), a
  :class:`~memobuild.retry.CircuitBreaker` switches that remote off for the rest of the build
  with *one* warning. A blob or entry that fails verification is discarded (never
  stored or used), warned about, counted, and the step is rebuilt. A read-only token (403 on
  upload) turns uploads off with one warning and keeps downloads. If failures happened but the
  remote was never switched off, ``close`` says so in one warning.
- **Events and counters**: ``on_event`` receives :mod:`memobuild.cache.remote_events` events
  (hits by tier, misses, each completed transfer, integrity failures, the remote switched off),
  possibly from upload threads; ``stats`` is a snapshot of the counters.

``--cache-from`` and ``--cache-to`` may name different servers: ``remote`` serves pulls and
``push_remote`` (default: ``remote``) pushes; see :meth:`HybridCache.open`. A remote is any
:class:`CacheRemote`: a ``memobuild server`` (``RemoteCache``) or a registry repository
(``RegistryCache``).

**What is exported** (``export_mode``, BuildKit's ``--cache-to ...,mode=``): ``max`` uploads
every step the build stores or hits; ``min`` only the steps whose layers end up in the image,
which the executor says with each call (``in_image``): the intermediate stages' steps stay
local.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol

from memobuild.cache.entries import ActionEntry
from memobuild.cache.options import URL_ENV
from memobuild.cache.remote import (
    RemoteAuthError,
    RemoteCache,
    RemoteUnreachableError,
    RemoteUnusableError,
)
from memobuild.cache.remote_events import (
    DOWNLOAD,
    LOCAL,
    REMOTE,
    UPLOAD,
    CacheHit,
    CacheMiss,
    CacheStats,
    RemoteCacheEvent,
    RemoteCacheEventCallback,
    RemoteDisabled,
    RemoteIntegrityFailure,
    RemoteSync,
)
from memobuild.cache.store import LocalStore
from memobuild.cache.uploads import BackgroundJobs
from memobuild.errors import CASIntegrityError, CorruptEntryError, MemoBuildError
from memobuild.logging import logger
from memobuild.retry import CircuitBreaker, RetryPolicy

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_UPLOAD_WORKERS",
    "CacheRemote",
    "HybridCache",
    "UploadReport",
]

DEFAULT_CLOSE_TIMEOUT = 60.0  # seconds a build waits for its uploads at the end
DEFAULT_UPLOAD_WORKERS = 2
DEFAULT_FAILURE_THRESHOLD = 3  # failed operations in a row that switch a remote off
# CacheStats' integer fields: the counters kept under the lock.
_COUNTERS = tuple(
    f.name for f in fields(CacheStats) if f.name not in ("retries", "remote_disabled")
)


class CacheRemote(Protocol):
    """What the hybrid cache needs of a remote cache (``RemoteCache``, ``RegistryCache``).

    Failures raise MemoBuildError: ``RemoteAuthError`` (401/403) for refused credentials,
    ``RemoteUnreachableError`` when the remote could not be reached at all,
    ``RemoteUnusableError`` when it is not a cache this client can use, CASIntegrityError or
    CorruptEntryError for content that fails verification (nothing of it stored). Thread-safe.
    """

    @property
    def url(self) -> str:
        """How messages name the remote (never with credentials)."""
        ...

    @property
    def retries(self) -> int:
        """Attempts retried so far."""
        ...

    def has_action(self, key: str) -> bool: ...

    def get_action(self, key: str) -> ActionEntry | None:
        """The entry for ``key``, checked (envelope, schema, key), or None."""
        ...

    def action_size(self, entry: ActionEntry) -> int:
        """The bytes ``entry`` takes on the wire."""
        ...

    def get_blob(self, digest: str, dest: LocalStore, size: int | None = None) -> int | None:
        """Download a blob into ``dest``, verified; its size, or None if the remote lacks it."""
        ...

    def put_blob(self, digest: str, source: LocalStore, *, force: bool = False) -> int:
        """Upload a blob of ``source`` unless the remote has it (``force``: even then); the
        bytes sent."""
        ...

    def put_action(self, entry: ActionEntry) -> None:
        """Store ``entry``; its layer blobs have been put first."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class UploadReport:
    """What ``close`` found: entries uploaded, uploads that failed or were skipped (remote
    switched off), and the keys of those still unfinished when the bound ran out."""

    uploaded: int
    failed: int
    skipped: int
    unfinished: tuple[str, ...]
    waited: float


@dataclass
class _Remote:
    """One remote as the hybrid cache uses it: the client, its breaker, what went wrong."""

    client: CacheRemote
    breaker: CircuitBreaker
    push_refused: bool = False
    warned: bool = False
    failures: int = 0
    first_failure: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class HybridCache:
    """Local store first, then ``remote`` (see the module docstring). Thread-safe."""

    def __init__(
        self,
        local: LocalStore,
        remote: CacheRemote | None,
        pull: bool = True,
        push: bool = True,
        *,
        push_remote: CacheRemote | None = None,
        on_event: RemoteCacheEventCallback | None = None,
        upload_workers: int = DEFAULT_UPLOAD_WORKERS,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        export_mode: str = "max",
    ) -> None:
        if export_mode not in ("max", "min"):
            raise ValueError(f"export_mode must be max or min, not {export_mode!r}")
        self.local = local
        self.export_mode = export_mode
        self._on_event = on_event
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._pushed_blobs: set[str] = set()
        self._pushing: dict[str, threading.Event] = {}  # blob uploads in progress
        self._queued_keys: set[str] = set()  # entries queued for upload (or the check) once
        # Blobs whose remote copy failed verification: uploaded even though the server says it
        # has them, so the rebuilt step's upload replaces the bad copy.
        self._bad_remote_blobs: set[str] = set()
        self._closing = False
        self._close_lock = threading.Lock()
        self._report: UploadReport | None = None
        self._jobs = BackgroundJobs(upload_workers)
        tiers: dict[int, _Remote] = {}

        def tier(client: CacheRemote) -> _Remote:
            key = id(client)
            if key not in tiers:
                breaker = CircuitBreaker(
                    failure_threshold,
                    on_open=lambda reason: self._switched_off(tiers[key], reason),
                )
                tiers[key] = _Remote(client, breaker)
            return tiers[key]

        self._pull = tier(remote) if (pull and remote is not None) else None
        target = push_remote if push_remote is not None else remote
        self._push = tier(target) if (push and target is not None) else None
        self._remotes = tuple(tiers.values())

    @classmethod
    def open(
        cls,
        local: LocalStore,
        *,
        cache_from: str | None = None,
        cache_to: str | None = None,
        token: str | None = None,
        policy: RetryPolicy | None = None,
        on_event: RemoteCacheEventCallback | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> HybridCache:
        """The cache for a build's options. ``--cache-from URL`` pulls from URL, ``--cache-to
        URL`` pushes to URL (the same server is one client); with neither,
        ``$MEMOBUILD_REMOTE_URL`` (if set) does both. ``token`` defaults to
        ``$MEMOBUILD_REMOTE_TOKEN``. No URL at all: a local-only cache."""
        env = os.environ if environ is None else environ
        if cache_from is None and cache_to is None:
            cache_from = cache_to = env.get(URL_ENV) or None
        clients: dict[str, RemoteCache] = {}

        def client(url: str | None) -> RemoteCache | None:
            if url is None:
                return None
            made = RemoteCache(url, token, policy=policy, environ=env)
            if made.url in clients:  # the same server for both: one client, one breaker
                made.close()
                return clients[made.url]
            clients[made.url] = made
            return made

        pull_from = client(cache_from)
        push_to = client(cache_to)
        return cls(
            local,
            pull_from if pull_from is not None else push_to,
            pull=pull_from is not None,
            push=push_to is not None,
            push_remote=push_to,
            on_event=on_event,
        )

    # --- what the executor uses -------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.local.root

    @property
    def remote_enabled(self) -> bool:
        """Whether any remote is configured and not switched off."""
        return any(r.breaker.allow() for r in self._remotes)

    def lookup(self, key: str, *, in_image: bool = True) -> tuple[ActionEntry | None, str | None]:
        """The entry for ``key`` and the tier that answered (``"local"`` or ``"remote"``): the
        local store, else the remote, whose entry is pulled into the local store (verified)
        and answered from there. ``(None, None)`` is a miss. Never raises for a remote
        problem. ``in_image``: whether the step's layers end up in the image (a local hit
        is exported with ``mode=min`` only then)."""
        entry = self.local.get_action(key)
        if entry is not None:
            self._hit(key, LOCAL)
            self._export(entry, in_image)
            return entry, LOCAL
        entry = self._pull_entry(key)
        if entry is not None:
            self._hit(key, REMOTE)
            return entry, REMOTE
        self._miss(key)
        return None, None

    def probe(self, key: str, *, in_image: bool = True) -> str | None:
        """Which tier answers for ``key`` (None: neither), as ``lookup`` does but without
        reading a local entry. A remote hit is pulled into the local store all the same, so
        later lookups (and ``memobuild plan``) see it."""
        if self.local.has_action(key):
            self._hit(key, LOCAL)
            self._export(key, in_image)
            return LOCAL
        if self._pull_entry(key) is not None:
            self._hit(key, REMOTE)
            return REMOTE
        self._miss(key)
        return None

    def get_action(self, key: str) -> ActionEntry | None:
        """``lookup``'s entry: None is a miss."""
        return self.lookup(key)[0]

    def has_action(self, key: str) -> bool:
        """Whether either cache answers for ``key`` (see ``probe``)."""
        return self.probe(key) is not None

    def put_action(self, entry: ActionEntry, *, in_image: bool = True) -> None:
        """Store ``entry`` locally (errors raise, as the local store's do), then queue its
        upload with its layer blobs (with ``mode=min``, only if ``in_image``)."""
        self.local.put_action(entry)
        if not self._exports(in_image):
            return
        tier = self._upload_tier()
        if tier is None:
            return
        with self._lock:
            self._queued_keys.add(entry.key)
        self._jobs.submit(entry.key, lambda: self._upload(tier, entry))

    def put_blob_file(self, source: str | os.PathLike[str], digest: str | None = None) -> str:
        """Store a blob locally (it travels with the entry that references it)."""
        return self.local.put_blob_file(source, digest)

    def blob_path(self, digest: str) -> Path:
        return self.local.blob_path(digest)

    def has_blob(self, digest: str) -> bool:
        return self.local.has_blob(digest)

    # --- counters and events ----------------------------------------------------------------

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            counts = dict(self._counts)
        counts["retries"] = sum(r.client.retries for r in self._remotes)
        return CacheStats(
            **counts, remote_disabled=any(not r.breaker.allow() for r in self._remotes)
        )

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._counts[name] += delta

    def _emit(self, event: RemoteCacheEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def _hit(self, key: str, tier: str) -> None:
        self._count(**{f"{tier}_hits": 1})
        self._emit(CacheHit(key, tier))

    def _miss(self, key: str) -> None:
        self._count(misses=1)
        self._emit(CacheMiss(key))

    def _synced(self, direction: str, kind: str, digest: str, size: int, started: float) -> None:
        if kind == "blob":
            if direction == DOWNLOAD:
                self._count(blobs_downloaded=1, bytes_downloaded=size)
            else:
                self._count(blobs_uploaded=1, bytes_uploaded=size)
        self._emit(RemoteSync(direction, kind, digest, size, time.monotonic() - started))

    # --- failures ---------------------------------------------------------------------------

    def _switched_off(self, tier: _Remote, reason: str) -> None:
        """The breaker opened (called once per remote): the one warning."""
        with tier.lock:
            tier.warned = True
        if self._closing:
            return
        logger.warning(
            "remote cache switched off for the rest of the build, which goes on with the local "
            f"cache: {reason}"
        )
        self._emit(RemoteDisabled(tier.client.url, reason))

    def _failed(self, tier: _Remote, err: MemoBuildError) -> None:
        """A remote operation failed after its retries: count it, log it, tell the breaker."""
        if self._closing:
            return
        self._count(remote_failures=1)
        if isinstance(err, RemoteAuthError) and err.status in (401, 403):
            tier.breaker.trip(str(err))  # no point asking again with the same token
            return
        if isinstance(err, RemoteUnreachableError):
            tier.breaker.trip(str(err))  # down: each further try costs connect timeouts
            return
        if isinstance(err, RemoteUnusableError):
            tier.breaker.trip(str(err))  # not a cache: asking again will not make it one
            return
        with tier.lock:
            tier.failures += 1
            first = tier.first_failure is None
            if first:
                tier.first_failure = str(err)
        if first:
            logger.info(f"remote cache: {err}; going on without it")
        else:
            logger.debug(f"remote cache: {err}")
        tier.breaker.failure(str(err))

    def _integrity_failure(self, tier: _Remote, digest: str, err: MemoBuildError) -> None:
        self._count(verification_failures=1)
        logger.warning(
            f"remote cache {tier.client.url}: {err}; discarded (nothing stored), "
            "the step will be rebuilt"
        )
        with tier.lock:
            tier.warned = True
        self._emit(RemoteIntegrityFailure(tier.client.url, digest, str(err)))
        tier.breaker.failure(str(err))  # a server that keeps sending bad bytes is switched off

    # --- pulling ----------------------------------------------------------------------------

    def _pull_entry(self, key: str) -> ActionEntry | None:
        """Bring ``key``'s entry and blobs from the remote into the local store and answer from
        there; None on a remote miss or any failure."""
        tier = self._pull
        if tier is None or not tier.breaker.allow() or self._closing:
            return None
        client = tier.client
        started = time.monotonic()
        try:
            entry = client.get_action(key)
        except (CorruptEntryError, CASIntegrityError) as err:  # an entry blob's bytes, say
            self._integrity_failure(tier, key, err)
            return None
        except MemoBuildError as err:
            self._failed(tier, err)
            return None
        if entry is None:
            tier.breaker.success()
            return None
        self._synced(DOWNLOAD, "action", key, client.action_size(entry), started)
        # Twice at most: a local blob that turns out corrupt when the entry is read back is
        # quarantined by the store, and the second pass downloads it again.
        for _ in range(2):
            try:
                for layer in entry.layers:
                    if self.local.has_blob(layer.digest):
                        continue
                    started = time.monotonic()
                    size = client.get_blob(layer.digest, self.local, layer.size)
                    if size is None:  # the server lost it since it answered for the entry
                        logger.info(
                            f"remote cache {client.url}: action {key} names blob "
                            f"{layer.digest}, which the server no longer has; a miss"
                        )
                        tier.breaker.success()
                        return None
                    self._synced(DOWNLOAD, "blob", layer.digest, size, started)
                self.local.put_action(entry)
            except CASIntegrityError as err:
                with self._lock:
                    self._bad_remote_blobs.add(err.expected)
                self._integrity_failure(tier, err.expected, err)
                return None
            except MemoBuildError as err:
                self._failed(tier, err)
                return None
            local = self.local.get_action(key)
            if local is not None:
                tier.breaker.success()
                return local
        return None

    # --- pushing ----------------------------------------------------------------------------

    def _upload_tier(self) -> _Remote | None:
        """The push remote if uploads may still be queued; counts a skipped upload if not."""
        tier = self._push
        if tier is None or self._closing:
            return None
        if not tier.breaker.allow() or tier.push_refused:
            self._count(uploads_skipped=1)
            return None
        return tier

    def _exports(self, in_image: bool) -> bool:
        """Whether a step is exported: every one with ``mode=max``, the image's with ``min``."""
        return in_image or self.export_mode == "max"

    def _export(self, hit: ActionEntry | str, in_image: bool) -> None:
        """A local hit (an entry, or the key ``probe`` saw): queue a check that the push
        remote has it, and its upload if not. Once per key and build."""
        key = hit if isinstance(hit, str) else hit.key
        if self._push is None or not self._exports(in_image):
            return
        with self._lock:
            if key in self._queued_keys:
                return
            self._queued_keys.add(key)
        tier = self._upload_tier()
        if tier is not None:
            self._jobs.submit(key, lambda: self._upload_if_missing(tier, hit))

    def _upload_if_missing(self, tier: _Remote, hit: ActionEntry | str) -> None:
        """One background export of a local hit: nothing if the remote has the entry."""
        if not tier.breaker.allow() or tier.push_refused or self._closing:
            self._count(uploads_skipped=1)
            return
        key = hit if isinstance(hit, str) else hit.key
        try:
            present = tier.client.has_action(key)
        except MemoBuildError as err:
            self._count(upload_failures=1)
            self._failed(tier, err)
            return
        if present:
            tier.breaker.success()
            return
        entry = self.local.get_action(key) if isinstance(hit, str) else hit
        if entry is None:  # gone from the local store since (gc): nothing to export
            return
        self._upload(tier, entry)

    def _upload(self, tier: _Remote, entry: ActionEntry) -> None:
        """One background upload: the entry's blobs the server lacks, then the entry."""
        if not tier.breaker.allow() or tier.push_refused or self._closing:
            self._count(uploads_skipped=1)
            return
        client = tier.client
        try:
            for layer in entry.layers:
                if not self._push_blob(client, layer.digest):
                    # Another upload of this blob failed (and reported it): the server would
                    # refuse the entry without it.
                    self._count(upload_failures=1)
                    return
            started = time.monotonic()
            client.put_action(entry)
        except CASIntegrityError as err:
            # The *local* copy failed verification (the store quarantined it and warned):
            # nothing to upload, and nothing wrong with the remote.
            self._count(upload_failures=1)
            logger.info(f"not uploading action {entry.key}: {err}")
            return
        except RemoteAuthError as err:
            self._count(upload_failures=1)
            if err.status == 403:  # a read-only token: downloads still work
                self._refuse_push(tier, err)
            else:
                self._failed(tier, err)
            return
        except MemoBuildError as err:
            self._count(upload_failures=1)
            self._failed(tier, err)
            return
        tier.breaker.success()
        self._count(uploads=1)
        self._synced(UPLOAD, "action", entry.key, client.action_size(entry), started)

    def _push_blob(self, client: CacheRemote, digest: str) -> bool:
        """Upload one blob unless this build already has; True once the server has it. Two
        entries sharing a blob upload it once: the second waits for the first's upload, and
        gets False if that failed. Remote errors raise."""
        with self._lock:
            if digest in self._pushed_blobs:
                return True
            running = self._pushing.get(digest)
            if running is None:
                running = self._pushing[digest] = threading.Event()
                mine = True
            else:
                mine = False
            force = digest in self._bad_remote_blobs
        if not mine:
            running.wait()
            with self._lock:
                return digest in self._pushed_blobs
        try:
            started = time.monotonic()
            sent = client.put_blob(digest, self.local, force=force)
            with self._lock:
                self._pushed_blobs.add(digest)
        finally:
            with self._lock:
                del self._pushing[digest]
            running.set()
        if sent:
            self._synced(UPLOAD, "blob", digest, sent, started)
        return True

    def _refuse_push(self, tier: _Remote, err: RemoteAuthError) -> None:
        with tier.lock:
            first = not tier.push_refused
            tier.push_refused = True
            tier.warned = True
        if first and not self._closing:
            logger.warning(f"{err}; uploads switched off for the rest of the build")

    # --- the end ----------------------------------------------------------------------------

    def close(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> UploadReport:
        """Wait for the queued uploads (at most ``timeout`` seconds; None: no bound), give up
        on the rest, close the remote clients and report. Never raises for a remote problem.
        Calling it again returns the first report; afterwards the cache is local-only."""
        with self._close_lock:
            if self._report is None:
                self._report = self._close(timeout)
            return self._report

    def _close(self, timeout: float | None) -> UploadReport:
        drained = self._jobs.drain(timeout)
        self._closing = True
        for tier in self._remotes:
            tier.client.close()
        stats = self.stats
        problems = []
        if drained.unfinished:
            problems.append(
                f"{len(drained.unfinished)} upload(s) did not finish within "
                f"{drained.waited:.1f}s and were given up"
            )
        for tier in self._remotes:
            if tier.failures and not tier.warned:
                problems.append(
                    f"{tier.client.url}: {tier.failures} operation(s) failed "
                    f"(the first: {tier.first_failure})"
                )
        if problems:
            logger.warning(
                "remote cache: " + "; ".join(problems) + "; the build used the local cache"
            )
        return UploadReport(
            uploaded=stats.uploads,
            failed=stats.upload_failures,
            skipped=stats.uploads_skipped,
            unfinished=drained.unfinished,
            waited=drained.waited,
        )

    def __enter__(self) -> HybridCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
