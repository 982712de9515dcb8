"""The gateway's gRPC channels: one to the scheduler, one to the ratelimiter."""

from __future__ import annotations

import grpc
from fairway.ratelimiter.v1 import ratelimiter_pb2_grpc
from fairway.scheduler.v1 import scheduler_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.auth import service_channel
from services.gateway.config import Settings

HEALTH_TIMEOUT_S = 2.0


class Upstreams:
    """Stubs over long-lived channels; created in the app's lifespan, closed at its end."""

    def __init__(self, settings: Settings) -> None:
        self.timeout_s = settings.rpc_timeout_s
        token = settings.service_token.get_secret_value()
        self._scheduler_channel = service_channel(settings.scheduler_addr, token)
        self._ratelimiter_channel = service_channel(settings.ratelimiter_addr, token)
        self.scheduler = scheduler_pb2_grpc.SchedulerStub(self._scheduler_channel)
        self.ratelimiter = ratelimiter_pb2_grpc.RateLimiterStub(self._ratelimiter_channel)

    async def ready(self) -> dict[str, bool]:
        """Whether each dependency answers the standard health check with SERVING."""
        out = {}
        for name, channel in (
            ("scheduler", self._scheduler_channel),
            ("ratelimiter", self._ratelimiter_channel),
        ):
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT_S)
                out[name] = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                out[name] = False
        return out

    async def close(self) -> None:
        await self._scheduler_channel.close()
        await self._ratelimiter_channel.close()
