"""Lanes: items queue per upstream budget, and what one call of an item counts against it.

    lane_for("replicate", "google/nano-banana", "prediction")  # "replicate:create"
    lane_for("openai", "gpt-4o-mini", "chat")                  # "openai:gpt-4o-mini"
"""

from __future__ import annotations

import json
from typing import Any

from services.common.limits import REPLICATE_CREATE, Limits, openai_budget
from services.scheduler.errors import InvalidRequest

OPERATIONS = {"replicate": ("prediction",), "openai": ("chat", "response", "image")}
DEFAULT_OPERATION = {"replicate": "prediction", "openai": "chat"}
# Characters a token in the estimate of a prompt. Providers estimate a request's tokens from
# its characters when it arrives (OpenAI: "based on the character count of your request");
# the JSON of the messages counts a little more than their text, never less.
_CHARS_PER_TOKEN = 4
# What an image in a prompt counts (OpenAI's base for a low-detail image).
_IMAGE_TOKENS = 85
_IMAGE_PARTS = ("image_url", "input_image")


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


def admission_tokens(limits: Limits, provider: str, operation: str, model: str, item_input: dict[str, Any]) -> int:
    """What one call of an item counts against its lane's tokens per minute, as the provider
    counts it when the request arrives: the prompt's estimated tokens plus `n` x the output
    cap (`max_tokens` / `max_completion_tokens` / `max_output_tokens`; the model's own
    ceiling when the item sets none). 0 for request-only budgets.

    >>> admission_tokens(Limits(), "openai", "chat", "gpt-4o-mini",
    ...                  {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50})
    59
    """
    if provider != "openai" or operation == "image":
        return 0
    if operation == "chat":
        prompt = item_input.get("messages", "")
        cap = _first_int(item_input, "max_completion_tokens", "max_tokens")
        n = _first_int(item_input, "n") or 1
    else:
        prompt = item_input.get("input", "")
        cap = _first_int(item_input, "max_output_tokens")
        n = 1
    if cap is None:
        cap = limits.openai.for_model(model).max_output_tokens
    return prompt_tokens(prompt) + n * cap


def prompt_tokens(prompt: object) -> int:
    """Estimated tokens of a prompt (messages, or a Responses `input`): its JSON's characters
    by four, and an image's own count for each image part."""
    text = json.dumps(prompt)
    return len(text) // _CHARS_PER_TOKEN + 1 + _IMAGE_TOKENS * sum(text.count(f'"type": "{t}"') for t in _IMAGE_PARTS)


def _first_int(values: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = values.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
