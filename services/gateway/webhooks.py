"""`POST /v1/webhooks/replicate`: Replicate's word on a prediction, verified, passed to the scheduler.

The signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`) is checked with the
Standard Webhooks scheme against `REPLICATE_WEBHOOK_SECRET`, or else against the account's
default webhook secret, fetched once from Replicate and kept. A signature verifies for five
minutes either side of its timestamp, so the same delivery could be replayed all that time:
the scheduler remembers each delivery (`webhook-id`) it processed, shared by every gateway
replica, and a replay does nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fairway.scheduler.v1 import scheduler_pb2
from fastapi import APIRouter, Request
from standardwebhooks import Webhook

from services.common.logging import get_logger
from services.gateway.auth import Stubs
from services.gateway.bodies import parse_body
from services.gateway.config import Settings
from services.gateway.errors import ApiError
from services.gateway.openapi import documented

log = get_logger(__name__)
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
# Longest webhook-id or prediction id taken (Replicate's are ~30 characters).
MAX_ID_CHARS = 256


class WebhookSecret:
    """The signing secret: configured, or fetched from the provider on first use."""

    def __init__(self, settings: Settings) -> None:
        configured = settings.replicate_webhook_secret
        self._secret = configured.get_secret_value() if configured is not None else ""
        token = settings.replicate_api_token
        self._api_token = token.get_secret_value() if token is not None else None
        self._base_url = settings.replicate_base_url or None
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        if self._secret:
            return self._secret
        async with self._lock:
            if not self._secret:
                self._secret = await self._fetch()
        return self._secret

    async def _fetch(self) -> str:
        from replicate.client import Client

        client = Client(api_token=self._api_token, base_url=self._base_url)
        try:
            found = await client.webhooks.default.async_secret()
        except Exception as exc:
            log.warning("could not fetch the Replicate webhook secret: %s", exc)
            raise ApiError(
                503,
                "unavailable",
                "The webhook secret could not be fetched from Replicate; retry later.",
                retry_after_s=30,
            ) from exc
        return str(found.key)


def _json_text(value: Any) -> str:
    return "" if value is None else json.dumps(value)


def _checked_id(field: str, value: Any) -> str:
    """An id the scheduler can store and look up: 1 to MAX_ID_CHARS printable characters
    (no NUL, control character or unpaired surrogate)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS or not value.isprintable():
        raise ApiError(422, "invalid_request", f"{field}: must be 1 to {MAX_ID_CHARS} printable characters")
    return value


# The body is read (and verified) by the handler, so the OpenAPI document is told its shape.
_PREDICTION = {
    "requestBody": {
        "required": True,
        "description": "A Replicate prediction, signed with the Standard Webhooks headers.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {
                        "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
                        "status": {"type": "string"},
                        "output": {},
                        "error": {},
                        "metrics": {},
                    },
                }
            }
        },
    }
}


@router.post(
    "/replicate",
    openapi_extra=_PREDICTION,
    responses=documented({
        400: "A signed body that is not JSON.",
        401: "The webhook-id, -timestamp or -signature header is missing, or the signature does not verify.",
        413: "The body is larger than FAIRWAY_GATEWAY_MAX_BODY_BYTES.",
        422: "A webhook-id or prediction id that cannot be stored, or a body that is not a prediction.",
        502: "The scheduler failed in an unexpected way.",
        503: "The scheduler does not answer, or the signing secret could not be fetched from Replicate.",
    }),
)
async def replicate_webhook(request: Request, up: Stubs) -> dict[str, Any]:
    """Verify the signature, then report the prediction's outcome to the scheduler, once per delivery."""
    body = await request.body()
    headers = {name: request.headers.get(name, "") for name in SIGNATURE_HEADERS}
    if not all(headers.values()):
        raise ApiError(401, "invalid_signature", "The webhook-id, -timestamp and -signature headers are required.")
    secrets: WebhookSecret = request.app.state.webhook_secret
    try:
        Webhook(await secrets.get()).verify(body, headers, json_parse=False)
    except ApiError:
        raise
    except Exception as exc:
        # Any failure to verify (bad signature, stale timestamp, malformed header) is the sender's.
        raise ApiError(401, "invalid_signature", "The webhook signature does not verify.") from exc
    # The provider's output may be large: parsed in bounded steps, off the event loop.
    prediction = await asyncio.to_thread(parse_body, body, max_values=None)
    delivery_id = _checked_id("webhook-id", headers["webhook-id"])
    if not isinstance(prediction, dict):
        raise ApiError(422, "invalid_request", "body: a Replicate prediction (a JSON object) is expected.")
    upstream_id = _checked_id("id", prediction.get("id"))
    error = prediction.get("error")
    result = scheduler_pb2.UpstreamResult(
        provider="replicate",
        upstream_id=upstream_id,
        status=str(prediction.get("status") or ""),
        output_json=_json_text(prediction.get("output")),
        error="" if error is None else (error if isinstance(error, str) else json.dumps(error)),
        usage_json=_json_text(prediction.get("metrics")),
        delivery_id=delivery_id,
    )
    reply = await up.scheduler.ReportUpstreamResult(result, timeout=up.timeout_s)
    # 200 also when nothing matched (a retry would not match either), and for a delivery
    # already processed (a replay within the signature's validity): nothing was done.
    return {"matched": reply.matched, "duplicate": reply.duplicate}
