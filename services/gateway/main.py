"""`fairway run gateway`: the HTTP API, configured from the environment."""

from __future__ import annotations

import uvicorn

from services.common.entry import load_settings
from services.common.logging import configure_logging, get_logger
from services.gateway.app import create_app
from services.gateway.config import Settings

log = get_logger(__name__)

# Open event streams are cut after this on shutdown; clients resume with Last-Event-ID.
GRACEFUL_SHUTDOWN_S = 10


def main() -> int:
    configure_logging("gateway")
    settings = load_settings(Settings)
    if settings is None:
        return 2
    log.info("gateway on http://%s:%d", settings.host, settings.port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return 0
