"""Request and response bodies of the HTTP API (contract section 3)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Provider = Literal["replicate", "openai"]
Operation = Literal["prediction", "chat", "response", "image"]
Status = Literal["PENDING", "PROCESSING", "DONE", "FAILED", "CANCELED"]

# Which operations each provider offers, the first being the default.
OPERATIONS: dict[str, tuple[str, ...]] = {
    "replicate": ("prediction",),
    "openai": ("chat", "response", "image"),
}

UINT32_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


class _Request(BaseModel):
    # Unknown fields are refused: a misspelt field would otherwise be silently ignored.
    model_config = ConfigDict(extra="forbid")


class TenantCreate(_Request):
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    max_concurrency: int | None = Field(None, ge=1, le=UINT32_MAX)
    max_queued: int | None = Field(None, ge=0, le=INT64_MAX)
    credits: int | None = Field(None, ge=-INT64_MAX, le=INT64_MAX)


class TenantUpdate(_Request):
    weight: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_concurrency: int | None = Field(None, ge=1, le=UINT32_MAX)
    max_queued: int | None = Field(None, ge=0, le=INT64_MAX)


class CreditsAdd(_Request):
    amount: int = Field(ge=-INT64_MAX, le=INT64_MAX)


class ItemIn(_Request):
    ref: str = Field("", max_length=256)
    input: dict[str, Any]


class JobSubmit(_Request):
    provider: Provider
    model: str = Field(min_length=1, max_length=256)
    operation: Operation | None = None
    priority: int = Field(0, ge=-INT32_MAX, le=INT32_MAX)
    items: list[ItemIn] = Field(min_length=1)
    metadata: dict[str, Any] | None = None


class Tenant(BaseModel):
    id: str
    weight: float
    max_concurrency: int | None
    max_queued: int
    credits: int | None
    queued: int
    processing: int


class TenantCreated(Tenant):
    api_key: str


class Credits(BaseModel):
    credits: int


class Job(BaseModel):
    id: str
    tenant: str
    provider: str
    model: str
    operation: str
    status: Status
    priority: int
    items_total: int
    counts: dict[Status, int]
    metadata: Any
    created_at: str | None
    updated_at: str | None
    finished_at: str | None


class JobPage(BaseModel):
    jobs: list[Job]
    next: str | None


class Item(BaseModel):
    id: str
    job_id: str
    ref: str
    status: Status
    attempts: int
    output: Any
    error: str | None
    usage: Any
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class ItemPage(BaseModel):
    items: list[Item]
    next: str | None


class ErrorBody(BaseModel):
    code: str
    message: str


class Error(BaseModel):
    error: ErrorBody
