"""The retry policy and the circuit breaker, driven by an injected sleep and random source."""

from __future__ import annotations

import email.utils
import random
import threading

import pytest

from memobuild.errors import CASIntegrityError, InputError, NetworkError
from memobuild.retry import (
    CircuitBreaker,
    Retrier,
    RetryAttempt,
    RetryPolicy,
    is_retryable,
    parse_retry_after,
)


class Flaky:
    """An operation that raises the given errors in turn, then returns "done"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


class SlowDown(NetworkError):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__("429 Too Many Requests", retryable=True)
        self.retry_after = retry_after


def retrier(policy: RetryPolicy | None = None, draw: float = 0.5, **kw: object):
    sleeps: list[float] = []
    made = Retrier(policy, sleep=sleeps.append, random=lambda: draw, **kw)
    return made, sleeps


def test_defaults_are_three_attempts_100ms_doubling_to_5s() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial, policy.cap, policy.multiplier) == (
        3,
        0.1,
        5.0,
        2.0,
    )
    assert [policy.ceiling(n) for n in range(1, 9)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    )


def test_ceiling_never_overflows_past_the_cap() -> None:
    assert RetryPolicy(multiplier=10.0).ceiling(10_000) == 5.0


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    policy = RetryPolicy(initial=1.0, cap=100.0)
    assert policy.backoff(3, lambda: 0.0) == 0.0
    assert policy.backoff(3, lambda: 0.999999) == pytest.approx(4.0, rel=1e-5)
    rng = random.Random(7)  # noqa: S311 - a reproducible sample, not a secret
    draws = [policy.backoff(4, rng.random) for _ in range(2000)]
    assert all(0.0 <= d <= 8.0 for d in draws)
    # Full jitter (uniform over the whole range), not "equal jitter" (upper half only).
    assert min(draws) < 0.1
    assert max(draws) > 7.9
    assert sum(draws) / len(draws) == pytest.approx(4.0, rel=0.1)


def test_retryable_errors_are_retried_until_attempts_run_out() -> None:
    run, sleeps = retrier()
    op = Flaky(*(NetworkError("connection refused") for _ in range(5)))
    with pytest.raises(NetworkError):
        run.call(op)
    assert op.calls == 3
    assert sleeps == pytest.approx([0.05, 0.1])  # draw 0.5 of ceilings 0.1 and 0.2


def test_success_after_retries_returns_the_value() -> None:
    seen: list[RetryAttempt] = []
    run, sleeps = retrier(RetryPolicy(max_attempts=5), on_retry=seen.append)
    op = Flaky(NetworkError("reset"), NetworkError("timed out"))
    assert run.call(op, what="GET /x") == "done"
    assert op.calls == 3
    assert [(a.what, a.attempt) for a in seen] == [("GET /x", 1), ("GET /x", 2)]
    assert sleeps == pytest.approx([0.05, 0.1])


@pytest.mark.parametrize(
    "error",
    [
        NetworkError("401 refused the token", retryable=False),
        CASIntegrityError("sha256:" + "0" * 64, "sha256:" + "1" * 64, 3),
        ValueError("a bug"),
        KeyError("another bug"),
    ],
)
def test_non_retryable_errors_fail_at_once(error: Exception) -> None:
    run, sleeps = retrier(RetryPolicy(max_attempts=10))
    op = Flaky(error)
    with pytest.raises(type(error)):
        run.call(op)
    assert op.calls == 1
    assert sleeps == []
    assert not is_retryable(error)


def test_one_attempt_means_no_retry() -> None:
    run, sleeps = retrier(RetryPolicy(max_attempts=1))
    op = Flaky(NetworkError("refused"))
    with pytest.raises(NetworkError):
        run.call(op)
    assert (op.calls, sleeps) == (1, [])


def test_retry_after_is_honoured_instead_of_the_backoff() -> None:
    run, sleeps = retrier(draw=0.0)
    assert run.call(Flaky(SlowDown(2.5))) == "done"
    assert sleeps == [2.5]


def test_retry_after_longer_than_the_cap_gives_up() -> None:
    run, sleeps = retrier(RetryPolicy(cap=5.0))
    op = Flaky(SlowDown(60.0))
    with pytest.raises(SlowDown):
        run.call(op)
    assert (op.calls, sleeps) == (1, [])


def test_retry_after_missing_falls_back_to_jitter() -> None:
    run, sleeps = retrier(draw=1.0)
    assert run.call(Flaky(SlowDown(None))) == "done"
    assert sleeps == [pytest.approx(0.1)]


def test_parse_retry_after_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    for junk in (None, "", "soon", "-5", "1.5e3"):
        assert parse_retry_after(junk, now) is None


def test_policy_from_env_overrides_only_what_is_set() -> None:
    policy = RetryPolicy.from_env(
        {"MEMOBUILD_RETRY_MAX_ATTEMPTS": "6", "MEMOBUILD_RETRY_CAP": "0.5", "OTHER": "x"}
    )
    assert policy == RetryPolicy(max_attempts=6, cap=0.5)
    assert RetryPolicy.from_env({}) == RetryPolicy()


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("MEMOBUILD_RETRY_MAX_ATTEMPTS", "three", "MEMOBUILD_RETRY_MAX_ATTEMPTS='three'"),
        ("MEMOBUILD_RETRY_INITIAL", "fast", "MEMOBUILD_RETRY_INITIAL"),
        ("MEMOBUILD_RETRY_MAX_ATTEMPTS", "0", "max_attempts must be >= 1"),
        ("MEMOBUILD_RETRY_MULTIPLIER", "0.5", "multiplier must be >= 1"),
        ("MEMOBUILD_RETRY_CAP", "inf", "cap must be a finite number"),
    ],
)
def test_policy_from_env_refuses_bad_values(variable: str, value: str, says: str) -> None:
    with pytest.raises(InputError, match=says.replace("(", r"\(")):
        RetryPolicy.from_env({variable: value})


def test_policy_validates_its_fields() -> None:
    with pytest.raises(InputError):
        RetryPolicy(initial=-1)
    with pytest.raises(InputError):
        RetryPolicy(max_attempts=True)
    with pytest.raises(InputError):
        RetryPolicy(cap=float("nan"))


def test_breaker_opens_after_threshold_consecutive_failures_once() -> None:
    opened: list[str] = []
    breaker = CircuitBreaker(3, on_open=opened.append)
    assert not breaker.failure("a")
    assert not breaker.failure("b")
    breaker.success()  # a success in between resets the run
    assert not breaker.failure("c")
    assert not breaker.failure("d")
    assert breaker.allow()
    assert breaker.failure("e")
    assert not breaker.allow()
    assert breaker.is_open
    assert not breaker.failure("f")
    breaker.success()  # stays open for the rest of the build
    assert not breaker.allow()
    assert len(opened) == 1
    assert "3 operations in a row failed" in opened[0]
    assert opened[0].endswith("e")
    assert breaker.reason == opened[0]


def test_breaker_trip_opens_at_once_and_only_once() -> None:
    opened: list[str] = []
    breaker = CircuitBreaker(5, on_open=opened.append)
    assert breaker.trip("401: refused the token")
    assert not breaker.trip("again")
    assert not breaker.failure("later")
    assert opened == ["401: refused the token"]


def test_breaker_calls_on_open_once_under_concurrent_failures() -> None:
    opened: list[str] = []
    breaker = CircuitBreaker(3, on_open=opened.append)
    start = threading.Barrier(8)

    def fail() -> None:
        start.wait()
        for _ in range(50):
            breaker.failure("boom")

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 1
    assert not breaker.allow()


def test_breaker_threshold_must_be_positive() -> None:
    with pytest.raises(InputError):
        CircuitBreaker(0)
