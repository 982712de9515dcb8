"""Token lanes: each item reserves what the provider counts for it when it arrives."""

from __future__ import annotations

import json

import grpc
import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.common.limits import Limits
from services.ratelimiter.grants import GrantId
from services.scheduler.lanes import admission_tokens
from tests.scheduler.conftest import LIMITS, Client, FakePredictor

MODEL = "token-model"  # 3,000 tokens a minute; 1,000 output tokens when an item sets no cap


def chat(text: str, **params: object) -> str:
    return json.dumps({"messages": [{"role": "user", "content": text}], **params})


def test_a_request_counts_its_prompt_and_n_times_its_output_cap() -> None:
    limits = Limits.model_validate(LIMITS)
    one = admission_tokens(limits, "openai", "chat", MODEL, json.loads(chat("hello there", max_tokens=100)))
    two = admission_tokens(limits, "openai", "chat", MODEL, json.loads(chat("hello there", max_tokens=100, n=2)))
    assert two - one == 100
    newer = admission_tokens(limits, "openai", "chat", MODEL,
                             json.loads(chat("hello there", max_tokens=5, max_completion_tokens=100)))
    assert newer == one  # max_completion_tokens replaces max_tokens
    uncapped = admission_tokens(limits, "openai", "chat", MODEL, json.loads(chat("hello there")))
    assert uncapped - one == 900  # the model's own ceiling (max_output_tokens: 1,000)
    # The prompt is never counted below the provider's estimate (four characters a token).
    long = "word " * 400
    assert admission_tokens(limits, "openai", "chat", MODEL, json.loads(chat(long, max_tokens=1))) >= len(long) // 4
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}],
             "max_tokens": 10}
    assert admission_tokens(limits, "openai", "chat", MODEL, image) >= 85 + 10
    response = admission_tokens(limits, "openai", "response", MODEL, {"input": "hello", "max_output_tokens": 40})
    assert 40 < response < 50
    assert admission_tokens(limits, "replicate", "prediction", "a/b", {"prompt": "x"}) == 0


async def test_each_grant_reserves_exactly_its_items_count(client: Client, predictor: FakePredictor) -> None:
    await client.tenant("tok-a", weight=1)
    caps = [100, 600, 250, 40]
    items = [pb.ItemInput(ref=f"r{i}", input_json=chat(f"item {i}", max_tokens=cap)) for i, cap in enumerate(caps)]
    await client.api.SubmitJob(pb.SubmitJobRequest(tenant="tok-a", provider="openai", model=MODEL, items=items))
    predictor.ready(len(caps))
    got = await predictor.take(len(caps))
    limits = Limits.model_validate(LIMITS)
    counts = {f"r{i}": admission_tokens(limits, "openai", "chat", MODEL, json.loads(item.input_json))
              for i, item in enumerate(items)}
    by_item = {a.item_id: a for a in got}
    listed = await client.api.ListItems(pb.ListItemsRequest(tenant="tok-a", job_id=got[0].job_id))
    for item in listed.items:
        assert GrantId.decode(by_item[item.id].grant_id).tokens == counts[item.ref]
    # The budget holds the sum of the items' own counts, not the round's largest for each.
    stats = {b.name: b for b in (await client.app.budgets.stats()).budgets}[f"openai:{MODEL}"]
    assert stats.tokens_last_minute == sum(counts.values())


async def test_an_item_that_can_never_fit_the_token_limit_is_refused(client: Client) -> None:
    await client.tenant("tok-b", weight=1)
    items = [pb.ItemInput(ref="ok", input_json=chat("fine", max_tokens=10)),
             pb.ItemInput(ref="big", input_json=chat("too much", max_tokens=5_000))]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.api.SubmitJob(pb.SubmitJobRequest(tenant="tok-b", provider="openai", model=MODEL, items=items))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[1].input" in (raised.value.details() or "")
    jobs = await client.api.ListJobs(pb.ListJobsRequest(tenant="tok-b"))
    assert not jobs.jobs
