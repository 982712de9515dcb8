"""Budget definitions: one per upstream limit, from the limits file x utilization x time scale."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.limits import OPENAI_PREFIX, REPLICATE_CREATE, REPLICATE_READ, Limits
from services.ratelimiter.errors import InvalidBudgetRequest

MICROS_PER_MINUTE = 60_000_000.0


@dataclass(frozen=True)
class Budget:
    """One upstream limit as Fairway plans to use it.

    `rpm`/`tpm` are the planned limits per real minute (published x utilization x time scale).
    The GCRA parameters keep every rolling window of one (scaled) minute within the limit:
    `burst` grants may be taken at once, and the sustained rate is the rest.
    """

    name: str
    rpm: float
    tpm: float  # 0: no token dimension
    max_in_flight: int  # 0: no concurrency dimension
    burst: int
    token_burst: int
    request_interval_us: float  # GCRA emission interval of one request
    token_interval_us: float  # of one token; 0 without a token dimension
    # The provider counts what a call used, known when it ends (settles correct the budget),
    # rather than what the request asked for when it arrived (OpenAI: the reservation stands).
    counts_usage: bool = False


def _gcra(limit_per_minute: float, time_scale: float, burst_fraction: float) -> tuple[int, float]:
    """(burst, interval_us) such that burst + rate x window <= limit in any window of a minute."""
    burst = max(1, math.floor(limit_per_minute * burst_fraction))
    sustained = max(limit_per_minute - burst, limit_per_minute * 0.5)
    return burst, MICROS_PER_MINUTE / (sustained * time_scale)


def make_budget(
    name: str,
    rpm: float,
    tpm: float,
    *,
    time_scale: float,
    burst_fraction: float,
    max_in_flight: int = 0,
    counts_usage: bool = False,
) -> Budget:
    burst, request_interval = _gcra(rpm, time_scale, burst_fraction)
    token_burst, token_interval = 0, 0.0
    if tpm > 0:
        # Tokens are paced at the full limit: the token window log, not the GCRA, keeps every
        # rolling minute within it, so no minute needs the burst taken out of its rate.
        token_burst = max(1, math.floor(tpm * burst_fraction))
        token_interval = MICROS_PER_MINUTE / (tpm * time_scale)
    return Budget(
        name=name,
        rpm=rpm * time_scale,
        tpm=tpm * time_scale,
        max_in_flight=max_in_flight,
        burst=burst,
        token_burst=token_burst,
        request_interval_us=request_interval,
        token_interval_us=token_interval,
        counts_usage=counts_usage,
    )


class BudgetBook:
    """The known budgets; `openai:<model>` budgets for unlisted models get `openai.default`."""

    def __init__(
        self,
        limits: Limits,
        *,
        time_scale: float = 1.0,
        burst_fraction: float = 0.005,
        concurrency: Mapping[str, int] | None = None,
    ) -> None:
        self._limits = limits
        self._time_scale = time_scale
        self._burst_fraction = burst_fraction
        self._concurrency = dict(concurrency or {})
        self._budgets: dict[str, Budget] = {}
        u = limits.utilization
        self._add(REPLICATE_CREATE, limits.replicate.create_rpm * u, 0.0)
        self._add(REPLICATE_READ, limits.replicate.read_rpm * u, 0.0)
        for model, limit in limits.openai.models.items():
            self._add(OPENAI_PREFIX + model, limit.rpm * u, limit.tpm * u, limit.tokens_counted == "usage")

    def _add(self, name: str, rpm: float, tpm: float, counts_usage: bool = False) -> Budget:
        budget = make_budget(
            name,
            rpm,
            tpm,
            time_scale=self._time_scale,
            burst_fraction=self._burst_fraction,
            max_in_flight=self._concurrency.get(name, 0),
            counts_usage=counts_usage,
        )
        self._budgets[name] = budget
        return budget

    def get(self, name: str) -> Budget:
        budget = self._budgets.get(name)
        if budget is not None:
            return budget
        model = name.removeprefix(OPENAI_PREFIX)
        if name.startswith(OPENAI_PREFIX) and model and "|" not in model:
            default = self._limits.openai.default
            u = self._limits.utilization
            return self._add(name, default.rpm * u, default.tpm * u, default.tokens_counted == "usage")
        raise InvalidBudgetRequest(
            f"unknown budget {name!r}: expected replicate:create, replicate:read or openai:<model>"
        )

    def all(self) -> list[Budget]:
        return list(self._budgets.values())
