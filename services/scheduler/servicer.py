"""The `fairway.scheduler.v1.Scheduler` service: thin translation to the domain modules.

Only the gateway calls it (services/common/auth.py); each call acts for the principal the
gateway names, checked here (services/scheduler/access.py) before anything is read or written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import asyncpg
import grpc
from fairway.scheduler.v1 import scheduler_pb2 as pb
from fairway.scheduler.v1 import scheduler_pb2_grpc

from services.common.logging import get_logger
from services.scheduler.access import job_scope, principal, require_admin, scope, tenant_scope
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.errors import InvalidRequest, Unauthenticated
from services.scheduler.events import JobSignals, watch
from services.scheduler.jobs import Jobs
from services.scheduler.metrics import SUBMITTED
from services.scheduler.outcomes import Outcomes
from services.scheduler.sql import QUERIES
from services.scheduler.tenants import TenantDirectory

log = get_logger(__name__)
Ctx: TypeAlias = grpc.aio.ServicerContext


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(
        self, pool: asyncpg.Pool, tenants: TenantDirectory, jobs: Jobs, outcomes: Outcomes,
        dispatcher: Dispatcher, signals: JobSignals,
    ) -> None:
        self._pool = pool
        self._tenants = tenants
        self._jobs = jobs
        self._outcomes = outcomes
        self._dispatcher = dispatcher
        self._signals = signals

    async def Authenticate(self, request: pb.AuthenticateRequest, context: Ctx) -> pb.AuthenticateResponse:
        # No principal yet: this is how the gateway finds it.
        tenant = await self._tenants.authenticate(request.api_key)
        if tenant is None:
            raise Unauthenticated("the API key is not valid")
        return pb.AuthenticateResponse(tenant=tenant)

    async def CreateTenant(self, request: pb.CreateTenantRequest, context: Ctx) -> pb.Tenant:
        require_admin(context)
        return await self._tenants.create(request)

    async def GetTenant(self, request: pb.GetTenantRequest, context: Ctx) -> pb.Tenant:
        return await self._tenants.get(tenant_scope(principal(context), request.id))

    async def UpdateTenant(self, request: pb.UpdateTenantRequest, context: Ctx) -> pb.Tenant:
        require_admin(context)
        tenant = await self._tenants.update(request)
        self._dispatcher.wake()
        return tenant

    async def AddCredits(self, request: pb.AddCreditsRequest, context: Ctx) -> pb.AddCreditsResponse:
        require_admin(context)
        return pb.AddCreditsResponse(credits=await self._tenants.add_credits(request.id, request.amount))

    async def ListTenants(self, request: pb.ListTenantsRequest, context: Ctx) -> pb.ListTenantsResponse:
        require_admin(context)
        return await self._tenants.page(request.limit, request.after)

    async def RotateKey(self, request: pb.RotateKeyRequest, context: Ctx) -> pb.RotateKeyResponse:
        require_admin(context)
        return pb.RotateKeyResponse(api_key=await self._tenants.rotate_key(request.id))

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Ctx) -> pb.Job:
        if not scope(principal(context), request.tenant):
            raise InvalidRequest("tenant: a job is submitted for one tenant")
        job = await self._jobs.submit(request)
        SUBMITTED.inc(len(request.items))
        return job

    async def GetJob(self, request: pb.GetJobRequest, context: Ctx) -> pb.Job:
        return await self._jobs.get(job_scope(principal(context), request.tenant, request.job_id), request.job_id)

    async def ListJobs(self, request: pb.ListJobsRequest, context: Ctx) -> pb.ListJobsResponse:
        scope(principal(context), request.tenant)
        return await self._jobs.list(request)

    async def ListItems(self, request: pb.ListItemsRequest, context: Ctx) -> pb.ListItemsResponse:
        job_scope(principal(context), request.tenant, request.job_id)
        return await self._jobs.list_items(request)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Ctx) -> pb.Job:
        # In-flight calls are canceled upstream by their predictors, told at once on their
        # work streams (on every replica); each item ends as its provider answers the cancel.
        tenant = job_scope(principal(context), request.tenant, request.job_id)
        return await self._outcomes.cancel(tenant, request.job_id)

    async def WatchJob(self, request: pb.WatchJobRequest, context: Ctx) -> AsyncIterator[pb.JobEvent]:
        tenant = job_scope(principal(context), request.tenant, request.job_id)
        async for event in watch(self._pool, self._jobs, self._signals, tenant, request.job_id, request.after_seq):
            yield event

    async def GetQueueStats(self, request: pb.GetQueueStatsRequest, context: Ctx) -> pb.QueueStats:
        require_admin(context)
        by_tenant = await self._pool.fetch(QUERIES["queue_by_tenant"])
        by_lane = await self._pool.fetch(QUERIES["queue_by_lane"])
        # A tenant with nothing queued or in flight is listed while it had dispatches lately
        # (on any replica).
        dispatched = await self._dispatcher.rates.everywhere()
        listed = {r["tenant_id"] for r in by_tenant}
        return pb.QueueStats(
            tenants=[
                pb.TenantQueue(tenant=r["tenant_id"], queued=r["queued"], processing=r["processing"],
                               oldest_queued_age_s=r["oldest_age"],
                               dispatched_last_minute=dispatched.get(r["tenant_id"], 0))
                for r in by_tenant
            ] + [
                pb.TenantQueue(tenant=tenant, dispatched_last_minute=n)
                for tenant, n in sorted(dispatched.items()) if tenant not in listed
            ],
            lanes=[pb.LaneQueue(lane=r["lane"], queued=r["queued"], processing=r["processing"],
                                tenants=r["tenants"]) for r in by_lane],
            predictors=await self._dispatcher.presence.everywhere(),
        )

    async def ReportUpstreamResult(self, request: pb.UpstreamResult, context: Ctx) -> pb.UpstreamResultResponse:
        # No principal: a provider's webhook, whose signature the gateway (alone allowed here) verified.
        return await self._outcomes.upstream_result(request)

