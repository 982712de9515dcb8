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
    # No output cap: charged as if it asked for the model's whole output ceiling (16384 by default).
    assert int(headers["x-ratelimit-remaining-tokens"]) == 2_000_000 - completion.usage.prompt_tokens - 16_384
    assert GO_DURATION.match(headers["x-ratelimit-reset-requests"])
    assert GO_DURATION.match(headers["x-ratelimit-reset-tokens"])
    assert headers["x-request-id"].startswith("req_")


def charged(emulator: Emulator, key: str, endpoint: str = "openai.chat.completions") -> int:
    stats = httpx.get(f"{emulator.url}/_emulator/stats", params={"key": key}).json()
    return int(stats["keys"][key][endpoint]["tokens"])


async def test_a_capped_request_is_charged_its_cap_at_admission(emulator: Emulator) -> None:
    """OpenAI counts prompt + n x the output cap when the request arrives, not the real answer."""
    key = f"sk-{uuid.uuid4().hex}"
    messages = [{"role": "user", "content": "Name a lighthouse."}]
    prompt = chat_prompt_tokens(list(messages))
    async with client(emulator, key) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=1000,
        )
        one = raw.parse()
        assert one.usage is not None and one.usage.prompt_tokens == prompt
        assert one.usage.completion_tokens < 1000  # the real answer is short, and reported as it is
        assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 2_000_000 - (prompt + 1000)
        assert charged(emulator, key) == prompt + 1000
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=messages,  # type: ignore[arg-type]
            max_completion_tokens=1000,
            n=2,
        )
        two = raw.parse()
    assert [choice.index for choice in two.choices] == [0, 1]
    assert two.usage is not None
    assert two.usage.completion_tokens == sum(len((ch.message.content or "").split()) for ch in two.choices)
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 2_000_000 - (prompt + 1000) - (prompt + 2 * 1000)
    assert charged(emulator, key) == 2 * prompt + 3000


async def test_an_uncapped_request_is_charged_the_models_output_ceiling(strict_emulator: Emulator) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    messages = [{"role": "user", "content": "Tell me about tides."}]
    async with client(strict_emulator, key) as c:
        raw = await c.chat.completions.with_raw_response.create(model="gpt-short-output", messages=messages)  # type: ignore[arg-type]
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 100_000 - (chat_prompt_tokens(list(messages)) + 300)
    assert charged(strict_emulator, key) == chat_prompt_tokens(list(messages)) + 300


async def test_caps_past_the_tpm_are_refused_though_the_answers_would_fit(strict_emulator: Emulator) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    messages = [{"role": "user", "content": "hi"}]
    prompt = chat_prompt_tokens(list(messages))

    async def ask(c: openai.AsyncOpenAI, model: str) -> int:
        answer = await c.chat.completions.create(model=model, messages=messages, max_tokens=400)  # type: ignore[arg-type]
        assert answer.usage is not None
        return answer.usage.total_tokens

    async with client(strict_emulator, key) as c:
        used = [await ask(c, "gpt-admission") for _ in range(2)]
        with pytest.raises(openai.RateLimitError) as caught:
            await ask(c, "gpt-admission")
        # A provider that counts real usage takes the same three, and charges what they used.
        used_elsewhere = [await ask(c, "gpt-usage") for _ in range(3)]
    assert 3 * max(used) <= 1000 < 3 * (prompt + 400)  # the third is the same request as the first two
    assert caught.value.type == "tokens"
    assert f"Limit 1000, Used {2 * (prompt + 400)}, Requested {prompt + 400}" in caught.value.message
    assert charged(strict_emulator, key) == 2 * (prompt + 400) + sum(used_elsewhere)


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
        raw = await c.responses.with_raw_response.create(
            model="gpt-4o-mini", input="Name a colour.", max_output_tokens=500
        )
    response = raw.parse()
    assert response.status == "completed" and response.output_text
    assert response.usage is not None
    assert response.usage.input_tokens == estimate_tokens("Name a colour.")
    assert response.usage.output_tokens == len(response.output_text.split())
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 2_000_000 - (response.usage.input_tokens + 500)


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
