"""`fairway run predictor`: wiring only."""

from __future__ import annotations

import asyncio
import signal

import uvloop

from services.common.entry import load_settings
from services.common.grpc_server import create_server
from services.common.logging import configure_logging, get_logger
from services.common.metrics import start_metrics
from services.predictor.config import PredictorConfig
from services.predictor.providers import build_providers
from services.predictor.providers.base import CallGate
from services.predictor.work_loop import WorkLoop
from services.ratelimiter.client import BudgetClient

log = get_logger(__name__)


async def _run(config: PredictorConfig) -> None:
    budgets = BudgetClient(config.ratelimiter_addr, token=config.service_token.get_secret_value())
    providers = build_providers(config, budgets, CallGate(config.concurrency))
    worker = WorkLoop(config, providers, budgets)
    # The predictor serves only health (open, like every server's): Kubernetes probes it over gRPC.
    server, port, health = create_server([], service_names=[], address=f"{config.host}:{config.port}", auth=None)
    await server.start()
    await health.set(serving=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    work = asyncio.create_task(worker.run())
    log.info("predictor %s: %d slots, webhooks %s, health on port %d", config.worker_id, config.concurrency,
             "on" if config.public_url else "off", port)
    await asyncio.wait({work, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    await health.set(serving=False)
    await worker.drain(config.grace_seconds)
    work.cancel()
    for provider in providers.values():
        await provider.close()
    await budgets.close()
    await server.stop(1.0)
    log.info("stopped")


def main() -> int:
    configure_logging("predictor")
    config = load_settings(PredictorConfig)
    if config is None:
        return 2
    start_metrics(config.host, config.metrics_port)
    uvloop.run(_run(config))
    return 0
