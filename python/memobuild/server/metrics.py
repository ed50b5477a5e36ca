"""The server's Prometheus metrics (prometheus-client), served at ``/metrics``.

Each server has its own registry rather than the library's process-global one, so two servers
in one process (tests) never share counts. Names follow Prometheus conventions: counters end in
``_total``, sizes in ``_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

__all__ = ["ServerMetrics"]

_PREFIX = "memobuild_server"


@dataclass(frozen=True)
class ServerMetrics:
    registry: CollectorRegistry
    requests: Counter  # by method, route, status
    request_seconds: Histogram  # by method, route
    bytes_received: Counter  # request bodies
    bytes_sent: Counter  # response bodies of blob and action GETs
    hits: Counter  # by kind: blob, action
    misses: Counter  # by kind
    verification_failures: Counter  # by reason: digest, size, entry, key
    evictions: Counter  # by kind: blob, action
    storage_bytes: Gauge

    @classmethod
    def create(cls, storage_bytes: Callable[[], float]) -> ServerMetrics:
        """New metrics; ``storage_bytes`` is called at each scrape."""
        registry = CollectorRegistry()
        gauge = Gauge(
            f"{_PREFIX}_storage_bytes",
            "Bytes of blobs and action entries in storage",
            registry=registry,
        )
        gauge.set_function(storage_bytes)
        return cls(
            registry=registry,
            requests=Counter(
                f"{_PREFIX}_requests",
                "HTTP requests answered",
                ["method", "route", "status"],
                registry=registry,
            ),
            request_seconds=Histogram(
                f"{_PREFIX}_request_seconds",
                "Time to answer a request",
                ["method", "route"],
                registry=registry,
                buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
            ),
            bytes_received=Counter(
                f"{_PREFIX}_received_bytes", "Request body bytes received", registry=registry
            ),
            bytes_sent=Counter(
                f"{_PREFIX}_sent_bytes", "Blob and action entry bytes sent", registry=registry
            ),
            hits=Counter(
                f"{_PREFIX}_hits",
                "Lookups that found what they asked for",
                ["kind"],
                registry=registry,
            ),
            misses=Counter(
                f"{_PREFIX}_misses",
                "Lookups that found nothing usable",
                ["kind"],
                registry=registry,
            ),
            verification_failures=Counter(
                f"{_PREFIX}_verification_failures",
                "Uploads refused because they did not verify",
                ["reason"],
                registry=registry,
            ),
            evictions=Counter(
                f"{_PREFIX}_evictions",
                "Entries and blobs evicted by --max-size",
                ["kind"],
                registry=registry,
            ),
            storage_bytes=gauge,
        )

    def render(self) -> tuple[bytes, str]:
        """(the exposition text, its content type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
