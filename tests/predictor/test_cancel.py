"""A prediction left running is billed: the upstream cancel outlasts throttling and 5xx.

A unit test of `ReplicateProvider.cancel` alone: the provider's HTTP answers and its budget
are stand-ins (the end-to-end cancel is in test_replicate_polling.py)."""

from __future__ import annotations

from typing import Any

import httpx

from services.predictor.config import PredictorConfig
from services.predictor.providers.base import CallGate
from services.predictor.providers.replicate_provider import ReplicateProvider, _Client
from services.ratelimiter.client import Acquired, BudgetClient, GrantRef


class Budgets(BudgetClient):
    """Every call granted at once; the throttles reported are kept."""

    def __init__(self) -> None:
        super().__init__("unused:0")
        self.throttled: list[str] = []

    async def acquire(self, budget: str, count: int = 1, **_: Any) -> Acquired:
        return Acquired(grants=[GrantRef(id=f"g-{budget}", tokens=0)] * count, retry_after_s=0.0, limited_by="")

    async def report_upstream(self, budget: str, *, throttled: bool = False, **_: Any) -> None:
        if throttled:
            self.throttled.append(budget)


def provider(answers: list[httpx.Response], sent: list[httpx.Request]) -> tuple[ReplicateProvider, Budgets]:
    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answers.pop(0)

    config = PredictorConfig.model_validate({
        "REPLICATE_API_TOKEN": "r8_test", "FAIRWAY_POLL_INITIAL_SECONDS": 0.01, "FAIRWAY_POLL_MAX_SECONDS": 0.02,
    })
    budgets = Budgets()
    replicate = ReplicateProvider(config, budgets, CallGate(4))
    replicate._http = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="https://api.replicate.com")
    replicate._client = _Client(replicate._http)
    return replicate, budgets


async def test_a_throttled_or_failed_cancel_is_sent_again_until_it_lands() -> None:
    throttled = {"title": "Request was throttled.", "detail": "Request was throttled. Your rate limit resets in ~0s.",
                 "status": 429}
    answers = [
        httpx.Response(429, json=throttled, headers={"retry-after": "0"}),
        httpx.Response(503, json={"detail": "busy", "status": 503}),
        httpx.Response(200, json={"id": "p1", "status": "canceled", "model": "a/b", "version": "v", "input": {}}),
    ]
    sent: list[httpx.Request] = []
    replicate, budgets = provider(answers, sent)
    await replicate.cancel("p1")
    assert [(r.method, r.url.path) for r in sent] == [("POST", "/v1/predictions/p1/cancel")] * 3
    assert budgets.throttled == ["replicate:read"]
    await replicate.close()


async def test_a_cancel_the_provider_refuses_is_not_sent_again() -> None:
    sent: list[httpx.Request] = []
    replicate, _ = provider([httpx.Response(404, json={"detail": "Not found.", "status": 404})], sent)
    await replicate.cancel("gone")
    assert len(sent) == 1
    await replicate.close()
