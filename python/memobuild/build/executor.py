"""The executor: runs a build plan, reusing every step the store already holds.

Public API (``memobuild.build`` is the friendlier face on it)::

    build(context, dockerfile="Dockerfile", *, target=None, build_args=None, tags=(),
          outputs=(), build_contexts=(), secrets=(), no_cache=False, store=None, on_event=None,
          cache_from=None, cache_to=None, remote_token=None, pull="missing", platform=None,
          insecure_registries=(), push=False)
        -> BuildResult
    BuildResult  .image .digest .manifest_digest .tags .steps .plan .duration .metrics .outputs
                 .cache_stats .cached .executed .hit_rate .local_hits .remote_hits .uploads
    StepRecord   .step .stage .text .key .status ("cached" | "executed") .duration .layers
                 .reason (why it ran; None when cached) .tier ("local" | "remote" when cached)

How a build runs (DESIGN.md, "Execution"):

* **Levels.** Stages run level by level (``Plan.stage_levels``); the stages of one level run in
  parallel threads, since the heavy work (the sandboxed command, hashing, tar and gzip in Rust)
  happens outside the GIL. A stage never starts before every stage it reads from is finished.
  When one stage fails, the others are stopped: the flag every step checks is set and every
  running command is killed, and the build raises the first real failure.
* **Chains.** A stage starts as its base image's (or base stage's) layers and config. A step
  whose key the store answers only appends the entry's layers and applies its stored config
  change: nothing is unpacked. At the first step that misses *and* needs the filesystem, the
  layers so far are unpacked into a scratch rootfs; from then on a miss runs on it and a hit
  unpacks its layers on top of it. Config-only steps (ENV, CMD, ...) never need a rootfs.
* **Steps without a rootfs.** While a stage has no rootfs, a WORKDIR or a COPY/ADD from the
  build context that can be planned from the listing of the layers so far is written straight
  from its sources into its layer (build/direct.py): ``FROM base / WORKDIR /app / COPY . .``
  never writes the context's files to disk. Anything else, or anything only a rootfs could
  decide (a symlink on the way, a user name, an archive to unpack), materialises as above.
* **Storing.** A step that ran is diffed against the stat snapshot taken before it (Rust); the
  layer blob goes into the store, then the action entry (layers, config change, preimage,
  timings). So a failed step stores nothing, every earlier step stays stored, and the next
  build picks up where this one stopped. Writes are atomic, so an interrupted build (Ctrl-C,
  SIGKILL) leaves at worst an unreferenced temp file that ``cache prune`` removes.
* **Scratch.** Rootfs trees, layer tars and unpacked sources live in one scratch directory per
  build under the cache dir (build/rootfs.py), removed on every exit path, by a detached
  background process when it holds more than empty directories (the build does not wait for
  a big tree to be deleted); one left by a killed build or remover is removed by the next build.
* **ADD of a URL without --checksum.** The plan cannot know what the URL holds, so the build
  fetches it and refines the key with the content digest; every key downstream is refined
  with it (the build's plan, recorded for ``explain``, carries the refined keys).
* **Reasons.** Before anything runs, ``explain`` (plan/explain.py) compares the plan with the
  last recorded build, so that every step that runs says why (``StepStarted.reason``,
  ``StepRecord.reason``). When every step hits, as in a no-change rebuild, only the existence
  checks are paid. A step whose key a download refined is explained again, against the refined
  plan, when it misses; one the store held when the build started but could not deliver (an
  evicted entry, a corrupt blob) says so.
* **A remote cache.** With ``cache_from``/``cache_to`` (or ``$MEMOBUILD_REMOTE_URL``) the
  steps' own lookups and stores go through a HybridCache (cache/hybrid.py): local store first,
  then the remote; executed steps (and local hits the push remote lacks) upload in the
  background (with ``mode=min``, only the steps of the stages whose layers are in the image:
  the target and the stages it is built FROM). Only those call sites use it: planning,
  ``explain``, base images, sources, materialising and the image store keep the local store,
  so nothing else reaches the network or is counted twice. The build waits for its uploads
  once, after the image is made and before ``BuildFinished``, for at most
  ``DEFAULT_CLOSE_TIMEOUT`` seconds (a failed build ``FAILED_CLOSE_TIMEOUT``, an interrupted
  one ``INTERRUPTED_CLOSE_TIMEOUT``); a remote problem never fails the build. Without a
  remote, the HTTP client is never imported.
* **diff_ids.** A layer from outside (a pulled base, a remote cache's hit) is checked against
  the diff_id its image or entry claims where it is first used (oci/diff_ids.py): unpacked (the
  Rust unpacker hashes the tar it applies), or, if the build never unpacks it, before an image
  holding it is saved under a tag or exported. Layers the build writes are recorded as checked.
* **Metrics and outputs.** After the image is made, each ``outputs`` spec is exported
  (build/outputs.py; the specs are parsed before anything runs, so a bad one fails fast). Every
  build, successful or not once it has a plan, leaves a record in the store's metrics log
  (build/metrics.py) for ``memobuild stats``; a log that cannot be written costs a warning,
  never the build.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from memobuild.build.base import BaseResolver, BuildContextSpec, parse_build_context
from memobuild.build.direct import DirectLayer, LayerView, plan_direct_layer
from memobuild.build.events import (
    BuildEvent,
    BuildFailed,
    BuildFinished,
    BuildStarted,
    EventCallback,
    LayerBuilt,
    OutputWritten,
    StepCached,
    StepExecuted,
    StepOutput,
    StepStarted,
)
from memobuild.build.fetch import Fetcher
from memobuild.build.layers import (
    LayerBlob,
    list_layer,
    source_date_epoch_from_env,
    take_snapshot,
    write_diff_layer,
)
from memobuild.build.materialise import SourceTrees, materialise
from memobuild.build.metrics import (
    FAILED,
    INTERRUPTED,
    MAX_ERROR_CHARS,
    SUCCEEDED,
    BuildMetrics,
    BuildRecord,
    MetricsLog,
)
from memobuild.build.planning import plan_build
from memobuild.build.rootfs import ScratchArea, ScratchDir
from memobuild.build.sandbox import Sandbox
from memobuild.build.secrets import SecretSource, load_secrets, parse_secret_flag
from memobuild.build.state import HISTORY_COMMENT, StageChain, config_changes, created_by, rfc3339
from memobuild.build.steps import StepExit, StepResources, execute_step, needs_rootfs
from memobuild.cache.entries import ActionEntry, LayerRef
from memobuild.cache.remote_events import LOCAL, CacheStats, RemoteCacheEvent
from memobuild.cache.store import LocalStore
from memobuild.dockerfile.instructions import AddInstruction
from memobuild.dockerfile.stages import BuildStages, Stage
from memobuild.errors import BuildStepError, InputError, MemoBuildError
from memobuild.images import ImageStore
from memobuild.logging import logger
from memobuild.oci.diff_ids import record_diff_id, verify_diff_ids
from memobuild.oci.image import Image, image_digest
from memobuild.oci.platform import parse_platform
from memobuild.oci.session import RegistrySession
from memobuild.plan import Plan, PlanNode, explain, key_of, record_plan
from memobuild.plan.sources import is_remote_source

if TYPE_CHECKING:
    from memobuild.build.outputs import OutputResult, OutputSpec
    from memobuild.cache.hybrid import HybridCache
    from memobuild.cache.options import CacheOption

__all__ = ["BuildResult", "StepRecord", "build"]

CACHED = "cached"
EXECUTED = "executed"
FAILED_STEP = "failed"  # only in the metrics of a failed build: a BuildResult has none

NO_CACHE_REASON = "--no-cache"
NOT_USABLE_REASON = (
    "in the store when the build started, but not usable now (evicted, or a layer blob is "
    "missing or corrupt)"
)
NOT_STORED_REASON = "not in the local store"

# Seconds a build waits for its remote-cache uploads at the end: a successful build (uploads
# are what the next runner builds from), a failed one (its finished steps are still worth
# sharing), an interrupted one (the user wants out).
DEFAULT_CLOSE_TIMEOUT = 60.0
FAILED_CLOSE_TIMEOUT = 10.0
INTERRUPTED_CLOSE_TIMEOUT = 1.0


@dataclass(frozen=True)
class StepRecord:
    """What happened to one step: answered by the cache, or run (``status``), and for a step
    that ran, why (``reason``, in ``memobuild explain``'s words; None for a cached step)."""

    step: int
    stage: str
    text: str
    key: str
    status: str  # CACHED or EXECUTED (FAILED_STEP only in a failed build's metrics)
    duration: float  # seconds spent on it in this build
    layers: tuple[LayerRef, ...]
    reason: str | None = None
    tier: str | None = None  # which cache answered a cached step: "local" or "remote"


@dataclass(frozen=True)
class BuildResult:
    """A finished build: the image, what each step did, and the plan it ran (refined keys).

    ``digest`` is the image's manifest digest (its identity, computed whether or not it was
    saved); ``manifest_digest`` is set when the image was saved under ``tags``. ``metrics``
    are the numbers ``memobuild stats`` sums; ``outputs`` what each ``outputs`` spec wrote;
    ``cache_stats`` the remote cache's counters (None when the build had no remote cache).
    """

    image: Image
    digest: str
    manifest_digest: str | None
    tags: tuple[str, ...]
    steps: tuple[StepRecord, ...]
    plan: Plan
    duration: float
    metrics: BuildMetrics = field(default_factory=BuildMetrics)
    outputs: tuple[OutputResult, ...] = ()
    cache_stats: CacheStats | None = None

    @property
    def local_hits(self) -> int:
        return self.metrics.local_hits

    @property
    def remote_hits(self) -> int:
        return self.metrics.remote_hits

    @property
    def uploads(self) -> int:
        """Action entries this build stored on the remote cache."""
        return self.metrics.uploads

    @property
    def cached(self) -> int:
        return sum(1 for s in self.steps if s.status == CACHED)

    @property
    def executed(self) -> int:
        return sum(1 for s in self.steps if s.status == EXECUTED)

    @property
    def hit_rate(self) -> float:
        return self.cached / len(self.steps) if self.steps else 1.0

    @property
    def layer_bytes(self) -> int:
        return sum(layer.size for layer in self.image.layers)


class _Cancelled(Exception):
    """A stage stopped because another one failed (or the build was interrupted)."""


def _source_date_epoch(build_args: Mapping[str, str]) -> int | None:
    """SOURCE_DATE_EPOCH from ``--build-arg`` (BuildKit's way), else the environment."""
    value = build_args.get("SOURCE_DATE_EPOCH")
    if value is None:
        return source_date_epoch_from_env()
    try:
        epoch = int(value)
    except ValueError:
        raise InputError(
            f"--build-arg SOURCE_DATE_EPOCH={value!r}: expected a whole number of seconds"
        ) from None
    if epoch < 0:
        raise InputError(f"--build-arg SOURCE_DATE_EPOCH={value}: must not be negative")
    return epoch


def _located(err: MemoBuildError, file: str, node: PlanNode) -> MemoBuildError:
    """Say which step an error happened in, keeping its type (and so its exit status)."""
    prefix = f"{file}:{node.line}: {node.label}: "
    if not err.message.startswith(f"{file}:"):
        err.message = prefix + err.message
        err.args = (err.message,)
    return err


class _Events:
    """Serialises ``on_event`` calls from the stage threads (and the remote cache's upload
    threads, until ``end_cache_events``)."""

    def __init__(self, callback: EventCallback | None) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._cache_open = True

    def __call__(self, event: BuildEvent) -> None:
        if self._callback is None:
            return
        with self._lock:
            self._callback(event)

    def cache_event(self, event: RemoteCacheEvent) -> None:
        """An event of the hybrid cache; dropped once the build has closed it, so an upload
        given up at the end never reports after the build's last event."""
        if self._callback is None:
            return
        with self._lock:
            if self._cache_open:
                self._callback(event)

    def end_cache_events(self) -> None:
        with self._lock:
            self._cache_open = False


class _Rekeyer:
    """Keys refined once a remote ADD source has been fetched (see the module docstring).

    A refined key replaces the plan's key of that node in every later preimage that names it
    (``parent``, ``from``, ``mount ... from``), so everything downstream is keyed by content.
    """

    def __init__(self) -> None:
        self._map: dict[str, str] = {}
        self._lock = threading.Lock()
        self.nodes: dict[int, PlanNode] = {}

    def refine(self, node: PlanNode, fetched: Mapping[str, str]) -> PlanNode:
        with self._lock:
            changed = False
            preimage = []
            for name, value in node.preimage:
                if value in self._map:
                    value, changed = self._map[value], True
                elif name.startswith("source ") and value == "remote":
                    digest = fetched.get(name[len("source ") :])
                    if digest is not None:
                        value, changed = digest, True
                preimage.append((name, value))
            if not changed:
                return node
            refined = dataclasses.replace(node, preimage=tuple(preimage), key=key_of(preimage))
            self._map[node.key] = refined.key
            self.nodes[node.id] = refined
            return refined

    def snapshot(self) -> dict[int, PlanNode]:
        """The nodes refined so far, by id (a copy: other stages may be refining more)."""
        with self._lock:
            return dict(self.nodes)


@dataclass
class _StageRun:
    """One stage while it runs: its chain and, once materialised, its working rootfs."""

    stage: Stage
    label: str
    chain: StageChain
    rootfs: Path | None = None
    view: LayerView | None = None  # the chain's layers as listed, while there is no rootfs


class _Build:
    """One build of one plan (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        store: LocalStore,
        resolver: BaseResolver,
        scratch: ScratchDir,
        secrets: Mapping[str, bytes],
        *,
        no_cache: bool,
        epoch: int | None,
        emit: _Events,
        reasons: Mapping[int, str],
        cache: HybridCache | None = None,
    ) -> None:
        stages = plan.stages
        if stages is None:  # pragma: no cover - plan() always sets it
            raise ValueError("the plan has no stages")
        self.plan = plan
        self.stages: BuildStages = stages
        self.store = store
        # The steps' own lookups and stores only (see the module docstring); None: local only.
        self.cache = cache
        self.resolver = resolver
        self.scratch = scratch
        self.no_cache = no_cache
        self.epoch = epoch
        self.emit = emit
        self.file = _shown(plan.dockerfile)
        self.cancel = threading.Event()
        self.records: list[StepRecord] = []
        self.reasons = reasons  # why each step the store could not answer would run, by id
        self.stored_bytes = 0  # layer bytes this build added to the store
        self.saved_time = 0.0  # what the cached steps took when they ran
        self._refined_reasons: tuple[int, dict[int, str]] = (0, {})
        self._running_reasons: dict[int, str] = {}
        self.chains: dict[int, StageChain] = {}
        self.rekey = _Rekeyer()
        self._lock = threading.Lock()
        self._sandbox: Sandbox | None = None
        self._key_locks: dict[str, threading.Lock] = {}
        self._fresh: set[str] = set()  # keys this build stored
        self._listings: dict[str, list[tuple[bytes, str]]] = {}  # layer digest -> its entries
        self.fetcher = Fetcher(scratch.new_dir("downloads"))
        self.trees = SourceTrees(store, scratch, resolver, lambda i: self.chains[i].layers)
        self.labels = {node.stage: node.stage_name for node in plan.nodes}
        # The stages whose layers make up the image: the target and the stages it is built
        # FROM, transitively (what a remote cache's mode=min exports).
        self.image_stages: set[int] = set()
        index: int | None = stages.target
        while index is not None:
            self.image_stages.add(index)
            index = stages.stages[index].base_stage
        # Stages some other stage reads from (COPY --from, RUN --mount from=): their final
        # filesystem is kept (or unpacked on demand) until the build ends.
        self.read_from: set[int] = {
            source.stage
            for node in plan.nodes
            if node.step is not None
            for source in node.step.sources
            if source.kind == "stage" and source.stage is not None
        }
        self.resources = StepResources(
            context=plan.context,
            context_index=plan.context_index,
            dockerignore=plan.dockerignore,
            proxy_env=stages.proxy_env,
            secrets=secrets,
            trees=self.trees,
            sandbox=self.sandbox,
            fetcher=self.fetcher,
            scratch=scratch,
            file=self.file,
        )

    # -- shared resources ------------------------------------------------------------------

    def sandbox(self) -> Sandbox:
        """The build's sandbox, made (and its kind detected) when the first RUN runs."""
        with self._lock:
            if self._sandbox is None:
                sandbox = Sandbox(cache_root=self.store.root)
                _ = sandbox.kind  # detect now: a missing sandbox fails before the step starts
                self._sandbox = sandbox
            return self._sandbox

    def _record(self, record: StepRecord) -> None:
        with self._lock:
            self.records.append(record)

    # -- the action cache: the local store, or the hybrid cache in front of a remote ---------

    def _lookup(self, node: PlanNode) -> tuple[ActionEntry | None, str]:
        """A step's entry (None: a miss) and the tier that answered."""
        if self.cache is None:
            return self.store.get_action(node.key), LOCAL
        entry, tier = self.cache.lookup(node.key, in_image=node.stage in self.image_stages)
        return entry, tier or LOCAL

    def _probe(self, node: PlanNode) -> str | None:
        """The tier that holds ``node``'s key (None: a miss), for FROM, which needs no entry."""
        if self.cache is None:
            return LOCAL if self.store.has_action(node.key) else None
        return self.cache.probe(node.key, in_image=node.stage in self.image_stages)

    def _put_action(self, node: PlanNode, entry: ActionEntry) -> None:
        if self.cache is None:
            self.store.put_action(entry)
        else:
            self.cache.put_action(entry, in_image=node.stage in self.image_stages)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise _Cancelled

    def _failed(self, node: PlanNode, label: str, started: float) -> None:
        """Record that ``node`` failed (for the metrics of the failed build), unless it was only
        stopped because another stage failed."""
        if self.cancel.is_set():
            return
        with self._lock:
            reason = self._running_reasons.get(node.id)
        duration = time.monotonic() - started
        self._record(
            StepRecord(node.number, label, node.text, node.key, FAILED_STEP, duration, (), reason)
        )

    # -- why a step runs ---------------------------------------------------------------------

    def miss_reason(self, node: PlanNode) -> str:
        """Why ``node`` runs: ``explain``'s reason from before the build (see the module
        docstring), or for a key a download refined, the reason against the refined plan."""
        if self.no_cache:
            return NO_CACHE_REASON
        refined = self.rekey.snapshot()
        if node.id in refined:
            return self._refined_reason(node, refined)
        return self.reasons.get(node.id, NOT_USABLE_REASON)

    def _refined_reason(self, node: PlanNode, refined: dict[int, PlanNode]) -> str:
        with self._lock:
            version, reasons = self._refined_reasons
        if version != len(refined) or node.id not in reasons:
            nodes = tuple(refined.get(n.id, n) for n in self.plan.nodes)
            reasons = _miss_reasons(self.store, dataclasses.replace(self.plan, nodes=nodes))
            with self._lock:
                self._refined_reasons = (len(refined), reasons)
        return reasons.get(node.id, NOT_USABLE_REASON)

    def abort(self) -> None:
        """Stop every stage: no new step starts, running commands are killed."""
        self.cancel.set()
        with self._lock:
            sandbox = self._sandbox
        if sandbox is not None:
            sandbox.kill_all()

    # -- the build ---------------------------------------------------------------------------

    def run(self) -> Image:
        try:
            for level in self.plan.stage_levels:
                self._run_level(level)
        finally:
            self.fetcher.close()
        created = None if self.epoch is None else rfc3339(self.epoch)
        return self.chains[self.stages.target].image(created)

    def _run_level(self, level: Sequence[int]) -> None:
        if len(level) == 1:
            self._run_stage(level[0])
            return
        with ThreadPoolExecutor(len(level), thread_name_prefix="memobuild-stage") as pool:
            futures = [pool.submit(self._run_stage, index) for index in level]
            try:
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    self._stop(pending)
            except BaseException:  # Ctrl-C while waiting: stop the stages, then go
                self._stop(futures)
                raise
        errors = [e for e in (f.exception() for f in futures) if e is not None]
        # The first real failure, in stage order; _Cancelled only if every stage was stopped.
        if errors:
            raise min(errors, key=lambda e: isinstance(e, _Cancelled))

    def _stop(self, futures: Iterable[Future[None]]) -> None:
        """Abort, and keep killing commands until every stage has noticed (a stage that was
        just starting a command when the first kill went out gets the next one)."""
        pending = set(futures)
        while pending:
            self.abort()
            _, pending = wait(pending, timeout=0.2)

    def _nodes_of(self, stage: int) -> list[PlanNode]:
        return sorted((n for n in self.plan.nodes if n.stage == stage), key=lambda n: n.position)

    def _run_stage(self, index: int) -> None:
        stage = self.stages.stages[index]
        nodes = self._nodes_of(index)
        label = self.labels[index]
        started = time.monotonic()
        try:
            run = _StageRun(stage, label, self._initial_chain(stage))  # FROM's base image
        except Exception:
            self._failed(nodes[0], label, started)
            raise
        try:
            for node in nodes:
                self._check_cancel()
                started = time.monotonic()
                try:
                    if node is nodes[0]:
                        with self._key_lock(node.key):  # as _step: same base, one FROM runs
                            self._from_step(self.rekey.refine(node, {}), run)
                    else:
                        self._step(self.rekey.refine(node, self._fetch_remote(node)), run)
                except Exception:
                    self._failed(node, label, started)
                    raise
            self.chains[index] = run.chain
            if index in self.read_from and run.rootfs is not None:
                self.trees.adopt_stage(index, run.rootfs)
                run.rootfs = None
        finally:
            if run.rootfs is not None:
                self.scratch.discard(run.rootfs)

    def _initial_chain(self, stage: Stage) -> StageChain:
        if stage.base_stage is not None:
            return self.chains[stage.base_stage].fork()
        platform = stage.platform
        if stage.is_scratch:
            return StageChain.scratch(platform.os, platform.architecture, platform.variant or None)
        return StageChain.from_image(self.resolver.resolve(stage.base, platform))

    def _from_step(self, node: PlanNode, run: _StageRun) -> None:
        """FROM runs nothing; its entry marks the base as seen, so plan/explain report it."""
        started = time.monotonic()
        reason = None
        tier = None if self.no_cache else self._probe(node)
        if tier is not None:
            status = CACHED
            self.emit(
                StepCached(node.number, run.label, node.text, node.key, len(run.chain.layers), tier)
            )
        else:
            status = EXECUTED
            reason = self.miss_reason(node)
            with self._lock:
                self._running_reasons[node.id] = reason
            self.emit(StepStarted(node.number, run.label, node.text, node.key, reason))
            self._put_action(
                node,
                ActionEntry(
                    key=node.key,
                    layers=(),
                    config={"from": run.stage.base},
                    preimage=node.preimage,
                    created=time.time(),
                ),
            )
        duration = time.monotonic() - started
        if status == EXECUTED:
            self.emit(StepExecuted(node.number, run.label, node.text, node.key, duration, 0))
        self._record(
            StepRecord(
                node.number, run.label, node.text, node.key, status, duration, (), reason, tier
            )
        )

    def _fetch_remote(self, node: PlanNode) -> dict[str, str]:
        """Download the remote ADD sources the plan could not key; source -> content digest."""
        if not node.unresolved or node.step is None:
            return {}
        instruction = node.step.instruction
        if not isinstance(instruction, AddInstruction):
            return {}
        fetched = {}
        for source in instruction.sources:
            if is_remote_source(source) and source in node.unresolved:
                try:
                    fetched[source] = self.fetcher.fetch(source).digest
                except MemoBuildError as err:
                    raise _located(err, self.file, node) from None
        return fetched

    def _history_time(self, created: float) -> str:
        return rfc3339(self.epoch if self.epoch is not None else created)

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _step(self, node: PlanNode, run: _StageRun) -> None:
        """Hit or run one step. Two stages that reach the same key at once (a common prefix
        of steps) do the work once: the second waits for the first, then hits."""
        with self._key_lock(node.key):
            self._hit_or_run(node, run)

    def _hit_or_run(self, node: PlanNode, run: _StageRun) -> None:
        started = time.monotonic()
        use_cache = not self.no_cache or node.key in self._fresh  # --no-cache: this build's own
        entry, tier = self._lookup(node) if use_cache else (None, LOCAL)
        reason: str | None = None
        if entry is not None:
            try:
                run.chain.apply(
                    node.key, entry.layers, entry.config, self._history_time(entry.created)
                )
            except (ValueError, TypeError, KeyError) as err:
                logger.warning(f"{node.label}: cached result is not usable ({err}); running it")
                reason = f"the cached result is not usable ({err})"
                entry = None
        if entry is not None:
            if run.rootfs is not None:  # already materialised: bring the tree up to date
                materialise(self.store, entry.layers, run.rootfs)
            duration = time.monotonic() - started
            with self._lock:
                self.saved_time += entry.duration
            self.emit(
                StepCached(node.number, run.label, node.text, node.key, len(entry.layers), tier)
            )
            self._record(
                StepRecord(
                    node.number,
                    run.label,
                    node.text,
                    node.key,
                    CACHED,
                    duration,
                    entry.layers,
                    tier=tier,
                )
            )
            return
        self._execute(node, run, started, reason or self.miss_reason(node))

    def _execute(self, node: PlanNode, run: _StageRun, started: float, reason: str) -> None:
        step = node.step
        if step is None:  # pragma: no cover - FROM nodes go to _from_step
            raise ValueError("FROM has nothing to execute")
        with self._lock:
            self._running_reasons[node.id] = reason
        self.emit(StepStarted(node.number, run.label, node.text, node.key, reason))
        changes = {
            "config": config_changes(step, cmd_set=run.chain.cmd_set),
            "history": {"created_by": created_by(step, node.text), "comment": HISTORY_COMMENT},
        }
        layers: tuple[LayerRef, ...] = ()
        if needs_rootfs(step):
            direct = self._plan_direct(node, run) if run.rootfs is None else None
            if direct is not None:
                layers = self._direct_step(node, run, direct)
            else:
                if run.rootfs is None:
                    run.rootfs = materialise(
                        self.store, run.chain.layers, self.scratch.new_dir(f"{run.label}-rootfs")
                    )
                    run.view = None
                layers = self._filesystem_step(node, run, run.rootfs)
        self._check_cancel()
        duration = time.monotonic() - started
        now = time.time()
        entry = ActionEntry(
            key=node.key,
            layers=layers,
            config=changes,
            preimage=node.preimage,
            created=now,
            duration=duration,
        )
        self._put_action(node, entry)
        with self._lock:
            self._fresh.add(node.key)
        run.chain.apply(node.key, layers, changes, self._history_time(now))
        self.emit(StepExecuted(node.number, run.label, node.text, node.key, duration, len(layers)))
        self._record(
            StepRecord(
                node.number, run.label, node.text, node.key, EXECUTED, duration, layers, reason
            )
        )

    def _filesystem_step(
        self, node: PlanNode, run: _StageRun, rootfs: Path
    ) -> tuple[LayerRef, ...]:
        """Run the step on the rootfs and store its diff as a layer (none if nothing changed)."""
        step = node.step
        assert step is not None  # noqa: S101 - checked by the caller
        before = take_snapshot(rootfs)

        def output(line: str) -> None:
            self._check_cancel()  # raising here makes the sandbox kill the step
            self.emit(StepOutput(node.number, run.label, line))

        try:
            mounted = execute_step(
                step,
                rootfs,
                run.stage.platform,
                self.resources,
                stage_label=lambda i: self.labels[i],
                output=output,
            )
        except StepExit as failure:
            self._check_cancel()  # killed because another stage failed: not this step's fault
            raise BuildStepError(
                node.label, failure.exit_code, file=self.file, line=node.line, output=failure.tail
            ) from None
        except MemoBuildError as err:
            self._check_cancel()
            raise _located(err, self.file, node) from None
        self._check_cancel()
        sandbox = self._sandbox
        exclude = (*(sandbox.mount_points() if sandbox is not None else ()), *mounted)
        out = self.scratch.new_file(f"layer-{node.number}.tar.gz")
        try:
            blob = write_diff_layer(
                rootfs, before, out, source_date_epoch=self.epoch, exclude=exclude
            )
            return self._store_layer(node, run, blob)
        finally:
            out.unlink(missing_ok=True)

    # -- steps without a rootfs (build/direct.py) -------------------------------------------

    def _plan_direct(self, node: PlanNode, run: _StageRun) -> DirectLayer | None:
        """The step's layer planned from the stage's layer listings, or None when it needs
        the rootfs."""
        step = node.step
        assert step is not None  # noqa: S101 - checked by the caller
        try:
            return plan_direct_layer(
                step,
                lambda: self._view(run),
                context=self.plan.context,
                context_index=self.plan.context_index,
                dockerignore=self.plan.dockerignore,
                now_ns=time.time_ns(),
                file=self.file,
            )
        except MemoBuildError as err:
            raise _located(err, self.file, node) from None

    def _view(self, run: _StageRun) -> LayerView:
        """The stage's layers as listed (each layer read once per build)."""
        if run.view is None:
            run.view = LayerView()
        for layer in run.chain.layers[run.view.layers :]:
            with self._lock:
                listing = self._listings.get(layer.digest)
            if listing is None:
                listing = list_layer(self.store.blob_path(layer.digest))
                with self._lock:
                    self._listings[layer.digest] = listing
            run.view.apply(listing)
        return run.view

    def _direct_step(
        self, node: PlanNode, run: _StageRun, direct: DirectLayer
    ) -> tuple[LayerRef, ...]:
        if not direct.entries:
            return ()
        out = self.scratch.new_file(f"layer-{node.number}.tar.gz")
        try:
            try:
                blob = direct.write(out, source_date_epoch=self.epoch)
            except MemoBuildError as err:
                raise _located(err, self.file, node) from None
            with self._lock:
                self._listings[blob.digest] = direct.listing()
            return self._store_layer(node, run, blob)
        finally:
            out.unlink(missing_ok=True)

    def _store_layer(self, node: PlanNode, run: _StageRun, blob: LayerBlob) -> tuple[LayerRef, ...]:
        """Put a step's layer blob into the store (none if it has no entries)."""
        if blob.entries == 0:
            return ()
        fresh = not self.store.has_blob(blob.digest)  # bytes_written counts new blobs only
        (self.cache or self.store).put_blob_file(blob.path, blob.digest)
        # Rust hashed the tar as it wrote it: this blob's diff_id needs no check at its use.
        record_diff_id(self.store, blob.digest, blob.diff_id)
        if fresh:
            with self._lock:
                self.stored_bytes += blob.size
        self.emit(
            LayerBuilt(node.number, run.label, blob.digest, blob.diff_id, blob.size, blob.entries)
        )
        return (LayerRef(blob.digest, blob.diff_id, blob.size),)

    def refined_plan(self) -> Plan:
        """The plan with the keys this build refined (what record_plan should keep)."""
        refined = self.rekey.snapshot()
        if not refined:
            return self.plan
        nodes = tuple(refined.get(node.id, node) for node in self.plan.nodes)
        return dataclasses.replace(self.plan, nodes=nodes)


def _shown(path: Path) -> str:
    """How messages name the Dockerfile: relative to the current directory when below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _miss_reasons(store: LocalStore, plan: Plan) -> dict[int, str]:
    """Why each node the store cannot answer would run, by node id (``explain``). When every
    node hits, as in a no-change rebuild, only the existence checks are paid."""
    missing = [node for node in plan.nodes if not store.has_action(node.key)]
    if not missing:
        return {}
    try:
        report = explain(store, plan)
    except (MemoBuildError, OSError) as err:  # explaining must never stop a build
        logger.warning(f"cannot explain the cache misses: {err}")
        return {node.id: NOT_STORED_REASON for node in missing}
    if not report.recorded:  # explain's hint (plan --record) is for explain, not a build
        first = f"no recorded build of {plan.record_name} to compare with"
        return {miss.node.id: first for miss in report.misses}
    return {miss.node.id: miss.reason for miss in report.misses}


def _parse_outputs(
    outputs: Sequence[str | OutputSpec], tags: Sequence[str], push: bool
) -> tuple[OutputSpec, ...]:
    """The output specs, and with ``push`` one image output per tag to push, parsed and
    checked before anything runs (InputError names a bad one)."""
    if not outputs and not push:
        return ()
    if isinstance(outputs, str):
        raise InputError(f"outputs must be a sequence of specs, not the string {outputs!r}")
    from memobuild.build.outputs import (  # only builds that export
        OutputSpec,
        check_outputs,
        parse_output,
        push_outputs,
    )

    specs = tuple(o if isinstance(o, OutputSpec) else parse_output(o) for o in outputs)
    specs += push_outputs(tags) if push else ()
    check_outputs(specs, tags)
    return specs


class _Progress:
    """How far a build got: what the metrics of a failed build are made of. (A plain class:
    a dataclass costs every build a fraction of a millisecond to create at import.)"""

    __slots__ = ("cache", "output_bytes", "plan", "runner", "started", "started_at")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.started_at = time.time()
        self.plan: Plan | None = None
        self.runner: _Build | None = None
        self.cache: HybridCache | None = None
        self.output_bytes = 0

    def close_cache(self, timeout: float) -> CacheStats | None:
        """Wait (at most ``timeout`` seconds) for the remote cache's uploads, close it, and
        return its counters; None without a remote cache. Never raises for the remote."""
        cache = self.cache
        if cache is None:
            return None
        cache.close(timeout)
        return cache.stats

    def metrics(
        self, records: Sequence[StepRecord] | None = None, stats: CacheStats | None = None
    ) -> BuildMetrics:
        runner = self.runner
        if records is None:
            records = list(runner.records) if runner is not None else []
        cached = [r for r in records if r.status == CACHED]
        remote_hits = sum(1 for r in cached if r.tier is not None and r.tier != LOCAL)
        if stats is None:
            stats = CacheStats()
        return BuildMetrics(
            total=len(self.plan.nodes) if self.plan is not None else 0,
            cached=len(cached),
            executed=sum(1 for r in records if r.status == EXECUTED),
            failed=sum(1 for r in records if r.status == FAILED_STEP),
            duration=time.monotonic() - self.started,
            step_time=sum(r.duration for r in records),
            bytes_written=(runner.stored_bytes if runner is not None else 0) + self.output_bytes,
            saved_time=runner.saved_time if runner is not None else 0.0,
            local_hits=len(cached) - remote_hits,
            remote_hits=remote_hits,
            uploads=stats.uploads,
            upload_failures=stats.upload_failures,
            integrity_failures=stats.verification_failures,
            bytes_downloaded=stats.bytes_downloaded,
            bytes_uploaded=stats.bytes_uploaded,
        )

    def record(
        self, status: str, metrics: BuildMetrics, image: str | None = None, error: str | None = None
    ) -> BuildRecord | None:
        """The metrics log's record of this build; None before it had a plan (a usage or
        Dockerfile error is not a build)."""
        plan = self.plan
        if plan is None:
            return None
        return BuildRecord(
            time=self.started_at,
            status=status,
            target=plan.target,
            dockerfile=os.path.abspath(plan.dockerfile),
            context=os.path.abspath(plan.context),
            metrics=metrics,
            image=image,
            error=error,
        )


def _log_build(store: LocalStore, record: BuildRecord | None) -> None:
    """Append ``record`` to the store's metrics log; a log that cannot be written is a warning."""
    if record is None:
        return
    try:
        MetricsLog(store).append(record)
    except (MemoBuildError, OSError) as err:
        logger.warning(f"the build was not logged for memobuild stats: {err}")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else type(err).__name__
    return first if len(first) <= MAX_ERROR_CHARS else first[: MAX_ERROR_CHARS - 3] + "..."


