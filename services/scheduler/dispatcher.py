"""Budget-aware dispatch: free predictor slots + upstream grants + fair shares -> assignments.

A dispatch round for one lane asks the ratelimiter for as many grants as it means to
dispatch (bounded by free predictor slots and backlog), picks exactly that many items by
weighted fair share, claims them in one statement and hands each, with its grant, to a
predictor stream. Nothing polls: a submit (on any replica, via NOTIFY), a free slot, a
finished item or the end of a budget's wait wakes it.

The in-memory index (a `LaneShares` per lane) holds counts, not items: (lane, tenant) ->
backlog. It is rebuilt from `queue_counts` (one row per lane and tenant, maintained by the
statements that finish items) and the leases, so a resync costs O(lanes x tenants + items
in flight), not O(backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any

import asyncpg
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.common.limits import lane_scope
from services.common.logging import get_logger
from services.common.supervision import Supervisor
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.errors import BudgetUnavailable, RateLimiterError
from services.scheduler.claims import claim, short_of_room, stripes_left
from services.scheduler.config import SchedulerConfig
from services.scheduler.events import JobSignals
from services.scheduler.fairness import LaneShares
from services.scheduler.metrics import DISPATCH_SECONDS, DISPATCHED, GRANT_WAITS, export_lane_items
from services.scheduler.predictors import PredictorRegistry
from services.scheduler.presence import PredictorPresence
from services.scheduler.rates import DispatchRates
from services.scheduler.sql import QUERIES
from services.scheduler.tenants import TenantDirectory

log = get_logger(__name__)

# A safety net only: what other replicas changed (their claims, retries and completions)
# reaches this replica's index through it. Submits arrive at once by NOTIFY, and an index
# that believes in items that are gone corrects itself at the next claim.
RESYNC_SECONDS = 5.0
# Retried items re-enter the index when their backoff ends, in groups of this granularity
# (rounded up, never before their run_after), so a burst of failures costs few timers.
_DELAY_GRAIN_S = 0.05
_UNLIMITED = 1 << 30


def provider_of(lane: str) -> str:
    return lane_scope(lane)[0]


class Dispatcher:
    def __init__(
        self, pool: asyncpg.Pool, budgets: BudgetClient, predictors: PredictorRegistry,
        tenants: TenantDirectory, signals: JobSignals, config: SchedulerConfig, replica: str,
        rates: DispatchRates,
    ) -> None:
        self._pool = pool
        self._signals = signals
        self._budgets = budgets
        self.predictors = predictors
        self._tenants = tenants
        self._config = config
        self._replica = replica
        self.lanes: dict[str, LaneShares] = {}
        # The largest token count among a token lane's queued items: a round reserves this per
        # grant, then sets each grant to its item's own count once the claim says which items
        # it got (`Adjust`). A round therefore waits for room for its largest item, as the
        # provider would, and every grant ends up reserving exactly what the provider counts.
        self._bound: dict[str, int] = {}
        self._blocked_until: dict[str, float] = {}
        self._delayed: dict[tuple[float, str, str], int] = {}
        self._turn = 0
        self.processing: dict[str, int] = defaultdict(int)
        self.rates = rates
        self.presence = PredictorPresence(pool, replica, predictors)
        self._wake = asyncio.Event()
        self._catch_up = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()  # policy reloads
        self._resync_lock = asyncio.Lock()
        self._arrived: list[tuple[str, str, int, int]] | None = None  # adds heard during a resync
        self.on_hand_back: Callable[[list[pb.LeaseRef]], Awaitable[None]] | None = None

    # ---- lifecycle ----

    async def start(self, supervisor: Supervisor) -> None:
        await self.resync()
        supervisor.loop("dispatch", self._dispatch_round, wait=self._wait_for_work)
        supervisor.loop("resync", self.resync, wait=self._resync_due)
        self.rates.start(supervisor)
        self.presence.start(supervisor)

    async def stop(self) -> None:
        """End the policy reloads in flight (the loops end with their supervisor)."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def resync(self) -> None:
        """Rebuild the index from the counters and the leases: O(lanes x tenants + items in
        flight) rows, whatever the backlog."""
        async with self._resync_lock:
            # Submits heard while the counts are read may or may not be in them: they are
            # added again on top. Counting one twice costs a claim that comes back short
            # (which corrects the count); missing one would hide it until the next resync.
            self._arrived = []
            try:
                rows = await self._pool.fetch(QUERIES["queue_counts"])
                await self._tenants.load()
            finally:
                arrived, self._arrived = self._arrived, None
            export_lane_items(rows)
            backlog: dict[str, dict[str, int]] = defaultdict(dict)
            processing: dict[str, int] = defaultdict(int)
            for row in rows:
                if row["pending"] > 0:
                    backlog[row["lane"]][row["tenant_id"]] = row["pending"]
                processing[row["tenant_id"]] += row["processing"]
            for name in set(self.lanes) | set(backlog):
                shares = self.lanes.setdefault(name, LaneShares())
                wanted = backlog.get(name, {})
                for tenant in set(shares.backlogs()) | set(wanted):
                    shares.set_backlog(tenant, wanted.get(tenant, 0))
            for lane, tenant, n, _ in arrived:
                self.lanes[lane].add_backlog(tenant, n)
            self.processing = processing
            for name, shares in self.lanes.items():
                if not shares.backlog_total or provider_of(name) != "openai":
                    self._bound.pop(name, None)
                    continue
                sampled = await self._pool.fetchval(QUERIES["lane_token_bound"], name) or 0
                heard = [tokens for lane, _, _, tokens in arrived if lane == name]
                self._bound[name] = max([sampled, *heard])
        self.wake()

    async def _resync_due(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._catch_up.wait(), RESYNC_SECONDS)
        self._catch_up.clear()

    def catch_up(self) -> None:
        """Notices may have been lost (the notification connection was down): resync now."""
        self._catch_up.set()

    # ---- signals from the rest of the scheduler ----

    def wake(self) -> None:
        self._wake.set()

    def add_backlog(self, lane: str, tenant: str, n: int, largest_tokens: float = 0.0) -> None:
        shares = self.lanes.setdefault(lane, LaneShares())
        shares.add_backlog(tenant, n)
        tokens = int(largest_tokens)
        if self._arrived is not None:
            self._arrived.append((lane, tenant, n, tokens))
        if tokens > self._bound.get(lane, 0):
            self._bound[lane] = tokens
        self.wake()

    def add_backlog_later(self, delay_s: float, lane: str, tenant: str, n: int) -> None:
        if delay_s <= 0:
            self.add_backlog(lane, tenant, n)
            return
        loop = asyncio.get_running_loop()
        due = math.ceil((loop.time() + delay_s) / _DELAY_GRAIN_S) * _DELAY_GRAIN_S
        key = (due, lane, tenant)
        if key in self._delayed:
            self._delayed[key] += n
        else:
            self._delayed[key] = n
            loop.call_at(due, self._release_delayed, key)

    def _release_delayed(self, key: tuple[float, str, str]) -> None:
        n = self._delayed.pop(key, 0)
        self.add_backlog(key[1], key[2], n)

    def remove_backlog(self, lane: str, tenant: str, n: int) -> None:
        shares = self.lanes.get(lane)
        if shares is not None:
            shares.remove_backlog(tenant, n)

    def finished(self, tenant: str, n: int = 1) -> None:
        self.processing[tenant] = max(0, self.processing[tenant] - n)
        self.wake()

    def heard_backlog(self, payload: str) -> None:
        """`fairway_backlog`: another replica accepted a submit."""
        replica, lane, tenant, n, tokens = payload.split("|")
        if replica != self._replica:
            self.add_backlog(lane, tenant, int(n), float(tokens))

    def heard_tenant(self, payload: str) -> None:
        """`fairway_tenants`: a tenant was created or its policy changed."""
        self._in_background(self._tenants.refresh(payload)).add_done_callback(self._refreshed)

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # The periodic resync reloads every policy; until then the old one applies.
            log.warning("tenant policy reload failed", exc_info=task.exception())
        self.wake()

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task `stop` cancels with the rest (the loop keeps only weak references)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ---- the dispatch loop ----

    async def _wait_for_work(self) -> None:
        # An event wakes the loop, or the moment the first lane waiting for budget may go
        # again. A deadline, not a timer per wait: a timer that fires a moment early (uvloop's
        # are in whole milliseconds) would find the lane still waiting, and nothing would wake
        # the loop again.
        if not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._until_budget())
        self._wake.clear()

    async def _dispatch_round(self) -> None:
        """One round, again at once if it moved anything (a round per step: the supervisor
        counts each as a success). Any failure but the ratelimiter's goes to the supervisor,
        which runs the round again after a backoff (items claimed and not handed out
        meanwhile come back when their lease expires)."""
        try:
            if await self._round():
                self.wake()
        except BudgetUnavailable as exc:
            # A wait for budget, not a failure of ours: the ratelimiter's own health says it
            # is away, and a scheduler turning NOT_SERVING would stop submits as well.
            log.warning("dispatch paused: %s", exc)
            asyncio.get_running_loop().call_later(exc.retry_after_s or 0.5, self.wake)

    def _until_budget(self) -> float | None:
        """Seconds until the first lane with backlog that waits for budget may go again (0 if
        its wait is already over: the ratelimiter's advice can be microseconds, and end
        before the loop gets here)."""
        now = time.monotonic()
        waits = [until - now for name, until in self._blocked_until.items() if self.lanes[name].backlog_total > 0]
        return max(0.0, min(waits)) if waits else None

    def _ready_lanes(self) -> list[str]:
        now = time.monotonic()
        accepting = self.predictors.providers_with_slots()
        ready = []
        for name, shares in self.lanes.items():
            if shares.backlog_total <= 0:
                continue
            until = self._blocked_until.get(name)
            if until is not None:
                if until > now:
                    continue
                del self._blocked_until[name]  # its wait is over: this round tries it
            if accepting is not None and provider_of(name) not in accepting:
                continue
            ready.append(name)
        return ready

    async def _round(self) -> bool:
        """One dispatch pass over every ready lane; True if anything was dispatched.

        Lanes that share predictors share their free slots evenly, starting from a lane
        that rotates every round, so no lane's order in a dict decides who gets served.
        """
        lanes = self._ready_lanes()
        if not lanes:
            return False
        start = self._turn % len(lanes)
        self._turn += 1
        lanes = lanes[start:] + lanes[:start]
        sharing = Counter(provider_of(lane) for lane in lanes)
        slots = {p: self.predictors.free_slots(p) for p in sharing}
        progressed = False
        for lane in lanes:
            p = provider_of(lane)
            if await self._dispatch(lane, max(1, math.ceil(slots[p] / sharing[p]))):
                progressed = True
        return progressed

    def _headroom(self, tenant: str) -> int:
        cap = self._tenants.max_concurrency(tenant)
        return _UNLIMITED if cap is None else cap - self.processing[tenant]

    async def _dispatch(self, lane: str, limit: int) -> bool:
        shares = self.lanes[lane]
        slots = self.predictors.free_slots(provider_of(lane))
        want = min(slots, limit, self._config.dispatch_batch, shares.backlog_total)
        if want <= 0:
            return False
        picks = shares.pick(want, self._tenants.weight, self._headroom)
        want = sum(picks.values())
        if want == 0:
            return False
        started = time.perf_counter()
        bound = self._bound.get(lane, 0)
        acquired = await self._budgets.acquire(lane, want, tokens_each=bound)
        if not acquired.grants:
            GRANT_WAITS.labels(lane).inc()
            self._blocked_until[lane] = time.monotonic() + acquired.retry_after_s
            return False
        if len(acquired.grants) < want:
            # Dispatch exactly as many items as there are grants: none waits claimed.
            picks = shares.pick(len(acquired.grants), self._tenants.weight, self._headroom)
        async with self._pool.acquire() as conn:
            rows = await claim(conn, lane, picks, self._replica, self._config.lease_seconds)
            short = short_of_room(picks, rows)
            held_elsewhere = await stripes_left(conn, lane, short)
        grants = [g.id for g in acquired.grants]
        if bound:
            grants = await self._fit_grants(rows, grants)
        claimed, handed_back, unused = self._hand_out(rows, grants)
        self._signals.touch({str(row["job_id"]) for row in rows if row["id"] is not None})
        self._correct_index(shares, picks, claimed, set(short), held_elsewhere)
        shares.commit(dict(claimed), self._tenants.weight)
        if unused:
            await self._budgets.release(unused)
        if handed_back:
            await self.hand_back(handed_back)
        n = sum(claimed.values())
        for tenant, k in claimed.items():
            self.rates.add(tenant, k)
        DISPATCHED.labels(lane).inc(n)
        DISPATCH_SECONDS.observe(time.perf_counter() - started)
        return n > 0

    async def _fit_grants(self, rows: list[asyncpg.Record], grants: list[str]) -> list[str]:
        """Set the grants the claimed items take to each item's own token count (in the order
        `_hand_out` pairs them). If the ratelimiter cannot be reached, the grants keep the
        round's larger reservation: safe, only less of the budget is used until they settle."""
        items = [row for row in rows if row["id"] is not None]
        pairs = list(zip(grants, items, strict=False))
        if not pairs:
            return grants
        try:
            fitted = await self._budgets.adjust([(g, int(row["est_tokens"] or 0)) for g, row in pairs])
        except RateLimiterError as exc:
            log.warning("could not set %d grants to their items' token counts: %s", len(pairs), exc)
            return grants
        return [new or old for new, (old, _) in zip(fitted, pairs, strict=True)] + grants[len(pairs):]

    def _hand_out(
        self, rows: list[asyncpg.Record], grants: list[str]
    ) -> tuple[dict[str, int], list[pb.LeaseRef], list[str]]:
        """Pair the claimed items with the grants in order: (claimed per tenant, items no
        predictor took, grants left over)."""
        claimed: dict[str, int] = defaultdict(int)
        handed_back: list[pb.LeaseRef] = []
        unused: list[str] = []
        spare = iter(grants)
        for row in rows:
            if row["id"] is None:
                continue
            grant_id = next(spare)
            if row["upstream_id"]:
                # A resumed call (the upstream already accepted it) needs no new grant.
                unused.append(grant_id)
                grant_id = ""
            assignment = pb.Assignment(
                item_id=str(row["id"]), job_id=str(row["job_id"]), tenant=row["tenant_id"],
                lease=row["lease"], attempt=row["attempts"], provider=row["provider"],
                model=row["model"], operation=row["operation"], input_json=row["input"],
                upstream_id=row["upstream_id"] or "", grant_id=grant_id, canceled=bool(row["canceled"]),
                lease_expires_at=row["leased_until"].timestamp(), lease_seconds=self._config.lease_seconds,
            )
            claimed[row["tenant_id"]] += 1
            self.processing[row["tenant_id"]] += 1
            if not self.predictors.assign(assignment):
                handed_back.append(pb.LeaseRef(item_id=assignment.item_id, lease=assignment.lease))
        unused += list(spare)
        return claimed, handed_back, unused

    def _correct_index(
        self, shares: LaneShares, picks: dict[str, int], claimed: dict[str, int], short: Collection[str],
        held_elsewhere: set[str],
    ) -> None:
        """Where the database handed out fewer items than picked, learn why: `short` got
        less than their cap allowed, the others that got less were capped."""
        for tenant, n in picks.items():
            got = claimed.get(tenant, 0)
            if got >= n:
                continue
            if tenant in held_elsewhere:
                # Another replica's claim held some of its job stripes: the items are
                # there, and the index keeps counting them.
                continue
            if tenant in short:
                # The index believed in items that are not ready (claimed by another
                # replica, or waiting out a retry backoff): trust the database.
                shares.set_backlog(tenant, got)
            else:
                # max_concurrency reached, counting other replicas' items in flight.
                cap = self._tenants.max_concurrency(tenant) or 0
                self.processing[tenant] = max(self.processing[tenant], cap)

    async def hand_back(self, leases: list[pb.LeaseRef]) -> None:
        """Return claimed items that no predictor received to PENDING at once."""
        if self.on_hand_back is not None:
            await self.on_hand_back(leases)
