"""Replicate's webhook: only a verified signature reaches the scheduler."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import grpc
import httpx
from fairway.scheduler.v1 import scheduler_pb2
from standardwebhooks import Webhook

from tests.gateway.conftest import WEBHOOK_SECRET
from tests.gateway.fakes import Abort, Fakes

PREDICTION = {
    "id": "pred-123",
    "status": "succeeded",
    "output": ["https://replicate.delivery/x.png"],
    "error": None,
    "metrics": {"predict_time": 1.5},
}


def signed(
    body: bytes, secret: str = WEBHOOK_SECRET, at: datetime | None = None, delivery: str = "msg_1"
) -> dict[str, str]:
    moment = at or datetime.now(tz=UTC)
    signature = Webhook(secret).sign(delivery, moment, body.decode())
    return {
        "webhook-id": delivery,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


async def test_verified_webhook_reports_the_result(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("ReportUpstreamResult", scheduler_pb2.UpstreamResultResponse(matched=True, item_id="i1"))
    body = json.dumps(PREDICTION).encode()
    r = await client.post("/v1/webhooks/replicate", content=body, headers=signed(body))
    assert (r.status_code, r.json()) == (200, {"matched": True, "duplicate": False})
    sent = fakes.scheduler.calls("ReportUpstreamResult")[0]
    assert (sent.provider, sent.upstream_id, sent.status, sent.error) == ("replicate", "pred-123", "succeeded", "")
    assert sent.HasField("delivery_id") and sent.delivery_id == "msg_1"
    assert json.loads(sent.output_json) == PREDICTION["output"]
    assert json.loads(sent.usage_json) == {"predict_time": 1.5}


async def test_unmatched_prediction_is_still_200(client: httpx.AsyncClient, fakes: Fakes) -> None:
    body = json.dumps({**PREDICTION, "status": "failed", "error": "boom", "output": None}).encode()
    r = await client.post("/v1/webhooks/replicate", content=body, headers=signed(body))
    assert (r.status_code, r.json()) == (200, {"matched": False, "duplicate": False})
    sent = fakes.scheduler.calls("ReportUpstreamResult")[0]
    assert (sent.status, sent.error, sent.output_json) == ("failed", "boom", "")


async def test_bad_or_missing_signature_is_401(client: httpx.AsyncClient, fakes: Fakes) -> None:
    body = json.dumps(PREDICTION).encode()
    other_secret = "whsec_" + "b3RoZXItc2VjcmV0LWZvci10ZXN0cw=="
    tampered = json.dumps({**PREDICTION, "status": "failed"}).encode()
    stale = signed(body, at=datetime.now(tz=UTC) - timedelta(hours=1))
    for content, headers in [
        (body, {"Content-Type": "application/json"}),
        (body, signed(body, other_secret)),
        (tampered, signed(body)),
        (body, stale),
        (body, {**signed(body), "webhook-signature": "v1,not-base64!"}),
    ]:
        r = await client.post("/v1/webhooks/replicate", content=content, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_signature"), headers
    assert fakes.scheduler.calls("ReportUpstreamResult") == []


async def test_signed_body_that_is_not_json_is_400(client: httpx.AsyncClient, fakes: Fakes) -> None:
    body = b"status=succeeded"
    r = await client.post("/v1/webhooks/replicate", content=body, headers=signed(body))
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
    assert fakes.scheduler.calls("ReportUpstreamResult") == []


def remembering(request: scheduler_pb2.UpstreamResult, seen: set[str]) -> scheduler_pb2.UpstreamResultResponse:
    """The scheduler's answer: a delivery it saw before is a duplicate, and nothing is done."""
    if request.delivery_id in seen:
        return scheduler_pb2.UpstreamResultResponse(duplicate=True)
    seen.add(request.delivery_id)
    return scheduler_pb2.UpstreamResultResponse(matched=True, item_id="i1")


async def test_a_replayed_webhook_is_answered_without_work(client: httpx.AsyncClient, fakes: Fakes) -> None:
    seen: set[str] = set()
    fakes.scheduler.reply("ReportUpstreamResult", lambda request: remembering(request, seen))
    body = json.dumps(PREDICTION).encode()
    headers = signed(body)
    first = await client.post("/v1/webhooks/replicate", content=body, headers=headers)
    assert (first.status_code, first.json()) == (200, {"matched": True, "duplicate": False})
    again = await client.post("/v1/webhooks/replicate", content=body, headers=headers)
    assert (again.status_code, again.json()) == (200, {"matched": False, "duplicate": True})
    other = await client.post("/v1/webhooks/replicate", content=body, headers=signed(body, delivery="msg_2"))
    assert other.json() == {"matched": True, "duplicate": False}
    assert [c.delivery_id for c in fakes.scheduler.calls("ReportUpstreamResult")] == ["msg_1", "msg_1", "msg_2"]


async def test_webhook_ids_the_scheduler_cannot_store_are_422_in_our_words(
    client: httpx.AsyncClient, fakes: Fakes
) -> None:
    # What the scheduler would answer: PostgreSQL's own words, which must not reach anyone.
    fakes.scheduler.reply("ReportUpstreamResult", Abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        'a value in the request cannot be stored: invalid byte sequence for encoding "UTF8": 0x00',
    ))
    body = json.dumps(PREDICTION).encode()
    nul_id = b'{"id": "pred\\u0000x", "status": "succeeded"}'
    surrogate_id = b'{"id": "pred\\ud800", "status": "succeeded"}'
    for content, headers, field in (
        (nul_id, signed(nul_id), "id"),
        (surrogate_id, signed(surrogate_id), "id"),
        (json.dumps({**PREDICTION, "id": "p" * 257}).encode(), None, "id"),
        (body, signed(body, delivery="msg\x00x"), "webhook-id"),
        (body, signed(body, delivery="m" * 257), "webhook-id"),
    ):
        r = await client.post("/v1/webhooks/replicate", content=content, headers=headers or signed(content))
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request"), (field, r.text)
        assert r.json()["error"]["message"].startswith(f"{field}: must be 1 to 256 printable characters")
    assert fakes.scheduler.calls("ReportUpstreamResult") == []
    # Should the scheduler quote its database anyway, its words stay in the log.
    r = await client.post("/v1/webhooks/replicate", content=body, headers=signed(body))
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
    message = r.json()["error"]["message"]
    assert message.startswith("a value in the request cannot be stored") and "UTF8" not in message, message
