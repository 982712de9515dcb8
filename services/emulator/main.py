"""`fairway run emulator`: the provider emulator alone, configured from the environment."""

from __future__ import annotations

import uvicorn
from pydantic import ValidationError

from services.common.errors import ConfigError
from services.common.logging import configure_logging, get_logger
from services.emulator.app import create_app
from services.emulator.config import EmulatorSettings

log = get_logger("services.emulator")


def main() -> int:
    configure_logging("emulator")
    try:
        settings = EmulatorSettings()
        app = create_app(settings)
    except (ValidationError, ConfigError) as exc:
        log.error("invalid emulator settings: %s", exc)
        return 2
    log.info(
        "provider emulator on http://%s:%d (time scale %g, seed %d)",
        settings.host,
        settings.port,
        settings.time_scale,
        settings.seed,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=75,
        server_header=False,
    )
    return 0
