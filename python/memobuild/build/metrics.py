"""Build metrics: what one build did and saved, and the log of every build kept in the store.

:class:`BuildMetrics` is computed by the executor for every build (``BuildResult.metrics``):
how many steps the plan had, how many the cache answered, ran or failed, the wall time, the
time spent on steps, the bytes the build wrote, and the time the cache saved (what the cached
steps took when they last ran, as their entries recorded it).

:class:`MetricsLog` keeps one :class:`BuildRecord` per build, successful or not, for
``memobuild stats``. It is a file, ``records/metrics/builds.jsonl``, rather than a table in
``index.sqlite``:

- The index is derived data: when it is lost or corrupt the store rebuilds it from the files.
  A history of builds cannot be derived from anything, so it lives in a file of its own, as the
  store's other records do, and survives an index rebuild (and any index schema change).
- One JSON object per line, written with a single ``write(2)`` on an ``O_APPEND`` descriptor
  while holding an exclusive ``flock`` on ``builds.lock`` (readers hold it shared): concurrent
  builds, in threads or processes, never interleave or lose a line, and a reader never sees
  half of one. The lock is held for microseconds.
- Appends are not fsynced: a build's record is worth less than the milliseconds an fsync would
  add to every no-change rebuild. A line torn by a crash is skipped when reading (with one
  warning), and the next append first ends an unterminated last line, so a torn line never
  swallows the record after it.
- Bounded: when the file passes ``max_bytes`` the append that crossed the limit rewrites it
  (temp file, fsync, rename, under the lock), keeping the newest records that fill half the
  limit. The older ones are folded into a first ``carried`` line of totals, so ``memobuild
  stats`` still counts every build ever logged.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memobuild.cache.atomic import ensure_private_dir, fsync_dir, storage_error
from memobuild.cache.lock import StoreLock
from memobuild.config import cache_dir
from memobuild.logging import logger

if TYPE_CHECKING:
    from memobuild.cache.store import LocalStore

__all__ = [
    "FAILED",
    "INTERRUPTED",
    "MAX_LOG_BYTES",
    "METRICS_SCHEMA",
    "SUCCEEDED",
    "BuildMetrics",
    "BuildRecord",
    "MetricsLog",
    "MetricsSummary",
]

METRICS_SCHEMA = "memobuild.metrics.v1"
SUCCEEDED = "succeeded"
FAILED = "failed"
INTERRUPTED = "interrupted"
STATUSES = (SUCCEEDED, FAILED, INTERRUPTED)
# About 4,000 builds at ~500 bytes a record; compaction keeps the newest half.
MAX_LOG_BYTES = 2 << 20
# A failed build's error message is cut to this many characters in its record.
MAX_ERROR_CHARS = 500
LOCK_TIMEOUT = 30.0
LOG_DIR = Path("records") / "metrics"
LOG_NAME = "builds.jsonl"
_COMPACT_PREFIX = ".compact-"


def _count(data: Mapping[str, Any], name: str) -> int:
    value = data[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, not {value!r}")
    return value


def _optional_count(data: Mapping[str, Any], name: str) -> int:
    """A count that records written before it existed lack: 0 then."""
    return _count(data, name) if name in data else 0


def _seconds(data: Mapping[str, Any], name: str) -> float:
    value = data[name]
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a number >= 0, not {value!r}")
    return float(value)


def _optional_text(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string or null, not {value!r}")
    return value


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {value!r}")
    return value


@dataclass(frozen=True)
class BuildMetrics:
    """What one build did (or, summed with ``+``, many builds did).

    ``total`` is the number of steps in the plan; ``cached``, ``executed`` and ``failed`` count
    the steps the build got to (a failed build stops early, so they may add up to less).
    ``duration`` is wall time, ``step_time`` the sum of the steps' own durations (cache lookups
    included), ``bytes_written`` the layer bytes the build added to the store plus the bytes of
    its outputs, and ``saved_time`` what the cached steps took when they last ran.

    The cache tiers: ``local_hits + remote_hits == cached`` (a build without a remote cache
    has only local hits). With a remote cache, ``uploads`` counts the action entries this
    build stored on it, ``upload_failures`` those it could not, ``integrity_failures`` the
    downloads that failed verification (discarded; the step was rebuilt), and
    ``bytes_downloaded``/``bytes_uploaded`` the layer bytes moved.
    """

    total: int = 0
    cached: int = 0
    executed: int = 0
    failed: int = 0
    duration: float = 0.0
    step_time: float = 0.0
    bytes_written: int = 0
    saved_time: float = 0.0
    local_hits: int = 0
    remote_hits: int = 0
    uploads: int = 0
    upload_failures: int = 0
    integrity_failures: int = 0
    bytes_downloaded: int = 0
    bytes_uploaded: int = 0

    @property
    def steps(self) -> int:
        """The steps the build got to: cached, executed or failed."""
        return self.cached + self.executed + self.failed

    def cache_hit_rate(self) -> float:
        """The share of the steps the build got to that the cache answered, 0.0 to 1.0
        (0.0 when it got to none)."""
        return self.cached / self.steps if self.steps else 0.0

    def average_step_time(self) -> float:
        """Seconds per step the build got to, cache hits included (0.0 when none)."""
        return self.step_time / self.steps if self.steps else 0.0

    def __add__(self, other: BuildMetrics) -> BuildMetrics:
        if not isinstance(other, BuildMetrics):
            return NotImplemented
        return BuildMetrics(
            **{
                item.name: getattr(self, item.name) + getattr(other, item.name)
                for item in fields(self)
            }
        )

    def to_json(self) -> dict[str, int | float]:
        """The fields as a JSON-ready dict (what the log and ``stats --json`` hold)."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_json(cls, data: Any) -> BuildMetrics:
        """Read :meth:`to_json`'s dict back, checking every field; ValueError if it is not one."""
        if not isinstance(data, Mapping):
            raise ValueError("metrics must be an object")
        try:
            return cls(
                total=_count(data, "total"),
                cached=_count(data, "cached"),
                executed=_count(data, "executed"),
                failed=_count(data, "failed"),
                duration=_seconds(data, "duration"),
                step_time=_seconds(data, "step_time"),
                bytes_written=_count(data, "bytes_written"),
                saved_time=_seconds(data, "saved_time"),
                **{name: _optional_count(data, name) for name in _TIER_COUNTS},
            )
        except KeyError as err:
            raise ValueError(f"metrics lack {err}") from None


