"""A job canceled with its items in flight, on the real stack at provider speed: every call
is canceled upstream at once (pushed to the predictor, not learned at its next heartbeat),
and the provider's answer decides each item's end and charge."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from tests.e2e.stack import E2EStack, all_items, wait_terminal
from tests.predictor.support import replicate_counts, submit, wait_until

SLOW = "google/nano-banana"  # runs 30 s at the provider
QUICK = "acme/quick"  # done within a second


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_dsn: str, redis_url: str) -> Iterator[E2EStack]:
    from tests.conftest import fresh_database

    database_url = asyncio.run(fresh_database(postgres_dsn))
    with E2EStack(
        tmp_path_factory.mktemp("e2e-cancel"), database_url, redis_url, time_scale=1,
        emulator={
            "FAIRWAY_EMULATOR_PREDICTION_SECONDS": "30", "FAIRWAY_EMULATOR_PREDICTION_SIGMA": "0.1",
            "FAIRWAY_EMULATOR_PREDICTION_SECONDS_BY_MODEL": json.dumps({QUICK: 0.2}),
            "FAIRWAY_EMULATOR_OPENAI_SECONDS": "30",
        },
        # Heartbeats every 40 s: a cancel that reaches the provider within seconds was pushed.
        scheduler={"FAIRWAY_LEASE_SECONDS": "120"},
        # No webhooks, and a first read a minute after the create: the predictor learns how a
        # prediction ended only from the answer to its cancel.
        predictor={"FAIRWAY_POLL_INITIAL_SECONDS": "60", "FAIRWAY_POLL_MAX_SECONDS": "60"},
    ) as running:
        yield running
        # The emulator serves an aborted OpenAI request to its end, 30 s after it arrived, and
        # its SIGTERM waits for that: it has nothing left to keep, so it is killed instead.
        running.processes["emulator"].kill()


def _cancel(client: Any, job_id: str) -> dict[str, Any]:
    reply = client.post(f"/v1/jobs/{job_id}/cancel")
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    assert body["status"] == "CANCELED", body
    return body


def _ledger(stack: E2EStack, tenant: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        conn = await asyncpg.connect(stack.database_url)
        try:
            rows = await conn.fetch("SELECT kind, count(*) AS n FROM credit_ledger WHERE tenant_id = $1 GROUP BY kind",
                                    tenant)
            return {r["kind"]: int(r["n"]) for r in rows}
        finally:
            await conn.close()

    return asyncio.run(read())


def test_every_prediction_in_flight_is_canceled_upstream_within_two_seconds_and_refunded(stack: E2EStack) -> None:
    _, client = stack.create_tenant("cancel-flight", credits=100)
    n = 48
    before = replicate_counts(stack)
    job = submit(client, n, "flight", model=SLOW)
    wait_until(lambda: replicate_counts(stack)["create"] - before["create"] == n, "every prediction created")

    asked_at = time.time()
    body = _cancel(client, job["id"])
    assert body["counts"]["PROCESSING"] == n, "in flight until the provider answers each cancel"
    wait_until(lambda: replicate_counts(stack)["cancel"] - before["cancel"] == n, "the cancels", timeout_s=10)

    cancels = stack.emulator_stats()["keys"][stack.replicate_token]["replicate.cancel"]
    assert cancels["accepted"] - before["cancel"] == n and cancels["rejected"] == 0, cancels
    seconds = [second for second, accepted, _ in cancels["per_second"] if accepted]
    assert math.floor(asked_at) <= min(seconds) and max(seconds) <= asked_at + 2, (asked_at, cancels["per_second"])

    final = wait_terminal(client, job["id"])
    assert final["status"] == "CANCELED" and final["counts"]["CANCELED"] == n, final
    assert {item["status"] for item in all_items(client, job["id"])} == {"CANCELED"}
    after = replicate_counts(stack)
    assert after["predictions_canceled"] - before.get("predictions_canceled", 0) == n
    assert after["create"] - before["create"] == n and after["get"] == before["get"]
    assert client.get("/v1/tenants/me").json()["credits"] == 100, "no canceled item is charged"
    assert _ledger(stack, "cancel-flight") == {"grant": 1, "reserve": 1, "refund": n}


def test_a_prediction_that_had_succeeded_when_the_cancel_came_ends_done_and_charged(stack: E2EStack) -> None:
    _, client = stack.create_tenant("cancel-late", credits=10)
    before = replicate_counts(stack)
    job = submit(client, 1, "late", model=QUICK)
    # Finished at the provider; the predictor's first read is a minute away.
    wait_until(lambda: replicate_counts(stack)["predictions_succeeded"] - before["predictions_succeeded"] == 1,
               "the prediction to succeed")
    assert client.get(f"/v1/jobs/{job['id']}").json()["counts"]["PROCESSING"] == 1

    _cancel(client, job["id"])
    final = wait_terminal(client, job["id"])
    assert final["status"] == "CANCELED" and final["counts"]["DONE"] == 1, final
    (item,) = all_items(client, job["id"])
    assert item["status"] == "DONE" and item["output"], item
    after = replicate_counts(stack)
    assert after["cancel"] - before["cancel"] == 1, "the cancel's answer said it had succeeded"
    assert after["get"] == before["get"]
    assert client.get("/v1/tenants/me").json()["credits"] == 9, "the provider charged for it: so is the tenant"
    assert _ledger(stack, "cancel-late") == {"grant": 1, "reserve": 1, "charge": 1}


def test_an_openai_request_aborted_mid_way_is_canceled_and_refunded(stack: E2EStack) -> None:
    _, client = stack.create_tenant("cancel-openai", credits=10)
    n = 3
    accepted = stack.accepted(stack.openai_key, "openai.chat.completions")
    reply = client.post("/v1/jobs", json={
        "provider": "openai", "model": "gpt-4o-mini",
        "items": [{"ref": f"o{i}", "input": {"messages": [{"role": "user", "content": f"abort {i}"}], "max_tokens": 16}}
                  for i in range(n)],
    })
    assert reply.status_code == 201, reply.text
    job = reply.json()
    # Every request is at the provider, which answers 30 s after it arrived.
    wait_until(lambda: stack.accepted(stack.openai_key, "openai.chat.completions") - accepted == n, "the requests")

    asked = time.monotonic()
    assert _cancel(client, job["id"])["counts"]["PROCESSING"] == n, "in flight until the predictor says how they ended"
    final = wait_terminal(client, job["id"])
    assert time.monotonic() - asked < 5, "the requests were aborted, not waited out"
    assert final["status"] == "CANCELED" and final["counts"]["CANCELED"] == n, final
    items = all_items(client, job["id"])
    assert {item["status"] for item in items} == {"CANCELED"}
    assert all("aborted before the provider answered" in item["error"] for item in items), items
    assert client.get("/v1/tenants/me").json()["credits"] == 10
    assert _ledger(stack, "cancel-openai") == {"grant": 1, "reserve": 1, "refund": n}
