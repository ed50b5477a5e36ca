"""A real TCP proxy on 127.0.0.1 that misbehaves on a share of its connections, for tests.

Every accepted connection draws one fate from a ``random.Random(seed)`` in accept order, so a
test that makes its requests one after another sees the same faults on every run:

- ``ok``: bytes are relayed both ways until either side closes;
- ``drop``: the connection is closed at once (the client sees EOF before any response);
- ``reset``: the connection is aborted with a TCP RST (SO_LINGER 0);
- ``delay``: relayed, but only after ``delay_seconds``;
- ``cut``: relayed, but the response is cut off after ``cut_after`` bytes (a torn download);
- ``stall``: accepted and then never answered (the client's read timeout has to fire);
- ``busy``: answered by the proxy itself with ``503 Service Unavailable`` and
  ``Retry-After: <busy_retry_after>``, as an overloaded server or a load balancer would;
- ``fail``: answered by the proxy itself with ``500 Internal Server Error``, as a registry
  whose storage backend hiccups does.

``script`` deals given fates to the first connections, before the dice take over (e.g.
``["cut", "ok"]``: the first download is torn, the retry goes through).
``set_faults`` changes the shares while the proxy runs (e.g. stall everything from now on).
``fates`` counts what was dealt, so a test can prove faults really happened.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

__all__ = ["FATES", "Faults", "FlakyProxy"]

FATES = ("drop", "reset", "delay", "cut", "stall", "busy", "fail")
BUFFER = 1 << 16


@dataclass(frozen=True)
class Faults:
    """The share of connections (0..1) dealt each fate; whatever is left is ``ok``."""

    drop: float = 0.0
    reset: float = 0.0
    delay: float = 0.0
    cut: float = 0.0
    stall: float = 0.0
    busy: float = 0.0
    fail: float = 0.0
    delay_seconds: float = 0.1
    cut_after: int = 100
    busy_retry_after: int = 0

    def __post_init__(self) -> None:
        total = sum(getattr(self, fate) for fate in FATES)
        if any(getattr(self, fate) < 0 for fate in FATES) or total > 1.0 + 1e-9:
            raise ValueError(f"fault shares must be >= 0 and add up to <= 1, not {self}")

    def deal(self, draw: float) -> str:
        edge = 0.0
        for fate in FATES:
            edge += getattr(self, fate)
            if draw < edge:
                return fate
        return "ok"


class FlakyProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to ``upstream`` (host, port)."""

    def __init__(
        self,
        upstream: tuple[str, int],
        faults: Faults | None = None,
        seed: int = 0,
        script: Sequence[str] = (),
    ) -> None:
        unknown = set(script) - {"ok", *FATES}
        if unknown:
            raise ValueError(f"unknown fates in script: {sorted(unknown)}")
        self.upstream = upstream
        self._faults = faults or Faults()
        self._script = list(script)
        self._rng = random.Random(seed)  # noqa: S311 - reproducible faults, not secrets
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.fates: Counter[str] = Counter()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FlakyProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(self, faults: Faults | None = None, **shares: float) -> None:
        with self._lock:
            base = faults if faults is not None else self._faults
            self._faults = replace(base, **shares) if shares else base

    def start(self) -> None:
        self._spawn(self._accept_loop)

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                faults = self._faults
                fate = self._script.pop(0) if self._script else faults.deal(self._rng.random())
                self.fates[fate] += 1
            self._track(client)
            self._spawn(self._serve, client, fate, faults)

    def _serve(self, client: socket.socket, fate: str, faults: Faults) -> None:
        if fate == "drop":
            _close(client)
            return
        if fate == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # no shutdown: that would send a FIN, not the RST wanted here
            return
        if fate == "busy":
            _answer(client, b"503 Service Unavailable", f"Retry-After: {faults.busy_retry_after}")
            return
        if fate == "fail":
            _answer(client, b"500 Internal Server Error")
            return
        if fate == "stall":
            self._stopped.wait()  # hold it open, say nothing, until the proxy stops
            _close(client)
            return
        if fate == "delay":
            time.sleep(faults.delay_seconds)
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        self._track(upstream)
        limit = faults.cut_after if fate == "cut" else None
        requests = threading.Thread(target=_pump, args=(client, upstream, None), daemon=True)
        requests.start()
        _pump(upstream, client, limit)
        requests.join(timeout=30)
        for sock in (client, upstream):
            _close(sock)
            with self._lock:
                self._sockets.discard(sock)


def _pump(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
    """Copy src -> dst until EOF (then half-close dst), or until ``limit`` bytes (then abort
    both: a response torn in the middle)."""
    sent = 0
    try:
        while True:
            data = src.recv(BUFFER)
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            if limit is not None and sent + len(data) > limit:
                dst.sendall(data[: limit - sent])
                _close(dst)
                _close(src)
                return
            dst.sendall(data)
            sent += len(data)
    except OSError:
        _close(dst)
        _close(src)


def _answer(client: socket.socket, status: bytes, *headers: str) -> None:
    """Read the request head, answer ``status`` (with ``headers``) and an empty body, close."""
    client.settimeout(5)
    with contextlib.suppress(OSError):
        head = b""
        while b"\r\n\r\n" not in head and len(head) < BUFFER:
            data = client.recv(BUFFER)
            if not data:
                break
            head += data
        client.sendall(
            b"HTTP/1.1 "
            + status
            + b"\r\n"
            + "".join(f"{header}\r\n" for header in headers).encode()
            + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    _close(client)


def _close(sock: socket.socket) -> None:
    """Close now: shutdown first, because a plain close() leaves the connection open while
    another thread is still blocked in recv() on it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
