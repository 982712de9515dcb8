"""What the ratelimiter's callers may catch: grpc status codes mapped to domain errors."""

from __future__ import annotations

from services.common.errors import FairwayError


class RateLimiterError(FairwayError):
    """The ratelimiter could not answer; the message says why."""


class BudgetUnavailable(RateLimiterError):
    """The shared budget store is unreachable: no grants can be issued (fail closed).

    Ask again after `retry_after_s`; never fall back to a local guess of the budget.
    """

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidBudgetRequest(RateLimiterError):
    """The request itself is wrong (unknown budget, count 0, malformed grant id)."""
