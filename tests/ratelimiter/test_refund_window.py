"""Token refunds as credit, and the token window log that bounds every rolling window.

The scripts run on real Redis with their clock (`TIME`) read from a key, so time is
controlled: `Clocked.advance` moves it and ages every key's expiry by the same amount, as
Redis would have in that time.
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ratelimiter.clocked import Clocked

WINDOW_MS = 60_000
SLOW_TPM = 60.0  # at burst fraction 0.5: 30 tokens of burst, one token back a second


async def test_a_refund_after_the_budget_caught_up_is_granted_again(redis_url: str) -> None:
    clocked = await Clocked.create(redis_url, SLOW_TPM, 0.5)
    try:
        first = await clocked.acquire(10, 10)
        assert first.granted == 4  # check-then-charge: 40 tokens, 40 s of the token TAT
        await clocked.advance(85_000)  # the TAT (40 s) and the grants (60 s) have passed
        for _, grant in clocked.grants[:4]:
            await clocked.close(grant, 0)
        # The refunds reach back to the grants' issue time, capped at one window: 30 tokens of
        # credit on top of the burst. The window log had them leave the window already.
        again = await clocked.acquire(10, 10)
        assert again.granted == 6
        assert again.limited_by == "tokens"
    finally:
        await clocked.store.aclose()


async def test_refunded_tokens_within_the_window_are_counted_once(redis_url: str) -> None:
    clocked = await Clocked.create(redis_url, SLOW_TPM, 0.5)
    try:
        first = await clocked.acquire(2, 10)
        assert first.granted == 2  # 20 tokens: the token TAT is 20 s ahead
        await clocked.advance(45_000)  # caught up, but the grants are still in the window
        for _, grant in clocked.grants:
            await clocked.close(grant, 0)
        # Without credit the refunds would be lost and 4 grants would start (burst + one).
        # With it, 6: the GCRA allows 7, the window (60 tokens, nothing used) 6.
        again = await clocked.acquire(10, 10)
        assert again.granted == 6 and again.limited_by == "tokens"
        await clocked.advance(1_000)
        denied = await clocked.acquire(1, 10)
        assert denied.granted == 0 and denied.limited_by == "tokens"
        # The window is full until the first grants leave it: 60 s after they were issued.
        assert denied.retry_after_s > 0
    finally:
        await clocked.store.aclose()


Op = tuple[int, str, int, int, float]  # (ms to wait, kind, count, tokens each, used fraction)

OPS = st.lists(
    st.tuples(
        # Short waits keep the budget saturated, long ones let grants leave the window.
        st.one_of(st.integers(0, 3_000), st.integers(0, 30_000)),
        st.sampled_from(["acquire", "acquire", "settle", "release"]),
        st.integers(1, 4),
        st.integers(1, 20),
        st.sampled_from([0.0, 0.0, 0.25, 1.0]),  # mostly refunds: they make the credit
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, burst_fraction=st.sampled_from([0.05, 0.2, 0.5]))
def test_no_rolling_window_of_actual_use_exceeds_the_limit(
    redis_url: str, ops: list[Op], burst_fraction: float
) -> None:
    """Whatever the order of grants, refunds, charges up to the reservation and releases.

    Without the window log (the token GCRA with its credit alone) this finds windows over.
    """
    asyncio.run(_window_property(redis_url, ops, burst_fraction))


async def _window_property(redis_url: str, ops: list[Op], burst_fraction: float) -> None:
    clocked = await Clocked.create(redis_url, SLOW_TPM, burst_fraction)
    used: dict[str, int] = {}
    try:
        for wait_ms, kind, count, tokens_each, fraction in ops:
            await clocked.advance(wait_ms)
            open_grants = [g for _, g in clocked.grants if g.serial not in used]
            if kind == "acquire" or not open_grants:
                await clocked.acquire(count, tokens_each)
            else:
                grant = open_grants[count % len(open_grants)]
                used[grant.serial] = round(grant.tokens * fraction) if kind == "settle" else 0
                await clocked.close(grant, used[grant.serial] if kind == "settle" else -1)
    finally:
        await clocked.store.aclose()
    # Actual use: what a settled grant used, nothing for a released one, the reservation
    # for one still open. Checking windows that end at a grant covers every window.
    actual = [(issued, used.get(g.serial, g.tokens)) for issued, g in clocked.grants]
    for end, _ in actual:
        in_window = sum(tokens for issued, tokens in actual if end - WINDOW_MS < issued <= end)
        assert in_window <= SLOW_TPM, (end, in_window)
