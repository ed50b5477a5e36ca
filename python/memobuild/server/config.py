"""What ``memobuild server`` is told: where to listen, where to store, and its limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MAX_BLOB_SIZE",
    "DEFAULT_MIN_RATE",
    "DEFAULT_TIMEOUT",
    "ServerConfig",
    "is_loopback",
]

DEFAULT_MAX_BLOB_SIZE = 8 << 30  # larger than any sane layer; a bound on one upload's disk use
DEFAULT_TIMEOUT = 60.0
# A transfer may take at most ``timeout + size / min_rate`` seconds in all, so a client that
# trickles a byte now and then (never idle long enough for ``timeout``) is still cut off.
DEFAULT_MIN_RATE = 1 << 20  # bytes per second


@dataclass(frozen=True)
class ServerConfig:
    """One server's settings. ``max_size`` None means the storage is not bounded."""

    storage: Path
    host: str = "127.0.0.1"
    port: int = 8080
    max_size: int | None = None
    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE
    timeout: float = DEFAULT_TIMEOUT  # seconds a request may go without progress
    min_rate: float = DEFAULT_MIN_RATE
    token_file: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, not {self.port}")
        if self.max_size is not None and self.max_size <= 0:
            raise ValueError(f"max size must be > 0, not {self.max_size}")
        if self.max_blob_size <= 0:
            raise ValueError(f"max blob size must be > 0, not {self.max_blob_size}")
        if self.timeout <= 0 or self.min_rate <= 0:
            raise ValueError("timeout and min rate must be > 0")

    def deadline(self, size: int) -> float:
        """Seconds a transfer of ``size`` bytes may take in all."""
        return self.timeout + size / self.min_rate


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` is reachable from this machine only. Names other than
    ``localhost`` are not resolved: what they resolve to can change after the check."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
