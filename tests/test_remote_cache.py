"""The remote cache client and the hybrid cache, against a real ``memobuild server`` on loopback.

Every test starts the server as a subprocess (tests/server_fixture.py); faults come from a real
TCP proxy in front of it (tests/flaky_proxy.py) or from the server's own disk and process.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from build_runner import warnings_in
from flaky_proxy import Faults, FlakyProxy
from memobuild.cache.entries import ActionEntry, LayerRef
from memobuild.cache.hybrid import HybridCache, UploadReport
from memobuild.cache.remote import (
    TOKEN_ENV,
    URL_ENV,
    RemoteAuthError,
    RemoteCache,
    RemoteError,
    RemoteRejectedError,
)
from memobuild.cache.remote_events import (
    CacheHit,
    CacheMiss,
    RemoteCacheEvent,
    RemoteDisabled,
    RemoteIntegrityFailure,
    RemoteSync,
)
from memobuild.cache.store import LocalStore
from memobuild.errors import CASIntegrityError, InputError
from memobuild.retry import RetryPolicy
from memobuild.verify import digest_bytes
from server_fixture import RunningServer, free_port, run_server

FAST = RetryPolicy(max_attempts=3, initial=0.01, cap=0.1)
RW_TOKEN = "rw-secret-token-4f1c2a"  # noqa: S105 - a test server's token
RO_TOKEN = "ro-secret-token-9b7e3d"  # noqa: S105 - a test server's token


# --- helpers -----------------------------------------------------------------------------------


def key_of(name: str) -> str:
    return digest_bytes(name.encode(), "blake3")


def make_layer(store: LocalStore | HybridCache, tmp: Path, size: int, seed: int) -> LayerRef:
    """A layer blob of ``size`` random bytes, stored the way the executor stores one."""
    data = random.Random(seed).randbytes(size)  # noqa: S311 - test data, not secrets
    path = tmp / f"layer-{seed}.tar.gz"
    path.write_bytes(data)
    digest = store.put_blob_file(path, digest_bytes(data))
    path.unlink()
    return LayerRef(digest, digest_bytes(b"diff" + data), size)


def make_entry(name: str, *layers: LayerRef) -> ActionEntry:
    return ActionEntry(
        key=key_of(name),
        layers=layers,
        config={"config": {"Env": [f"STEP={name}"]}},
        preimage=(("instruction", name),),
        created=1_700_000_000.0,
        duration=0.5,
    )


class Runner:
    """One CI runner: its own local cache dir, a hybrid cache on one server, its events."""

    def __init__(
        self, root: Path, url: str, *, client: dict[str, Any] | None = None, **options: Any
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.local = LocalStore(root / "cache")
        self.events: list[RemoteCacheEvent] = []
        self.remote = RemoteCache(url, **{"policy": FAST, **(client or {})})
        self.cache = HybridCache(self.local, self.remote, on_event=self.events.append, **options)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def close(self, timeout: float | None = 30.0) -> UploadReport:
        report = self.cache.close(timeout)
        self.local.close()
        return report


def stored_run(runner: Runner, tmp: Path) -> list[ActionEntry]:
    """What runner 1's build stores: a FROM entry, a step with a small layer, one with two
    layers (one shared with the step before, one of 2 MiB), and a config-only step."""
    small = make_layer(runner.cache, tmp, 50_000, 1)
    large = make_layer(runner.cache, tmp, 2 << 20, 2)
    entries = [
        make_entry("FROM scratch"),
        make_entry("COPY src/ /app/", small),
        make_entry("RUN make", small, large),
        make_entry('CMD ["/app/run"]'),
    ]
    for entry in entries:
        runner.cache.put_action(entry)
    return entries


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(tmp_path / "server") as running:
        yield running


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[RunningServer]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# test tokens\n{RW_TOKEN} rw\n{RO_TOKEN} ro\n")
    with run_server(tmp_path / "server", token_file=tokens) as running:
        yield running


def upstream(server: RunningServer) -> tuple[str, int]:
    return ("127.0.0.1", server.port)


# --- the client on its own ---------------------------------------------------------------------


def test_blob_and_action_round_trip(server: RunningServer, tmp_path: Path) -> None:
    source = LocalStore(tmp_path / "a")
    dest = LocalStore(tmp_path / "b")
    layer = make_layer(source, tmp_path, 300_000, 7)
    entry = make_entry("RUN true", layer)
    with RemoteCache(server.url, policy=FAST) as remote:
        assert not remote.has_blob(layer.digest)
        assert remote.get_blob(layer.digest, dest) is None
        assert remote.put_blob(layer.digest, source) == layer.size
        assert remote.put_blob(layer.digest, source) == 0  # already there: not sent again
        assert remote.has_blob(layer.digest)
        assert server.blob_file(layer.digest).read_bytes() == source.read_blob(layer.digest)

        assert remote.get_action(entry.key) is None
        assert not remote.has_action(entry.key)
        remote.put_action(entry)
        assert remote.has_action(entry.key)
        assert remote.get_action(entry.key) == entry

        assert remote.get_blob(layer.digest, dest, layer.size) == layer.size
        assert dest.read_blob(layer.digest) == source.read_blob(layer.digest)
    assert list((dest.root / "tmp").iterdir()) == []


def test_an_entry_whose_blobs_the_server_lacks_is_refused(
    server: RunningServer, tmp_path: Path
) -> None:
    source = LocalStore(tmp_path / "a")
    layer = make_layer(source, tmp_path, 1000, 3)
    with RemoteCache(server.url, policy=FAST) as remote:
        with pytest.raises(RemoteRejectedError) as caught:
            remote.put_action(make_entry("RUN x", layer))
        assert caught.value.status == 409
        assert layer.digest in caught.value.detail
        assert not caught.value.retryable
        assert remote.retries == 0


def test_the_url_must_not_carry_credentials_and_the_token_never_shows() -> None:
    with pytest.raises(InputError, match="must not hold credentials"):
        RemoteCache("http://user:hunter2@127.0.0.1:9")
    with pytest.raises(InputError, match="http"):
        RemoteCache("ftp://127.0.0.1/cache")
    remote = RemoteCache("http://127.0.0.1:9/cache/", RW_TOKEN)
    assert remote.url == "http://127.0.0.1:9/cache"
    assert RW_TOKEN not in repr(remote)
    remote.close()


def test_the_token_comes_from_the_environment(
    token_server: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "a")
    layer = make_layer(store, tmp_path, 100, 1)
    monkeypatch.setenv("MEMOBUILD_REMOTE_TOKEN", RW_TOKEN)
    with RemoteCache(token_server.url, policy=FAST) as remote:
        assert remote.put_blob(layer.digest, store) == 100
    monkeypatch.delenv("MEMOBUILD_REMOTE_TOKEN")
    with RemoteCache(token_server.url, policy=FAST) as remote:
        with pytest.raises(RemoteAuthError) as caught:
            remote.has_blob(layer.digest)
        assert caught.value.status == 401
        assert "needs a token" in str(caught.value)


def test_a_corrupt_blob_on_the_server_raises_and_stores_nothing(
    server: RunningServer, tmp_path: Path
) -> None:
    source = LocalStore(tmp_path / "a")
    dest = LocalStore(tmp_path / "b")
    layer = make_layer(source, tmp_path, 200_000, 4)
    with RemoteCache(server.url, policy=FAST) as remote:
        remote.put_blob(layer.digest, source)
        blob = server.blob_file(layer.digest)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01  # same size, one bit off
        blob.write_bytes(bytes(data))
        with pytest.raises(CASIntegrityError) as caught:
            remote.get_blob(layer.digest, dest, layer.size)
        assert caught.value.expected == layer.digest
        assert caught.value.actual == digest_bytes(bytes(data))
        assert remote.retries == 0  # corruption is not retried
    assert not dest.has_blob(layer.digest)
    assert list((dest.root / "tmp").iterdir()) == []


# --- two runners, one server -------------------------------------------------------------------


def test_the_second_runner_gets_every_entry_from_the_remote(
    server: RunningServer, tmp_path: Path
) -> None:
    first = Runner(tmp_path / "runner1", server.url)
    entries = stored_run(first, tmp_path)
    report = first.close()
    assert (report.uploaded, report.failed, report.unfinished) == (4, 0, ())
    blobs = {layer.digest: layer.size for e in entries for layer in e.layers}
    uploads = [e for e in first.of(RemoteSync) if e.direction == "upload"]
    assert sorted(e.digest for e in uploads if e.kind == "blob") == sorted(blobs)
    assert sorted(e.digest for e in uploads if e.kind == "action") == sorted(e.key for e in entries)
    assert first.cache.stats.bytes_uploaded == sum(blobs.values())

    second = Runner(tmp_path / "runner2", server.url)
    assert second.cache.has_action(entries[0].key)  # FROM: a probe, pulled in all the same
    for entry in entries[1:]:
        assert second.cache.get_action(entry.key) == entry
    assert [(e.key, e.tier) for e in second.of(CacheHit)] == [(e.key, "remote") for e in entries]
    downloads = second.of(RemoteSync)
    assert all(e.direction == "download" for e in downloads)
    # The blob two entries share is downloaded once.
    assert sorted(e.digest for e in downloads if e.kind == "blob") == sorted(blobs)
    stats = second.cache.stats
    assert (stats.remote_hits, stats.local_hits, stats.misses) == (4, 0, 0)
    assert stats.bytes_downloaded == sum(blobs.values())
    assert stats.verification_failures == stats.remote_failures == 0

    # Now the local store answers, with nothing more downloaded.
    for entry in entries:
        assert second.cache.get_action(entry.key) == entry
    assert second.cache.stats.local_hits == 4
    assert len(second.of(RemoteSync)) == len(downloads)
    assert second.close().uploaded == 0  # hits are not uploaded back

    # And it is all really in runner 2's own cache dir, verified.
    with LocalStore(tmp_path / "runner2" / "cache") as alone:
        for entry in entries:
            assert alone.get_action(entry.key) == entry


def test_a_miss_on_both_tiers_is_a_miss(server: RunningServer, tmp_path: Path) -> None:
    runner = Runner(tmp_path / "r", server.url)
    assert runner.cache.get_action(key_of("never built")) is None
    assert not runner.cache.has_action(key_of("never built either"))
    assert [type(e) for e in runner.events] == [CacheMiss, CacheMiss]
    assert runner.cache.stats.misses == 2
    assert runner.cache.remote_enabled
    runner.close()


def test_a_blob_corrupted_on_the_server_is_detected_and_the_step_rebuilt(
    server: RunningServer, tmp_path: Path, logs: list[tuple[str, str]]
) -> None:
    first = Runner(tmp_path / "runner1", server.url)
    layer = make_layer(first.cache, tmp_path, 400_000, 5)
    entry = make_entry("RUN build", layer)
    first.cache.put_action(entry)
    assert first.close().uploaded == 1

    blob = server.blob_file(layer.digest)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))

    second = Runner(tmp_path / "runner2", server.url)
    assert second.cache.get_action(entry.key) is None  # a miss: the step will run
    stats = second.cache.stats
    assert (stats.verification_failures, stats.misses, stats.remote_hits) == (1, 1, 0)
    [failure] = second.of(RemoteIntegrityFailure)
    assert failure.digest == layer.digest
    assert not second.local.has_blob(layer.digest)
    assert not second.local.has_action(entry.key)
    assert list((second.local.root / "tmp").iterdir()) == []
    [warning] = warnings_in(logs)
    assert layer.digest in warning
    assert "integrity" in warning

    # The step is rebuilt (same content) and uploaded: the bad copy on the server is replaced,
    # although the server says it has that digest.
    rebuilt = make_layer(second.cache, tmp_path, 400_000, 5)
    assert rebuilt == layer
    second.cache.put_action(entry)
    assert second.close().uploaded == 1
    assert digest_bytes(blob.read_bytes()) == layer.digest

    third = Runner(tmp_path / "runner3", server.url)
    assert third.cache.get_action(entry.key) == entry
    third.close()


# --- the remote misbehaves -------------------------------------------------------------------


def test_server_down_the_whole_time_misses_with_one_warning(
    tmp_path: Path, logs: list[tuple[str, str]]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    runner = Runner(tmp_path / "r", url)
    started = time.monotonic()
    for n in range(8):
        assert runner.cache.get_action(key_of(f"step {n}")) is None
    assert not runner.cache.has_action(key_of("FROM"))
    runner.cache.put_action(make_entry("RUN local work"))  # stored locally, not uploaded
    report = runner.close()
    elapsed = time.monotonic() - started

    assert runner.local.get_action(key_of("RUN local work")) is not None
    stats = runner.cache.stats
    assert stats.misses == 9
    # One operation could not connect on any of its 3 attempts: the breaker opened at once.
    assert stats.remote_failures == 1
    assert stats.retries == 2
    assert stats.remote_disabled
    assert not runner.cache.remote_enabled
    assert (report.uploaded, report.skipped, report.unfinished) == (0, 1, ())
    assert len(runner.of(RemoteDisabled)) == 1
    [warning] = warnings_in(logs)
    assert "switched off" in warning
    assert "Connection refused" in warning
    assert "could not connect, 3 attempts" in warning
    assert elapsed < 5


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose connections never complete, as a host that drops packets: a listening
    socket with a backlog of 0 that never accepts, its one queue slot already taken, so the
    kernel drops every further SYN and each connect waits for its timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        waiting = []
        try:
            for _ in range(2):
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", port))
                waiting.append(sock)
            time.sleep(0.1)
            yield port
        finally:
            for sock in waiting:
                sock.close()


def test_a_host_that_never_answers_costs_one_operation_of_connect_timeouts(
    tmp_path: Path, logs: list[tuple[str, str]]
) -> None:
    # The default timeouts and retry policy: what a build on a runner would see.
    with unanswered_port() as port:
        root = tmp_path / "r"
        root.mkdir()
        local = LocalStore(root / "cache")
        remote = RemoteCache(f"http://127.0.0.1:{port}", policy=RetryPolicy(initial=0.01))
        cache = HybridCache(local, remote)
        started = time.monotonic()
        for n in range(8):
            assert cache.get_action(key_of(f"step {n}")) is None
        cache.put_action(make_entry("RUN local work"))
        report = cache.close(30)
        elapsed = time.monotonic() - started
    stats = cache.stats
    assert stats.remote_failures == 1 and stats.retries == 2 and stats.remote_disabled
    assert (report.uploaded, report.skipped) == (0, 1)
    # 3 attempts of the 2 s connect timeout, then nothing more is tried.
    assert 5.5 < elapsed < 9
    [warning] = warnings_in(logs)
    assert "switched off" in warning and "could not connect" in warning
    local.close()


def test_a_flaky_connection_is_survived_through_retries(
    server: RunningServer, tmp_path: Path
) -> None:
    faults = Faults(drop=0.1, reset=0.1, delay=0.1, cut=0.1, busy=0.1, cut_after=2000)
    # A fresh connection per request, so each one meets the proxy's dice; one upload thread,
    # so the order of connections (and so the faults dealt) is the same on every run.
    client = {
        "policy": RetryPolicy(max_attempts=8, initial=0.01, cap=0.05),
        "limits": httpx.Limits(max_connections=4, max_keepalive_connections=0),
        "timeout": httpx.Timeout(5.0),
    }
    # Seed 4 deals every fate within the first 12 connections (the test makes more than that).
    with FlakyProxy(upstream(server), faults, seed=4) as proxy:
        first = Runner(tmp_path / "runner1", proxy.url, client=client, upload_workers=1)
        entries = stored_run(first, tmp_path)
        assert first.close().uploaded == len(entries)
        second = Runner(tmp_path / "runner2", proxy.url, client=client)
        for entry in entries:
            assert second.cache.get_action(entry.key) == entry
        second.close()
    for runner in (first, second):
        stats = runner.cache.stats
        assert stats.remote_failures == stats.verification_failures == 0
        assert not stats.remote_disabled
    assert first.cache.stats.retries + second.cache.stats.retries > 0
    dealt = {fate for fate, count in proxy.fates.items() if count}
    assert {"ok", "drop", "reset", "delay", "cut", "busy"} <= dealt


def test_a_download_torn_mid_body_is_retried_from_the_start(
    server: RunningServer, tmp_path: Path
) -> None:
    source = LocalStore(tmp_path / "a")
    dest = LocalStore(tmp_path / "b")
    layer = make_layer(source, tmp_path, 1 << 20, 12)
    with RemoteCache(server.url, policy=FAST) as direct:
        direct.put_blob(layer.digest, source)
    # The first connection is cut 64 KiB into the response, the second goes through.
    proxy = FlakyProxy(upstream(server), Faults(cut_after=1 << 16), script=["cut", "ok"])
    with proxy, RemoteCache(proxy.url, policy=FAST) as remote:
        assert remote.get_blob(layer.digest, dest, layer.size) == layer.size
        assert remote.retries == 1
    assert proxy.fates == {"cut": 1, "ok": 1}
    assert dest.read_blob(layer.digest) == source.read_blob(layer.digest)
    assert list((dest.root / "tmp").iterdir()) == []  # the torn attempt left nothing


def test_a_stalled_connection_times_out_and_is_retried(
    server: RunningServer, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "a")
    layer = make_layer(store, tmp_path, 1000, 9)
    with FlakyProxy(upstream(server), Faults(stall=1.0)) as proxy:
        remote = RemoteCache(
            proxy.url,
            policy=RetryPolicy(max_attempts=2, initial=0.01),
            timeout=httpx.Timeout(0.3),
        )
        started = time.monotonic()
        with pytest.raises(RemoteError, match="timed out") as caught:
            remote.has_blob(layer.digest)
        assert caught.value.retryable
        assert remote.retries == 1
        assert time.monotonic() - started < 3
        proxy.set_faults(stall=0.0)  # the server recovers
        assert remote.put_blob(layer.digest, store) == 1000
        remote.close()


def test_a_wrong_or_missing_token_is_refused_with_one_warning_and_a_miss(
    token_server: RunningServer,
    tmp_path: Path,
    logs: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MEMOBUILD_REMOTE_TOKEN", raising=False)
    for n, token in enumerate(("not-the-token", None)):
        logs.clear()
        runner = Runner(tmp_path / f"r{n}", token_server.url, client={"token": token})
        for step in range(4):
            assert runner.cache.get_action(key_of(f"step {step}")) is None
        runner.cache.put_action(make_entry("RUN here"))
        report = runner.close()
        stats = runner.cache.stats
        assert stats.misses == 4
        assert stats.remote_failures == 1  # refused once, then switched off: no retry
        assert stats.retries == 0
        assert report.skipped == 1
        [warning] = warnings_in(logs)
        assert "401" in warning
        assert "switched off" in warning
        assert len(runner.of(RemoteDisabled)) == 1
        assert not any(RW_TOKEN in m or RO_TOKEN in m or "not-the-token" in m for _, m in logs)


def test_a_read_only_token_pulls_but_does_not_push(
    token_server: RunningServer, tmp_path: Path, logs: list[tuple[str, str]]
) -> None:
    writer = Runner(tmp_path / "writer", token_server.url, client={"token": RW_TOKEN})
    entries = stored_run(writer, tmp_path)
    assert writer.close().uploaded == len(entries)
    logs.clear()

    reader = Runner(
        tmp_path / "reader", token_server.url, client={"token": RO_TOKEN}, upload_workers=1
    )
    assert reader.cache.get_action(entries[2].key) == entries[2]
    reader.cache.put_action(make_entry("RUN one"))
    reader.cache.put_action(make_entry("RUN two"))
    deadline = time.monotonic() + 10
    while reader.cache.stats.upload_failures + reader.cache.stats.uploads_skipped < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert reader.cache.get_action(entries[1].key) == entries[1]  # pulls still work
    report = reader.close()
    assert report.uploaded == 0
    assert reader.cache.stats.remote_hits == 2
    [warning] = warnings_in(logs)
    assert "403" in warning
    assert "uploads switched off" in warning
    with RemoteCache(token_server.url, RO_TOKEN, policy=FAST) as check:
        assert not check.has_action(key_of("RUN one"))
    assert not any(RO_TOKEN in m or RW_TOKEN in m for _, m in logs)


# --- background uploads and the end of the build -------------------------------------------


def test_uploads_run_in_the_background_and_finish_before_close(
    server: RunningServer, tmp_path: Path
) -> None:
    with FlakyProxy(upstream(server), Faults(delay=1.0, delay_seconds=1.0)) as proxy:
        runner = Runner(tmp_path / "r", proxy.url, upload_workers=2)
        layers = [make_layer(runner.cache, tmp_path, 100_000, n) for n in range(3)]
        entries = [make_entry(f"RUN {n}", layers[n]) for n in range(3)]
        started = time.monotonic()
        for entry in entries:
            runner.cache.put_action(entry)
        assert time.monotonic() - started < 0.5  # the build did not wait for the network
        with RemoteCache(server.url, policy=FAST) as direct:
            assert not any(direct.has_action(e.key) for e in entries)
        report = runner.close(timeout=60)
    assert (report.uploaded, report.failed, report.unfinished) == (3, 0, ())
    assert runner.cache.close(0) is report  # closing again changes nothing
    with RemoteCache(server.url, policy=FAST) as direct:
        assert all(direct.get_action(e.key) == e for e in entries)


def test_a_blob_two_entries_share_is_uploaded_once(server: RunningServer, tmp_path: Path) -> None:
    # Every connection waits 0.3 s, so both upload workers are in flight at once.
    with FlakyProxy(upstream(server), Faults(delay=1.0, delay_seconds=0.3)) as proxy:
        runner = Runner(tmp_path / "r", proxy.url, upload_workers=2)
        shared = make_layer(runner.cache, tmp_path, 300_000, 21)
        entries = [make_entry(f"RUN {n}", shared) for n in range(2)]
        for entry in entries:
            runner.cache.put_action(entry)
        report = runner.close(timeout=60)
    assert (report.uploaded, report.failed) == (2, 0)
    sent = [e for e in runner.of(RemoteSync) if e.kind == "blob"]
    assert [(e.digest, e.size) for e in sent] == [(shared.digest, shared.size)]
    assert runner.cache.stats.bytes_uploaded == shared.size


def test_close_is_bounded_when_the_server_is_stopped(
    server: RunningServer, tmp_path: Path, logs: list[tuple[str, str]]
) -> None:
    runner = Runner(tmp_path / "r", server.url, client={"timeout": httpx.Timeout(10.0)})
    entries = [make_entry(f"RUN {n}") for n in range(3)]
    assert runner.cache.get_action(entries[0].key) is None  # the connection pool is warm
    os.kill(server.process.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
    try:
        for entry in entries:
            runner.cache.put_action(entry)
        started = time.monotonic()
        report = runner.close(timeout=0.5)
        elapsed = time.monotonic() - started
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert elapsed < 2.0
    assert len(report.unfinished) == 3
    assert set(report.unfinished) == {e.key for e in entries}
    [warning] = warnings_in(logs)
    assert "3 upload(s) did not finish" in warning
    # Everything is still in the local cache: the build lost nothing.
    assert all(runner.local.get_action(e.key) == e for e in entries)


# --- choosing the remote: --cache-from, --cache-to, the environment -----------------------------


def test_open_follows_cache_from_cache_to_and_the_environment(
    server: RunningServer, tmp_path: Path
) -> None:
    a, b, c = (make_entry(f"RUN {name}") for name in "abc")

    both = HybridCache.open(LocalStore(tmp_path / "1"), environ={URL_ENV: server.url})
    both.put_action(a)
    assert both.close().uploaded == 1

    push_only = HybridCache.open(LocalStore(tmp_path / "2"), cache_to=server.url, environ={})
    assert push_only.get_action(a.key) is None  # --cache-to alone never pulls
    push_only.put_action(b)
    assert push_only.close().uploaded == 1

    pull_only = HybridCache.open(LocalStore(tmp_path / "3"), cache_from=server.url, environ={})
    assert pull_only.get_action(a.key) == a
    assert pull_only.get_action(b.key) == b
    pull_only.put_action(c)
    assert pull_only.close().uploaded == 0  # --cache-from alone never pushes

    # Flags win over the environment; with neither there is no remote at all.
    nowhere = f"http://127.0.0.1:{free_port()}"
    flagged = HybridCache.open(
        LocalStore(tmp_path / "4"), cache_from=server.url, environ={URL_ENV: nowhere}
    )
    assert flagged.get_action(a.key) == a
    flagged.close()
    local_only = HybridCache.open(LocalStore(tmp_path / "5"), environ={})
    assert not local_only.remote_enabled
    assert local_only.get_action(a.key) is None
    local_only.close()

    with RemoteCache(server.url, policy=FAST) as direct:
        assert direct.has_action(a.key)
        assert direct.has_action(b.key)
        assert not direct.has_action(c.key)


def test_open_takes_the_token_from_the_environment(
    token_server: RunningServer, tmp_path: Path
) -> None:
    entry = make_entry("RUN with a token")
    env = {URL_ENV: token_server.url, TOKEN_ENV: RW_TOKEN}
    cache = HybridCache.open(LocalStore(tmp_path / "1"), environ=env)
    cache.put_action(entry)
    assert cache.close().uploaded == 1
    reader = HybridCache.open(
        LocalStore(tmp_path / "2"), cache_from=token_server.url, token=RO_TOKEN, environ={}
    )
    assert reader.get_action(entry.key) == entry
    reader.close()
