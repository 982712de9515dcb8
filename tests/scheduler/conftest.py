"""Scheduler fixtures: the scheduler in-process on real PostgreSQL, a real ratelimiter
(in-process gRPC server on real Redis), and fake predictors speaking the Dispatch stream
over real gRPC."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import pytest
import yaml
from fairway.scheduler.v1 import scheduler_pb2 as pb
from fairway.scheduler.v1 import scheduler_pb2_grpc

from services.common.auth import ADMIN
from services.ratelimiter.config import RateLimiterConfig
from services.ratelimiter.server import RateLimiterServer
from services.ratelimiter.server import create_server as create_ratelimiter
from services.scheduler import dispatcher
from services.scheduler.config import SchedulerConfig
from services.scheduler.server import SchedulerApp, create_scheduler
from services.scheduler.sql import QUERIES
from tests.support.tokens import ACCEPTED, channel_as, service_env

# Budgets far above what a test dispatches, except "slow-model" (3 grants, then a wait of
# seconds) and "paced-model" (60 grants, then one a second): predictor slots, not budgets,
# bound the tests' dispatch unless they pick one of those.
LIMITS = {
    "utilization": 1.0,
    "replicate": {"create_rpm": 6_000_000, "read_rpm": 6_000_000},
    "openai": {
        "default": {"rpm": 6_000_000, "tpm": 6_000_000_000},
        "models": {
            "slow-model": {"rpm": 6, "tpm": 6_000_000},
            "paced-model": {"rpm": 120, "tpm": 6_000_000},
            "token-model": {"rpm": 6_000_000, "tpm": 3_000, "max_output_tokens": 1_000},
        },
    },
}


@pytest.fixture
def limits_path(tmp_path: Path) -> str:
    path = tmp_path / "limits.yaml"
    path.write_text(yaml.safe_dump(LIMITS))
    return str(path)


@pytest.fixture
async def ratelimiter(redis_url: str, limits_path: str) -> AsyncIterator[str]:
    path = limits_path
    config = RateLimiterConfig.model_validate({
        "redis_url": redis_url, "limits_path": path, "port": 0, "metrics_port": 0,
        "key_prefix": f"test:{uuid.uuid4().hex[:10]}", "burst_fraction": 0.5, "accepted_tokens": ACCEPTED,
    })
    parts = RateLimiterServer(config)
    server, port, _ = create_ratelimiter(config, parts)
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)
    await parts.store.aclose()


StartScheduler = Callable[..., Awaitable[SchedulerApp]]


@pytest.fixture
async def start_scheduler(database_url: str, ratelimiter: str, limits_path: str) -> AsyncIterator[StartScheduler]:
    """Start scheduler replicas on this test's database; all are closed at the end."""
    apps: list[SchedulerApp] = []

    async def start(**overrides: Any) -> SchedulerApp:
        config = SchedulerConfig.model_validate({
            "DATABASE_URL": database_url, "FAIRWAY_SCHEDULER_PORT": 0, "FAIRWAY_RATELIMITER_ADDR": ratelimiter,
            "FAIRWAY_LIMITS": limits_path, "DB_POOL_MIN": 1, "DB_POOL_MAX": 6, **service_env("scheduler"),
            **overrides,
        })
        app = await create_scheduler(config)
        await app.server.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.server.stop(0)
        await app.close()


@pytest.fixture
async def scheduler(start_scheduler: StartScheduler) -> SchedulerApp:
    return await start_scheduler()


@pytest.fixture
async def db(database_url: str, scheduler: SchedulerApp) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


