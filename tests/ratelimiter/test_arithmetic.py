"""Acquire, settle and release arithmetic on real Redis, with rates slow enough to be exact.

SLOW_LIMITS at burst_fraction 0.5: replicate:create takes 3 at once and regains one per 20 s;
openai budgets of the default limits have 30 tokens of burst and regain one token a second (tokens
are paced at the full limit: the token window log keeps every minute within it).
"""

from __future__ import annotations

import pytest

from services.ratelimiter.errors import InvalidBudgetRequest
from services.ratelimiter.server import RateLimiterServer
from tests.ratelimiter.conftest import make_config

TOKENS = "openai:any-model"  # unlisted: openai.default limits (rpm 6000, tpm 60)


async def test_batch_grants_up_to_the_burst_and_says_how_long_to_wait(parts: RateLimiterServer) -> None:
    got = await parts.limiter.acquire("replicate:create", 10)
    assert len(got.grant_ids) == 3
    assert got.decision.limited_by == "requests"
    assert 19.0 < got.decision.retry_after_s <= 20.0
    assert len(set(got.grant_ids)) == 3


async def test_release_gives_requests_back_once(parts: RateLimiterServer) -> None:
    first = await parts.limiter.acquire("replicate:create", 5)
    assert len(first.grant_ids) == 3
    assert await parts.limiter.release(first.grant_ids[:2]) == 2
    assert await parts.limiter.release(first.grant_ids[:2]) == 0  # double release: no effect
    second = await parts.limiter.acquire("replicate:create", 5)
    assert len(second.grant_ids) == 2


async def test_settle_refunds_unused_tokens(parts: RateLimiterServer) -> None:
    first = await parts.limiter.acquire(TOKENS, 10, tokens_each=10)
    # Check-then-charge: grants start while the token debt is within the 30-token burst.
    assert len(first.grant_ids) == 4
    assert first.decision.limited_by == "tokens"
    assert await parts.limiter.settle([(g, 0) for g in first.grant_ids]) == -40
    again = await parts.limiter.acquire(TOKENS, 10, tokens_each=10)
    assert len(again.grant_ids) == 4


async def test_settle_charges_overuse_and_closes_each_grant_once(parts: RateLimiterServer) -> None:
    got = await parts.limiter.acquire(TOKENS, 4, tokens_each=10)
    assert len(got.grant_ids) == 4
    first, rest = got.grant_ids[0], got.grant_ids[1:]
    assert await parts.limiter.settle([(first, 40)]) == 30
    assert await parts.limiter.settle([(first, 0)]) == 0  # already settled
    assert await parts.limiter.release(rest) == 3
    assert await parts.limiter.settle([(rest[0], 0)]) == 0  # already released
    # 40 tokens reserved + 30 charged - 30 released = 40 tokens ahead, 10 beyond the burst:
    # 10 tokens x 1 s before the next call may start, less the second an idle token budget
    # carries (its TAT started one provider second behind the clock).
    denied = await parts.limiter.acquire(TOKENS, 1, tokens_each=10)
    assert denied.grant_ids == []
    assert denied.decision.limited_by == "tokens"
    assert 8.0 < denied.decision.retry_after_s <= 9.0


async def test_all_or_nothing(parts: RateLimiterServer) -> None:
    assert len((await parts.limiter.acquire("replicate:create", 3, all_or_nothing=True)).grant_ids) == 3
    denied = await parts.limiter.acquire("replicate:create", 1, all_or_nothing=True)
    assert denied.grant_ids == [] and denied.decision.retry_after_s > 19.0
    with pytest.raises(InvalidBudgetRequest, match="burst"):
        await parts.limiter.acquire("replicate:create", 4, all_or_nothing=True)


async def test_concurrency_holds_until_settled_or_released(redis_url: str, slow_limits: str) -> None:
    parts = RateLimiterServer(make_config(redis_url, slow_limits, concurrency={"replicate:read": 2}))
    try:
        got = await parts.limiter.acquire("replicate:read", 5)
        assert len(got.grant_ids) == 2 and got.decision.limited_by == "concurrency"
        await parts.limiter.settle([(got.grant_ids[0], 0)])
        await parts.limiter.release(got.grant_ids[1:])
        assert len((await parts.limiter.acquire("replicate:read", 5)).grant_ids) == 2
    finally:
        await parts.store.aclose()


async def test_tenant_caps_are_decided_with_the_budget(parts: RateLimiterServer) -> None:
    await parts.limiter.set_tenant_caps("slow", "replicate:read", rpm=6, max_in_flight=0)
    await parts.limiter.set_tenant_caps("few", "", rpm=0, max_in_flight=2)
    capped = await parts.limiter.acquire("replicate:read", 10, tenant="slow")
    assert len(capped.grant_ids) == 3 and capped.decision.limited_by == "tenant"
    assert len((await parts.limiter.acquire("replicate:read", 10, tenant="other")).grant_ids) == 10
    few = await parts.limiter.acquire("replicate:read", 10, tenant="few")
    assert len(few.grant_ids) == 2 and few.decision.limited_by == "tenant"
    await parts.limiter.release(few.grant_ids[:1])
    assert len((await parts.limiter.acquire("replicate:read", 10, tenant="few")).grant_ids) == 1
    # A tenant's release gives its own rate back too.
    await parts.limiter.release(capped.grant_ids)
    assert len((await parts.limiter.acquire("replicate:read", 10, tenant="slow")).grant_ids) == 3


