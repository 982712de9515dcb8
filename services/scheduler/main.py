"""`fairway run scheduler`: wiring only."""

from __future__ import annotations

import uvloop

from services.common.entry import load_settings
from services.common.grpc_server import serve
from services.common.logging import configure_logging, get_logger
from services.common.metrics import start_metrics
from services.scheduler.config import SchedulerConfig
from services.scheduler.server import create_scheduler


async def _run(config: SchedulerConfig) -> None:
    app = await create_scheduler(config)
    get_logger(__name__).info("scheduler on %s", config.address)
    await serve(app.server, app.health, grace_s=config.grace_seconds, on_stop=app.close)


def main() -> int:
    configure_logging("scheduler")
    config = load_settings(SchedulerConfig)
    if config is None:
        return 2
    start_metrics(config.host, config.metrics_port)
    uvloop.run(_run(config))
    return 0
