"""Replicate without webhooks, on the real stack: one create per item, reads timed to find
the prediction finished, cancel reaching the provider, SIGTERM handing items back. Plus
OpenAI on the same stack: compact usage, no 429 served."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from tests.e2e.stack import E2EStack, all_items, wait_terminal
from tests.predictor.support import replicate_counts, run_job, submit, wait_until

SLOW = "acme/slow"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_dsn: str, redis_url: str) -> Iterator[E2EStack]:
    from tests.conftest import fresh_database

    database_url = asyncio.run(fresh_database(postgres_dsn))
    with E2EStack(
        tmp_path_factory.mktemp("predictor-poll"), database_url, redis_url, time_scale=10,
        # A model whose predictions outlive the tests that cancel or interrupt them.
        emulator={"FAIRWAY_EMULATOR_PREDICTION_SECONDS_BY_MODEL": json.dumps({SLOW: 40})},
        scheduler={"FAIRWAY_LEASE_SECONDS": "3"},
        predictor={"FAIRWAY_PREDICTOR_GRACE": "0.5"},
    ) as running:
        yield running


def test_one_create_per_item_and_under_two_reads_on_average(stack: E2EStack) -> None:
    _, client = stack.create_tenant("poll")
    # The first predictions teach the predictor the model's run times.
    run_job(client, 30, "warm")
    before = replicate_counts(stack)
    n = 150
    job, items = run_job(client, n, "measured")
    after = replicate_counts(stack)

    assert job["status"] == "DONE" and job["counts"]["DONE"] == n
    assert len({i["output"] for i in items}) == n
    assert after["create"] - before["create"] == n
    reads = after["get"] - before["get"]
    assert reads / n <= 2.0, f"{reads} reads for {n} items"


def test_cancel_reaches_the_provider(stack: E2EStack) -> None:
    _, client = stack.create_tenant("cancel")
    before = replicate_counts(stack)
    n = 4
    job = submit(client, n, "cancel", model=SLOW)
    wait_until(lambda: replicate_counts(stack)["create"] - before["create"] == n, "the creates")
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    # The predictor learns of the cancel from its next heartbeat and cancels upstream.
    wait_until(lambda: replicate_counts(stack)["predictions_canceled"] - before["predictions_canceled"] == n,
               "the predictions canceled upstream")
    assert wait_terminal(client, job["id"])["status"] == "CANCELED"


def test_sigterm_hands_parked_items_back_and_they_resume_without_a_new_create(stack: E2EStack) -> None:
    _, client = stack.create_tenant("drain")
    before = replicate_counts(stack)
    n = 3
    # Long enough to be interrupted; the emulator's median is in provider seconds (x1/10).
    job = submit(client, n, "drain", model=SLOW)
    wait_until(lambda: replicate_counts(stack)["create"] - before["create"] == n, "the creates")
    old = stack.predictors.pop(0)
    assert old.terminate() == 0
    stack.start_predictor()
    final = wait_terminal(client, job["id"])
    assert final["status"] == "DONE" and final["counts"]["DONE"] == n
    assert replicate_counts(stack)["create"] - before["create"] == n


def test_openai_chat_settles_compact_usage_without_being_throttled(stack: E2EStack) -> None:
    _, client = stack.create_tenant("chat")
    n = 40
    reply = client.post("/v1/jobs", json={
        "provider": "openai", "model": "gpt-4o-mini", "operation": "chat",
        "items": [{"ref": f"q{i}", "input": {"messages": [{"role": "user", "content": f"question {i}"}],
                                             "max_tokens": 16 + 40 * (i % 5)}} for i in range(n)],
    })
    assert reply.status_code == 201, reply.text
    final = wait_terminal(client, reply.json()["id"])
    assert final["status"] == "DONE"
    for item in all_items(client, reply.json()["id"]):
        assert set(item["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        assert item["output"]["content"]
    assert stack.rejected(stack.openai_key) == 0


def test_a_prediction_created_before_a_crash_is_adopted_not_created_again(stack: E2EStack) -> None:
    """The worker died after the provider accepted its creates but before it recorded the ids:
    the items hold only the intent. The next worker finds the predictions and adopts them."""
    stack.predictors.pop(0).stop()
    _, client = stack.create_tenant("orphans")
    n = 3
    job = submit(client, n, "orphan")
    intent_at = time.time()  # recorded just before the creates
    for i in range(n):  # what the dead worker created
        reply = httpx.post(f"{stack.emulator_url}/v1/models/google/nano-banana/predictions",
                           headers={"Authorization": f"Bearer {stack.replicate_token}"},
                           json={"input": {"prompt": f"orphan {i}"}}, timeout=10)
        assert reply.status_code == 201, reply.text
    before = replicate_counts(stack)

    async def record_intents() -> None:
        conn = await asyncpg.connect(stack.database_url)
        try:
            await conn.execute(
                "UPDATE items SET upstream_id = 'creating:' || id || ':' || $2::text WHERE job_id = $1",
                uuid.UUID(job["id"]), f"{intent_at:.3f}")
        finally:
            await conn.close()

    asyncio.run(record_intents())
    stack.start_predictor()
    final = wait_terminal(client, job["id"])
    assert final["status"] == "DONE" and final["counts"]["DONE"] == n
    assert replicate_counts(stack)["create"] == before["create"], "the orphans were adopted, none created again"
