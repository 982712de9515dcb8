"""`GET /v1/jobs/{id}/events`: the scheduler's WatchJob stream, relayed as server-sent events.

    event: item            event: job
    id: 17                 id: 18
    data: {...}            data: {...}

`Last-Event-ID` (the last `id` a client saw) resumes: an `id` is the scheduler's resume
point, so nothing after it is missed (the last few seconds may repeat). The stream ends
after the job's terminal `job` event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import grpc
from fairway.scheduler.v1 import scheduler_pb2
from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse

from services.common.logging import get_logger
from services.gateway import render
from services.gateway.auth import AnyKey, Stubs
from services.gateway.errors import ApiError
from services.gateway.schemas import INT64_MAX

log = get_logger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# A comment line this often keeps proxies from closing a quiet stream.
KEEPALIVE_S = 15.0


def sse(name: str, seq: int, data: dict[str, Any]) -> bytes:
    return f"event: {name}\nid: {seq}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _resume_point(last_event_id: str | None) -> int:
    if not last_event_id:
        return 0
    try:
        seq = int(last_event_id)
    except ValueError:
        raise ApiError(422, "invalid_request", "Last-Event-ID: must be the id of an event of this stream") from None
    if not 0 <= seq <= INT64_MAX:
        raise ApiError(422, "invalid_request", f"Last-Event-ID: must be from 0 to {INT64_MAX}")
    return seq


async def _relay(call: Any) -> AsyncIterator[bytes]:
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
            yield sse(name, event.seq, data)
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
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Follow a job live: `item` events at each item change, `job` events with counts."""
    after_seq = _resume_point(last_event_id)
    # Ask for the job first, so an unknown job or another tenant's is a plain 404,
    # not a stream that fails after its 200.
    await up.scheduler.GetJob(scheduler_pb2.GetJobRequest(tenant=who.scope, job_id=job_id), timeout=up.timeout_s)
    call = up.scheduler.WatchJob(scheduler_pb2.WatchJobRequest(tenant=who.scope, job_id=job_id, after_seq=after_seq))
    return StreamingResponse(
        _relay(call),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
