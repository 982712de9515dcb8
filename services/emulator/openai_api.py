"""The OpenAI API subset: chat completions, responses and image generations.

    api = OpenAIApi(settings, limits, clock, foreign)
    route = api.route("POST", "/v1/chat/completions")

The answer is worked out before admission. A request is charged, when it arrives, against
the key's requests and tokens per minute for the model, as OpenAI counts it: its estimated
prompt tokens (see `tokens`) plus `n` x its output cap, or the model's `max_output_tokens`
when it sets none, whatever the answer's real length; nothing is given back later. A model
whose limits say `tokens_counted: usage` is charged the prompt plus the real completion
instead. The answer is sent after a latency that grows with the completion.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from services.common.limits import Limits, ModelLimit
from services.emulator.calls import Call, Headers, canonical, dumps, go_duration, header
from services.emulator.config import EmulatorSettings
from services.emulator.errors import ApiError, OpenAIError
from services.emulator.foreign import OPENAI_PREFIX, ForeignTraffic
from services.emulator.latency import Latency
from services.emulator.limiter import Budget, Clock, Limiter, openai_budget
from services.emulator.tokens import chat_prompt_tokens, estimate_tokens, generate_text, response_input_tokens

Reply = tuple[int, bytes]
Handler = Callable[..., Awaitable[Reply]]
_MAX_CHOICES = 128  # OpenAI's ceiling on `n`
_RATE_LIMITS_URL = "Visit https://platform.openai.com/account/rate-limits to learn more."


def _bad_request(message: str) -> ApiError:
    return OpenAIError(400, message)


class Planned:
    """What a request will be answered with, and what it is charged, decided before it is admitted."""

    __slots__ = ("charged", "choices", "completion_tokens", "digest", "model", "prompt_tokens")

    def __init__(
        self, model: str, prompt_tokens: int, choices: list[tuple[str, bool]], charged: int, digest: bytes
    ) -> None:
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.choices = choices  # (text, truncated) per answer; one word is one token
        self.completion_tokens = sum(len(text.split()) for text, _ in choices)
        self.charged = charged  # against TPM, at admission
        self.digest = digest

    @property
    def total_tokens(self) -> int:
        """What the request really used: reported in `usage`, for billing."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def longest(self) -> int:
        """Tokens of the longest answer: the answers are generated side by side."""
        return max((len(text.split()) for text, _ in self.choices), default=0)


def _answers(
    limit: ModelLimit, prompt_tokens: int, cap: int | None, n: int, digest: bytes
) -> tuple[list[tuple[str, bool]], int]:
    """`n` answers of at most `cap` tokens (the model's ceiling when None), and the tokens charged."""
    ceiling = cap or limit.max_output_tokens
    choices = [generate_text(digest if i == 0 else digest + i.to_bytes(2, "big"), ceiling) for i in range(n)]
    if limit.tokens_counted == "usage":
        return choices, prompt_tokens + sum(len(text.split()) for text, _ in choices)
    return choices, prompt_tokens + n * ceiling


