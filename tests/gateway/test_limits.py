"""Limits on what one request or one tenant may ask of a gateway: items, bodies, request rate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from services.gateway import submission
from services.gateway.ratelimit import TenantRateLimit
from tests.gateway.conftest import ADMIN, client_of, settings_for, tenant
from tests.gateway.fakes import Fakes

JSON = {"Content-Type": "application/json"}


def job(n: int) -> bytes:
    return json.dumps({"provider": "replicate", "model": "a/b", "items": [{"input": {}}] * n}).encode()


async def test_items_over_the_limit_are_refused_while_parsing(
    client: httpx.AsyncClient, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submission, "MAX_ITEMS_PER_JOB", 3)
    r = await client.post("/v1/jobs", content=job(3), headers={**tenant("t1"), **JSON})
    assert r.status_code == 201, r.text
    r = await client.post("/v1/jobs", content=job(4), headers={**tenant("t1"), **JSON})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
    assert r.json()["error"]["message"].startswith("items: at most 3 items per job")
    assert len(fakes.scheduler.calls("SubmitJob")) == 1


async def test_an_item_with_too_many_values_is_refused_naming_it(fakes: Fakes) -> None:
    items = [{"input": {}}, {"input": {"v": [0] * 110_000}}]  # 330 KB: walked, and counted, as it is parsed
    body = json.dumps({"provider": "replicate", "model": "a/b", "items": items}).encode()
    async for c in client_of(settings_for(fakes.address, fakes.address)):
        r = await c.post("/v1/jobs", content=body, headers={**tenant("t1"), **JSON})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request"), r.text
    assert r.json()["error"]["message"].startswith("items[1]: must not hold more than 100000 JSON values")
    assert fakes.scheduler.calls("SubmitJob") == []


async def test_bodies_of_other_endpoints_are_small(fakes: Fakes) -> None:
    # The key is checked only after FastAPI parsed such a body: it must be cheap to parse.
    async for c in client_of(settings_for(fakes.address, fakes.address, max_body_bytes=10 * 1024 * 1024)):
        blob = {"id": "a", "note": "x" * 70_000}
        r = await c.post("/v1/tenants", json=blob, headers=ADMIN)
        assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")
        assert "65536 bytes" in r.json()["error"]["message"]
        r = await c.post("/v1/jobs", content=job(1)[:-1] + b', "metadata": {"x": "' + b"x" * 70_000 + b'"}}',
                         headers={**tenant("t1"), **JSON})
        assert r.status_code == 201, r.text
    assert fakes.scheduler.calls("CreateTenant") == []


async def test_a_nul_in_a_path_or_query_parameter_is_422(client: httpx.AsyncClient, fakes: Fakes) -> None:
    for path, field in (("/v1/tenants/a%00b", "tenant_id"), ("/v1/jobs/j%00/items", "job_id"),
                        ("/v1/jobs?after=c%00", "after")):
        r = await client.get(path, headers=ADMIN)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request"), path
        assert r.json()["error"]["message"].startswith(f"{field}: must not contain the NUL character")
    assert fakes.scheduler.calls("GetTenant") == fakes.scheduler.calls("ListItems") == []
    assert fakes.scheduler.calls("ListJobs") == []


@pytest.fixture
async def limited(fakes: Fakes) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway that lets each tenant make 2 requests at once, then one every 10 s."""
    async for c in client_of(settings_for(fakes.address, fakes.address, tenant_rps=0.1, tenant_burst=2)):
        yield c


async def test_a_tenant_over_its_request_rate_is_429(limited: httpx.AsyncClient, fakes: Fakes) -> None:
    for _ in range(2):
        assert (await limited.get("/v1/jobs", headers=tenant("busy"))).status_code == 200
    r = await limited.get("/v1/jobs", headers=tenant("busy"))
    assert (r.status_code, r.json()["error"]["code"]) == (429, "rate_limited"), r.text
    assert 9 <= int(r.headers["Retry-After"]) <= 10
    assert "busy" in r.json()["error"]["message"]
    # Refused before the body is read or anything is asked of the scheduler.
    r = await limited.post("/v1/jobs", content=job(1), headers={**tenant("busy"), **JSON})
    assert r.status_code == 429
    assert len(fakes.scheduler.calls("ListJobs")) == 2 and fakes.scheduler.calls("SubmitJob") == []
    # Other tenants and the operator are not held back by it.
    assert (await limited.get("/v1/jobs", headers=tenant("calm"))).status_code == 200
    for _ in range(5):
        assert (await limited.get("/v1/jobs", headers=ADMIN)).status_code == 200


def test_the_bucket_refills_at_the_rate() -> None:
    bucket = TenantRateLimit(rate=2.0, burst=3)
    assert [bucket.wait_s("t", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.wait_s("t", 100.0) == pytest.approx(0.5)
    assert bucket.wait_s("t", 100.5) == 0.0  # one token back after 1/rate s
    assert bucket.wait_s("t", 100.5) > 0
    assert [bucket.wait_s("t", 200.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # never more than the burst
    assert bucket.wait_s("t", 200.0) > 0
    assert TenantRateLimit(rate=0, burst=1).wait_s("t", 0.0) == 0.0  # 0: no limit
