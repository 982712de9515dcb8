"""`POST /v1/webhooks/replicate`: Replicate's word on a prediction, verified, passed to the scheduler.

The signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`) is checked with the
Standard Webhooks scheme against `REPLICATE_WEBHOOK_SECRET`, or else against the account's
default webhook secret, fetched once from Replicate and kept.
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
from services.gateway.config import Settings
from services.gateway.errors import ApiError

log = get_logger(__name__)
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


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


@router.post("/replicate")
async def replicate_webhook(request: Request, up: Stubs) -> dict[str, Any]:
    """Verify the signature, then report the prediction's outcome to the scheduler."""
    body = await request.body()
    headers = {name: request.headers.get(name, "") for name in SIGNATURE_HEADERS}
    if not all(headers.values()):
        raise ApiError(401, "invalid_signature", "The webhook-id, -timestamp and -signature headers are required.")
    secrets: WebhookSecret = request.app.state.webhook_secret
    try:
        prediction = Webhook(await secrets.get()).verify(body, headers)
    except ApiError:
        raise
    except json.JSONDecodeError:
        # Raised only once the signature verified: the sender's body is not JSON.
        raise ApiError(400, "invalid_json", "The webhook body is not valid JSON.") from None
    except Exception as exc:
        # Any failure to verify (bad signature, stale timestamp, malformed header) is the sender's.
        raise ApiError(401, "invalid_signature", "The webhook signature does not verify.") from exc
    if not isinstance(prediction, dict) or not isinstance(prediction.get("id"), str):
        raise ApiError(422, "invalid_request", "id: a Replicate prediction with an id is expected.")
    error = prediction.get("error")
    result = scheduler_pb2.UpstreamResult(
        provider="replicate",
        upstream_id=prediction["id"],
        status=str(prediction.get("status") or ""),
        output_json=_json_text(prediction.get("output")),
        error="" if error is None else (error if isinstance(error, str) else json.dumps(error)),
        usage_json=_json_text(prediction.get("metrics")),
    )
    reply = await up.scheduler.ReportUpstreamResult(result, timeout=up.timeout_s)
    # 200 also when nothing matched: a retry would not match either.
    return {"matched": reply.matched}
