"""Background jobs that a build starts and waits for only at the end, with a bound.

A small pool of *daemon* threads works through a queue. ``drain(timeout)`` stops taking new
jobs and waits for the queued and running ones until the deadline, then gives up on the rest:
queued jobs never start, and a running one is left to finish or die with the process. Daemon
threads are the point: a job stuck on a dead server must never keep the process alive after
the build has returned (``concurrent.futures`` joins its workers at exit).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from memobuild.logging import logger

__all__ = ["BackgroundJobs", "DrainReport"]


@dataclass(frozen=True)
class DrainReport:
    """What ``drain`` found: jobs that finished (well or not) and the names of those that
    did not within the bound (queued, or still running)."""

    finished: int
    unfinished: tuple[str, ...]
    waited: float  # seconds drain waited


class BackgroundJobs:
    """Runs ``submit``-ted jobs on up to ``workers`` daemon threads (started on demand).
    A job's exceptions are its own business: they are logged here and never re-raised."""

    def __init__(self, workers: int = 2, *, name: str = "memobuild-upload") -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        self._max_workers = workers
        self._name = name
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[str, Callable[[], None]]] = collections.deque()
        self._running: dict[int, str] = {}  # thread ident -> job name
        self._threads: list[threading.Thread] = []
        self._finished = 0
        self._accepting = True
        self._abandoned = False

    def submit(self, name: str, job: Callable[[], None]) -> bool:
        """Queue ``job``; False (and nothing queued) once ``drain`` has been called."""
        with self._cond:
            if not self._accepting:
                return False
            self._queue.append((name, job))
            idle = len(self._threads) - len(self._running)
            if idle < len(self._queue) and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._cond.notify()
            return True

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._queue) + len(self._running)

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            with self._cond:
                while not self._queue and self._accepting and not self._abandoned:
                    self._cond.wait()
                if self._abandoned or not self._queue:
                    return
                name, job = self._queue.popleft()
                self._running[me] = name
            try:
                job()
            except Exception:  # a job's bug must not kill the worker or the build
                logger.opt(exception=True).warning(f"background job {name} failed")
            finally:
                with self._cond:
                    del self._running[me]
                    self._finished += 1
                    self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> DrainReport:
        """Stop taking jobs and wait (at most ``timeout`` seconds; None: no bound) for the
        queued and running ones. Whatever has not finished by then is given up."""
        started = time.monotonic()
        deadline = None if timeout is None else started + max(0.0, timeout)
        with self._cond:
            self._accepting = False
            self._cond.notify_all()
            while self._queue or self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            unfinished = tuple(self._running.values()) + tuple(name for name, _ in self._queue)
            self._queue.clear()
            self._abandoned = True
            self._cond.notify_all()
            finished = self._finished
        return DrainReport(finished, unfinished, time.monotonic() - started)
