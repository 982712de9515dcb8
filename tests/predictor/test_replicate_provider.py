"""Unit tests of `ReplicateProvider` alone, for paths a live stack reaches only by chance: its
HTTP answers, its budget and its scheduler context are stand-ins (the end-to-end paths are in
test_replicate_polling.py, test_replicate_create_answers.py and tests/e2e).

- A prediction left running is billed: the upstream cancel outlasts throttling and 5xx.
- A prediction another item adopted before this one recorded it is left to that item.
- A create answered 429, or one that never left, is sent again in place: no listing, no attempt.
- A create whose fate is unknown leaves the intent for the next holder's search.
- A listing that fails is waited out like any read; a forgotten prediction is created again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb
from prometheus_client import REGISTRY

from services.predictor.errors import PermanentUpstreamError, RetryableUpstreamError
from services.predictor.providers.base import CallContext, LeaseLost
from services.predictor.providers.replicate_recovery import intent_id, is_intent
from tests.predictor.fakes import (
    THROTTLED,
    Answer,
    Context,
    connect_error,
    prediction,
    provider,
    reset_after_sending,
)

ASSIGNMENT = pb.Assignment(item_id="i1", model="a/b", input_json='{"prompt": "x"}', grant_id="g-dispatch")


def paths(sent: list[httpx.Request]) -> list[str]:
    return [f"{r.method} {r.url.path}" for r in sent]


CREATE = "POST /v1/models/a/b/predictions"


async def test_a_throttled_or_failed_cancel_is_sent_again_until_it_lands() -> None:
    answers = [
        httpx.Response(429, json=THROTTLED, headers={"retry-after": "0"}),
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
    sent: list[httpx.Request] = []
    replicate, _ = provider([httpx.Response(201, json=prediction("p1"))], sent)
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


async def test_a_throttled_create_is_sent_again_in_place_without_a_listing() -> None:
    sent: list[httpx.Request] = []
    replicate, budgets = provider([
        httpx.Response(429, json=THROTTLED, headers={"retry-after": "0"}),
        httpx.Response(201, json=prediction("p1")),
        httpx.Response(200, json=prediction("p1", "succeeded")),
    ], sent)
    item = Context()
    result = await replicate.run(ASSIGNMENT, item.ctx())
    assert result.output == "out-p1"
    assert paths(sent) == [CREATE, CREATE, "GET /v1/predictions/p1"], "no listing: nothing was created"
    assert budgets.throttled == ["replicate:create"]
    # The throttled call used the dispatch grant; the second create is paid with a grant of its own.
    assert item.settled == [0] and item.released == 0
    assert budgets.acquired[0] == "replicate:create" and budgets.settled == ["g-replicate:create-1"]
    assert [is_intent(i) for i in item.recorded] == [True, True, False] and item.recorded[-1] == "p1"
    await replicate.close()


async def test_a_throttled_create_is_not_sent_again_once_the_lease_is_gone() -> None:
    sent: list[httpx.Request] = []
    replicate, budgets = provider([httpx.Response(429, json=THROTTLED)], sent)
    item = Context(lease_held=lambda _: len(item.recorded) == 1)  # canceled while it waited
    with pytest.raises(LeaseLost):
        await replicate.run(ASSIGNMENT, item.ctx())
    assert paths(sent) == [CREATE]
    assert budgets.released == ["g-replicate:create-1"], "the grant paid for the second create is given back"
    await replicate.close()


async def test_a_create_that_never_left_releases_its_grant_and_is_sent_again() -> None:
    sent: list[httpx.Request] = []
    replicate, budgets = provider([
        connect_error,
        httpx.Response(201, json=prediction("p1")),
        httpx.Response(200, json=prediction("p1", "succeeded")),
    ], sent)
    item = Context()
    assert (await replicate.run(ASSIGNMENT, item.ctx())).output == "out-p1"
    assert paths(sent) == [CREATE, CREATE, "GET /v1/predictions/p1"]
    assert item.released == 1 and item.settled == [], "the dispatch grant went back unused"
    assert budgets.settled == ["g-replicate:create-1"] and budgets.throttled == []
    await replicate.close()


@pytest.mark.parametrize("answer", [
    reset_after_sending, httpx.Response(503, json={"detail": "busy", "status": 503}),
    httpx.Response(409, json={"detail": "conflict", "status": 409}),
], ids=["reset", "503", "409"])
async def test_a_create_whose_fate_is_unknown_leaves_the_intent_for_a_search(answer: Answer) -> None:
    sent: list[httpx.Request] = []
    replicate, budgets = provider([answer], sent)
    item = Context()
    with pytest.raises(RetryableUpstreamError):
        await replicate.run(ASSIGNMENT, item.ctx())
    assert paths(sent) == [CREATE], "not created again blind: the prediction may exist"
    assert len(item.recorded) == 1 and is_intent(item.recorded[0]), "the intent stays for the next holder"
    assert item.released == 0 and budgets.acquired == []
    await replicate.close()


async def test_a_refused_create_fails_the_item() -> None:
    sent: list[httpx.Request] = []
    replicate, _ = provider([httpx.Response(422, json={"detail": "input.prompt is required", "status": 422})], sent)
    with pytest.raises(PermanentUpstreamError, match=r"input\.prompt"):
        await replicate.run(ASSIGNMENT, Context().ctx())
    assert paths(sent) == [CREATE]
    await replicate.close()


async def test_a_listing_that_fails_is_waited_out_from_the_read_budget() -> None:
    sent: list[httpx.Request] = []
    replicate, budgets = provider([
        httpx.Response(503, json={"detail": "busy", "status": 503}),
        httpx.Response(429, json=THROTTLED),
        reset_after_sending,
        httpx.Response(200, json={"results": [], "next": None, "previous": None}),
        httpx.Response(201, json=prediction("p1")),
        httpx.Response(200, json=prediction("p1", "succeeded")),
    ], sent)
    resumed = pb.Assignment(item_id="i1", model="a/b", input_json='{"prompt": "x"}', upstream_id=intent_id("i1"))
    assert (await replicate.run(resumed, Context().ctx())).output == "out-p1"
    assert paths(sent) == ["GET /v1/predictions"] * 4 + [CREATE, "GET /v1/predictions/p1"]
    assert budgets.acquired == ["replicate:read"] * 4 + ["replicate:create", "replicate:read"]
    assert budgets.throttled == ["replicate:read"]
    await replicate.close()


def _recreated(when: str) -> float:
    return REGISTRY.get_sample_value("fairway_predictor_predictions_recreated_total", {"when": when}) or 0.0


async def test_a_resumed_item_whose_prediction_the_provider_forgot_creates_it_again() -> None:
    sent: list[httpx.Request] = []
    replicate, budgets = provider([
        httpx.Response(404, json={"detail": "Not found.", "status": 404}),
        httpx.Response(201, json=prediction("p2")),
        httpx.Response(200, json=prediction("p2", "succeeded")),
    ], sent)
    before = _recreated("resume")
    resumed = pb.Assignment(item_id="i1", model="a/b", input_json='{"prompt": "x"}', upstream_id="p1")
    item = Context()
    assert (await replicate.run(resumed, item.ctx())).output == "out-p2"
    assert paths(sent) == ["GET /v1/predictions/p1", CREATE, "GET /v1/predictions/p2"]
    assert is_intent(item.recorded[0]) and item.recorded[1:] == ["p2"], "the new id replaces the forgotten one"
    assert budgets.acquired == ["replicate:read", "replicate:create", "replicate:read"]
    assert _recreated("resume") == before + 1
    await replicate.close()


async def test_a_prediction_forgotten_while_it_ran_is_created_again() -> None:
    sent: list[httpx.Request] = []
    not_found = httpx.Response(404, json={"detail": "Not found.", "status": 404})
    replicate, _ = provider([
        httpx.Response(201, json=prediction("p1")), not_found,
        httpx.Response(201, json=prediction("p2")), httpx.Response(200, json=prediction("p2", "succeeded")),
    ], sent)
    before = _recreated("read")
    item = Context()
    assert (await replicate.run(ASSIGNMENT, item.ctx())).output == "out-p2"
    assert paths(sent) == [CREATE, "GET /v1/predictions/p1", CREATE, "GET /v1/predictions/p2"]
    assert [i if not is_intent(i) else "intent" for i in item.recorded] == ["intent", "p1", "intent", "p2"]
    assert _recreated("read") == before + 1
    await replicate.close()


async def test_a_provider_that_forgets_every_prediction_sends_the_item_back() -> None:
    sent: list[httpx.Request] = []
    not_found = httpx.Response(404, json={"detail": "Not found.", "status": 404})
    answers: list[Answer] = []
    for i in range(3):
        answers += [httpx.Response(201, json=prediction(f"p{i}")), not_found]
    replicate, _ = provider(answers, sent)
    with pytest.raises(RetryableUpstreamError, match="failing, not forgetting"):
        await replicate.run(ASSIGNMENT, Context().ctx())
    assert paths(sent).count(CREATE) == 3
    await replicate.close()
