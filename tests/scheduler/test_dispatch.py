"""Dispatch through the real service: fair shares, newcomers, lanes, priority, caps."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.ratelimiter.client import Acquired
from services.scheduler import claims, dispatcher
from services.scheduler.server import SchedulerApp
from tests.scheduler.conftest import Client, FakePredictor, Replicas, StartScheduler, counters_match_items
from tests.support.fairness import jain


async def test_weighted_shares_while_all_are_backlogged(client: Client, predictor: FakePredictor) -> None:
    weights = {"w1": 1.0, "w2": 2.0, "w3": 3.0}
    for tenant, weight in weights.items():
        await client.tenant(tenant, weight=weight)
        await client.submit(tenant, 700)
    got: Counter[str] = Counter()
    for _ in range(20):  # 600 items in batches of 30, every tenant backlogged throughout
        predictor.ready(30)
        batch = await predictor.take(30)
        got.update(a.tenant for a in batch)
        await predictor.complete(batch)
    for tenant, weight in weights.items():
        expected = 600 * weight / 6
        assert abs(got[tenant] - expected) <= 0.05 * expected, got
    assert jain([got[t] / w for t, w in weights.items()]) >= 0.99


async def test_a_newcomer_is_in_the_very_next_batch(client: Client, predictor: FakePredictor) -> None:
    await client.tenant("big")
    await client.tenant("new")
    for _ in range(4):
        await client.submit("big", 5000)
    for _ in range(3):
        predictor.ready(50)
        await predictor.complete(await predictor.take(50))
    await client.submit("new", 1)
    predictor.ready(50)
    batch = await predictor.take(50)
    assert [a.tenant for a in batch].count("new") == 1


async def test_a_submit_on_another_replica_wakes_dispatch(replicas_without_resync: Replicas) -> None:
    # Only B's NOTIFY can tell A about the submit.
    _, cb, predictor = replicas_without_resync
    await cb.tenant("big", max_concurrency=20)
    await cb.tenant("new")
    await cb.submit("big", 3000)
    predictor.ready(40)
    assert {x.tenant for x in await predictor.take(20)} == {"big"}  # big is at its cap
    await cb.submit("new", 1)
    assert (await predictor.take(1))[0].tenant == "new"


async def test_a_lane_without_budget_holds_up_no_other(client: Client, predictor: FakePredictor) -> None:
    await client.tenant("t")
    await client.submit("t", 10, provider="openai", model="slow-model")
    await client.submit("t", 5, provider="openai", model="gpt-4o-mini")
    predictor.ready(20)
    got = Counter(a.model for a in await predictor.take(8))
    # slow-model grants 3 at once, then waits seconds; gpt-4o-mini is not held up by it.
    assert got == {"slow-model": 3, "gpt-4o-mini": 5}
    assert predictor.received.empty()


async def served_after_the_burst(app: SchedulerApp) -> None:
    """A lane's budget gives 60 grants at once, then one a second. Nothing but the end of
    a budget wait may wake dispatch for the 61st item (no completion, no submit; the tests
    turn the resync off)."""
    client = Client(app)
    predictor = FakePredictor(client)
    try:
        await client.tenant("t")
        await client.submit("t", 61, provider="openai", model="paced-model")
        predictor.ready(100)
        await predictor.take(60)
        await predictor.take(1, timeout_s=5)
    finally:
        await predictor.close()
        await client.close()


async def test_a_budget_wait_ends_even_if_its_timer_fires_early(
    start_scheduler: StartScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane's wait is measured on a clock 2% slower than the event loop's: a timer set
    for the wait fires before the wait is over, as uvloop's millisecond timers can."""
    monkeypatch.setattr(dispatcher, "RESYNC_SECONDS", 3600.0)
    real = time.monotonic
    monkeypatch.setattr(dispatcher, "time", SimpleNamespace(monotonic=lambda: real() * 0.98,
                                                            perf_counter=time.perf_counter))
    await served_after_the_burst(await start_scheduler())


