"""The gateway calls the scheduler with its own token and names whom each call is for."""

from __future__ import annotations

import httpx
from fairway.scheduler.v1 import scheduler_pb2

from services.common.auth import ADMIN as ADMIN_PRINCIPAL
from services.common.auth import Principal
from tests.gateway.conftest import ADMIN, client_of, settings_for, tenant
from tests.gateway.fakes import Fakes

T2 = Principal(admin=False, tenant="t2")


async def test_each_scheduler_call_names_the_key_it_was_made_for(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("GetJob", scheduler_pb2.Job(id="job-1", tenant="t2"))
    await client.get("/v1/jobs/job-1", headers=tenant("t2"))
    await client.get("/v1/jobs/job-1", headers=ADMIN)
    await client.get("/v1/jobs/job-1/items", headers=tenant("t2"))
    await client.post("/v1/jobs/job-1/cancel", headers=tenant("t2"))
    await client.get("/v1/jobs/job-1/events", headers=tenant("t2"))
    await client.get("/v1/jobs", headers=tenant("t2"))
    await client.get("/v1/tenants/me", headers=tenant("t2"))
    await client.post("/v1/tenants", json={"id": "t3"}, headers=ADMIN)
    await client.post("/v1/tenants/t3/credits", json={"amount": 5}, headers=ADMIN)
    await client.patch("/v1/tenants/t3", json={"weight": 2}, headers=ADMIN)
    await client.get("/v1/stats/queue", headers=ADMIN)
    s = fakes.scheduler
    assert s.principals("GetJob") == [T2, ADMIN_PRINCIPAL, T2]  # the last one before the event stream
    for method in ("ListItems", "CancelJob", "WatchJob", "ListJobs", "GetTenant"):
        assert s.principals(method) == [T2], method
    for method in ("CreateTenant", "AddCredits", "UpdateTenant", "GetQueueStats"):
        assert s.principals(method) == [ADMIN_PRINCIPAL], method


async def test_a_gateway_whose_token_is_refused_answers_502_not_401(fakes: Fakes) -> None:
    async for c in client_of(settings_for(fakes.address, fakes.address, service_token="not-accepted")):
        r = await c.get("/v1/jobs", headers=tenant("t1"))  # the key's check is refused, not the key
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
        r = await c.get("/v1/stats/queue", headers=ADMIN)
        assert r.status_code == 502
    assert not fakes.scheduler.calls("Authenticate") and not fakes.scheduler.calls("GetQueueStats")
