"""MemoBuild: a daemonless, incremental container image builder that never does the same work twice.

The Python API and the ``memobuild`` CLI are two faces on the same calls::

    import memobuild

    result = memobuild.build("ctx", tag="app:1", outputs=["type=oci,dest=app-oci.tar"])
    print(result.digest, result.metrics.cache_hit_rate(), [s.reason for s in result.steps])

:func:`build` and the types it deals in (``BuildResult``, ``StepRecord``, ``BuildMetrics``,
``OutputSpec``, ``OutputResult`` and the build events) load their modules on first use, so that
``import memobuild``, and with it every CLI call, stays cheap.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

# The build subpackage (its __init__ is empty) is loaded here, before the function ``build``
# below is defined: importing a subpackage sets it as an attribute of its parent, but only the
# first time, so from here on ``memobuild.build`` stays the function, as ``memobuild.plan`` does.
# Import the subpackage's modules by their full names (``from memobuild.build.events import
# StepStarted``), which always works.
import memobuild.build as _build_package  # noqa: F401

# The version is Cargo.toml's, compiled into the extension (pyproject takes it from there too);
# reading it there avoids importlib.metadata, which costs every CLI call ~15 ms.
from memobuild._core import __version__
from memobuild.errors import MemoBuildError
from memobuild.hashing import TreeDigest, TreeEntry, hash_tree
from memobuild.plan import Plan, PlanNode, plan

if TYPE_CHECKING:
    from memobuild.build.base import BuildContextSpec
    from memobuild.build.events import (
        BuildEvent,
        BuildFailed,
        BuildFinished,
        BuildStarted,
        CacheHit,
        CacheMiss,
        EventCallback,
        LayerBuilt,
        OutputWritten,
        RemoteDisabled,
        RemoteIntegrityFailure,
        RemoteSync,
        StepCached,
        StepExecuted,
        StepOutput,
        StepStarted,
    )
    from memobuild.build.executor import BuildResult, StepRecord
    from memobuild.build.metrics import BuildMetrics
    from memobuild.build.outputs import OutputResult, OutputSpec
    from memobuild.build.secrets import SecretSource
    from memobuild.cache.options import CacheOption

__all__ = [
    "BuildEvent",
    "BuildFailed",
    "BuildFinished",
    "BuildMetrics",
    "BuildResult",
    "BuildStarted",
    "CacheHit",
    "CacheMiss",
    "EventCallback",
    "LayerBuilt",
    "MemoBuildError",
    "OutputResult",
    "OutputSpec",
    "OutputWritten",
    "Plan",
    "PlanNode",
    "RemoteDisabled",
    "RemoteIntegrityFailure",
    "RemoteSync",
    "StepCached",
    "StepExecuted",
    "StepOutput",
    "StepRecord",
    "StepStarted",
    "TreeDigest",
    "TreeEntry",
    "__version__",
    "build",
    "hash_tree",
    "plan",
]

# Names loaded on first use: name -> the module that defines it.
_EVENTS = "memobuild.build.events"
_LAZY = {
    "BuildResult": "memobuild.build.executor",
    "StepRecord": "memobuild.build.executor",
    "BuildMetrics": "memobuild.build.metrics",
    "OutputResult": "memobuild.build.outputs",
    "OutputSpec": "memobuild.build.outputs",
    **dict.fromkeys(
        (
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
        ),
        _EVENTS,
    ),
}


if not TYPE_CHECKING:  # type checkers see the imports above, and so catch a misspelt name

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'memobuild' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _many(value: Any) -> tuple[Any, ...]:
    """One value or a sequence of them, as a tuple (a str is one value)."""
    if value is None:
        return ()
    if isinstance(value, (str, os.PathLike)) or not isinstance(value, Sequence):
        return (value,)
    return tuple(value)


def build(
    context: str | os.PathLike[str],
    dockerfile: str | os.PathLike[str] = "Dockerfile",
    *,
    tag: str | Sequence[str] | None = None,
    target: str | None = None,
    build_args: Mapping[str, str] | None = None,
    outputs: str | OutputSpec | Sequence[str | OutputSpec] = (),
    no_cache: bool = False,
    build_contexts: str | BuildContextSpec | Sequence[str | BuildContextSpec] = (),
    secrets: str | SecretSource | Sequence[str | SecretSource] = (),
    on_event: EventCallback | None = None,
    cache_from: str | CacheOption | None = None,
    cache_to: str | CacheOption | None = None,
    remote_token: str | None = None,
    pull: str = "missing",
    platform: str | None = None,
    insecure_registries: str | Sequence[str] = (),
    push: bool = False,
) -> BuildResult:
    """Build an image, as ``memobuild build`` does, and return what happened.

    ``context`` is the build context directory; a relative ``dockerfile`` is inside it.
    ``tag`` (one name or several, ``name[:tag]``) saves the image in the local image store, like
    ``-t``. ``target`` picks the stage (default: the last), ``build_args`` the ``--build-arg``
    values. ``outputs`` take ``--output``'s syntax (``"type=oci,dest=app.tar"``,
    ``"type=docker,dest=img.tar"``, ``"type=local,dest=rootfs"``, ``"type=tar,dest=fs.tar"``, a
    bare directory) or :class:`OutputSpec` values; ``build_contexts`` and ``secrets`` the CLI's
    ``NAME=oci-layout://PATH[:TAG]`` and ``id=ID,src=FILE|env=VAR``. Each of these takes one
    value or a sequence. ``no_cache`` runs every step. ``on_event`` receives every build event
    (``StepStarted``, ``StepCached``, ...), one call at a time, from the build's threads.

    ``cache_from`` and ``cache_to`` name a shared remote cache to pull from and push to, as
    ``--cache-from``/``--cache-to`` do (``"http://cache:8080"`` or
    ``"type=memobuild,url=http://cache:8080"``); with neither, ``$MEMOBUILD_REMOTE_URL`` is
    used if set. ``remote_token`` defaults to ``$MEMOBUILD_REMOTE_TOKEN``. A remote cache that
    fails never fails the build; ``result.remote_hits``, ``.local_hits`` and ``.uploads`` say
    what it did.

    Base images the local store lacks are pulled from their registries. ``pull`` is
    ``--pull``: ``"missing"`` (the default), ``"always"`` (ask the registry for the tag's
    current image) or ``"never"``; ``platform`` is ``--platform`` (``"linux/arm64"``; default
    this host's); ``insecure_registries`` (``"localhost:5000"``, one or several) may be spoken
    to over plain HTTP or unverified TLS. ``push=True`` pushes the image to each ``tag``, as
    ``--push`` does (``outputs=["type=image,name=REF,push=true"]`` pushes to REF); each pushed
    output's ``.digest`` and ``.pushed`` references are in ``result.outputs``.

    The cache is ``$MEMOBUILD_CACHE_DIR`` (default ``~/.cache/memobuild``). Returns a
    :class:`BuildResult`: ``.digest``, ``.steps`` (each with its ``.status`` and, if it ran,
    its ``.reason``), ``.metrics``, ``.outputs``. Raises ``BuildStepError`` when a step fails
    and another :class:`MemoBuildError` for anything else that stops the build.
    """
    from memobuild.build.executor import build as run_build

    return run_build(
        context,
        dockerfile,
        target=target,
        build_args=build_args,
        tags=_many(tag),
        outputs=_many(outputs),
        build_contexts=_many(build_contexts),
        secrets=_many(secrets),
        no_cache=no_cache,
        on_event=on_event,
        cache_from=cache_from,
        cache_to=cache_to,
        remote_token=remote_token,
        pull=pull,
        platform=platform,
        insecure_registries=_many(insecure_registries),
        push=push,
    )
