"""A gateway app in front of in-process fake upstreams, driven over httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.common.embedded import free_port
from services.gateway.app import create_app
from services.gateway.config import Settings
from tests.gateway.fakes import Fakes

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
        **overrides,
    }
    return Settings.model_validate(values)


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


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


@pytest.fixture(scope="session")
async def client(running_fakes: Fakes) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway, in front of the fakes; request `fakes` too to set their answers."""
    address = running_fakes.address
    async for c in _client(settings_for(address, address, max_body_bytes=MAX_BODY_BYTES)):
        yield c


@pytest.fixture(scope="session")
async def orphan() -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose scheduler and ratelimiter are not there at all."""
    dead = f"127.0.0.1:{free_port()}"
    async for c in _client(settings_for(dead, dead)):
        yield c
