"""One child process of `fairway up`: started, watched, restarted with the same spec.

    child = Child(spec, logs)
    child.spawn()                      # in a session of its own, its output appended to its log
    child.listening()                  # its port accepts connections
    delay = child.backoff.after_exit(ran_s)
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from services.stack.plan import ChildSpec


@dataclass
class Backoff:
    """Kubernetes' restart backoff: the wait doubles while a child keeps dying, up to `max_s`,
    and starts over from `first_s` once a child ran `reset_after_s` before it died."""

    first_s: float
    max_s: float
    reset_after_s: float
    _next_s: float | None = None

    def after_exit(self, ran_s: float) -> float:
        """The wait before restarting a child that died after running `ran_s` seconds."""
        if self._next_s is None or ran_s >= self.reset_after_s:
            self._next_s = self.first_s
        delay = min(self._next_s, self.max_s)
        self._next_s = min(max(self._next_s * 2, self.first_s), self.max_s)
        return delay


def listening(host: str, port: int) -> bool:
    """Something accepts connections on the port."""
    try:
        socket.create_connection((host, port), timeout=0.2).close()
    except OSError:
        return False
    return True


def describe_exit(code: int) -> str:
    """`exited with 1`, or `exited with -9 (SIGKILL)` for a child a signal ended."""
    if code < 0:
        try:
            return f"exited with {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exited with {code}"


class Child:
    def __init__(self, spec: ChildSpec, logs: Path, backoff: Backoff) -> None:
        self.spec = spec
        self.log_path = logs / f"{spec.name}.log"
        self.backoff = backoff
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.restart_at: float | None = None  # a restart is due then (the child is down)
        self.ready = False  # listening since its last spawn

    @property
    def name(self) -> str:
        return self.spec.name

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            if self.restarts:
                log.write(f"\n--- fairway up: restart {self.restarts} ---\n".encode())
                log.flush()
            # A session of its own: a terminal's Ctrl-C reaches only `fairway up`, which stops the
            # children in order. The child keeps its own copy of the log's descriptor.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run", self.spec.service],
                env=dict(self.spec.env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.started_at = time.monotonic()
        self.restart_at = None
        self.ready = False

    def poll(self) -> int | None:
        """Its exit code once it has exited (None while it runs or before it was started)."""
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def listening(self) -> bool:
        return listening(self.spec.host, self.spec.port)

    def ran_s(self) -> float:
        return time.monotonic() - self.started_at

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout_s: float) -> bool:
        """SIGTERM, then SIGKILL after `timeout_s`; False when it had to be killed."""
        if not self.running():
            return True
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        return True

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
