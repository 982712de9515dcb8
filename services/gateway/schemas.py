"""Request and response bodies of the HTTP API (contract section 3)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

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
# Items in one job; the 100,001st is refused as the body is parsed (see `bodies`).
MAX_ITEMS_PER_JOB = 100_000
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


def _integral(value: Any) -> Any:
    """5.0 is the whole number 5: JSON has one number type, and JSON Schema counts 5.0 as an
    integer, so a client (or a generator working from the OpenAPI document) may send it so.
    5.5, true and "5" are still refused: strict mode sees them unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _not_zero(value: int) -> int:
    if value == 0:
        raise ValueError("must not be 0")
    return value


def not_null(schema: dict[str, Any]) -> None:
    """The JSON schema of an optional field that may be left out but not sent as null: its
    `None` default is how "left out" reaches the handler, not a value a client may send."""
    branches = [branch for branch in schema.pop("anyOf", []) if branch.get("type") != "null"]
    schema.pop("default", None)
    if branches:
        schema.update(branches[0])


def _not_reserved(value: str) -> str:
    if value in RESERVED_TENANT_IDS:
        raise ValueError(f"{value!r} is reserved: GET /v1/tenants/{value} is the caller's own tenant")
    return value


# No NUL: what `_storable_text` refuses and a JSON Schema pattern can say (an unpaired
# surrogate is not a character, so no generator makes one).
NO_NUL = "^[^\\x00]*$"
Text = Annotated[str, AfterValidator(_storable_text), Field(json_schema_extra={"pattern": NO_NUL})]
JsonObject = Annotated[dict[str, Any], AfterValidator(_storable_json)]
# Whole numbers in the ranges the scheduler stores (the Field comes first: after the
# BeforeValidator, its bounds would not reach the JSON schema).
PositiveInt32 = Annotated[int, Field(ge=1, le=INT32_MAX), BeforeValidator(_integral)]
SignedInt32 = Annotated[int, Field(ge=-INT32_MAX, le=INT32_MAX), BeforeValidator(_integral)]
Count64 = Annotated[int, Field(ge=0, le=INT64_MAX), BeforeValidator(_integral)]
Amount64 = Annotated[
    int,
    Field(ge=-INT64_MAX, le=INT64_MAX, json_schema_extra={"not": {"const": 0}}),
    BeforeValidator(_integral),
    AfterValidator(_not_zero),
]


class _Request(BaseModel):
    # Unknown fields are refused: a misspelt field would otherwise be silently ignored. Types
    # are strict: `true` or "5" is not a number, 5.0 not a whole number.
    model_config = ConfigDict(extra="forbid", strict=True)


class TenantCreate(_Request):
    id: Annotated[str, AfterValidator(_not_reserved)] = Field(
        min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
    )
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    # null: no cap, the scheduler's default queue limit, billing off.
    max_concurrency: PositiveInt32 | None = None
    max_queued: Count64 | None = None
    credits: Count64 | None = None


class TenantUpdate(_Request):
    # Left out: unchanged. Only max_concurrency may be null (the cap is lifted); the others
    # are refused as null (tenants.py), so the schema does not offer it.
    weight: float | None = Field(None, gt=0, allow_inf_nan=False, json_schema_extra=not_null)
    max_concurrency: PositiveInt32 | None = None
    max_queued: Count64 | None = Field(None, json_schema_extra=not_null)


class CreditsAdd(_Request):
    amount: Amount64


class ItemIn(_Request):
    ref: Text = Field("", max_length=256)
    input: JsonObject


class JobSubmit(_Request):
    provider: Provider
    model: Text = Field(min_length=1, max_length=256)
    operation: Operation | None = None
    priority: SignedInt32 = 0
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS_PER_JOB)
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
    code: str = Field(description="what went wrong, for programs: `invalid_json`, `queue_full`, ...")
    message: str = Field(description="a sentence a person can act on")


class Error(BaseModel):
    """The body of every error answer."""

    error: ErrorBody
