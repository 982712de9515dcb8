"""`fairway run ratelimiter`: wiring only."""

from __future__ import annotations

import asyncio
import contextlib

from pydantic import ValidationError

from services.common.errors import ConfigError
from services.common.grpc_server import serve
from services.common.logging import configure_logging, get_logger
from services.common.metrics import start_metrics
from services.ratelimiter.config import RateLimiterConfig
from services.ratelimiter.server import RateLimiterServer, create_server

log = get_logger(__name__)


async def _run(config: RateLimiterConfig) -> None:
    parts = RateLimiterServer(config)
    server, port, health = create_server(config, parts)
    start_metrics(config.host, config.metrics_port)
    log.info("ratelimiter on %s:%d, budgets: %s", config.host, port, ", ".join(b.name for b in parts.book.all()))

    async def ready() -> bool:
        # Serving only once Redis answers; the watch flips health either way afterwards.
        with contextlib.suppress(Exception):
            await parts.store.ping()
            return True
        return False

    watch = asyncio.create_task(parts.limiter.watch(config.probe_interval_s))

    async def on_stop() -> None:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await parts.store.aclose()

    await serve(server, health, grace_s=config.grace_s, on_stop=on_stop, ready=ready)


def main() -> int:
    configure_logging("ratelimiter")
    try:
        config = RateLimiterConfig()  # type: ignore[call-arg]  # fields come from the environment
    except ValidationError as exc:
        log.error("invalid settings: %s", exc)
        return 2
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(_run(config))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0
