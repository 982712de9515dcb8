"""Scheduler settings, from the environment (nowhere else reads it)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.auth import check_accepted_tokens


class DatabaseConfig(BaseSettings):
    """What `fairway migrate` reads: the database alone (the migrations Job holds no token)."""

    model_config = SettingsConfigDict(extra="ignore")

    database_url: str = Field(min_length=1, validation_alias="DATABASE_URL")


class SchedulerConfig(DatabaseConfig):
    db_pool_min: int = Field(default=2, ge=1, validation_alias="DB_POOL_MIN")
    db_pool_max: int = Field(default=20, ge=1, validation_alias="DB_POOL_MAX")
    host: str = Field(default="127.0.0.1", validation_alias="FAIRWAY_SCHEDULER_HOST")
    port: int = Field(default=50051, ge=0, validation_alias="FAIRWAY_SCHEDULER_PORT")
    metrics_port: int = Field(default=9101, ge=0, validation_alias="FAIRWAY_SCHEDULER_METRICS_PORT")
    ratelimiter_addr: str = Field(default="127.0.0.1:50052", validation_alias="FAIRWAY_RATELIMITER_ADDR")
    # Internal authentication (docs/design/security.md): the token the scheduler presents to the
    # ratelimiter, and the callers it accepts (`identity:sha256hex,...`, the hash of each one's token).
    service_token: SecretStr = Field(min_length=1, validation_alias="FAIRWAY_SERVICE_TOKEN")
    accepted_tokens: Annotated[str, AfterValidator(check_accepted_tokens)] = Field(
        default="", validate_default=True, validation_alias="FAIRWAY_ACCEPTED_TOKENS"
    )
    # The standard reflection service (then for accepted callers only), for grpcurl and the like.
    grpc_reflection: bool = Field(default=False, validation_alias="FAIRWAY_GRPC_REFLECTION")
    # Apply the database migrations at start (fairway up, a single replica). In Kubernetes a
    # Job runs `fairway migrate` before the rollout and the replicas only check the schema.
    migrate: bool = Field(default=True, validation_alias="FAIRWAY_SCHEDULER_MIGRATE")
    # The upstream limits file: how each provider counts an item's tokens, and the most a call may count.
    limits_path: str | None = Field(default=None, validation_alias="FAIRWAY_LIMITS")
    admin_key: str = Field(default="", validation_alias="FAIRWAY_ADMIN_KEY")
    # How long a predictor holds an item without a heartbeat before it is handed to another.
    lease_seconds: float = Field(default=30.0, gt=0, validation_alias="FAIRWAY_LEASE_SECONDS")
    max_attempts: int = Field(default=5, ge=1, validation_alias="FAIRWAY_MAX_ATTEMPTS")
    retry_base_seconds: float = Field(default=1.0, ge=0, validation_alias="FAIRWAY_RETRY_BASE_SECONDS")
    retry_max_seconds: float = Field(default=60.0, ge=0, validation_alias="FAIRWAY_RETRY_MAX_SECONDS")
    # Largest number of items claimed in one dispatch round. A claim's cost grows with the
    # tenants it serves (a few row operations each): at 32 a round's decision stays within a
    # few milliseconds whatever the backlog and the tenants, and a replica still dispatches
    # thousands of items a second, far above any provider's limits.
    dispatch_batch: int = Field(default=32, ge=1, validation_alias="FAIRWAY_DISPATCH_BATCH")
    # A job's completions reach its counters (and finish it) this long after they commit, in
    # one fold with whatever else completed meanwhile; moves a dead replica left are folded by
    # a sweep this often.
    fold_delay_seconds: float = Field(default=0.1, ge=0, validation_alias="FAIRWAY_FOLD_DELAY_SECONDS")
    fold_sweep_seconds: float = Field(default=1.0, gt=0, validation_alias="FAIRWAY_FOLD_SWEEP_SECONDS")
    # A background loop (dispatch, resync, folds, the notification listener...) failing for this
    # long turns the process NOT_SERVING until it works again (docs/design/scheduler.md).
    unhealthy_after_s: float = Field(default=30.0, gt=0, validation_alias="FAIRWAY_SCHEDULER_UNHEALTHY_AFTER_S")
    # Credits reserved per item when a tenant's billing is on.
    item_cost: int = Field(default=1, ge=0, validation_alias="FAIRWAY_ITEM_COST")
    grace_seconds: float = Field(
        default=10.0, ge=0, validation_alias=AliasChoices("FAIRWAY_GRACE_SECONDS", "FAIRWAY_SCHEDULER_GRACE")
    )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
