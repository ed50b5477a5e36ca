"""Logging: level from the environment, JSON lines on request."""

from __future__ import annotations

import io
import json

import pytest

from memobuild.errors import InputError
from memobuild.logging import configure_logging, logger


def test_json_logs_one_object_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOBUILD_JSON_LOGS", "1")
    out = io.StringIO()
    configure_logging(stream=out)
    logger.bind(step="RUN make").info("step executed")
    logger.debug("hidden at INFO")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "INFO"
    assert record["message"] == "step executed"
    assert record["step"] == "RUN make"
    assert "time" in record


def test_level_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOBUILD_LOG_LEVEL", "warning")
    monkeypatch.delenv("MEMOBUILD_JSON_LOGS", raising=False)
    out = io.StringIO()
    configure_logging(stream=out)
    logger.info("quiet")
    logger.warning("loud")
    assert out.getvalue().splitlines() == ["WARNING loud"]


def test_unknown_level_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOBUILD_LOG_LEVEL", "chatty")
    with pytest.raises(InputError, match=r"(?i)chatty"):
        configure_logging(stream=io.StringIO())
