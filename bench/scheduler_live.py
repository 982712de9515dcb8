"""The scheduler as it runs: ratelimiter and scheduler as separate processes, tenants and
jobs through the Scheduler API, and an instant predictor on the real `Dispatch.Work`
stream (it completes each item as it arrives and asks for another).

(1) `newcomer`: a tenant with a 1,000,000-item backlog keeps the lane busy; newcomers
    submit one item each, one every half second; the time from the submit call to the
    newcomer's assignment on the stream.
(2) `skewed`: one tenant with 50,000 items from t=0, nine with 500 arriving every 5 s,
    weights 1, 2, 3 in turn, a budget of 100 items/s: assignments per tenant per second.

    async with LiveScheduler(server_dsn, redis_url, limits) as live: ...
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg
import yaml
from fairway.scheduler.v1 import scheduler_pb2 as pb
from fairway.scheduler.v1 import scheduler_pb2_grpc

from bench.report import spread_ms
from bench.scheduler_data import add_backlog, drop_db, fresh_db
from services.common.auth import ADMIN
from services.common.embedded import free_port
from services.scheduler.migrations import migrate
from tests.support.fairness import jain
from tests.support.processes import ServiceProcess
from tests.support.tokens import channel_as, service_env

ROOMY = {"utilization": 1.0, "replicate": {"create_rpm": 60_000_000, "read_rpm": 60_000_000}}


class LiveScheduler:
    """A ratelimiter and a scheduler process on a database of its own."""

    def __init__(self, server_dsn: str, redis_url: str, limits: dict[str, Any], database_url: str | None = None):
        self.server_dsn, self.redis_url, self.limits = server_dsn, redis_url, limits
        self.database_url = database_url
        self.workdir = Path(tempfile.mkdtemp(prefix="fairway-live-"))
        self.ports = {"ratelimiter": free_port(), "scheduler": free_port()}
        self.processes: list[ServiceProcess] = []

    async def __aenter__(self) -> LiveScheduler:
        if self.database_url is None:
            self.database_url = await fresh_db(self.server_dsn)
        (self.workdir / "limits.yaml").write_text(yaml.safe_dump(self.limits))
        common = {"FAIRWAY_RATELIMITER_ADDR": f"127.0.0.1:{self.ports['ratelimiter']}",
                  "FAIRWAY_SCHEDULER_METRICS_PORT": "0", "FAIRWAY_RATELIMITER_METRICS_PORT": "0"}
        auth = {service: service_env(service) for service in ("ratelimiter", "scheduler")}
        ratelimiter = ServiceProcess("ratelimiter", env={
            **common, "REDIS_URL": self.redis_url, "FAIRWAY_LIMITS": str(self.workdir / "limits.yaml"),
            "FAIRWAY_RATELIMITER_PORT": str(self.ports["ratelimiter"]),
            "FAIRWAY_RATELIMITER_KEY_PREFIX": f"bench:{uuid.uuid4().hex[:8]}", **auth["ratelimiter"],
        }, log_dir=self.workdir).start()
        self.processes.append(ratelimiter)
        ratelimiter.wait_grpc_serving(f"127.0.0.1:{self.ports['ratelimiter']}")
        scheduler = ServiceProcess("scheduler", env={
            **common, "DATABASE_URL": self.database_url, "FAIRWAY_SCHEDULER_PORT": str(self.ports["scheduler"]),
            **auth["scheduler"],
        }, log_dir=self.workdir).start()
        self.processes.append(scheduler)
        await asyncio.to_thread(scheduler.wait_grpc_serving, f"127.0.0.1:{self.ports['scheduler']}", 600.0)
        # As the gateway (for the admin) and a predictor would call it.
        self.channel = channel_as("gateway", f"127.0.0.1:{self.ports['scheduler']}", principal=ADMIN)
        self.predictor_channel = channel_as("predictor", f"127.0.0.1:{self.ports['scheduler']}")
        self.api = scheduler_pb2_grpc.SchedulerStub(self.channel)
        self.dispatch = scheduler_pb2_grpc.DispatchStub(self.predictor_channel)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.channel.close()
        await self.predictor_channel.close()
        for process in reversed(self.processes):
            process.stop()
        assert self.database_url is not None
        await drop_db(self.server_dsn, self.database_url)

    async def submit(self, tenant: str, n: int) -> pb.Job:
        items = [pb.ItemInput(ref=f"r{i}", input_json=json.dumps({"prompt": "a cat"})) for i in range(n)]
        job: pb.Job = await self.api.SubmitJob(pb.SubmitJobRequest(tenant=tenant, provider="replicate",
                                                                   model="acme/fast", items=items))
        return job


class InstantPredictor:
    """Holds up to `slots` items, completes them at once (at most `batch` per call, as calls
    of real predictors end at different times), records (wall clock) every arrival."""

    def __init__(self, live: LiveScheduler, slots: int, batch: int = 32) -> None:
        self._live, self._slots, self._batch = live, slots, batch
        self._signals: asyncio.Queue[pb.WorkerSignal] = asyncio.Queue()
        self._held: list[pb.Assignment] = []
        self._have = asyncio.Event()
        self.arrivals: list[tuple[float, str]] = []
        self.count: dict[str, int] = defaultdict(int)
        self._nth: dict[tuple[str, int], asyncio.Future[float]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def nth(self, tenant: str, n: int) -> asyncio.Future[float]:
        """A future set to the arrival time of `tenant`'s n-th item."""
        return self._nth.setdefault((tenant, n), asyncio.get_running_loop().create_future())

    async def __aenter__(self) -> InstantPredictor:
        self._signals.put_nowait(pb.WorkerSignal(hello=pb.WorkerHello(worker_id="bench")))
        self._signals.put_nowait(pb.WorkerSignal(ready=self._slots))
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._complete())]
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in self._tasks:
            task.cancel()

    async def _outgoing(self) -> AsyncIterator[pb.WorkerSignal]:
        while True:
            yield await self._signals.get()

    async def _read(self) -> None:
        async for assignment in self._live.dispatch.Work(self._outgoing()):
            now = time.time()
            self.arrivals.append((now, assignment.tenant))
            self.count[assignment.tenant] += 1
            waiting = self._nth.get((assignment.tenant, self.count[assignment.tenant]))
            if waiting is not None and not waiting.done():
                waiting.set_result(now)
            self._held.append(assignment)
            self._have.set()

    async def _complete(self) -> None:
        while True:
            await self._have.wait()
            batch, self._held = self._held[:self._batch], self._held[self._batch:]
            if not self._held:
                self._have.clear()
            await self._live.dispatch.Complete(pb.CompleteRequest(completions=[
                pb.Completion(lease=pb.LeaseRef(item_id=a.item_id, lease=a.lease), output_json="{}") for a in batch
            ]))
            self._signals.put_nowait(pb.WorkerSignal(ready=len(batch)))


