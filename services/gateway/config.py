"""Gateway settings, read from the environment here and nowhere else."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.gateway.cors import parse_origins


class Settings(BaseSettings):
    """Every knob of the gateway; field names double as constructor arguments in tests."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("FAIRWAY_GATEWAY_HOST", "host"))
    port: int = Field(default=8080, ge=0, le=65535, validation_alias=AliasChoices("FAIRWAY_GATEWAY_PORT", "port"))
    admin_key: SecretStr = Field(validation_alias=AliasChoices("FAIRWAY_ADMIN_KEY", "admin_key"), min_length=1)
    scheduler_addr: str = Field(
        default="127.0.0.1:50051", validation_alias=AliasChoices("FAIRWAY_SCHEDULER_ADDR", "scheduler_addr")
    )
    ratelimiter_addr: str = Field(
        default="127.0.0.1:50052",
        validation_alias=AliasChoices("FAIRWAY_RATELIMITER_ADDR", "ratelimiter_addr"),
    )
    # What the gateway presents to the scheduler and the ratelimiter (docs/design/security.md).
    service_token: SecretStr = Field(
        validation_alias=AliasChoices("FAIRWAY_SERVICE_TOKEN", "service_token"), min_length=1
    )
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        gt=0,
        validation_alias=AliasChoices("FAIRWAY_GATEWAY_MAX_BODY_BYTES", "max_body_bytes"),
    )
    # Requests a second each tenant may make at this replica (0: no limit), and the burst it
    # may make at once; far above what a client polling its jobs needs.
    tenant_rps: float = Field(
        default=100.0, ge=0, allow_inf_nan=False,
        validation_alias=AliasChoices("FAIRWAY_GATEWAY_TENANT_RPS", "tenant_rps"),
    )
    tenant_burst: int = Field(
        default=200, ge=1, validation_alias=AliasChoices("FAIRWAY_GATEWAY_TENANT_BURST", "tenant_burst")
    )
    # Upper bound of one unary call to the scheduler or ratelimiter; a large SubmitJob
    # writes many rows, so this is generous.
    rpc_timeout_s: float = Field(
        default=30.0, gt=0, validation_alias=AliasChoices("FAIRWAY_GATEWAY_RPC_TIMEOUT_S", "rpc_timeout_s")
    )
    # Browser origins that may call the API (CORS): a comma list, or "*" (then without
    # credentials); empty, no CORS at all. See services/gateway/cors.py.
    cors_origins: str = Field(
        default="", validation_alias=AliasChoices("FAIRWAY_GATEWAY_CORS_ORIGINS", "cors_origins")
    )
    replicate_webhook_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("REPLICATE_WEBHOOK_SECRET", "replicate_webhook_secret")
    )
    replicate_api_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("REPLICATE_API_TOKEN", "replicate_api_token")
    )
    replicate_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REPLICATE_BASE_URL", "replicate_base_url")
    )

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        """Refused at start, naming the bad entry; kept as the normalized comma list."""
        return ",".join(parse_origins(value))

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        return parse_origins(self.cors_origins)
