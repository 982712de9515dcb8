"""The official `openai` SDK against the emulator over real HTTP."""

from __future__ import annotations

import re
import uuid

import httpx
import openai
import pytest

from services.emulator.tokens import chat_prompt_tokens, estimate_tokens
from tests.emulator.conftest import Emulator

GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


def client(emulator: Emulator, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key or f"sk-{uuid.uuid4().hex}", base_url=emulator.openai_url, max_retries=0)


async def test_chat_completion(emulator: Emulator) -> None:
    messages: list[dict[str, str]] = [{"role": "user", "content": "Write a haiku about lighthouses."}]
    async with client(emulator) as c:
        raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        completion = raw.parse()
        again = await c.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    text = completion.choices[0].message.content
    assert text and text == again.choices[0].message.content  # deterministic in the prompt
    assert completion.object == "chat.completion" and completion.model == "gpt-4o-mini"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == chat_prompt_tokens(list(messages))
    assert completion.usage.completion_tokens == len(text.split())
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    headers = raw.headers
    assert headers["x-ratelimit-limit-requests"] == "5000" and headers["x-ratelimit-limit-tokens"] == "2000000"
    assert int(headers["x-ratelimit-remaining-requests"]) == 4999
    assert int(headers["x-ratelimit-remaining-tokens"]) == 2_000_000 - completion.usage.total_tokens
    assert GO_DURATION.match(headers["x-ratelimit-reset-requests"])
    assert GO_DURATION.match(headers["x-ratelimit-reset-tokens"])
    assert headers["x-request-id"].startswith("req_")


async def test_max_tokens_caps_the_completion(emulator: Emulator) -> None:
    async with client(emulator) as c:
        completion = await c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Tell me everything."}], max_tokens=3
        )
    assert completion.usage is not None and completion.usage.completion_tokens <= 3
    if completion.usage.completion_tokens == 3:
        assert completion.choices[0].finish_reason == "length"


async def test_different_prompts_get_different_answers(emulator: Emulator) -> None:
    async with client(emulator) as c:
        answers = {
            (await c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"#{i}"}]))
            .choices[0]
            .message.content
            for i in range(5)
        }
    assert len(answers) == 5


async def test_responses(emulator: Emulator) -> None:
    async with client(emulator) as c:
        response = await c.responses.create(model="gpt-4o-mini", input="Name a colour.", max_output_tokens=500)
    assert response.status == "completed" and response.output_text
    assert response.usage is not None
    assert response.usage.input_tokens == estimate_tokens("Name a colour.")
    assert response.usage.output_tokens == len(response.output_text.split())


async def test_images(emulator: Emulator) -> None:
    async with client(emulator) as c:
        images = await c.images.generate(model="gpt-image-1", prompt="a red fox", n=2)
        other = await c.images.generate(model="gpt-image-1", prompt="a blue fox", n=1)
    assert images.data is not None and other.data is not None
    urls = [image.url for image in images.data]
    assert len(set(urls)) == 2 and other.data[0].url not in urls


async def test_missing_key_is_401_in_the_error_envelope(emulator: Emulator) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{emulator.openai_url}/chat/completions", json={"model": "gpt-4o-mini", "messages": []}
        )
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    async with openai.AsyncOpenAI(api_key="sk-x", base_url=emulator.openai_url, max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            await c.chat.completions.create(model="gpt-4o-mini", messages=[], extra_headers={"Authorization": ""})


async def test_bad_request_envelope(emulator: Emulator) -> None:
    async with client(emulator) as c:
        with pytest.raises(openai.BadRequestError) as caught:
            await c.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert caught.value.param == "messages" and caught.value.type == "invalid_request_error"


async def test_request_limit_surfaces_as_rate_limit_error(strict_emulator: Emulator) -> None:
    async with client(strict_emulator) as c:
        for _ in range(3):
            await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.RateLimitError) as caught:
            await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        # Another model has a budget of its own.
        await c.chat.completions.create(model="gpt-4o-2", messages=[{"role": "user", "content": "hi"}])
    error = caught.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded" and error.type == "requests"
    assert "Rate limit reached for gpt-4o" in error.message and "(RPM): Limit 3" in error.message
    headers = error.response.headers
    assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"


async def test_token_limit_surfaces_as_rate_limit_error(strict_emulator: Emulator) -> None:
    prompt = [{"role": "user", "content": "x" * 400}]  # about 100 prompt tokens of the 200 a minute
    async with client(strict_emulator) as c:
        first = await c.chat.completions.create(model="gpt-small-tpm", messages=prompt, max_tokens=1)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as caught:
            await c.chat.completions.create(model="gpt-small-tpm", messages=prompt, max_tokens=1)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as too_large:
            await c.chat.completions.create(model="gpt-small-tpm", messages=[{"role": "user", "content": "y" * 2000}])
    assert first.usage is not None and first.usage.total_tokens > 100
    assert caught.value.type == "tokens" and caught.value.code == "rate_limit_exceeded"
    assert "(TPM): Limit 200" in caught.value.message
    assert too_large.value.type == "tokens" and "Request too large" in too_large.value.message


async def test_the_sdk_retries_a_429_by_its_hints(strict_emulator: Emulator) -> None:
    """With retries on, the SDK reads retry-after-ms; a never-fitting request says not to retry."""
    async with openai.AsyncOpenAI(api_key=f"sk-{uuid.uuid4().hex}", base_url=strict_emulator.openai_url) as c:
        with pytest.raises(openai.RateLimitError):
            await c.chat.completions.create(model="gpt-small-tpm", messages=[{"role": "user", "content": "z" * 2000}])
    key = c.api_key
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{strict_emulator.url}/_emulator/stats", params={"key": key})).json()
    assert stats["keys"][key]["openai.chat.completions"]["rejected"] == 1  # x-should-retry: false
