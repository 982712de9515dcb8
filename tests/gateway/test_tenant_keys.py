"""The operator lists tenants a page at a time and rotates a tenant's key; the old key is refused
at once, though the gateway had it cached."""

from __future__ import annotations

import grpc
import httpx
from fairway.scheduler.v1 import scheduler_pb2

from tests.gateway.conftest import ADMIN, tenant
from tests.gateway.fakes import Abort, Fakes, tenant_of_key


async def test_list_and_rotate_are_admin_only(client: httpx.AsyncClient, fakes: Fakes) -> None:
    listed = await client.get("/v1/tenants", headers=tenant("t1"))
    rotated = await client.post("/v1/tenants/t1/rotate-key", headers=tenant("t1"))
    assert (listed.status_code, rotated.status_code) == (403, 403)
    assert listed.json()["error"]["code"] == "forbidden"
    assert not fakes.scheduler.calls("ListTenants") and not fakes.scheduler.calls("RotateKey")


async def test_list_pages_through_next(client: httpx.AsyncClient, fakes: Fakes) -> None:
    page = [scheduler_pb2.Tenant(id=f"t{i}", weight=1, max_queued=10, queued=i) for i in (1, 2)]
    fakes.scheduler.reply("ListTenants", scheduler_pb2.ListTenantsResponse(tenants=page, next="t2"))
    first = await client.get("/v1/tenants", params={"limit": 2}, headers=ADMIN)
    assert first.status_code == 200, first.text
    body = first.json()
    assert [t["id"] for t in body["tenants"]] == ["t1", "t2"] and body["next"] == "t2"
    assert body["tenants"][1] == {"id": "t2", "weight": 1.0, "max_concurrency": None, "max_queued": 10,
                                  "credits": None, "queued": 2, "processing": 0}
    fakes.scheduler.reply("ListTenants", scheduler_pb2.ListTenantsResponse())
    last = await client.get("/v1/tenants", params={"limit": 2, "after": body["next"]}, headers=ADMIN)
    assert last.json() == {"tenants": [], "next": None}
    assert (await client.get("/v1/tenants", params={"limit": "", "after": ""}, headers=ADMIN)).status_code == 200
    sent = fakes.scheduler.calls("ListTenants")
    assert [(r.limit, r.after) for r in sent] == [(2, ""), (2, "t2"), (100, "")]
    for limit in (0, 1001):
        refused = await client.get("/v1/tenants", params={"limit": limit}, headers=ADMIN)
        assert refused.status_code == 422 and refused.json()["error"]["message"].startswith("limit")


async def test_rotate_answers_the_new_key_and_unknown_is_404(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("RotateKey", scheduler_pb2.RotateKeyResponse(api_key="fw_new"))
    rotated = await client.post("/v1/tenants/t1/rotate-key", headers=ADMIN)
    assert (rotated.status_code, rotated.json()) == (200, {"api_key": "fw_new"})
    assert [r.id for r in fakes.scheduler.calls("RotateKey")] == ["t1"]
    fakes.scheduler.reply("RotateKey", Abort(grpc.StatusCode.NOT_FOUND, "tenant 'ghost' does not exist", "not_found"))
    missing = await client.post("/v1/tenants/ghost/rotate-key", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.json()["error"] == {"code": "not_found", "message": "tenant 'ghost' does not exist"}


async def test_a_rotated_key_is_refused_at_once_though_it_was_cached(client: httpx.AsyncClient, fakes: Fakes) -> None:
    for _ in range(2):
        assert (await client.get("/v1/jobs", headers=tenant("rot-a"))).status_code == 200
        assert (await client.get("/v1/jobs", headers=tenant("rot-b"))).status_code == 200
    assert len(fakes.scheduler.calls("Authenticate")) == 2  # each key asked once, then cached

    # From the rotation on, the scheduler knows rot-a's old key no more.
    def without_old_key(request: scheduler_pb2.AuthenticateRequest) -> object:
        if request.api_key == "key-rot-a":
            return Abort(grpc.StatusCode.UNAUTHENTICATED, "unknown key", "unauthorized")
        return tenant_of_key(request)

    fakes.scheduler.reply("Authenticate", without_old_key)
    fakes.scheduler.reply("RotateKey", scheduler_pb2.RotateKeyResponse(api_key="key-rot-a-2"))
    assert (await client.post("/v1/tenants/rot-a/rotate-key", headers=ADMIN)).status_code == 200
    refused = await client.get("/v1/jobs", headers=tenant("rot-a"))
    assert refused.status_code == 401
    assert (await client.get("/v1/jobs", headers={"Authorization": "Bearer key-rot-a-2"})).status_code == 200
    # Another tenant's cached key is left alone.
    assert (await client.get("/v1/jobs", headers=tenant("rot-b"))).status_code == 200
    assert [r.api_key for r in fakes.scheduler.calls("Authenticate")][2:] == ["key-rot-a", "key-rot-a-2"]
