"""One job per provider flows gateway -> scheduler -> ratelimiter -> predictor -> emulator and back,
every service a separate process, driven over HTTP only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import E2EStack, all_items, job_events, wait_terminal


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_dsn: str, redis_url: str) -> Iterator[E2EStack]:
    import asyncio

    from tests.conftest import fresh_database

    database_url = asyncio.run(fresh_database(postgres_dsn))
    with E2EStack(tmp_path_factory.mktemp("e2e"), database_url, redis_url, time_scale=20.0) as running:
        yield running


def test_replicate_and_openai_jobs_finish_with_each_items_own_output(stack: E2EStack) -> None:
    tenant, client = stack.create_tenant("store-a", weight=1, credits=100)
    replicate_job = client.post("/v1/jobs", json={
        "provider": "replicate", "model": "google/nano-banana",
        "items": [{"ref": f"img-{i}", "input": {"prompt": f"a product photo #{i}"}} for i in range(10)],
    })
    assert replicate_job.status_code == 201, replicate_job.text
    openai_job = client.post("/v1/jobs", json={
        "provider": "openai", "model": "gpt-4o-mini",
        "items": [{"ref": f"post-{i}", "input": {"messages": [{"role": "user", "content": f"post {i}"}],
                                                 "max_tokens": 40}} for i in range(10)],
    })
    assert openai_job.status_code == 201, openai_job.text

    for job in (replicate_job.json(), openai_job.json()):
        final = wait_terminal(client, job["id"])
        assert final["status"] == "DONE"
        assert final["counts"]["DONE"] == 10
        items = all_items(client, job["id"])
        assert sorted(i["ref"] for i in items) == sorted(f"{p}-{n}" for p in ("img", "post") for n in range(10)
                                                         if f"{p}-{n}".startswith(items[0]["ref"][:3]))
        outputs = [repr(i["output"]) for i in items]
        assert all(i["status"] == "DONE" and i["output"] for i in items)
        assert len(set(outputs)) == 10, "every item got its own output"

    # Exactly one upstream call per item, and the emulator never had to refuse one.
    assert stack.accepted(stack.replicate_token, "replicate.create") == 10
    assert stack.accepted(stack.openai_key, "openai.chat.completions") == 10
    assert stack.rejected(stack.replicate_token) == 0
    assert stack.rejected(stack.openai_key) == 0
    # Credits: reserved at submit, charged once per DONE item.
    me = client.get("/v1/tenants/me").json()
    assert me["credits"] == 100 - 20
    assert tenant["credits"] == 100


def test_events_stream_resumes_after_last_event_id(stack: E2EStack) -> None:
    _, client = stack.create_tenant("store-resume")
    job = client.post("/v1/jobs", json={
        "provider": "openai", "model": "gpt-4o-mini",
        "items": [{"ref": f"r{i}", "input": {"messages": [{"role": "user", "content": str(i)}]}} for i in range(3)],
    }).json()
    wait_terminal(client, job["id"])
    events = list(job_events(client, job["id"]))
    item_events = [(e, d) for e, d in events if e == "item"]
    # Every item's history: PENDING -> PROCESSING -> DONE is folded into its latest change.
    assert {d["status"] for _, d in item_events} == {"DONE"}
    assert events[-1][0] == "job" and events[-1][1]["status"] == "DONE"


def test_bad_input_is_refused_and_changes_nothing(stack: E2EStack, tmp_path: Path) -> None:
    _, client = stack.create_tenant("store-strict", credits=5)
    too_big = client.post("/v1/jobs", json={
        "provider": "openai", "model": "gpt-4o-mini",
        "items": [{"ref": str(i), "input": {"messages": [{"role": "user", "content": "x"}]}} for i in range(6)],
    })
    assert too_big.status_code == 402
    assert too_big.json()["error"]["code"] == "insufficient_credits"
    no_messages = client.post("/v1/jobs", json={"provider": "openai", "model": "gpt-4o-mini",
                                                 "items": [{"ref": "a", "input": {}}]})
    assert no_messages.status_code == 422
    assert "messages" in no_messages.json()["error"]["message"]
    assert client.get("/v1/jobs").json()["jobs"] == []
    assert client.get("/v1/tenants/me").json()["credits"] == 5
