"""Deterministic token counts and generated text.

    estimate_tokens("Hello there")              # 3: about four characters a token
    text, n = generate_text(seed_bytes, 50)      # at most 50 words; one word is one token

Prompt tokens are estimated the same way for every request, so a test can compute the
tokens a request will cost; completion tokens are the words actually generated.
"""

from __future__ import annotations

import hashlib

_VOCABULARY = (
    "alpha amber anchor apple arrow atlas autumn badge banner basin beacon berry birch blade bloom "
    "bolt breeze brick bridge bronze brook cabin candle canyon canvas cedar chalk charm cider cinder "
    "circle cliff cloud clover coast comet copper coral cotton crane creek crest crown crystal dawn "
    "delta desert dune eagle echo ember falcon fern field flame flint forest fossil fountain frost "
    "garden garnet glacier glade granite harbor hazel heron hollow horizon island ivory jade jasmine "
    "juniper kettle lagoon lantern laurel lemon lilac linen lotus lunar maple marble meadow mesa "
    "meteor mist moss mountain nectar north oasis ocean olive onyx orbit orchid pebble pepper pine "
    "planet plume polar poppy prairie prism quartz quill rain raven reef ridge river robin saffron "
    "sage salt sand shadow shell silver slate snow solar spark spruce star stone storm summit sun "
    "swift thistle thunder tide timber topaz trail tulip tundra valley velvet vessel violet wave "
    "willow wind winter wren zenith"
)
_WORDS = _VOCABULARY.split()


def estimate_tokens(text: str) -> int:
    """About four characters a token, at least one."""
    return max(1, (len(text) + 3) // 4)


def message_tokens(content: object) -> int:
    """Tokens of a message content: a string, or a list of parts with `text`."""
    if isinstance(content, str):
        return estimate_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                total += estimate_tokens(text) if isinstance(text, str) else 85  # an image part
            elif isinstance(part, str):
                total += estimate_tokens(part)
        return max(1, total)
    return 1


def chat_prompt_tokens(messages: list[object]) -> int:
    """Chat prompt tokens: each message's content plus OpenAI's per-message overhead."""
    total = 3
    for message in messages:
        total += 4 + (message_tokens(message.get("content")) if isinstance(message, dict) else 1)
    return total


def response_input_tokens(value: object) -> int:
    """Tokens of a Responses API `input`: a string or a list of messages."""
    if isinstance(value, list):
        return chat_prompt_tokens(value)
    return message_tokens(value)


def generate_text(seed: bytes, max_tokens: int | None, shortest: int = 5, longest: int = 120) -> tuple[str, bool]:
    """Text derived from `seed`: (text, truncated). Its length in words varies with the seed."""
    digest = hashlib.sha256(seed).digest()
    length = shortest + int.from_bytes(digest[:2], "big") % (longest - shortest + 1)
    truncated = max_tokens is not None and length > max_tokens
    if truncated and max_tokens is not None:
        length = max(1, max_tokens)
    words: list[str] = []
    block = digest
    while len(words) < length:
        block = hashlib.sha256(block).digest()
        words.extend(_WORDS[b % len(_WORDS)] for b in block)
    del words[length:]
    return " ".join(words).capitalize() + ".", truncated


def count_words(text: str) -> int:
    return len(text.split())
