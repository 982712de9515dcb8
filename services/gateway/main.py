"""`fairway run gateway`: the HTTP API, configured from the environment."""

from __future__ import annotations

import uvicorn
from pydantic import ValidationError

from services.common.logging import configure_logging, get_logger
from services.gateway.app import create_app
from services.gateway.config import Settings

log = get_logger(__name__)

# Open event streams are cut after this on shutdown; clients resume with Last-Event-ID.
GRACEFUL_SHUTDOWN_S = 10


def main() -> int:
    configure_logging("gateway")
    try:
        # The required fields come from the environment, which mypy cannot see.
        settings = Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        for err in exc.errors():
            log.error("bad setting %s: %s", ".".join(str(p) for p in err["loc"]), err["msg"])
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