class Client:
    """The Scheduler and Dispatch APIs of one replica, as the gateway (for the admin) and
    predictors use them, each with its own token."""

    def __init__(self, app: SchedulerApp) -> None:
        self.app = app
        self.channel = channel_as("gateway", f"127.0.0.1:{app.port}", principal=ADMIN)
        self.predictor_channel = channel_as("predictor", f"127.0.0.1:{app.port}")
        self.api = scheduler_pb2_grpc.SchedulerStub(self.channel)
        self.dispatch = scheduler_pb2_grpc.DispatchStub(self.predictor_channel)

    async def tenant(self, tenant_id: str, **fields: Any) -> pb.Tenant:
        tenant: pb.Tenant = await self.api.CreateTenant(pb.CreateTenantRequest(id=tenant_id, **fields))
        return tenant

    async def submit(
        self, tenant: str, n: int, *, provider: str = "replicate", model: str = "acme/fast",
        priority: int = 0, key: str = "",
    ) -> pb.Job:
        if provider == "openai":
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        else:
            body = {"prompt": "a cat"}
        items = [pb.ItemInput(ref=f"r{i}", input_json=json.dumps(body)) for i in range(n)]
        job: pb.Job = await self.api.SubmitJob(pb.SubmitJobRequest(
            tenant=tenant, provider=provider, model=model, priority=priority, items=items,
            idempotency_key=key, request_hash=key and f"hash-{n}",
        ))
        return job

    async def close(self) -> None:
        await self.channel.close()
        await self.predictor_channel.close()


@pytest.fixture
async def client(scheduler: SchedulerApp) -> AsyncIterator[Client]:
    c = Client(scheduler)
    yield c
    await c.close()


StartPair = Callable[[], Awaitable[tuple[Client, Client]]]


@pytest.fixture
async def replica_pair(start_scheduler: StartScheduler) -> AsyncIterator[StartPair]:
    """Start two replicas on one database (after the test has patched what it needs);
    their clients are closed at the end."""
    clients: list[Client] = []

    async def start() -> tuple[Client, Client]:
        a, b = Client(await start_scheduler()), Client(await start_scheduler())
        clients.extend((a, b))
        return a, b

    yield start
    for c in clients:
        await c.close()


class FakePredictor:
    """A predictor's side of `Dispatch.Work`: says how many items it can take, collects them
    (and, with `accepts_cancels`, the ids of canceled items pushed on the stream)."""

    def __init__(
        self, client: Client, name: str = "fake", providers: tuple[str, ...] = (), *, accepts_cancels: bool = False,
    ) -> None:
        self._client = client
        self._signals: asyncio.Queue[pb.WorkerSignal | None] = asyncio.Queue()
        self._signals.put_nowait(pb.WorkerSignal(hello=pb.WorkerHello(
            worker_id=name, providers=providers, accepts_cancels=accepts_cancels)))
        self.received: asyncio.Queue[pb.Assignment] = asyncio.Queue()
        self.canceled: asyncio.Queue[list[str]] = asyncio.Queue()
        self._call = client.dispatch.Work(self._outgoing())
        self._reader = asyncio.create_task(self._read())

    async def _outgoing(self) -> AsyncIterator[pb.WorkerSignal]:
        while (signal := await self._signals.get()) is not None:
            yield signal

    async def _read(self) -> None:
        async for message in self._call:
            if message.item_id:
                self.received.put_nowait(message)
            if message.canceled_item_ids:
                self.canceled.put_nowait(list(message.canceled_item_ids))

    def ready(self, n: int) -> None:
        self._signals.put_nowait(pb.WorkerSignal(ready=n))

    async def take(self, n: int, timeout_s: float = 20.0) -> list[pb.Assignment]:
        async with asyncio.timeout(timeout_s):
            return [await self.received.get() for _ in range(n)]

    async def complete(self, assignments: list[pb.Assignment]) -> pb.OutcomeResponse:
        response: pb.OutcomeResponse = await self._client.dispatch.Complete(pb.CompleteRequest(completions=[
            pb.Completion(lease=pb.LeaseRef(item_id=a.item_id, lease=a.lease), output_json='{"ok": true}')
            for a in assignments
        ]))
        return response

    async def fail(
        self, assignments: list[pb.Assignment], error: str, *, retryable: bool, retry_after_s: float = 0.0,
        canceled: bool = False,
    ) -> pb.OutcomeResponse:
        response: pb.OutcomeResponse = await self._client.dispatch.Fail(pb.FailRequest(failures=[
            pb.Failure(lease=pb.LeaseRef(item_id=a.item_id, lease=a.lease), error=error,
                       retryable=retryable, retry_after_s=retry_after_s, canceled=canceled)
            for a in assignments
        ]))
        return response

    async def heartbeat(self, assignments: list[pb.Assignment], *, accepts_cancels: bool) -> pb.HeartbeatResponse:
        response: pb.HeartbeatResponse = await self._client.dispatch.Heartbeat(pb.HeartbeatRequest(
            worker_id="fake", leases=[pb.LeaseRef(item_id=a.item_id, lease=a.lease) for a in assignments],
            accepts_cancels=accepts_cancels))
        return response

    async def close(self) -> None:
        self._signals.put_nowait(None)
        self._call.cancel()
        self._reader.cancel()


