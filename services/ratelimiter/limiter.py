"""The ratelimiter's decisions, shared by its gRPC API and its Envoy RLS API.

Fails closed: when Redis does not answer, nothing is granted, `StoreUnavailable` reaches
the caller and health turns NOT_SERVING until a probe reaches Redis again. There is no
per-replica fallback, which would multiply the budget by the number of replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from services.common.group_commit import GroupCommit
from services.common.logging import get_logger
from services.ratelimiter import metrics
from services.ratelimiter.budgets import Budget, BudgetBook
from services.ratelimiter.errors import InvalidBudgetRequest
from services.ratelimiter.feedback import Observation, OwnUsage, correct
from services.ratelimiter.grants import SEP, GrantId, SerialSource
from services.ratelimiter.store import (
    RELEASE,
    Ask,
    BudgetStore,
    Decision,
    StoreUnavailable,
    Usage,
    gather_closes,
)

log = get_logger(__name__)

T = TypeVar("T")

MAX_BATCH = 10_000  # grants per Acquire: bounds the script's work and the reply size
# Acquires per script call. One GroupCommit per budget: a batch touches one hash slot, and
# order within a budget is arrival order; the bound caps one script's run, which blocks Redis.
MAX_ASKS_PER_SCRIPT = 256
GAUGE_REFRESH_S = 5.0


@dataclass(frozen=True)
class Acquisition:
    budget: Budget
    decision: Decision
    grant_ids: list[str]


class RateLimiter:
    def __init__(
        self,
        book: BudgetBook,
        store: BudgetStore,
        *,
        utilization: float,
        time_scale: float,
        default_cooldown_s: float,
        hold_s: float | None = None,
        on_availability: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.book = book
        self._store = store
        self._utilization = utilization
        self._time_scale = time_scale
        self._default_cooldown_s = default_cooldown_s
        self._hold_s = hold_s
        self._on_availability = on_availability
        self._serials = SerialSource()
        self._queues: dict[str, GroupCommit[Ask, Decision]] = {}
        self._budget_meters: dict[str, metrics.BudgetMeters] = {}
        self.available: bool | None = None

    async def acquire(
        self,
        budget_name: str,
        count: int,
        *,
        tokens_each: int = 0,
        tenant: str = "",
        all_or_nothing: bool = False,
    ) -> Acquisition:
        if not 1 <= count <= MAX_BATCH:
            raise InvalidBudgetRequest(f"count must be between 1 and {MAX_BATCH}, not {count}")
        if tokens_each < 0:
            raise InvalidBudgetRequest("tokens_each must not be negative")
        if SEP in tenant or len(tenant) > 200:
            raise InvalidBudgetRequest(f"tenant must be at most 200 characters without {SEP!r}")
        budget = self.book.get(budget_name)
        if all_or_nothing and count > budget.burst:
            raise InvalidBudgetRequest(
                f"{count} grants of {budget.name} can never be granted at once: its burst is {budget.burst}"
            )
        started = time.perf_counter()
        prefix = self._serials.batch_prefix()
        ask = Ask(count, tokens_each, tenant, all_or_nothing, prefix)
        decision = await self._guard(self._queue(budget).submit(ask))
        granted = decision.granted
        if granted:
            head = f"{budget.name}{SEP}{tenant}{SEP}{tokens_each}{SEP}{decision.now_us}{SEP}{prefix}."
            ids = [head + "1"] if granted == 1 else [f"{head}{k}" for k in range(1, granted + 1)]
        else:
            ids = []
        meters = self._meters(budget.name)
        meters.latency.observe(time.perf_counter() - started)
        if granted:
            meters.grants.inc(granted)
        if granted < count:
            meters.denials(decision.limited_by).inc(count - granted)
            meters.wait.observe(decision.retry_after_s)
        return Acquisition(budget, decision, ids)

    def _queue(self, budget: Budget) -> GroupCommit[Ask, Decision]:
        queue = self._queues.get(budget.name)
        if queue is None:

            async def run(asks: Sequence[Ask]) -> list[Decision]:
                return await self._store.acquire(budget, asks)

            queue = self._queues[budget.name] = GroupCommit(run, max_batch=MAX_ASKS_PER_SCRIPT)
        return queue

    def _meters(self, name: str) -> metrics.BudgetMeters:
        meters = self._budget_meters.get(name)
        if meters is None:
            meters = self._budget_meters[name] = metrics.BudgetMeters(name)
        return meters

    async def settle(self, usages: Sequence[tuple[str, int]]) -> int:
        """Close grants with their actual token usage; returns tokens charged (<0: refunded).

        Only a budget whose provider counts usage is corrected by it: where the provider
        counted the request when it arrived, that count stands, so the reservation does too.
        """
        return (await self._close([(raw, max(0, used)) for raw, used in usages]))[1]

    async def adjust(self, adjustments: Sequence[tuple[str, int]]) -> tuple[list[str], int]:
        """Set what open grants reserve: (their new ids in order, "" for a closed one; tokens
        charged, <0 refunded)."""
        groups: dict[tuple[str, str], list[tuple[int, GrantId, int]]] = defaultdict(list)
        for k, (raw, tokens) in enumerate(adjustments):
            if tokens < 0:
                raise InvalidBudgetRequest("tokens must not be negative")
            grant = GrantId.decode(raw)
            groups[(grant.budget, grant.tenant)].append((k, grant, tokens))
        ids = [""] * len(adjustments)
        total = 0
        for (budget_name, tenant), group in groups.items():
            budget = self.book.get(budget_name)
            moved, adjusted = await self._guard(
                self._store.adjust(budget, tenant, [(grant, tokens) for _, grant, tokens in group])
            )
            total += adjusted
            for (k, _, _), new in zip(group, moved, strict=True):
                ids[k] = new.encode() if new is not None else ""
        return ids, total

    async def release(self, grant_ids: Sequence[str]) -> int:
        """Give back grants whose call never happened; returns how many were still open."""
        return (await self._close([(raw, RELEASE) for raw in grant_ids]))[0]

    async def _close(self, items: Sequence[tuple[str, int]]) -> tuple[int, int]:
        groups: dict[tuple[str, str], list[tuple[GrantId, int]]] = defaultdict(list)
        for raw, used in items:
            grant = GrantId.decode(raw)
            groups[(grant.budget, grant.tenant)].append((grant, used))
        work = []
        for (name, tenant), grants in groups.items():
            budget = self.book.get(name)
            if not budget.counts_usage:
                grants = [(g, used if used == RELEASE else g.tokens) for g, used in grants]
            work.append((budget, tenant, grants))
        if not work:
            return 0, 0
        return await self._guard(gather_closes(self._store, work))

    async def report(self, budget_name: str, obs: Observation) -> tuple[float, float]:
        """Apply what the provider said; returns (rate factor, cooldown seconds remaining)."""
        budget = self.book.get(budget_name)
        window_s = self._store.window_us / 1e6
        own = OwnUsage(0.0, 0.0, budget.rpm / self._scale_util, budget.tpm / self._scale_util, window_s)
        if obs.throttled or obs.remaining_requests is not None or obs.remaining_tokens is not None:
            # The provider's remaining-* count its own minute, which a time-scaled provider plays
            # in 60 / time_scale real seconds: ours must be counted over the same span.
            window = await self._guard(self._store.window_usage(budget))
            requests = window.requests
            own = OwnUsage(
                requests_fraction=requests / own.published_rpm,
                tokens_fraction=window.tokens / own.published_tpm if budget.tpm else 0.0,
                published_rpm=own.published_rpm,
                published_tpm=own.published_tpm,
                window_s=window_s,
                # After a 429, until our calls beyond the new plan have left the provider's minute.
                drain_s=window.drain_s(self._utilization * requests) if obs.throttled else 0.0,
            )
        fix = correct(obs, own, utilization=self._utilization, default_cooldown_s=self._default_cooldown_s,
                      hold_s=self._hold_s)
        if fix.target_factor is None and fix.multiplier >= 1.0 and fix.cooldown_s <= 0:
            return await self._current_feedback(budget)
        factor, cooldown = await self._guard(
            self._store.feedback(
                budget,
                target_factor=fix.target_factor,
                multiplier=fix.multiplier,
                cooldown_s=fix.cooldown_s,
                hold_s=fix.hold_s,
                learned_factor=fix.learned_factor,
                call_share=1.0 / own.published_rpm if own.published_rpm else 0.0,
            )
        )
        if factor < 1.0 or cooldown > 0:
            log.info("budget %s: upstream feedback -> rate factor %.3f, cooldown %.2fs", budget.name, factor, cooldown)
        metrics.RATE_FACTOR.labels(budget.name).set(factor)
        return factor, cooldown

    @property
    def _scale_util(self) -> float:
        # Published limit per provider minute = planned per real minute / (utilization x scale).
        return self._utilization * self._time_scale

    async def _current_feedback(self, budget: Budget) -> tuple[float, float]:
        usage = (await self._guard(self._store.usage([budget])))[0]
        remaining = max(0.0, usage.cooldown_until_s - time.time()) if usage.cooldown_until_s else 0.0
        return usage.rate_factor, remaining

    async def stats(self) -> list[tuple[Budget, Usage]]:
        budgets = self.book.all()
        usages = await self._guard(self._store.usage(budgets))
        for b, u in zip(budgets, usages, strict=True):
            metrics.USAGE_RATIO.labels(b.name).set(u.requests_last_minute / b.rpm if b.rpm else 0.0)
            metrics.RATE_FACTOR.labels(b.name).set(u.rate_factor)
        return list(zip(budgets, usages, strict=True))

    async def set_tenant_caps(self, tenant: str, budget_name: str, rpm: float, max_in_flight: int) -> None:
        if not tenant or SEP in tenant:
            raise InvalidBudgetRequest(f"tenant must be non-empty and without {SEP!r}")
        if budget_name:
            budget_name = self.book.get(budget_name).name
        # A cap is per provider minute like the limits file; the time scale applies in the script.
        await self._guard(self._store.set_tenant_caps(budget_name, tenant, rpm, max_in_flight))

    async def _guard(self, work: Awaitable[T]) -> T:
        try:
            result = await work
        except StoreUnavailable:
            await self._set_available(False)
            raise
        if self.available is not True:
            await self._set_available(True)
        return result

    async def _set_available(self, up: bool) -> None:
        if self.available == up:
            return
        self.available = up
        metrics.REDIS_UP.set(1 if up else 0)
        if up:
            log.info("redis answers: serving")
        else:
            log.warning("redis unreachable: failing closed (UNAVAILABLE, NOT_SERVING)")
        if self._on_availability is not None:
            await self._on_availability(up)

    async def watch(self, interval_s: float) -> None:
        """Probe Redis forever: health follows it, gauges are refreshed now and then."""
        last_gauges = 0.0
        while True:
            try:
                await self._guard(self._store.ping())
                if time.monotonic() - last_gauges >= GAUGE_REFRESH_S:
                    last_gauges = time.monotonic()
                    await self.stats()
            except StoreUnavailable:
                pass
            except Exception:  # a probe must never end the watch
                log.exception("redis probe failed unexpectedly")
            await asyncio.sleep(interval_s)
