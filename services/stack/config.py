"""Settings of `fairway up`, from the environment (nowhere else in the stack reads it)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class StackConfig(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    home: Path = Field(default=Path(".fairway"), validation_alias="FAIRWAY_HOME")
    database_url: str = Field(default="", validation_alias="DATABASE_URL")
    redis_url: str = Field(default="", validation_alias="REDIS_URL")
    admin_key: str = Field(default="", validation_alias="FAIRWAY_ADMIN_KEY")
    openai_api_key: str = Field(default="", validation_alias="OPENAI_API_KEY")
    replicate_api_token: str = Field(default="", validation_alias="REPLICATE_API_TOKEN")
    # Base ports: replica i of a gRPC service listens on its base + 10 * i, gateway i on its base + i
    # (services/stack/plan.py says why).
    gateway_host: str = Field(default="127.0.0.1", validation_alias="FAIRWAY_GATEWAY_HOST")
    gateway_port: int = Field(default=8080, ge=1, le=65535, validation_alias="FAIRWAY_GATEWAY_PORT")
    scheduler_port: int = Field(default=50051, ge=1, le=65535, validation_alias="FAIRWAY_SCHEDULER_PORT")
    ratelimiter_port: int = Field(default=50052, ge=1, le=65535, validation_alias="FAIRWAY_RATELIMITER_PORT")
    predictor_port: int = Field(default=50053, ge=1, le=65535, validation_alias="FAIRWAY_PREDICTOR_PORT")
    # Prometheus ports of the first replica of each gRPC service (0: none), the others at + 10 * i.
    scheduler_metrics_port: int = Field(default=9101, ge=0, le=65535, validation_alias="FAIRWAY_SCHEDULER_METRICS_PORT")
    ratelimiter_metrics_port: int = Field(
        default=9102, ge=0, le=65535, validation_alias="FAIRWAY_RATELIMITER_METRICS_PORT")
    predictor_metrics_port: int = Field(default=9103, ge=0, le=65535, validation_alias="FAIRWAY_PREDICTOR_METRICS_PORT")
    emulator_host: str = Field(default="127.0.0.1", validation_alias="FAIRWAY_EMULATOR_HOST")
    emulator_port: int = Field(default=8090, ge=1, le=65535, validation_alias="FAIRWAY_EMULATOR_PORT")
    # Replicas of each service, as a cluster would run them; all share one PostgreSQL and one Redis.
    gateways: int = Field(default=1, ge=1, le=50, validation_alias="FAIRWAY_GATEWAYS")
    schedulers: int = Field(default=1, ge=1, le=50, validation_alias="FAIRWAY_SCHEDULERS")
    ratelimiters: int = Field(default=1, ge=1, le=50, validation_alias="FAIRWAY_RATELIMITERS")
    predictors: int = Field(default=1, ge=1, le=50, validation_alias="FAIRWAY_PREDICTORS")
    # "never": a child that dies stops the stack (a half-running stack that hangs is worse than
    # one that stops); "always": it is restarted, as Kubernetes restarts a container.
    restart: Literal["never", "always"] = Field(default="never", validation_alias="FAIRWAY_RESTART")
    # Kubernetes' CrashLoopBackOff, shortened for one machine: the wait before a restart doubles
    # from the first to the longest while the child keeps dying, and starts over once a child has
    # run this long (it was not crash-looping).
    restart_backoff_s: float = Field(default=1.0, ge=0, validation_alias="FAIRWAY_RESTART_BACKOFF_S")
    restart_backoff_max_s: float = Field(default=10.0, ge=0, validation_alias="FAIRWAY_RESTART_BACKOFF_MAX_S")
    restart_reset_s: float = Field(default=10.0, gt=0, validation_alias="FAIRWAY_RESTART_RESET_S")
    # Seconds each child gets to become ready before the stack gives up (at start) or kills it
    # for another try (at a restart).
    start_timeout: float = Field(default=60.0, gt=0, validation_alias="FAIRWAY_START_TIMEOUT")
    # The emulator stands in for the providers, so by default it enforces the limits Fairway plans
    # with and runs on the clock the ratelimiter counts in: only explicit settings part them.
    limits: str = Field(default="", validation_alias="FAIRWAY_LIMITS")
    emulator_limits: str = Field(default="", validation_alias="FAIRWAY_EMULATOR_LIMITS")
    emulator_time_scale: str = Field(default="", validation_alias="FAIRWAY_EMULATOR_TIME_SCALE")
    ratelimiter_time_scale: str = Field(default="", validation_alias="FAIRWAY_RATELIMITER_TIME_SCALE")

    @field_validator("restart", mode="before")
    @classmethod
    def _restart_word(cls, value: object) -> object:
        # Kubernetes spells its policies Always / Never.
        return value.strip().lower() if isinstance(value, str) else value
