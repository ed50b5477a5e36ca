"""Real builds sharing a remote cache: the busybox image, real RUN steps, the real ``memobuild
server`` on loopback (tests/server_fixture.py), faults from a real TCP proxy
(tests/flaky_proxy.py) or from the server's own disk and process.

Each "runner" is a CI machine: a cache dir of its own (its own LocalStore, the base image saved
in it) and nothing else in common with the other runners but the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from build_runner import Runner, of, statuses, warnings_in
from busybox_image import image_tree, make_context, scratch_entries
from flaky_proxy import Faults, FlakyProxy
from memobuild.build import events as ev
from memobuild.build.executor import BuildResult, build
from memobuild.build.metrics import MetricsLog
from memobuild.cache.options import CacheOption, parse_cache_option
from memobuild.cache.remote import RemoteCache
from memobuild.commands.options import format_size
from memobuild.commands.progress import PlainProgress, TtyProgress
from memobuild.errors import BuildStepError, InputError
from memobuild.retry import RetryPolicy
from server_fixture import RunningServer, free_port, run_server

RW_TOKEN = "rw-build-token-51d0c7"  # noqa: S105 - a test server's token
WRONG_TOKEN = "wrong-token-7e2a90"  # noqa: S105 - a token the server does not know
FAST = RetryPolicy(max_attempts=3, initial=0.01, cap=0.1)

# The RUN step writes random bytes: a runner that rebuilt it instead of reusing the other's
# layer would make a different image, so equal digests prove the reuse.
DOCKERFILE = """\
FROM busybox
WORKDIR /app
COPY . .
RUN echo "built from $(cat hello.txt)" > out.txt && head -c 200000 /dev/urandom > noise.bin
RUN cat out.txt > copy.txt
CMD ["cat", "/app/out.txt"]
"""
STEPS = 6
RUN_NOISE = 4  # the step number of the RUN that writes noise.bin


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(tmp_path / "server") as running:
        yield running


@pytest.fixture
def context(tmp_path: Path) -> Path:
    return make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries as the defaults make them, only with shorter waits (and no remote from the
    developer's own environment)."""
    monkeypatch.setenv("MEMOBUILD_RETRY_INITIAL", "0.01")
    monkeypatch.setenv("MEMOBUILD_RETRY_CAP", "0.1")
    monkeypatch.delenv("MEMOBUILD_REMOTE_URL", raising=False)
    monkeypatch.delenv("MEMOBUILD_REMOTE_TOKEN", raising=False)


def plain(events: list[ev.BuildEvent]) -> list[str]:
    out = io.StringIO()
    progress = PlainProgress(out)
    for event in events:
        progress(event)
    return out.getvalue().splitlines()


def cache_line(events: list[ev.BuildEvent]) -> str:
    """The summary's line about the caches."""
    [line] = [line for line in plain(events) if line.startswith("cache: ")]
    return line


def blob_files(root: Path) -> list[Path]:
    """Every blob file under a store's (or a server's storage's) ``blobs/``."""
    return [p for p in (root / "blobs").rglob("*") if p.is_file()]


def assert_blobs_verify(root: Path) -> None:
    """Every blob file holds exactly the bytes its name says."""
    for blob in blob_files(root):
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob


# --- two runners, one server -------------------------------------------------------------------


