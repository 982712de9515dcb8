"""Every error answer has the envelope and the status the contract names."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import httpx
from fairway.scheduler.v1 import scheduler_pb2

from tests.gateway.conftest import ADMIN, MAX_BODY_BYTES, tenant
from tests.gateway.fakes import Abort, Fakes

JOB = {"provider": "replicate", "model": "google/nano-banana", "items": [{"ref": "a", "input": {"prompt": "x"}}]}


def envelope(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    return str(message)


async def test_malformed_json_is_400(client: httpx.AsyncClient, fakes: Fakes) -> None:
    r = await client.post(
        "/v1/jobs", content=b'{"provider": ', headers={**tenant("t1"), "Content-Type": "application/json"}
    )
    envelope(r, 400, "invalid_json")
    assert fakes.scheduler.calls("SubmitJob") == []


async def test_body_that_is_not_json_is_400(client: httpx.AsyncClient, fakes: Fakes) -> None:
    r = await client.post(
        "/v1/jobs", content=b"provider=openai", headers={**tenant("t1"), "Content-Type": "text/plain"}
    )
    envelope(r, 400, "invalid_json")


async def test_nan_and_infinity_in_a_job_are_400(client: httpx.AsyncClient, fakes: Fakes) -> None:
    headers = {**tenant("t1"), "Content-Type": "application/json"}
    for body in (
        b'{"provider": "replicate", "model": "a/b", "items": [{"ref": "a", "input": {"strength": NaN}}]}',
        b'{"provider": "replicate", "model": "a/b", "items": [{"input": {}}], "metadata": {"x": -Infinity}}',
    ):
        envelope(await client.post("/v1/jobs", content=body, headers=headers), 400, "invalid_json")
    assert fakes.scheduler.calls("SubmitJob") == []


async def test_numbers_the_scheduler_cannot_hold_are_422(client: httpx.AsyncClient, fakes: Fakes) -> None:
    headers = {**ADMIN, "Content-Type": "application/json"}
    for method, path, body in (
        ("POST", "/v1/tenants", b'{"id": "a", "credits": 100000000000000000000}'),
        ("POST", "/v1/tenants", b'{"id": "a", "max_queued": 18446744073709551616}'),
        ("POST", "/v1/tenants", b'{"id": "a", "weight": Infinity}'),
        ("PATCH", "/v1/tenants/a", b'{"max_queued": 9223372036854775808}'),
        ("POST", "/v1/tenants/a/credits", b'{"amount": -100000000000000000000}'),
    ):
        message = envelope(await client.request(method, path, content=body, headers=headers), 422, "invalid_request")
        assert message.split(":")[0] in ("credits", "max_queued", "weight", "amount"), message
    assert fakes.scheduler.calls("CreateTenant") == fakes.scheduler.calls("UpdateTenant") == []
    assert fakes.scheduler.calls("AddCredits") == []


async def test_empty_body_is_400(client: httpx.AsyncClient, fakes: Fakes) -> None:
    envelope(await client.post("/v1/tenants", headers=ADMIN), 400, "invalid_json")
    assert fakes.scheduler.calls("CreateTenant") == []


async def test_missing_and_unknown_keys_are_401(client: httpx.AsyncClient, fakes: Fakes) -> None:
    envelope(await client.get("/v1/jobs"), 401, "unauthorized")
    envelope(await client.get("/v1/jobs", headers={"Authorization": "Basic abc"}), 401, "unauthorized")
    envelope(await client.get("/v1/jobs", headers={"Authorization": "Bearer nobody"}), 401, "unauthorized")
    assert [c.api_key for c in fakes.scheduler.calls("Authenticate")] == ["nobody"]


async def test_admin_only_is_403_for_a_tenant(client: httpx.AsyncClient, fakes: Fakes) -> None:
    envelope(await client.get("/v1/stats/queue", headers=tenant("t1")), 403, "forbidden")
    envelope(await client.post("/v1/tenants", json={"id": "x"}, headers=tenant("t1")), 403, "forbidden")
    assert fakes.scheduler.calls("GetQueueStats") == []


async def test_another_tenant_is_404_for_a_tenant_key(client: httpx.AsyncClient, fakes: Fakes) -> None:
    # As for an unknown one: a tenant key does not learn which other tenants exist.
    envelope(await client.get("/v1/tenants/t2", headers=tenant("t1")), 404, "not_found")
    assert fakes.scheduler.calls("GetTenant") == []


async def test_submitting_with_the_admin_key_is_403(client: httpx.AsyncClient, fakes: Fakes) -> None:
    envelope(await client.post("/v1/jobs", json=JOB, headers=ADMIN), 403, "forbidden")
    assert fakes.scheduler.calls("SubmitJob") == []


async def test_unknown_job_and_route_are_404(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("GetJob", Abort(grpc.StatusCode.NOT_FOUND, "job nope not found"))
    message = envelope(await client.get("/v1/jobs/nope", headers=tenant("t1")), 404, "not_found")
    assert "nope" in message
    envelope(await client.get("/v1/nothing-here", headers=tenant("t1")), 404, "not_found")


async def test_reused_idempotency_key_is_409(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply(
        "SubmitJob",
        Abort(grpc.StatusCode.ALREADY_EXISTS, "Idempotency-Key k1 was used with another body", "idempotency_conflict"),
    )
    r = await client.post("/v1/jobs", json=JOB, headers={**tenant("t1"), "Idempotency-Key": "k1"})
    envelope(r, 409, "idempotency_conflict")


async def test_existing_tenant_is_409(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("CreateTenant", Abort(grpc.StatusCode.ALREADY_EXISTS, "tenant a exists", "tenant_exists"))
    envelope(await client.post("/v1/tenants", json={"id": "a"}, headers=ADMIN), 409, "tenant_exists")


async def test_declared_body_over_the_limit_is_413(client: httpx.AsyncClient, fakes: Fakes) -> None:
    big = {**JOB, "metadata": {"blob": "x" * MAX_BODY_BYTES}}
    envelope(await client.post("/v1/jobs", json=big, headers=tenant("t1")), 413, "body_too_large")
    assert fakes.scheduler.calls("SubmitJob") == []


async def test_streamed_body_over_the_limit_is_413(client: httpx.AsyncClient, fakes: Fakes) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"provider": "replicate", "metadata": {"blob": "'
        for _ in range(4):
            yield b"x" * (MAX_BODY_BYTES // 2)
        yield b'"}}'

    r = await client.post("/v1/jobs", content=chunks(), headers={**tenant("t1"), "Content-Type": "application/json"})
    envelope(r, 413, "body_too_large")
    assert fakes.scheduler.calls("SubmitJob") == []


async def test_schema_violation_is_422_naming_the_field(client: httpx.AsyncClient, fakes: Fakes) -> None:
    body = {**JOB, "items": [{"ref": "a"}]}
    message = envelope(await client.post("/v1/jobs", json=body, headers=tenant("t1")), 422, "invalid_request")
    assert message.startswith("items[0].input: ")
    message = envelope(
        await client.post("/v1/jobs", json={**JOB, "provider": "acme"}, headers=tenant("t1")), 422, "invalid_request"
    )
    assert message.startswith("provider: ")
    r = await client.get("/v1/jobs?limit=0", headers=tenant("t1"))
    assert envelope(r, 422, "invalid_request").startswith("limit: ")
    assert fakes.scheduler.calls("SubmitJob") == []


async def test_operation_input_shapes_are_422(client: httpx.AsyncClient, fakes: Fakes) -> None:
    cases = [
        ({"provider": "openai", "items": [{"input": {"prompt": "hi"}}]}, "items[0].input.messages"),
        ({"provider": "openai", "operation": "response", "items": [{"input": {}}]}, "items[0].input.input"),
        ({"provider": "openai", "operation": "image", "items": [{"input": {"size": "1x1"}}]}, "items[0].input.prompt"),
        ({"provider": "replicate", "operation": "chat", "items": [{"input": {}}]}, "operation"),
    ]
    for body, field in cases:
        r = await client.post("/v1/jobs", json={"model": "m", **body}, headers=tenant("t1"))
        assert envelope(r, 422, "invalid_request").startswith(field + ": "), body
    assert fakes.scheduler.calls("SubmitJob") == []


async def test_scheduler_invalid_argument_is_422(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("SubmitJob", Abort(grpc.StatusCode.INVALID_ARGUMENT, "model: unknown model 'x'"))
    message = envelope(await client.post("/v1/jobs", json=JOB, headers=tenant("t1")), 422, "invalid_request")
    assert message == "model: unknown model 'x'"


async def test_insufficient_credits_is_402(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply(
        "SubmitJob",
        Abort(grpc.StatusCode.FAILED_PRECONDITION, "3 credits needed, 1 left", "insufficient_credits"),
    )
    envelope(await client.post("/v1/jobs", json=JOB, headers=tenant("t1")), 402, "insufficient_credits")


async def test_full_queue_is_429_with_retry_after(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply(
        "SubmitJob", Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue holds 100 items", "queue_full", 6.5)
    )
    r = await client.post("/v1/jobs", json=JOB, headers=tenant("t1"))
    envelope(r, 429, "queue_full")
    assert r.headers["Retry-After"] == "7"


async def test_scheduler_down_is_503_with_retry_after(orphan: httpx.AsyncClient) -> None:
    for r in (await orphan.get("/v1/jobs", headers=ADMIN), await orphan.get("/v1/jobs", headers=tenant("t1"))):
        envelope(r, 503, "unavailable")
        assert int(r.headers["Retry-After"]) >= 1


async def test_scheduler_unavailable_status_is_503(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("ListJobs", Abort(grpc.StatusCode.UNAVAILABLE, "database down", retry_after_s=3))
    r = await client.get("/v1/jobs", headers=tenant("t1"))
    envelope(r, 503, "unavailable")
    assert r.headers["Retry-After"] == "3"


async def test_key_the_scheduler_does_not_place_is_401(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("Authenticate", scheduler_pb2.AuthenticateResponse())
    envelope(await client.get("/v1/jobs", headers=tenant("nobody-either")), 401, "unauthorized")


async def test_values_the_scheduler_cannot_store_or_echo_are_422(client: httpx.AsyncClient, fakes: Fakes) -> None:
    deep: object = "x"
    for _ in range(100):
        deep = [deep]
    chat = {"provider": "openai", "model": "gpt-4o-mini"}
    cases = [
        ({**JOB, "metadata": {"a": deep}}, "metadata"),
        ({**JOB, "items": [{"input": {"prompt": deep}}]}, "items[0].input"),
        ({**JOB, "items": [{"ref": "a\u0000b", "input": {}}]}, "items[0].ref"),
        ({**JOB, "items": [{"input": {"prompt\u0000": "x"}}]}, "items[0].input"),
        ({**JOB, "metadata": {"note": "a\u0000"}}, "metadata"),
        ({**JOB, "model": "google/nano\u0000banana"}, "model"),
        ({**JOB, "model": "nano-banana"}, "model"),
        ({**chat, "items": [{"input": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2**31}}]},
         "items[0].input.max_tokens"),
    ]
    for body, field in cases:
        message = envelope(await client.post("/v1/jobs", json=body, headers=tenant("t1")), 422, "invalid_request")
        assert message.startswith(field + ": "), (field, message)
    assert fakes.scheduler.calls("SubmitJob") == []
    for body, field in (
        ({"id": "me"}, "id"), ({"id": "a", "max_concurrency": 2**31}, "max_concurrency"),
        ({"id": "a", "credits": True}, "credits"), ({"id": "a", "weight": "2"}, "weight"),
        ({"id": "a", "max_queued": 5.5}, "max_queued"),
    ):
        message = envelope(await client.post("/v1/tenants", json=body, headers=ADMIN), 422, "invalid_request")
        assert message.startswith(field + ": "), message
    assert fakes.scheduler.calls("CreateTenant") == []


async def test_json_that_is_not_an_object_is_422_and_json_too_deep_to_parse_is_400(
    client: httpx.AsyncClient, fakes: Fakes
) -> None:
    headers = {**tenant("t1"), "Content-Type": "application/json"}
    envelope(await client.post("/v1/jobs", content=b'"a job"', headers=headers), 422, "invalid_request")
    envelope(await client.post("/v1/jobs", content=b"[" * 5_000, headers=headers), 400, "invalid_json")
    assert fakes.scheduler.calls("SubmitJob") == []


async def test_text_json_cannot_carry_is_422_naming_the_field(client: httpx.AsyncClient, fakes: Fakes) -> None:
    # A lone UTF-16 half ("\ud800") is no character: no provider, nor PostgreSQL, can be sent it.
    head = b'{"provider": "replicate", "model": "a/b", '
    headers = {**tenant("t1"), "Content-Type": "application/json"}
    for body, field in (
        (b'"items": [{"input": {"prompt": "a\\ud800"}}]}', "items[0].input"),
        (b'"items": [{"input": {"k\\udc00": 1}}]}', "items[0].input"),
        (b'"items": [{"input": {}}, {"input": {"p": [["\\udbff"]]}}]}', "items[1].input"),
        (b'"items": [{"ref": "r\\ud800", "input": {}}]}', "items[0].ref"),
        (b'"items": [{"input": {}}], "metadata": {"note": "\\udfff"}}', "metadata"),
        (b'"items": [{"input": {}}], "metadata": {"\\ud800": 1}}', "metadata"),
        # Beyond a double: Python reads it as infinity, which JSON cannot carry.
        (b'"items": [{"input": {"strength": 1e400}}]}', "items[0].input"),
        (b'"items": [{"input": {}}], "metadata": {"x": -1e999}}', "metadata"),
    ):
        r = await client.post("/v1/jobs", content=head + body, headers=headers)
        message = envelope(r, 422, "invalid_request")
        assert message.startswith(field + ": "), (body, message)
    # A surrogate spelt in UTF-8 bytes is no UTF-8 at all.
    r = await client.post("/v1/jobs", content=head + b'"items": [{"input": {"p": "\xed\xa0\x80"}}]}', headers=headers)
    envelope(r, 400, "invalid_json")
    assert fakes.scheduler.calls("SubmitJob") == []
    # A pair of halves is one character, and passes.
    r = await client.post("/v1/jobs", content=head + b'"items": [{"input": {"p": "\\ud83d\\ude00"}}]}', headers=headers)
    assert r.status_code == 201, r.text
    assert json.loads(fakes.scheduler.calls("SubmitJob")[0].items[0].input_json) == {"p": "\U0001f600"}


async def test_what_the_scheduler_did_not_mean_for_clients_is_not_shown(
    client: httpx.AsyncClient, fakes: Fakes
) -> None:
    for status in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        fakes.scheduler.reply("GetJob", Abort(status, 'Exception calling application: relation "items" does not exist'))
        message = envelope(await client.get("/v1/jobs/j1", headers=tenant("t1")), 502, "upstream_error")
        assert "relation" not in message and "Exception" not in message
    # gRPC's own RESOURCE_EXHAUSTED (a message over its size limit) is not the tenant's rate.
    fakes.scheduler.reply("ListItems", Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max"))
    message = envelope(await client.get("/v1/jobs/j1/items", headers=tenant("t1")), 502, "upstream_error")
    assert "larger" not in message
    # A value the database refused: the scheduler names it and quotes the database.
    fakes.scheduler.reply("GetTenant", Abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        'a value in the request cannot be stored: invalid byte sequence for encoding "UTF8": 0xed 0xa0',
        "invalid_request",
    ))
    message = envelope(await client.get("/v1/tenants/t1", headers=ADMIN), 422, "invalid_request")
    assert "UTF8" not in message and "0xed" not in message, message
