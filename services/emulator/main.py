"""`fairway run emulator`: the provider emulator alone, configured from the environment."""

from __future__ import annotations

import uvicorn

from services.common.entry import load_settings
from services.common.logging import configure_logging, get_logger
from services.emulator.app import create_app
from services.emulator.config import EmulatorSettings

log = get_logger("services.emulator")


def main() -> int:
    configure_logging("emulator")
    settings = load_settings(EmulatorSettings)
    app = load_settings(lambda: create_app(settings)) if settings is not None else None
    if settings is None or app is None:
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
