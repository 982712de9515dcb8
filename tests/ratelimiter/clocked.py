"""A budget store whose scripts read the time from a key the test sets.

    clocked = await Clocked.create(redis_url, tpm=60.0, burst_fraction=0.5)
    await clocked.acquire(2, 10); await clocked.advance(45_000)

`Clocked.advance` moves the clock and ages every key's expiry by the same amount, as Redis
would have in that time, so the Lua scripts run on real Redis under a controlled clock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from services.ratelimiter.budgets import Budget, make_budget
from services.ratelimiter.grants import GrantId
from services.ratelimiter.redis_wire import LuaScript
from services.ratelimiter.store import _SCRIPTS, Ask, BudgetStore, Decision, StoreParams


def _clocked_source(source: str, clock_key: str) -> str:
    clock = f"{{string.match(redis.call('GET', '{clock_key}'), '(%d+) (%d+)')}}"
    assert source.count("redis.call('TIME')") == 1
    return source.replace("redis.call('TIME')", clock)


@dataclass
class Clocked:
    """A store whose scripts read the time from a key this test sets."""

    store: BudgetStore
    budget: Budget
    prefix: str
    now_ms: int = 1_000_000_000_000
    grants: list[tuple[int, GrantId]] = field(default_factory=list)  # (issued ms, grant)
    serial: int = 0

    @classmethod
    async def create(
        cls, redis_url: str, tpm: float, burst_fraction: float, *, rpm: float = 100_000.0,
        name: str = "openai:clocked",
    ) -> Clocked:
        prefix = f"test:{uuid.uuid4().hex[:10]}"
        params = StoreParams(prefix, 600.0, 60.0, 0.05, 1.0, burst_fraction)
        store = BudgetStore(redis_url, params)
        clock_key = f"{prefix}:clock"
        store._acquire_script = LuaScript(_clocked_source((_SCRIPTS / "acquire.lua").read_text(), clock_key))
        for attr, script in (("_close", "close.lua"), ("_feedback", "feedback.lua"), ("_window", "window.lua")):
            source = _clocked_source((_SCRIPTS / script).read_text(), clock_key)
            setattr(store, attr, store._redis.register_script(source))
        budget = make_budget(name, rpm, tpm, time_scale=1.0, burst_fraction=burst_fraction)
        clocked = cls(store, budget, prefix)
        await clocked._write_clock()
        return clocked

    async def _write_clock(self) -> None:
        await self.store._redis.set(f"{self.prefix}:clock", f"{self.now_ms // 1000} {self.now_ms % 1000 * 1000}")

    async def advance(self, ms: int) -> None:
        self.now_ms += ms
        await self._write_clock()
        redis = self.store._redis
        async for key in redis.scan_iter(match=f"{self.prefix}:*"):
            left = await redis.pttl(key)
            if left > 0:
                if left <= ms:
                    await redis.delete(key)
                else:
                    await redis.pexpire(key, left - ms)

    async def acquire(self, count: int, tokens_each: int) -> Decision:
        self.serial += 1
        prefix = f"p{self.serial}"
        decision = (await self.store.acquire(self.budget, [Ask(count, tokens_each, "", False, prefix)]))[0]
        assert decision.now_us == self.now_ms * 1000
        for k in range(1, decision.granted + 1):
            grant = GrantId(self.budget.name, "", tokens_each, decision.now_us, f"{prefix}.{k}")
            self.grants.append((self.now_ms, grant))
        return decision

    async def close(self, grant: GrantId, used: int) -> None:
        await self.store.close(self.budget, "", [(grant, used)])
