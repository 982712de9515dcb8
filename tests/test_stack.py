"""`fairway up`: the whole stack from nothing, a clear stop when a child dies, a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from services.common.embedded import free_port
from services.stack.config import StackConfig
from services.stack.supervisor import emulated_providers

ROOT = Path(__file__).resolve().parents[1]


def _start(home: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    ports = {k: str(free_port()) for k in ("GATEWAY", "SCHEDULER", "RATELIMITER", "PREDICTOR", "EMULATOR")}
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "REPLICATE_API_TOKEN", "FAIRWAY_ADMIN_KEY")}
    env.update({f"FAIRWAY_{k}_PORT": v for k, v in ports.items()})
    env.update({"FAIRWAY_HOME": str(home), "FAIRWAY_SCHEDULER_METRICS_PORT": "0",
                "FAIRWAY_RATELIMITER_METRICS_PORT": "0", "FAIRWAY_PREDICTOR_METRICS_PORT": "0",
                "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, ports


def _read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float = 120.0) -> str:
    """What `fairway up` printed on stdout up to the line with `marker` (progress goes to stderr)."""
    seen = []
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return "".join(seen)
        assert time.monotonic() < deadline, "".join(seen)
    pytest.fail(f"`fairway up` ended before {marker!r}:\n{''.join(seen)}")


def _children(proc: subprocess.Popen[str]) -> dict[str, psutil.Process]:
    found = {}
    for child in psutil.Process(proc.pid).children():
        cmd = child.cmdline()
        if "run" in cmd:
            found[cmd[cmd.index("run") + 1]] = child
    return found


def test_up_serves_then_stops_with_a_clear_message_when_a_child_dies(tmp_path: Path) -> None:
    proc, ports = _start(tmp_path / "home")
    try:
        banner = _read_until(proc, "Ctrl-C stops everything")
        admin_key = (tmp_path / "home" / "admin_key").read_text().strip()
        assert f"http://127.0.0.1:{ports['GATEWAY']}" in banner and admin_key in banner
        gateway = f"http://127.0.0.1:{ports['GATEWAY']}"
        assert httpx.get(f"{gateway}/readyz", timeout=10).status_code == 200
        created = httpx.post(f"{gateway}/v1/tenants", json={"id": "store-up"},
                             headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
        assert created.status_code == 201, created.text

        children = _children(proc)
        assert set(children) == {"emulator", "ratelimiter", "scheduler", "predictor", "gateway"}
        children["scheduler"].kill()
        errors = proc.communicate(timeout=90)[1]
        assert proc.returncode == 1
        assert "scheduler exited" in errors and "stopping the stack" in errors
        for name, child in children.items():
            assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, f"{name} left running"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_stops_everything_and_data_survives_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc, ports = _start(home)
    try:
        _read_until(proc, "Ctrl-C stops everything")
        admin_key = (home / "admin_key").read_text().strip()
        gateway = f"http://127.0.0.1:{ports['GATEWAY']}"
        auth = {"Authorization": f"Bearer {admin_key}"}
        assert httpx.post(f"{gateway}/v1/tenants", json={"id": "kept"}, headers=auth, timeout=10).status_code == 201
        children = _children(proc)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=90)
        assert proc.returncode == 0
        assert all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children.values())
    finally:
        if proc.poll() is None:
            proc.kill()

    again, ports = _start(home)
    try:
        _read_until(again, "Ctrl-C stops everything")
        gateway = f"http://127.0.0.1:{ports['GATEWAY']}"
        kept = httpx.get(f"{gateway}/v1/tenants/kept", headers=auth, timeout=10)
        assert kept.status_code == 200, "the embedded database keeps its data under FAIRWAY_HOME"
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=90)
    finally:
        if again.poll() is None:
            again.kill()


def test_the_emulator_stands_in_only_for_providers_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    openai = {"OPENAI_API_KEY", "OPENAI_BASE_URL"}
    replicate = {"REPLICATE_API_TOKEN", "REPLICATE_BASE_URL"}
    for keys, emulated in (({}, openai | replicate), ({"OPENAI_API_KEY": "sk-real"}, replicate),
                           ({"REPLICATE_API_TOKEN": "r8_real"}, openai),
                           ({"OPENAI_API_KEY": "sk-real", "REPLICATE_API_TOKEN": "r8_real"}, set())):
        for var in ("OPENAI_API_KEY", "REPLICATE_API_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        for var, value in keys.items():
            monkeypatch.setenv(var, value)
        assert set(emulated_providers(StackConfig())) == emulated, keys