# BuildMetrics' counts that records logged before remote caches lack.
_TIER_COUNTS = (
    "local_hits",
    "remote_hits",
    "uploads",
    "upload_failures",
    "integrity_failures",
    "bytes_downloaded",
    "bytes_uploaded",
)


@dataclass(frozen=True)
class BuildRecord:
    """One build in the log: when it started (seconds since the epoch), how it ended
    (``succeeded``, ``failed`` or ``interrupted``), what it built and its metrics. ``image`` is
    the image's manifest digest (None if the build failed), ``error`` its one-line error."""

    time: float
    status: str
    target: str
    dockerfile: str
    context: str
    metrics: BuildMetrics
    image: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": METRICS_SCHEMA,
            "time": self.time,
            "status": self.status,
            "target": self.target,
            "dockerfile": self.dockerfile,
            "context": self.context,
            "image": self.image,
            "error": self.error,
            "metrics": self.metrics.to_json(),
        }

    @classmethod
    def from_json(cls, data: Any) -> BuildRecord:
        """Read :meth:`to_json`'s dict back; ValueError if it is not one."""
        if not isinstance(data, Mapping) or data.get("schema") != METRICS_SCHEMA:
            raise ValueError(f"not a {METRICS_SCHEMA} record")
        try:
            status = _text(data, "status")
            if status not in STATUSES:
                raise ValueError(f"unknown status {status!r}")
            return cls(
                time=_seconds(data, "time"),
                status=status,
                target=_text(data, "target"),
                dockerfile=_text(data, "dockerfile"),
                context=_text(data, "context"),
                metrics=BuildMetrics.from_json(data["metrics"]),
                image=_optional_text(data, "image"),
                error=_optional_text(data, "error"),
            )
        except KeyError as err:
            raise ValueError(f"record lacks {err}") from None


@dataclass(frozen=True)
class MetricsSummary:
    """Every build the log has counted: ``totals`` sums their metrics; ``since`` is when the
    first of them started (None for an empty log)."""

    builds: int
    failed_builds: int
    totals: BuildMetrics
    since: float | None

    def cache_hit_rate(self) -> float:
        return self.totals.cache_hit_rate()

    def average_step_time(self) -> float:
        return self.totals.average_step_time()

    def __add__(self, other: MetricsSummary) -> MetricsSummary:
        if not isinstance(other, MetricsSummary):
            return NotImplemented
        starts = [t for t in (self.since, other.since) if t is not None]
        return MetricsSummary(
            builds=self.builds + other.builds,
            failed_builds=self.failed_builds + other.failed_builds,
            totals=self.totals + other.totals,
            since=min(starts) if starts else None,
        )

    @classmethod
    def of(cls, records: Iterable[BuildRecord]) -> MetricsSummary:
        """The summary of ``records``."""
        summary = cls(0, 0, BuildMetrics(), None)
        for record in records:
            summary = summary + cls(1, int(record.status != SUCCEEDED), record.metrics, record.time)
        return summary

    def to_json(self) -> dict[str, Any]:
        return {
            "builds": self.builds,
            "failed_builds": self.failed_builds,
            "since": self.since,
            "metrics": self.totals.to_json(),
        }

    @classmethod
    def from_json(cls, data: Any) -> MetricsSummary:
        if not isinstance(data, Mapping):
            raise ValueError("carried totals must be an object")
        try:
            since = data.get("since")
            return cls(
                builds=_count(data, "builds"),
                failed_builds=_count(data, "failed_builds"),
                totals=BuildMetrics.from_json(data["metrics"]),
                since=None if since is None else _seconds(data, "since"),
            )
        except KeyError as err:
            raise ValueError(f"carried totals lack {err}") from None


