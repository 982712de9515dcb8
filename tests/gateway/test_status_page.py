"""The status page: served without a key and holding no data; `/v1/stats/overview` (admin)
gathers what it shows from the fakes, once a second whoever asks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from fairway.ratelimiter.v1 import ratelimiter_pb2
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.gateway.status import overview
from tests.gateway.conftest import ADMIN, client_of, settings_for, tenant
from tests.gateway.fakes import Abort, Fakes


@pytest.fixture
async def gateway(fakes: Fakes) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway of its own: what the overview remembers does not leak between tests."""
    async for c in client_of(settings_for(fakes.address, fakes.address)):
        yield c


def job(job_id: str, tenant_id: str, *, done: int, failed: int = 0, total: int = 10) -> pb.Job:
    finished = time.time() if done + failed == total else 0.0
    status = pb.JOB_PROCESSING if not finished else (pb.JOB_FAILED if failed else pb.JOB_DONE)
    return pb.Job(
        id=job_id, tenant=tenant_id, provider="replicate", model="acme/fast", status=status, items_total=total,
        counts=pb.ItemCounts(done=done, failed=failed, processing=total - done - failed),
        created_at=time.time() - 30, updated_at=time.time(), finished_at=finished,
    )


def burst_budget(now: float) -> ratelimiter_pb2.BudgetStats:
    """A burst that began 10 s ago at the limit: the last-minute count is still a sixth of it."""
    per_second = [0] * 49 + [10] * 10 + [4]  # the current second last, partly counted
    return ratelimiter_pb2.BudgetStats(
        name="replicate:create", limit_rpm=600, requests_last_minute=sum(per_second),
        rpm_usage_percent=100 * sum(per_second) / 600, requests_by_second=per_second, tokens_by_second=[0] * 60,
    )


async def test_the_page_is_served_without_a_key_and_loads_nothing_from_elsewhere(gateway: httpx.AsyncClient) -> None:
    page = await gateway.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "http://" not in page.text and "https://" not in page.text
    for asset, kind in (("page.js", "text/javascript"), ("charts.js", "text/javascript"), ("page.css", "text/css")):
        got = await gateway.get(f"/status/{asset}")
        assert got.status_code == 200 and got.headers["content-type"].startswith(kind), asset
        assert f"/status/{asset}" in page.text
        assert "http://" not in got.text.replace("http://www.w3.org/2000/svg", "") and "https://" not in got.text
    missing = await gateway.get("/status/../app.py")
    assert missing.status_code == 404
    assert (await gateway.get("/status/secrets.txt")).status_code == 404


async def test_the_overview_is_the_admins_alone(gateway: httpx.AsyncClient) -> None:
    assert (await gateway.get("/v1/stats/overview")).status_code == 401
    assert (await gateway.get("/v1/stats/overview", headers=tenant("t1"))).status_code == 403


