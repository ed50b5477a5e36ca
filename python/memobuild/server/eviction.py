"""Size-bounded LRU eviction for ``--max-size``.

Every write (a stored blob or entry) ends with ``enforce``: if storage is over the limit, the
least recently used entries and unreferenced blobs are evicted before the write is answered, so
whenever a client has been told its upload is stored, storage is back within the limit (unless
everything left is leased by in-flight requests; then the limit is reached as soon as they end
and the next write comes). ``run`` blocks (it deletes files and takes the store lock): the server
calls it from the worker thread that stored the write. Runs are serialised; a run that finds
storage already within the limit (another run just freed it) costs one index query.
"""

from __future__ import annotations

import threading

from memobuild.cache.store import GcReport
from memobuild.commands.options import format_size
from memobuild.logging import logger
from memobuild.server.metrics import ServerMetrics
from memobuild.server.recency import UseRecorder
from memobuild.server.storage import ServerStore

__all__ = ["Evictor"]


class Evictor:
    """Keeps a ServerStore within ``max_size`` bytes (no bound when it is None)."""

    def __init__(
        self,
        store: ServerStore,
        max_size: int | None,
        recorder: UseRecorder,
        metrics: ServerMetrics,
    ) -> None:
        self.store = store
        self.max_size = max_size
        self._recorder = recorder
        self._metrics = metrics
        self._running = threading.Lock()

    def run(self) -> GcReport | None:
        """Evict until storage fits (blocking); None if it already fits."""
        if self.max_size is None:
            return None
        with self._running:
            if self.store.total_bytes() <= self.max_size:
                return None
            return self._evict(self.max_size)

    def _evict(self, max_size: int) -> GcReport:
        self._recorder.flush()  # eviction must see every use up to now
        report = self.store.evict(max_size)
        self._metrics.evictions.labels("action").inc(report.removed_actions)
        self._metrics.evictions.labels("blob").inc(report.removed_blobs)
        if report.removed_actions or report.removed_blobs:
            logger.debug(
                f"evicted {report.removed_actions} entries and {report.removed_blobs} blobs, "
                f"freed {format_size(report.freed_bytes)}"
            )
        if not report.reached:
            logger.warning(
                f"storage holds {format_size(report.remaining_bytes)}, over --max-size "
                f"{format_size(max_size)}: what is left is in use by in-flight requests "
                "or pinned"
            )
        return report