class _Contents:
    """What the log file holds: the carried totals, the records (oldest first), and how many
    lines could not be read. (A plain class: a dataclass costs every build ~0.3 ms to create
    at import, and this one is only read by ``stats``.)"""

    __slots__ = ("bad_lines", "carried", "records")

    def __init__(
        self, carried: MetricsSummary, records: tuple[BuildRecord, ...], bad_lines: int
    ) -> None:
        self.carried = carried
        self.records = records
        self.bad_lines = bad_lines


def _empty_summary() -> MetricsSummary:
    return MetricsSummary(0, 0, BuildMetrics(), None)


def _parse(data: bytes) -> _Contents:
    carried = _empty_summary()
    records: list[BuildRecord] = []
    bad = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            if isinstance(value, dict) and "carried" in value:
                if value.get("schema") != METRICS_SCHEMA:
                    raise ValueError(f"not a {METRICS_SCHEMA} line")
                carried = carried + MetricsSummary.from_json(value["carried"])
            else:
                records.append(BuildRecord.from_json(value))
        except ValueError:  # json's errors are ValueErrors too, as is a torn UTF-8 sequence
            bad += 1
    return _Contents(carried, tuple(records), bad)


def _line(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class MetricsLog:
    """The log of builds in a store (``records/metrics/builds.jsonl``; see the module docstring).

    ``store`` is a :class:`~memobuild.cache.store.LocalStore` or a cache directory (default:
    ``$MEMOBUILD_CACHE_DIR``): reading the log needs no store to be opened.
    """

    def __init__(
        self,
        store: LocalStore | str | os.PathLike[str] | None = None,
        *,
        max_bytes: int = MAX_LOG_BYTES,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> None:
        if store is None:
            root = cache_dir()
        elif isinstance(store, (str, os.PathLike)):
            root = Path(store)
        else:
            root = store.root
        self.dir = Path(root).absolute() / LOG_DIR
        self.path = self.dir / LOG_NAME
        self.max_bytes = max_bytes
        self._lock = StoreLock(self.dir / "builds.lock", lock_timeout)

    def append(self, record: BuildRecord) -> None:
        """Add ``record`` at the end (compacting the log when it grows past ``max_bytes``).
        Raises StorageError when the log cannot be written."""
        data = _line(record.to_json())
        ensure_private_dir(self.dir)
        with self._lock.exclusive():
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as err:
                raise storage_error(err, self.path, "open the metrics log") from err
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # end a line a crash left unterminated
                written = os.write(fd, data)
                if written != len(data):  # a full disk: never leave half a line behind
                    os.ftruncate(fd, size)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
                size += written
            except OSError as err:
                raise storage_error(err, self.path, "append to the metrics log") from err
            finally:
                os.close(fd)
            if size > self.max_bytes:
                self._compact_locked()

    def read(self, last: int | None = None) -> list[BuildRecord]:
        """The logged builds, oldest first; only the newest ``last`` with ``last``."""
        records = self._contents().records
        if last is not None:
            records = records[-last:] if last > 0 else ()
        return list(records)

    def summary(self) -> MetricsSummary:
        """Totals over every build the log has counted (compacted ones included)."""
        contents = self._contents()
        return contents.carried + MetricsSummary.of(contents.records)

    def _contents(self) -> _Contents:
        if not self.path.exists():
            return _Contents(_empty_summary(), (), 0)
        with self._lock.shared():
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                data = b""
            except OSError as err:
                raise storage_error(err, self.path, "read the metrics log") from err
        contents = _parse(data)
        if contents.bad_lines:
            logger.warning(
                f"{self.path}: skipped {contents.bad_lines} unreadable "
                f"line{'s' if contents.bad_lines != 1 else ''}"
            )
        return contents

    def _compact_locked(self) -> None:
        """Under the exclusive lock: keep the newest records that fill half of ``max_bytes``,
        fold the rest into the carried totals, and replace the file atomically."""
        for stale in self.dir.glob(_COMPACT_PREFIX + "*"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()  # a compaction that crashed: only compaction writes these
        try:
            contents = _parse(self.path.read_bytes())
        except OSError as err:
            raise storage_error(err, self.path, "compact the metrics log") from err
        lines = [_line(record.to_json()) for record in contents.records]
        budget, keep = self.max_bytes // 2, 0
        for line in reversed(lines):
            if budget < len(line):
                break
            budget -= len(line)
            keep += 1
        dropped = contents.records[: len(lines) - keep]
        carried = contents.carried + MetricsSummary.of(dropped)
        head = _line({"schema": METRICS_SCHEMA, "carried": carried.to_json()})
        fd, name = tempfile.mkstemp(dir=self.dir, prefix=_COMPACT_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(head)
                out.writelines(lines[len(lines) - keep :])
                out.flush()
                os.fsync(out.fileno())
            os.replace(name, self.path)
            fsync_dir(self.dir)
        except OSError as err:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            raise storage_error(err, self.path, "compact the metrics log") from err
        if contents.bad_lines:
            logger.warning(
                f"{self.path}: dropped {contents.bad_lines} unreadable line(s) while compacting"
            )
