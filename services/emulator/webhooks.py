"""Webhook delivery, signed the Standard Webhooks way, as Replicate sends them.

    sender = WebhookSender(settings, accounting)
    chain = sender.send(url, body, completed=True, after=chain)   # in order per prediction
    await sender.close()

Each event is POSTed with `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<b64>`
(HMAC-SHA256 of `id.timestamp.body` under the `whsec_` secret). Only the `completed` event is
retried when the receiver fails (no answer or not 2xx): up to `webhook_retries` more times,
waiting `webhook_backoff_seconds` (provider time) and doubling.
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from standardwebhooks import Webhook

from services.common.logging import get_logger
from services.emulator.accounting import Accounting
from services.emulator.config import EmulatorSettings

if TYPE_CHECKING:
    import httpx

log = get_logger(__name__)


class WebhookSender:
    def __init__(self, settings: EmulatorSettings, accounting: Accounting) -> None:
        self._settings = settings
        self._accounting = accounting
        self._signer = Webhook(settings.webhook_secret)
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def warm_up() -> None:
        """Import the HTTP client ahead of the first webhook (slow to import; call off-loop)."""
        importlib.import_module("httpx")

    def _http(self) -> httpx.AsyncClient:
        # Imported here, not at the top: it takes seconds, and most runs send no webhook.
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._settings.webhook_timeout_seconds)
        return self._client

    def send(self, url: str, body: bytes, completed: bool, after: asyncio.Task[None] | None) -> asyncio.Task[None]:
        """Deliver `body` to `url` once `after` (the prediction's previous event) is done."""
        task = asyncio.get_running_loop().create_task(self._deliver(url, body, completed, after))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, url: str, body: bytes, completed: bool, after: asyncio.Task[None] | None) -> None:
        if after is not None and not after.done():
            await asyncio.wait([after])
        msg_id = "msg_" + uuid.uuid4().hex
        text = body.decode()
        attempts = 1 + (self._settings.webhook_retries if completed else 0)
        delay = self._settings.webhook_backoff_seconds
        count = self._accounting.webhook
        for attempt in range(attempts):
            now = datetime.now(UTC)
            headers = {
                "content-type": "application/json",
                "user-agent": "Replicate-Webhook/1.0",
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": self._signer.sign(msg_id, now, text),
            }
            try:
                response = await self._http().post(url, content=body, headers=headers)
                if 200 <= response.status_code < 300:
                    count("delivered")
                    return
                reason = f"status {response.status_code}"
            except Exception as exc:  # any failure to deliver is the receiver's failure
                reason = type(exc).__name__
            count("failed_attempts")
            if attempt + 1 < attempts:
                log.info("webhook to %s failed (%s); retrying", url, reason)
                await asyncio.sleep(self._settings.real(delay))
                delay *= 2
        count("abandoned")
        log.warning("webhook to %s abandoned after %d attempt(s)", url, attempts)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        self.cancel_all()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
