"""The predictor's status line, every 30 s: work held, throughput, and the budgets it draws on.

    predictor-1: in flight 12/64, parked 80, done 587/min, budgets replicate:create 97% rpm, ...
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from services.common.logging import get_logger
from services.predictor.config import PredictorConfig
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.errors import RateLimiterError

log = get_logger(__name__)
STATUS_LOG_SECONDS = 30.0


class StatusLog:
    def __init__(self, config: PredictorConfig, budgets: BudgetClient) -> None:
        self._config = config
        self._budgets = budgets
        self._done: deque[float] = deque()

    def done(self) -> None:
        self._done.append(time.monotonic())

    def done_last_minute(self) -> int:
        cutoff = time.monotonic() - 60
        while self._done and self._done[0] < cutoff:
            self._done.popleft()
        return len(self._done)

    async def run(self, counts: Callable[[], tuple[int, int]]) -> None:
        while True:
            await asyncio.sleep(STATUS_LOG_SECONDS)
            in_flight, parked = counts()
            log.info("%s: in flight %d/%d, parked %d, done %d/min, budgets %s", self._config.worker_id,
                     in_flight, self._config.concurrency, parked, self.done_last_minute(), await self._budget_use())

    async def _budget_use(self) -> str:
        try:
            stats = await self._budgets.stats()
        except RateLimiterError as exc:
            return f"unknown ({exc})"
        parts = []
        for budget in stats.budgets:
            if budget.requests_last_minute == 0 and budget.tokens_last_minute == 0:
                continue
            part = f"{budget.name} {budget.rpm_usage_percent:.0f}% rpm"
            if budget.limit_tpm:
                part += f" {budget.tpm_usage_percent:.0f}% tpm"
            parts.append(part)
        return ", ".join(parts) or "idle"
