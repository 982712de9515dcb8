"""The error taxonomy: retryable versus permanent, with a message a person can act on.

Both HTTP stacks are classified alike: the Replicate SDK raises `httpx` errors, the `openai`
SDK in our lock `httpx2` ones (same names, no common base class)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import httpx
import httpx2
import openai
import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb
from prometheus_client import REGISTRY
from replicate.exceptions import ModelError, ReplicateError

from services.common.embedded import free_port
from services.predictor.config import PredictorConfig
from services.predictor.errors import (
    PermanentUpstreamError,
    RetryableUpstreamError,
    never_sent,
    replicate_error,
    retry_after_seconds,
    status_error,
    transport_error,
)
from services.predictor.providers.base import CallContext, CallGate, call_outcome
from services.predictor.providers.openai_provider import OpenAIProvider, classify, go_duration
from services.ratelimiter.client import BudgetClient
from tests.support.tokens import TOKENS, service_env


@pytest.mark.parametrize("status", [429, 408, 409, 500, 502, 503, 504])
def test_throttling_and_server_errors_are_retryable(status: int) -> None:
    error = status_error("Replicate", status, "busy", retry_after_s=3)
    assert error.retryable and isinstance(error, RetryableUpstreamError)
    assert error.retry_after_s == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_rejections_are_permanent(status: int) -> None:
    error = status_error("OpenAI", status, "input: bad")
    assert not error.retryable and isinstance(error, PermanentUpstreamError)
    assert "input: bad" in str(error)


def test_bad_credentials_say_what_to_check() -> None:
    assert "API key" in str(status_error("OpenAI", 401, "Incorrect API key"))


@pytest.mark.parametrize("exc", [
    httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("reset"), httpx.ReadError("reset"),
    httpx.ConnectError("refused"),
])
def test_timeouts_and_resets_are_retryable(exc: Exception) -> None:
    assert transport_error("OpenAI", exc).retryable


def test_only_failures_before_sending_free_the_grant() -> None:
    assert never_sent(httpx.ConnectError("refused"))
    assert never_sent(httpx.ConnectTimeout("slow"))
    assert not never_sent(httpx.ReadTimeout("slow"))
    assert not never_sent(httpx.RemoteProtocolError("reset"))


# (class name, never sent, what the message says, call outcome label)
TRANSPORT_CLASSES = [
    ("ConnectError", True, "unreachable", "unsent"),
    ("ConnectTimeout", True, "unreachable", "unsent"),
    ("PoolTimeout", True, "unreachable", "unsent"),
    ("ReadTimeout", False, "did not answer in time", "timeout"),
    ("WriteTimeout", False, "did not answer in time", "timeout"),
    ("ReadError", False, "dropped the connection", "reset"),
    ("WriteError", False, "dropped the connection", "reset"),
    ("RemoteProtocolError", False, "dropped the connection", "reset"),
]


@pytest.mark.parametrize(("name", "unsent", "says", "outcome"), TRANSPORT_CLASSES)
def test_httpx2_errors_are_classified_as_their_httpx_namesakes(name: str, unsent: bool, says: str,
                                                               outcome: str) -> None:
    ours, theirs = getattr(httpx, name)("x"), getattr(httpx2, name)("x")
    assert not isinstance(theirs, httpx.HTTPError), "the two stacks share no base class"
    for exc in (ours, theirs):
        assert never_sent(exc) is unsent, type(exc)
        assert says in str(transport_error("OpenAI", exc)), type(exc)
        assert call_outcome(exc) == outcome, type(exc)


@pytest.mark.parametrize(("name", "unsent", "says", "outcome"), TRANSPORT_CLASSES)
def test_an_httpx2_error_wrapped_by_the_openai_sdk_is_seen_through(name: str, unsent: bool, says: str,
                                                                   outcome: str) -> None:
    request = httpx2.Request("POST", "https://api.openai.com/v1/chat/completions")
    wrapper = openai.APITimeoutError if "Timeout" in name else openai.APIConnectionError
    try:
        try:
            raise getattr(httpx2, name)("x")
        except httpx2.HTTPError as cause:
            raise wrapper(request=request) from cause
    except openai.APIConnectionError as wrapped:
        assert never_sent(wrapped) is unsent
        assert says in str(transport_error("OpenAI", wrapped))
        assert call_outcome(wrapped) == outcome


async def test_an_openai_call_that_never_left_releases_its_grant() -> None:
    """Through the real `openai.AsyncOpenAI` (on httpx2) against a port nobody listens on."""
    config = PredictorConfig.model_validate({"OPENAI_API_KEY": "sk-test", **service_env("predictor"),
                                             "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"})
    openai_provider = OpenAIProvider(config, BudgetClient("unused:0", token=TOKENS["predictor"]), CallGate(1))
    released: list[str] = []
    settled: list[int] = []

    async def release() -> None:
        released.append("grant")

    async def settle(tokens: int) -> None:
        settled.append(tokens)

    async def unused(*_: object) -> bool:
        raise AssertionError("an OpenAI call records and parks nothing")

    @asynccontextmanager
    async def uninterrupted() -> AsyncIterator[None]:
        yield

    ctx = CallContext(record_upstream=unused, park=unused, settle=settle, release=release,  # type: ignore[arg-type]
                      uninterrupted=uninterrupted)
    labels = {"provider": "openai", "endpoint": "chat.completions", "outcome": "unsent"}
    before = REGISTRY.get_sample_value("fairway_predictor_calls_total", labels) or 0.0
    assignment = pb.Assignment(item_id="i1", provider="openai", model="gpt-4o-mini", operation="chat",
                               input_json='{"messages": [{"role": "user", "content": "hi"}]}')
    with pytest.raises(RetryableUpstreamError, match="unreachable") as failed:
        await openai_provider.run(assignment, ctx)
    assert isinstance(failed.value.__cause__, openai.APIConnectionError)
    assert isinstance(failed.value.__cause__.__cause__, httpx2.ConnectError), "the SDK wraps an httpx2 error"
    assert released == ["grant"] and settled == []
    assert REGISTRY.get_sample_value("fairway_predictor_calls_total", labels) == before + 1
    await openai_provider.close()


def test_retry_after_prefers_milliseconds() -> None:
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    assert retry_after_seconds(httpx.Headers({"retry-after": "4"})) == 4.0
    assert retry_after_seconds(httpx.Headers({"retry-after": "soon"})) == 0.0


def _openai_error(status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> openai.APIStatusError:
    # The openai SDK speaks httpx2: its errors carry httpx2 responses, not httpx ones.
    request = httpx2.Request("POST", "https://api.openai.com/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request, json=body)
    error = body["error"]
    message = str(error.get("message", "x")) if isinstance(error, dict) else "x"
    return openai.APIStatusError(message, response=response, body=error)


def test_openai_429_is_retryable_after_the_providers_hint() -> None:
    error = classify(_openai_error(429, {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}},
                                   {"retry-after-ms": "250"}))
    assert error.retryable and error.retry_after_s == 0.25


def test_openai_request_larger_than_the_limit_is_permanent() -> None:
    error = classify(_openai_error(429, {"error": {"message": "Request too large", "code": "rate_limit_exceeded"}},
                                   {"x-should-retry": "false"}))
    assert not error.retryable and "smaller" in str(error)


def test_openai_content_policy_and_quota_are_permanent_and_explained() -> None:
    policy = classify(_openai_error(400, {"error": {"message": "rejected by our safety system",
                                                    "code": "content_policy_violation"}}))
    assert not policy.retryable and "content policy" in str(policy)
    quota = classify(_openai_error(429, {"error": {"message": "You exceeded your quota",
                                                   "code": "insufficient_quota"}}))
    assert not quota.retryable and "quota" in str(quota)


def test_replicate_errors() -> None:
    detail = "Request was throttled. Your rate limit resets in ~5s."
    throttled = replicate_error(ReplicateError(status=429, detail=detail))
    assert throttled.retryable and throttled.retry_after_s == 5.0
    invalid = replicate_error(ReplicateError(status=422, detail="input.prompt is required"))
    assert not invalid.retryable and "input.prompt" in str(invalid)
    crashed = ModelError(SimpleNamespace(error="the model crashed"))  # type: ignore[arg-type]
    assert not replicate_error(crashed).retryable
    assert replicate_error(httpx.ReadTimeout("slow")).retryable


def test_a_replicate_429_waits_the_longer_of_its_body_and_its_headers() -> None:
    request = httpx.Request("POST", "https://api.replicate.com/v1/predictions")
    body = {"detail": "Request was throttled. Your rate limit resets in ~2s."}
    answer = httpx.Response(429, json=body, headers={"retry-after": "7"}, request=request)
    error = replicate_error(httpx.HTTPStatusError("throttled", request=request, response=answer))
    assert error.retryable and error.retry_after_s == 7.0
    assert replicate_error(ReplicateError(status=429, detail=body["detail"])).retry_after_s == 2.0


@pytest.mark.parametrize(("text", "seconds"), [("1m30.5s", 90.5), ("120ms", 0.12), ("6s", 6.0), ("", 0.0)])
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)
