"""`memobuild server` against real clients: every test starts the real server on 127.0.0.1 (see
server_fixture.py) and talks HTTP to it, or raw TCP where a client must misbehave."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from memobuild.cache.entries import ActionEntry, LayerRef, decode_action, encode_action
from server_fixture import RunningServer, free_port, run_server, server_command

RW_TOKEN = "rw-token-0123456789abcdef"  # noqa: S105 - a test's token
RO_TOKEN = "ro-token-0123456789abcdef"  # noqa: S105 - a test's token


# --- a small HTTP client -----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def call(
    server: RunningServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        return Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put_blob(server: RunningServer, data: bytes, **kwargs) -> Reply:
    return call(server, "PUT", f"/v1/blobs/{sha256(data)}", data, **kwargs)


def entry_for(key_seed: bytes, blobs: list[bytes]) -> ActionEntry:
    key = "blake3:" + hashlib.blake2s(key_seed).hexdigest()  # any 64 hex digits
    layers = tuple(
        LayerRef(digest=sha256(b), diff_id=sha256(b + b"tar"), size=len(b)) for b in blobs
    )
    return ActionEntry(
        key=key,
        layers=layers,
        config={"Env": ["A=1"]},
        preimage=(("parent", "blake3:" + "0" * 64),),
        created=1700000000.0,
        duration=1.5,
    )


def stored_files(storage: Path) -> list[Path]:
    """Every blob and action entry file in a server's storage."""
    return [p for d in ("blobs", "actions") for p in (storage / d).rglob("*") if p.is_file()]


def temp_files(storage: Path) -> list[Path]:
    return [p for p in (storage / "tmp").iterdir() if p.is_file()]


