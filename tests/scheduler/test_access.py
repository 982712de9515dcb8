"""The scheduler's gRPC port answers only its callers, each for what it may do: the gateway (for
the principal it names) on the Scheduler service, the predictors on Dispatch; health is open."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb
from fairway.scheduler.v1 import scheduler_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.auth import ADMIN, Principal, service_channel
from services.scheduler.server import SchedulerApp
from tests.scheduler.conftest import Client, StartScheduler
from tests.support.tokens import channel_as

Opened = Callable[..., grpc.aio.Channel]


@pytest.fixture
async def opened(scheduler: SchedulerApp) -> AsyncIterator[Opened]:
    """Channels to the scheduler: `opened()` sends nothing, `opened("predictor")` its token,
    `opened("gateway", principal=...)` the gateway's and a principal."""
    channels: list[grpc.aio.Channel] = []

    def open_(identity: str | None = None, *, principal: Principal | None = None) -> grpc.aio.Channel:
        address = f"127.0.0.1:{scheduler.port}"
        channel = (grpc.aio.insecure_channel(address) if identity is None
                   else channel_as(identity, address, principal=principal))
        channels.append(channel)
        return channel

    yield open_
    for channel in channels:
        await channel.close()


async def refused(call: Awaitable[Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


def as_tenant(opened: Opened, tenant: str) -> scheduler_pb2_grpc.SchedulerStub:
    return scheduler_pb2_grpc.SchedulerStub(opened("gateway", principal=Principal(admin=False, tenant=tenant)))


async def test_a_call_without_credentials_is_unauthenticated(opened: Opened) -> None:
    api = scheduler_pb2_grpc.SchedulerStub(opened())
    assert await refused(api.CreateTenant(pb.CreateTenantRequest(id="rich", credits=10**12))) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert await refused(api.ListJobs(pb.ListJobsRequest())) == grpc.StatusCode.UNAUTHENTICATED
    dispatch = scheduler_pb2_grpc.DispatchStub(opened())
    work = dispatch.Work(iter([pb.WorkerSignal(hello=pb.WorkerHello(worker_id="fake")),
                               pb.WorkerSignal(ready=10)]))
    assert await refused(work.read()) == grpc.StatusCode.UNAUTHENTICATED


async def test_an_unknown_token_is_unauthenticated(scheduler: SchedulerApp) -> None:
    async with service_channel(f"127.0.0.1:{scheduler.port}", "not-a-token", metadata=ADMIN.metadata) as channel:
        api = scheduler_pb2_grpc.SchedulerStub(channel)
        assert await refused(api.AddCredits(pb.AddCreditsRequest(id="t", amount=10))) == \
            grpc.StatusCode.UNAUTHENTICATED


async def test_a_predictor_token_cannot_call_the_scheduler_service(opened: Opened, client: Client) -> None:
    await client.tenant("victim")
    job = await client.submit("victim", 1)
    api = scheduler_pb2_grpc.SchedulerStub(opened("predictor", principal=ADMIN))
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await refused(api.CreateTenant(pb.CreateTenantRequest(id="rich", credits=10**12))) == denied
    assert await refused(api.UpdateTenant(pb.UpdateTenantRequest(id="victim", weight=1e-9))) == denied
    assert await refused(api.GetJob(pb.GetJobRequest(tenant="victim", job_id=job.id))) == denied
    assert await refused(api.ListItems(pb.ListItemsRequest(tenant="victim", job_id=job.id))) == denied
    # A provider's word on an item goes through the gateway, which checked its signature.
    assert await refused(api.ReportUpstreamResult(pb.UpstreamResult(
        provider="replicate", upstream_id="p1", status="succeeded", output_json='"forged"'))) == denied


async def test_a_gateway_token_cannot_take_work_as_a_predictor(opened: Opened, client: Client) -> None:
    await client.tenant("victim")
    await client.submit("victim", 1)
    dispatch = scheduler_pb2_grpc.DispatchStub(opened("gateway", principal=ADMIN))
    work = dispatch.Work(iter([pb.WorkerSignal(hello=pb.WorkerHello(worker_id="fake")),
                               pb.WorkerSignal(ready=10)]))
    assert await refused(work.read()) == grpc.StatusCode.PERMISSION_DENIED
    complete = dispatch.Complete(pb.CompleteRequest(completions=[
        pb.Completion(lease=pb.LeaseRef(item_id="00000000-0000-0000-0000-000000000000", lease=1), output_json="{}")]))
    assert await refused(complete) == grpc.StatusCode.PERMISSION_DENIED


async def test_a_tenant_cannot_read_another_tenants_job(opened: Opened, client: Client) -> None:
    await client.tenant("a")
    await client.tenant("b")
    job = await client.submit("b", 2)
    a = as_tenant(opened, "a")
    # As if it did not exist (the HTTP contract's 404), whichever tenant the request names.
    for tenant in ("b", "a"):
        assert await refused(a.GetJob(pb.GetJobRequest(tenant=tenant, job_id=job.id))) == grpc.StatusCode.NOT_FOUND
    assert await refused(a.ListItems(pb.ListItemsRequest(tenant="b", job_id=job.id))) == grpc.StatusCode.NOT_FOUND
    assert await refused(a.CancelJob(pb.CancelJobRequest(tenant="b", job_id=job.id))) == grpc.StatusCode.NOT_FOUND
    events = a.WatchJob(pb.WatchJobRequest(tenant="b", job_id=job.id))
    assert await refused(events.read()) == grpc.StatusCode.NOT_FOUND
    assert await refused(a.GetTenant(pb.GetTenantRequest(id="b"))) == grpc.StatusCode.NOT_FOUND
    # Its own is there.
    b = as_tenant(opened, "b")
    assert (await b.GetJob(pb.GetJobRequest(tenant="b", job_id=job.id))).id == job.id
    assert (await b.GetTenant(pb.GetTenantRequest(id="b"))).id == "b"


async def test_an_empty_tenant_field_is_the_admins_alone(opened: Opened, client: Client) -> None:
    await client.tenant("a")
    await client.tenant("b")
    job = await client.submit("b", 1)
    a = as_tenant(opened, "a")
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await refused(a.ListJobs(pb.ListJobsRequest())) == denied
    assert await refused(a.ListJobs(pb.ListJobsRequest(tenant="b"))) == denied
    assert await refused(a.SubmitJob(pb.SubmitJobRequest(tenant="b", provider="replicate", model="acme/fast",
                                                         items=[pb.ItemInput(input_json="{}")]))) == denied
    # What a tenant cannot, the admin can.
    admin = scheduler_pb2_grpc.SchedulerStub(opened("gateway", principal=ADMIN))
    assert [j.id for j in (await admin.ListJobs(pb.ListJobsRequest())).jobs] == [job.id]
    assert (await admin.GetJob(pb.GetJobRequest(job_id=job.id))).tenant == "b"


async def test_a_tenant_cannot_act_as_admin(opened: Opened, client: Client) -> None:
    await client.tenant("a", credits=10)
    a = as_tenant(opened, "a")
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await refused(a.CreateTenant(pb.CreateTenantRequest(id="rich", credits=10**12))) == denied
    assert await refused(a.AddCredits(pb.AddCreditsRequest(id="a", amount=10**12))) == denied
    assert await refused(a.UpdateTenant(pb.UpdateTenantRequest(id="a", weight=1000))) == denied
    assert await refused(a.GetQueueStats(pb.GetQueueStatsRequest())) == denied
    assert (await client.api.GetTenant(pb.GetTenantRequest(id="a"))).credits == 10


async def test_a_gateway_call_that_names_no_principal_is_refused(opened: Opened, client: Client) -> None:
    await client.tenant("a")
    job = await client.submit("a", 1)
    nobody = scheduler_pb2_grpc.SchedulerStub(opened("gateway"))
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await refused(nobody.GetJob(pb.GetJobRequest(tenant="a", job_id=job.id))) == denied
    assert await refused(nobody.CreateTenant(pb.CreateTenantRequest(id="rich"))) == denied
    # Authenticate is how the gateway finds the principal; it needs none.
    assert await refused(nobody.Authenticate(pb.AuthenticateRequest(api_key="nope"))) == \
        grpc.StatusCode.UNAUTHENTICATED


async def test_health_answers_without_a_token(opened: Opened) -> None:
    reply = await health_pb2_grpc.HealthStub(opened()).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def reflect(channel: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    reply = await call.read()
    call.cancel()
    return [s.name for s in reply.list_services_response.service]


async def test_reflection_is_off_by_default(opened: Opened) -> None:
    assert await refused(reflect(opened("gateway"))) == grpc.StatusCode.UNIMPLEMENTED


async def test_reflection_when_on_needs_a_token(start_scheduler: StartScheduler) -> None:
    app = await start_scheduler(FAIRWAY_GRPC_REFLECTION="true")
    address = f"127.0.0.1:{app.port}"
    async with grpc.aio.insecure_channel(address) as anonymous:
        assert await refused(reflect(anonymous)) == grpc.StatusCode.UNAUTHENTICATED
    async with channel_as("predictor", address) as channel:
        assert "fairway.scheduler.v1.Dispatch" in await reflect(channel)