async def test_a_budget_wait_of_microseconds_ends(
    start_scheduler: StartScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ratelimiter's advice can be a few microseconds: the wait is over before the loop
    decides how long to sleep, and it must not then sleep until some other event."""
    monkeypatch.setattr(dispatcher, "RESYNC_SECONDS", 3600.0)
    app = await start_scheduler()
    budgets = app.dispatcher._budgets
    real_acquire = budgets.acquire

    async def acquire(*args: Any, **kwargs: Any) -> Acquired:
        got = await real_acquire(*args, **kwargs)
        return got if got.grants else dataclasses.replace(got, retry_after_s=1e-6)

    monkeypatch.setattr(budgets, "acquire", acquire)
    await served_after_the_burst(app)


async def test_priority_within_a_tenant(client: Client, predictor: FakePredictor) -> None:
    await client.tenant("t")
    low = await client.submit("t", 5, priority=0)
    high = await client.submit("t", 5, priority=5)
    predictor.ready(5)
    assert {a.job_id for a in await predictor.take(5)} == {high.id}
    predictor.ready(5)
    assert {a.job_id for a in await predictor.take(5)} == {low.id}


async def test_max_concurrency_holds_across_replicas(
    scheduler: SchedulerApp, client: Client, database_url: str
) -> None:
    await client.tenant("capped", max_concurrency=2)
    await client.submit("capped", 20)
    # Three replicas claim for the tenant at the same moment: the lock on its counter rows
    # makes each see what the others took, so together they stay within the cap.
    conns = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(
            claims.claim(conn, "replicate:create", {"capped": 5}, f"r{i}", 30.0) for i, conn in enumerate(conns)
        ))
        assert sum(1 for rows in results for r in rows if r["id"] is not None) == 2
        await counters_match_items(conns[0])
    finally:
        for conn in conns:
            await conn.close()


async def test_capped_tenant_gets_more_as_its_items_finish(
    client: Client, predictor: FakePredictor, scheduler: SchedulerApp
) -> None:
    await client.tenant("capped", max_concurrency=3)
    await client.tenant("free")
    await client.submit("capped", 20)
    await client.submit("free", 20)
    predictor.ready(10)
    first = await predictor.take(10)
    assert Counter(a.tenant for a in first) == {"capped": 3, "free": 7}
    await predictor.complete([a for a in first if a.tenant == "capped"][:2])
    predictor.ready(4)
    second = await predictor.take(4)
    assert Counter(a.tenant for a in second)["capped"] == 2


async def test_a_weight_change_applies_to_the_next_dispatch(client: Client, predictor: FakePredictor) -> None:
    await client.tenant("a")
    await client.tenant("b")
    await client.submit("a", 500)
    await client.submit("b", 500)
    predictor.ready(20)
    assert Counter(x.tenant for x in await predictor.take(20)) == {"a": 10, "b": 10}
    await client.api.UpdateTenant(pb.UpdateTenantRequest(id="b", weight=4.0))
    predictor.ready(50)
    got = Counter(x.tenant for x in await predictor.take(50))
    assert abs(got["b"] - 40) <= 1, got


async def test_weighted_shares_over_a_ten_second_window(client: Client) -> None:
    """Three tenants backlogged throughout; a predictor with 8 slots whose calls take 20 ms
    completes items while the scheduler dispatches: in the 10 s window every tenant's share
    is within 5% of its weight share."""
    weights = {"w1": 1.0, "w2": 2.0, "w3": 3.0}
    for tenant, weight in weights.items():
        await client.tenant(tenant, weight=weight)
        await client.submit(tenant, 3000)
    predictor = FakePredictor(client)
    arrivals: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()

    async def call() -> None:  # one of the predictor's 8 concurrent calls
        while True:
            (assignment,) = await predictor.take(1)
            arrivals.append((loop.time(), assignment.tenant))
            await asyncio.sleep(0.02)  # the upstream call
            await predictor.complete([assignment])
            predictor.ready(1)

    predictor.ready(8)
    calls = [asyncio.create_task(call()) for _ in range(8)]
    try:
        start = loop.time()
        await asyncio.sleep(11.0)  # the measurement window, not a wait for an event
    finally:
        for task in calls:
            task.cancel()
        await predictor.close()
    assert all(n < 3000 for n in Counter(t for _, t in arrivals).values())  # all backlogged to the end
    got = Counter(t for at, t in arrivals if start + 1.0 <= at < start + 11.0)
    total = sum(got.values())
    assert total > 300, got
    for tenant, weight in weights.items():
        expected = total * weight / sum(weights.values())
        assert abs(got[tenant] - expected) <= 0.05 * expected, got
    assert jain([got[t] / w for t, w in weights.items()]) >= 0.99
