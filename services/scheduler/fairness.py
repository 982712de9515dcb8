"""Weighted fair share across the tenants with backlog in one lane.

Start-time fair queueing (SFQ, the virtual-time family of WFQ and stride scheduling):
each tenant has a virtual start time that advances by 1/weight per item dispatched; the
next item goes to the backlogged tenant with the smallest start time. A tenant that was
idle re-enters at the lane's current virtual time, so idleness earns no credit and an
arriving tenant is served at once. See docs/design/fairness.md for why this and not DRR.

The backlogged tenants sit in a heap keyed by start time, so choosing n items costs
O((n + k) log T) for T backlogged tenants, where k is the number of tenants inspected
(at most n plus those capped by max_concurrency), whatever the backlog size or T.
The heap key does not involve the weight, so a weight change needs no re-keying and
applies to the very next item dispatched.

    lane = LaneShares()
    lane.set_backlog("store-a", 100); lane.set_backlog("store-b", 5)
    picks = lane.pick(10, weight_of, headroom_of)    # {"store-a": 5, "store-b": 5}
    lane.commit(claimed, weight_of)                   # what the database really handed out
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass

# Rebuild the heap when stale entries outnumber live ones by this factor (lazy deletion).
_COMPACT_FACTOR = 2


@dataclass
class _Share:
    backlog: int = 0
    vtime: float = 0.0
    token: int = -1  # the sequence number of this tenant's one live heap entry


class LaneShares:
    def __init__(self) -> None:
        self._shares: dict[str, _Share] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._vclock = 0.0
        self.backlog_total = 0

    # ---- reading ----

    def backlog(self, tenant: str) -> int:
        share = self._shares.get(tenant)
        return share.backlog if share else 0

    def backlogs(self) -> dict[str, int]:
        return {t: s.backlog for t, s in self._shares.items() if s.backlog > 0}

    def vtime(self, tenant: str) -> float:
        share = self._shares.get(tenant)
        return share.vtime if share else self._vclock

    # ---- changing the backlog (no service given, no virtual time spent) ----

    def add_backlog(self, tenant: str, n: int) -> None:
        if n <= 0:
            return
        share = self._shares.get(tenant)
        if share is None:
            share = self._shares[tenant] = _Share(vtime=self._vclock)
        if share.backlog == 0:
            # Re-entering after idleness: no credit for the idle time.
            share.vtime = max(share.vtime, self._vclock)
        share.backlog += n
        self.backlog_total += n
        if share.backlog == n:
            self._push(tenant, share)

    def remove_backlog(self, tenant: str, n: int) -> None:
        share = self._shares.get(tenant)
        if share is None or n <= 0:
            return
        n = min(n, share.backlog)
        share.backlog -= n
        self.backlog_total -= n
        self._forget_if_idle(tenant, share)

    def set_backlog(self, tenant: str, n: int) -> None:
        current = self.backlog(tenant)
        if n > current:
            self.add_backlog(tenant, n - current)
        elif n < current:
            self.remove_backlog(tenant, current - n)

    # ---- dispatch ----

    def pick(
        self,
        n: int,
        weight_of: Callable[[str], float],
        headroom_of: Callable[[str], int],
    ) -> dict[str, int]:
        """Choose how many of the next `n` items each tenant gets, in fair order.

        `headroom_of(tenant)` caps a tenant (its max_concurrency minus what it has in
        flight). Nothing is applied: call `commit` with what was really claimed.
        """
        chosen: dict[str, int] = {}
        room: dict[str, int] = {}
        popped: list[tuple[float, int, str]] = []
        candidates: list[tuple[float, int, str]] = []
        while n > 0:
            top = self._peek()
            if top is not None and (not candidates or top < candidates[0]):
                # The next tenant in virtual-time order joins the candidates.
                heapq.heappop(self._heap)
                popped.append(top)
                tenant = top[2]
                cap = min(self._shares[tenant].backlog, headroom_of(tenant))
                if cap > 0:
                    room[tenant] = cap
                    heapq.heappush(candidates, top)
                continue
            if not candidates:
                break
            vtime, seq, tenant = heapq.heappop(candidates)
            got = chosen[tenant] = chosen.get(tenant, 0) + 1
            n -= 1
            if got < room[tenant]:
                heapq.heappush(candidates, (vtime + 1.0 / weight_of(tenant), seq, tenant))
        for entry in popped:
            heapq.heappush(self._heap, entry)
        return chosen

    def commit(self, claimed: dict[str, int], weight_of: Callable[[str], float]) -> None:
        """Apply what was claimed: advance each tenant's virtual time, then the lane's clock."""
        for tenant, n in claimed.items():
            share = self._shares.get(tenant)
            if share is None or n <= 0:
                continue
            n = min(n, share.backlog)
            share.backlog -= n
            self.backlog_total -= n
            share.vtime += n / weight_of(tenant)
            if share.backlog > 0:
                self._push(tenant, share)
        top = self._peek()
        if top is not None:
            self._vclock = max(self._vclock, top[0])
        for tenant in claimed:
            share = self._shares.get(tenant)
            if share is not None:
                self._forget_if_idle(tenant, share)

    # ---- the heap (lazy deletion: each tenant has at most one live entry) ----

    def _push(self, tenant: str, share: _Share) -> None:
        share.token = next(self._seq)
        heapq.heappush(self._heap, (share.vtime, share.token, tenant))
        if len(self._heap) > _COMPACT_FACTOR * len(self._shares) + 64:
            self._heap = [e for e in self._heap if self._live(e)]
            heapq.heapify(self._heap)

    def _live(self, entry: tuple[float, int, str]) -> bool:
        share = self._shares.get(entry[2])
        return share is not None and share.backlog > 0 and share.token == entry[1]

    def _peek(self) -> tuple[float, int, str] | None:
        while self._heap and not self._live(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0] if self._heap else None

    def _forget_if_idle(self, tenant: str, share: _Share) -> None:
        # A tenant ahead of the clock is remembered, so that emptying and refilling its
        # queue cannot reset its virtual time to the (earlier) lane clock.
        if share.backlog == 0 and share.vtime <= self._vclock:
            del self._shares[tenant]
