"""A job's event stream (`GET /v1/jobs/{id}/events`, server-sent events), resumed when it drops.

    async for name, data in follow(api, job_id, on_gap=print):
        ...                                   # ("item", item) and ("job", job) until the job is terminal

A stream that breaks, times out or ends before the job's terminal `job` event is opened again with
`Last-Event-ID` (the last `id:` read): the server sends every change after it, and perhaps the last
few seconds' again, which is harmless since an event is the latest state of its item or job.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from services.console.api import Api, ApiFailure, Unreachable

TERMINAL = frozenset({"DONE", "FAILED", "CANCELED"})
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0
# A stream that cannot be opened again for this long ends the watch (exit code 4).
GIVE_UP_AFTER_S = 120.0

Event = tuple[str, dict[str, Any]]


class _Parser:
    """Lines of `text/event-stream` → events (event name, data, id)."""

    def __init__(self) -> None:
        self.name, self.id = "", ""
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str, str, str] | None:
        if line == "":
            found = (self.name or "message", "\n".join(self.data), self.id) if self.data else None
            self.name, self.data, self.id = "", [], ""
            return found
        if line.startswith(":"):
            return None  # a comment: the server's keepalive
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self.name = value
        elif field == "data":
            self.data.append(value)
        elif field == "id":
            self.id = value
        return None


async def follow(
    api: Api, job_id: str, *, on_gap: Callable[[str], None] | None = None, give_up_after_s: float = GIVE_UP_AFTER_S,
) -> AsyncIterator[Event]:
    """The job's events until its terminal `job` event, across as many connections as it takes."""
    last_id = ""
    delay = RETRY_FIRST_S
    failing_since: float | None = None
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            async with api.stream(f"/v1/jobs/{job_id}/events", headers) as reply:
                failing_since, delay = None, RETRY_FIRST_S
                parser = _Parser()
                async for line in reply.aiter_lines():
                    event = parser.feed(line)
                    if event is None:
                        continue
                    name, data, seq = event
                    last_id = seq or last_id
                    body = json.loads(data)
                    yield name, body
                    if name == "job" and body.get("status") in TERMINAL:
                        return
            why = "the stream ended before the job did"
        except ApiFailure as exc:
            if exc.status not in (502, 503, 504):
                raise
            why = exc.message
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and failing_since is None and not last_id:
                raise api.unreachable(exc) from None  # never connected: the gateway is not there
            why = str(exc) or type(exc).__name__
        except ValueError as exc:  # a data line that is not JSON: the stream was cut mid-event
            why = f"a broken event ({exc})"
        now = time.monotonic()
        failing_since = failing_since or now
        if now - failing_since > give_up_after_s:
            raise Unreachable(f"the event stream of job {job_id} could not be resumed for {give_up_after_s:g} s "
                              f"({why}); the job goes on: fairway job {job_id} --watch")
        if on_gap is not None:
            on_gap(f"job {job_id}: {why}; resuming" + (f" after event {last_id}" if last_id else ""))
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)
