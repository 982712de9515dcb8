"""The ratelimiter's gRPC port answers only its callers: grants to the scheduler and the
predictors, stats to the gateway too, Envoy's API to Envoy; health is open, reflection off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from fairway.ratelimiter.v1 import ratelimiter_pb2, ratelimiter_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.auth import service_channel
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.errors import RateLimiterError
from services.ratelimiter.server import RateLimiterServer, create_server
from tests.ratelimiter.conftest import make_config
from tests.support.processes import ROOT
from tests.support.tokens import TOKENS, channel_as

ACQUIRE = ratelimiter_pb2.AcquireRequest(budget="replicate:read", count=1)


async def code_of(channel: grpc.aio.Channel, request: ratelimiter_pb2.AcquireRequest = ACQUIRE) -> grpc.StatusCode:
    try:
        await ratelimiter_pb2_grpc.RateLimiterStub(channel).Acquire(request, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_a_call_without_credentials_is_unauthenticated(grpc_address: str) -> None:
    async with grpc.aio.insecure_channel(grpc_address) as anonymous:
        assert await code_of(anonymous) == grpc.StatusCode.UNAUTHENTICATED
        rls = rls_pb2_grpc.RateLimitServiceStub(anonymous)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rls.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="fairway"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with service_channel(grpc_address, "guessed") as guessed:
        assert await code_of(guessed) == grpc.StatusCode.UNAUTHENTICATED


async def test_grants_go_to_the_scheduler_and_the_predictors_only(grpc_address: str) -> None:
    for identity, expected in (("scheduler", grpc.StatusCode.OK), ("predictor", grpc.StatusCode.OK),
                               ("gateway", grpc.StatusCode.PERMISSION_DENIED),
                               ("envoy", grpc.StatusCode.PERMISSION_DENIED)):
        async with channel_as(identity, grpc_address) as channel:
            assert await code_of(channel) == expected, identity
    gateway = BudgetClient(grpc_address, token=TOKENS["gateway"])
    try:
        assert (await gateway.stats()).budgets  # what the stats page shows
        with pytest.raises(RateLimiterError, match="PERMISSION_DENIED"):
            await gateway.set_tenant_caps("t", rpm=1)
        with pytest.raises(RateLimiterError, match="PERMISSION_DENIED"):
            await gateway.release(["g-1"])
    finally:
        await gateway.close()


async def test_envoys_api_is_envoys_alone(grpc_address: str) -> None:
    request = rls_pb2.RateLimitRequest(domain="fairway")
    async with channel_as("scheduler", grpc_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with channel_as("envoy", grpc_address) as channel:
        reply = await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request)
        assert reply.overall_code == rls_pb2.RateLimitResponse.Code.OK


async def test_health_answers_without_a_token_and_reflection_is_off(grpc_address: str) -> None:
    async with grpc.aio.insecure_channel(grpc_address) as anonymous:
        reply = await health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    async with channel_as("scheduler", grpc_address) as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_reflection_when_on_needs_a_token(redis_url: str, slow_limits: str) -> None:
    config = make_config(redis_url, slow_limits, host="127.0.0.1", grpc_reflection=True)
    parts = RateLimiterServer(config)
    server, port, _ = create_server(config, parts)
    await server.start()
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as anonymous:
            call = reflection_pb2_grpc.ServerReflectionStub(anonymous).ServerReflectionInfo(iter([request]))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with channel_as("predictor", f"127.0.0.1:{port}") as channel:
            call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]))
            reply = await call.read()
            assert "fairway.ratelimiter.v1.RateLimiter" in [s.name for s in reply.list_services_response.service]
    finally:
        await server.stop(0)
        await parts.store.aclose()


def test_without_accepted_tokens_it_refuses_to_start(tmp_path: Path, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FAIRWAY_ACCEPTED_TOKENS"}
    ran = subprocess.run([sys.executable, "-m", "services.cli", "run", "ratelimiter"], cwd=ROOT, timeout=60,
                         env={**env, "REDIS_URL": redis_url, "FAIRWAY_RATELIMITER_PORT": "0"},
                         capture_output=True, text=True)
    assert ran.returncode == 2
    assert "FAIRWAY_ACCEPTED_TOKENS" in ran.stderr and "no caller is accepted" in ran.stderr
