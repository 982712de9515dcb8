"""The control law alone, then its state shared by replicas running as child processes."""

from __future__ import annotations

import asyncio

import pytest

from services.common.limits import REPLICATE_CREATE, Limits, ReplicateLimits
from services.ratelimiter.budgets import BudgetBook
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.feedback import MIN_HOLD_S, Observation, OwnUsage, correct
from services.ratelimiter.limiter import RateLimiter
from services.ratelimiter.server import RateLimiterServer
from services.ratelimiter.store import window_requests
from tests.ratelimiter.clocked import Clocked
from tests.ratelimiter.conftest import SLOW_LIMITS, Replicas, make_config
from tests.support.tokens import TOKENS

IDLE = OwnUsage(requests_fraction=0.0, tokens_fraction=0.0, published_rpm=1000, published_tpm=100_000)


def test_no_evidence_no_correction() -> None:
    fix = correct(
        Observation(remaining_requests=990, limit_requests=1000), IDLE, utilization=0.98, default_cooldown_s=1.0
    )
    assert fix.target_factor is None and fix.multiplier == 1.0 and fix.cooldown_s == 0.0


def test_foreign_usage_lowers_the_target_to_what_is_left() -> None:
    ours = OwnUsage(requests_fraction=0.4, tokens_fraction=0.0, published_rpm=1000, published_tpm=100_000)
    # The provider sees 70% used, we account for 40%: someone else uses 30%.
    fix = correct(
        Observation(remaining_requests=300, limit_requests=1000), ours, utilization=0.98, default_cooldown_s=1.0
    )
    assert fix.target_factor == pytest.approx((0.98 - 0.30) / 0.98)


def test_lower_provider_limit_and_token_shortage_take_the_minimum() -> None:
    fix = correct(
        Observation(remaining_requests=500, limit_requests=500, remaining_tokens=10_000, limit_tokens=100_000),
        IDLE,
        utilization=1.0,
        default_cooldown_s=1.0,
    )
    assert fix.target_factor == pytest.approx(0.1)  # tokens: 90% used by someone else


def test_throttle_measures_our_share_holds_it_and_cools_down() -> None:
    ours = OwnUsage(requests_fraction=0.7, tokens_fraction=0.2, published_rpm=1000, published_tpm=100_000,
                    window_s=60.0)
    fix = correct(Observation(throttled=True, retry_after_s=3.0), ours, utilization=0.98, default_cooldown_s=1.0)
    assert (fix.learned_factor, fix.multiplier, fix.cooldown_s, fix.hold_s) == (0.7, 0.5, 3.0, 60.0)
    scaled = OwnUsage(0.1, 0.0, 1000, 0, window_s=1.0)  # a provider minute of one real second
    bare = correct(Observation(throttled=True), scaled, utilization=0.98, default_cooldown_s=1.0)
    assert (bare.cooldown_s, bare.hold_s) == (1.0, MIN_HOLD_S)
    empty = correct(Observation(remaining_tokens=0, reset_tokens_s=7.5), IDLE, utilization=0.98, default_cooldown_s=1.0)
    assert empty.cooldown_s == 7.5 and empty.multiplier == 1.0 and empty.learned_factor is None


async def _factor(clocked: Clocked) -> float:
    """The budget's rate factor now (a report that changes nothing)."""
    factor, _ = await clocked.store.feedback(clocked.budget, target_factor=None, multiplier=1.0, cooldown_s=0.0,
                                             hold_s=0.0)
    return factor


async def _shared_key(redis_url: str) -> tuple[Clocked, RateLimiter]:
    limits = Limits(utilization=1.0, replicate=ReplicateLimits(create_rpm=600))
    clocked = await Clocked.create(redis_url, 0.0, 0.9, rpm=600.0, name=REPLICATE_CREATE)
    book = BudgetBook(limits, burst_fraction=0.9)
    assert book.get(REPLICATE_CREATE) == clocked.budget
    limiter = RateLimiter(book, clocked.store, utilization=1.0, time_scale=1.0, default_cooldown_s=1.0)
    return clocked, limiter


