"""For the operator and the platform: stats, health, readiness, metrics."""

from __future__ import annotations

import time
from typing import Any

import grpc
from fairway.ratelimiter.v1 import ratelimiter_pb2
from fairway.scheduler.v1 import scheduler_pb2
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common.logging import get_logger
from services.gateway import render
from services.gateway.auth import AdminKey, Stubs
from services.gateway.errors import DEFAULT_RETRY_AFTER_S, ApiError, from_rpc_error
from services.gateway.openapi import documented

log = get_logger(__name__)
router = APIRouter(tags=["operations"])


@router.get("/v1/stats/ratelimiter")
async def ratelimiter_stats(who: AdminKey, up: Stubs) -> dict[str, Any]:
    """Per upstream budget: limit, use in the last minute, queue length, cooldown."""
    try:
        stats = await up.ratelimiter.GetStats(ratelimiter_pb2.GetStatsRequest(), timeout=up.timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, "ratelimiter") from exc
    queue: scheduler_pb2.QueueStats | None
    try:
        queue = await up.scheduler.GetQueueStats(
            scheduler_pb2.GetQueueStatsRequest(), timeout=up.timeout_s, metadata=who.metadata
        )
    except grpc.aio.AioRpcError as exc:
        # Budgets are still worth showing; the health block says the queue is unknown.
        log.warning("queue stats unavailable: %s", exc.code())
        queue = None
    return render.ratelimiter_stats(stats, queue, time.time())


@router.get("/v1/stats/queue")
async def queue_stats(who: AdminKey, up: Stubs) -> dict[str, Any]:
    """Per tenant: queued, processing, oldest queued age, dispatched last minute; per lane totals."""
    stats = await up.scheduler.GetQueueStats(
        scheduler_pb2.GetQueueStatsRequest(), timeout=up.timeout_s, metadata=who.metadata
    )
    return render.queue_stats(stats)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses=documented({503: "The scheduler or the ratelimiter fails its health check; retry after Retry-After."}),
)
async def readyz(up: Stubs) -> JSONResponse:
    """Ready when the scheduler and the ratelimiter answer their health checks."""
    ready = await up.ready()
    down = [name for name, ok in ready.items() if not ok]
    if down:
        return ApiError(
            503,
            "unavailable",
            f"Not ready: no healthy answer from the {' and the '.join(down)}; retry shortly.",
            retry_after_s=DEFAULT_RETRY_AFTER_S,
        ).response()
    return JSONResponse({"status": "ready", "dependencies": {name: "ok" for name in ready}})


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {}}}}},
)
async def metrics(request: Request) -> Response:
    """Request counts, latency and requests in flight, for Prometheus."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
