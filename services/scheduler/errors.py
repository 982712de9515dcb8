"""Scheduler errors, each with the gRPC status and the public error code it maps to.

The servicers raise these; `ErrorMapping` (an interceptor) turns them into a gRPC abort
with trailing metadata `fairway-error` (the contract's error code) and, where it applies,
`retry-after`, so the gateway maps them to HTTP at one edge.
"""

from __future__ import annotations

import grpc

from services.common.errors import FairwayError


class SchedulerError(FairwayError):
    status = grpc.StatusCode.INTERNAL
    code = "internal"

    def __init__(self, message: str, *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidRequest(SchedulerError):
    status = grpc.StatusCode.INVALID_ARGUMENT
    code = "invalid_request"


class NotFound(SchedulerError):
    status = grpc.StatusCode.NOT_FOUND
    code = "not_found"


class TenantExists(SchedulerError):
    status = grpc.StatusCode.ALREADY_EXISTS
    code = "tenant_exists"


class IdempotencyConflict(SchedulerError):
    status = grpc.StatusCode.ALREADY_EXISTS
    code = "idempotency_conflict"


class UpstreamTaken(SchedulerError):
    """The upstream call is recorded for another item (an orphaned prediction adopted twice)."""

    status = grpc.StatusCode.ALREADY_EXISTS
    code = "upstream_taken"


class InsufficientCredits(SchedulerError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "insufficient_credits"


class BalanceConflict(SchedulerError):
    """Credits added or taken away would leave a balance the tenant cannot have (below 0, or
    beyond a 64-bit count): the amount is valid, the tenant's balance makes it fail (409)."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "balance_conflict"


class QueueFull(SchedulerError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    code = "queue_full"


class Unauthenticated(SchedulerError):
    status = grpc.StatusCode.UNAUTHENTICATED
    code = "unauthorized"


class PermissionDenied(SchedulerError):
    """The principal the gateway named may not do this (a tenant acting as admin)."""

    status = grpc.StatusCode.PERMISSION_DENIED
    code = "forbidden"


class DependencyDown(SchedulerError):
    status = grpc.StatusCode.UNAVAILABLE
    code = "unavailable"
