"""Retry policy for remote operations: what is retried, how long to wait, when to give up.

MemoBuild's own small implementation rather than tenacity or stamina, because:

- the whole policy is ~100 lines (full-jitter backoff, Retry-After, a bounded attempt count),
  and the two libraries would still leave the parts that matter here to write: a circuit breaker
  that switches a remote off for the rest of the build (neither has one), and a Retry-After
  that must fit under the same cap as the backoff;
- tests drive it with an injected ``sleep`` and ``random`` (tenacity draws its jitter from the
  ``random`` module's global state; stamina replaces the whole wait in its testing mode), so
  backoff bounds are asserted exactly, never slept;
- ``sleep`` can be an ``Event.wait``, so a build that is closing wakes a waiting retry at once.

What is retried is decided by the error, not by the transport: a :class:`MemoBuildError` whose
``retryable`` is true (the remote client raises NetworkError with ``retryable`` for connect
errors, timeouts and HTTP 429/502/503/504). Anything else (401, a digest mismatch, a bug)
fails at once. An error may carry ``retry_after`` (seconds, from the HTTP header): the next
attempt then waits that long, or the operation gives up when the server asks for more than the
policy's cap, since retrying sooner than asked is rude and waiting longer stalls the build.

Delays use "full jitter" (AWS architecture blog, "Exponential Backoff And Jitter"): before
attempt ``n + 1`` the wait is uniform in ``[0, min(cap, initial * multiplier ** (n - 1))]``,
which spreads the retries of many runners hitting one recovering server.
"""

from __future__ import annotations

import email.utils
import math
import os
import random as _random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from memobuild.errors import InputError, MemoBuildError
from memobuild.logging import logger

__all__ = [
    "ENV_PREFIX",
    "CircuitBreaker",
    "Retrier",
    "RetryAttempt",
    "RetryPolicy",
    "is_retryable",
    "parse_retry_after",
]

T = TypeVar("T")

ENV_PREFIX = "MEMOBUILD_RETRY_"
# field name -> (environment variable suffix, type)
_ENV_FIELDS: dict[str, tuple[str, type]] = {
    "max_attempts": ("MAX_ATTEMPTS", int),
    "initial": ("INITIAL", float),
    "cap": ("CAP", float),
    "multiplier": ("MULTIPLIER", float),
}


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry. Times are seconds.

    ``max_attempts`` counts every attempt, the first included (1 = never retry).
    """

    max_attempts: int = 3
    initial: float = 0.1
    cap: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise InputError(f"retry: max_attempts must be an int, not {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise InputError(f"retry: max_attempts must be >= 1, not {self.max_attempts}")
        for name in ("initial", "cap", "multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"retry: {name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise InputError(f"retry: {name} must be a finite number >= 0, not {value!r}")
        if self.multiplier < 1:
            raise InputError(f"retry: multiplier must be >= 1, not {self.multiplier}")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, base: RetryPolicy | None = None
    ) -> RetryPolicy:
        """``base`` (default: the defaults) with any ``MEMOBUILD_RETRY_MAX_ATTEMPTS``,
        ``_INITIAL``, ``_CAP``, ``_MULTIPLIER`` set in ``environ`` (default: os.environ)
        applied; a malformed value is an InputError naming the variable."""
        env = os.environ if environ is None else environ
        policy = base if base is not None else cls()
        changes: dict[str, int | float] = {}
        for name, (suffix, kind) in _ENV_FIELDS.items():
            variable = ENV_PREFIX + suffix
            raw = env.get(variable)
            if raw is None or not raw.strip():
                continue
            try:
                changes[name] = kind(raw.strip())
            except ValueError:
                expected = "a whole number" if kind is int else "a number"
                raise InputError(f"{variable}={raw!r}: expected {expected}") from None
        if not changes:
            return policy
        values = {name: getattr(policy, name) for name in _ENV_FIELDS}
        values.update(changes)
        try:
            return cls(**values)
        except InputError as err:
            raise InputError(f"{ENV_PREFIX}*: {err}") from None

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, not {attempt}")
        try:
            grown = self.initial * self.multiplier ** (attempt - 1)
        except OverflowError:
            return self.cap
        return min(self.cap, grown)

    def backoff(self, attempt: int, random: Callable[[], float] = _random.random) -> float:
        """The wait after failed attempt ``attempt``: full jitter, uniform in [0, ceiling]."""
        return random() * self.ceiling(attempt)


def is_retryable(err: BaseException) -> bool:
    """Whether doing the same thing again may succeed: MemoBuild errors say so themselves;
    anything else (a bug, an interrupt) is not retried."""
    return isinstance(err, MemoBuildError) and bool(err.retryable)


def _retry_after(err: BaseException) -> float | None:
    value = getattr(err, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0.0, float(value))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` header (delay-seconds or an HTTP-date),
    or None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class RetryAttempt:
    """One failed attempt that will be retried: handed to ``Retrier``'s ``on_retry``."""

    what: str
    attempt: int  # the attempt that failed, 1-based
    delay: float  # seconds until the next one
    error: BaseException


