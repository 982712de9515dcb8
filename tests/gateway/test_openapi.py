"""The OpenAPI document says what the server does; /docs works without the internet."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from services.gateway.schemas import INT32_MAX, INT64_MAX
from tests.gateway.conftest import ADMIN, tenant
from tests.gateway.fakes import Fakes

PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("POST", "/v1/webhooks/replicate")}
ERROR_REF = {"$ref": "#/components/schemas/Error"}


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    found: dict[str, Any] = r.json()
    return found


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), path, op) for path, ops in document["paths"].items() for m, op in ops.items()]


async def test_a_bearer_key_is_required_but_where_none_is_taken(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearer": []}]
    for method, path, op in operations(document):
        if (method, path) in PUBLIC:
            assert op["security"] == [], path
        else:
            assert "security" not in op, path  # the document's: a bearer key
            assert {"401", "429", "503"} <= set(op["responses"]), path


async def test_every_error_is_the_envelope(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["Error"]["required"] == ["error"]
    assert schemas["ErrorBody"]["required"] == ["code", "message"]
    for _, path, op in operations(document):
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert response["content"] == {"application/json": {"schema": ERROR_REF}}, (path, status)
                assert response["description"], (path, status)
                if status in ("429", "503"):
                    assert response["headers"]["Retry-After"]["required"] is False


async def test_each_route_lists_the_statuses_it_answers(document: dict[str, Any]) -> None:
    def statuses(method: str, path: str) -> set[int]:
        return {int(s) for s in document["paths"][path][method.lower()]["responses"]}

    assert statuses("POST", "/v1/jobs") == {201, 400, 401, 402, 403, 409, 413, 422, 429, 502, 503}
    assert statuses("POST", "/v1/tenants") >= {201, 400, 401, 403, 409, 413, 422, 429, 502, 503}
    assert statuses("PATCH", "/v1/tenants/{tenant_id}") == {200, 400, 401, 403, 404, 413, 422, 429, 502, 503}
    assert statuses("POST", "/v1/tenants/{tenant_id}/credits") >= {200, 403, 404, 409, 422}
    assert statuses("GET", "/v1/jobs/{job_id}") == {200, 401, 404, 422, 429, 502, 503}
    assert statuses("GET", "/v1/jobs/{job_id}/events") == {200, 401, 404, 422, 429, 502, 503}
    assert statuses("GET", "/v1/stats/queue") == {200, 401, 403, 429, 502, 503}
    assert statuses("GET", "/v1/tenants/me") == {200, 401, 403, 429, 502, 503}
    assert statuses("GET", "/healthz") == {200}
    assert statuses("GET", "/readyz") == {200, 503}
    assert statuses("POST", "/v1/webhooks/replicate") == {200, 400, 401, 413, 422, 502, 503}
    events = document["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]


async def test_fields_are_nullable_only_where_null_is_taken(document: dict[str, Any]) -> None:
    update = document["components"]["schemas"]["TenantUpdate"]["properties"]
    assert update["weight"]["type"] == "number" and "anyOf" not in update["weight"]
    assert update["max_queued"]["type"] == "integer" and "anyOf" not in update["max_queued"]
    assert {"type": "null"} in update["max_concurrency"]["anyOf"]  # null lifts the cap
    params = {p["name"]: p for p in document["paths"]["/v1/jobs"]["get"]["parameters"]}
    for name in ("status", "limit", "after"):
        assert "null" not in str(params[name]["schema"]), name
    events = document["paths"]["/v1/jobs/{job_id}/events"]["get"]["parameters"]
    assert [p["schema"] for p in events if p["in"] == "header"] == [
        {"type": "string", "pattern": "^[0-9]{0,18}$", "title": "Last-Event-Id"}
    ]


async def test_whole_numbers_keep_their_exact_bounds(document: dict[str, Any]) -> None:
    create = document["components"]["schemas"]["TenantCreate"]["properties"]
    assert create["max_queued"]["anyOf"][0] == {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
    assert create["credits"]["anyOf"][0]["minimum"] == 0  # the scheduler refuses a negative balance
    assert create["max_concurrency"]["anyOf"][0]["maximum"] == INT32_MAX
    amount = document["components"]["schemas"]["CreditsAdd"]["properties"]["amount"]
    assert (amount["minimum"], amount["maximum"], amount["not"]) == (-INT64_MAX, INT64_MAX, {"const": 0})
    text = str(document)
    assert "9.223372036854776e+18" not in text and "2147483647.0" not in text


async def test_the_job_body_has_one_variant_per_operation(document: dict[str, Any]) -> None:
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    variants = {v["title"]: v for v in body["oneOf"]}
    assert set(variants) == {"replicate prediction", "openai chat", "openai response", "openai image"}
    chat = variants["openai chat"]["properties"]
    assert chat["items"]["items"]["properties"]["input"]["required"] == ["messages"]
    assert re.fullmatch(variants["replicate prediction"]["properties"]["model"]["pattern"].strip("^$"), "acme/x:1")
    assert document["components"]["schemas"]["JsonObject"]["additionalProperties"] == {
        "$ref": "#/components/schemas/JsonValue"
    }


async def test_whole_numbers_written_with_a_point_are_taken(client: httpx.AsyncClient, fakes: Fakes) -> None:
    r = await client.post("/v1/tenants", json={"id": "t5", "max_queued": 5.0, "credits": 7.0}, headers=ADMIN)
    assert r.status_code == 201, r.text
    sent = fakes.scheduler.calls("CreateTenant")[0]
    assert (sent.max_queued, sent.credits) == (5, 7)
    body = {"provider": "openai", "model": "gpt-4o-mini", "priority": 2.0,
            "items": [{"input": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8.0}}]}
    r = await client.post("/v1/jobs", json=body, headers=tenant("t5"))
    assert r.status_code == 201, r.text
    submitted = fakes.scheduler.calls("SubmitJob")[0]
    assert submitted.priority == 2 and '"max_tokens": 8}' in submitted.items[0].input_json
    for bad in ({"id": "t6", "max_queued": 5.5}, {"id": "t6", "credits": -1}, {"id": "t6", "credits": True}):
        assert (await client.post("/v1/tenants", json=bad, headers=ADMIN)).status_code == 422, bad
    assert (await client.post("/v1/tenants/t5/credits", json={"amount": 0}, headers=ADMIN)).status_code == 422


async def test_a_blank_image_prompt_is_refused_as_the_schema_says(client: httpx.AsyncClient, fakes: Fakes) -> None:
    def job(prompt: str) -> dict[str, Any]:
        item = {"input": {"prompt": prompt}}
        return {"provider": "openai", "model": "dall-e-3", "operation": "image", "items": [item]}

    assert (await client.post("/v1/jobs", json=job(" \t\n"), headers=tenant("t1"))).status_code == 422
    assert (await client.post("/v1/jobs", json=job(" a "), headers=tenant("t1"))).status_code == 201


async def test_a_nul_only_matters_in_the_parameters_a_route_reads(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz?ignored=%00")).status_code == 200
    r = await client.get("/v1/jobs/a%00b", headers=tenant("t1"))
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("job_id: ")


async def test_docs_are_served_from_the_gateway_itself(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
    assert urls and all(u.startswith("/docs/swagger-ui-") for u in urls), urls
    # Nothing from elsewhere: no absolute URL, and no validator badge (an image from swagger.io).
    assert "//" not in page.text.replace("<!--", "") and '"validatorUrl": null' in page.text
    for url in urls:
        asset = await client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
        assert "immutable" in asset.headers["cache-control"]
    js = next(u for u in urls if u.endswith(".js"))
    assert (await client.get(js.rsplit("/", 1)[0] + "/index.html")).status_code == 404
    assert (await client.get("/docs/oauth2-redirect")).status_code == 404
