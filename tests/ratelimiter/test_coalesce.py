"""Concurrent Acquires of one budget share script calls and are decided as if one after another.

The group-commit primitive itself: tests/test_group_commit.py."""

from __future__ import annotations

import asyncio
from typing import Any

from services.ratelimiter.server import RateLimiterServer
from tests.ratelimiter.conftest import make_config

TOKENS = "openai:any-model"  # openai.default of SLOW_LIMITS: 30 tokens of burst


async def acquire_many(parts: RateLimiterServer, n: int, budget: str, **kwargs: Any) -> list[int]:
    got = await asyncio.gather(*(parts.limiter.acquire(budget, 1, **kwargs) for _ in range(n)))
    return [len(a.grant_ids) for a in got]


async def test_concurrent_single_acquires_grant_exactly_the_burst(parts: RateLimiterServer) -> None:
    granted = await acquire_many(parts, 50, "replicate:create")
    assert sum(granted) == 3
    assert granted[:3] == [1, 1, 1]  # arrival order is decision order
    queue = parts.limiter._queues["replicate:create"]
    assert queue.batches < 50  # they did share script calls
    stats = {b.name: u for b, u in await parts.limiter.stats()}
    assert stats["replicate:create"].requests_last_minute == 3
    assert stats["replicate:create"].denied_last_minute == 47


async def test_coalesced_grants_are_distinct_and_close_once(parts: RateLimiterServer) -> None:
    got = await asyncio.gather(*(parts.limiter.acquire("replicate:read", 1) for _ in range(40)))
    ids = [g for a in got for g in a.grant_ids]
    assert len(ids) == len(set(ids)) == 40
    assert await parts.limiter.release(ids) == 40
    assert await parts.limiter.release(ids) == 0


async def test_tokens_and_tenants_in_one_batch(parts: RateLimiterServer) -> None:
    # Check-then-charge on 30 tokens of burst: 10-token calls start at debt 0, 10, 20, 30.
    assert sum(await acquire_many(parts, 10, TOKENS, tokens_each=10)) == 4

    await parts.limiter.set_tenant_caps("few", "replicate:read", 0, 1)
    few, other = await asyncio.gather(
        acquire_many(parts, 10, "replicate:read", tenant="few"),
        acquire_many(parts, 10, "replicate:read", tenant="other"),
    )
    assert sum(few) == 1 and sum(other) == 10
    denied = await parts.limiter.acquire("replicate:read", 1, tenant="few")
    assert denied.decision.limited_by == "tenant"


async def test_budget_concurrency_across_a_batch(redis_url: str, slow_limits: str) -> None:
    parts = RateLimiterServer(make_config(redis_url, slow_limits, concurrency={"replicate:read": 5}))
    try:
        got = await asyncio.gather(*(parts.limiter.acquire("replicate:read", 2) for _ in range(10)))
        assert sum(len(a.grant_ids) for a in got) == 5
        assert {a.decision.limited_by for a in got if len(a.grant_ids) < 2} == {"concurrency"}
        # Releasing frees the slots for the next batch.
        await parts.limiter.release([g for a in got for g in a.grant_ids])
        again = await asyncio.gather(*(parts.limiter.acquire("replicate:read", 1) for _ in range(8)))
        assert sum(len(a.grant_ids) for a in again) == 5
    finally:
        await parts.store.aclose()
