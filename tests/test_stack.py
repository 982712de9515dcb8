"""`fairway up`: the whole stack from nothing, a clear stop when a child dies (or a restart, with
FAIRWAY_RESTART=always), replicas that reach each other, a clean Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import httpx
import psutil
import pytest

from services.common.embedded import free_port
from services.stack.children import Backoff, describe_exit, listening
from services.stack.config import StackConfig
from services.stack.plan import banner, grpc_target, plan, port_clashes, service_tokens
from services.stack.supervisor import emulated_providers
from tests.predictor.support import wait_until

ROOT = Path(__file__).resolve().parents[1]
REPLICAS = 5  # the most replicas of a service a test here starts: their ports must be free too


def _free_base(stride: int) -> int:
    """A port free for every replica a test may start on it (base + stride * i)."""
    while True:
        base = free_port()
        if base + stride * REPLICAS > 65535:
            continue
        try:
            for i in range(1, REPLICAS):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + stride * i))
        except OSError:
            continue
        return base


def _start(home: Path, **settings: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`fairway up` on free ports (their bases by service in the answer) and `settings` over the environment."""
    ports = {k: str(_free_base(10)) for k in ("SCHEDULER", "RATELIMITER", "PREDICTOR")}
    ports.update({k: str(_free_base(1)) for k in ("GATEWAY", "EMULATOR")})
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "REPLICATE_API_TOKEN", "FAIRWAY_ADMIN_KEY")}
    env.update({f"FAIRWAY_{k}_PORT": v for k, v in ports.items()})
    env.update({"FAIRWAY_HOME": str(home), "FAIRWAY_SCHEDULER_METRICS_PORT": "0",
                "FAIRWAY_RATELIMITER_METRICS_PORT": "0", "FAIRWAY_PREDICTOR_METRICS_PORT": "0",
                "PYTHONUNBUFFERED": "1", **settings})
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, ports


def kill_tree(proc: subprocess.Popen[str], home: Path | None = None) -> str:
    """After a failure: stop `fairway up` as Ctrl-C does (its children, then its embedded servers);
    if it does not stop in time, kill its children too (they run in sessions of their own) and the
    embedded PostgreSQL under `home` (a daemon, no child of it). Returns what it printed on stderr
    and nobody read."""
    if proc.poll() is not None:
        return ""
    proc.send_signal(signal.SIGINT)
    with suppress(subprocess.TimeoutExpired):
        return proc.communicate(timeout=60)[1] or ""
    with suppress(psutil.NoSuchProcess):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with suppress(psutil.NoSuchProcess):
                child.kill()
    proc.kill()
    errors = proc.communicate()[1] or ""
    pid_file = (home / "postgres" / "postmaster.pid") if home else None
    if pid_file is not None and pid_file.exists():
        with suppress(ValueError, psutil.NoSuchProcess):
            postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
            if "postgres" in postmaster.name():
                postmaster.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
    return errors


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
        shown = _read_until(proc, "Ctrl-C stops everything")
        admin_key = (tmp_path / "home" / "admin_key").read_text().strip()
        assert f"http://127.0.0.1:{ports['GATEWAY']}" in shown and admin_key in shown
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
        kill_tree(proc, tmp_path / "home")


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
        kill_tree(proc, home)

    again, ports = _start(home)
    try:
        _read_until(again, "Ctrl-C stops everything")
        gateway = f"http://127.0.0.1:{ports['GATEWAY']}"
        kept = httpx.get(f"{gateway}/v1/tenants/kept", headers=auth, timeout=10)
        assert kept.status_code == 200, "the embedded database keeps its data under FAIRWAY_HOME"
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=90)
    finally:
        kill_tree(again, home)


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


def _replicas(proc: subprocess.Popen[str]) -> dict[tuple[str, int], psutil.Process]:
    """`fairway up`'s running children by (service, port)."""
    found = {}
    for child in psutil.Process(proc.pid).children():
        with suppress(psutil.NoSuchProcess):
            cmd = child.cmdline()
            if "run" in cmd and child.status() != psutil.STATUS_ZOMBIE:
                service = cmd[cmd.index("run") + 1]
                found[service, int(child.environ()[f"FAIRWAY_{service.upper()}_PORT"])] = child
    return found