async def newcomer(server_dsn: str, redis_url: str, backlog: int = 1_000_000, samples: int = 20) -> dict[str, Any]:
    """First dispatch of a newcomer behind another tenant's `backlog` items."""
    dsn = await fresh_db(server_dsn)
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        await migrate(conn)
        await conn.execute("INSERT INTO tenants (id, key_hash, weight, max_queued) VALUES ('big', 'k', 1, $1)", backlog)
        per_job = min(backlog, 100_000)
        await add_backlog(conn, ["big"] * (backlog // per_job), per_job)
    finally:
        await conn.close()
    load_s = time.perf_counter() - started
    async with LiveScheduler(server_dsn, redis_url, ROOMY, database_url=dsn) as live:
        for k in range(samples):
            await live.api.CreateTenant(pb.CreateTenantRequest(id=f"new{k}"))
        async with InstantPredictor(live, slots=256) as predictor:
            await asyncio.sleep(2.0)  # the lane is busy with the big tenant's items
            from_submit, to_arrival = [], []
            for k in range(samples):
                arrived = predictor.nth(f"new{k}", 1)
                sent = time.time()
                job = await live.submit(f"new{k}", 1)
                to_arrival.append(await asyncio.wait_for(arrived, 30) - sent)
                from_submit.append(await _first_lease(live, job.id))
                await asyncio.sleep(0.5)
            window = [t for t, tenant in predictor.arrivals if tenant == "big"]
            rate = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 else 0.0
    return {"backlog": backlog, "samples": samples, "load_s": load_s, "big_items_per_s": rate,
            "submit_to_lease": spread_ms(from_submit, 0.9), "submit_call_to_arrival": spread_ms(to_arrival, 0.9)}


async def skewed(server_dsn: str, redis_url: str, rate_per_s: int = 100, big: int = 50_000,
                 small: int = 500, every_s: float = 5.0) -> dict[str, Any]:
    """Assignments per tenant per second under a budget of `rate_per_s` items/s."""
    limits = {"utilization": 1.0, "replicate": {"create_rpm": rate_per_s * 60, "read_rpm": 60_000_000}}
    weights = {"big": 1.0, **{f"s{i}": float(1 + i % 3) for i in range(1, 10)}}
    async with LiveScheduler(server_dsn, redis_url, limits) as live:
        for tenant, weight in weights.items():
            await live.api.CreateTenant(pb.CreateTenantRequest(id=tenant, weight=weight, max_queued=big))
        async with InstantPredictor(live, slots=rate_per_s) as predictor:
            t0 = time.time()
            submitted = {"big": t0}
            await live.submit("big", big)
            accepted: dict[str, str] = {}
            for i in range(1, 10):
                await asyncio.sleep(max(0.0, t0 + i * every_s - time.time()))
                submitted[f"s{i}"] = time.time()
                predictor.nth(f"s{i}", 1)
                accepted[f"s{i}"] = (await live.submit(f"s{i}", small)).id
            # Until the last small tenant is drained, and some more of the big one alone.
            await predictor.nth("s9", small)
            await asyncio.sleep(5.0)
            first_lease = {t: await _first_lease(live, job_id) for t, job_id in accepted.items()}
    seconds = int(max(t for t, _ in predictor.arrivals) - t0) + 1
    series: dict[str, list[int]] = {t: [0] * seconds for t in weights}
    for at, tenant in predictor.arrivals:
        series[tenant][int(at - t0)] += 1
    first = {t: (predictor.nth(t, 1).result() - at) * 1e3 for t, at in submitted.items() if t != "big"}
    sizes = {t: big if t == "big" else small for t in weights}
    return {"series": series, "weights": weights, "rate_per_s": rate_per_s, "submit_call_to_arrival_ms": first,
            "submit_to_lease_ms": {t: v * 1e3 for t, v in first_lease.items()},
            "windows": _shares(predictor.arrivals, submitted, sizes, weights, t0)}


async def _first_lease(live: LiveScheduler, job_id: str) -> float:
    """Seconds from the job's submit (the start of its transaction) to its first item's
    lease (the start of the claim that leased it), both on PostgreSQL's clock."""
    assert live.database_url is not None
    conn = await asyncpg.connect(live.database_url)
    try:
        delay = await conn.fetchval(
            "SELECT extract(epoch FROM min(coalesce(i.started_at, l.started_at)) - j.created_at) "
            "FROM jobs j JOIN items i ON i.job_id = j.id LEFT JOIN leases l ON l.item_id = i.id "
            "WHERE j.id = $1 GROUP BY j.created_at", uuid.UUID(job_id))
    finally:
        await conn.close()
    return float(delay)


def _shares(arrivals: list[tuple[float, str]], submitted: dict[str, float], sizes: dict[str, int],
            weights: dict[str, float], t0: float) -> list[dict[str, Any]]:
    """Windows of whole seconds in which the same tenants were backlogged throughout
    (submitted before, not yet drained after): each tenant's share of the dispatches next
    to its share of the weights, and Jain's index of dispatches / weight."""
    done_at: dict[str, float] = {}
    count: dict[str, int] = defaultdict(int)
    for at, tenant in arrivals:
        count[tenant] += 1
        if count[tenant] == sizes[tenant]:
            done_at[tenant] = at
    last = int(max(at for at, _ in arrivals) - t0)
    per_second: list[tuple[frozenset[str], dict[str, int]]] = []
    for second in range(last):
        start, end = t0 + second, t0 + second + 1
        active = frozenset(t for t, at in submitted.items() if at <= start and done_at.get(t, float("inf")) > end)
        got: dict[str, int] = defaultdict(int)
        for at, tenant in arrivals:
            if start <= at < end:
                got[tenant] += 1
        per_second.append((active, got))
    windows: list[dict[str, Any]] = []
    second = 0
    while second < len(per_second):
        active, _ = per_second[second]
        end = second
        while end < len(per_second) and per_second[end][0] == active:
            end += 1
        if len(active) > 1 and end - second >= 3:
            got = {t: sum(per_second[k][1][t] for k in range(second, end)) for t in active}
            total, wsum = sum(got.values()), sum(weights[t] for t in active)
            ratios = [got[t] / weights[t] for t in active]
            windows.append({
                "from_s": second, "to_s": end, "items": total,
                "max_error": max(abs(got[t] / total / (weights[t] / wsum) - 1) for t in active),
                "jain": jain(ratios),
                "tenants": {t: {"got": got[t], "share": got[t] / total, "weight_share": weights[t] / wsum}
                            for t in sorted(active)},
            })
        second = end
    return windows
