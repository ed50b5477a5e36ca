"""`memobuild server` against Debian's docker-registry (CNCF distribution 2.8) on loopback.

Both servers run as separate processes on 127.0.0.1 with filesystem storage in a temp dir, and
are driven by the same client code in this process:

- blob PUT+GET throughput for 1 KiB, 1 MiB and 256 MiB blobs: each round uploads a batch of new
  blobs (fresh contents every round, so nothing is "already there") and downloads them again,
  over one keep-alive connection. Ours: ``PUT /v1/blobs/<digest>``, then ``GET``. The
  registry's monolithic upload: ``POST /v2/<name>/blobs/uploads/``, ``PUT <location>&digest=``,
  then ``GET /v2/<name>/blobs/<digest>``. Both verify the digest before storing, and fsync.
- small lookups: 16 concurrent keep-alive connections (an asyncio client) GET small objects:
  action entries on ours (entry decoded and checked, its layer blobs stat'ed), ~1 KiB blobs on
  the registry (its cheapest content lookup).

Targets (issue 7): at least the registry's throughput for large blobs, at least 50% of its
request rate for small lookups. Every process shares the machine's cores with the client and
with anything else running, so figures are noisy; the ratio of means is what the conftest
prints.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from memobuild.cache.entries import ActionEntry, LayerRef, encode_action

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from server_fixture import free_port, start_server  # the tests' server fixture

REGISTRY = "/usr/bin/docker-registry"
REPO = "bench/blobs"
CONCURRENCY = 16
LOOKUPS = 8_000  # per round
LOOKUP_KEYS = 200

pytestmark = pytest.mark.skipif(
    not os.path.exists(REGISTRY), reason="docker-registry is not installed"
)


def sha256(data: bytes | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- the two servers ---------------------------------------------------------------------------


@dataclass
class Endpoint(ABC):
    impl: str
    port: int
    conn: http.client.HTTPConnection = field(init=False)

    def __post_init__(self) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)

    def _call(
        self, method: str, path: str, body: bytes | None = None, into: bytearray | None = None
    ) -> tuple[int, dict[str, str], int]:
        """(status, headers, body bytes) of one request; the body is read into ``into``."""
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        got = 0
        if into is not None:
            view = memoryview(into)
            while n := response.readinto(view[got:]):
                got += n
        rest = response.read()
        return response.status, dict(response.getheaders()), got + len(rest)

    @abstractmethod
    def put(self, digest: str, data: bytes) -> None: ...

    @abstractmethod
    def blob_path(self, digest: str) -> str: ...

    def get(self, digest: str, into: bytearray) -> int:
        status, _, n = self._call("GET", self.blob_path(digest), into=into)
        assert status == 200, (self.impl, status)
        return n


class MemoBuildEndpoint(Endpoint):
    def put(self, digest: str, data: bytes) -> None:
        status, _, _ = self._call("PUT", f"/v1/blobs/{digest}", data)
        assert status in (200, 201), status

    def blob_path(self, digest: str) -> str:
        return f"/v1/blobs/{digest}"


class RegistryEndpoint(Endpoint):
    def put(self, digest: str, data: bytes) -> None:
        status, headers, _ = self._call("POST", f"/v2/{REPO}/blobs/uploads/")
        assert status == 202, status
        location = headers["Location"].removeprefix(f"http://127.0.0.1:{self.port}")
        sep = "&" if "?" in location else "?"
        status, _, _ = self._call("PUT", f"{location}{sep}digest={digest}", data)
        assert status == 201, status

    def blob_path(self, digest: str) -> str:
        return f"/v2/{REPO}/blobs/{digest}"


def _wait_ready(port: int, path: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not come up")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # /var/tmp: on disk like a real server's storage (a tmpfs /tmp would make fsync free).
    with tempfile.TemporaryDirectory(prefix="memobuild-bench-server-", dir="/var/tmp") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def memobuild_endpoint(workdir: Path) -> Iterator[MemoBuildEndpoint]:
    server = start_server(workdir / "memobuild", env={"MEMOBUILD_LOG_LEVEL": "WARNING"})
    try:
        yield MemoBuildEndpoint("memobuild", server.port)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def registry_endpoint(workdir: Path) -> Iterator[RegistryEndpoint]:
    port = free_port()
    config = workdir / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'registry'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with open(workdir / "registry.log", "wb") as log:
        process = subprocess.Popen(
            [REGISTRY, "serve", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
    try:
        _wait_ready(port, "/v2/", process)
        yield RegistryEndpoint("registry", port)
    finally:
        process.terminate()
        process.wait(15)


def _endpoint(request: pytest.FixtureRequest, impl: str) -> Endpoint:
    endpoint: Endpoint = request.getfixturevalue(f"{impl}_endpoint")
    return endpoint


# --- blob throughput ---------------------------------------------------------------------------

SIZES = {"1KiB": (1 << 10, 128, 5), "1MiB": (1 << 20, 32, 5), "256MiB": (256 << 20, 1, 3)}


@pytest.mark.parametrize("impl", ["memobuild", "registry"])
@pytest.mark.parametrize("size_name", list(SIZES))
def test_blob_put_get_throughput(
    benchmark, request: pytest.FixtureRequest, impl: str, size_name: str
) -> None:
    size, batch, rounds = SIZES[size_name]
    endpoint = _endpoint(request, impl)
    base = bytearray(os.urandom(size))
    into = bytearray(size)
    counter = iter(range(1 << 30))

    def fresh_blobs():
        blobs = []
        for _ in range(batch):
            base[:8] = next(counter).to_bytes(8, "little")
            base[-8:] = os.urandom(8)  # different from every other run's blobs too
            data = bytes(base)
            blobs.append((sha256(data), data))
        return (blobs,), {}

    def put_then_get(blobs: list[tuple[str, bytes]]) -> None:
        for digest, data in blobs:
            endpoint.put(digest, data)
        for digest, data in blobs:
            assert endpoint.get(digest, into) == len(data)

    benchmark.group = f"server blob PUT+GET {size_name} x{batch}"
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(put_then_get, setup=fresh_blobs, rounds=rounds, iterations=1)
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info["MB_per_s"] = round(2 * size * batch / seconds / 1e6, 1)
    assert into[:8] == base[:8]  # the last blob read back is the last one written


# --- small lookups -----------------------------------------------------------------------------


async def _lookups(port: int, paths: list[str], total: int, concurrency: int) -> int:
    """Send ``total`` GETs over ``concurrency`` keep-alive connections; returns bytes read."""
    per_client = total // concurrency

    async def client(offset: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        got = 0
        try:
            for i in range(per_client):
                path = paths[(offset + i) % len(paths)]
                writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise AssertionError(head.split(b"\r\n", 1)[0])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                got += len(await reader.readexactly(length))
        finally:
            writer.close()
        return got

    results = await asyncio.gather(*(client(i * 7) for i in range(concurrency)))
    return sum(results)


@pytest.fixture(scope="module")
def lookup_paths(
    memobuild_endpoint: MemoBuildEndpoint, registry_endpoint: RegistryEndpoint
) -> dict[str, list[str]]:
    """LOOKUP_KEYS action entries (one ~1 KiB layer each) on ours; LOOKUP_KEYS ~1 KiB blobs on
    the registry."""
    ours, theirs = [], []
    for i in range(LOOKUP_KEYS):
        layer = os.urandom(1024)
        digest = sha256(layer)
        memobuild_endpoint.put(digest, layer)
        registry_endpoint.put(digest, layer)
        entry = ActionEntry(
            key="blake3:" + hashlib.sha256(b"key%d" % i).hexdigest(),
            layers=(LayerRef(digest=digest, diff_id=sha256(layer + b"tar"), size=len(layer)),),
            config={"Env": ["PATH=/usr/bin"], "WorkingDir": "/app"},
            preimage=(("parent", "blake3:" + "0" * 64), ("instruction", "RUN make")),
            created=1700000000.0,
        )
        status, _, _ = memobuild_endpoint._call(
            "PUT", f"/v1/actions/{entry.key}", encode_action(entry)
        )
        assert status == 201
        ours.append(f"/v1/actions/{entry.key}")
        theirs.append(registry_endpoint.blob_path(digest))
    return {"memobuild": ours, "registry": theirs}


@pytest.mark.parametrize("impl", ["memobuild", "registry"])
def test_small_lookups_16_clients(
    benchmark, request: pytest.FixtureRequest, lookup_paths: dict[str, list[str]], impl: str
) -> None:
    endpoint = _endpoint(request, impl)
    paths = lookup_paths[impl]

    def run() -> int:
        return asyncio.run(_lookups(endpoint.port, paths, LOOKUPS, CONCURRENCY))

    benchmark.group = f"server small lookups, {CONCURRENCY} clients x{LOOKUPS}"
    benchmark.extra_info["impl"] = impl
    got = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["requests_per_s"] = round(LOOKUPS / benchmark.stats.stats.mean)
    assert got > LOOKUPS * 100  # every answer had a body
