"""Replicate's webhook: only a verified signature reaches the scheduler."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
from fairway.scheduler.v1 import scheduler_pb2
from standardwebhooks import Webhook

from tests.gateway.conftest import WEBHOOK_SECRET
from tests.gateway.fakes import Fakes

PREDICTION = {
    "id": "pred-123",
    "status": "succeeded",
    "output": ["https://replicate.delivery/x.png"],
    "error": None,
    "metrics": {"predict_time": 1.5},
}


def signed(body: bytes, secret: str = WEBHOOK_SECRET, at: datetime | None = None) -> dict[str, str]:
    moment = at or datetime.now(tz=UTC)
    signature = Webhook(secret).sign("msg_1", moment, body.decode())
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


async def test_verified_webhook_reports_the_result(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("ReportUpstreamResult", scheduler_pb2.UpstreamResultResponse(matched=True, item_id="i1"))
    body = json.dumps(PREDICTION).encode()
    r = await client.post("/v1/webhooks/replicate", content=body, headers=signed(body))
    assert (r.status_code, r.json()) == (200, {"matched": True})
    sent = fakes.scheduler.calls("ReportUpstreamResult")[0]
    assert (sent.provider, sent.upstream_id, sent.status, sent.error) == ("replicate", "pred-123", "succeeded", "")
    assert json.loads(sent.output_json) == PREDICTION["output"]
    assert json.loads(sent.usage_json) == {"predict_time": 1.5}


async def test_unmatched_prediction_is_still_200(client: httpx.AsyncClient, fakes: Fakes) -> None:
    body = json.dumps({**PREDICTION, "status": "failed", "error": "boom", "output": None}).encode()
    r = await client.post("/v1/webhooks/replicate", content=body, headers=signed(body))
    assert (r.status_code, r.json()) == (200, {"matched": False})
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
