"""Wiring of the scheduler's parts into one gRPC server, apart from `main`.

    app = await create_scheduler(config)
    await serve(app.server, app.health, grace_s=config.grace_seconds, on_stop=app.close)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import grpc
from fairway.scheduler.v1 import scheduler_pb2_grpc

from services.common.auth import AcceptedTokens, ServiceAuth
from services.common.errors import ConfigError, FairwayError
from services.common.grpc_errors import ErrorMapping
from services.common.grpc_server import HealthState, create_server
from services.common.limits import Limits
from services.common.supervision import Supervisor
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.errors import BudgetUnavailable
from services.scheduler.cancels import CHANNEL as CANCELS_CHANNEL
from services.scheduler.cancels import CancelNotices
from services.scheduler.config import SchedulerConfig
from services.scheduler.dispatch_servicer import DispatchServicer
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.errors import DependencyDown, InvalidRequest
from services.scheduler.events import JobSignals
from services.scheduler.jobs import Jobs
from services.scheduler.migrations import migrate, pending
from services.scheduler.notices import Notices
from services.scheduler.outcomes import Outcomes
from services.scheduler.predictors import PredictorRegistry
from services.scheduler.rates import DispatchRates
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.sql import create_pool
from services.scheduler.tenants import TenantDirectory

SERVICE_NAMES = ("fairway.scheduler.v1.Scheduler", "fairway.scheduler.v1.Dispatch")


def _translate(exc: Exception) -> FairwayError | None:
    if isinstance(exc, (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)):
        # Two transactions crossed (a cancel and a completion of one job): the loser retries.
        return DependencyDown("a concurrent change got in the way; retry", retry_after_s=0.1)
    if isinstance(exc, asyncpg.DataError) or (isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)):
        # A value PostgreSQL cannot store (a NUL character, a number out of range), or one
        # asyncpg cannot send (its InterfaceError that is also a ValueError): the request's,
        # since every value the scheduler makes itself fits its column.
        return InvalidRequest(f"a value in the request cannot be stored: {exc}")
    if isinstance(exc, (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                        asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                        asyncpg.TooManyConnectionsError, asyncpg.OperatorInterventionError)):
        # OperatorInterventionError: the server shut down, crashed or canceled the statement.
        # InternalClientError: a connection cut mid-statement (a restart); the pool replaces it.
        return DependencyDown("the database is not reachable; retry shortly", retry_after_s=1.0)
    if isinstance(exc, BudgetUnavailable):
        return DependencyDown("the ratelimiter is not reachable; retry shortly", retry_after_s=1.0)
    return None


@dataclass
class SchedulerApp:
    server: grpc.aio.Server
    port: int
    health: HealthState
    pool: asyncpg.Pool
    dispatcher: Dispatcher
    outcomes: Outcomes
    budgets: BudgetClient
    notices: Notices
    supervisor: Supervisor

    async def close(self) -> None:
        await self.supervisor.stop()
        await self.dispatcher.stop()
        await self.notices.stop()
        await self.budgets.close()
        await self.pool.close()


async def create_scheduler(config: SchedulerConfig) -> SchedulerApp:
    """Migrate the database, load the dispatch state, start the background loops under one
    supervisor whose verdict is the server's health, and build the (unstarted) server."""
    conn = await asyncpg.connect(config.database_url)
    try:
        if config.migrate:
            await migrate(conn)
        elif missing := await pending(conn):
            raise ConfigError(
                f"the database lacks migrations {missing}: run `fairway migrate` first (the migrations Job)"
            )
    finally:
        await conn.close()
    pool = await create_pool(config.database_url, min_size=config.db_pool_min, max_size=config.db_pool_max)
    replica = uuid.uuid4().hex[:12]
    budgets = BudgetClient(config.ratelimiter_addr, token=config.service_token.get_secret_value())
    tenants = TenantDirectory(pool)
    await tenants.load()
    signals = JobSignals(pool, replica)
    dispatcher = Dispatcher(pool, budgets, PredictorRegistry(), tenants, signals, config, replica,
                            DispatchRates(pool, replica))
    jobs = Jobs(pool, item_cost=config.item_cost, replica=replica, on_backlog=dispatcher.add_backlog,
                limits=Limits.load(config.limits_path))
    cancels = CancelNotices(dispatcher.predictors, replica)
    outcomes = Outcomes(pool, dispatcher, signals, jobs, config, cancels)
    notices = Notices(config.database_url)
    notices.subscribe("fairway_backlog", dispatcher.heard_backlog)
    notices.subscribe("fairway_tenants", dispatcher.heard_tenant)
    notices.subscribe("fairway_jobs", signals.heard)
    notices.subscribe(CANCELS_CHANNEL, cancels.heard)
    notices.on_reconnect(dispatcher.catch_up)
    notices.on_reconnect(signals.wake_all)
    server, port, health = create_server(
        [
            (scheduler_pb2_grpc.add_SchedulerServicer_to_server,
             SchedulerServicer(pool, tenants, jobs, outcomes, dispatcher, signals)),
            (scheduler_pb2_grpc.add_DispatchServicer_to_server, DispatchServicer(dispatcher, outcomes)),
        ],
        service_names=SERVICE_NAMES,
        address=config.address,
        auth=ServiceAuth(AcceptedTokens.parse(config.accepted_tokens)),
        interceptors=[ErrorMapping(_translate)],
        reflection_on=config.grpc_reflection,
    )
    supervisor = Supervisor(health.set_part, unhealthy_after_s=config.unhealthy_after_s)
    app = SchedulerApp(server, port, health, pool, dispatcher, outcomes, budgets, notices, supervisor)
    try:
        signals.start(supervisor)
        # Listening before the index is loaded: a submit is either in the load or heard.
        await notices.start(supervisor)
        await dispatcher.start(supervisor)
        outcomes.start(supervisor)
    except BaseException:
        await app.close()
        raise
    return app
