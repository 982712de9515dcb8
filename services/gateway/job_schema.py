"""The JSON schema of `POST /v1/jobs`, as exact as the checks the gateway makes.

`JobSubmit` (schemas.py) types the fields; what an item's `input` must hold depends on the
provider and the operation, and is checked in `submission.check_items`. The OpenAPI
document says the same with one variant per operation (`oneOf`), so that a body a client
builds from the document is one the gateway takes, and one it breaks is refused:

- replicate / prediction: `model` is owner/name[:version]; any JSON object as input;
- openai / chat: input holds a non-empty `messages` list, `max_tokens` a whole number;
- openai / response: input holds an `input` (not null, "" or []), `max_output_tokens`;
- openai / image: input holds a `prompt` with a character other than ASCII whitespace.

JSON values nested in inputs and metadata hold no NUL character (PostgreSQL cannot store
one), said by `JsonValue` / `JsonObject`, which refer to each other.

Not said, because no schema can: at most 64 levels deep and 100,000 values per item (see
schemas.py), and an item's tokens within its model's tokens-per-minute limit (the
deployment's limits file).
"""

from __future__ import annotations

import re
from typing import Any

from services.gateway.schemas import INT32_MAX, MAX_ITEMS_PER_JOB, NO_NUL, OPERATIONS

# What the Replicate SDK can call: a model, or a model at a version (ASCII, as both this
# pattern's Python and JSON Schema readings agree on).
REPLICATE_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+(:[A-Za-z0-9_]+)?")
# A prompt must hold something other than ASCII whitespace (one reading in Python and JSON Schema).
PROMPT = re.compile(r"[^ \t\n\r\x0b\x0c]")
_PROMPT_PATTERN = r"[^ \t\n\r\x0b\x0c]"

VALUE = {"$ref": "#/components/schemas/JsonValue"}
OBJECT = {"$ref": "#/components/schemas/JsonObject"}
COMPONENTS: dict[str, dict[str, Any]] = {
    "JsonValue": {
        "description": "Any JSON value whose strings hold no NUL character.",
        "anyOf": [
            {"type": "string", "pattern": NO_NUL},
            {"type": ["number", "boolean", "null"]},
            {"type": "array", "items": VALUE},
            OBJECT,
        ],
    },
    "JsonObject": {
        "description": "A JSON object whose keys and strings hold no NUL character.",
        "type": "object",
        "propertyNames": {"pattern": NO_NUL},
        "additionalProperties": VALUE,
    },
}

_TOKENS = {"type": "integer", "minimum": 1, "maximum": INT32_MAX}
_INPUTS: dict[str, dict[str, Any]] = {
    "prediction": OBJECT,
    "chat": {
        "allOf": [OBJECT],
        "required": ["messages"],
        "properties": {"messages": {"type": "array", "minItems": 1, "items": VALUE}, "max_tokens": _TOKENS},
    },
    "response": {
        "allOf": [OBJECT],
        "required": ["input"],
        "properties": {"input": {"not": {"enum": [None, "", []]}}, "max_output_tokens": _TOKENS},
    },
    "image": {
        "allOf": [OBJECT],
        "required": ["prompt"],
        "properties": {"prompt": {"type": "string", "pattern": _PROMPT_PATTERN}},
    },
}


def _variant(provider: str, operation: str, default: bool) -> dict[str, Any]:
    model: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": NO_NUL}
    if provider == "replicate":
        model["pattern"] = f"^{REPLICATE_MODEL.pattern}$"
    # The default operation may be left out or sent as null; another must be named.
    chosen: dict[str, Any] = {"enum": [operation, None]} if default else {"const": operation}
    return {
        "title": f"{provider} {operation}",
        "type": "object",
        "additionalProperties": False,
        "required": ["provider", "model", "items"] + ([] if default else ["operation"]),
        "properties": {
            "provider": {"const": provider},
            "model": model,
            "operation": chosen,
            "priority": {"type": "integer", "minimum": -INT32_MAX, "maximum": INT32_MAX, "default": 0},
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_ITEMS_PER_JOB,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["input"],
                    "properties": {
                        "ref": {"type": "string", "maxLength": 256, "pattern": NO_NUL, "default": ""},
                        "input": _INPUTS[operation],
                    },
                },
            },
            "metadata": {"anyOf": [OBJECT, {"type": "null"}]},
        },
    }


def submit_schema() -> dict[str, Any]:
    """The body of POST /v1/jobs: one of the provider/operation variants."""
    return {
        "title": "JobSubmit",
        "oneOf": [
            _variant(provider, operation, default=n == 0)
            for provider, operations in OPERATIONS.items()
            for n, operation in enumerate(operations)
        ],
    }
