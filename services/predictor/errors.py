"""How an upstream call can fail, in terms the scheduler acts on."""

from __future__ import annotations

from services.common.errors import FairwayError


class UpstreamError(FairwayError):
    """A provider call failed. `retryable` says whether trying again can help."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RetryableUpstreamError(UpstreamError):
    """429, 5xx, timeouts, connection resets: the same call may succeed later."""


class PermanentUpstreamError(UpstreamError):
    """Validation errors, content policy, a failed prediction: retrying repeats the failure."""

    retryable = False
