"""The emulator as one ASGI app: Replicate and OpenAI routes, plus `/_emulator/` for operators.

    app = create_app(EmulatorSettings(time_scale=60))
    uvicorn.run(app, port=8090)

Every provider request goes through the same steps: authenticate (401), admit against the
key's budget (429 with the provider's body and headers), count, maybe inject a fault, then
the endpoint. The app is plain ASGI rather than a framework: the hot path is a handful of
dict lookups, which is what lets one process serve thousands of requests a second.

With `FAIRWAY_EMULATOR_STATE` set, predictions and counts are read from that file at start
and written to it every few seconds when they changed and on shutdown (see `state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from services.common.errors import ConfigError
from services.common.limits import Limits
from services.common.logging import get_logger
from services.emulator.accounting import ACCEPTED, FAULTS, INVALID, REJECTED, Accounting
from services.emulator.calls import Call, Headers, dumps
from services.emulator.config import EmulatorSettings
from services.emulator.errors import ApiError, EmulatorError, ReplicateError
from services.emulator.faults import Fault, Faults
from services.emulator.foreign import ForeignTraffic, valid_budget
from services.emulator.limiter import Budget
from services.emulator.openai_api import OpenAIApi, Planned
from services.emulator.replicate_api import ReplicateApi
from services.emulator.state import FORMAT, StateFile
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
        self.state = StateFile(settings.state) if settings.state else None
        saved = self.state.read() if self.state is not None else None
        if saved is not None and saved.get("webhook_secret") and "webhook_secret" not in settings.model_fields_set:
            # Keep signing with the secret the clients were given before the restart.
            settings = settings.model_copy(update={"webhook_secret": saved["webhook_secret"]})
        self.settings = settings
        self.limits = Limits.load(settings.limits)
        scale = settings.time_scale
        started, wall = time.monotonic(), time.time()

        def clock() -> float:  # provider seconds since start
            return (time.monotonic() - started) * scale

        def to_unix(provider_seconds: float) -> float:
            return wall + provider_seconds / scale

        self.accounting = Accounting()
        self.foreign = ForeignTraffic(settings, self.accounting, clock, to_unix)
        self.foreign.make = self._budget
        self.webhooks = WebhookSender(settings, self.accounting)
        self.replicate = ReplicateApi(settings, self.limits, self.webhooks, clock, self.foreign)
        self.openai = OpenAIApi(settings, self.limits, clock, self.foreign)
        self.faults = Faults(settings)
        if saved is not None:
            try:
                self.accounting.load(saved["accounting"])
                self.replicate.restore(saved["predictions"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"emulator state {settings.state} is damaged: {exc!r}") from exc
        self._saved = self._revision()
        self._stop_saving = asyncio.Event()
        self._saver: asyncio.Task[None] | None = None

    def _budget(self, key: str, name: str) -> Budget:
        api: ReplicateApi | OpenAIApi = self.replicate if name.startswith("replicate.") else self.openai
        return api.budget(key, name)

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
                self.replicate.resume()
                if self.state is not None:
                    self._saver = asyncio.get_running_loop().create_task(self._save_periodically())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.replicate.stop()
                await self.webhooks.close()  # a `completed` webhook cut short stays owed in the state
                if self._saver is not None:
                    self._stop_saving.set()
                    await self._saver  # its last round writes the final state
                self.replicate.clear()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the state file ------------------------------------------------------------------------

    def _revision(self) -> tuple[int, int]:
        return self.accounting.revision, self.replicate.revision

    def state_text(self) -> str:
        """The state file's text: predictions and counts as they are now."""
        head = {"format": FORMAT, "saved_at": time.time(), "webhook_secret": self.settings.webhook_secret}
        return "".join(
            (
                dumps(head).decode()[:-1],
                ',"accounting":',
                dumps(self.accounting.dump()).decode(),
                ',"predictions":[',
                ",".join(self.replicate.records()),  # each cached until its prediction changes
                "]}",
            )
        )

    async def _save_periodically(self) -> None:
        while not self._stop_saving.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_saving.wait(), self.settings.state_save_seconds)
            await self._save()
        await self._save()  # what changed while the last round was writing

    async def _save(self) -> None:
        revision = self._revision()
        if revision == self._saved or self.state is None:
            return
        text = self.state_text()
        try:
            await asyncio.to_thread(self.state.write, text)
        except OSError as exc:
            log.warning("cannot write emulator state %s: %s", self.state.path, exc)
            return
        self._saved = revision

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
        record(key, endpoint, ACCEPTED, call.state.charged if isinstance(call.state, Planned) else 0)
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
            self.foreign.settle()
            stats = self.accounting.snapshot(call.param("key"))
            stats["predictions"] = self.replicate.counts()
            stats["time_scale"] = self.settings.time_scale
            await _respond(send, 200, dumps(stats), [])
        elif name == "reset" and call.method == "POST":
            self.reset()
            await _respond(send, 200, dumps({"status": "reset"}), [])
        elif name == "foreign" and call.method == "POST":
            status, answer = self._set_foreign(call)
            await _respond(send, status, dumps(answer), [])
        else:
            await _respond(send, 404, dumps({"detail": "Not found."}), [])

    def _set_foreign(self, call: Call) -> tuple[int, dict[str, object]]:
        """POST /_emulator/foreign {"key"?, "budget", "share"}: another service's share, from now on."""
        try:
            body = call.json(lambda message: ReplicateError(400, message))
        except ApiError:
            body = None
        if not isinstance(body, dict):
            return 400, {"detail": "the body must be a JSON object"}
        key, budget, share = body.get("key"), body.get("budget"), body.get("share")
        if key is not None and not (isinstance(key, str) and key):
            return 400, {"detail": "key: a non-empty API key, or omitted for every key"}
        if not valid_budget(budget):
            return 400, {"detail": 'budget: "replicate.create", "replicate.read" or "openai:<model>"'}
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share < 1:
            return 400, {"detail": "share: a number at least 0 and less than 1"}
        self.foreign.set(key, budget, float(share))
        return 200, {"key": key, "budget": budget, "share": float(share)}

    def reset(self) -> None:
        """Forget predictions, budgets, counts and foreign shares set here; restart the faults from the seed."""
        self.webhooks.cancel_all()
        self.replicate.clear()
        self.openai.clear()
        self.foreign.clear()
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
