"""Start the real ``memobuild server`` for a test: a subprocess on 127.0.0.1, a free port, its own
storage dir, ready once ``/healthz`` answers, stopped (SIGTERM, then SIGKILL) afterwards.

    from server_fixture import run_server

    with run_server(tmp_path, token_file=tokens, max_size="40M") as server:
        url, storage, process = server          # or server.url, server.storage, ...
        server.blob_file("sha256:...")          # where the server keeps that blob

``memobuild_server`` is the same as a pytest fixture with the defaults (import it into a test
module, or a conftest, to use it by name).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import pytest

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class RunningServer(NamedTuple):
    url: str  # http://127.0.0.1:PORT
    storage: Path
    process: subprocess.Popen[bytes]
    log: Path  # the server's stderr

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def blob_file(self, digest: str) -> Path:
        hex_part = digest.split(":", 1)[1]
        return self.storage / "blobs" / "sha256" / hex_part[:2] / hex_part

    def action_file(self, key: str) -> Path:
        hex_part = key.split(":", 1)[1]
        return self.storage / "actions" / hex_part[:2] / hex_part

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a crash."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(
    storage: Path,
    port: int,
    *,
    host: str = "127.0.0.1",
    token_file: Path | None = None,
    max_size: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    cmd = [sys.executable, "-m", "memobuild.cli", "server", "--storage", str(storage)]
    cmd += ["--host", host, "--port", str(port)]
    if token_file is not None:
        cmd += ["--token-file", str(token_file)]
    if max_size is not None:
        cmd += ["--max-size", max_size]
    return cmd + list(extra_args)


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start_server(
    workdir: Path,
    *,
    storage: Path | None = None,
    token_file: Path | None = None,
    max_size: str | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> RunningServer:
    """Start a server and wait for /healthz; the caller stops it. Raises RuntimeError with the
    server's log if it does not come up."""
    storage = storage if storage is not None else workdir / "storage"
    workdir.mkdir(parents=True, exist_ok=True)
    last_log = ""
    attempt = 0
    while attempt < 3:  # the free port may be taken between the probe and the bind
        port = free_port()
        log = workdir / f"server-{port}.log"
        cmd = server_command(
            storage, port, token_file=token_file, max_size=max_size, extra_args=extra_args
        )
        with open(log, "wb") as err:
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env={**os.environ, **(env or {})},
            )
        server = RunningServer(f"http://127.0.0.1:{port}", storage, process, log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if _healthy(port):
                return server
            time.sleep(0.05)
        server.stop()
        last_log = server.logs()
        attempt += 1
        if "cannot listen" not in last_log:
            break
    raise RuntimeError(f"memobuild server did not start ({attempt} attempts):\n{last_log}")


@contextlib.contextmanager
def run_server(
    workdir: Path,
    *,
    storage: Path | None = None,
    token_file: Path | None = None,
    max_size: str | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """A running server for the block; stopped after it, whatever happens."""
    server = start_server(
        workdir,
        storage=storage,
        token_file=token_file,
        max_size=max_size,
        extra_args=extra_args,
        env=env,
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def memobuild_server(tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(tmp_path / "server") as server:
        yield server
