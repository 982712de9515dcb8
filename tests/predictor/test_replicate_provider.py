"""Unit tests of `ReplicateProvider` alone, for paths a live stack reaches only by chance: its
HTTP answers, its budget and its scheduler context are stand-ins (the end-to-end paths are in
test_replicate_polling.py and tests/e2e).

- A prediction left running is billed: the upstream cancel outlasts throttling and 5xx.
- A prediction another item adopted before this one recorded it is left to that item."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.predictor.config import PredictorConfig
from services.predictor.errors import RetryableUpstreamError
from services.predictor.providers.base import CallContext, CallGate
from services.predictor.providers.replicate_provider import ReplicateProvider, _Client
from services.predictor.providers.replicate_recovery import is_intent
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


async def test_a_prediction_another_item_adopted_first_is_left_to_it() -> None:
    prediction = {"id": "p1", "status": "starting", "model": "a/b", "version": "v", "input": {"prompt": "x"},
                  "created_at": "2026-11-30T12:00:00Z", "urls": {}}
    sent: list[httpx.Request] = []
    replicate, _ = provider([httpx.Response(201, json=prediction)], sent)
    offered: list[str] = []

    async def record_upstream(upstream_id: str) -> bool:
        offered.append(upstream_id)
        if upstream_id == "p1":  # a resumed item with the same input recorded it first
            raise grpc.aio.AioRpcError(grpc.StatusCode.ALREADY_EXISTS, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       details="upstream_id: p1 is recorded for another item")
        return True

    async def nothing(*_: Any) -> None:
        return None

    @asynccontextmanager
    async def uninterrupted() -> AsyncIterator[None]:
        yield

    ctx = CallContext(record_upstream=record_upstream, park=nothing, settle=nothing, release=nothing,
                      uninterrupted=uninterrupted)
    assignment = pb.Assignment(item_id="i1", model="a/b", input_json='{"prompt": "x"}')
    with pytest.raises(RetryableUpstreamError, match="taken over by another item"):
        await replicate.run(assignment, ctx)
    assert len(offered) == 2 and is_intent(offered[0]) and offered[1] == "p1"
    assert [r.url.path for r in sent] == ["/v1/models/a/b/predictions"], "created once, and not canceled"
    await replicate.close()