def build(
    context: str | os.PathLike[str],
    dockerfile: str | os.PathLike[str] = "Dockerfile",
    *,
    target: str | None = None,
    build_args: Mapping[str, str] | None = None,
    tags: Sequence[str] = (),
    outputs: Sequence[str | OutputSpec] = (),
    build_contexts: Sequence[str | BuildContextSpec] = (),
    secrets: Sequence[str | SecretSource] = (),
    no_cache: bool = False,
    store: LocalStore | None = None,
    on_event: EventCallback | None = None,
    cache_from: str | CacheOption | None = None,
    cache_to: str | CacheOption | None = None,
    remote_token: str | None = None,
    pull: str = "missing",
    platform: str | None = None,
    insecure_registries: Sequence[str] = (),
    push: bool = False,
) -> BuildResult:
    """Build ``target`` (default: the last stage) of ``dockerfile`` in ``context``.

    A relative ``dockerfile`` is inside the context. ``build_contexts`` and ``secrets`` take the
    CLI's spellings (``NAME=oci-layout://PATH[:TAG]``, ``id=ID,src=FILE``) or parsed values, and
    ``outputs`` BuildKit's ``--output`` spellings (``type=oci,dest=out.tar``) or OutputSpecs.
    ``tags`` save the image in the local image store under those names. ``no_cache`` runs every
    step (and stores the results). ``store`` defaults to the store at ``$MEMOBUILD_CACHE_DIR``;
    ``on_event`` receives the build's events (build/events.py), one call at a time.

    ``cache_from`` pulls from a remote cache and ``cache_to`` pushes to one (``--cache-from``/
    ``--cache-to`` spellings: ``type=memobuild,url=URL`` or a bare ``http(s)://`` URL for a
    memobuild server, ``type=registry,ref=REF[,mode=max|min]`` for a registry, or a parsed
    CacheOption); with neither, ``$MEMOBUILD_REMOTE_URL`` (if set) does both.
    ``remote_token`` (a memobuild server's) defaults to ``$MEMOBUILD_REMOTE_TOKEN``; a registry
    cache uses the registry credentials and ``insecure_registries``. A remote cache never fails
    the build: it degrades to the local store with one warning.

    Base images the local store lacks are pulled from their registries: ``pull`` is docker's
    ``--pull`` (``missing``, ``always``, ``never``; build/base.py), ``platform`` the target
    platform (``os/arch[/variant]``, default this host's: what FROM pulls, and TARGETPLATFORM),
    ``insecure_registries`` the ``host[:port]`` registries that may be spoken to over plain
    HTTP or unverified TLS. ``push`` pushes the image to every ``tags`` name (an
    ``type=image,push=true`` output each; the pushed digests are in ``BuildResult.outputs``).
    The registry client is made only if a registry is needed, and closed when the build ends.

    Raises BuildStepError when a step fails, and the MemoBuildError of anything else that
    stops the build (a Dockerfile error, a bad output spec, a missing image or secret, the
    store). Every build that got as far as a plan is logged for ``memobuild stats``.
    """
    progress = _Progress()
    emit = _Events(on_event)
    own_store = store is None
    active = store if store is not None else LocalStore()
    registry: RegistrySession | None = None
    try:
        try:
            registry = RegistrySession(insecure_registries)  # no client until one is needed
            progress.cache = _open_cache(active, cache_from, cache_to, remote_token, emit, registry)
            result = _build(
                context,
                dockerfile,
                target=target,
                build_args=dict(build_args or {}),
                tags=tuple(tags),
                outputs=outputs,
                build_contexts=build_contexts,
                secrets=secrets,
                no_cache=no_cache,
                store=active,
                emit=emit,
                progress=progress,
                pull=pull,
                platform=platform,
                push=push,
                registry=registry,
            )
        except BaseException as err:
            interrupted = isinstance(err, KeyboardInterrupt)
            stats = progress.close_cache(
                INTERRUPTED_CLOSE_TIMEOUT if interrupted else FAILED_CLOSE_TIMEOUT
            )
            emit.end_cache_events()
            if isinstance(err, BuildStepError):
                emit(BuildFailed(str(err), _step_number(err.step), err.exit_code))
            elif isinstance(err, MemoBuildError) or interrupted:
                emit(BuildFailed("interrupted" if interrupted else str(err)))
            status = INTERRUPTED if interrupted else FAILED
            message = "interrupted" if interrupted else _one_line(err)
            metrics = progress.metrics(stats=stats)
            _log_build(active, progress.record(status, metrics, error=message))
            raise
        _log_build(active, progress.record(SUCCEEDED, result.metrics, image=result.digest))
    finally:
        if registry is not None:
            registry.close()
        if own_store:
            active.close()
    return result


