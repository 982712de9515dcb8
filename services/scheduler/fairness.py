"""Weighted fair share across the tenants with backlog in one lane.

Virtual-time fair queueing (the scheduling of WFQ/stride scheduling): each tenant has
a virtual time that advances by 1/weight per item dispatched; the next item goes to the
backlogged tenant with the smallest virtual time. A tenant that was idle re-enters at
the lane's current virtual time, so idleness earns no credit and an arriving tenant is
served at once. Choosing n items costs O(n log T) for T backlogged tenants, whatever
the backlog size. See docs/design/fairness.md.

    lane = LaneShares()
    lane.add_backlog("store-a", 100); lane.add_backlog("store-b", 5)
    lane.pick(10, weight_of, headroom_of)    # {"store-a": 5, "store-b": 5}
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _TenantShare:
    backlog: int = 0
    vtime: float = 0.0


class LaneShares:
    def __init__(self) -> None:
        self._tenants: dict[str, _TenantShare] = {}
        self._vclock = 0.0
        self.backlog_total = 0

    def backlog(self, tenant: str) -> int:
        share = self._tenants.get(tenant)
        return share.backlog if share else 0

    def tenants(self) -> list[str]:
        return list(self._tenants)

    def tenants_with_backlog(self) -> int:
        return sum(1 for s in self._tenants.values() if s.backlog > 0)

    def add_backlog(self, tenant: str, n: int) -> None:
        if n <= 0:
            return
        share = self._tenants.setdefault(tenant, _TenantShare(vtime=self._vclock))
        if share.backlog == 0:
            share.vtime = max(share.vtime, self._vclock)
        share.backlog += n
        self.backlog_total += n

    def set_backlog(self, tenant: str, n: int) -> None:
        current = self.backlog(tenant)
        if n > current:
            self.add_backlog(tenant, n - current)
        elif n < current:
            self.take(tenant, current - n, advance=False, weight=1.0)

    def take(self, tenant: str, n: int, *, advance: bool, weight: float) -> None:
        share = self._tenants.get(tenant)
        if share is None or n <= 0:
            return
        n = min(n, share.backlog)
        share.backlog -= n
        self.backlog_total -= n
        if advance:
            share.vtime += n / weight
        if share.backlog == 0 and share.vtime <= self._vclock:
            del self._tenants[tenant]

    def pick(
        self,
        n: int,
        weight_of: Callable[[str], float],
        headroom_of: Callable[[str], int],
    ) -> dict[str, int]:
        """Choose how many of the next `n` items each tenant gets.

        `headroom_of(tenant)` caps a tenant (its max_concurrency minus what it has in
        flight). The choice is not applied: call `take` with what was really claimed.
        """
        heap: list[tuple[float, str]] = []
        room: dict[str, int] = {}
        for tenant, share in self._tenants.items():
            if share.backlog > 0:
                cap = min(share.backlog, headroom_of(tenant))
                if cap > 0:
                    room[tenant] = cap
                    heap.append((share.vtime, tenant))
        heapq.heapify(heap)
        chosen: dict[str, int] = {}
        while heap and n > 0:
            vtime, tenant = heapq.heappop(heap)
            chosen[tenant] = chosen.get(tenant, 0) + 1
            n -= 1
            if chosen[tenant] < room[tenant]:
                heapq.heappush(heap, (vtime + 1.0 / weight_of(tenant), tenant))
        return chosen

    def commit(self, claimed: dict[str, int], weight_of: Callable[[str], float]) -> None:
        """Apply what was claimed: advance each tenant's virtual time, then the lane's clock."""
        for tenant, n in claimed.items():
            self.take(tenant, n, advance=True, weight=weight_of(tenant))
        active = [s.vtime for s in self._tenants.values() if s.backlog > 0]
        if active:
            self._vclock = max(self._vclock, min(active))
