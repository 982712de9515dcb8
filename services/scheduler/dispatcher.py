"""Budget-aware dispatch: free predictor slots + upstream grants + fair shares -> assignments.

A dispatch round for one lane asks the ratelimiter for as many grants as there are free
predictor slots (and backlog), picks that many items by weighted fair share, claims them
in one statement and hands each, with its grant, to a predictor stream. Nothing waits on
a timer: a submit, a free slot, a finished item or the end of a budget's wait wakes it.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import asyncpg
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.common.logging import get_logger
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.errors import BudgetUnavailable
from services.scheduler.config import SchedulerConfig
from services.scheduler.fairness import LaneShares
from services.scheduler.metrics import DISPATCH_SECONDS, DISPATCHED, GRANT_WAITS
from services.scheduler.sql import QUERIES
from services.scheduler.tenants import TenantDirectory
from services.scheduler.workers import WorkerRegistry

log = get_logger(__name__)

# How often the in-memory backlog is rebuilt from the database, to absorb what other
# replicas changed (their retries, their claims). Dispatch itself never waits for it.
RESYNC_SECONDS = 15.0
_UNLIMITED = 1 << 30


class Dispatcher:
    def __init__(
        self, pool: asyncpg.Pool, budgets: BudgetClient, workers: WorkerRegistry,
        tenants: TenantDirectory, config: SchedulerConfig, replica: str,
    ) -> None:
        self._pool = pool
        self._budgets = budgets
        self.workers = workers
        self._tenants = tenants
        self._config = config
        self._replica = replica
        self.lanes: dict[str, LaneShares] = {}
        self._estimate: dict[str, float] = {}
        self._blocked_until: dict[str, float] = {}
        self.processing: dict[str, int] = defaultdict(int)
        self.dispatched_recent: dict[str, list[float]] = defaultdict(list)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None
        self.on_hand_back: Callable[[list[pb.LeaseRef]], Awaitable[None]] | None = None

    # ---- lifecycle ----

    async def start(self) -> None:
        await self.resync()
        self._listener = await asyncpg.connect(self._config.database_url)
        await self._listener.add_listener("fairway_backlog", self._on_notify)
        self._task = asyncio.create_task(self._run(), name="dispatch")
        self._resync_task = asyncio.create_task(self._resync_forever(), name="resync")

    async def stop(self) -> None:
        for task in (self._task, self._resync_task):
            if task is not None:
                task.cancel()
        if self._listener is not None:
            await self._listener.close()

    async def resync(self) -> None:
        backlog = await self._pool.fetch(QUERIES["backlog"])
        processing = await self._pool.fetch(QUERIES["processing_by_tenant"])
        seen: dict[str, set[str]] = defaultdict(set)
        for row in backlog:
            lane = self.lanes.setdefault(row["lane"], LaneShares())
            lane.set_backlog(row["tenant_id"], row["n"])
            self._estimate[row["lane"]] = row["est"] or 0.0
            seen[row["lane"]].add(row["tenant_id"])
        for name, lane in self.lanes.items():
            for tenant in lane.tenants():
                if tenant not in seen[name]:
                    lane.set_backlog(tenant, 0)
        self.processing = defaultdict(int, {r["tenant_id"]: r["n"] for r in processing})
        self.wake()

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            try:
                await self.resync()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("backlog resync failed: %s", exc)

    # ---- signals from the rest of the scheduler ----

    def wake(self) -> None:
        self._wake.set()

    def add_backlog(self, lane: str, tenant: str, n: int, estimate: float = 0.0) -> None:
        shares = self.lanes.setdefault(lane, LaneShares())
        before = shares.backlog_total
        shares.add_backlog(tenant, n)
        if estimate:
            old = self._estimate.get(lane, estimate)
            self._estimate[lane] = (old * before + estimate * n) / max(1, before + n)
        self.wake()

    def add_backlog_later(self, delay_s: float, lane: str, tenant: str, n: int) -> None:
        if delay_s <= 0:
            self.add_backlog(lane, tenant, n)
        else:
            asyncio.get_running_loop().call_later(delay_s, self.add_backlog, lane, tenant, n)

    def remove_backlog(self, lane: str, tenant: str, n: int) -> None:
        shares = self.lanes.get(lane)
        if shares is not None:
            shares.take(tenant, n, advance=False, weight=1.0)

    def finished(self, tenant: str, n: int = 1) -> None:
        self.processing[tenant] = max(0, self.processing[tenant] - n)
        self.wake()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        replica, lane, tenant, n, est = payload.split("|")
        if replica != self._replica:
            self.add_backlog(lane, tenant, int(n), float(est))

    # ---- the dispatch loop ----

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while await self._round():
                    pass
            except (OSError, asyncpg.PostgresError, BudgetUnavailable) as exc:
                log.warning("dispatch paused: %s", exc)
                retry = getattr(exc, "retry_after_s", 0.0) or 0.5
                asyncio.get_running_loop().call_later(retry, self.wake)

    def _ready_lanes(self) -> list[str]:
        now = time.monotonic()
        accepting = self.workers.providers_with_slots()
        ready = []
        for name, shares in self.lanes.items():
            if shares.backlog_total <= 0 or self._blocked_until.get(name, 0.0) > now:
                continue
            if accepting is not None and name.split(":", 1)[0] not in accepting:
                continue
            ready.append(name)
        return ready

    async def _round(self) -> bool:
        """One dispatch pass over every ready lane; True if anything was dispatched."""
        progressed = False
        for lane in self._ready_lanes():
            if await self._dispatch(lane):
                progressed = True
        return progressed

    def _headroom(self, tenant: str) -> int:
        cap = self._tenants.max_concurrency(tenant)
        return _UNLIMITED if cap is None else cap - self.processing[tenant]

    async def _dispatch(self, lane: str) -> bool:
        provider = lane.split(":", 1)[0]
        shares = self.lanes[lane]
        slots = self.workers.free_slots(provider)
        want = min(slots, self._config.dispatch_batch, shares.backlog_total)
        if want <= 0:
            return False
        picks = shares.pick(want, self._tenants.weight, self._headroom)
        want = sum(picks.values())
        if want == 0:
            return False
        started = time.perf_counter()
        acquired = await self._budgets.acquire(lane, want, tokens_each=int(self._estimate.get(lane, 0.0)))
        if not acquired.grants:
            GRANT_WAITS.labels(lane).inc()
            self._blocked_until[lane] = time.monotonic() + acquired.retry_after_s
            asyncio.get_running_loop().call_later(acquired.retry_after_s, self.wake)
            return False
        if len(acquired.grants) < want:
            picks = shares.pick(len(acquired.grants), self._tenants.weight, self._headroom)
        rows = await self._pool.fetch(
            QUERIES["claim_items"], lane, list(picks), list(picks.values()),
            self._replica, self._config.lease_seconds,
        )
        claimed: dict[str, int] = defaultdict(int)
        grants = list(acquired.grants)
        unused: list[str] = []
        handed_back: list[pb.LeaseRef] = []
        for row in rows:
            grant = grants.pop()
            # A resumed call (the upstream already accepted it) needs no new grant.
            grant_id = "" if row["upstream_id"] else grant.id
            if not grant_id:
                unused.append(grant.id)
            assignment = pb.Assignment(
                item_id=str(row["id"]), job_id=str(row["job_id"]), tenant=row["tenant_id"],
                lease=row["lease"], attempt=row["attempts"], provider=row["provider"],
                model=row["model"], operation=row["operation"], input_json=row["input"],
                upstream_id=row["upstream_id"] or "", grant_id=grant_id,
                lease_expires_at=row["leased_until"].timestamp(),
            )
            claimed[row["tenant_id"]] += 1
            self.processing[row["tenant_id"]] += 1
            if not self.workers.assign(assignment):
                handed_back.append(pb.LeaseRef(item_id=assignment.item_id, lease=assignment.lease))
        unused += [g.id for g in grants]
        for tenant, n in picks.items():
            if claimed[tenant] < n:
                # The index believed in items that are not there (claimed by another
                # replica, or waiting out a retry backoff): trust the database.
                shares.take(tenant, shares.backlog(tenant), advance=False, weight=1.0)
        shares.commit(dict(claimed), self._tenants.weight)
        if unused:
            await self._budgets.release(unused)
        if handed_back:
            await self.hand_back(handed_back)
        now = time.time()
        for tenant, n in claimed.items():
            self.dispatched_recent[tenant].extend([now] * n)
        DISPATCHED.labels(lane).inc(len(rows))
        DISPATCH_SECONDS.observe(time.perf_counter() - started)
        return bool(rows)

    async def hand_back(self, leases: list[pb.LeaseRef]) -> None:
        """Return claimed items that no predictor received to PENDING at once."""
        if self.on_hand_back is not None:
            await self.on_hand_back(leases)

    def dispatched_last_minute(self, tenant: str) -> int:
        cutoff = time.time() - 60
        recent = [t for t in self.dispatched_recent[tenant] if t >= cutoff]
        self.dispatched_recent[tenant] = recent
        return len(recent)