def _open_cache(
    store: LocalStore,
    cache_from: str | CacheOption | None,
    cache_to: str | CacheOption | None,
    token: str | None,
    emit: _Events,
    registry: RegistrySession,
) -> HybridCache | None:
    """The hybrid cache for the build's remote options, or None (the local store alone). Only
    a build with a remote imports what one needs (the HTTP client). A registry cache shares
    the build's registry client (``--insecure-registry``, CA bundle, credentials)."""
    from memobuild.cache.options import open_build_cache, remote_configured

    if not remote_configured(cache_from, cache_to):
        return None
    return open_build_cache(
        store,
        cache_from,
        cache_to,
        token=token,
        on_event=emit.cache_event,
        registry=registry,
    )


def _step_number(label: str) -> int:
    parts = label.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _build(
    context: str | os.PathLike[str],
    dockerfile: str | os.PathLike[str],
    *,
    target: str | None,
    build_args: dict[str, str],
    tags: tuple[str, ...],
    outputs: Sequence[str | OutputSpec],
    build_contexts: Sequence[str | BuildContextSpec],
    secrets: Sequence[str | SecretSource],
    no_cache: bool,
    store: LocalStore,
    emit: _Events,
    progress: _Progress,
    pull: str,
    platform: str | None,
    push: bool,
    registry: RegistrySession,
) -> BuildResult:
    specs = _parse_outputs(outputs, tags, push)  # a bad --output fails before anything runs
    target_platform = str(parse_platform(platform)) if platform is not None else None
    contexts = [
        c if isinstance(c, BuildContextSpec) else parse_build_context(c) for c in build_contexts
    ]
    sources = [s if isinstance(s, SecretSource) else parse_secret_flag(s) for s in secrets]
    epoch = _source_date_epoch(build_args)
    secret_values = load_secrets(sources)  # a missing secret fails before anything runs
    resolver = BaseResolver(store, contexts, pull_policy=pull, registry=registry)
    plan = plan_build(
        context,
        dockerfile,
        resolver,
        target=target,
        build_args=build_args,
        platform=target_platform,
    )
    progress.plan = plan
    for warning in plan.warnings:
        logger.warning(warning)
    emit(
        BuildStarted(
            context=str(plan.context),
            dockerfile=str(plan.dockerfile),
            target=plan.target,
            steps=len(plan.nodes),
            stages=len({node.stage for node in plan.nodes}),
            levels=len(plan.stage_levels),
        )
    )
    reasons = {} if no_cache else _miss_reasons(store, plan)  # before anything is stored
    area = ScratchArea(store.root)
    area.sweep()
    with area.create() as scratch:
        runner = _Build(
            plan,
            store,
            resolver,
            scratch,
            secret_values,
            no_cache=no_cache,
            epoch=epoch,
            emit=emit,
            reasons=reasons,
            cache=progress.cache,
        )
        progress.runner = runner
        try:
            image = runner.run()
        except BaseException:
            runner.abort()
            raise
        finally:
            runner.trees.release()
        final_plan = runner.refined_plan()
        record_plan(store, final_plan)
        if tags or specs:  # the image leaves the build: no layer in it may lie about its diff_id
            verify_diff_ids(store, image.layers, f"the image of {plan.target}")
        manifest_digest = ImageStore(store).save(image, list(tags)) if tags else None
        digest = manifest_digest or image_digest(image)
        written = _export(specs, image, store, tags, scratch, emit, progress, registry)
    # The image is made: now wait (bounded) for the uploads, and stop the cache's events.
    stats = progress.close_cache(DEFAULT_CLOSE_TIMEOUT)
    emit.end_cache_events()
    records = tuple(sorted(runner.records, key=lambda r: r.step))
    metrics = progress.metrics(records, stats)
    result = BuildResult(
        image=image,
        digest=digest,
        manifest_digest=manifest_digest,
        tags=tags,
        steps=records,
        plan=final_plan,
        duration=metrics.duration,
        metrics=metrics,
        outputs=written,
        cache_stats=stats,
    )
    emit(
        BuildFinished(
            target=plan.target,
            image_digest=digest,
            manifest_digest=manifest_digest,
            tags=tags,
            steps=len(records),
            cached=result.cached,
            executed=result.executed,
            duration=result.duration,
            bytes_written=metrics.bytes_written,
            hit_rate=metrics.cache_hit_rate(),
            local_hits=metrics.local_hits,
            remote_hits=metrics.remote_hits,
            remote_cache=stats is not None,
            uploads=metrics.uploads,
            upload_failures=metrics.upload_failures,
            integrity_failures=metrics.integrity_failures,
            bytes_downloaded=metrics.bytes_downloaded,
            bytes_uploaded=metrics.bytes_uploaded,
        )
    )
    return result


def _export(
    specs: Sequence[OutputSpec],
    image: Image,
    store: LocalStore,
    tags: tuple[str, ...],
    scratch: ScratchDir,
    emit: _Events,
    progress: _Progress,
    registry: RegistrySession,
) -> tuple[OutputResult, ...]:
    """Write the image as each spec asks, in order; one OutputWritten event each."""
    if not specs:
        return ()
    from memobuild.build.outputs import export_output

    work = scratch.new_dir("outputs")
    written = []
    for spec in specs:
        out = export_output(spec, image, store, tags=tags, scratch=work, registry=registry)
        progress.output_bytes += out.bytes
        emit(OutputWritten(out.type, out.dest, out.digest, out.bytes))
        written.append(out)
    return tuple(written)
