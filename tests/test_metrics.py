"""Build metrics and the metrics log, through real builds, and `memobuild stats` as a user runs it.

The builds are real (busybox base image, sandboxed RUN, a store on disk); the log is the file in
that store, read back by a fresh MetricsLog the way the next process would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from busybox_image import BusyboxImage, make_context
from memobuild.build.events import BuildEvent, BuildFinished, LayerBuilt, StepStarted
from memobuild.build.executor import BuildResult, build
from memobuild.build.metrics import (
    FAILED,
    INTERRUPTED,
    METRICS_SCHEMA,
    SUCCEEDED,
    BuildMetrics,
    BuildRecord,
    MetricsLog,
)
from memobuild.cache.store import LocalStore
from memobuild.cli import main
from memobuild.errors import BuildStepError, MemoBuildError

DOCKERFILE = """\
FROM busybox
WORKDIR /app
COPY deps.txt .
RUN sort deps.txt > installed.txt
COPY src/ ./src/
RUN cat src/main.txt installed.txt > built.txt
CMD ["cat", "/app/built.txt"]
"""
FILES = {"deps.txt": "zlib\nacl\n", "src/main.txt": "main v1\n"}


def run_build(context: Path, store: LocalStore) -> tuple[BuildResult, list[BuildEvent]]:
    events: list[BuildEvent] = []
    result = build(context, store=store, on_event=events.append)
    return result, events


def layer_bytes_built(events: list[BuildEvent]) -> int:
    return sum(e.size for e in events if isinstance(e, LayerBuilt))


def finished(events: list[BuildEvent]) -> BuildFinished:
    (event,) = [e for e in events if isinstance(e, BuildFinished)]
    return event


def record(n: int, *, status: str = SUCCEEDED, cached: int = 1) -> BuildRecord:
    return BuildRecord(
        time=1_700_000_000.0 + n,
        status=status,
        target="final",
        dockerfile=f"/src/project-{n}/Dockerfile",
        context=f"/src/project-{n}",
        metrics=BuildMetrics(
            total=3,
            cached=cached,
            executed=3 - cached,
            duration=0.5,
            step_time=0.25,
            bytes_written=100,
            saved_time=1.0,
        ),
        image=f"sha256:{n:064x}" if status == SUCCEEDED else None,
        error=None if status == SUCCEEDED else "step 2 RUN false failed with exit code 1",
    )


# --- BuildMetrics -------------------------------------------------------------------------------


def test_hit_rate_and_average_step_time_count_the_steps_the_build_got_to() -> None:
    m = BuildMetrics(total=10, cached=6, executed=1, failed=1, duration=4.0, step_time=2.0)
    assert m.steps == 8
    assert m.cache_hit_rate() == 0.75
    assert m.average_step_time() == 0.25
    assert BuildMetrics().cache_hit_rate() == 0.0
    assert BuildMetrics().average_step_time() == 0.0
    both = m + BuildMetrics(total=2, cached=2, step_time=1.0, bytes_written=5, saved_time=3.0)
    assert (both.total, both.cached, both.steps, both.bytes_written) == (12, 8, 10, 5)
    assert both.cache_hit_rate() == 0.8


def test_metrics_round_trip_through_json_and_refuse_what_they_did_not_write() -> None:
    m = BuildMetrics(7, 5, 2, 0, 1.5, 1.25, 4096, 12.0)
    assert BuildMetrics.from_json(json.loads(json.dumps(m.to_json()))) == m
    r = record(1)
    assert BuildRecord.from_json(json.loads(json.dumps(r.to_json()))) == r
    for bad in (
        {**m.to_json(), "cached": -1},
        {**m.to_json(), "total": True},
        {**m.to_json(), "duration": "1s"},
        {k: v for k, v in m.to_json().items() if k != "saved_time"},
        [1, 2],
    ):
        with pytest.raises(ValueError):
            BuildMetrics.from_json(bad)
    with pytest.raises(ValueError):
        BuildRecord.from_json({**r.to_json(), "status": "exploded"})
    with pytest.raises(ValueError):
        BuildRecord.from_json({**r.to_json(), "schema": "memobuild.metrics.v0"})


# --- metrics of real builds ---------------------------------------------------------------------


def test_metrics_of_a_cold_build_a_no_change_rebuild_and_a_one_line_change(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, FILES)

    cold, cold_events = run_build(context, store)
    m = cold.metrics
    assert (m.total, m.cached, m.executed, m.failed) == (7, 0, 7, 0)
    assert m.cache_hit_rate() == 0.0
    assert m.bytes_written == layer_bytes_built(cold_events) > 0
    assert m.saved_time == 0.0
    assert m.step_time == pytest.approx(sum(s.duration for s in cold.steps))
    assert m.average_step_time() == pytest.approx(m.step_time / 7)
    assert 0 < m.step_time <= m.duration == cold.duration
    assert finished(cold_events).bytes_written == m.bytes_written
    assert finished(cold_events).hit_rate == 0.0

    again, again_events = run_build(context, store)
    m = again.metrics
    assert (m.total, m.cached, m.executed, m.failed) == (7, 7, 0, 0)
    assert m.cache_hit_rate() == 1.0 == finished(again_events).hit_rate
    assert m.bytes_written == 0 == finished(again_events).bytes_written
    # What the cache saved is what the steps took when they ran (FROM runs nothing).
    ran = {s.key: s.duration for s in cold.steps if not s.text.startswith("FROM")}
    assert m.saved_time == pytest.approx(sum(ran.values()))

    (context / "src" / "main.txt").write_text("main v2\n")
    changed, changed_events = run_build(context, store)
    m = changed.metrics
    assert (m.total, m.cached, m.executed, m.failed) == (7, 4, 3, 0)
    assert m.cache_hit_rate() == pytest.approx(4 / 7) == finished(changed_events).hit_rate
    assert m.bytes_written == layer_bytes_built(changed_events) > 0
    hits = {s.key for s in changed.steps if s.status == "cached"}
    assert m.saved_time == pytest.approx(sum(d for k, d in ran.items() if k in hits))


def test_every_build_is_logged_in_the_store_and_read_back_by_the_next_process(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, FILES)
    results = [run_build(context, store)[0] for _ in range(2)]
    (context / "src" / "main.txt").write_text("main v2\n")
    results.append(run_build(context, store)[0])

    # A new process: a fresh log object on the same directory, no store opened.
    log = MetricsLog(store.root)
    records = log.read()
    assert [r.metrics for r in records] == [r.metrics for r in results]
    assert [r.image for r in records] == [r.digest for r in results]
    assert {r.status for r in records} == {SUCCEEDED}
    assert {r.dockerfile for r in records} == {str(context / "Dockerfile")}
    assert {r.context for r in records} == {str(context)}
    assert {r.target for r in records} == {"stage-0"}
    assert records == sorted(records, key=lambda r: r.time)
    assert log.read(last=1) == records[-1:]
    assert log.read(last=0) == []

    summary = log.summary()
    assert summary.builds == 3 and summary.failed_builds == 0
    assert summary.totals == results[0].metrics + results[1].metrics + results[2].metrics
    assert summary.since == records[0].time
    # The log is a file of the store, private like the rest of it.
    assert log.path.is_relative_to(store.root / "records")
    assert os.stat(log.path).st_mode & 0o077 == 0


def test_a_failed_build_is_logged_with_its_failed_step(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox\nRUN echo ok > /ok.txt\nRUN echo broken >&2; exit 3\nRUN echo never\n",
    )
    with pytest.raises(BuildStepError):
        build(context, store=store)
    (failed,) = MetricsLog(store.root).read()
    assert failed.status == FAILED
    assert failed.image is None
    assert failed.error is not None and "failed with exit code 3" in failed.error
    assert "\n" not in failed.error
    m = failed.metrics
    assert (m.total, m.cached, m.executed, m.failed) == (4, 0, 2, 1)
    assert m.bytes_written > 0  # the layer of RUN echo ok was stored

    with pytest.raises(BuildStepError):
        build(context, store=store)
    summary = MetricsLog(store.root).summary()
    assert (summary.builds, summary.failed_builds) == (2, 2)
    assert (summary.totals.cached, summary.totals.failed) == (2, 2)


def test_an_interrupted_build_is_logged_as_interrupted(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, FILES)

    def interrupt(event: BuildEvent) -> None:
        if isinstance(event, StepStarted) and event.text.startswith("RUN"):
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of a build

    with pytest.raises(KeyboardInterrupt):
        build(context, store=store, on_event=interrupt)
    (logged,) = MetricsLog(store.root).read()
    assert (logged.status, logged.error, logged.image) == (INTERRUPTED, "interrupted", None)
    assert (logged.metrics.executed, logged.metrics.failed) == (3, 0)


def test_a_build_stopped_by_a_dockerfile_error_is_not_a_build(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(tmp_path / "ctx", "FROM busybox\nCOPY missing.txt /\n")
    with pytest.raises(MemoBuildError, match=r"missing\.txt"):
        build(context, store=store)
    assert MetricsLog(store.root).read() == []


def test_concurrent_builds_both_log(tmp_path: Path, store: LocalStore, base: BusyboxImage) -> None:
    contexts = [
        make_context(tmp_path / f"ctx{n}", DOCKERFILE, {**FILES, "src/main.txt": f"v{n}\n"})
        for n in range(2)
    ]
    errors: list[BaseException] = []

    def one(context: Path) -> None:
        try:
            with LocalStore(store.root) as own:
                build(context, store=own)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=one, args=(c,)) for c in contexts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    logged = MetricsLog(store.root).read()
    assert sorted(r.context for r in logged) == sorted(str(c) for c in contexts)


# --- the log file -------------------------------------------------------------------------------


def test_corrupt_and_torn_lines_are_skipped_and_never_swallow_the_next_record(
    tmp_path: Path,
) -> None:
    log = MetricsLog(tmp_path / "cache")
    log.append(record(1))
    with open(log.path, "ab") as f:
        f.write(b"\x00\x00garbage that is not json\n")
        f.write(b'{"schema": "memobuild.metrics.v1", "status": "succeeded"}\n')  # fields missing
        f.write(b'{"schema": "memobuild.metrics.v1", "time": 17')  # torn by a crash
    log.append(record(2))
    log.append(record(3, status=FAILED))
    assert log.read() == [record(1), record(2), record(3, status=FAILED)]
    summary = log.summary()
    assert (summary.builds, summary.failed_builds) == (3, 1)


def test_concurrent_processes_appending_lose_no_record_even_while_compacting(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cache"
    max_bytes = 20_000  # about 40 records: many compactions race with the appends
    script = (
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_metrics import record\n"
        "from memobuild.build.metrics import MetricsLog\n"
        f"log = MetricsLog(sys.argv[2], max_bytes={max_bytes})\n"
        "for n in range(int(sys.argv[3]), int(sys.argv[3]) + 100):\n"
        "    log.append(record(n, cached=n % 4))\n"
    )
    tests_dir = str(Path(__file__).parent)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, tests_dir, str(root), str(k * 1000)])
        for k in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]

    log = MetricsLog(root, max_bytes=max_bytes)
    assert log.path.stat().st_size <= max_bytes
    summary = log.summary()
    assert summary.builds == 400
    assert summary.totals.cached == 4 * sum(n % 4 for n in range(100))
    assert summary.totals.bytes_written == 400 * 100
    assert summary.since == 1_700_000_000.0
    kept = log.read()
    assert 0 < len(kept) < 400
    assert len({r.image for r in kept}) == len(kept)
    assert not list(log.dir.glob(".compact-*"))


def test_compaction_keeps_the_newest_records_and_carries_the_totals(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "cache", max_bytes=5_000)
    for n in range(100):
        log.append(record(n, status=FAILED if n % 10 == 0 else SUCCEEDED))
    kept = log.read()
    assert kept == [record(n, status=FAILED if n % 10 == 0 else SUCCEEDED) for n in kept_ns(kept)]
    assert kept[-1] == record(99)
    assert kept_ns(kept) == list(range(100 - len(kept), 100))
    summary = log.summary()
    assert (summary.builds, summary.failed_builds) == (100, 10)
    assert summary.totals.total == 300
    first = json.loads(log.path.read_text().splitlines()[0])
    assert first["schema"] == METRICS_SCHEMA and first["carried"]["builds"] == 100 - len(kept)


def kept_ns(records: list[BuildRecord]) -> list[int]:
    return [int(r.time - 1_700_000_000.0) for r in records]


# --- memobuild stats ----------------------------------------------------------------------------


def test_stats_sums_up_the_builds_and_lists_the_last_ones(
    tmp_path: Path,
    store: LocalStore,
    base: BusyboxImage,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["stats"]) == 0
    assert "no builds logged" in capsys.readouterr().out

    context = make_context(tmp_path / "ctx", DOCKERFILE, FILES)
    results = [run_build(context, store)[0] for _ in range(2)]
    failing = make_context(tmp_path / "bad", "FROM busybox\nRUN exit 3\n")
    with pytest.raises(BuildStepError):
        build(failing, store=store)
    capsys.readouterr()

    assert main(["stats", "--last", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("builds          3 since ") and out[0].endswith("(1 failed)")
    assert out[1] == "steps           16: 8 cached, 7 executed, 1 failed"
    assert out[2] == "cache hit rate  50.0%"
    assert out[3].startswith("avg step time   ")
    assert out[4].startswith("time saved      ")
    assert out[5].startswith("bytes written   ")
    assert "last 2 builds:" in out
    header = out[out.index("last 2 builds:") + 1]
    assert header.split() == [
        "STARTED", "STATUS", "TARGET", "STEPS", "CACHED", "EXECUTED", "HIT", "RATE",
        "DURATION", "SAVED", "WRITTEN", "DOCKERFILE",
    ]  # fmt: skip
    rows = out[out.index("last 2 builds:") + 2 :]
    assert len(rows) == 2
    assert rows[0].split()[2:8] == ["succeeded", "stage-0", "7", "7", "0", "100.0%"]
    assert rows[1].split()[2:8] == ["failed", "stage-0", "2", "1", "0", "50.0%"]

    assert main(["stats", "--json", "--last", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["builds"], doc["failed_builds"]) == (3, 1)
    assert (doc["steps"], doc["cached"], doc["executed"], doc["failed"]) == (16, 8, 7, 1)
    assert doc["hit_rate"] == 0.5
    expected = results[0].metrics + results[1].metrics
    assert doc["bytes_written"] == expected.bytes_written
    assert doc["saved_time"] == pytest.approx(results[1].metrics.saved_time)
    assert [r["status"] for r in doc["last"]] == ["failed"]
    assert doc["last"][0]["metrics"]["failed"] == 1

    assert main(["stats", "--last", "0"]) == 0
    assert "last " not in capsys.readouterr().out


def test_stats_from_the_command_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    MetricsLog(cache).append(record(1))
    env = {**os.environ, "MEMOBUILD_CACHE_DIR": str(tmp_path / "elsewhere")}
    cmd = [sys.executable, "-m", "memobuild.cli", "stats", "--cache-dir", str(cache), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    assert json.loads(done.stdout)["builds"] == 1
    bad = subprocess.run(
        [*cmd[:-1], "--last", "-1"], capture_output=True, text=True, env=env, check=False
    )
    assert bad.returncode == 2 and "--last" in bad.stderr