async def test_the_overview_gathers_budgets_tenants_jobs_failures_and_predictors(
    gateway: httpx.AsyncClient, fakes: Fakes
) -> None:
    now = time.time()
    fakes.ratelimiter.reply("GetStats", ratelimiter_pb2.GetStatsResponse(timestamp=now, budgets=[burst_budget(now)]))
    fakes.scheduler.reply("GetQueueStats", pb.QueueStats(
        tenants=[pb.TenantQueue(tenant="t1", queued=6, processing=2, dispatched_last_minute=40)],
        lanes=[pb.LaneQueue(lane="replicate:create", queued=6, processing=2, tenants=1)],
        predictors=[pb.Predictor(name="predictor-1", free_slots=3, connected_at=now - 60)],
    ))
    fakes.scheduler.reply("ListTenants", pb.ListTenantsResponse(tenants=[
        pb.Tenant(id="idle", weight=1), pb.Tenant(id="t1", weight=2, credits=950, queued=6, processing=2),
    ]))
    fakes.scheduler.reply("ListJobs", pb.ListJobsResponse(jobs=[job("j1", "t1", done=2, failed=1)]))
    fakes.scheduler.reply("ListItems", pb.ListItemsResponse(items=[
        pb.Item(id="i9", job_id="j1", ref="photo-9", status=pb.FAILED, error="NSFW content detected",
                attempts=1, finished_at=now - 1),
    ]))
    r = await gateway.get("/v1/stats/overview", headers=ADMIN)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["status"] == "ok" and doc["problems"] == []

    (bucket,) = doc["buckets"]
    # The 13.9% of a burst's first seconds: the last minute says 17%, now (the last 10 s) says 100%.
    assert bucket["rpm_usage_percent"] == 17.3
    assert (bucket["requests_last_10s"], bucket["rpm_now"], bucket["rpm_now_percent"]) == (100, 600.0, 100.0)
    chart = doc["charts"]["budgets"]["replicate:create"]["requests"]
    assert len(chart) == doc["charts"]["seconds"] == 300
    assert chart[-10:] == [10] * 10 and chart[-59] == 0 and chart[0] is None  # known for the last minute only

    # The busy tenant first, then the idle ones of the listed page, each with its credits.
    assert doc["tenants"] == [
        {"tenant": "t1", "queued": 6, "processing": 2, "oldest_queued_age_s": 0.0, "dispatched_last_minute": 40,
         "weight": 2.0, "max_concurrency": None, "credits": 950},
        {"tenant": "idle", "queued": 0, "processing": 0, "oldest_queued_age_s": 0.0, "dispatched_last_minute": 0,
         "weight": 1.0, "max_concurrency": None, "credits": None},
    ]
    assert not fakes.scheduler.calls("GetTenant")  # t1 was on the listed page
    assert doc["totals"] == {"queued": 6, "processing": 2, "dispatched_last_minute": 40}
    assert doc["charts"]["dispatch"]["tenants"] == {"t1": [40]}
    (listed,) = doc["jobs"]["list"]
    assert (listed["id"], listed["status"], listed["counts"]["DONE"]) == ("j1", "PROCESSING", 2)
    assert doc["jobs"]["by_status"] == {"PENDING": 0, "PROCESSING": 1, "DONE": 0, "FAILED": 0, "CANCELED": 0}
    (failure,) = doc["failures"]
    assert {k: failure[k] for k in ("tenant", "job_id", "ref", "error")} == {
        "tenant": "t1", "job_id": "j1", "ref": "photo-9", "error": "NSFW content detected",
    }
    assert doc["predictors"][0]["name"] == "predictor-1" and doc["predictors"][0]["free_slots"] == 3

    # Each tenant's jobs are listed on the tenant's index, never across every tenant.
    assert [c.tenant for c in fakes.scheduler.calls("ListJobs")] == ["t1"]
    assert fakes.scheduler.calls("ListItems")[0].status == pb.FAILED


async def test_one_gathering_serves_every_viewer_for_a_second(gateway: httpx.AsyncClient, fakes: Fakes) -> None:
    for _ in range(5):
        assert (await gateway.get("/v1/stats/overview", headers=ADMIN)).status_code == 200
    assert len(fakes.ratelimiter.calls("GetStats")) == 1
    assert len(fakes.scheduler.calls("GetQueueStats")) == 1


async def test_failures_are_read_once_and_the_page_says_what_did_not_answer(
    gateway: httpx.AsyncClient, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(overview, "MIN_INTERVAL_S", 0.0)
    fakes.scheduler.reply("GetQueueStats", pb.QueueStats(tenants=[pb.TenantQueue(tenant="t1", processing=1)]))
    fakes.scheduler.reply("ListJobs", pb.ListJobsResponse(jobs=[job("j1", "t1", done=0, failed=1)]))
    fakes.scheduler.reply("ListItems", pb.ListItemsResponse(items=[pb.Item(id="i1", ref="a", error="boom")]))
    for _ in range(3):
        doc = (await gateway.get("/v1/stats/overview", headers=ADMIN)).json()
    assert len(fakes.scheduler.calls("ListItems")) == 1  # the failed count did not grow
    assert [f["ref"] for f in doc["failures"]] == ["a"]
    fakes.ratelimiter.reply("GetStats", Abort(grpc.StatusCode.UNAVAILABLE, "down"))
    doc = (await gateway.get("/v1/stats/overview", headers=ADMIN)).json()
    assert doc["status"] == "degraded" and "ratelimiter" in doc["problems"][0]
    assert doc["buckets"] == [] and doc["jobs"]["list"][0]["id"] == "j1"
