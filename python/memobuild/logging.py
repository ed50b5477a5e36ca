"""Logging through loguru to stderr.

``MEMOBUILD_LOG_LEVEL`` sets the level (default INFO); ``MEMOBUILD_JSON_LOGS=1`` writes one JSON
object per line (time, level, message, module, and any bound extra fields) for log collectors.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message

LEVEL_ENV = "MEMOBUILD_LOG_LEVEL"
JSON_ENV = "MEMOBUILD_JSON_LOGS"
_TEXT_FORMAT = "<level>{level: <7}</level> {message}"

__all__ = ["configure_logging", "logger"]


def _json_sink(stream: TextIO) -> Callable[[Message], None]:
    def write(message: Message) -> None:
        record = message.record
        line = {
            "time": record["time"].isoformat(),
            "level": record["level"].name,
            "message": record["message"],
            "module": record["name"],
            **{k: _plain(v) for k, v in record["extra"].items()},
        }
        if record["exception"] is not None and record["exception"].type is not None:
            line["exception"] = f"{record['exception'].type.__name__}: {record['exception'].value}"
        stream.write(json.dumps(line, ensure_ascii=False) + "\n")
        stream.flush()

    return write


def _plain(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def configure_logging(
    level: str | None = None, *, json_logs: bool | None = None, stream: TextIO | None = None
) -> None:
    """(Re)configure the one loguru sink; arguments override the environment."""
    level = (level or os.environ.get(LEVEL_ENV) or "INFO").upper()
    if json_logs is None:
        json_logs = os.environ.get(JSON_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    out = stream if stream is not None else sys.stderr
    logger.remove()
    try:
        if json_logs:
            logger.add(_json_sink(out), level=level, format="{message}")
        else:
            logger.add(out, level=level, format=_TEXT_FORMAT, colorize=out.isatty())
    except ValueError as err:
        from memobuild.errors import InputError

        raise InputError(f"{LEVEL_ENV}: unknown log level {level!r}") from err