async def test_a_429_plans_what_we_got_through_and_holds_it_for_a_provider_minute(redis_url: str) -> None:
    clocked, limiter = await _shared_key(redis_url)
    try:
        # Another client holds 180 of the provider's 600 a minute: we got 420 through when it said 429.
        assert (await clocked.acquire(420, 0)).granted == 420
        await clocked.advance(1_000)
        factor, cooldown = await limiter.report(REPLICATE_CREATE, Observation(throttled=True))
        assert factor == pytest.approx(0.7, abs=0.002) and cooldown == 1.0
        # Held there while the other client is not measured again (no recovery for a minute) ...
        await clocked.advance(58_000)
        assert await _factor(clocked) == pytest.approx(0.7, abs=0.002)
        # ... then recovering at 1/60 a second (recovery_s = 60).
        await clocked.advance(4_000)  # the hold ended 2 s ago
        assert await _factor(clocked) == pytest.approx(0.7 + 2 / 60, abs=0.002)
    finally:
        await clocked.store.aclose()


async def test_refused_calls_are_not_counted_as_ours(redis_url: str) -> None:
    # A limit that fell under us (Replicate tightens it as credit runs low): every call in flight
    # is refused, and each refusal lowers the share we measure, down to what got through.
    clocked, limiter = await _shared_key(redis_url)
    try:
        assert (await clocked.acquire(420, 0)).granted == 420
        await clocked.advance(1_500)
        for _ in range(60):
            factor, _ = await limiter.report(REPLICATE_CREATE, Observation(throttled=True))
        assert factor == pytest.approx((420 - 59) / 600, abs=0.002)
    finally:
        await clocked.store.aclose()


async def test_our_own_pause_is_not_taken_for_someone_elses_use(redis_url: str) -> None:
    # After a 429 we pause (the cooldown) and our calls age out of the provider's window; a
    # 429 later in the same hold (a call of the burst, retried) must not read that as room
    # someone else took: it takes one refused call off the first measure.
    clocked, limiter = await _shared_key(redis_url)
    try:
        assert (await clocked.acquire(420, 0)).granted == 420
        await clocked.advance(30_000)
        first, _ = await limiter.report(REPLICATE_CREATE, Observation(throttled=True))
        assert first == pytest.approx(0.7, abs=0.002)
        await clocked.advance(35_000)  # our 420 calls have left the provider's minute
        second, _ = await limiter.report(REPLICATE_CREATE, Observation(throttled=True))
        assert second == pytest.approx(0.7 - 1 / 600, abs=0.002)
    finally:
        await clocked.store.aclose()


async def test_a_429_on_a_young_window_halves_at_most_once_per_hold(redis_url: str) -> None:
    clocked, limiter = await _shared_key(redis_url)
    try:
        assert (await clocked.acquire(60, 0)).granted == 60  # a few seconds of our traffic, then a 429
        await clocked.advance(1_000)
        first, _ = await limiter.report(REPLICATE_CREATE, Observation(throttled=True))
        second, _ = await limiter.report(REPLICATE_CREATE, Observation(throttled=True))
        assert first == second == pytest.approx(0.5)
        await clocked.advance(61_000)  # a new hold period: it may halve again
        third, _ = await limiter.report(REPLICATE_CREATE, Observation(throttled=True))
        assert third == pytest.approx(0.25, abs=0.01)
    finally:
        await clocked.store.aclose()


