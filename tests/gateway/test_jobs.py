"""Jobs: tenant isolation, idempotency, the JSON shapes rendered from the scheduler's answers."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from fairway.scheduler.v1 import scheduler_pb2

from tests.gateway.conftest import ADMIN, tenant
from tests.gateway.fakes import Fakes

CREATED = datetime(2026, 11, 26, 19, 30, tzinfo=UTC).timestamp() + 0.123


def a_job(**fields: object) -> scheduler_pb2.Job:
    values: dict[str, object] = {
        "id": "job-1",
        "tenant": "t1",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "operation": "chat",
        "status": scheduler_pb2.JOB_PROCESSING,
        "priority": 2,
        "items_total": 3,
        "counts": scheduler_pb2.ItemCounts(pending=1, processing=1, done=1),
        "metadata_json": '{"campaign": "spring"}',
        "created_at": CREATED,
        "updated_at": CREATED + 1,
        **fields,
    }
    return scheduler_pb2.Job(**values)  # type: ignore[arg-type]


CHAT = {
    "provider": "openai",
    "model": "gpt-4o-mini",
    "items": [{"ref": "r1", "input": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}}],
    "metadata": {"campaign": "spring", "batch": 7},
}


async def test_submit_passes_the_callers_tenant_and_renders_the_job(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("SubmitJob", a_job())
    r = await client.post("/v1/jobs", json=CHAT, headers=tenant("t1"))
    assert r.status_code == 201, r.text
    sent = fakes.scheduler.calls("SubmitJob")[0]
    assert sent.tenant == "t1"
    assert (sent.provider, sent.model, sent.operation) == ("openai", "gpt-4o-mini", "chat")
    assert [(i.ref, i.input_json) for i in sent.items] == [
        ("r1", '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}')
    ]
    assert sent.metadata_json == '{"campaign": "spring", "batch": 7}'
    assert sent.idempotency_key == "" and sent.request_hash == ""
    assert r.json() == {
        "id": "job-1",
        "tenant": "t1",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "operation": "chat",
        "status": "PROCESSING",
        "priority": 2,
        "items_total": 3,
        "counts": {"PENDING": 1, "PROCESSING": 1, "DONE": 1, "FAILED": 0, "CANCELED": 0},
        "metadata": {"campaign": "spring"},
        "created_at": "2026-11-26T19:30:00.123Z",
        "updated_at": "2026-11-26T19:30:01.123Z",
        "finished_at": None,
    }


async def test_operation_defaults_per_provider(client: httpx.AsyncClient, fakes: Fakes) -> None:
    replicate = {"provider": "replicate", "model": "google/nano-banana", "items": [{"input": {"prompt": "a"}}]}
    await client.post("/v1/jobs", json=replicate, headers=tenant("t1"))
    await client.post("/v1/jobs", json=CHAT, headers=tenant("t1"))
    assert [c.operation for c in fakes.scheduler.calls("SubmitJob")] == ["prediction", "chat"]


async def test_idempotency_hash_is_stable_under_key_order(client: httpx.AsyncClient, fakes: Fakes) -> None:
    reordered = {
        "metadata": {"batch": 7, "campaign": "spring"},
        "items": [{"input": {"max_tokens": 5, "messages": [{"content": "hi", "role": "user"}]}, "ref": "r1"}],
        "model": "gpt-4o-mini",
        "operation": "chat",
        "provider": "openai",
    }
    changed = {**CHAT, "model": "gpt-4o"}
    for body in (CHAT, reordered, changed):
        r = await client.post("/v1/jobs", json=body, headers={**tenant("t1"), "Idempotency-Key": "order-42"})
        assert r.status_code == 201, r.text
    first, second, third = fakes.scheduler.calls("SubmitJob")
    assert first.idempotency_key == second.idempotency_key == "order-42"
    assert len(first.request_hash) == 64
    assert first.request_hash == second.request_hash
    assert third.request_hash != first.request_hash


async def test_tenant_reads_are_scoped_to_the_tenant(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("GetJob", a_job())
    assert (await client.get("/v1/jobs/job-1", headers=tenant("t2"))).status_code == 200
    assert (await client.get("/v1/jobs/job-1", headers=ADMIN)).status_code == 200
    await client.post("/v1/jobs/job-1/cancel", headers=tenant("t2"))
    await client.get("/v1/jobs", headers=tenant("t2"))
    await client.get("/v1/jobs/job-1/items", headers=tenant("t2"))
    assert [(c.tenant, c.job_id) for c in fakes.scheduler.calls("GetJob")] == [("t2", "job-1"), ("", "job-1")]
    assert fakes.scheduler.calls("CancelJob")[0].tenant == "t2"
    assert fakes.scheduler.calls("ListJobs")[0].tenant == "t2"
    assert fakes.scheduler.calls("ListItems")[0].tenant == "t2"


async def test_positive_authentication_is_cached(client: httpx.AsyncClient, fakes: Fakes) -> None:
    for _ in range(3):
        await client.get("/v1/jobs", headers=tenant("cached"))
    assert len(fakes.scheduler.calls("Authenticate")) == 1
    assert [c.tenant for c in fakes.scheduler.calls("ListJobs")] == ["cached"] * 3


async def test_list_jobs_passes_filters_and_the_cursor(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("ListJobs", scheduler_pb2.ListJobsResponse(jobs=[a_job()], next="2002"))
    r = await client.get("/v1/jobs?status=DONE&limit=10&after=1001", headers=tenant("t1"))
    assert r.status_code == 200, r.text
    assert r.json()["next"] == "2002"
    assert [j["id"] for j in r.json()["jobs"]] == ["job-1"]
    sent = fakes.scheduler.calls("ListJobs")[0]
    assert (sent.status, sent.limit, sent.after) == (scheduler_pb2.JOB_DONE, 10, "1001")

    fakes.scheduler.reply("ListJobs", scheduler_pb2.ListJobsResponse())
    assert (await client.get("/v1/jobs", headers=tenant("t1"))).json() == {"jobs": [], "next": None}
    assert fakes.scheduler.calls("ListJobs")[1].status == scheduler_pb2.JOB_STATUS_UNSPECIFIED


async def test_empty_query_fields_mean_no_filter(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("ListJobs", scheduler_pb2.ListJobsResponse())
    fakes.scheduler.reply("ListItems", scheduler_pb2.ListItemsResponse())
    assert (await client.get("/v1/jobs?status=&limit=&after=", headers=tenant("t1"))).status_code == 200
    assert (await client.get("/v1/jobs/job-1/items?status=&limit=", headers=tenant("t1"))).status_code == 200
    for sent in (fakes.scheduler.calls("ListJobs")[0], fakes.scheduler.calls("ListItems")[0]):
        assert (sent.status, sent.limit, sent.after) == (0, 100, "")
    # A value that is there must still be valid.
    r = await client.get("/v1/jobs?status=done&limit=0", headers=tenant("t1"))
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("status"), r.text
    r = await client.get("/v1/jobs?limit=1001", headers=tenant("t1"))
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("limit"), r.text


async def test_items_render_outputs_and_usage(client: httpx.AsyncClient, fakes: Fakes) -> None:
    done = scheduler_pb2.Item(
        id="i1",
        job_id="job-1",
        ref="r1",
        status=scheduler_pb2.DONE,
        attempts=1,
        output_json='{"text": "hello"}',
        usage_json='{"total_tokens": 12}',
        created_at=CREATED,
        started_at=CREATED + 1,
        finished_at=CREATED + 2,
    )
    pending = scheduler_pb2.Item(id="i2", job_id="job-1", ref="r2", status=scheduler_pb2.PENDING, created_at=CREATED)
    fakes.scheduler.reply("ListItems", scheduler_pb2.ListItemsResponse(items=[done, pending], next=""))
    r = await client.get("/v1/jobs/job-1/items?status=DONE&limit=2", headers=tenant("t1"))
    assert r.status_code == 200, r.text
    sent = fakes.scheduler.calls("ListItems")[0]
    assert (sent.job_id, sent.status, sent.limit) == ("job-1", scheduler_pb2.DONE, 2)
    first, second = r.json()["items"]
    assert first == {
        "id": "i1",
        "job_id": "job-1",
        "ref": "r1",
        "status": "DONE",
        "attempts": 1,
        "output": {"text": "hello"},
        "error": None,
        "usage": {"total_tokens": 12},
        "created_at": "2026-11-26T19:30:00.123Z",
        "started_at": "2026-11-26T19:30:01.123Z",
        "finished_at": "2026-11-26T19:30:02.123Z",
    }
    assert (second["status"], second["output"], second["started_at"]) == ("PENDING", None, None)
    assert r.json()["next"] is None


async def test_cancel_renders_the_canceled_job(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("CancelJob", a_job(status=scheduler_pb2.JOB_CANCELED, finished_at=CREATED + 5))
    r = await client.post("/v1/jobs/job-1/cancel", headers=tenant("t1"))
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["finished_at"]) == ("CANCELED", "2026-11-26T19:30:05.123Z")
