"""Settings of `fairway up`, from the environment (nowhere else in the stack reads it)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StackConfig(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    home: Path = Field(default=Path(".fairway"), validation_alias="FAIRWAY_HOME")
    database_url: str = Field(default="", validation_alias="DATABASE_URL")
    redis_url: str = Field(default="", validation_alias="REDIS_URL")
    admin_key: str = Field(default="", validation_alias="FAIRWAY_ADMIN_KEY")
    openai_api_key: str = Field(default="", validation_alias="OPENAI_API_KEY")
    replicate_api_token: str = Field(default="", validation_alias="REPLICATE_API_TOKEN")
    gateway_host: str = Field(default="127.0.0.1", validation_alias="FAIRWAY_GATEWAY_HOST")
    gateway_port: int = Field(default=8080, validation_alias="FAIRWAY_GATEWAY_PORT")
    scheduler_port: int = Field(default=50051, validation_alias="FAIRWAY_SCHEDULER_PORT")
    ratelimiter_port: int = Field(default=50052, validation_alias="FAIRWAY_RATELIMITER_PORT")
    predictor_port: int = Field(default=50053, validation_alias="FAIRWAY_PREDICTOR_PORT")
    emulator_host: str = Field(default="127.0.0.1", validation_alias="FAIRWAY_EMULATOR_HOST")
    emulator_port: int = Field(default=8090, validation_alias="FAIRWAY_EMULATOR_PORT")
    predictors: int = Field(default=1, ge=1, validation_alias="FAIRWAY_PREDICTORS")
    # Seconds each child gets to become ready before the stack gives up.
    start_timeout: float = Field(default=60.0, gt=0, validation_alias="FAIRWAY_START_TIMEOUT")