def _config(**env: str) -> StackConfig:
    return StackConfig.model_validate({"FAIRWAY_HOME": "/tmp/fairway-plan", **env})


def test_replicas_listen_on_ports_of_their_own_and_reach_every_replica_of_the_others() -> None:
    cfg = _config(FAIRWAY_GATEWAYS="2", FAIRWAY_SCHEDULERS="2", FAIRWAY_RATELIMITERS="3", FAIRWAY_PREDICTORS="4")
    specs = plan(cfg, {"DATABASE_URL": "postgresql://db", "REDIS_URL": "redis://r"}, emulated_providers(cfg),
                 service_tokens())
    assert [s.name for s in specs] == [
        "emulator", "ratelimiter-1", "ratelimiter-2", "ratelimiter-3", "scheduler-1", "scheduler-2",
        "predictor-1", "predictor-2", "predictor-3", "predictor-4", "gateway-1", "gateway-2"]
    # The defaults of the three gRPC services are 1 apart: their replicas must not meet.
    assert port_clashes(specs) == []
    by_name = {s.name: s for s in specs}
    assert by_name["scheduler-2"].address == "127.0.0.1:50061"
    assert by_name["gateway-2"].address == "127.0.0.1:8081"
    schedulers = "ipv4:127.0.0.1:50051,127.0.0.1:50061"
    ratelimiters = "ipv4:127.0.0.1:50052,127.0.0.1:50062,127.0.0.1:50072"
    for spec in specs:
        assert spec.env["FAIRWAY_SCHEDULER_ADDR"] == schedulers and spec.env["FAIRWAY_RATELIMITER_ADDR"] == ratelimiters
        assert spec.env["DATABASE_URL"] == "postgresql://db" and spec.env["REDIS_URL"] == "redis://r"
        if spec.service != "emulator":
            assert spec.env[f"FAIRWAY_{spec.service.upper()}_PORT"] == str(spec.port)
    assert by_name["predictor-3"].env["FAIRWAY_PREDICTOR_METRICS_PORT"] == "9123"
    assert by_name["predictor-3"].ports == (50073, 9123)
    shown = banner(specs, "fw_admin_x", "always")
    for spec in specs:
        assert spec.shown in shown, spec.name
    # Each caller presents a token of its own, which the servers it calls accept by its hash.
    tokens = {s.service: s.env["FAIRWAY_SERVICE_TOKEN"] for s in specs if "FAIRWAY_SERVICE_TOKEN" in s.env}
    assert set(tokens) == {"gateway", "scheduler", "predictor"} and len(set(tokens.values())) == 3
    expected = {"scheduler": {"gateway", "predictor"}, "ratelimiter": {"gateway", "scheduler", "predictor"}}
    for spec in specs:
        accepted = spec.env.get("FAIRWAY_ACCEPTED_TOKENS")
        assert (accepted is None) == (spec.service not in expected), spec.name
        if accepted is not None:
            assert set(accepted.split(",")) == {
                f"{c}:{hashlib.sha256(tokens[c].encode()).hexdigest()}" for c in expected[spec.service]}, spec.name
    # One replica: the plain address every service understood before replicas.
    single = plan(_config(), {}, {}, service_tokens())
    assert {s.env["FAIRWAY_SCHEDULER_ADDR"] for s in single} == {"127.0.0.1:50051"} == {grpc_target([50051])}
    assert [s.name for s in single] == ["ratelimiter", "scheduler", "predictor", "gateway"]


def test_ports_two_children_would_share_are_refused_before_anything_starts() -> None:
    cfg = _config(FAIRWAY_GATEWAYS="11")  # the 11th gateway would take the emulator's 8090
    assert port_clashes(plan(cfg, {}, emulated_providers(cfg), service_tokens())) == [
        "gateway-11 and emulator would both listen on port 8090"]