def test_the_second_runner_executes_nothing_and_makes_the_same_image(
    server: RunningServer,
    new_runner: Callable[[], Runner],
    context: Path,
    logs: list[tuple[str, str]],
) -> None:
    first = new_runner()
    built, events = first.build(context, cache_to=server.url)
    assert built.executed == STEPS
    assert built.uploads == STEPS  # every step's entry, config-only steps included
    assert built.cache_stats is not None and built.cache_stats.upload_failures == 0
    done = events[-1]
    assert isinstance(done, ev.BuildFinished)
    assert (done.remote_cache, done.uploads, done.remote_hits) == (True, STEPS, 0)
    assert done.bytes_uploaded == sum(layer.size for s in built.steps for layer in s.layers)
    # --cache-to alone never asks the server: every lookup was a local miss.
    assert len(of(events, ev.CacheMiss)) == STEPS and not of(events, ev.CacheHit)
    assert cache_line(events) == (
        f"cache: 0 local hits, 0 remote hits, {STEPS} uploads ({format_size(done.bytes_uploaded)})"
    )

    second = new_runner()
    again, events = second.build(context, cache_from=server.url)
    assert again.executed == 0
    assert statuses(again) == [("cached", "remote")] * STEPS
    assert again.digest == built.digest
    assert (again.remote_hits, again.local_hits, again.uploads) == (STEPS, 0, 0)
    assert [e.tier for e in of(events, ev.CacheHit)] == ["remote"] * STEPS
    assert [e.tier for e in of(events, ev.StepCached)] == ["remote"] * STEPS
    downloads = [e for e in of(events, ev.RemoteSync) if e.kind == "blob"]
    assert {e.direction for e in downloads} == {"download"}
    noise = again.steps[RUN_NOISE - 1].layers[0]
    assert noise.digest in {e.digest for e in downloads}
    done = events[-1]
    assert isinstance(done, ev.BuildFinished)
    assert (done.cached, done.remote_hits, done.local_hits) == (STEPS, STEPS, 0)
    assert done.bytes_downloaded == sum(e.size for e in downloads) > 200_000

    # What people see: the remote hits marked, and the summary's cache line.
    lines = plain(events)
    assert f"#{RUN_NOISE} CACHED (remote) {again.steps[RUN_NOISE - 1].text}" in lines
    assert "#2 CACHED (remote) WORKDIR /app" in lines
    assert cache_line(events) == (
        f"cache: 0 local hits, {STEPS} remote hits ({format_size(done.bytes_downloaded)} "
        "downloaded), 0 uploads"
    )
    screen = io.StringIO()
    tty = TtyProgress(Console(file=screen, force_terminal=True, width=120), refresh_per_second=1)
    for event in events:
        tty(event)
    tty.close()
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", screen.getvalue())
    assert " => CACHED (remote) #2 WORKDIR /app" in drawn

    # Runner 2 really has it all, verified, in its own cache dir: the image unpacks.
    tree = image_tree(second.store, again.image, second.root / "tree")
    assert (tree / "app" / "out.txt").read_text() == "built from hi\n"
    assert_blobs_verify(second.cache_dir)

    # The next build on runner 2 answers locally and downloads nothing.
    local, events = second.build(context, cache_from=server.url)
    assert statuses(local) == [("cached", "local")] * STEPS
    assert (local.local_hits, local.remote_hits) == (STEPS, 0)
    assert not of(events, ev.RemoteSync)
    # And `memobuild stats` has the tiers of every build.
    logged = MetricsLog(second.store).read()
    assert [(r.metrics.remote_hits, r.metrics.local_hits) for r in logged] == [
        (STEPS, 0),
        (0, STEPS),
    ]
    assert warnings_in(logs) == []


def test_a_warm_local_cache_is_uploaded_whole_with_cache_to(
    server: RunningServer, new_runner: Callable[[], Runner], context: Path
) -> None:
    runner = new_runner()
    built, _ = runner.build(context)  # no remote: a laptop's cache
    assert built.cache_stats is None and built.executed == STEPS

    exported, events = runner.build(context, cache_to=server.url)
    assert statuses(exported) == [("cached", "local")] * STEPS
    assert exported.uploads == STEPS  # local hits the server lacked: uploaded all the same
    with RemoteCache(server.url, policy=FAST) as remote:
        assert all(remote.has_action(step.key) for step in built.steps)
        assert all(remote.has_blob(layer.digest) for s in built.steps for layer in s.layers)
    assert isinstance(events[-1], ev.BuildFinished) and events[-1].uploads == STEPS

    # Once the server has it all, a build checks (HEAD) and uploads nothing.
    again, _ = runner.build(context, cache_to=server.url)
    assert again.uploads == 0
    assert again.cache_stats is not None and again.cache_stats.blobs_uploaded == 0

    other = new_runner()
    pulled, _ = other.build(context, cache_from=server.url)
    assert pulled.executed == 0 and pulled.digest == built.digest


# --- the remote misbehaves -------------------------------------------------------------------


