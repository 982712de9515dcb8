"""SIGTERM: a gRPC service turns NOT_SERVING first (so balancers stop sending), then exits 0."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.embedded import free_port
from tests.conftest import fresh_database
from tests.support.processes import ServiceProcess
from tests.support.tokens import service_env


async def _statuses_until_terminated(process: ServiceProcess, address: str) -> list[str]:
    seen: list[str] = []
    async with grpc.aio.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        try:
            async for reply in watch:
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                if seen == ["SERVING"]:
                    assert process.proc is not None
                    process.proc.terminate()  # SIGTERM
        except grpc.aio.AioRpcError:
            pass  # the server went away after flipping
    return seen


@pytest.mark.parametrize("service", ["ratelimiter", "scheduler"])
async def test_sigterm_flips_health_then_exits_cleanly(
    service: str, tmp_path: Path, redis_url: str, postgres_dsn: str
) -> None:
    port = free_port()
    env = {
        "REDIS_URL": redis_url, "FAIRWAY_RATELIMITER_PORT": str(port), "FAIRWAY_RATELIMITER_METRICS_PORT": "0",
        "FAIRWAY_SCHEDULER_PORT": str(port), "FAIRWAY_SCHEDULER_METRICS_PORT": "0",
        "FAIRWAY_RATELIMITER_ADDR": f"127.0.0.1:{free_port()}", **service_env(service),
    }
    if service == "scheduler":
        env["DATABASE_URL"] = await fresh_database(postgres_dsn)
    process = ServiceProcess(service, env=env, log_dir=tmp_path).start()
    try:
        await asyncio.to_thread(process.wait_grpc_serving, f"127.0.0.1:{port}")
        seen = await _statuses_until_terminated(process, f"127.0.0.1:{port}")
        assert seen[:2] == ["SERVING", "NOT_SERVING"], process.log()[-2000:]
        assert process.proc is not None
        assert await asyncio.to_thread(process.proc.wait, 30) == 0, process.log()[-2000:]
    finally:
        process.stop()
