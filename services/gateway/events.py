"""`GET /v1/jobs/{id}/events`: the scheduler's WatchJob stream, relayed as server-sent events.

    event: item            event: job
    id: 1114113            id: 1114114
    data: {...}            data: {...}

Each event of WatchJob carries a resume point (`seq`): a watch resumed there misses no
later change and may repeat those of the few seconds before. Several events share one
resume point (a job's first events all carry the point the watch started from), so the
SSE `id` is not the point itself but a whole number that holds it exactly:

    id = seq * IDS_PER_POINT + n

with `n` counting the events sent at that point, also across resumes (a stream resumed
from an id starts counting after it). So ids are unique and increasing from the first
event, an integer to clients that parse one, and `Last-Event-ID` gives back the exact
resume point (`id // IDS_PER_POINT`). An id sent before this scheme (the bare `seq`)
reads as an earlier point: it resumes earlier and repeats more, but misses nothing.
The stream ends after the job's terminal `job` event.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import grpc
from fairway.scheduler.v1 import scheduler_pb2
from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse
from pydantic import WithJsonSchema

from services.common.logging import get_logger
from services.gateway import render
from services.gateway.auth import AnyKey, Stubs
from services.gateway.errors import ApiError

log = get_logger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# A comment line this often keeps proxies from closing a quiet stream.
KEEPALIVE_S = 15.0
# Events one stream may send at one resume point before the point moves on: the scheduler
# moves it within seconds, and after at most ~5,000 item events (its `_REMEMBERED`).
IDS_PER_POINT = 2**16
# Ids stay below 10**18 (18 digits, under 2**63): every id sent is one `Last-Event-ID` takes.
MAX_ID = 10**18 - 1
LAST_EVENT_ID = re.compile(r"[0-9]{1,18}")


def sse(name: str, event_id: int | None, data: dict[str, Any]) -> bytes:
    """One event; without an id when `event_id` is None (the client keeps its last one)."""
    head = f"event: {name}\n" if event_id is None else f"event: {name}\nid: {event_id}\n"
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventIds:
    """SSE ids for a stream that resumes after id `last` (None: from the start)."""

    def __init__(self, last: int | None) -> None:
        # The resume point and count of the last id sent (or the client's); None before any.
        self._point: int | None = None
        self._n = 0
        if last is not None:
            self._point, self._n = divmod(last, IDS_PER_POINT)

    @property
    def resume_point(self) -> int:
        return self._point or 0

    def next(self, seq: int) -> int | None:
        """The id of the next event, whose resume point is `seq`; None if no id can say it
        (the client's last id still resumes correctly: from an earlier point)."""
        if self._point is not None and seq < self._point:
            return None  # not sent by the scheduler: its points never go back
        # Counting from 1: no id is 0, which a client could take for "none".
        n = self._n + 1 if seq == self._point else 1
        event_id = seq * IDS_PER_POINT + n
        if n >= IDS_PER_POINT or event_id > MAX_ID:
            return None
        self._point, self._n = seq, n
        return event_id


def _last_event_id(value: str | None) -> int | None:
    if not value:
        return None
    if not LAST_EVENT_ID.fullmatch(value):
        raise ApiError(
            422, "invalid_request", "Last-Event-ID: must be the id of an event of this stream (up to 18 digits)"
        )
    return int(value)


async def _relay(call: Any, ids: EventIds) -> AsyncIterator[bytes]:
    pending: asyncio.Task[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(call.read())
            # The read stays pending across keepalives: cancelling it would cancel the call.
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_S)
            if not done:
                yield b": keepalive\n\n"
                continue
            event = pending.result()
            pending = None
            if event is grpc.aio.EOF:
                return
            name, data = render.event(event)
            yield sse(name, ids.next(event.seq), data)
            if name == "job" and data["status"] in render.TERMINAL_JOB:
                return
    except grpc.aio.AioRpcError as exc:
        # Headers are gone already; the client resumes with Last-Event-ID.
        log.warning("job event stream ended: %s %s", exc.code(), exc.details())
    finally:
        if pending is not None:
            pending.cancel()
        call.cancel()


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "item and job events"}},
)
async def job_events(
    job_id: str,
    who: AnyKey,
    up: Stubs,
    last_event_id: Annotated[
        str | None,
        Header(description="the `id` of the last event received: the stream resumes after it"),
        WithJsonSchema({"type": "string", "pattern": "^[0-9]{0,18}$"}),
    ] = None,
) -> StreamingResponse:
    """Follow a job live: `item` events at each item change, `job` events with counts."""
    ids = EventIds(_last_event_id(last_event_id))
    after_seq = ids.resume_point
    # Ask for the job first, so an unknown job or another tenant's is a plain 404,
    # not a stream that fails after its 200.
    await up.scheduler.GetJob(scheduler_pb2.GetJobRequest(tenant=who.scope, job_id=job_id), timeout=up.timeout_s,
                              metadata=who.metadata)
    call = up.scheduler.WatchJob(scheduler_pb2.WatchJobRequest(tenant=who.scope, job_id=job_id, after_seq=after_seq),
                                 metadata=who.metadata)
    return StreamingResponse(
        _relay(call, ids),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
