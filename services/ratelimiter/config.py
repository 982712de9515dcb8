"""Settings of the ratelimiter; the only place it reads the environment."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.auth import check_accepted_tokens


class RateLimiterConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FAIRWAY_RATELIMITER_", extra="ignore", populate_by_name=True, frozen=True
    )

    redis_url: str = Field(validation_alias="REDIS_URL")
    limits_path: str | None = Field(default=None, validation_alias="FAIRWAY_LIMITS")
    # The callers accepted (`identity:sha256hex,...`, the hash of each one's FAIRWAY_SERVICE_TOKEN;
    # docs/design/security.md), and whether the reflection service is served (to them only).
    accepted_tokens: Annotated[str, AfterValidator(check_accepted_tokens)] = Field(
        default="", validate_default=True, validation_alias="FAIRWAY_ACCEPTED_TOKENS"
    )
    grpc_reflection: bool = Field(default=False, validation_alias="FAIRWAY_GRPC_REFLECTION")
    host: str = "127.0.0.1"
    port: int = Field(default=50052, ge=0, le=65535)
    metrics_port: int = Field(default=9102, ge=0, le=65535)  # 0 disables /metrics
    grace_s: float = Field(default=5.0, ge=0)
    # Multiplies every rate: an emulator run at time scale 60 needs budgets x60.
    time_scale: float = Field(default=1.0, gt=0)
    # Grants that may be taken at once, as a fraction of the per-minute limit (at least 1).
    # The sustained rate is the limit minus this burst, so no rolling minute exceeds the limit;
    # the fraction is therefore also what a saturated minute leaves unused.
    burst_fraction: float = Field(default=0.005, gt=0, lt=1)
    # Seconds (of the provider's time, like its minute: divided by time_scale) for the
    # upstream-feedback rate factor to climb back from 0 to 1.
    recovery_s: float = Field(default=10.0, gt=0)
    # Provider seconds a 429's measure of the share left to us holds before the rate recovers:
    # about a minute, so a client sharing the key costs about one 429 a minute, and a little
    # less, so the full rate is back within a minute of its leaving.
    hold_s: float = Field(default=55.0, gt=0)
    # Floor of the rate factor: feedback never stops a budget entirely (cooldowns do that).
    min_rate_factor: float = Field(default=0.05, gt=0, le=1)
    # Cooldown after a 429 that came without any retry advice.
    default_cooldown_s: float = Field(default=1.0, ge=0)
    # Optional concurrency per budget, e.g. {"replicate:create": 100} (JSON in the environment).
    concurrency: dict[str, int] = Field(default_factory=dict)
    # How long a grant may stay open: it holds a concurrency slot at most this long, and a
    # settle or release arriving later no longer changes the budget.
    grant_ttl_s: float = Field(default=600.0, gt=0)
    # Redis key prefix, so that several deployments (or tests) can share one Redis.
    key_prefix: str = "fw:rl"
    # How often the Redis connection is probed to flip health back to SERVING.
    probe_interval_s: float = Field(default=0.5, gt=0)
    # Advice given with UNAVAILABLE while Redis is unreachable.
    unavailable_retry_s: float = Field(default=1.0, gt=0)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
