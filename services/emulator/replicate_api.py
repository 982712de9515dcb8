"""The Replicate API subset: predictions (create, get, cancel, list) and the webhook secret.

    api = ReplicateApi(settings, limits, webhooks, clock, foreign)
    route = api.route("POST", "/v1/predictions")      # None when the path is not Replicate's

A prediction runs in provider time: `starting` for `prediction_start_seconds`, `processing`
for a log-normal duration around the model's median, then `succeeded` with an output derived
from the model and input (or `failed` at `prediction_failure_rate`, decided by a digest of
seed, model, input and how often that input was seen before). Its steps are due at wall-clock
times, so predictions restored from the state file (`records`, `restore`, `resume`) carry on
as if the emulator had not stopped, as Replicate's outlive the client that made them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from services.common.limits import Limits
from services.emulator.calls import Call, Headers, canonical, dumps, header
from services.emulator.config import EmulatorSettings
from services.emulator.errors import ApiError, ReplicateError, ReplicateThrottled
from services.emulator.foreign import REPLICATE_CREATE, REPLICATE_READ, ForeignTraffic
from services.emulator.latency import Latency, unit
from services.emulator.limiter import Budget, Clock, Limiter, replicate_budget
from services.emulator.predictions import EVENTS, TERMINAL, Prediction, iso, new_prediction_id, output_for
from services.emulator.webhooks import WebhookSender

PAGE_SIZE = 100
Reply = tuple[int, bytes]
Handler = Callable[..., Awaitable[Reply]]
Step = Callable[[Prediction, float | None], None]


def _bad_request(detail: str) -> ApiError:
    return ReplicateError(400, detail)


class ReplicateApi:
    def __init__(
        self,
        settings: EmulatorSettings,
        limits: Limits,
        webhooks: WebhookSender,
        clock: Clock,
        foreign: ForeignTraffic,
    ):
        self._s = settings
        self._latency = Latency(settings)
        self._webhooks = webhooks
        create, read, burst = limits.replicate.create_rpm, limits.replicate.read_rpm, settings.replicate_burst

        def make(name: str) -> Budget:  # "c:<key>" or "r:<key>"
            created = name[0] == "c"
            budget = replicate_budget(create if created else read, burst)
            return foreign.attach(name[2:], REPLICATE_CREATE if created else REPLICATE_READ, budget)

        self._limiter = Limiter(make, clock)
        self._predictions: dict[str, Prediction] = {}
        self._by_key: dict[str, list[Prediction]] = {}
        self._seen: dict[bytes, int] = {}
        self.revision = 0  # moves whenever a prediction changes: the state file is written then

    # -- routing and admission -------------------------------------------------------------

    def route(self, method: str, path: str) -> tuple[str, Handler, tuple[str, ...]] | None:
        """(endpoint name, handler, path arguments) for a Replicate path, else None."""
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "v1":
            return None
        if parts[1] == "predictions":
            if len(parts) == 2:
                if method == "POST":
                    return "replicate.create", self.create, ()
                if method == "GET":
                    return "replicate.list", self.list, ()
            elif len(parts) == 3 and method == "GET":
                return "replicate.get", self.get, (parts[2],)
            elif len(parts) == 4 and parts[3] == "cancel" and method == "POST":
                return "replicate.cancel", self.cancel, (parts[2],)
        elif parts[1] == "models" and len(parts) == 5 and parts[4] == "predictions" and method == "POST":
            return "replicate.create", self.create, (f"{parts[2]}/{parts[3]}",)
        elif parts[1:] == ["webhooks", "default", "secret"] and method == "GET":
            return "replicate.webhook_secret", self.secret, ()
        return None

    def authenticate(self, call: Call) -> str:
        key = call.key
        if not key:
            raise ReplicateError(401, "You did not pass a valid authentication token")
        return key

    def budget(self, key: str, name: str) -> Budget:
        """The key's `replicate.create` or `replicate.read` budget."""
        return self._limiter.budget(("c:" if name == REPLICATE_CREATE else "r:") + key)

    def admit(self, call: Call, key: str, endpoint: str) -> Headers:
        """Charge the key's create or read budget; the rate-limit headers, or a 429."""
        budget = self.budget(key, REPLICATE_CREATE if endpoint == REPLICATE_CREATE else REPLICATE_READ)
        now = self._limiter.now()
        decision = budget.acquire(now)
        remaining, _ = budget.remaining(now)
        reset, _ = budget.reset_after(now)
        headers = [
            header("ratelimit-remaining", remaining),
            header("ratelimit-reset", math.ceil(self._s.real(reset))),
        ]
        if not decision.accepted:
            wait = max(1, math.ceil(self._s.real(decision.retry_after)))
            raise ReplicateThrottled(wait, [*headers, header("retry-after", wait)])
        return headers

    def server_error(self, status: int) -> ApiError:
        return ReplicateError(status, "Internal server error" if status == 500 else "Upstream unavailable")

    # -- endpoints -----------------------------------------------------------------------------

    async def create(self, call: Call, model_path: str | None = None) -> Reply:
        await self._api_latency()
        body = call.json(_bad_request)
        if not isinstance(body, dict):
            raise ReplicateError(422, "The request body must be a JSON object.")
        payload = body.get("input")
        if not isinstance(payload, dict):
            raise ReplicateError(422, "input: input is required and must be an object")
        model, version = self._model_version(model_path, body.get("version"))
        webhook, events = self._webhook_options(body)
        prediction = self._new(call, model, version, payload, webhook, events)
        self._schedule(prediction)
        wait = _prefer_wait(call.header(b"prefer"))
        if wait and prediction.status not in TERMINAL:
            future = asyncio.get_running_loop().create_future()
            prediction.waiters.append(future)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, self._s.real(wait))
        return 201, prediction.body()

    async def get(self, call: Call, pid: str) -> Reply:
        await self._api_latency()
        return 200, self._find(call, pid).body()

    async def cancel(self, call: Call, pid: str) -> Reply:
        await self._api_latency()
        prediction = self._find(call, pid)
        if prediction.status not in TERMINAL:
            self._finish(prediction, "canceled")
        return 200, prediction.body()

    async def list(self, call: Call) -> Reply:
        await self._api_latency()
        items = self._by_key.get(call.key, [])
        cursor = call.param("cursor") or ""
        try:
            mark = int(cursor[1:]) if cursor else len(items)
        except ValueError:
            raise ReplicateError(400, "Invalid cursor.") from None
        if cursor.startswith("a"):
            start, end = mark, min(len(items), mark + PAGE_SIZE)
        else:
            end = min(mark, len(items))
            start = max(0, end - PAGE_SIZE)
        base = f"{call.base_url()}/v1/predictions?cursor="
        page = {
            "next": f"{base}b{start}" if start > 0 else None,
            "previous": f"{base}a{end}" if end < len(items) else None,
            "results": [p.to_dict() for p in reversed(items[start:end])],
        }
        return 200, dumps(page)

    async def secret(self, call: Call) -> Reply:
        await self._api_latency()
        return 200, dumps({"key": self._s.webhook_secret})

    # -- predictions ---------------------------------------------------------------------------

    def _model_version(self, model_path: str | None, version: object) -> tuple[str, str]:
        if model_path is not None:
            return model_path, "hidden"
        if not isinstance(version, str) or not version:
            raise ReplicateError(422, "version: version is required")
        if ":" in version:
            model, _, ref = version.partition(":")
            return model, ref
        if "/" in version:
            return version, "hidden"
        return f"emulated/{version[:12]}", version

    def _webhook_options(self, body: dict[str, Any]) -> tuple[str | None, frozenset[str]]:
        webhook = body.get("webhook") or body.get("webhook_completed")
        if webhook is not None and not (isinstance(webhook, str) and webhook.startswith(("http://", "https://"))):
            raise ReplicateError(422, "webhook: must be an http(s) URL")
        chosen = body.get("webhook_events_filter")
        if chosen is None:
            events = frozenset(("completed",)) if body.get("webhook_completed") else frozenset(EVENTS)
        elif isinstance(chosen, list) and chosen and all(e in EVENTS for e in chosen):
            events = frozenset(chosen)
        else:
            raise ReplicateError(422, f"webhook_events_filter: each event must be one of {', '.join(EVENTS)}")
        return webhook, events

    def _new(
        self,
        call: Call,
        model: str,
        version: str,
        payload: dict[str, Any],
        webhook: str | None,
        events: frozenset[str],
    ) -> Prediction:
        pid = new_prediction_id()
        prediction = Prediction(pid, call.key, model, version, payload, call.base_url(), time.time())
        seen_key = hashlib.sha256(f"{model}\n{canonical(payload)}".encode()).digest()
        occurrence = self._seen.get(seen_key, 0)
        self._seen[seen_key] = occurrence + 1
        prediction.digest = hashlib.sha256(f"{self._s.seed}|{occurrence}|".encode() + seen_key).digest()
        prediction.webhook, prediction.events = webhook, events
        prediction.digest_of_input = seen_key
        self._predictions[pid] = prediction
        self._by_key.setdefault(call.key, []).append(prediction)
        self.revision += 1
        self._emit(prediction, "start")
        return prediction

    def _find(self, call: Call, pid: str) -> Prediction:
        prediction = self._predictions.get(pid)
        if prediction is None or prediction.key != call.key:
            raise ReplicateError(404, "Not found.")
        return prediction

    def _touch(self, prediction: Prediction) -> None:
        prediction.changed()
        self.revision += 1

    def _schedule(self, prediction: Prediction) -> None:
        delay = self._s.real(self._latency.prediction_start())
        prediction.start_due = time.time() + delay
        # Always by the timer, even at no delay: a create answers `starting`, as Replicate's do.
        prediction.timer = asyncio.get_running_loop().call_later(delay, self._start, prediction, prediction.start_due)

    def _at(self, prediction: Prediction, due: float, step: Step) -> None:
        """Take `step` at unix time `due`: later by a timer, or now, stamped `due`, when it is past."""
        delay = due - time.time()
        if delay > 0:
            prediction.timer = asyncio.get_running_loop().call_later(delay, step, prediction, due)
        else:
            step(prediction, due)

    def _start(self, prediction: Prediction, at: float | None = None) -> None:
        if prediction.status != "starting":
            return
        at = time.time() if at is None else at
        prediction.status = "processing"
        prediction.started_at = iso(at)
        prediction.logs = "Starting prediction\n"
        seconds = self._latency.prediction(prediction.model, prediction.digest)
        prediction.metrics = {"predict_time": round(seconds, 3)}
        prediction.complete_due = at + self._s.real(seconds)
        self._touch(prediction)
        self._emit(prediction, "logs")
        self._at(prediction, prediction.complete_due, self._complete)

    def _complete(self, prediction: Prediction, at: float | None = None) -> None:
        if prediction.status != "processing":
            return
        if unit(prediction.digest) < self._s.prediction_failure_rate:
            prediction.logs += "Traceback (most recent call last):\nRuntimeError: the model crashed\n"
            prediction.error = "Prediction failed: the model crashed"
            self._finish(prediction, "failed", at)
            return
        prediction.output = output_for(prediction.digest_of_input, prediction.input)
        prediction.logs += "100%|##########| 28/28 [00:07<00:00, 3.71it/s]\n"
        self._touch(prediction)
        self._emit(prediction, "output")
        self._finish(prediction, "succeeded", at)

    def _finish(self, prediction: Prediction, status: str, at: float | None = None) -> None:
        if prediction.timer is not None:
            prediction.timer.cancel()
            prediction.timer = None
        prediction.status = status
        prediction.completed_at = iso(time.time() if at is None else at)
        if prediction.started_at is not None:
            prediction.metrics["total_time"] = prediction.metrics.get("predict_time", 0.0) + round(
                self._latency.prediction_start(), 3
            )
        self._touch(prediction)
        self._emit(prediction, "completed")
        for waiter in prediction.waiters:
            if not waiter.done():
                waiter.set_result(None)
        prediction.waiters.clear()

    def _emit(self, prediction: Prediction, event: str) -> None:
        if prediction.webhook is None or event not in prediction.events:
            return
        completed = event == "completed"
        task = self._webhooks.send(prediction.webhook, prediction.body(), completed, prediction.webhook_chain)
        prediction.webhook_chain = task
        if completed:
            prediction.hook_pending = True

            def settled(task: asyncio.Task[None]) -> None:
                # Delivered or given up: no longer owed. Canceled (the emulator stopping): still owed.
                if not task.cancelled():
                    prediction.hook_pending = False
                    self._touch(prediction)

            task.add_done_callback(settled)

    # -- the state file ------------------------------------------------------------------------

    def records(self) -> Sequence[str]:
        """Every prediction's state-file record, oldest first."""
        return [prediction.record() for prediction in self._predictions.values()]

    def restore(self, records: Iterable[dict[str, Any]]) -> None:
        """Predictions from a previous run's state file; `resume` sets them going again."""
        for data in records:
            prediction = Prediction.from_record(data)
            self._predictions[prediction.id] = prediction
            self._by_key.setdefault(prediction.key, []).append(prediction)
            self._seen[prediction.digest_of_input] = self._seen.get(prediction.digest_of_input, 0) + 1
        self.revision += 1

    def resume(self) -> None:
        """Carry restored predictions on by wall clock: a step whose time passed while the emulator
        was stopped is taken now, stamped when it was due; an owed `completed` webhook is sent."""
        for prediction in list(self._predictions.values()):
            if prediction.status == "starting":
                self._at(prediction, prediction.start_due, self._start)
            elif prediction.status == "processing":
                self._at(prediction, prediction.complete_due, self._complete)
            elif prediction.hook_pending:
                self._emit(prediction, "completed")

    async def _api_latency(self) -> None:
        if self._s.api_seconds > 0:
            await asyncio.sleep(self._s.real(self._latency.api()))

    def stop(self) -> None:
        """Stop every prediction's clock (the emulator is stopping); `resume` restarts restored ones."""
        for prediction in self._predictions.values():
            if prediction.timer is not None:
                prediction.timer.cancel()
                prediction.timer = None
            for waiter in prediction.waiters:
                waiter.cancel()
            prediction.waiters.clear()

    def clear(self) -> None:
        self.stop()
        self._predictions.clear()
        self._by_key.clear()
        self._seen.clear()
        self._limiter.clear()
        self.revision += 1

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("starting", "processing", *sorted(TERMINAL)), 0)
        for prediction in self._predictions.values():
            counts[prediction.status] += 1
        return counts


def _prefer_wait(value: str) -> int:
    """Seconds from `Prefer: wait` (60) or `Prefer: wait=N` (1..60); 0 when absent."""
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return max(1, min(60, int(arg))) if arg else 60
            except ValueError:
                return 60
    return 0
