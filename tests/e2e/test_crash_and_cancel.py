"""Crashes and cancels on the real stack: no item lost, none paid twice, credits exact."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import asyncpg
import httpx
import pytest

from tests.e2e.stack import E2EStack, all_items, job_events, wait_terminal


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_dsn: str, redis_url: str) -> Iterator[E2EStack]:
    from tests.conftest import fresh_database

    database_url = asyncio.run(fresh_database(postgres_dsn))
    with E2EStack(
        tmp_path_factory.mktemp("e2e-crash"), database_url, redis_url,
        # Predictions long enough to kill a predictor while they run; leases short enough
        # that the test does not wait long for the dead one's to expire.
        emulator={"FAIRWAY_EMULATOR_PREDICTION_SECONDS": "3", "FAIRWAY_EMULATOR_PREDICTION_SIGMA": "0.1"},
        scheduler={"FAIRWAY_LEASE_SECONDS": "2"},
    ) as running:
        yield running


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_predictor_killed_mid_prediction_resumes_without_a_second_create(stack: E2EStack) -> None:
    _, client = stack.create_tenant("store-crash", credits=50)
    n = 8
    job = client.post("/v1/jobs", json={
        "provider": "replicate", "model": "google/nano-banana",
        "items": [{"ref": f"c{i}", "input": {"prompt": f"crash {i}"}} for i in range(n)],
    }).json()
    # Every prediction created upstream, none finished: the predictor is mid-way on all of them.
    _wait_until(lambda: stack.accepted(stack.replicate_token, "replicate.create") == n, "all creates")
    stack.predictors[0].kill()
    stack.start_predictor()

    final = wait_terminal(client, job["id"])
    assert final["status"] == "DONE" and final["counts"]["DONE"] == n
    items = all_items(client, job["id"])
    assert len({repr(i["output"]) for i in items}) == n
    assert stack.accepted(stack.replicate_token, "replicate.create") == n, "a crash must not create twice"
    assert client.get("/v1/tenants/me").json()["credits"] == 50 - n

    rows = {r["kind"]: (r["n"], r["total"]) for r in asyncio.run(ledger(stack, "store-crash"))}
    assert rows["charge"][0] == n, "each DONE item charged exactly once"
    assert "refund" not in rows
    assert rows["grant"][1] + rows["reserve"][1] == 50 - n, "the ledger reconciles with the balance"


def test_scheduler_killed_with_completions_not_yet_counted_loses_nothing(stack: E2EStack) -> None:
    # The scheduler is SIGKILLed while its completions of one job are committed but not yet
    # folded into the job's counters (its folder is held off past the kill), and while the
    # predictions of another job run upstream. A new scheduler process must finish both, each
    # item charged once, and create no prediction twice.
    _restart_scheduler(stack, FAIRWAY_FOLD_DELAY_SECONDS="3600", FAIRWAY_FOLD_SWEEP_SECONDS="3600")
    _, client = stack.create_tenant("store-scheduler-crash", credits=100)
    creates_before = stack.accepted(stack.replicate_token, "replicate.create")
    fast = client.post("/v1/jobs", json={
        "provider": "openai", "model": "gpt-4o-mini",
        "items": [{"ref": f"f{i}", "input": {"messages": [{"role": "user", "content": f"kill {i}"}]}}
                  for i in range(10)],
    }).json()
    _wait_until(lambda: client.get(f"/v1/jobs/{fast['id']}").json()["counts"]["DONE"] == 10, "the completions")
    assert client.get(f"/v1/jobs/{fast['id']}").json()["status"] == "PROCESSING", "the job is not folded yet"
    assert asyncio.run(_fetchval(stack, "SELECT count(*) FROM count_moves")) > 0
    slow = client.post("/v1/jobs", json={
        "provider": "replicate", "model": "google/nano-banana",
        "items": [{"ref": f"s{i}", "input": {"prompt": f"kill {i}"}} for i in range(6)],
    }).json()
    _wait_until(lambda: stack.accepted(stack.replicate_token, "replicate.create") == creates_before + 6, "creates")

    stack.processes["scheduler"].kill()
    _restart_scheduler(stack, FAIRWAY_FOLD_DELAY_SECONDS="0.1", FAIRWAY_FOLD_SWEEP_SECONDS="1")

    for job, n in ((fast, 10), (slow, 6)):
        final = wait_terminal(client, job["id"])
        assert final["status"] == "DONE" and final["counts"]["DONE"] == n, final
        assert len(all_items(client, job["id"])) == n
    assert stack.accepted(stack.replicate_token, "replicate.create") == creates_before + 6, "no second create"
    assert asyncio.run(_fetchval(stack, "SELECT count(*) FROM count_moves")) == 0
    assert client.get("/v1/tenants/me").json()["credits"] == 100 - 16
    rows = {r["kind"]: (r["n"], r["total"]) for r in asyncio.run(ledger(stack, "store-scheduler-crash"))}
    assert rows["charge"][0] == 16, "each DONE item charged exactly once"
    assert "refund" not in rows
    assert rows["grant"][1] + rows["reserve"][1] == 100 - 16, "the ledger reconciles with the balance"


def _restart_scheduler(stack: E2EStack, **env: str) -> None:
    stack.processes["scheduler"].kill()  # SIGKILL, as a crash would
    stack.set_env("scheduler", **env)
    stack.restart("scheduler")
    # The gateway's channel may still be backing off from the dead process (a call meanwhile
    # is answered 503, retry shortly): go on once the gateway reaches the new one.
    _wait_until(lambda: httpx.get(f"{stack.gateway_url}/readyz", timeout=5).status_code == 200,
                "the gateway to reach the new scheduler")


async def ledger(stack: E2EStack, tenant: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        records: list[asyncpg.Record] = await conn.fetch(
            "SELECT kind, count(*) AS n, sum(amount) AS total FROM credit_ledger "
            "WHERE tenant_id = $1 GROUP BY kind ORDER BY kind", tenant)
        return records
    finally:
        await conn.close()


async def _fetchval(stack: E2EStack, query: str) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


def test_cancel_stops_pending_items_and_refunds_them(stack: E2EStack) -> None:
    _, client = stack.create_tenant("store-cancel", credits=40, max_concurrency=2)
    job = client.post("/v1/jobs", json={
        "provider": "replicate", "model": "google/nano-banana",
        "items": [{"ref": f"x{i}", "input": {"prompt": f"cancel {i}"}} for i in range(20)],
    }).json()
    # Wait for the first item to be dispatched, then cancel: at most 2 are in flight (the cap).
    for event, data in job_events(client, job["id"]):
        if event == "item" and data["status"] == "PROCESSING":
            break
    canceled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert canceled.status_code == 200, canceled.text
    body = canceled.json()
    assert body["status"] == "CANCELED"
    # The items in flight (the cap: at most 2) end as the provider answers their cancel.
    counts = body["counts"]
    assert counts["CANCELED"] + counts["DONE"] + counts["PROCESSING"] == 20
    assert counts["DONE"] + counts["PROCESSING"] <= 2
    final = wait_terminal(client, job["id"])
    assert final["status"] == "CANCELED"
    assert final["counts"]["CANCELED"] + final["counts"]["DONE"] == 20
    done = final["counts"]["DONE"]
    assert client.get("/v1/tenants/me").json()["credits"] == 40 - done