class OpenAIApi:
    def __init__(self, settings: EmulatorSettings, limits: Limits, clock: Clock, foreign: ForeignTraffic) -> None:
        self._s = settings
        self._limits = limits
        self._latency = Latency(settings)
        self._foreign = foreign
        self._limiter = Limiter(self._budget_for, clock)

    def _budget_for(self, name: str) -> Budget:
        key, _, model = name.partition("\n")
        limit = self._limits.openai.for_model(model)
        return self._foreign.attach(key, OPENAI_PREFIX + model, openai_budget(limit.rpm, limit.tpm))

    def budget(self, key: str, name: str) -> Budget:
        """The key's budget `openai:<model>`."""
        return self._limiter.budget(f"{key}\n{name.removeprefix(OPENAI_PREFIX)}")

    def route(self, method: str, path: str) -> tuple[str, Handler, tuple[str, ...]] | None:
        if method != "POST":
            return None
        if path == "/v1/chat/completions":
            return "openai.chat.completions", self.chat, ()
        if path == "/v1/responses":
            return "openai.responses", self.responses, ()
        if path == "/v1/images/generations":
            return "openai.images.generations", self.images, ()
        return None

    def authenticate(self, call: Call) -> str:
        key = call.key
        if not key:
            raise OpenAIError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        return key

    def server_error(self, status: int) -> ApiError:
        if status == 503:
            return OpenAIError(503, "The engine is currently overloaded, please try again later.", type="server_error")
        return OpenAIError(
            status,
            "The server had an error while processing your request. Sorry about that!",
            type="server_error",
        )

    def admit(self, call: Call, key: str, endpoint: str) -> Headers:
        """Plan the answer, charge requests and tokens; the x-ratelimit headers, or a 429."""
        plan = self._plan(call, endpoint)
        call.state = plan
        budget = self._limiter.budget(f"{key}\n{plan.model}")
        limit = self._limits.openai.for_model(plan.model)
        now = self._limiter.now()
        decision = budget.acquire(now, plan.charged)
        remaining_requests, remaining_tokens = budget.remaining(now)
        reset_requests, reset_tokens = budget.reset_after(now)
        real = self._s.real
        headers = [
            header("x-ratelimit-limit-requests", limit.rpm),
            header("x-ratelimit-limit-tokens", limit.tpm),
            header("x-ratelimit-remaining-requests", remaining_requests),
            header("x-ratelimit-remaining-tokens", remaining_tokens),
            header("x-ratelimit-reset-requests", go_duration(real(reset_requests))),
            header("x-ratelimit-reset-tokens", go_duration(real(reset_tokens))),
        ]
        if decision.accepted:
            return headers
        if math.isinf(decision.retry_after):
            raise OpenAIError(
                429,
                f"Request too large for {plan.model} in organization org-emulator on tokens per min (TPM): "
                f"Limit {limit.tpm}, Requested {plan.charged}. The input or output tokens must be "
                f"reduced in order to run successfully. {_RATE_LIMITS_URL}",
                type="tokens",
                code="rate_limit_exceeded",
                headers=[*headers, header("x-should-retry", "false")],
            )
        wait = real(decision.retry_after)
        if decision.blocking == "tokens":
            what = (
                f"tokens per min (TPM): Limit {limit.tpm}, Used {limit.tpm - remaining_tokens}, "
                f"Requested {plan.charged}"
            )
        else:
            used = limit.rpm - remaining_requests
            what = f"requests per min (RPM): Limit {limit.rpm}, Used {used}, Requested 1"
        raise OpenAIError(
            429,
            f"Rate limit reached for {plan.model} in organization org-emulator on {what}. "
            f"Please try again in {go_duration(wait)}. {_RATE_LIMITS_URL}",
            type=decision.blocking,
            code="rate_limit_exceeded",
            headers=[
                *headers,
                header("retry-after", max(1, math.ceil(wait))),
                header("retry-after-ms", max(1, math.ceil(wait * 1000))),
            ],
        )

    # -- planning ------------------------------------------------------------------------------

    def _plan(self, call: Call, endpoint: str) -> Planned:
        body = call.json(_bad_request)
        if not isinstance(body, dict):
            raise OpenAIError(400, "The request body must be a JSON object.")
        model = body.get("model")
        if endpoint == "openai.images.generations":
            model = model or "dall-e-2"
        if not isinstance(model, str) or not model:
            raise OpenAIError(400, "you must provide a model parameter", param="model")
        if body.get("stream"):
            raise OpenAIError(400, "Streaming is not supported by this server.", param="stream")
        seed = f"{self._s.seed}\n{model}\n".encode() + call.body
        digest = hashlib.sha256(seed).digest()
        limit = self._limits.openai.for_model(model)
        if endpoint == "openai.chat.completions":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise OpenAIError(
                    400,
                    "Missing required parameter: 'messages'.",
                    param="messages",
                    code="missing_required_parameter",
                )
            cap = _positive(body, "max_completion_tokens") or _positive(body, "max_tokens")
            n = body.get("n", 1)
            if n is None:
                n = 1
            if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= _MAX_CHOICES):
                raise OpenAIError(400, f"Invalid 'n': must be an integer from 1 to {_MAX_CHOICES}.", param="n")
            prompt_tokens = chat_prompt_tokens(messages)
            choices, charged = _answers(limit, prompt_tokens, cap, n, digest)
            return Planned(model, prompt_tokens, choices, charged, digest)
        if endpoint == "openai.responses":
            if "input" not in body:
                raise OpenAIError(
                    400,
                    "Missing required parameter: 'input'.",
                    param="input",
                    code="missing_required_parameter",
                )
            tokens = response_input_tokens(body["input"])
            if isinstance(body.get("instructions"), str):
                tokens += estimate_tokens(body["instructions"])
            choices, charged = _answers(limit, tokens, _positive(body, "max_output_tokens"), 1, digest)
            return Planned(model, tokens, choices, charged, digest)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise OpenAIError(
                400,
                "Missing required parameter: 'prompt'.",
                param="prompt",
                code="missing_required_parameter",
            )
        # Images are charged their prompt's estimate alone: they have no output tokens.
        prompt_tokens = estimate_tokens(prompt)
        return Planned(model, prompt_tokens, [], prompt_tokens, digest)

    # -- endpoints -----------------------------------------------------------------------------

    async def chat(self, call: Call) -> Reply:
        plan: Planned = call.state
        await asyncio.sleep(self._s.real(self._latency.completion(plan.longest, plan.digest)))
        body = {
            "id": "chatcmpl-" + plan.digest[:15].hex(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": plan.model,
            "choices": [
                {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "length" if truncated else "stop",
                }
                for i, (text, truncated) in enumerate(plan.choices)
            ],
            "usage": {
                "prompt_tokens": plan.prompt_tokens,
                "completion_tokens": plan.completion_tokens,
                "total_tokens": plan.total_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_emulator",
        }
        return 200, dumps(body)

    async def responses(self, call: Call) -> Reply:
        plan: Planned = call.state
        await asyncio.sleep(self._s.real(self._latency.completion(plan.longest, plan.digest)))
        request = call.json(_bad_request)
        text, truncated = plan.choices[0]
        status = "incomplete" if truncated else "completed"
        body = {
            "id": "resp_" + plan.digest[:24].hex(),
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": plan.model,
            "output": [
                {
                    "type": "message",
                    "id": "msg_" + plan.digest[8:32].hex(),
                    "status": status,
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": plan.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": plan.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": plan.total_tokens,
            },
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "metadata": request.get("metadata") or {},
            "parallel_tool_calls": True,
            "temperature": request.get("temperature", 1.0),
            "top_p": request.get("top_p", 1.0),
            "tool_choice": "auto",
            "tools": [],
            "text": {"format": {"type": "text"}},
        }
        return 200, dumps(body)

    async def images(self, call: Call) -> Reply:
        plan: Planned = call.state
        request = call.json(_bad_request)
        await asyncio.sleep(self._s.real(self._latency.image(plan.digest)))
        count = request.get("n") if isinstance(request.get("n"), int) else 1
        stem = hashlib.sha256(canonical(request).encode()).hexdigest()[:32]
        b64 = request.get("response_format") == "b64_json"
        data = [
            {"b64_json": _PIXEL} if b64 else {"url": f"https://images.emulated.openai/{stem}-{i}.png"}
            for i in range(max(1, min(count, 10)))
        ]
        for item in data:
            item["revised_prompt"] = request["prompt"]
        body = {
            "created": int(time.time()),
            "data": data,
            "size": request.get("size", "1024x1024"),
            "usage": {
                "input_tokens": plan.prompt_tokens,
                "output_tokens": 0,
                "total_tokens": plan.prompt_tokens,
                "input_tokens_details": {"text_tokens": plan.prompt_tokens, "image_tokens": 0},
            },
        }
        return 200, dumps(body)

    def clear(self) -> None:
        self._limiter.clear()


def _positive(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# A 1x1 transparent PNG, for `response_format: b64_json`.
_PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
