"""Emulator settings, read from `FAIRWAY_EMULATOR_*` environment variables.

    settings = EmulatorSettings()                         # from the environment
    settings = EmulatorSettings(time_scale=60, seed=7)    # in code, e.g. in tests

All durations are provider seconds: `time_scale` divides them (and multiplies the limits
per real second), so `time_scale=60` plays one provider minute per real second.
This is the only module of the emulator that reads the environment.
"""

from __future__ import annotations

import base64
import secrets

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class EmulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FAIRWAY_EMULATOR_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    limits: str | None = None  # YAML file (contract section 5); None = published limits
    time_scale: float = Field(default=1.0, gt=0)
    seed: int = 0

    # Limits: Replicate lets this many requests through above its steady rate (at once, or
    # spread over the time they take at that rate).
    replicate_burst: int = Field(default=20, ge=1)

    # Latency (provider seconds).
    prediction_seconds: float = Field(default=8.0, ge=0)  # median run time of a prediction
    prediction_sigma: float = Field(default=0.5, ge=0)  # log-normal spread of it
    prediction_seconds_by_model: dict[str, float] = {}  # per-model medians, JSON in the env
    prediction_start_seconds: float = Field(default=0.5, ge=0)  # queued as "starting"
    api_seconds: float = Field(default=0.0, ge=0)  # every Replicate API call
    openai_seconds: float = Field(default=0.3, ge=0)  # time to first token
    openai_seconds_per_token: float = Field(default=0.01, ge=0)
    openai_sigma: float = Field(default=0.2, ge=0)
    image_seconds: float = Field(default=6.0, ge=0)

    # Faults, each a probability per request (or per prediction).
    error_rate: float = Field(default=0.0, ge=0, le=1)  # 500/502/503
    reset_rate: float = Field(default=0.0, ge=0, le=1)  # connection dropped, no response
    slow_rate: float = Field(default=0.0, ge=0, le=1)
    slow_seconds: float = Field(default=30.0, ge=0)  # extra delay of a slow response
    prediction_failure_rate: float = Field(default=0.0, ge=0, le=1)
    # Share of each budget another service on the key uses, from the start (changed at runtime
    # per key and budget by POST /_emulator/foreign).
    foreign_traffic: float = Field(default=0.0, ge=0, lt=1)

    # State file: predictions and counts outlive a restart (None: in memory only). Written off the
    # request path every `state_save_seconds` (real seconds) when something changed, and on shutdown.
    state: str | None = None
    state_save_seconds: float = Field(default=2.0, gt=0)

    # Webhooks.
    webhook_secret: str = Field(default_factory=_new_webhook_secret)
    webhook_retries: int = Field(default=5, ge=0)  # extra attempts of the completed event
    webhook_backoff_seconds: float = Field(default=1.0, ge=0)  # first retry delay, doubling
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)  # real seconds per attempt

    @field_validator("webhook_secret")
    @classmethod
    def _secret_shape(cls, value: str) -> str:
        body = value.removeprefix("whsec_")
        try:
            if value == body or not base64.b64decode(body + "==", validate=False):
                raise ValueError
        except ValueError:
            raise ValueError("must look like whsec_<base64>") from None
        return value

    def real(self, provider_seconds: float) -> float:
        """Real seconds of a provider duration."""
        return provider_seconds / self.time_scale
