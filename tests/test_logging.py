"""Logs as text for people, or one JSON object a line for a log pipeline."""

from __future__ import annotations

import json
import logging

import pytest

from services.common.logging import configure_logging, get_logger


def test_json_lines_when_asked(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAIRWAY_LOG_FORMAT", "json")
    configure_logging("scheduler")
    try:
        try:
            raise ValueError("bad")
        except ValueError:
            get_logger("services.scheduler.x").exception("claim failed: %s", "lane é")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        entry = json.loads(line)
        assert entry["service"] == "scheduler" and entry["level"] == "ERROR"
        assert entry["message"] == "claim failed: lane é" and "ValueError: bad" in entry["exception"]
        assert entry["logger"] == "services.scheduler.x" and entry["time"].endswith("+00:00")
    finally:
        logging.getLogger().handlers.clear()


def test_text_by_default(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FAIRWAY_LOG_FORMAT", raising=False)
    configure_logging("gateway")
    try:
        get_logger("services.gateway").warning("hello")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert " WARNING gateway services.gateway: hello" in line
    finally:
        logging.getLogger().handlers.clear()