async def test_unknown_openai_model_gets_default_limits(parts: RateLimiterServer) -> None:
    await parts.limiter.acquire("openai:brand-new", 2, tokens_each=5)
    rows = {b.name: (b, u) for b, u in await parts.limiter.stats()}
    budget, usage = rows["openai:brand-new"]
    assert (budget.rpm, budget.tpm) == (6000, 60)
    assert (usage.requests_last_minute, usage.tokens_last_minute) == (2, 10)


async def test_stats_follow_settlements(parts: RateLimiterServer) -> None:
    got = await parts.limiter.acquire("openai:slow-model", 2, tokens_each=10)
    await parts.limiter.settle([(got.grant_ids[0], 3)])
    await parts.limiter.release(got.grant_ids[1:])
    denied = await parts.limiter.acquire("openai:slow-model", 5, tokens_each=1)
    usage = {b.name: u for b, u in await parts.limiter.stats()}["openai:slow-model"]
    assert usage.requests_last_minute == 1 + len(denied.grant_ids)
    assert usage.tokens_last_minute == 3 + len(denied.grant_ids)
    assert usage.denied_last_minute == 5 - len(denied.grant_ids)


@pytest.mark.parametrize(
    ("budget", "count", "grant_id"),
    [("nope", 1, None), ("replicate:create", 0, None), ("replicate:create", 1, "not-a-grant")],
)
async def test_invalid_requests(parts: RateLimiterServer, budget: str, count: int, grant_id: str | None) -> None:
    with pytest.raises(InvalidBudgetRequest):
        if grant_id is None:
            await parts.limiter.acquire(budget, count)
        else:
            await parts.limiter.release([grant_id])


ADMITTED = "openai:admitted-model"  # counts a request when it arrives, as OpenAI does (tpm 60)


async def test_where_the_provider_counts_at_arrival_a_settle_gives_nothing_back(parts: RateLimiterServer) -> None:
    for budget, kept in ((ADMITTED, 30), ("openai:slow-model", 3)):
        got = await parts.limiter.acquire(budget, 3, tokens_each=10)
        assert len(got.grant_ids) == 3
        # The calls used far less than they asked for: OpenAI still counted 30 tokens, while a
        # provider that counts usage counted 3.
        assert await parts.limiter.settle([(g, 1) for g in got.grant_ids]) == (0 if budget == ADMITTED else -27)
        usage = {b.name: u for b, u in await parts.limiter.stats()}[budget]
        assert usage.tokens_last_minute == kept


async def test_a_call_that_never_left_gives_its_tokens_back_wherever_they_are_counted(parts: RateLimiterServer) -> None:
    got = await parts.limiter.acquire(ADMITTED, 2, tokens_each=10)
    assert await parts.limiter.release(got.grant_ids[:1]) == 1
    usage = {b.name: u for b, u in await parts.limiter.stats()}[ADMITTED]
    assert (usage.requests_last_minute, usage.tokens_last_minute) == (1, 10)


async def test_adjust_sets_each_reservation_and_keeps_the_grant_open(parts: RateLimiterServer) -> None:
    # Reserved at the lane's largest cost, then set to each item's own once claimed.
    got = await parts.limiter.acquire(ADMITTED, 3, tokens_each=10)
    assert len(got.grant_ids) == 3
    ids, adjusted = await parts.limiter.adjust([(got.grant_ids[0], 5), (got.grant_ids[1], 12), (got.grant_ids[2], 10)])
    assert adjusted == -5 + 2
    assert all(ids) and not set(ids) & set(got.grant_ids)
    usage = {b.name: u for b, u in await parts.limiter.stats()}[ADMITTED]
    assert usage.tokens_last_minute == 27
    # The old ids are spent: adjusting or closing them again changes nothing.
    again, _ = await parts.limiter.adjust([(got.grant_ids[0], 1)])
    assert again == [""]
    assert await parts.limiter.release(got.grant_ids) == 0
    # The new ids carry the new reservation: releasing one gives back what it holds now.
    assert await parts.limiter.release(ids[:1]) == 1
    usage = {b.name: u for b, u in await parts.limiter.stats()}[ADMITTED]
    assert (usage.requests_last_minute, usage.tokens_last_minute) == (2, 22)


async def test_adjust_moves_a_concurrency_slot_with_the_grant(redis_url: str, slow_limits: str) -> None:
    built = RateLimiterServer(make_config(redis_url, slow_limits, concurrency={ADMITTED: 2}))
    try:
        got = await built.limiter.acquire(ADMITTED, 2, tokens_each=10)
        ids, _ = await built.limiter.adjust([(g, 5) for g in got.grant_ids])
        assert (await built.limiter.acquire(ADMITTED, 1, tokens_each=1)).decision.limited_by == "concurrency"
        await built.limiter.settle([(ids[0], 5)])
        assert len((await built.limiter.acquire(ADMITTED, 1, tokens_each=1)).grant_ids) == 1
    finally:
        await built.store.aclose()
