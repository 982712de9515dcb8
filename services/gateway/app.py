"""`create_app(settings)`: the gateway's FastAPI application, wired."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway import (
    cors,
    docs,
    errors,
    events,
    jobs,
    methods,
    openapi,
    operations,
    status_page,
    tenants,
    webhooks,
)
from services.gateway.auth import Authenticator
from services.gateway.config import Settings
from services.gateway.metrics import GatewayMetrics, MetricsMiddleware
from services.gateway.ratelimit import TenantRateLimit
from services.gateway.upstreams import Upstreams
from services.gateway.webhooks import WebhookSecret

# Bodies that may be large: a job's items, a provider's output. Every other body is a few
# fields, parsed by FastAPI in one call before the key is checked, so it is kept small.
LARGE_BODY_PATHS = frozenset({"/v1/jobs", "/v1/webhooks/replicate"})
SMALL_BODY_BYTES = 64 * 1024
# Submitted bodies prepared at once, in worker threads; more would only share the GIL.
SUBMIT_WORKERS = 2


class BodyLimitMiddleware:
    """413 for a body over `limit` bytes (SMALL_BODY_BYTES but on LARGE_BODY_PATHS),
    declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.large = limit
        self.small = min(limit, SMALL_BODY_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.large if scope["path"] in LARGE_BODY_PATHS else self.small
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                message = errors.BodyTooLarge(limit).detail
                await errors.error_response(413, "body_too_large", message)(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise errors.BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstreams = Upstreams(settings)
        app.state.upstreams = upstreams
        app.state.authenticator = Authenticator(settings.admin_key.get_secret_value(), upstreams)
        app.state.webhook_secret = WebhookSecret(settings)
        app.state.submit_workers = asyncio.Semaphore(SUBMIT_WORKERS)
        try:
            yield
        finally:
            await upstreams.close()

    app = FastAPI(
        title="Fairway",
        version="1",
        summary="Fair, budget-aware dispatch of AI generation jobs across tenants.",
        lifespan=lifespan,
        # A JSON body is parsed as JSON even when the client forgot its Content-Type.
        strict_content_type=False,
        # /docs is served with Swagger UI's files from this process (services/gateway/docs.py).
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(errors.storable_params)],
    )
    app.state.metrics = GatewayMetrics()
    app.state.tenant_rate = TenantRateLimit(settings.tenant_rps, settings.tenant_burst)
    errors.install(app)
    for module in (tenants, jobs, events, operations, webhooks, status_page, docs):
        app.include_router(module.router)
    openapi.install(app)
    # Innermost first: a 405 is answered before the body is read; CORS headers go on every
    # answer, a 413 included; metrics count everything, preflights included.
    methods.install(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    cors.install(app, settings.cors_origin_list)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