class Retrier:
    """Runs an operation under a :class:`RetryPolicy`.

    ``sleep`` and ``random`` are injectable for tests (and ``sleep`` may be an ``Event.wait``
    so a closing client stops waiting); ``on_retry`` sees every retry, e.g. to count them.
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], object] = time.sleep,
        random: Callable[[], float] = _random.random,
        on_retry: Callable[[RetryAttempt], None] | None = None,
    ) -> None:
        self.policy = policy if policy is not None else RetryPolicy()
        self._sleep = sleep
        self._random = random
        self._on_retry = on_retry

    def delay(self, attempt: int, err: BaseException) -> float | None:
        """The wait before retrying after ``err`` ended attempt ``attempt``; None: give up."""
        if attempt >= self.policy.max_attempts or not is_retryable(err):
            return None
        asked = _retry_after(err)
        if asked is not None:
            # The server said when; waiting longer than the cap would stall the build.
            return asked if asked <= self.policy.cap else None
        return self.policy.backoff(attempt, self._random)

    def call(self, operation: Callable[[], T], *, what: str = "operation") -> T:
        """``operation()``, retried while its failures are retryable and attempts remain; the
        last error is raised as it is."""
        attempt = 1
        while True:
            try:
                return operation()
            except Exception as err:
                delay = self.delay(attempt, err)
                if delay is None:
                    raise
                logger.debug(
                    f"{what}: attempt {attempt} of {self.policy.max_attempts} failed ({err}); "
                    f"retrying in {delay:.3f}s"
                )
                if self._on_retry is not None:
                    self._on_retry(RetryAttempt(what, attempt, delay, err))
                self._sleep(delay)
                attempt += 1


class CircuitBreaker:
    """Switches a remote off after ``threshold`` operations in a row have failed, or at once
    when told to (``trip``: e.g. the server refused our credentials). Once open it stays open:
    for a build, a remote that keeps failing costs more in timeouts than it could save.

    ``on_open(reason)`` is called exactly once, by the thread whose failure opened it: that is
    where the one warning goes. Thread-safe.
    """

    def __init__(self, threshold: int = 3, *, on_open: Callable[[str], None] | None = None) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise InputError(f"circuit breaker threshold must be an int >= 1, not {threshold!r}")
        self.threshold = threshold
        self._on_open = on_open
        self._lock = threading.Lock()
        self._consecutive = 0
        self._reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        """Why it opened (None while closed)."""
        return self._reason

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    def allow(self) -> bool:
        """Whether the remote may still be used."""
        return self._reason is None

    def success(self) -> None:
        with self._lock:
            self._consecutive = 0

    def failure(self, reason: str) -> bool:
        """Count a failed operation; True if this one opened the breaker."""
        with self._lock:
            if self._reason is not None:
                return False
            self._consecutive += 1
            if self._consecutive < self.threshold:
                return False
            self._reason = f"{self._consecutive} operations in a row failed, the last: {reason}"
            opened = self._reason
        if self._on_open is not None:
            self._on_open(opened)
        return True

    def trip(self, reason: str) -> bool:
        """Open now, whatever the count; True if this call opened it."""
        with self._lock:
            if self._reason is not None:
                return False
            self._reason = reason
        if self._on_open is not None:
            self._on_open(reason)
        return True