async def test_cooldown_and_rate_factor_are_shared_by_replicas(redis_url: str, replicas: Replicas) -> None:
    limits = {**SLOW_LIMITS, "replicate": {"create_rpm": 6000, "read_rpm": 600}}
    (_, a), (_, b), (_, c) = replicas(3, redis_url, limits, FAIRWAY_RATELIMITER_RECOVERY_S="3")
    ca, cb, cc = (BudgetClient(address, token=TOKENS["predictor"]) for address in (a, b, c))
    try:
        # A 429 seen by a predictor talking to replica a ...
        await ca.report_upstream("replicate:create", throttled=True, retry_after_s=30.0)
        # ... stops replicas b and c too, for the provider's retry-after.
        for client in (cb, cc):
            denied = await client.acquire("replicate:create", 5)
            assert denied.grants == [] and denied.limited_by == "cooldown"
            assert 25.0 < denied.retry_after_s <= 30.0
        rows = {s.name: s for s in (await cc.stats()).budgets}
        assert rows["replicate:create"].rate_factor < 0.6
        assert rows["replicate:create"].cooldown_until > 0

        # Headers saying others use most of replicate:read lower every replica's rate at once.
        await cb.report_upstream("replicate:read", remaining_requests=120, limit_requests=600)
        factor = {s.name: s for s in (await ca.stats()).budgets}["replicate:read"].rate_factor
        assert 0.19 < factor < 0.21  # others use 80%: we keep the remaining 20%
        # A second replica reporting the same shortage holds it at the target, not below.
        await cc.report_upstream("replicate:read", remaining_requests=120, limit_requests=600)
        again = {s.name: s for s in (await ca.stats()).budgets}["replicate:read"].rate_factor
        assert again >= 0.2 - 1e-9

        # Then it recovers by itself (3 s from 0 to 1 here), seen by every replica.
        async def recovered(client: BudgetClient) -> None:
            for _ in range(150):
                if {s.name: s for s in (await client.stats()).budgets}["replicate:read"].rate_factor >= 1.0:
                    return
                await asyncio.sleep(0.1)
            raise AssertionError("rate factor did not recover")

        await asyncio.gather(recovered(ca), recovered(cb), recovered(cc))
    finally:
        for client in (ca, cb, cc):
            await client.close()


def test_own_requests_are_counted_over_the_window_asked_for() -> None:
    # Ring slots: 10 requests in each of the seconds 100..159, then 6 so far in second 160
    # (now is 160.5 s: half of that second has passed).
    ring = {f"s{sec % 64}": str(sec) for sec in range(100, 161)}
    ring.update({f"r{sec % 64}": "10" for sec in range(100, 160)})
    ring["r32"] = "6"  # 160 % 64
    now_us = 160_500_000
    assert window_requests(now_us, ring, 60.0) == pytest.approx(10 * 59.5 + 6)
    assert window_requests(now_us, ring, 1.0) == pytest.approx(10 * 0.5 + 6)
    assert window_requests(now_us, ring, 0.25) == pytest.approx(6 * 0.25 / 0.5)


async def test_time_scaled_provider_window_is_not_taken_for_foreign_use(redis_url: str, slow_limits: str) -> None:
    # Time scale 6: the provider's minute is 10 real seconds, in which we now use half of its
    # 60 tokens and one of its 6 requests, exactly what its headers say. Counted over a real
    # minute at x6 rates, our share would look like a twelfth and the rest like someone else's.
    parts = RateLimiterServer(make_config(redis_url, slow_limits, time_scale=6.0))
    try:
        got = await parts.limiter.acquire("openai:slow-model", 1, tokens_each=30)
        assert len(got.grant_ids) == 1
        factor, cooldown = await parts.limiter.report(
            "openai:slow-model",
            Observation(remaining_tokens=30, limit_tokens=60, remaining_requests=5, limit_requests=6),
        )
        assert (factor, cooldown) == (1.0, 0.0)
        # Someone else using another third of the tokens is still seen.
        factor, _ = await parts.limiter.report("openai:slow-model", Observation(remaining_tokens=10, limit_tokens=60))
        assert factor == pytest.approx((1.0 - 20 / 60) / 1.0, abs=0.01)
    finally:
        await parts.store.aclose()
