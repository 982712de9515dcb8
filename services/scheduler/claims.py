"""The claim: picked counts per tenant in, leased items out, in one statement.

    rows = await claim(conn, "replicate:create", {"t1": 3, "t2": 1}, "scheduler-0", 30.0)
    left = await stripes_left(conn, "replicate:create", short_of_room(picks, rows))

A row per picked tenant (`id` NULL, `room_tenant` set), whose `room` says what the
tenant's max_concurrency allowed, so the caller tells "capped" from "ran out of items" or,
with `stripes_left`, from "held by another claim for the moment"; then a row per leased
item (`id` set).
See `queries/dispatch.sql` (`claim_items`).
"""

from __future__ import annotations

import asyncpg

from services.scheduler.sql import QUERIES


async def claim(
    conn: asyncpg.Connection, lane: str, picks: dict[str, int], worker: str, lease_seconds: float
) -> list[asyncpg.Record]:
    """Claim up to picks[tenant] ready items of each tenant in `lane`.

    One statement for tenants without max_concurrency. Those with a cap come back deferred
    and are claimed again in a transaction that first locks their counter rows by a
    statement of its own: the claim that follows takes its snapshot after the lock was
    granted, so it counts what a claim that held the lock before it put in flight.
    """
    rows = list(await conn.fetch(
        QUERIES["claim_items"], lane, list(picks), list(picks.values()), worker, lease_seconds, False,
    ))
    deferred = [r["room_tenant"] for r in rows if r["deferred"]]
    if not deferred:
        return rows
    rows = [r for r in rows if not r["deferred"]]
    async with conn.transaction():
        await conn.execute(QUERIES["lock_counts_for_claim"], deferred)
        rows += await conn.fetch(
            QUERIES["claim_items"], lane, deferred, [picks[t] for t in deferred], worker, lease_seconds, True,
        )
    return rows


def short_of_room(picks: dict[str, int], rows: list[asyncpg.Record]) -> list[str]:
    """The tenants that got fewer items than picked although their cap allowed more."""
    got: dict[str, int] = {}
    room: dict[str, int] = {}
    for row in rows:
        if row["id"] is None:
            room[row["room_tenant"]] = row["room"]
        else:
            got[row["tenant_id"]] = got.get(row["tenant_id"], 0) + 1
    return [t for t, n in picks.items() if got.get(t, 0) < min(n, room.get(t, n))]


async def stripes_left(conn: asyncpg.Connection, lane: str, tenants: list[str]) -> set[str]:
    """Which of `tenants` still have job stripes to dispatch (held by another claim, if a
    claim just came back short for them)."""
    if not tenants:
        return set()
    return {r["tenant_id"] for r in await conn.fetch(QUERIES["job_stripes_left"], lane, tenants)}
