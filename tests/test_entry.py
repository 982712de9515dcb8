"""A service with bad settings says which variable is wrong and why, and does not start."""

from __future__ import annotations

import pytest

from services.common.entry import load_settings
from services.emulator.config import EmulatorSettings
from services.scheduler.config import SchedulerConfig
from tests.support.tokens import service_env


def test_bad_setting_is_named(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FAIRWAY_EMULATOR_TIME_SCALE", "-1")
    assert load_settings(EmulatorSettings) is None
    assert "FAIRWAY_EMULATOR_TIME_SCALE" in caplog.text and "greater than 0" in caplog.text


def test_missing_required_setting(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DATABASE_URL", "")
    assert load_settings(SchedulerConfig) is None
    assert "DATABASE_URL" in caplog.text


def test_good_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/x")
    for name, value in service_env("scheduler").items():
        monkeypatch.setenv(name, value)
    config = load_settings(SchedulerConfig)
    assert config is not None and config.database_url == "postgresql://localhost/x"
