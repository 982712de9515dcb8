"""Tenants: the operator creates and tunes them; a tenant reads itself."""

from __future__ import annotations

import httpx
from fairway.scheduler.v1 import scheduler_pb2

from tests.gateway.conftest import ADMIN, tenant
from tests.gateway.fakes import Fakes


async def test_create_answers_201_with_the_api_key(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply(
        "CreateTenant", scheduler_pb2.Tenant(id="store-a", weight=2, max_queued=100000, api_key="fw_secret")
    )
    r = await client.post(
        "/v1/tenants", json={"id": "store-a", "weight": 2, "max_concurrency": None, "credits": None}, headers=ADMIN
    )
    assert r.status_code == 201, r.text
    assert r.json() == {
        "id": "store-a",
        "api_key": "fw_secret",
        "weight": 2.0,
        "max_concurrency": None,
        "max_queued": 100000,
        "credits": None,
        "queued": 0,
        "processing": 0,
    }
    sent = fakes.scheduler.calls("CreateTenant")[0]
    assert (sent.id, sent.weight) == ("store-a", 2.0)
    assert not sent.HasField("max_concurrency") and not sent.HasField("credits")
    assert not sent.HasField("max_queued")


async def test_create_passes_limits_and_credits(client: httpx.AsyncClient, fakes: Fakes) -> None:
    body = {"id": "b", "weight": 0.5, "max_concurrency": 4, "max_queued": 10, "credits": 500}
    assert (await client.post("/v1/tenants", json=body, headers=ADMIN)).status_code == 201
    sent = fakes.scheduler.calls("CreateTenant")[0]
    assert (sent.max_concurrency, sent.max_queued, sent.credits) == (4, 10, 500)


async def test_weight_must_be_positive(client: httpx.AsyncClient, fakes: Fakes) -> None:
    r = await client.post("/v1/tenants", json={"id": "c", "weight": 0}, headers=ADMIN)
    assert r.status_code == 422
    assert r.json()["error"]["message"].startswith("weight: ")


async def test_me_and_own_id_read_the_callers_tenant(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply(
        "GetTenant", scheduler_pb2.Tenant(id="t1", weight=1, credits=40, queued=3, processing=2, max_concurrency=8)
    )
    me = await client.get("/v1/tenants/me", headers=tenant("t1"))
    assert me.status_code == 200, me.text
    assert me.json() == {
        "id": "t1",
        "weight": 1.0,
        "max_concurrency": 8,
        "max_queued": 0,
        "credits": 40,
        "queued": 3,
        "processing": 2,
    }
    assert (await client.get("/v1/tenants/t1", headers=tenant("t1"))).status_code == 200
    assert (await client.get("/v1/tenants/t1", headers=ADMIN)).status_code == 200
    assert [c.id for c in fakes.scheduler.calls("GetTenant")] == ["t1", "t1", "t1"]
    assert (await client.get("/v1/tenants/me", headers=ADMIN)).status_code == 403


async def test_patch_sets_and_clears(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("UpdateTenant", scheduler_pb2.Tenant(id="t1", weight=3))
    r = await client.patch("/v1/tenants/t1", json={"weight": 3, "max_concurrency": None}, headers=ADMIN)
    assert r.status_code == 200, r.text
    sent = fakes.scheduler.calls("UpdateTenant")[0]
    assert (sent.id, sent.weight, sent.clear_max_concurrency) == ("t1", 3.0, True)
    assert not sent.HasField("max_queued")
    await client.patch("/v1/tenants/t1", json={"max_queued": 50}, headers=ADMIN)
    sent = fakes.scheduler.calls("UpdateTenant")[1]
    assert (sent.max_queued, sent.HasField("weight"), sent.clear_max_concurrency) == (50, False, False)
    assert (await client.patch("/v1/tenants/t1", json={"weight": 1}, headers=tenant("t1"))).status_code == 403


async def test_credits_answer_the_new_balance(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("AddCredits", scheduler_pb2.AddCreditsResponse(credits=540))
    r = await client.post("/v1/tenants/t1/credits", json={"amount": 500}, headers=ADMIN)
    assert (r.status_code, r.json()) == (200, {"credits": 540})
    sent = fakes.scheduler.calls("AddCredits")[0]
    assert (sent.id, sent.amount) == ("t1", 500)