def metric_samples(server: RunningServer, token: str | None = None) -> dict[tuple, float]:
    reply = call(server, "GET", "/metrics", token=token)
    assert reply.status == 200
    samples: dict[tuple, float] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict[tuple, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def server(tmp_path: Path):
    with run_server(tmp_path / "server") as running:
        yield running


# --- blobs -------------------------------------------------------------------------------------


def test_blob_round_trip(server: RunningServer) -> None:
    data = os.urandom(3 << 20)  # streamed in batches, not read whole
    digest = sha256(data)
    first = put_blob(server, data)
    assert first.status == 201, first.body
    assert first.json() == {"digest": digest, "size": len(data)}

    head = call(server, "HEAD", f"/v1/blobs/{digest}")
    assert head.status == 200
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["x-memobuild-digest"] == digest
    assert head.body == b""

    got = call(server, "GET", f"/v1/blobs/{digest}")
    assert got.status == 200
    assert got.body == data

    assert put_blob(server, data).status == 200  # already stored

    small = b"a small blob"
    assert put_blob(server, small).status == 201
    assert call(server, "GET", f"/v1/blobs/{sha256(small)}").body == small

    # On disk: the local store's layout, private.
    path = server.blob_file(digest)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (path.parent, server.storage / "blobs", server.storage / "tmp"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert temp_files(server.storage) == []


def test_missing_and_malformed_blob_digests(server: RunningServer) -> None:
    absent = "sha256:" + "ab" * 32
    assert call(server, "GET", f"/v1/blobs/{absent}").status == 404
    assert call(server, "HEAD", f"/v1/blobs/{absent}").status == 404
    for bad in ("sha256:XYZ", "md5:" + "a" * 32, "blake3:" + "a" * 64, "sha256:..%2F..%2Fx"):
        reply = call(server, "PUT", f"/v1/blobs/{bad}", b"x")
        assert reply.status == 400, bad
        assert call(server, "GET", f"/v1/blobs/{bad}").status == 400
    assert stored_files(server.storage) == []


@pytest.mark.parametrize("size", [100, 2 << 20])  # the small path and the streamed one
def test_wrong_digest_is_refused_and_nothing_stored(server: RunningServer, size: int) -> None:
    data = os.urandom(size)
    claimed = sha256(b"something else")
    reply = call(server, "PUT", f"/v1/blobs/{claimed}", data)
    assert reply.status == 400
    body = reply.json()
    assert body["error"] == "digest mismatch"
    assert body["expected"] == claimed
    assert body["actual"] == sha256(data)
    assert body["size"] == size
    assert stored_files(server.storage) == []
    assert temp_files(server.storage) == []
    assert call(server, "HEAD", f"/v1/blobs/{claimed}").status == 404
    assert call(server, "HEAD", f"/v1/blobs/{sha256(data)}").status == 404


def test_declared_size_mismatch_is_refused(server: RunningServer) -> None:
    data = os.urandom(1000)
    reply = put_blob(server, data, headers={"X-MemoBuild-Size": "999"})
    assert reply.status == 400
    body = reply.json()
    assert body["error"] == "size mismatch"
    assert body["expected"] == body["actual"] == sha256(data)
    assert (body["size"], body["declared_size"]) == (1000, 999)
    assert stored_files(server.storage) == []
    assert put_blob(server, data, headers={"X-MemoBuild-Size": "1000"}).status == 201


def test_chunked_upload_needs_content_length(server: RunningServer) -> None:
    data = b"chunked body"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("PUT", f"/v1/blobs/{sha256(data)}", body=iter([data]), encode_chunked=True)
        assert conn.getresponse().status == 411
    finally:
        conn.close()
    assert stored_files(server.storage) == []


def test_range_requests(server: RunningServer) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    digest = sha256(data)
    assert put_blob(server, data).status == 201
    path = f"/v1/blobs/{digest}"

    part = call(server, "GET", path, headers={"Range": "bytes=10-19"})
    assert part.status == 206
    assert part.body == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"

    tail = call(server, "GET", path, headers={"Range": "bytes=-100"})
    assert (tail.status, tail.body) == (206, data[-100:])
    rest = call(server, "GET", path, headers={"Range": "bytes=10000-"})
    assert (rest.status, rest.body) == (206, data[10000:])
    clipped = call(server, "GET", path, headers={"Range": "bytes=10200-99999"})
    assert (clipped.status, clipped.body) == (206, data[10200:])

    beyond = call(server, "GET", path, headers={"Range": "bytes=20000-"})
    assert beyond.status == 416
    assert beyond.headers["content-range"] == f"bytes */{len(data)}"
    ignored = call(server, "GET", path, headers={"Range": "bytes=5-1,7-9"})  # not one range
    assert (ignored.status, ignored.body) == (200, data)


def test_oversized_blob_is_refused_with_413(tmp_path: Path) -> None:
    with run_server(tmp_path, extra_args=["--max-blob-size", "1M"]) as server:
        data = os.urandom((1 << 20) + 1)
        assert put_blob(server, data).status == 413
        assert stored_files(server.storage) == []

        # With Expect: 100-continue the refusal comes before a byte of the body is sent.
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                f"PUT /v1/blobs/{sha256(data)} HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {len(data)}\r\nExpect: 100-continue\r\n\r\n".encode()
            )
            status_line = sock.recv(4096).split(b"\r\n", 1)[0]
        assert status_line == b"HTTP/1.1 413 Request Entity Too Large"

        assert put_blob(server, os.urandom(1 << 20)).status == 201


# --- action entries ----------------------------------------------------------------------------


def test_action_put_is_validated(server: RunningServer) -> None:
    layer = os.urandom(5000)
    entry = entry_for(b"step-1", [layer])
    path = f"/v1/actions/{entry.key}"

    for junk in (b"\xc1not msgpack", msgpack.packb({"format": "something"}), b""):
        reply = call(server, "PUT", path, junk)
        assert reply.status == 400, junk
        assert reply.json()["error"] == "invalid action entry"

    # A flipped bit in the body fails the envelope's checksum.
    good = encode_action(entry)
    flipped = bytearray(good)
    flipped[-5] ^= 1
    assert call(server, "PUT", path, bytes(flipped)).status == 400

    missing = call(server, "PUT", path, good)
    assert missing.status == 409
    assert missing.json() == {"error": "missing blobs", "missing": [sha256(layer)]}
    assert not server.action_file(entry.key).exists()

    assert put_blob(server, layer).status == 201
    other_key = "blake3:" + "1" * 64
    mismatch = call(server, "PUT", f"/v1/actions/{other_key}", good)
    assert mismatch.status == 400
    assert mismatch.json() == {"error": "key mismatch", "expected": other_key, "actual": entry.key}

    assert call(server, "PUT", path, good).status == 201
    assert call(server, "PUT", path, good).status == 200
    got = call(server, "GET", path)
    assert got.status == 200
    assert decode_action(got.body, "response", entry.key) == entry
    head = call(server, "HEAD", path)
    assert (head.status, head.headers["content-length"]) == (200, str(len(got.body)))
    assert call(server, "GET", f"/v1/actions/{other_key}").status == 404
    assert call(server, "GET", "/v1/actions/sha256:" + "1" * 64).status == 400


def test_action_whose_blob_is_gone_is_a_miss(server: RunningServer) -> None:
    layers = [os.urandom(2000), os.urandom(3000)]
    entry = entry_for(b"step-2", layers)
    for layer in layers:
        assert put_blob(server, layer).status == 201
    assert call(server, "PUT", f"/v1/actions/{entry.key}", encode_action(entry)).status == 201
    assert call(server, "GET", f"/v1/actions/{entry.key}").status == 200

    server.blob_file(sha256(layers[1])).unlink()
    assert call(server, "GET", f"/v1/actions/{entry.key}").status == 404
    assert call(server, "HEAD", f"/v1/actions/{entry.key}").status == 404

    # A blob of the wrong size on disk is as good as gone.
    server.blob_file(sha256(layers[0])).write_bytes(b"short")
    assert put_blob(server, layers[1]).status == 201
    assert call(server, "GET", f"/v1/actions/{entry.key}").status == 404
    assert put_blob(server, layers[0]).status == 200  # the re-upload heals it
    assert call(server, "GET", f"/v1/actions/{entry.key}").status == 200


# --- auth --------------------------------------------------------------------------------------


def test_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# CI runners\n{RW_TOKEN} rw\n\n{RO_TOKEN} ro\n")
    tokens.chmod(0o600)
    data = b"guarded blob"
    path = f"/v1/blobs/{sha256(data)}"
    with run_server(tmp_path / "srv", token_file=tokens) as server:
        missing = call(server, "PUT", path, data)
        assert missing.status == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert call(server, "GET", path).status == 401
        wrong = call(server, "GET", path, token=RW_TOKEN[:-1] + "X")
        assert wrong.status == 401
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        assert (
            call(server, "GET", path, headers={"Authorization": f"Basic {RW_TOKEN}"}).status == 401
        )

        read_only = call(server, "PUT", path, data, token=RO_TOKEN)
        assert read_only.status == 403
        assert 'error="insufficient_scope"' in read_only.headers["www-authenticate"]
        assert stored_files(server.storage) == []

        assert call(server, "PUT", path, data, token=RW_TOKEN).status == 201
        assert call(server, "GET", path, token=RO_TOKEN).body == data
        assert call(server, "GET", path, token=RW_TOKEN).body == data

        assert call(server, "GET", "/healthz").status == 200  # probes need no token
        assert call(server, "GET", "/metrics").status == 401
        assert call(server, "GET", "/metrics", token=RO_TOKEN).status == 200


def test_bad_token_files_are_refused(tmp_path: Path) -> None:
    cases = {
        "short": "abc rw\n",
        "no-access": f"{RW_TOKEN}\n",
        "bad-access": f"{RW_TOKEN} admin\n",
        "twice": f"{RW_TOKEN} rw\n{RW_TOKEN} ro\n",
        "empty": "# nothing\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        cmd = server_command(tmp_path / "storage", free_port(), token_file=path)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (name, done.stderr)
        assert str(path) in done.stderr, name


def test_non_loopback_bind_needs_tokens(tmp_path: Path) -> None:
    cmd = server_command(tmp_path / "storage", free_port(), host="0.0.0.0")  # noqa: S104 - refused
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "without --token-file" in done.stderr
    assert not (tmp_path / "storage").exists()  # refused before touching anything

    tokens = tmp_path / "tokens"
    tokens.write_text(f"{RW_TOKEN} rw\n")
    tokens.chmod(0o600)
    with run_server(tmp_path, token_file=tokens, extra_args=["--host", "0.0.0.0"]) as server:  # noqa: S104 - allowed with tokens
        assert call(server, "PUT", "/v1/blobs/" + sha256(b"x"), b"x").status == 401
        assert "bearer tokens required" in server.logs()


def test_unauthenticated_loopback_says_so(server: RunningServer) -> None:
    assert "without authentication, on loopback only" in server.logs()


# --- crashes and misbehaving clients -----------------------------------------------------------


def test_server_killed_mid_upload_leaves_no_partial_blob(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    data = os.urandom(32 << 20)
    digest = sha256(data)
    with run_server(tmp_path / "first", storage=storage) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(
            f"PUT /v1/blobs/{digest} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        sock.sendall(data[: 8 << 20])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the upload is being written to disk
            if any(p.stat().st_size > 0 for p in temp_files(storage)):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the upload never reached the storage's tmp/")
        server.kill()
        sock.close()
        assert stored_files(storage) == []
        assert temp_files(storage) != []  # what the crash left behind...

    with run_server(tmp_path / "second", storage=storage) as server:
        assert temp_files(storage) == []  # ...is removed when the server starts again
        assert call(server, "HEAD", f"/v1/blobs/{digest}").status == 404
        assert call(server, "GET", f"/v1/blobs/{digest}").status == 404
        assert put_blob(server, data).status == 201


def _read_response_status(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """The status line the server answered with (b"" if it just closed), and when."""
    sock.settimeout(timeout)
    received = b""
    try:
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    except TimeoutError:
        pytest.fail("the server kept waiting for a stalled client")
    return received.split(b"\r\n", 1)[0], time.monotonic()


def test_slow_clients_are_timed_out(tmp_path: Path) -> None:
    with run_server(tmp_path, extra_args=["--timeout", "1s"]) as server:
        # A body that stops arriving: 408, connection closed, nothing kept.
        data = os.urandom(4 << 20)
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                f"PUT /v1/blobs/{sha256(data)} HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
            )
            sock.sendall(data[: 2 << 20])
            started = time.monotonic()
            status, answered = _read_response_status(sock, timeout=20)
            assert status == b"HTTP/1.1 408 Request Timeout"
            assert 0.8 < answered - started < 10
        assert stored_files(server.storage) == []
        assert temp_files(server.storage) == []

        # Headers that never finish: the connection is closed.
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"PUT /v1/blobs/sha256:" + b"a" * 64 + b" HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            status, answered = _read_response_status(sock, timeout=20)
            assert answered - started < 10

        # The server is still fine for everyone else.
        assert put_blob(server, data).status == 201


def test_client_gone_mid_upload_leaves_nothing(server: RunningServer) -> None:
    data = os.urandom(4 << 20)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            f"PUT /v1/blobs/{sha256(data)} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        sock.sendall(data[: 3 << 20])
    deadline = time.monotonic() + 20
    while "incomplete body" not in server.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"PUT {sha256(data)}: incomplete body" in server.logs()
    assert temp_files(server.storage) == []
    assert stored_files(server.storage) == []
    assert put_blob(server, data).status == 201


# --- eviction ----------------------------------------------------------------------------------


def _stored_bytes(storage: Path) -> int:
    total = 0
    for path in stored_files(storage):
        with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
            total += path.stat().st_size
    return total


def test_eviction_keeps_storage_under_max_size_while_clients_read(tmp_path: Path) -> None:
    max_size = 40 << 20
    with run_server(tmp_path, max_size="40M") as server:
        big = os.urandom(16 << 20)
        big_digest = sha256(big)
        assert put_blob(server, big).status == 201

        # A slow reader starts on the big blob and stops after 64 KiB, its transfer in flight.
        reader = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        reader.sendall(f"GET /v1/blobs/{big_digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = reader.recv(64 << 10)
        head, _, first = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")

        # Fast readers keep fetching recent blobs while a writer fills the store past its limit.
        recent: list[bytes] = []
        errors: list[str] = []
        stop = threading.Event()

        def read_recent() -> None:
            while not stop.is_set():
                if not recent:
                    time.sleep(0.01)
                    continue
                blob = recent[-1]
                got = call(server, "GET", f"/v1/blobs/{sha256(blob)}")
                if got.status == 200 and got.body != blob:
                    errors.append("a read returned wrong bytes")
                elif got.status not in (200, 404):
                    errors.append(f"a read got {got.status}")

        threads = [threading.Thread(target=read_recent) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(40):
                blob = os.urandom(1 << 20)
                assert put_blob(server, blob).status == 201
                recent.append(blob)
                assert _stored_bytes(server.storage) <= max_size
                # The blob being read is the least recently used, yet it stays.
                assert server.blob_file(big_digest).exists()
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert errors == []

        # The slow reader gets every byte, intact.
        rest = bytearray(first)
        while len(rest) < len(big):
            chunk = reader.recv(1 << 20)
            assert chunk, "the transfer was cut off"
            rest += chunk
        reader.close()
        assert bytes(rest) == big

        # Once nobody reads it, the big blob is the next to go.
        for _ in range(5):
            assert put_blob(server, os.urandom(1 << 20)).status == 201
            if not server.blob_file(big_digest).exists():
                break
            time.sleep(0.1)
        assert not server.blob_file(big_digest).exists()
        assert _stored_bytes(server.storage) <= max_size
        samples = metric_samples(server)
        # 16 MiB of small blobs made room while the big one was read, then the big one went.
        assert metric(samples, "memobuild_server_evictions_total", kind="blob") >= 17


def test_blobs_an_entry_references_go_only_with_the_entry(tmp_path: Path) -> None:
    with run_server(tmp_path, max_size="4M") as server:
        layer = os.urandom(1 << 20)
        entry = entry_for(b"kept", [layer])
        assert put_blob(server, layer).status == 201
        assert call(server, "PUT", f"/v1/actions/{entry.key}", encode_action(entry)).status == 201
        for _ in range(6):
            call(server, "GET", f"/v1/actions/{entry.key}")  # a hit keeps the entry young
            assert put_blob(server, os.urandom(1 << 20)).status == 201
            assert _stored_bytes(server.storage) <= 4 << 20
        assert call(server, "GET", f"/v1/actions/{entry.key}").status == 200
        assert server.blob_file(sha256(layer)).exists()


# --- metrics -----------------------------------------------------------------------------------


def test_metrics_counters_move(server: RunningServer) -> None:
    before = metric_samples(server)
    data = os.urandom(10_000)
    digest = sha256(data)
    assert put_blob(server, data).status == 201
    assert call(server, "GET", f"/v1/blobs/{digest}").body == data
    assert call(server, "GET", f"/v1/blobs/sha256:{'0' * 64}").status == 404
    assert call(server, "PUT", f"/v1/blobs/sha256:{'1' * 64}", b"bad").status == 400
    entry = entry_for(b"metrics", [data])
    assert call(server, "PUT", f"/v1/actions/{entry.key}", encode_action(entry)).status == 201
    assert call(server, "GET", f"/v1/actions/{entry.key}").status == 200
    assert call(server, "GET", f"/v1/actions/blake3:{'2' * 64}").status == 404
    after = metric_samples(server)

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    route = "/v1/blobs/{digest}"
    assert moved("memobuild_server_requests_total", method="PUT", route=route, status="201") == 1
    assert moved("memobuild_server_requests_total", method="GET", route=route, status="404") == 1
    assert moved("memobuild_server_received_bytes_total") >= len(data) + 3
    assert moved("memobuild_server_sent_bytes_total") >= len(data)
    assert moved("memobuild_server_hits_total", kind="blob") == 1
    assert moved("memobuild_server_misses_total", kind="blob") == 1
    assert moved("memobuild_server_hits_total", kind="action") == 1
    assert moved("memobuild_server_misses_total", kind="action") == 1
    assert moved("memobuild_server_verification_failures_total", reason="digest") == 1
    assert metric(after, "memobuild_server_storage_bytes") >= len(data)
    assert metric(after, "memobuild_server_request_seconds_count", method="GET", route=route) >= 2


def test_cache_commands_work_on_server_storage(server: RunningServer) -> None:
    data = os.urandom(5000)
    entry = entry_for(b"cli", [data])
    assert put_blob(server, data).status == 201
    assert call(server, "PUT", f"/v1/actions/{entry.key}", encode_action(entry)).status == 201
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "memobuild.cli",
            "cache",
            "ls",
            "--json",
            "--cache-dir",
            str(server.storage),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert [e["key"] for e in json.loads(done.stdout)] == [entry.key]