def test_the_emulator_enforces_the_limits_and_the_clock_fairway_plans_with() -> None:
    cfg = _config(FAIRWAY_LIMITS="/etc/limits.yaml", FAIRWAY_EMULATOR_TIME_SCALE="10")
    specs = {s.name: s for s in plan(cfg, {}, emulated_providers(cfg), service_tokens())}
    assert specs["emulator"].env["FAIRWAY_EMULATOR_LIMITS"] == "/etc/limits.yaml"
    assert specs["ratelimiter"].env["FAIRWAY_RATELIMITER_TIME_SCALE"] == "10"
    # A real provider keeps real time: the ratelimiter's clock is its own then.
    cfg = _config(FAIRWAY_EMULATOR_TIME_SCALE="10", OPENAI_API_KEY="sk-real")
    specs = {s.name: s for s in plan(cfg, {}, emulated_providers(cfg), service_tokens())}
    assert "FAIRWAY_RATELIMITER_TIME_SCALE" not in specs["ratelimiter"].env


def test_restart_backoff_doubles_to_its_cap_and_starts_over_after_a_long_run() -> None:
    backoff = Backoff(first_s=1, max_s=10, reset_after_s=30)
    assert [backoff.after_exit(ran_s=2) for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    assert backoff.after_exit(ran_s=31) == 1
    assert backoff.after_exit(ran_s=2) == 2
    assert _config(FAIRWAY_RESTART="Always").restart == "always"  # as Kubernetes spells it
    with pytest.raises(ValueError, match="FAIRWAY_RESTART"):
        _config(FAIRWAY_RESTART="sometimes")
    assert describe_exit(-9) == "exited with -9 (SIGKILL)" and describe_exit(3) == "exited with 3"


def test_a_killed_replica_is_restarted_on_its_port_with_its_environment_while_the_other_serves(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    proc, ports = _start(home, FAIRWAY_SCHEDULERS="2", FAIRWAY_GATEWAYS="2", FAIRWAY_RESTART="always")
    try:
        scheduler_ports = [int(ports["SCHEDULER"]), int(ports["SCHEDULER"]) + 10]
        gateways = [f"http://127.0.0.1:{int(ports['GATEWAY']) + i}" for i in range(2)]
        shown = _read_until(proc, "Ctrl-C stops everything")
        for address in [*gateways, *(f"127.0.0.1:{p}" for p in scheduler_ports)]:
            assert address in shown
        auth = {"Authorization": f"Bearer {(home / 'admin_key').read_text().strip()}"}
        first = _replicas(proc)[("scheduler", scheduler_ports[0])]
        environment = first.environ()
        first.kill()

        # The gateways' channels go around the dead replica to the other one.
        def created(tenant: str) -> bool:
            reply = httpx.post(f"{gateways[1]}/v1/tenants", json={"id": tenant}, headers=auth, timeout=10)
            assert reply.status_code in (201, 503), reply.text
            return reply.status_code == 201
        wait_until(lambda: created("while-one-is-down"), "a tenant created with one scheduler down", 20)

        def replaced(old: psutil.Process) -> psutil.Process | None:
            new = _replicas(proc).get(("scheduler", scheduler_ports[0]))
            up = new is not None and new.pid != old.pid and listening("127.0.0.1", scheduler_ports[0])
            return new if up else None
        wait_until(lambda: replaced(first) is not None, "the killed scheduler restarted on its port", 30)
        second = replaced(first)
        assert second is not None and second.environ() == environment
        # Killed again before it ran for long: the wait before the next restart doubles.
        second.kill()
        wait_until(lambda: replaced(second) is not None, "the scheduler restarted again", 30)
        assert httpx.get(f"{gateways[0]}/v1/tenants/while-one-is-down", headers=auth, timeout=10).status_code == 200

        proc.send_signal(signal.SIGINT)
        errors = proc.communicate(timeout=90)[1]
        assert proc.returncode == 0, errors
        assert "scheduler-1 exited with -9 (SIGKILL) after" in errors and "restarting it in 1s" in errors
        assert "restarting it in 2s" in errors and "scheduler-1 restarted on" in errors
        assert "stopping the stack" not in errors
        assert (home / "logs" / "scheduler-1.log").read_text().count("--- fairway up: restart") == 2
    finally:
        kill_tree(proc, home)


def test_a_bad_setting_is_named_and_nothing_starts(tmp_path: Path) -> None:
    proc, _ = _start(tmp_path / "home", FAIRWAY_RESTART="sometimes")
    errors = proc.communicate(timeout=60)[1]
    assert proc.returncode == 2
    assert "FAIRWAY_RESTART: Input should be 'never' or 'always'" in errors
    assert not (tmp_path / "home").exists()
