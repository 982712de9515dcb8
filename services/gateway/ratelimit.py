"""Per-tenant request rate at this gateway: a token bucket per tenant, refilled at `rate`/s.

Each replica keeps its own buckets (no shared state, nothing on the request path but a
dict lookup), so a tenant spread over N replicas by the load balancer gets up to N times
the rate; the limit is there to keep one tenant from taking a replica's whole capacity.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from services.gateway.errors import ApiError

# Buckets kept; the least recently used is dropped beyond this (it comes back full).
MAX_TENANTS = 10_000


class TenantRateLimit:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        # tenant -> (tokens, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait_s(self, tenant: str, now: float) -> float:
        """0 and one token taken if the tenant may go now, else how long until it may."""
        if self.rate <= 0:
            return 0.0
        tokens, then = self._buckets.get(tenant, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[tenant] = (tokens, now)
        self._buckets.move_to_end(tenant)
        while len(self._buckets) > MAX_TENANTS:
            self._buckets.popitem(last=False)
        return wait

    def check(self, tenant: str) -> None:
        """Raise 429 rate_limited, with Retry-After, when the tenant is over its rate."""
        wait = self.wait_s(tenant, time.monotonic())
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"Tenant {tenant!r} sends more than {self.rate:g} requests a second; retry after the "
                "Retry-After header's seconds.",
                retry_after_s=wait,
            )
