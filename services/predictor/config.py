"""Predictor settings, from the environment (nowhere else reads it)."""

from __future__ import annotations

import os
import socket

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class PredictorConfig(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    scheduler_addr: str = Field(default="127.0.0.1:50051", validation_alias="FAIRWAY_SCHEDULER_ADDR")
    ratelimiter_addr: str = Field(default="127.0.0.1:50052", validation_alias="FAIRWAY_RATELIMITER_ADDR")
    # What the predictor presents to the scheduler and the ratelimiter (docs/design/security.md).
    service_token: SecretStr = Field(min_length=1, validation_alias="FAIRWAY_SERVICE_TOKEN")
    host: str = Field(default="127.0.0.1", validation_alias="FAIRWAY_PREDICTOR_HOST")
    port: int = Field(default=50053, ge=0, validation_alias="FAIRWAY_PREDICTOR_PORT")
    metrics_port: int = Field(default=9103, ge=0, validation_alias="FAIRWAY_PREDICTOR_METRICS_PORT")
    # Items calling a provider at once in this process, and the bound on upstream HTTP
    # calls in flight (reads of waiting predictions included).
    concurrency: int = Field(default=64, ge=1, validation_alias="FAIRWAY_PREDICTOR_CONCURRENCY")
    worker_id: str = Field(default_factory=_default_worker_id, validation_alias="FAIRWAY_WORKER_ID")
    grace_seconds: float = Field(default=20.0, ge=0, validation_alias="FAIRWAY_PREDICTOR_GRACE")
    public_url: str = Field(default="", validation_alias="FAIRWAY_PUBLIC_URL")
    # Items accepted upstream and waiting for their result, slot given back; beyond this
    # many a waiting item keeps its slot, so the process takes no more work.
    max_parked: int = Field(default=10_000, ge=0, validation_alias="FAIRWAY_PREDICTOR_MAX_PARKED")
    # Shortest and longest wait between reads of a Replicate prediction whose model has no
    # observed run times yet (or that runs longer than every one observed).
    poll_initial_seconds: float = Field(default=1.0, gt=0, validation_alias="FAIRWAY_POLL_INITIAL_SECONDS")
    poll_max_seconds: float = Field(default=10.0, gt=0, validation_alias="FAIRWAY_POLL_MAX_SECONDS")
    # Share of predictions a read should find finished; expected reads are about 1 / it.
    replicate_read_hit_ratio: float = Field(
        default=0.8, gt=0, lt=1, validation_alias="FAIRWAY_REPLICATE_READ_HIT_RATIO"
    )
    # With webhooks: a prediction not completed this long after its slowest observed run is
    # read once, so that a lost webhook still ends the item.
    webhook_safety_seconds: float = Field(default=60.0, gt=0, validation_alias="FAIRWAY_WEBHOOK_SAFETY_SECONDS")
    openai_api_key: str = Field(default="", validation_alias="OPENAI_API_KEY")
    openai_base_url: str = Field(default="", validation_alias="OPENAI_BASE_URL")
    replicate_api_token: str = Field(default="", validation_alias="REPLICATE_API_TOKEN")
    replicate_base_url: str = Field(default="", validation_alias="REPLICATE_BASE_URL")
    request_timeout_seconds: float = Field(default=120.0, gt=0, validation_alias="FAIRWAY_UPSTREAM_TIMEOUT")
