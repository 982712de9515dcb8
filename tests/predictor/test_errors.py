"""The error taxonomy: retryable versus permanent, with a message a person can act on."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import httpx2
import openai
import pytest
from replicate.exceptions import ModelError, ReplicateError

from services.predictor.errors import (
    PermanentUpstreamError,
    RetryableUpstreamError,
    never_sent,
    retry_after_seconds,
    status_error,
    transport_error,
)
from services.predictor.providers.openai_provider import classify, go_duration
from services.predictor.providers.replicate_provider import _classify as classify_replicate


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
    throttled = classify_replicate(ReplicateError(status=429, detail=detail))
    assert throttled.retryable and throttled.retry_after_s == 5.0
    invalid = classify_replicate(ReplicateError(status=422, detail="input.prompt is required"))
    assert not invalid.retryable and "input.prompt" in str(invalid)
    crashed = ModelError(SimpleNamespace(error="the model crashed"))  # type: ignore[arg-type]
    assert not classify_replicate(crashed).retryable
    assert classify_replicate(httpx.ReadTimeout("slow")).retryable


@pytest.mark.parametrize(("text", "seconds"), [("1m30.5s", 90.5), ("120ms", 0.12), ("6s", 6.0), ("", 0.0)])
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)
