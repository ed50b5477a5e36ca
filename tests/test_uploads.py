"""Background jobs: run while the build goes on, waited for at the end with a bound."""

from __future__ import annotations

import threading
import time

from memobuild.cache.uploads import BackgroundJobs
from memobuild.logging import logger


def test_every_job_runs_and_drain_waits_for_them() -> None:
    jobs = BackgroundJobs(2)
    done: list[int] = []
    lock = threading.Lock()

    def job(n: int) -> None:
        time.sleep(0.01)
        with lock:
            done.append(n)

    for n in range(10):
        assert jobs.submit(f"job {n}", lambda n=n: job(n))
    report = jobs.drain(None)
    assert sorted(done) == list(range(10))
    assert (report.finished, report.unfinished) == (10, ())
    assert jobs.pending == 0


def test_at_most_the_given_number_of_daemon_workers() -> None:
    jobs = BackgroundJobs(3, name="test-upload")
    release = threading.Event()
    for n in range(8):
        jobs.submit(f"job {n}", release.wait)
    workers = [t for t in threading.enumerate() if t.name.startswith("test-upload")]
    assert len(workers) == 3
    assert all(t.daemon for t in workers)
    release.set()
    assert jobs.drain(10).unfinished == ()


def test_a_failing_job_is_logged_and_the_others_still_run() -> None:
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING", format="{message}")
    try:
        jobs = BackgroundJobs(1)
        ran: list[str] = []
        jobs.submit("broken", lambda: 1 / 0)
        jobs.submit("fine", lambda: ran.append("fine"))
        report = jobs.drain(10)
    finally:
        logger.remove(sink)
    assert ran == ["fine"]
    assert report.finished == 2
    assert any("background job broken failed" in m for m in messages)


def test_drain_gives_up_at_its_bound_and_queued_jobs_never_start() -> None:
    jobs = BackgroundJobs(1)
    release = threading.Event()
    ran: list[str] = []
    jobs.submit("stuck", release.wait)
    jobs.submit("queued", lambda: ran.append("queued"))
    started = time.monotonic()
    report = jobs.drain(0.2)
    elapsed = time.monotonic() - started
    assert 0.15 < elapsed < 2
    assert report.unfinished == ("stuck", "queued")
    assert report.finished == 0
    assert not jobs.submit("late", lambda: ran.append("late"))
    release.set()
    time.sleep(0.1)
    assert ran == []