def test_a_blob_corrupted_on_the_server_is_detected_and_the_step_rebuilt(
    server: RunningServer,
    new_runner: Callable[[], Runner],
    context: Path,
    logs: list[tuple[str, str]],
) -> None:
    first = new_runner()
    built, _ = first.build(context, cache_to=server.url)
    [layer] = built.steps[RUN_NOISE - 1].layers
    blob = server.blob_file(layer.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x40  # same size, one bit off
    blob.write_bytes(bytes(data))
    corrupt = hashlib.sha256(bytes(data)).hexdigest()

    second = new_runner()
    rebuilt, events = second.build(context, cache_from=server.url)
    # The steps before it and after it come from the server; it alone ran again.
    assert statuses(rebuilt) == [
        ("cached", "remote"),
        ("cached", "remote"),
        ("cached", "remote"),
        ("executed", None),
        ("cached", "remote"),
        ("cached", "remote"),
    ]
    [failure] = of(events, ev.RemoteIntegrityFailure)
    assert failure.digest == layer.digest and failure.url == server.url
    assert rebuilt.metrics.integrity_failures == 1
    done = events[-1]
    assert isinstance(done, ev.BuildFinished) and done.integrity_failures == 1
    assert cache_line(events).endswith("; 1 integrity failure (discarded, rebuilt)")
    [warning] = warnings_in(logs)
    assert layer.digest in warning and "rebuilt" in warning
    # The corrupt bytes never reached runner 2's store, under any name; what it has verifies.
    assert not any(p.name == corrupt for p in blob_files(second.cache_dir))
    assert_blobs_verify(second.cache_dir)
    assert not scratch_entries(second.cache_dir)  # the build's scratch, removed in the background
    assert not [p for p in (second.cache_dir / "tmp").rglob("*") if p.is_file()]
    # The rebuilt step made its own noise, so runner 2's image has its own layer there.
    assert rebuilt.steps[RUN_NOISE - 1].layers[0].digest != layer.digest
    tree = image_tree(second.store, rebuilt.image, second.root / "tree")
    assert (tree / "app" / "copy.txt").read_text() == "built from hi\n"


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed into place, or removed, since it was listed
        return 0


class SlowUploads:
    """A TCP relay on 127.0.0.1 to ``port`` that passes what clients send at ``rate`` bytes a
    second (answers go back at full speed): a big upload takes long enough to be cut off."""

    def __init__(self, port: int, rate: float) -> None:
        self.port = port
        self.rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.port))
        except OSError:  # the server is gone: the client sees its connection closed
            client.close()
            return
        threading.Thread(target=self._pipe, args=(upstream, client, 0.0), daemon=True).start()
        self._pipe(client, upstream, self.rate)

    @staticmethod
    def _pipe(source: socket.socket, dest: socket.socket, rate: float) -> None:
        try:
            while chunk := source.recv(1 << 16):
                dest.sendall(chunk)
                if rate:
                    time.sleep(len(chunk) / rate)
        except OSError:
            pass
        finally:  # one side ended: end both, so the other direction stops too
            for sock in (source, dest):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def test_a_server_killed_mid_upload_keeps_no_partial_blob_and_the_build_succeeds(
    tmp_path: Path, new_runner: Callable[[], Runner], logs: list[tuple[str, str]]
) -> None:
    big = 16 << 20
    dockerfile = (
        f"FROM busybox\nRUN echo small > /small.txt\nRUN head -c {big} /dev/urandom > /big.bin\n"
    )
    context = make_context(tmp_path / "big-ctx", dockerfile)
    storage = tmp_path / "storage"
    runner = new_runner()
    outcome: dict[str, Any] = {}

    def run(url: str) -> None:
        try:
            outcome["result"] = runner.build(context, cache_to=url)[0]
        except BaseException as err:  # reported by the test below
            outcome["error"] = err

    partial: list[Path] = []
    with run_server(tmp_path / "server1", storage=storage) as server:
        relay = SlowUploads(server.port, rate=8 << 20)  # the big layer takes ~2 s to send
        thread = threading.Thread(target=run, args=(relay.url,))
        thread.start()
        # Kill the server (SIGKILL: no clean-up) while the big layer streams into its tmp/.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and thread.is_alive() and not partial:
            partial = [p for p in (storage / "tmp").glob("*") if _size_of(p) > (1 << 20)]
            time.sleep(0.005)
        server.kill()
        thread.join(120)
        relay.close()
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert partial, "the big upload was never seen in progress"
    result: BuildResult = outcome["result"]
    [big_layer] = result.steps[2].layers
    assert big_layer.size > big  # random bytes do not compress

    assert result.executed == 3
    assert result.cache_stats is not None
    assert (result.cache_stats.uploads, result.cache_stats.upload_failures) == (2, 1)
    [warning] = warnings_in(logs)
    assert "remote cache" in warning and "failed" in warning
    # On the server: no blob under the big layer's name, and every blob there is whole.
    assert big_layer.digest.split(":")[1] not in {p.name for p in blob_files(storage)}
    assert_blobs_verify(storage)

    # Restarted on the same storage, the server holds only what was complete: runner 2 gets the
    # finished steps from it and builds the rest.
    with run_server(tmp_path / "server2", storage=storage) as server:
        with RemoteCache(server.url, policy=FAST) as remote:
            assert not remote.has_blob(big_layer.digest)
            assert not remote.has_action(result.steps[2].key)
        second = new_runner()
        again, _ = second.build(context, cache_from=server.url)
    assert statuses(again) == [("cached", "remote"), ("cached", "remote"), ("executed", None)]


