"""CI runners for the shared-cache tests, and what the tests look at in their builds.

A :class:`Runner` is one CI machine: a cache dir of its own with the busybox base image in it,
and nothing in common with the other runners but the cache they share (a registry or a
``memobuild server``). The ``new_runner`` fixture (tests/conftest.py) makes them and closes
their stores after the test; :func:`of` and :func:`warnings_in` pick out build events of one
kind and the WARNING messages of the ``logs`` fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from busybox_image import BusyboxImage, make_busybox_image
from memobuild.build import events as ev
from memobuild.build.executor import BuildResult, build
from memobuild.cache.store import LocalStore


class Runner:
    """One CI runner: its own cache dir with the base image in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache_dir = root / "cache"
        self.store = LocalStore(self.cache_dir)
        self.base: BusyboxImage = make_busybox_image(root / "base", self.store)

    def build(self, context: Path, **options: Any) -> tuple[BuildResult, list[ev.BuildEvent]]:
        events: list[ev.BuildEvent] = []
        result = build(context, store=self.store, on_event=events.append, **options)
        return result, events

    def close(self) -> None:
        self.store.close()


def of(events: list[ev.BuildEvent], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def warnings_in(records: list[tuple[str, str]]) -> list[str]:
    return [message for level, message in records if level == "WARNING"]


def statuses(result: BuildResult) -> list[tuple[str, str | None]]:
    return [(s.status, s.tier) for s in result.steps]
