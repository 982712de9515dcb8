"""How an upstream call can fail, in terms the scheduler acts on.

Retryable: the same call may succeed later (429, 408, 5xx, timeouts, connection resets);
the scheduler puts the item back with backoff, never sooner than the provider's
`retry-after`. Permanent: retrying repeats the failure (validation, content policy, a
failed prediction); the item fails with a message that says what to change.

This module is the one edge where the dependencies' errors become ours. Two HTTP stacks
raise them: the Replicate SDK runs on `httpx`, the `openai` SDK in our lock on `httpx2`, a
separate package whose classes have the same names but share no base class with `httpx`'s;
every check below accepts both.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import httpx2
from replicate.exceptions import ModelError, ReplicateError

from services.common.errors import FairwayError

# A request that failed before its first byte reached the provider.
_UNSENT: tuple[type[BaseException], ...] = (
    httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
    httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout,
)
_TIMEOUTS: tuple[type[BaseException], ...] = (httpx.TimeoutException, httpx2.TimeoutException)
_HTTP_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError, httpx2.HTTPError)
# 4xx answers after which the provider may have acted on the request all the same; every
# other 4xx refused it as a whole (so a create answered one made nothing).
_FATE_UNKNOWN_4XX = (408, 409, 425)


class UpstreamError(FairwayError):
    """A provider call failed. `retryable` says whether trying again can help."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RetryableUpstreamError(UpstreamError):
    """429, 408, 5xx, timeouts, connection resets: the same call may succeed later."""


class PermanentUpstreamError(UpstreamError):
    """Validation errors, content policy, a failed prediction: retrying repeats the failure."""

    retryable = False


def transport_cause(exc: BaseException) -> BaseException:
    """The `httpx`/`httpx2` error behind `exc`: SDKs wrap it (`openai.APIConnectionError`
    raises `from` it); `exc` itself when there is none."""
    seen: BaseException | None = exc
    for _ in range(4):  # a wrapper of a wrapper at most; never loop on a cycle
        if seen is None:
            break
        if isinstance(seen, _HTTP_ERRORS):
            return seen
        seen = seen.__cause__
    return exc


def never_sent(exc: BaseException) -> bool:
    """True when the request cannot have reached the provider, so its budget grant was not used."""
    return isinstance(transport_cause(exc), _UNSENT)


def timed_out(exc: BaseException) -> bool:
    return isinstance(transport_cause(exc), _TIMEOUTS)


def transport_error(provider: str, exc: BaseException) -> RetryableUpstreamError:
    """A request that got no HTTP answer: a timeout or a dropped connection."""
    cause = transport_cause(exc)
    if never_sent(cause):
        return RetryableUpstreamError(f"{provider} is unreachable: {cause or type(cause).__name__}")
    if timed_out(cause):
        return RetryableUpstreamError(f"{provider} did not answer in time ({type(cause).__name__})")
    return RetryableUpstreamError(f"{provider} dropped the connection: {cause or type(cause).__name__}")


def status_error(provider: str, status: int, detail: str, *, retry_after_s: float = 0.0) -> UpstreamError:
    """An HTTP error answer, classified by its status."""
    if status == 429:
        return RetryableUpstreamError(f"{provider} is rate limiting (429): {detail}", retry_after_s=retry_after_s)
    if status in _FATE_UNKNOWN_4XX or status >= 500:
        return RetryableUpstreamError(f"{provider} failed ({status}): {detail}", retry_after_s=retry_after_s)
    if status in (401, 403):
        return PermanentUpstreamError(f"{provider} refused the credentials ({status}): {detail}; check the API key")
    return PermanentUpstreamError(f"{provider} rejected the request ({status}): {detail}")


def retry_after_seconds(headers: Mapping[str, str]) -> float:
    """The provider's wait hint: `retry-after-ms`, else `retry-after` in seconds; 0 if none."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return 0.0


# ---- Replicate (its SDK raises `ReplicateError` for answers, `httpx` errors for the rest) ----

REPLICATE_ERRORS = (ReplicateError, httpx.HTTPError)


def replicate_status(exc: BaseException) -> int | None:
    """The HTTP status of a Replicate answer; None for a call that got none."""
    if isinstance(exc, ReplicateError):
        return exc.status
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code
    return None


def replicate_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, ModelError):
        return PermanentUpstreamError(f"Replicate model error: {exc}")
    if isinstance(exc, ReplicateError):
        detail = exc.detail or exc.title or str(exc)
        return status_error("Replicate", exc.status or 0, detail, retry_after_s=_replicate_retry_after(exc, detail))
    if isinstance(exc, httpx.HTTPStatusError):
        return status_error("Replicate", exc.response.status_code, exc.response.text[:300],
                            retry_after_s=_replicate_retry_after(exc, exc.response.text[:300]))
    return transport_error("Replicate", exc)


def _replicate_retry_after(exc: BaseException, detail: str) -> float:
    """The longer of the body's hint and the headers', when the exception kept a response."""
    # The SDK keeps the body, not the headers: "Request was throttled. Your rate limit resets in ~5s."
    from_body = 0.0
    marker = "resets in ~"
    if marker in detail:
        digits = detail.split(marker, 1)[1].split("s", 1)[0]
        try:
            from_body = max(0.0, float(digits))
        except ValueError:
            from_body = 0.0
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    from_headers = retry_after_seconds(headers) if isinstance(headers, Mapping) else 0.0
    return max(from_body, from_headers)
