"""Stats shapes, health, readiness, metrics, the status page and the OpenAPI document."""

from __future__ import annotations

import time

import httpx
from fairway.ratelimiter.v1 import ratelimiter_pb2
from fairway.scheduler.v1 import scheduler_pb2

from tests.gateway.conftest import ADMIN, tenant
from tests.gateway.fakes import Fakes


def queue() -> scheduler_pb2.QueueStats:
    return scheduler_pb2.QueueStats(
        tenants=[
            scheduler_pb2.TenantQueue(
                tenant="t1", queued=5, processing=2, oldest_queued_age_s=1.25, dispatched_last_minute=30
            ),
            scheduler_pb2.TenantQueue(tenant="t2", queued=1, processing=0),
        ],
        lanes=[
            scheduler_pb2.LaneQueue(lane="openai:gpt-4o-mini", queued=4, processing=1, tenants=2),
            scheduler_pb2.LaneQueue(lane="replicate:create", queued=2, processing=1, tenants=1),
        ],
    )


async def test_queue_stats_shape(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("GetQueueStats", queue())
    r = await client.get("/v1/stats/queue", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tenants"][0] == {
        "tenant": "t1",
        "queued": 5,
        "processing": 2,
        "oldest_queued_age_s": 1.25,
        "dispatched_last_minute": 30,
    }
    assert body["lanes"] == [
        {"lane": "openai:gpt-4o-mini", "provider": "openai", "model": "gpt-4o-mini", "queued": 4, "processing": 1,
         "tenants": 2},
        {"lane": "replicate:create", "provider": "replicate", "model": None, "queued": 2, "processing": 1,
         "tenants": 1},
    ]
    assert body["totals"] == {"queued": 6, "processing": 2}


async def test_ratelimiter_stats_shape(client: httpx.AsyncClient, fakes: Fakes) -> None:
    now = time.time()
    fakes.ratelimiter.reply(
        "GetStats",
        ratelimiter_pb2.GetStatsResponse(
            timestamp=now,
            budgets=[
                ratelimiter_pb2.BudgetStats(
                    name="replicate:create", limit_rpm=588, requests_last_minute=147, cooldown_until=now + 60
                ),
                ratelimiter_pb2.BudgetStats(
                    name="openai:gpt-4o-mini",
                    limit_rpm=4900,
                    requests_last_minute=49,
                    limit_tpm=1_960_000,
                    tokens_last_minute=9800,
                    rpm_usage_percent=1.0,
                    tpm_usage_percent=0.5,
                ),
            ],
        ),
    )
    fakes.scheduler.reply("GetQueueStats", queue())
    r = await client.get("/v1/stats/ratelimiter", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    assert body["timestamp"].endswith("Z")
    replicate, openai = body["buckets"]
    assert {k: replicate[k] for k in ("name", "limit_rpm", "requests_last_minute", "rpm_usage_percent")} == {
        "name": "replicate:create",
        "limit_rpm": 588.0,
        "requests_last_minute": 147,
        "rpm_usage_percent": 25.0,
    }
    assert replicate["queue_length"] == 2
    assert replicate["cooldown_until"].endswith("Z")
    assert "limit_tpm" not in replicate and "tokens_last_minute" not in replicate
    assert (openai["limit_tpm"], openai["tokens_last_minute"], openai["queue_length"]) == (1_960_000.0, 9800, 4)
    assert "cooldown_until" not in openai
    assert body["health"] == {"queue_healthy": True, "rpm_healthy": False}


async def test_ratelimiter_stats_without_the_scheduler(orphan: httpx.AsyncClient) -> None:
    r = await orphan.get("/v1/stats/ratelimiter", headers=ADMIN)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "unavailable")
    assert "Retry-After" in r.headers


async def test_health_and_readiness(client: httpx.AsyncClient, orphan: httpx.AsyncClient, fakes: Fakes) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert (await orphan.get("/healthz")).status_code == 200
    down = await orphan.get("/readyz")
    assert (down.status_code, down.json()["error"]["code"]) == (503, "unavailable")
    assert "scheduler" in down.json()["error"]["message"]
    assert int(down.headers["Retry-After"]) >= 1


async def test_metrics_count_by_route_template(client: httpx.AsyncClient, fakes: Fakes) -> None:
    await client.get("/v1/jobs/some-job-id", headers=tenant("t1"))
    text = (await client.get("/metrics")).text
    assert 'fairway_gateway_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"}' in text
    assert "fairway_gateway_request_seconds_bucket" in text
    assert "some-job-id" not in text


async def test_status_page_and_openapi(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/v1/stats/queue" in page.text
    spec = (await client.get("/openapi.json")).json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}/events", "/v1/tenants", "/v1/webhooks/replicate"} <= set(spec["paths"])
