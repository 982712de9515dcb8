"""Builds the ratelimiter's gRPC server: its own API, Envoy's RLS API, health, metrics."""

from __future__ import annotations

import grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from fairway.ratelimiter.v1 import ratelimiter_pb2_grpc

from services.common import grpc_server
from services.common.auth import AcceptedTokens, ServiceAuth
from services.common.grpc_server import HealthState
from services.common.limits import Limits
from services.ratelimiter.budgets import BudgetBook
from services.ratelimiter.config import RateLimiterConfig
from services.ratelimiter.envoy import SERVICE_NAME as ENVOY_SERVICE
from services.ratelimiter.envoy import EnvoyRateLimitServicer
from services.ratelimiter.limiter import RateLimiter
from services.ratelimiter.servicer import RateLimiterServicer
from services.ratelimiter.store import BudgetStore, StoreParams

SERVICE_NAME = "fairway.ratelimiter.v1.RateLimiter"
SERVICE_NAMES = (SERVICE_NAME, ENVOY_SERVICE)


class RateLimiterServer:
    """The parts main() wires together and tests reach into."""

    def __init__(self, config: RateLimiterConfig) -> None:
        limits = Limits.load(config.limits_path)
        self.book = BudgetBook(
            limits,
            time_scale=config.time_scale,
            burst_fraction=config.burst_fraction,
            concurrency=config.concurrency,
        )
        self.store = BudgetStore(
            config.redis_url,
            StoreParams(
                key_prefix=config.key_prefix,
                grant_ttl_s=config.grant_ttl_s,
                recovery_s=config.recovery_s,
                min_rate_factor=config.min_rate_factor,
                time_scale=config.time_scale,
                burst_fraction=config.burst_fraction,
            ),
        )
        self.health: HealthState | None = None
        self.limiter = RateLimiter(
            self.book,
            self.store,
            utilization=limits.utilization,
            time_scale=config.time_scale,
            default_cooldown_s=config.default_cooldown_s,
            hold_s=config.hold_s / config.time_scale,
            on_availability=self._on_availability,
        )

    async def _on_availability(self, up: bool) -> None:
        if self.health is not None:
            await self.health.set(serving=up)


def create_server(
    config: RateLimiterConfig, parts: RateLimiterServer | None = None
) -> tuple[grpc.aio.Server, int, HealthState]:
    """Build (not start) the server on `parts` (new ones by default); bind the configured address.

    Returns the server, the bound port and its health, which follows Redis from then on.
    """
    parts = parts or RateLimiterServer(config)
    server, port, health = grpc_server.create_server(
        [
            (
                ratelimiter_pb2_grpc.add_RateLimiterServicer_to_server,
                RateLimiterServicer(parts.limiter, unavailable_retry_s=config.unavailable_retry_s),
            ),
            (
                rls_pb2_grpc.add_RateLimitServiceServicer_to_server,
                EnvoyRateLimitServicer(parts.limiter, unavailable_retry_s=config.unavailable_retry_s),
            ),
        ],
        service_names=SERVICE_NAMES,
        address=config.address,
        auth=ServiceAuth(AcceptedTokens.parse(config.accepted_tokens)),
        reflection_on=config.grpc_reflection,
    )
    parts.health = health
    return server, port, health
