"""Dispatches per tenant over the last minute: counted in memory, shared through the database.

`RecentCounts` keeps sixty one-second buckets per key in a ring: counting is O(1), reading is
O(60), and a key that dispatches a million items a minute costs the same 60 integers as one
that dispatches one. `DispatchRates` publishes a replica's counts every few seconds, so that
the statistics of any replica count every replica's dispatches.

    rates = DispatchRates(pool, "replica-a"); rates.start(supervisor)
    rates.add("store-a", 32)
    await rates.everywhere()         # {"store-a": 32 + what the other replicas published}
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg

from services.common.supervision import Supervisor
from services.scheduler.metrics import TENANT_DISPATCHED
from services.scheduler.sql import QUERIES

_BUCKETS = 60
# A replica publishes its counts this often; another's count is trusted for twice as long
# (a replica that stopped drops out of the statistics after that).
PUBLISH_SECONDS = 5.0


class RecentCounts:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rings: dict[str, tuple[list[int], list[int]]] = {}  # key -> (counts, second of each bucket)

    def add(self, key: str, n: int = 1) -> None:
        second = int(self._clock())
        counts, seconds = self._rings.setdefault(key, ([0] * _BUCKETS, [-1] * _BUCKETS))
        slot = second % _BUCKETS
        if seconds[slot] != second:
            counts[slot], seconds[slot] = 0, second
        counts[slot] += n

    def active(self) -> dict[str, int]:
        """Every key with events in the last minute, with its count; forgets the others."""
        counts = {key: self.last_minute(key) for key in list(self._rings)}
        for key, n in counts.items():
            if n == 0:
                del self._rings[key]
        return {key: n for key, n in counts.items() if n}

    def last_minute(self, key: str) -> int:
        ring = self._rings.get(key)
        if ring is None:
            return 0
        oldest = int(self._clock()) - _BUCKETS + 1
        counts, seconds = ring
        return sum(c for c, s in zip(counts, seconds, strict=True) if s >= oldest)


class DispatchRates:
    def __init__(self, pool: asyncpg.Pool, replica: str, *, publish_s: float = PUBLISH_SECONDS) -> None:
        self.recent = RecentCounts()
        self._pool = pool
        self._replica = replica
        self._publish_s = publish_s
        self._published = False  # the last publication had rows: an idle one must clear them

    def add(self, tenant: str, n: int) -> None:
        self.recent.add(tenant, n)
        TENANT_DISPATCHED.labels(tenant).inc(n)

    def start(self, supervisor: Supervisor) -> None:
        supervisor.loop("dispatch-rates", self.publish, wait=self._due)

    async def _due(self) -> None:
        await asyncio.sleep(self._publish_s)

    async def publish(self) -> None:
        """This replica's counts, for the others' statistics (nothing when idle twice)."""
        active = self.recent.active()
        if not active and not self._published:
            return
        await self._pool.execute(QUERIES["publish_dispatch_rates"], self._replica, list(active), list(active.values()))
        self._published = bool(active)

    async def everywhere(self) -> dict[str, int]:
        """Per tenant, this replica's dispatches in the last minute plus the other replicas'
        as they last published them."""
        counts = self.recent.active()
        for row in await self._pool.fetch(QUERIES["dispatch_rates_elsewhere"], self._replica, 2 * self._publish_s):
            counts[row["tenant_id"]] = counts.get(row["tenant_id"], 0) + int(row["n"])
        return counts
