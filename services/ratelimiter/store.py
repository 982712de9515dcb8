"""Redis access: the budget scripts and the keys they share across replicas.

Every decision runs in one Lua script on Redis, with Redis `TIME` as the clock, so all
replicas see one budget and one time. Keys of one budget share a hash tag (`{budget}`).
Any Redis failure surfaces as `StoreUnavailable`: the caller fails closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.ratelimiter.budgets import Budget
from services.ratelimiter.errors import RateLimiterError
from services.ratelimiter.grants import GrantId
from services.ratelimiter.redis_wire import Arg, LuaScript, ScriptConnection, bulk, bulks

_SCRIPTS = Path(__file__).parent
RELEASE = -1  # `used` value that marks a release in close()
RING_SLOTS = 64
BUDGET_KEYS = 9  # keys of acquire.lua before the tenants' keys
BUDGET_ARGS = 12  # arguments of acquire.lua before the tenants
SCRIPT_TIMEOUT_S = 2.0  # as the pool's socket timeout: past it Redis counts as down
MINUTE_S = 60


class StoreUnavailable(RateLimiterError):
    """Redis did not answer; no grant can be decided."""


class Ask(NamedTuple):
    """One Acquire as the store decides it."""

    wanted: int
    tokens_each: int
    tenant: str
    all_or_nothing: bool
    serial_prefix: str


@dataclass(frozen=True, slots=True)
class Decision:
    granted: int
    now_us: int
    retry_after_s: float
    limited_by: str
    remaining: int  # requests that would still fit right now
    rate_factor: float


@dataclass(frozen=True)
class Usage:
    requests_last_minute: int
    tokens_last_minute: int
    denied_last_minute: int
    rate_factor: float
    cooldown_until_s: float  # unix seconds, 0 if none
    in_flight: int
    # The last minute second by second, oldest first (the current second last).
    requests_by_second: tuple[int, ...] = ()
    tokens_by_second: tuple[int, ...] = ()


@dataclass(frozen=True)
class StoreParams:
    key_prefix: str
    grant_ttl_s: float
    recovery_s: float
    min_rate_factor: float
    time_scale: float
    burst_fraction: float


class BudgetStore:
    def __init__(self, redis_url: str, params: StoreParams) -> None:
        self._p = params
        # One quick retry covers a pooled connection left stale by a Redis restart;
        # a Redis that is really down still fails within the connect timeout.
        self._redis: aioredis.Redis[str] = aioredis.Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_connect_timeout=0.5,
            socket_timeout=SCRIPT_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
            max_connections=256,
        )
        self._acquire_script = LuaScript((_SCRIPTS / "acquire.lua").read_text())
        self._close = self._redis.register_script((_SCRIPTS / "close.lua").read_text())
        self._feedback = self._redis.register_script((_SCRIPTS / "feedback.lua").read_text())
        self._window = self._redis.register_script((_SCRIPTS / "window.lua").read_text())
        # Like the window, recovery is in the provider's time: a time-scaled provider's minute
        # passes in 60 / time scale real seconds, and so does a recovery of 60 s.
        self._recovery_per_us = params.time_scale / (params.recovery_s * 1e6)
        self._acquire_parts: dict[str, tuple[ScriptConnection, bytes, bytes]] = {}

    @property
    def window_us(self) -> float:
        """The provider's rolling minute in real microseconds."""
        return MINUTE_S * 1e6 / self._p.time_scale

    def _key(self, budget: str, part: str) -> str:
        return f"{self._p.key_prefix}:{{{budget}}}:{part}"

    def _tenant_key(self, budget: str, tenant: str, part: str) -> str:
        return self._key(budget, f"t:{tenant}:{part}")

    @property
    def _global_caps(self) -> str:
        # Caps for every budget; outside the budgets' hash slots, so a single-node Redis only.
        return f"{self._p.key_prefix}:caps"

    def _budget_part(self, budget: Budget) -> tuple[ScriptConnection, bytes, bytes]:
        """The budget's script connection, and its keys and arguments of acquire.lua packed once."""
        part = self._acquire_parts.get(budget.name)
        if part is None:
            name = budget.name
            keys: list[Arg] = [self._key(name, p) for p in ("req", "tok", "fb", "inflight", "caps")]
            keys += [self._global_caps, self._key(name, "ring"), self._key(name, "win"), self._key(name, "winsum")]
            args: list[Arg] = [
                budget.request_interval_us,
                budget.burst,
                budget.token_interval_us,
                budget.token_burst,
                budget.max_in_flight,
                int(self._p.grant_ttl_s * 1e6),
                self._recovery_per_us,
                self._p.min_rate_factor,
                self._p.time_scale,
                self._p.burst_fraction,
                self.window_us,
                # The planned tokens of one provider minute (the budget's rates are per real minute).
                budget.tpm / self._p.time_scale,
            ]
            part = (ScriptConnection(self._redis, SCRIPT_TIMEOUT_S), bulks(keys), bulks(args))
            self._acquire_parts[name] = part
        return part

    async def acquire(self, budget: Budget, asks: Sequence[Ask]) -> list[Decision]:
        """Decide `asks` of one budget in order, in one script call (see acquire.lua).

        One call at a time per budget: the caller serialises them (a GroupCommit per budget).
        """
        connection, budget_keys, budget_args = self._budget_part(budget)
        tenants: dict[str, int] = {}
        for ask in asks:
            tenants.setdefault(ask.tenant, len(tenants) + 1)
        body = [bulk(BUDGET_KEYS + 2 * len(tenants)), budget_keys]
        for tenant in tenants:
            body += (
                bulk(self._tenant_key(budget.name, tenant, "req")),
                bulk(self._tenant_key(budget.name, tenant, "inflight")),
            )
        body += (budget_args, bulk(len(tenants)))
        body += [bulk(tenant) for tenant in tenants]
        for ask in asks:
            body.append(
                bulks(
                    [
                        ask.wanted,
                        ask.tokens_each,
                        1 if ask.all_or_nothing else 0,
                        tenants[ask.tenant],
                        ask.serial_prefix,
                    ]
                )
            )
        parts = 1 + BUDGET_KEYS + 3 * len(tenants) + BUDGET_ARGS + 1 + 5 * len(asks)
        try:
            reply = await connection.call(self._acquire_script, parts, b"".join(body))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        now_us, factor = int(reply[0]), float(reply[1])
        return [
            Decision(int(reply[i]), now_us, int(reply[i + 1]) / 1e6, reply[i + 2], int(reply[i + 3]), factor)
            for i in range(2, len(reply), 4)
        ]

    async def close(self, budget: Budget, tenant: str, grants: Sequence[tuple[GrantId, int]]) -> tuple[int, int]:
        """Settle (`used` >= 0) or release (`used` == RELEASE) grants of one budget and tenant.

        Returns (grants closed now, tokens adjusted: >0 charged, <0 refunded).
        """
        closed, adjusted, _ = await self._close_script(budget, tenant, grants, "close")
        return closed, adjusted

    async def adjust(
        self, budget: Budget, tenant: str, grants: Sequence[tuple[GrantId, int]]
    ) -> tuple[list[GrantId | None], int]:
        """Set what open grants of one budget and tenant reserve: (the grants under their new
        ids, None where a grant was closed already; tokens adjusted)."""
        _, adjusted, done = await self._close_script(budget, tenant, grants, "adjust")
        return [
            replace(grant, tokens=tokens, serial=grant.serial + "a") if ok else None
            for (grant, tokens), ok in zip(grants, done, strict=True)
        ], adjusted

    async def _close_script(
        self, budget: Budget, tenant: str, grants: Sequence[tuple[GrantId, int]], mode: str
    ) -> tuple[int, int, list[bool]]:
        name = budget.name
        keys = [
            self._key(name, "req"),
            self._key(name, "tok"),
            self._key(name, "inflight"),
            self._tenant_key(name, tenant, "inflight"),
            self._key(name, "caps"),
            self._global_caps,
            self._key(name, "ring"),
            self._key(name, "closed"),
            self._tenant_key(name, tenant, "req"),
            self._key(name, "win"),
            self._key(name, "winsum"),
        ]
        args: list[Any] = [
            budget.request_interval_us,
            budget.token_interval_us,
            int(self._p.grant_ttl_s * 1e6),
            tenant,
            self._p.time_scale,
            self._p.burst_fraction,
            self.window_us,
            mode,
        ]
        for grant, used in grants:
            args += [grant.serial, grant.tokens, grant.issued_us, used]
        closed, adjusted, *done = await self._run(self._close, keys, args)
        return int(closed), int(adjusted), [bool(d) for d in done]

    async def feedback(
        self,
        budget: Budget,
        *,
        target_factor: float | None,
        multiplier: float,
        cooldown_s: float,
        hold_s: float,
        learned_factor: float | None = None,
        call_share: float = 0.0,
    ) -> tuple[float, float]:
        """Merge an upstream observation; returns (rate factor, cooldown seconds remaining).
        `call_share`: one call as a share of the published limit (what each further 429 of a
        hold period takes off the share the first one measured)."""
        args: list[Any] = [
            -1 if target_factor is None else target_factor,
            multiplier,
            int(cooldown_s * 1e6),
            self._recovery_per_us,
            self._p.min_rate_factor,
            int(hold_s * 1e6),
            -1 if learned_factor is None else learned_factor,
            call_share,
        ]
        keys = [self._key(budget.name, "fb"), self._key(budget.name, "ring")]
        factor, cooldown_us = await self._run(self._feedback, keys, args)
        return float(factor), int(cooldown_us) / 1e6

    async def usage(self, budgets: Sequence[Budget]) -> list[Usage]:
        """Usage of each budget over the last minute, in one round trip."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.time()
                for b in budgets:
                    pipe.hgetall(self._key(b.name, "ring"))
                    pipe.hmget(self._key(b.name, "fb"), ["factor", "at", "cooldown_until"])
                    pipe.zcard(self._key(b.name, "inflight"))
                replies = await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        secs, micros = replies[0]
        now_us = int(secs) * 1_000_000 + int(micros)
        out = []
        for i in range(len(budgets)):
            ring, fb, in_flight = replies[1 + 3 * i : 4 + 3 * i]
            out.append(self._usage(now_us, ring, fb, int(in_flight)))
        return out

    async def window_usage(self, budget: Budget) -> Window:
        """What the budget used in the provider's rolling minute, which at a time scale is
        shorter than a real one: what the provider's remaining-* headers count."""
        name = budget.name
        keys = [self._key(name, "ring"), self._key(name, "win"), self._key(name, "winsum")]
        reply = await self._run(self._window, keys, [self.window_us])
        ring = dict(zip(reply[2::2], reply[3::2], strict=True))
        return Window(int(reply[0]), ring, int(reply[1]), self.window_us / 1e6)

    def _usage(self, now_us: int, ring: dict[str, str], fb: list[str | None], in_flight: int) -> Usage:
        now_s = now_us // 1_000_000
        sums = {"r": 0, "t": 0, "d": 0}
        requests, tokens = [0] * MINUTE_S, [0] * MINUTE_S
        for slot in range(RING_SLOTS):
            stamp = ring.get(f"s{slot}")
            if stamp is not None and now_s - MINUTE_S < int(stamp) <= now_s:
                for dim in sums:
                    sums[dim] += int(ring.get(f"{dim}{slot}", 0))
                age = now_s - int(stamp)
                requests[-1 - age] = max(0, int(ring.get(f"r{slot}", 0)))
                tokens[-1 - age] = max(0, int(ring.get(f"t{slot}", 0)))
        factor = 1.0
        if fb[0] is not None and fb[1] is not None:
            recovered = float(fb[0]) + max(0.0, now_us - float(fb[1])) * self._recovery_per_us
            factor = min(1.0, max(self._p.min_rate_factor, recovered))
        cooldown = float(fb[2]) / 1e6 if fb[2] is not None and float(fb[2]) > now_us else 0.0
        return Usage(
            max(0, sums["r"]), max(0, sums["t"]), sums["d"], factor, cooldown, in_flight, tuple(requests), tuple(tokens)
        )

    async def set_tenant_caps(self, budget: str, tenant: str, rpm: float, max_in_flight: int) -> None:
        key = self._key(budget, "caps") if budget else self._global_caps
        try:
            if rpm <= 0 and max_in_flight <= 0:
                await self._redis.hdel(key, tenant)
            else:
                await self._redis.hset(key, tenant, f"{max(rpm, 0.0)!r},{max(max_in_flight, 0)}")
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def aclose(self) -> None:
        for connection, _, _ in self._acquire_parts.values():
            await connection.aclose()
        await self._redis.aclose()  # type: ignore[attr-defined]  # stubs predate redis 5

    async def _run(self, script: Any, keys: Sequence[str | bytes], args: Sequence[Any]) -> list[Any]:
        try:
            result: list[Any] = await script(keys=keys, args=args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return result


@dataclass(frozen=True)
class Window:
    """A budget's use of the provider's last minute (`window_s` real seconds) at `now_us`."""

    now_us: int
    ring: dict[str, str]
    tokens: int
    window_s: float

    @property
    def requests(self) -> float:
        return window_requests(self.now_us, self.ring, self.window_s)

    def drain_s(self, keep: float) -> float:
        """Seconds until at most `keep` of our calls are left in the provider's minute, if we
        send none meanwhile (a second's calls leave together, when all of them have)."""
        now = self.now_us / 1e6
        left = self.requests
        if left <= keep:
            return 0.0
        seconds = sorted(int(v) for k, v in self.ring.items() if k.startswith("s"))
        for sec in seconds:
            if sec + 1 <= now - self.window_s or sec > now:
                continue
            slot = sec % RING_SLOTS
            left -= int(self.ring.get(f"r{slot}", 0)) - int(self.ring.get(f"x{slot}", 0))
            if left <= keep:
                return max(0.0, sec + 1 + self.window_s - now)
        return self.window_s


def window_requests(now_us: int, ring: dict[str, str], window_s: float) -> float:
    """Requests of the ring in `(now - window_s, now]` that the provider did not refuse (its
    429s are counted as `x`): a slot's count is spread evenly over the part of its second that
    has passed, so a window shorter than a slot gets its share."""
    now = now_us / 1e6
    low = now - window_s
    total = 0.0
    for slot in range(RING_SLOTS):
        stamp = ring.get(f"s{slot}")
        if stamp is None:
            continue
        start = int(stamp)
        end = min(start + 1.0, now)  # the current second is counted only up to now
        if end <= start or end <= low or start > now:
            continue
        count = int(ring.get(f"r{slot}", 0)) - int(ring.get(f"x{slot}", 0))
        total += count * (end - max(start, low)) / (end - start)
    return max(0.0, total)


async def gather_closes(
    store: BudgetStore, groups: Sequence[tuple[Budget, str, Sequence[tuple[GrantId, int]]]]
) -> tuple[int, int]:
    """Close several (budget, tenant) groups concurrently; sums of (closed, adjusted)."""
    results = await asyncio.gather(*(store.close(b, t, g) for b, t, g in groups))
    return sum(r[0] for r in results), sum(r[1] for r in results)
