"""The ratelimiter's default pacing fits the emulator's default Replicate budgets.

The densest schedule the ratelimiter grants (its whole burst at once, then one call per
emission interval, for two minutes) is sent to the emulator's limiter on a controlled
clock: not one call may be throttled. A throttled call would halve Fairway's rate for a
minute (docs/design/ratelimiter.md), so a mismatch here slows every large Replicate job.
"""

from __future__ import annotations

import pytest

from services.common.limits import REPLICATE_CREATE, REPLICATE_READ, Limits
from services.emulator.config import EmulatorSettings
from services.emulator.limiter import Limiter, replicate_budget
from services.ratelimiter.budgets import BudgetBook
from services.ratelimiter.config import RateLimiterConfig


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("name", [REPLICATE_CREATE, REPLICATE_READ])
def test_the_densest_grants_are_never_throttled(name: str) -> None:
    limits = Limits()
    fraction = RateLimiterConfig.model_fields["burst_fraction"].default
    planned = BudgetBook(limits, burst_fraction=fraction).get(name)
    published = limits.replicate.create_rpm if name == REPLICATE_CREATE else limits.replicate.read_rpm
    burst = EmulatorSettings.model_fields["replicate_burst"].default
    clock = Clock()
    upstream = Limiter(lambda _key: replicate_budget(published, burst), clock)
    interval_s = planned.request_interval_us / 1e6
    calls = int(planned.rpm * 2)  # two minutes at the planned rate
    for n in range(calls):
        clock.now = max(0, n - planned.burst + 1) * interval_s
        decision, _ = upstream.acquire("key")
        assert decision.accepted, f"call {n} of {calls} at {clock.now:.3f}s throttled"
