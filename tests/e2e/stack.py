"""The whole Fairway stack as separate processes on free ports, for end-to-end tests.

    with E2EStack(tmp_path, database_url, redis_url) as stack:
        admin = stack.client(stack.admin_key)
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from services.common.embedded import free_port
from services.stack.tokens import ensure_tokens, service_env
from tests.support.processes import ServiceProcess


class E2EStack:
    def __init__(
        self, workdir: Path, database_url: str, redis_url: str, *,
        emulator: dict[str, str] | None = None, scheduler: dict[str, str] | None = None,
        predictor: dict[str, str] | None = None, time_scale: float = 1.0,
    ) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.admin_key = "admin-" + secrets.token_hex(8)
        self.ports = {name: free_port() for name in ("emulator", "ratelimiter", "scheduler", "gateway")}
        self.emulator_url = f"http://127.0.0.1:{self.ports['emulator']}"
        self.gateway_url = f"http://127.0.0.1:{self.ports['gateway']}"
        self.replicate_token = "r8_" + secrets.token_hex(6)
        self.openai_key = "sk-" + secrets.token_hex(6)
        scale = str(time_scale)
        base = {
            "FAIRWAY_SCHEDULER_ADDR": f"127.0.0.1:{self.ports['scheduler']}",
            "FAIRWAY_RATELIMITER_ADDR": f"127.0.0.1:{self.ports['ratelimiter']}",
            "FAIRWAY_SCHEDULER_METRICS_PORT": "0", "FAIRWAY_RATELIMITER_METRICS_PORT": "0",
            "FAIRWAY_PREDICTOR_METRICS_PORT": "0",
            "REPLICATE_API_TOKEN": self.replicate_token, "REPLICATE_BASE_URL": self.emulator_url,
            "OPENAI_API_KEY": self.openai_key, "OPENAI_BASE_URL": f"{self.emulator_url}/v1",
            "FAIRWAY_ADMIN_KEY": self.admin_key,
        }
        self._envs = {
            "emulator": {**base, "FAIRWAY_EMULATOR_PORT": str(self.ports["emulator"]),
                         "FAIRWAY_EMULATOR_TIME_SCALE": scale, **(emulator or {})},
            "ratelimiter": {**base, "REDIS_URL": redis_url, "FAIRWAY_RATELIMITER_PORT": str(self.ports["ratelimiter"]),
                            "FAIRWAY_RATELIMITER_TIME_SCALE": scale},
            "scheduler": {**base, "DATABASE_URL": database_url, "FAIRWAY_SCHEDULER_PORT": str(self.ports["scheduler"]),
                          **(scheduler or {})},
            "predictor": {**base, "FAIRWAY_POLL_INITIAL_SECONDS": "0.05", "FAIRWAY_POLL_MAX_SECONDS": "0.5",
                          **(predictor or {})},
            "gateway": {**base, "FAIRWAY_GATEWAY_PORT": str(self.ports["gateway"])},
        }
        # Every service authenticates as `fairway up` makes it: a token each, its callers' hashes.
        self.tokens = ensure_tokens(workdir)
        for name, env in self._envs.items():
            env.update(service_env(name, self.tokens))
        self.processes: dict[str, ServiceProcess] = {}
        self.predictors: list[ServiceProcess] = []

    def set_env(self, service: str, **env: str) -> None:
        """Change a service's environment before it starts, e.g. with a URL known once ports are chosen."""
        self._envs[service].update(env)

    def set_limits(self, path: Path) -> None:
        """One limits file for the emulator to enforce and every Fairway service to plan with."""
        self.set_env("emulator", FAIRWAY_EMULATOR_LIMITS=str(path))
        for service in ("ratelimiter", "scheduler"):
            self.set_env(service, FAIRWAY_LIMITS=str(path))

    def start(self) -> E2EStack:
        self._start("emulator").wait_http(f"{self.emulator_url}/_emulator/health")
        self._start("ratelimiter").wait_grpc_serving(f"127.0.0.1:{self.ports['ratelimiter']}")
        self.restart("scheduler")
        self.start_predictor()
        self._start("gateway").wait_http(f"{self.gateway_url}/readyz")
        return self

    def restart(self, name: str) -> ServiceProcess:
        """Start a gRPC service (again, after a kill) on its port; return once it serves."""
        process = self._start(name)
        process.wait_grpc_serving(f"127.0.0.1:{self.ports[name]}")
        return process

    def _start(self, name: str) -> ServiceProcess:
        if name in self.processes:
            self.processes[name].stop()  # closes the log of the one it replaces
        process = ServiceProcess(name, env=self._envs[name], log_dir=self.workdir).start()
        self.processes[name] = process
        return process

    def start_predictor(self) -> ServiceProcess:
        port = free_port()
        process = ServiceProcess(
            "predictor", env={**self._envs["predictor"], "FAIRWAY_PREDICTOR_PORT": str(port),
                              "FAIRWAY_WORKER_ID": f"predictor-{len(self.predictors) + 1}"},
            log_dir=self.workdir,
        ).start()
        process.wait_grpc_serving(f"127.0.0.1:{port}")
        self.predictors.append(process)
        return process

    def usage(self) -> dict[str, dict[str, float]]:
        """CPU seconds and peak RSS of every running service, summed per service (the predictors
        together, with their count): `{"scheduler": {"cpu_s": .., "peak_rss_mib": .., "processes": 1}}`.
        Call it before the stack stops."""
        out: dict[str, dict[str, float]] = {}
        for process in [*self.processes.values(), *self.predictors]:
            row = out.setdefault(process.service, {"cpu_s": 0.0, "peak_rss_mib": 0.0, "processes": 0})
            for key, value in process.usage().items():
                row[key] += value
            row["processes"] += 1
        return out

    def stop(self) -> None:
        for process in [*self.predictors, *reversed(self.processes.values())]:
            process.stop()

    def __enter__(self) -> E2EStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ---- HTTP helpers ----

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def create_tenant(self, tenant_id: str, **fields: Any) -> tuple[dict[str, Any], httpx.Client]:
        with self.client(self.admin_key) as admin:
            reply = admin.post("/v1/tenants", json={"id": tenant_id, **fields})
        assert reply.status_code == 201, reply.text
        tenant = reply.json()
        return tenant, self.client(tenant["api_key"])

    def emulator_stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.emulator_url}/_emulator/stats", timeout=10).json()  # type: ignore[no-any-return]

    def accepted(self, key: str, endpoint: str) -> int:
        return int(self.emulator_stats()["keys"].get(key, {}).get(endpoint, {}).get("accepted", 0))

    def rejected(self, key: str) -> int:
        return sum(int(e.get("rejected", 0)) for e in self.emulator_stats()["keys"].get(key, {}).values())


Event = tuple[str, dict[str, Any]]


def job_events(client: httpx.Client, job_id: str, last_event_id: str | None = None) -> Iterator[Event]:
    """(event, data) pairs of a job's SSE stream, until the server ends it."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=120) as stream:
        event, data = "", ""
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = line.split(":", 1)[1].strip()
            elif line == "" and event:
                yield event, json.loads(data)
                event, data = "", ""


def wait_terminal(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Follow the job's events until its last one; return the terminal job."""
    last: dict[str, Any] = {}
    for event, data in job_events(client, job_id):
        if event == "job":
            last = data
    assert last.get("finished_at"), f"stream ended before the job finished: {last}"
    return last


def all_items(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = ""
    while True:
        page = client.get(f"/v1/jobs/{job_id}/items", params={"limit": 1000, **({"after": after} if after else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        items += body["items"]
        if not body["next"]:
            return items
        after = body["next"]
