"""How an upstream call can fail, in terms the scheduler acts on.

Retryable: the same call may succeed later (429, 408, 5xx, timeouts, connection resets);
the scheduler puts the item back with backoff, never sooner than the provider's
`retry-after`. Permanent: retrying repeats the failure (validation, content policy, a
failed prediction); the item fails with a message that says what to change.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from services.common.errors import FairwayError


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


def never_sent(exc: BaseException) -> bool:
    """True when the request cannot have reached the provider, so its budget grant was not used."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def transport_error(provider: str, exc: BaseException) -> RetryableUpstreamError:
    """A request that got no HTTP answer: a timeout or a dropped connection."""
    if isinstance(exc, httpx.TimeoutException):
        return RetryableUpstreamError(f"{provider} did not answer in time ({type(exc).__name__})")
    if never_sent(exc):
        return RetryableUpstreamError(f"{provider} is unreachable: {exc or type(exc).__name__}")
    return RetryableUpstreamError(f"{provider} dropped the connection: {exc or type(exc).__name__}")


def status_error(provider: str, status: int, detail: str, *, retry_after_s: float = 0.0) -> UpstreamError:
    """An HTTP error answer, classified by its status."""
    if status == 429:
        return RetryableUpstreamError(f"{provider} is rate limiting (429): {detail}", retry_after_s=retry_after_s)
    if status in (408, 409, 425) or status >= 500:
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
