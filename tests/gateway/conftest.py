"""A gateway app in front of in-process fake upstreams, driven over httpx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services.common.embedded import free_port
from services.gateway.app import create_app
from services.gateway.config import Settings
from tests.gateway.fakes import Fakes
from tests.support.tokens import TOKENS

ADMIN_KEY = "admin-secret"
WEBHOOK_SECRET = "whsec_" + "c2VjcmV0LWZvci10ZXN0cy0xMjM0NTY3ODkw"
MAX_BODY_BYTES = 64 * 1024
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def tenant(name: str) -> dict[str, str]:
    """Headers of tenant `name` (the fake scheduler knows every "key-<name>")."""
    return {"Authorization": f"Bearer key-{name}"}


def settings_for(scheduler: str, ratelimiter: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "admin_key": ADMIN_KEY,
        "scheduler_addr": scheduler,
        "ratelimiter_addr": ratelimiter,
        "replicate_webhook_secret": WEBHOOK_SECRET,
        "rpc_timeout_s": 5.0,
        "service_token": TOKENS["gateway"],
        **overrides,
    }
    return Settings.model_validate(values)


async def serve(app: FastAPI) -> AsyncIterator[str]:
    """`app` under uvicorn on a free port of this process, for as long as the iteration runs."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    # `started` flips once the socket listens; the loop yields to the server until then.
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def running_fakes() -> AsyncIterator[Fakes]:
    running = Fakes()
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
def fakes(running_fakes: Fakes) -> Fakes:
    """The fake upstreams, with no calls recorded and their default answers."""
    running_fakes.reset()
    return running_fakes


async def client_of(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway with `settings` (lifespan run), driven in-process over httpx."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


@pytest.fixture(scope="session")
async def client(running_fakes: Fakes) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway, in front of the fakes; request `fakes` too to set their answers."""
    address = running_fakes.address
    async for c in client_of(settings_for(address, address, max_body_bytes=MAX_BODY_BYTES)):
        yield c


@pytest.fixture(scope="session")
async def orphan() -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose scheduler and ratelimiter are not there at all."""
    dead = f"127.0.0.1:{free_port()}"
    async for c in client_of(settings_for(dead, dead)):
        yield c