def test_a_server_down_for_the_whole_build_costs_one_warning_and_seconds(
    new_runner: Callable[[], Runner], context: Path, logs: list[tuple[str, str]]
) -> None:
    alone = new_runner()
    started = time.monotonic()
    alone.build(context)
    local_only = time.monotonic() - started

    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    runner = new_runner()
    started = time.monotonic()
    result, events = runner.build(context, cache_from=nowhere, cache_to=nowhere)
    elapsed = time.monotonic() - started
    assert result.executed == STEPS
    assert elapsed < local_only + 5
    [warning] = warnings_in(logs)
    assert "switched off" in warning and "could not connect" in warning
    assert len(of(events, ev.RemoteDisabled)) == 1
    assert result.cache_stats is not None and result.cache_stats.remote_disabled
    assert result.cache_stats.remote_failures == 1
    assert cache_line(events).endswith("; remote switched off")

    # The next build on that runner hits its local cache, with the same one warning.
    logs.clear()
    again, _ = runner.build(context, cache_from=nowhere, cache_to=nowhere)
    assert statuses(again) == [("cached", "local")] * STEPS
    assert len(warnings_in(logs)) == 1


def test_a_flaky_server_is_survived_through_retries(
    server: RunningServer,
    new_runner: Callable[[], Runner],
    context: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEMOBUILD_RETRY_MAX_ATTEMPTS", "8")
    monkeypatch.setenv("MEMOBUILD_RETRY_CAP", "0.05")
    faults = Faults(drop=0.05, reset=0.05, delay=0.1, cut=0.05, busy=0.05, cut_after=200)
    # The first connections are dealt one fault each (the first operation needs 5 attempts,
    # of the 8 it may make); the dice deal the rest.
    script = ["drop", "reset", "busy", "cut", "delay"]
    with FlakyProxy(("127.0.0.1", server.port), faults, seed=7, script=script) as proxy:
        first = new_runner()
        built, _ = first.build(context, cache_to=proxy.url)
        second = new_runner()
        pulled, _ = second.build(context, cache_from=proxy.url)
    assert built.uploads == STEPS
    assert pulled.executed == 0 and pulled.digest == built.digest
    stats = [r.cache_stats for r in (built, pulled)]
    assert all(s is not None for s in stats)
    assert sum(s.retries for s in stats if s is not None) > 0
    assert all(s.remote_failures == 0 and not s.remote_disabled for s in stats if s is not None)
    assert {"drop", "reset", "busy", "cut", "delay"} <= {f for f, n in proxy.fates.items() if n}


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[RunningServer]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{RW_TOKEN} rw\n")
    with run_server(tmp_path / "server", token_file=tokens) as running:
        yield running


def test_a_wrong_token_costs_one_warning_and_the_build_succeeds(
    token_server: RunningServer,
    new_runner: Callable[[], Runner],
    context: Path,
    logs: list[tuple[str, str]],
) -> None:
    runner = new_runner()
    result, events = runner.build(
        context, cache_from=token_server.url, cache_to=token_server.url, remote_token=WRONG_TOKEN
    )
    assert result.executed == STEPS and result.uploads == 0
    [warning] = warnings_in(logs)
    assert "401" in warning and "switched off" in warning
    assert not any(WRONG_TOKEN in message for _, message in logs)
    assert len(of(events, ev.RemoteDisabled)) == 1
    with RemoteCache(token_server.url, RW_TOKEN, policy=FAST) as remote:
        assert not remote.has_action(result.steps[-1].key)


def test_a_failed_build_still_uploads_the_steps_it_finished(
    server: RunningServer, new_runner: Callable[[], Runner], tmp_path: Path
) -> None:
    context = make_context(
        tmp_path / "failing", "FROM busybox\nRUN echo ok > /ok.txt\nRUN echo no; exit 3\n"
    )
    runner = new_runner()
    events: list[ev.BuildEvent] = []
    with pytest.raises(BuildStepError):
        build(context, store=runner.store, on_event=events.append, cache_to=server.url)
    finished = {e.step: e.key for e in of(events, ev.StepExecuted)}
    assert sorted(finished) == [1, 2]
    with RemoteCache(server.url, policy=FAST) as remote:
        assert all(remote.has_action(key) for key in finished.values())
    assert isinstance(events[-1], ev.BuildFailed)
    [record] = MetricsLog(runner.store).read()
    assert (record.status, record.metrics.uploads) == ("failed", 2)


# --- the spellings: options, the CLI, the environment ------------------------------------------


def test_cache_options_take_buildx_spellings() -> None:
    url = "http://cache.example:8080"
    assert parse_cache_option(url) == CacheOption("memobuild", url)
    assert parse_cache_option(f"type=memobuild,url={url}") == CacheOption("memobuild", url)
    assert parse_cache_option(f' type=memobuild, "url={url}/ci"') == CacheOption(
        "memobuild", f"{url}/ci"
    )
    for bad, message in (
        ("", "empty"),
        ("cache.example:8080", "key=value"),
        (f"url={url}", "no type= given"),
        ("type=s3,bucket=x", "unknown cache type 's3'"),
        ("type=memobuild", "needs url="),
        (f"type=memobuild,url={url},mode=max", "only url="),
        (f"type=memobuild,url={url},url={url}", "given twice"),
        ("ftp://cache.example/x", "not a memobuild cache URL"),
        ("http://user:secret@cache.example", "must not hold credentials"),
        ("http://cache.example:port", "invalid URL"),
    ):
        with pytest.raises(InputError, match=message) as caught:
            parse_cache_option(bad, "--cache-to")
        assert str(caught.value).startswith("--cache-to")
        assert "secret" not in str(caught.value)


def memobuild_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEMOBUILD_REMOTE_")}
    return subprocess.run(
        ["memobuild", *args], capture_output=True, text=True, check=False, env={**clean, **env}
    )


def test_the_cli_flags_and_environment(
    token_server: RunningServer, new_runner: Callable[[], Runner], context: Path
) -> None:
    url = token_server.url
    token = {"MEMOBUILD_REMOTE_TOKEN": RW_TOKEN}
    one, two, three = (new_runner() for _ in range(3))
    for runner in (one, two, three):
        runner.close()  # the CLI opens the cache dir itself

    pushed = memobuild_cli(
        "build",
        str(context),
        "--cache-to",
        url,
        "--progress=plain",
        env={"MEMOBUILD_CACHE_DIR": str(one.cache_dir), **token},
    )
    assert pushed.returncode == 0, pushed.stderr
    digest = pushed.stdout.strip()
    assert f"cache: 0 local hits, 0 remote hits, {STEPS} uploads (" in pushed.stderr
    assert "WARNING" not in pushed.stderr

    pulled = memobuild_cli(
        "build",
        str(context),
        "--cache-from",
        f"type=memobuild,url={url}",
        "--progress=json",
        env={"MEMOBUILD_CACHE_DIR": str(two.cache_dir), **token},
    )
    assert pulled.returncode == 0, pulled.stderr
    rows = [json.loads(line) for line in pulled.stdout.splitlines()]
    kinds = [row["event"] for row in rows]
    assert kinds[0] == "BuildStarted" and kinds[-1] == "BuildFinished"
    assert "StepStarted" not in kinds
    assert [r["tier"] for r in rows if r["event"] == "CacheHit"] == ["remote"] * STEPS
    assert [r["tier"] for r in rows if r["event"] == "StepCached"] == ["remote"] * STEPS
    synced = [r for r in rows if r["event"] == "RemoteSync"]
    assert synced and all(r["direction"] == "download" and r["duration"] >= 0 for r in synced)
    assert sum(r["size"] for r in synced if r["kind"] == "blob") > 200_000
    finished = rows[-1]
    assert finished["image_digest"] == digest
    assert (finished["remote_hits"], finished["local_hits"], finished["executed"]) == (
        STEPS,
        0,
        0,
    )
    assert finished["remote_cache"] is True

    # $MEMOBUILD_REMOTE_URL: both directions, with the token from $MEMOBUILD_REMOTE_TOKEN.
    shared = memobuild_cli(
        "build",
        str(context),
        "--progress=plain",
        env={"MEMOBUILD_CACHE_DIR": str(three.cache_dir), "MEMOBUILD_REMOTE_URL": url, **token},
    )
    assert shared.returncode == 0, shared.stderr
    assert shared.stdout.strip() == digest
    err = shared.stderr.splitlines()
    assert "#2 CACHED (remote) WORKDIR /app" in err
    assert any(line.startswith(f"cache: 0 local hits, {STEPS} remote hits (") for line in err)

    # Malformed values are usage errors, found before anything runs.
    env = {"MEMOBUILD_CACHE_DIR": str(one.cache_dir)}
    for args, message in (
        (["--cache-from", "type=nonsense"], "unknown cache type 'nonsense'"),
        (["--cache-to", url, "--cache-to", url], "--cache-to may be given once"),
        (["--cache-from", "http://u:p@h:1"], "must not hold credentials"),
    ):
        refused = memobuild_cli("build", str(context), *args, env=env)
        assert refused.returncode == 2, refused.stderr
        assert message in refused.stderr.splitlines()[-1]
        assert " DONE " not in refused.stderr
    bad_env = memobuild_cli("build", str(context), env={**env, "MEMOBUILD_REMOTE_URL": "x"})
    assert bad_env.returncode == 2
    assert "MEMOBUILD_REMOTE_URL" in bad_env.stderr

    shown = memobuild_cli("build", "--help", env={})
    text = " ".join(shown.stdout.split())
    for flag in (
        "--cache-from URL",
        "--cache-to URL",
        "MEMOBUILD_REMOTE_URL",
        "MEMOBUILD_REMOTE_TOKEN",
    ):
        assert flag in text, flag


NOT_LOADED = """\
import sys
from memobuild.cli import main
code = main(["build", sys.argv[1]])
loaded = sorted(
    m for m in sys.modules
    if m.split(".")[0] == "httpx" or m in ("memobuild.cache.hybrid", "memobuild.cache.remote")
)
print(code, " ".join(loaded))
"""


def test_a_local_build_never_loads_the_http_client(
    new_runner: Callable[[], Runner], context: Path
) -> None:
    runner = new_runner()
    runner.build(context)
    runner.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMOBUILD_REMOTE_")}
    env["MEMOBUILD_CACHE_DIR"] = str(runner.cache_dir)

    def loaded(**extra: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", NOT_LOADED, str(context)],
            capture_output=True,
            text=True,
            check=False,
            env={**env, **extra},
        )
        code, *modules = done.stdout.splitlines()[-1].split()  # after the image digest
        assert code == "0", done.stderr
        return modules

    assert loaded() == []  # a no-change rebuild, local only
    # With a remote configured (here one that is down), they are loaded: the check above can
    # see them.
    with_remote = loaded(MEMOBUILD_REMOTE_URL=f"http://127.0.0.1:{free_port()}")
    assert "httpx" in with_remote and "memobuild.cache.hybrid" in with_remote
