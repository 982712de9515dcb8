"""Stand-ins for unit tests of one predictor module: the ratelimiter, the scheduler's side of
an item (`CallContext`) and Replicate's HTTP answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx

from services.predictor.config import PredictorConfig
from services.predictor.providers.base import CallContext, CallGate
from services.predictor.providers.replicate_provider import ReplicateProvider
from services.ratelimiter.client import Acquired, BudgetClient, GrantRef
from tests.support.tokens import TOKENS, service_env

Answer = httpx.Response | Callable[[httpx.Request], httpx.Response]
THROTTLED = {"title": "Request was throttled.", "detail": "Request was throttled. Your rate limit resets in ~0s.",
             "status": 429}


class Budgets(BudgetClient):
    """Every call granted at once; what was asked, reported, settled and released is kept."""

    def __init__(self) -> None:
        super().__init__("unused:0", token=TOKENS["predictor"])
        self.throttled: list[str] = []
        self.acquired: list[str] = []
        self.settled: list[str] = []
        self.released: list[str] = []

    async def acquire(self, budget: str, count: int = 1, **_: Any) -> Acquired:
        self.acquired.append(budget)
        grant = GrantRef(id=f"g-{budget}-{len(self.acquired)}", tokens=0)
        return Acquired(grants=[grant] * count, retry_after_s=0.0, limited_by="")

    async def report_upstream(self, budget: str, *, throttled: bool = False, **_: Any) -> None:
        if throttled:
            self.throttled.append(budget)

    async def settle(self, usages: Any) -> None:
        self.settled += [grant for grant, _ in usages]

    async def release(self, grant_ids: Any) -> None:
        self.released += list(grant_ids)


def provider(planned: Sequence[Answer], sent: list[httpx.Request]) -> tuple[ReplicateProvider, Budgets]:
    answers = list(planned)

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        next_answer = answers.pop(0)
        return next_answer if isinstance(next_answer, httpx.Response) else next_answer(request)

    config = PredictorConfig.model_validate({
        "REPLICATE_API_TOKEN": "r8_test", "FAIRWAY_POLL_INITIAL_SECONDS": 0.01, "FAIRWAY_POLL_MAX_SECONDS": 0.02,
        **service_env("predictor"),
    })
    budgets = Budgets()
    http = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="https://api.replicate.com")
    return ReplicateProvider(config, budgets, CallGate(4), http), budgets


class Context:
    """The worker's side of one item: what the adapter recorded, settled and released."""

    def __init__(self, lease_held: Callable[[str], bool] = lambda _: True) -> None:
        self.recorded: list[str] = []
        self.released = 0
        self.settled: list[int] = []
        self._lease_held = lease_held
        self.canceled = asyncio.Event()  # the item's job was canceled

    async def record_upstream(self, upstream_id: str) -> bool:
        self.recorded.append(upstream_id)
        return self._lease_held(upstream_id)

    async def park(self) -> None:
        return None

    async def settle(self, tokens: int) -> None:
        self.settled.append(tokens)

    async def release(self) -> None:
        self.released += 1

    @asynccontextmanager
    async def uninterrupted(self) -> AsyncIterator[None]:
        yield

    def ctx(self) -> CallContext:
        return CallContext(record_upstream=self.record_upstream, park=self.park, settle=self.settle,
                           release=self.release, uninterrupted=self.uninterrupted, canceled=self.canceled)


def prediction(pid: str, status: str = "starting", prompt: str = "x") -> dict[str, Any]:
    return {"id": pid, "status": status, "model": "a/b", "version": "v", "input": {"prompt": prompt},
            "created_at": "2026-11-30T12:00:00Z", "completed_at": "2026-11-30T12:00:05Z", "urls": {},
            "output": f"out-{pid}" if status == "succeeded" else None}


def connect_error(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def reset_after_sending(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
