"""The emulator as one ASGI app: Replicate and OpenAI routes, plus `/_emulator/` for operators.

    app = create_app(EmulatorSettings(time_scale=60))
    uvicorn.run(app, port=8090)

Every provider request goes through the same steps: authenticate (401), admit against the
key's budget (429 with the provider's body and headers), count, maybe inject a fault, then
the endpoint. The app is plain ASGI rather than a framework: the hot path is a handful of
dict lookups, which is what lets one process serve thousands of requests a second.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from services.common.limits import Limits
from services.common.logging import get_logger
from services.emulator.accounting import ACCEPTED, FAULTS, INVALID, REJECTED, Accounting
from services.emulator.calls import Call, Headers, dumps
from services.emulator.config import EmulatorSettings
from services.emulator.errors import ApiError, EmulatorError, ReplicateError
from services.emulator.faults import Fault, Faults
from services.emulator.openai_api import OpenAIApi, Planned
from services.emulator.replicate_api import ReplicateApi
from services.emulator.webhooks import WebhookSender

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
log = get_logger(__name__)
_JSON = (b"content-type", b"application/json")


class ConnectionDropped(EmulatorError):
    """Raised to make the server drop a connection when its transport is out of reach."""


class EmulatorApp:
    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.limits = Limits.load(settings.limits)
        scale = settings.time_scale
        started = time.monotonic()

        def clock() -> float:  # provider seconds since start
            return (time.monotonic() - started) * scale

        self.accounting = Accounting()
        self.webhooks = WebhookSender(settings, self.accounting)
        self.replicate = ReplicateApi(settings, self.limits, self.webhooks, clock)
        self.openai = OpenAIApi(settings, self.limits, clock)
        self.faults = Faults(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                asyncio.get_running_loop().run_in_executor(None, self.webhooks.warm_up)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.replicate.clear()
                await self.webhooks.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        call = Call(scope, body)
        if call.path.startswith("/_emulator/"):
            await self._operator(call, send)
            return
        api: ReplicateApi | OpenAIApi = self.replicate
        route = self.replicate.route(call.method, call.path)
        if route is None:
            api = self.openai
            route = self.openai.route(call.method, call.path)
        ids = [(b"x-request-id", b"req_" + os.urandom(16).hex().encode())]
        if route is None:
            await _respond(send, 404, ReplicateError(404, "Not found.").render(), ids)
            return
        endpoint, handler, args = route
        record = self.accounting.record
        try:
            key = api.authenticate(call)
        except ApiError as err:
            record("", endpoint, INVALID)
            await _respond(send, err.status, err.render(), ids + err.headers)
            return
        try:
            headers = ids + api.admit(call, key, endpoint)
        except ApiError as err:
            record(key, endpoint, REJECTED if err.status == 429 else INVALID)
            await _respond(send, err.status, err.render(), ids + err.headers)
            return
        record(key, endpoint, ACCEPTED, call.state.total_tokens if isinstance(call.state, Planned) else 0)
        if self.faults.active:
            fault = self.faults.draw()
            if fault is Fault.ERROR or fault is Fault.RESET:
                record(key, endpoint, FAULTS)
                if fault is Fault.RESET:
                    await _drop(send)
                    return
                failure = api.server_error(self.faults.error_status())
                await _respond(send, failure.status, failure.render(), headers)
                return
            if fault is Fault.SLOW:
                await asyncio.sleep(self.settings.real(self.faults.slow_seconds))
        try:
            status, payload = await handler(call, *args)
        except ApiError as err:
            await _respond(send, err.status, err.render(), headers + err.headers)
            return
        await _respond(send, status, payload, headers)

    async def _operator(self, call: Call, send: Send) -> None:
        name = call.path.removeprefix("/_emulator/").strip("/")
        if name == "health" and call.method == "GET":
            settings = self.settings.model_dump(exclude={"webhook_secret"})
            body = {
                "status": "ok",
                "settings": settings,
                "limits": self.limits.model_dump(exclude={"utilization"}),
            }
            await _respond(send, 200, dumps(body), [])
        elif name == "stats" and call.method == "GET":
            stats = self.accounting.snapshot(call.param("key"))
            stats["predictions"] = self.replicate.counts()
            stats["time_scale"] = self.settings.time_scale
            await _respond(send, 200, dumps(stats), [])
        elif name == "reset" and call.method == "POST":
            self.reset()
            await _respond(send, 200, dumps({"status": "reset"}), [])
        else:
            await _respond(send, 404, dumps({"detail": "Not found."}), [])

    def reset(self) -> None:
        """Forget predictions, budgets and counts; restart the fault sequence from the seed."""
        self.webhooks.cancel_all()
        self.replicate.clear()
        self.openai.clear()
        self.accounting.clear()
        self.faults.reseed()


def create_app(settings: EmulatorSettings) -> EmulatorApp:
    """The ASGI app for `settings`; raises ConfigError for a bad limits file."""
    return EmulatorApp(settings)


async def _respond(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _drop(send: Send) -> None:
    """Drop the connection without a response, as a reset upstream would look."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        transport.abort()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return
    # Without the transport: promise a body, then fail, and the server closes the connection.
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"64")]})
    raise ConnectionDropped("connection dropped on purpose")