@pytest.fixture
async def predictor(client: Client) -> AsyncIterator[FakePredictor]:
    p = FakePredictor(client)
    yield p
    await p.close()


class Replicas(NamedTuple):
    a: Client
    b: Client
    predictor: FakePredictor  # on replica A


@pytest.fixture
async def replicas_without_resync(
    replica_pair: StartPair, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Replicas]:
    """Two replicas on one database with no periodic resync during the test (only a NOTIFY
    tells one replica what the other changed), and a predictor on replica A."""
    monkeypatch.setattr(dispatcher, "RESYNC_SECONDS", 3600.0)
    a, b = await replica_pair()
    p = FakePredictor(a)
    yield Replicas(a, b, p)
    await p.close()


async def ledger_reconciles(conn: asyncpg.Connection) -> None:
    """For every tenant with billing on, the balance is the sum of its ledger."""
    rows = await conn.fetch(
        "SELECT t.id, t.credits, coalesce(sum(l.amount), 0) AS total FROM tenants t "
        "LEFT JOIN credit_ledger l ON l.tenant_id = t.id WHERE t.credits IS NOT NULL GROUP BY t.id"
    )
    for row in rows:
        assert row["credits"] == row["total"], dict(row)


async def counters_match_items(conn: asyncpg.Connection) -> None:
    """The dispatch state agrees with the items it describes.

    - every unfinished (PENDING) item is in exactly one place: leased (in flight), waiting in
      `retries`, or ahead of the cursor of its job's stripe; a finished item is in none;
    - once the completions' count moves are folded (as the scheduler's folder does), the
      queue_counts.unfinished per (lane, tenant) and the jobs' finished counts match the
      items, and a job is marked finished exactly when all its items are.
    """
    misplaced = await conn.fetch(
        "SELECT * FROM (SELECT i.id, i.status, l.item_id IS NOT NULL AS leased, r.item_id IS NOT NULL AS waiting, "
        "(SELECT count(*) FROM job_cursors c WHERE c.job_id = i.job_id AND i.seq > c.dispatched "
        "AND i.seq <= c.last_seq) AS queued FROM items i "
        "LEFT JOIN leases l ON l.item_id = i.id LEFT JOIN retries r ON r.item_id = i.id) x "
        "WHERE leased::int + waiting::int + queued <> (status = 'PENDING')::int"
    )
    assert not misplaced, [dict(r) for r in misplaced]
    while (await conn.fetchval(QUERIES["fold_count_moves"], 10_000)) > 0:
        pass
    wrong = await conn.fetch(
        "SELECT * FROM queue_counts q FULL JOIN (SELECT lane, tenant_id, "
        "count(*) FILTER (WHERE status = 'PENDING') AS u "
        "FROM items GROUP BY lane, tenant_id) i USING (lane, tenant_id) "
        "WHERE coalesce(q.unfinished, 0) <> coalesce(i.u, 0)"
    )
    assert not wrong, [dict(r) for r in wrong]
    wrong = await conn.fetch(
        "SELECT j.id, j.n_done, j.n_failed, j.n_canceled, j.finished_at, i.* FROM jobs j JOIN (SELECT job_id, "
        "count(*) FILTER (WHERE status = 'DONE') AS d, count(*) FILTER (WHERE status = 'FAILED') AS f, "
        "count(*) FILTER (WHERE status = 'CANCELED') AS c, count(*) FILTER (WHERE status = 'PENDING') AS p "
        "FROM items GROUP BY job_id) i ON i.job_id = j.id "
        "WHERE (j.n_done, j.n_failed, j.n_canceled) <> (i.d, i.f, i.c) OR (j.finished_at IS NULL) <> (i.p > 0)"
    )
    assert not wrong, [dict(r) for r in wrong]
