"""Request and response bodies of the HTTP API (contract section 3)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Provider = Literal["replicate", "openai"]
Operation = Literal["prediction", "chat", "response", "image"]
Status = Literal["PENDING", "PROCESSING", "DONE", "FAILED", "CANCELED"]

# Which operations each provider offers, the first being the default.
OPERATIONS: dict[str, tuple[str, ...]] = {
    "replicate": ("prediction",),
    "openai": ("chat", "response", "image"),
}

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
# Deeper JSON is refused: the answer that repeats a job's metadata could not be written.
MAX_JSON_DEPTH = 64
# Values in one item's input (or in a job's metadata): each step of validating, encoding or
# hashing an item is one call into C that holds the GIL, so this bounds how long one item
# can keep the gateway from answering others (100,000 values: ~10-30 ms).
MAX_JSON_VALUES = 100_000
# GET /v1/tenants/me names the caller's own tenant.
RESERVED_TENANT_IDS = ("me",)
# UTF-16 halves: JSON's "\ud800" escape decodes to one, alone, which is not a character; it
# cannot be encoded as UTF-8, so neither a provider nor PostgreSQL can be sent it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000), which cannot be stored")
    if not value.isascii() and _SURROGATE.search(value) is not None:
        raise ValueError("must not contain an unpaired UTF-16 surrogate (\\ud800-\\udfff), which is not a character")
    return value


def _storable_json(value: Any) -> Any:
    """At most MAX_JSON_DEPTH levels deep and MAX_JSON_VALUES values; every string and key
    storable text; every number finite (1e400 parses as infinity, which JSON cannot carry)."""
    pending = [(value, 1)]
    counted = 1  # values seen or waiting to be
    while pending:
        node, depth = pending.pop()
        if isinstance(node, (dict, list)):
            counted += len(node)
            if counted > MAX_JSON_VALUES:
                raise ValueError(f"must not hold more than {MAX_JSON_VALUES} JSON values")
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"must not be nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(node, str):
            _storable_text(node)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"must hold only finite numbers, not {node} (a number beyond a double)")
        elif isinstance(node, dict):
            for key, child in node.items():
                _storable_text(key)
                pending.append((child, depth + 1))
        elif isinstance(node, list):
            pending.extend((child, depth + 1) for child in node)
    return value


def _not_reserved(value: str) -> str:
    if value in RESERVED_TENANT_IDS:
        raise ValueError(f"{value!r} is reserved: GET /v1/tenants/{value} is the caller's own tenant")
    return value


Text = Annotated[str, AfterValidator(_storable_text)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_storable_json)]


class _Request(BaseModel):
    # Unknown fields are refused: a misspelt field would otherwise be silently ignored. Types
    # are strict: `true` or "5" is not a number, 5.0 not a whole number.
    model_config = ConfigDict(extra="forbid", strict=True)


class TenantCreate(_Request):
    id: Annotated[str, AfterValidator(_not_reserved)] = Field(
        min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
    )
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    max_concurrency: int | None = Field(None, ge=1, le=INT32_MAX)
    max_queued: int | None = Field(None, ge=0, le=INT64_MAX)
    credits: int | None = Field(None, ge=-INT64_MAX, le=INT64_MAX)


class TenantUpdate(_Request):
    weight: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_concurrency: int | None = Field(None, ge=1, le=INT32_MAX)
    max_queued: int | None = Field(None, ge=0, le=INT64_MAX)


class CreditsAdd(_Request):
    amount: int = Field(ge=-INT64_MAX, le=INT64_MAX)


class ItemIn(_Request):
    ref: Text = Field("", max_length=256)
    input: JsonObject


class JobSubmit(_Request):
    provider: Provider
    model: Text = Field(min_length=1, max_length=256)
    operation: Operation | None = None
    priority: int = Field(0, ge=-INT32_MAX, le=INT32_MAX)
    items: list[ItemIn] = Field(min_length=1)
    metadata: JsonObject | None = None


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


class TenantPage(BaseModel):
    tenants: list[Tenant]
    next: str | None


class ApiKey(BaseModel):
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
