"""CORS for the origins a setting names, `Allow` on every 405, Retry-After only when waiting helps."""

from __future__ import annotations

import grpc
import httpx
import pytest
from pydantic import ValidationError

from services.gateway.cors import parse_origins
from tests.gateway.conftest import ADMIN, client_of, settings_for, tenant
from tests.gateway.fakes import Abort, Fakes

APP = "https://app.example.com"


def preflight(origin: str, method: str = "POST", headers: str = "authorization, idempotency-key") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


async def test_named_origins_may_call_with_credentials(fakes: Fakes) -> None:
    settings = settings_for(fakes.address, fakes.address, cors_origins=f"{APP}/, http://localhost:3000")
    async for c in client_of(settings):
        r = await c.options("/v1/jobs", headers=preflight(APP))
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == APP
        assert r.headers["access-control-allow-credentials"] == "true"
        allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "idempotency-key", "last-event-id", "content-type"} <= allowed
        assert {"GET", "POST", "PATCH"} <= set(r.headers["access-control-allow-methods"].replace(" ", "").split(","))
        events = await c.options("/v1/jobs/j1/events", headers=preflight(APP, "GET", "authorization, last-event-id"))
        assert events.status_code == 200
        # An answer, an error included, is readable by the page, and so is its Retry-After.
        fakes.scheduler.reply("ListJobs", Abort(grpc.StatusCode.UNAVAILABLE, "down", retry_after_s=3))
        r = await c.get("/v1/jobs", headers={**tenant("t1"), "Origin": APP})
        assert r.status_code == 503 and r.headers["access-control-allow-origin"] == APP
        assert "retry-after" in r.headers["access-control-expose-headers"].lower()
        # Another origin is not let in.
        other = await c.options("/v1/jobs", headers=preflight("https://evil.example"))
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        r = await c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


async def test_a_wildcard_never_goes_with_credentials(fakes: Fakes) -> None:
    async for c in client_of(settings_for(fakes.address, fakes.address, cors_origins="*")):
        r = await c.options("/v1/jobs", headers=preflight("https://anywhere.example"))
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers
        r = await c.get("/healthz", headers={"Origin": "https://anywhere.example"})
        assert r.headers["access-control-allow-origin"] == "*" and "access-control-allow-credentials" not in r.headers


async def test_no_cors_unless_configured(client: httpx.AsyncClient) -> None:
    r = await client.options("/v1/jobs", headers=preflight(APP))
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    r = await client.get("/healthz", headers={"Origin": APP})
    assert "access-control-allow-origin" not in r.headers


def test_origins_are_checked_at_start() -> None:
    assert parse_origins(" https://A.example.com/ ,http://[::1]:8080") == ("https://a.example.com", "http://[::1]:8080")
    assert parse_origins("") == ()
    for bad in ("app.example.com", "https://app.example.com/path", "null", "*, https://a.example", "ftp://x"):
        with pytest.raises(ValueError):
            parse_origins(bad)
    with pytest.raises(ValidationError, match="not an origin"):
        settings_for("127.0.0.1:1", "127.0.0.1:1", cors_origins="https://ok.example,bad")


async def test_allow_names_every_method_of_the_path(client: httpx.AsyncClient, fakes: Fakes) -> None:
    for method, path, allow in (
        ("OPTIONS", "/v1/tenants/t1", "GET, PATCH"),
        ("DELETE", "/v1/tenants/t1", "GET, PATCH"),
        ("PUT", "/v1/jobs", "GET, POST"),
        ("POST", "/v1/jobs/j1", "GET"),
        ("GET", "/v1/webhooks/replicate", "POST"),
        # A fixed path is its own resource: the template /v1/tenants/{tenant_id} does not take it.
        ("PATCH", "/v1/tenants/me", "GET"),
        ("OPTIONS", "/v1/tenants/me", "GET"),
    ):
        r = await client.request(method, path, headers=ADMIN, json={})
        assert r.status_code == 405, (method, path, r.text)
        assert r.headers["allow"] == allow, (method, path)
        assert r.json()["error"]["code"] == "method_not_allowed"
    assert fakes.scheduler.calls("UpdateTenant") == []


async def test_a_job_over_the_queue_limit_gets_no_retry_after(client: httpx.AsyncClient, fakes: Fakes) -> None:
    job = {"provider": "openai", "model": "gpt-4o-mini", "items": [{"input": {"messages": ["hi"]}}]}
    fakes.scheduler.reply(
        "SubmitJob", Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "it can never be queued whole; split it", "queue_full")
    )
    r = await client.post("/v1/jobs", json=job, headers=tenant("t1"))
    assert (r.status_code, r.json()["error"]["code"]) == (429, "queue_full")
    assert "retry-after" not in r.headers
    fakes.scheduler.reply(
        "SubmitJob", Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the queue holds 10 items", "queue_full", 30)
    )
    r = await client.post("/v1/jobs", json=job, headers=tenant("t1"))
    assert (r.status_code, r.headers["retry-after"]) == (429, "30")
