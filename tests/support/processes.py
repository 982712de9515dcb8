"""Run Fairway services as real child processes in tests: `fairway run SERVICE`.

    with ServiceProcess("emulator", env={"FAIRWAY_EMULATOR_PORT": str(port)}) as emu:
        emu.wait_http(f"http://127.0.0.1:{port}/_emulator/health")
        ...
        emu.kill()          # SIGKILL, as a crash would
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    def __init__(self, service: str, env: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.service = service
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = (log_dir or Path("/tmp")) / f"fairway-{service}-{os.getpid()}-{id(self)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", self.service],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.service} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")

    def wait_port(self, port: int, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.service} did not listen on {port}:\n{self.log()[-4000:]}")

    def wait_http(self, url: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.service} not ready at {url}:\n{self.log()[-4000:]}")

    def wait_grpc_serving(self, address: str, timeout_s: float = 90.0) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"{self.service} not SERVING at {address}:\n{self.log()[-4000:]}")

    def usage(self) -> dict[str, float]:
        """CPU seconds (user + system) and peak RSS (MiB) of the running process, from /proc:
        `{"cpu_s": 1.2, "peak_rss_mib": 88.0}`; zeros once it has exited or off Linux."""
        assert self.proc is not None
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return {"cpu_s": 0.0, "peak_rss_mib": 0.0}
        # Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
        fields = stat.rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        hwm_kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
        return {"cpu_s": ticks / os.sysconf("SC_CLK_TCK"), "peak_rss_mib": hwm_kib / 1024}

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout_s: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
        if hasattr(self, "_log"):
            self._log.close()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
