"""Lanes: items queue per upstream budget, and what one call of an item is estimated to use.

    lane_for("replicate", "google/nano-banana", "prediction")  # "replicate:create"
    lane_for("openai", "gpt-4o-mini", "chat")                  # "openai:gpt-4o-mini"
"""

from __future__ import annotations

import json
from typing import Any

from services.common.limits import REPLICATE_CREATE, openai_budget
from services.scheduler.errors import InvalidRequest

OPERATIONS = {"replicate": ("prediction",), "openai": ("chat", "response", "image")}
DEFAULT_OPERATION = {"replicate": "prediction", "openai": "chat"}
# Output tokens assumed when the item sets no maximum; the call is settled with real usage.
DEFAULT_MAX_OUTPUT_TOKENS = 256
# Token-per-character ratio of English text in common tokenizers; the estimate only has
# to be close, since every grant is settled with the provider's own count.
_CHARS_PER_TOKEN = 4


def lane_for(provider: str, model: str, operation: str) -> str:
    if provider == "replicate":
        return REPLICATE_CREATE
    return openai_budget(model)


def check_operation(provider: str, operation: str) -> str:
    if provider not in OPERATIONS:
        raise InvalidRequest(f"provider: must be one of {sorted(OPERATIONS)}, got {provider!r}")
    chosen = operation or DEFAULT_OPERATION[provider]
    if chosen not in OPERATIONS[provider]:
        raise InvalidRequest(
            f"operation: {provider} supports {list(OPERATIONS[provider])}, got {chosen!r}"
        )
    return chosen


def estimate_tokens(provider: str, operation: str, item_input: dict[str, Any]) -> int:
    """Prompt plus maximum output tokens of one OpenAI call; 0 for request-only budgets."""
    if provider != "openai":
        return 0
    if operation == "image":
        return 0
    if operation == "chat":
        prompt = json.dumps(item_input.get("messages", ""))
        out = item_input.get("max_tokens") or item_input.get("max_completion_tokens")
    else:
        prompt = json.dumps(item_input.get("input", ""))
        out = item_input.get("max_output_tokens")
    out_tokens = out if isinstance(out, int) and out > 0 else DEFAULT_MAX_OUTPUT_TOKENS
    return len(prompt) // _CHARS_PER_TOKEN + 1 + out_tokens
