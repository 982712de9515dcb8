"""`fairway run scheduler` and `fairway migrate`: wiring only."""

from __future__ import annotations

import asyncpg
import uvloop

from services.common.entry import load_settings
from services.common.errors import ConfigError
from services.common.grpc_server import serve
from services.common.logging import configure_logging, get_logger
from services.common.metrics import start_metrics
from services.scheduler.config import DatabaseConfig, SchedulerConfig
from services.scheduler.migrations import migrate
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
    try:
        uvloop.run(_run(config))
    except ConfigError as exc:
        get_logger(__name__).error("%s", exc)
        return 2
    return 0


async def _migrate(database_url: str) -> list[int]:
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def migrate_main() -> int:
    """Apply the migrations the database lacks, then exit (0: the schema is current)."""
    configure_logging("migrate")
    config = load_settings(DatabaseConfig)
    if config is None:
        return 2
    applied = uvloop.run(_migrate(config.database_url))
    log = get_logger(__name__)
    log.info("applied migrations %s" if applied else "the schema was current%s", applied or "")
    return 0
