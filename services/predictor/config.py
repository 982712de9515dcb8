"""Predictor settings, from the environment (nowhere else reads it)."""

from __future__ import annotations

import os
import socket

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class PredictorConfig(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    scheduler_addr: str = Field(default="127.0.0.1:50051", validation_alias="FAIRWAY_SCHEDULER_ADDR")
    ratelimiter_addr: str = Field(default="127.0.0.1:50052", validation_alias="FAIRWAY_RATELIMITER_ADDR")
    host: str = Field(default="127.0.0.1", validation_alias="FAIRWAY_PREDICTOR_HOST")
    port: int = Field(default=50053, ge=0, validation_alias="FAIRWAY_PREDICTOR_PORT")
    metrics_port: int = Field(default=9103, ge=0, validation_alias="FAIRWAY_PREDICTOR_METRICS_PORT")
    # Upstream calls in flight at once in this process.
    concurrency: int = Field(default=64, ge=1, validation_alias="FAIRWAY_PREDICTOR_CONCURRENCY")
    worker_id: str = Field(default_factory=_default_worker_id, validation_alias="FAIRWAY_WORKER_ID")
    grace_seconds: float = Field(default=20.0, ge=0, validation_alias="FAIRWAY_PREDICTOR_GRACE")
    public_url: str = Field(default="", validation_alias="FAIRWAY_PUBLIC_URL")
    # First and largest wait between polls of a Replicate prediction.
    poll_initial_seconds: float = Field(default=1.0, gt=0, validation_alias="FAIRWAY_POLL_INITIAL_SECONDS")
    poll_max_seconds: float = Field(default=10.0, gt=0, validation_alias="FAIRWAY_POLL_MAX_SECONDS")
    # How long a Replicate create holds the connection for the result (`Prefer: wait`).
    replicate_wait_seconds: int = Field(default=0, ge=0, le=60, validation_alias="FAIRWAY_REPLICATE_WAIT_SECONDS")
    openai_api_key: str = Field(default="", validation_alias="OPENAI_API_KEY")
    openai_base_url: str = Field(default="", validation_alias="OPENAI_BASE_URL")
    replicate_api_token: str = Field(default="", validation_alias="REPLICATE_API_TOKEN")
    replicate_base_url: str = Field(default="", validation_alias="REPLICATE_BASE_URL")
    request_timeout_seconds: float = Field(default=120.0, gt=0, validation_alias="FAIRWAY_UPSTREAM_TIMEOUT")
