"""The upstream limits file (`FAIRWAY_LIMITS`, `FAIRWAY_EMULATOR_LIMITS`).

    limits = Limits.load("limits.yaml")        # or Limits() for the published defaults
    limits.replicate.create_rpm                # 600
    limits.openai.for_model("gpt-4o-mini").tpm
    limits.budget_names()                      # ["replicate:create", "replicate:read", "openai:..."]
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.errors import ConfigError

REPLICATE_CREATE = "replicate:create"
REPLICATE_READ = "replicate:read"
OPENAI_PREFIX = "openai:"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# What a request without an output cap counts against TPM: OpenAI reserves the model's own
# output ceiling ("the platform assumes a default upper bound"); gpt-4o and gpt-4o-mini's is 16,384.
DEFAULT_MAX_OUTPUT_TOKENS = 16_384


class ModelLimit(_Strict):
    """One model's budget, and how the provider counts a request against its TPM.

    `tokens_counted`:
    - `admission` (OpenAI, Azure OpenAI): when the request arrives, from its estimated prompt
      tokens plus `n` x its output cap (`max_output_tokens` when it sets none); never given back;
    - `usage`: from what the call really used, known when it ends.
    """

    rpm: int = Field(gt=0)
    tpm: int = Field(gt=0)
    tokens_counted: Literal["admission", "usage"] = "admission"
    max_output_tokens: int = Field(default=DEFAULT_MAX_OUTPUT_TOKENS, gt=0)


class ReplicateLimits(_Strict):
    create_rpm: int = Field(default=600, gt=0)
    read_rpm: int = Field(default=3000, gt=0)


def _published_openai_models() -> dict[str, ModelLimit]:
    return {"gpt-4o-mini": ModelLimit(rpm=5000, tpm=2_000_000)}


class OpenAILimits(_Strict):
    default: ModelLimit = ModelLimit(rpm=500, tpm=200_000)
    models: dict[str, ModelLimit] = Field(default_factory=_published_openai_models)

    def for_model(self, model: str) -> ModelLimit:
        return self.models.get(model, self.default)


class Limits(_Strict):
    utilization: float = Field(default=0.98, gt=0, le=1)
    replicate: ReplicateLimits = ReplicateLimits()
    openai: OpenAILimits = OpenAILimits()

    @classmethod
    def load(cls, path: str | Path | None) -> Limits:
        """Read a limits YAML file; `None` gives the providers' published limits."""
        if path is None or str(path) == "":
            return cls()
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read limits file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"limits file {path} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"limits file {path} must be a mapping at the top level")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"limits file {path}: {where}: {first['msg']}") from exc

    def budget_names(self) -> list[str]:
        return [REPLICATE_CREATE, REPLICATE_READ, *(OPENAI_PREFIX + m for m in self.openai.models)]


def openai_budget(model: str) -> str:
    return OPENAI_PREFIX + model


def lane_scope(lane: str) -> tuple[str, str | None]:
    """The provider and model whose items queue in a lane (one upstream budget).

    >>> lane_scope("openai:gpt-4o-mini"), lane_scope("replicate:create")
    (('openai', 'gpt-4o-mini'), ('replicate', None))

    Replicate's creates share one budget across models, so its lane names no model.
    """
    provider, _, rest = lane.partition(":")
    return provider, rest if lane.startswith(OPENAI_PREFIX) else None
