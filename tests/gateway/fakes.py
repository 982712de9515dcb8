"""In-process fake Scheduler and RateLimiter: record every call, answer what the test set.

fake.reply("GetJob", scheduler_pb2.Job(id="j1"))
fake.reply("SubmitJob", Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", "queue_full", 7))
fake.calls("SubmitJob")   # the requests received, in order
fake.principals("SubmitJob")  # whom the gateway said each was for

The server checks service tokens as the real ones do (tests/support/tokens.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from fairway.ratelimiter.v1 import ratelimiter_pb2, ratelimiter_pb2_grpc
from fairway.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from services.common.auth import AcceptedTokens, Principal, ServiceAuth
from services.common.grpc_server import create_server
from tests.support.tokens import ACCEPTED


@dataclass
class Abort:
    code: grpc.StatusCode
    message: str
    error_code: str = ""
    retry_after_s: float | None = None


class Recorder:
    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.named: list[tuple[str, Principal | None]] = []
        self.replies: dict[str, Any] = {}

    def reset(self) -> None:
        self.received.clear()
        self.named.clear()
        self.replies.clear()

    def reply(self, method: str, answer: Any) -> None:
        self.replies[method] = answer

    def calls(self, method: str) -> list[Any]:
        return [request for name, request in self.received if name == method]

    def principals(self, method: str) -> list[Principal | None]:
        return [principal for name, principal in self.named if name == method]

    async def answer(self, method: str, request: Any, context: grpc.aio.ServicerContext, default: Any) -> Any:
        self.received.append((method, request))
        self.named.append((method, Principal.of(context.invocation_metadata())))
        found = self.replies.get(method, default)
        if callable(found):
            found = found(request)
        if isinstance(found, Abort):
            metadata = []
            if found.error_code:
                metadata.append(("fairway-error", found.error_code))
            if found.retry_after_s is not None:
                metadata.append(("retry-after", str(found.retry_after_s)))
            await context.abort(found.code, found.message, trailing_metadata=tuple(metadata))
        return found


def _unary(method: str, default: Any) -> Any:
    async def handler(self: Recorder, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.answer(method, request, context, default)

    return handler


def tenant_of_key(request: scheduler_pb2.AuthenticateRequest) -> Any:
    """Keys spelt "key-<tenant>" belong to that tenant; any other key is unknown."""
    if request.api_key.startswith("key-"):
        return scheduler_pb2.AuthenticateResponse(tenant=request.api_key.removeprefix("key-"))
    return Abort(grpc.StatusCode.UNAUTHENTICATED, "unknown key", "unauthorized")


class FakeScheduler(Recorder, scheduler_pb2_grpc.SchedulerServicer):
    Authenticate = _unary("Authenticate", tenant_of_key)
    CreateTenant = _unary("CreateTenant", scheduler_pb2.Tenant())
    GetTenant = _unary("GetTenant", scheduler_pb2.Tenant())
    UpdateTenant = _unary("UpdateTenant", scheduler_pb2.Tenant())
    AddCredits = _unary("AddCredits", scheduler_pb2.AddCreditsResponse())
    ListTenants = _unary("ListTenants", scheduler_pb2.ListTenantsResponse())
    RotateKey = _unary("RotateKey", scheduler_pb2.RotateKeyResponse())
    SubmitJob = _unary("SubmitJob", scheduler_pb2.Job(id="job-1"))
    GetJob = _unary("GetJob", scheduler_pb2.Job(id="job-1"))
    ListJobs = _unary("ListJobs", scheduler_pb2.ListJobsResponse())
    ListItems = _unary("ListItems", scheduler_pb2.ListItemsResponse())
    CancelJob = _unary("CancelJob", scheduler_pb2.Job(id="job-1"))
    GetQueueStats = _unary("GetQueueStats", scheduler_pb2.QueueStats())
    ReportUpstreamResult = _unary("ReportUpstreamResult", scheduler_pb2.UpstreamResultResponse())

    async def WatchJob(
        self, request: scheduler_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scheduler_pb2.JobEvent]:
        events = await self.answer("WatchJob", request, context, [])
        for event in events:
            if event.seq > request.after_seq:
                yield event


class FakeRateLimiter(Recorder, ratelimiter_pb2_grpc.RateLimiterServicer):
    Acquire = _unary("Acquire", ratelimiter_pb2.AcquireResponse())
    Settle = _unary("Settle", ratelimiter_pb2.SettleResponse())
    Release = _unary("Release", ratelimiter_pb2.ReleaseResponse())
    Adjust = _unary("Adjust", ratelimiter_pb2.AdjustResponse())
    ReportUpstream = _unary("ReportUpstream", ratelimiter_pb2.UpstreamReportResponse())
    GetStats = _unary("GetStats", ratelimiter_pb2.GetStatsResponse())
    SetTenantCaps = _unary("SetTenantCaps", ratelimiter_pb2.TenantCapsResponse())


class Fakes:
    """Both fakes on one gRPC server (each answers only its own service), with standard health."""

    def __init__(self) -> None:
        self.scheduler = FakeScheduler()
        self.ratelimiter = FakeRateLimiter()
        self.server, port, self.health = create_server(
            [
                (scheduler_pb2_grpc.add_SchedulerServicer_to_server, self.scheduler),
                (ratelimiter_pb2_grpc.add_RateLimiterServicer_to_server, self.ratelimiter),
            ],
            service_names=["fairway.scheduler.v1.Scheduler", "fairway.ratelimiter.v1.RateLimiter"],
            address="127.0.0.1:0",
            auth=ServiceAuth(AcceptedTokens.parse(ACCEPTED)),
        )
        self.address = f"127.0.0.1:{port}"

    async def start(self) -> None:
        await self.server.start()
        await self.health.set(serving=True)

    async def stop(self) -> None:
        await self.server.stop(None)

    def reset(self) -> None:
        self.scheduler.reset()
        self.ratelimiter.reset()
