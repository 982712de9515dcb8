"""A scheduler whose dispatch loop keeps failing turns NOT_SERVING (and the gateway not ready),
and SERVING again once the loop works: health follows the background loops, not only the
gRPC server being up."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.embedded import create_database
from tests.e2e.stack import E2EStack, wait_terminal


def test_health_follows_a_dispatch_loop_that_cannot_claim(tmp_path: Path, postgres_dsn: str, redis_url: str) -> None:
    # The scheduler logs in as a role of its own (a superuser would ignore the revoke): every
    # claim inserts leases, which the role may not do for a while, as after a bad grant.
    role, password = f"fairway_{secrets.token_hex(6)}", secrets.token_hex(8)
    database_url = asyncio.run(_database_owned_by(postgres_dsn, role, password))
    admin_url = urlunsplit(urlsplit(postgres_dsn)._replace(path=urlsplit(database_url).path))
    with E2EStack(tmp_path, _as(database_url, role, password), redis_url, time_scale=10.0,
                  scheduler={"FAIRWAY_SCHEDULER_UNHEALTHY_AFTER_S": "1"}) as stack:
        scheduler = f"127.0.0.1:{stack.ports['scheduler']}"
        _, client = stack.create_tenant("store-health", credits=10)
        asyncio.run(_execute(admin_url, f'REVOKE INSERT ON leases FROM "{role}"'))
        job = client.post("/v1/jobs", json={
            "provider": "replicate", "model": "google/nano-banana",
            "items": [{"ref": f"h{i}", "input": {"prompt": f"health {i}"}} for i in range(3)],
        })
        assert job.status_code == 201, job.text

        _wait_until(lambda: _health(scheduler) == "NOT_SERVING", "the scheduler to turn NOT_SERVING")
        ready = httpx.get(f"{stack.gateway_url}/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert "scheduler" in ready.json()["error"]["message"]
        log = stack.processes["scheduler"].log()
        assert "InsufficientPrivilegeError" in log and "dispatch has been failing" in log

        asyncio.run(_execute(admin_url, f'GRANT INSERT ON leases TO "{role}"'))
        _wait_until(lambda: _health(scheduler) == "SERVING", "the scheduler to serve again")
        assert httpx.get(f"{stack.gateway_url}/readyz", timeout=10).status_code == 200
        final = wait_terminal(client, job.json()["id"])
        assert final["status"] == "DONE" and final["counts"]["DONE"] == 3, final
        assert stack.processes["scheduler"].proc is not None
        assert stack.processes["scheduler"].proc.poll() is None, "the same process recovered"


async def _database_owned_by(server_dsn: str, role: str, password: str) -> str:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    finally:
        await conn.close()
    database_url = await create_database(server_dsn, "fairway_health")
    await _execute(server_dsn, f'ALTER DATABASE "{urlsplit(database_url).path[1:]}" OWNER TO "{role}"')
    return database_url


def _as(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


async def _execute(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _health(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Polls another process's state until `condition` holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
