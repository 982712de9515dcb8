"""Another service on the same key: its share of each budget, set at start or at runtime.

    foreign = ForeignTraffic(settings, accounting, clock, to_unix)
    foreign.make = lambda key, name: ...          # the budget `name` of `key`, made if new
    budget = foreign.attach(key, "replicate.create", budget)   # when an API makes a budget
    foreign.set("r8_abc", "openai:gpt-4o-mini", 0.3)           # POST /_emulator/foreign
    foreign.set(None, "replicate.read", 0)                     # every key: stop

Budget names: `replicate.create`, `replicate.read`, `openai:<model>`. The share starts at
`FAIRWAY_EMULATOR_FOREIGN_TRAFFIC` for every budget; a `set` without a key applies to every
key, those seen and those to come. What the other service sends is counted in the stats
under the key and budget name (`accounting.record_foreign`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeGuard

from services.emulator.accounting import Accounting
from services.emulator.config import EmulatorSettings
from services.emulator.limiter import Budget, Clock

REPLICATE_CREATE = "replicate.create"
REPLICATE_READ = "replicate.read"
OPENAI_PREFIX = "openai:"


def valid_budget(name: object) -> TypeGuard[str]:
    return name in (REPLICATE_CREATE, REPLICATE_READ) or (
        isinstance(name, str) and name.startswith(OPENAI_PREFIX) and len(name) > len(OPENAI_PREFIX)
    )


class ForeignTraffic:
    def __init__(
        self, settings: EmulatorSettings, accounting: Accounting, clock: Clock, to_unix: Callable[[float], float]
    ) -> None:
        self._initial = settings.foreign_traffic
        self._scale = settings.time_scale
        self._accounting = accounting
        self._clock = clock
        self._to_unix = to_unix
        self._every_key: dict[str, float] = {}  # budget name -> share, set without a key
        self._by_key: dict[tuple[str, str], float] = {}
        self._budgets: dict[tuple[str, str], Budget] = {}
        self.make: Callable[[str, str], Budget] | None = None

    def share(self, key: str, name: str) -> float:
        return self._by_key.get((key, name), self._every_key.get(name, self._initial))

    def attach(self, key: str, name: str, budget: Budget) -> Budget:
        """Follow a budget an API just made: report its foreign requests, start the share it has."""

        def report(first: float, interval: float, count: int) -> None:
            self._accounting.record_foreign(key, name, self._to_unix(first), interval / self._scale, count)

        budget.on_foreign = report
        self._budgets[(key, name)] = budget
        share = self.share(key, name)
        if share > 0:
            self._apply(key, name, budget, share)
        return budget

    def set(self, key: str | None, name: str, share: float) -> None:
        """From now on, the other service takes `share` of `name` for `key` (None: every key)."""
        if not 0 <= share < 1:
            raise ValueError("share must be at least 0 and less than 1")
        if key is None:
            self._every_key[name] = share
            for k, n in [kn for kn in self._by_key if kn[1] == name]:
                del self._by_key[(k, n)]
            for (k, n), each in self._budgets.items():
                if n == name:
                    self._apply(k, n, each, share)
            return
        self._by_key[(key, name)] = share
        budget = self._budgets.get((key, name))
        if budget is not None:
            self._apply(key, name, budget, share)
        elif self.make is not None:
            self.make(key, name)  # a key not seen yet: its budget starts now, with the share (attach)

    def _apply(self, key: str, name: str, budget: Budget, share: float) -> None:
        prefilled = budget.set_foreign(share, self._clock())
        self._accounting.foreign_share(key, name, share, prefilled)

    def settle(self) -> None:
        """Bring every budget's foreign requests up to now, so the stats show them all."""
        now = self._clock()
        for budget in self._budgets.values():
            budget.catch_up(now)

    def clear(self) -> None:
        """Forget budgets and runtime shares: every budget starts again at the configured share."""
        self._every_key.clear()
        self._by_key.clear()
        self._budgets.clear()
