"""Ratelimiter benchmark and soak; writes the "## Ratelimiter" section of docs/benchmarks.md.

    python -m bench.ratelimiter_bench                 # micro benchmarks + 75 s soak
    python -m bench.ratelimiter_bench --soak-s 0      # micro benchmarks only

Micro (one replica, one Redis, everything on the same machine):
  - Fairway Acquire, single grants, open loop at 200 to 2,000/s: the load comes from separate
    processes (gRPC clients cost CPU too), latency is measured from each call's scheduled
    start, and the replica's CPU per call is read from /proc (it does not depend on how
    busy the rest of the machine is, latency does);
  - the same load against a do-nothing grpc.aio server: the floor any Python gRPC service
    has here;
  - Fairway Acquire, closed loop: single grants from 32 callers, batches of 100 from 8;
  - raw Redis INCR and throttled-py's GCRA on the same Redis, from this process.
The load generator and the do-nothing server are bench/grpc_load.py.
Soak: three replicas on one Redis, replicate:create at its published limit x utilization,
many concurrent clients for longer than a minute; every rolling 60 s window is counted from
the grant ids' Redis time.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from bench.grpc_load import CALL_TIMEOUT_S, closed_loop, drive, null_server, open_loop
from services.common.embedded import EmbeddedRedis, free_port
from services.common.limits import Limits
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.grants import GrantId
from tests.support.processes import ServiceProcess
from tests.support.tokens import TOKENS, service_env

OPEN_LOOP_RATE = 2000.0
SWEEP = (200.0, 500.0, 1000.0, 1500.0, 2000.0)
LOAD_PROCESSES = 2
BATCH = 100
UNLIMITED = {"utilization": 1.0, "replicate": {"create_rpm": 10**9, "read_rpm": 10**9}}

# Why single acquires at 2,000/s miss 2 ms here, and what the hot path cost before group
# commit, the acquire lane and hiredis (measured with bench/grpc_load.py's load generator, the old
# and the new replica run alternately, twice each).
NOTES = """\
Where a single Acquire's time goes. A do-nothing grpc.aio server costs ~0.3-0.5 ms of CPU
per call on this machine and the grpc.aio client ~0.4-0.6 ms more; the decision (one Redis
round trip: kernel send and receive, ~0.1 ms of Python, Redis itself) adds ~0.2-0.3 ms on
the server. At 2,000 calls/s that is over 1.7 of the machine's 2 cores before anything
else runs on it, so the open loop at 2,000/s saturates and its tail is set by CPU
contention, not by the decision: **the 2 ms p99 at 2,000/s is not reached with Python gRPC
on both ends of 2 shared cores**, and here not even by the do-nothing server. With other
work on the machine (load average ~3), no rate of the sweep stays under 2 ms p99: the
do-nothing server answered 200 calls/s with a p99 of 5.5-7 ms in the same conditions. Batches are
the intended use for throughput (one round trip serves any N); single acquires scale with
replicas on more cores.

Before and after group commit, the acquire lane and hiredis (one replica, load average
3.2-5.0 from other work on the machine during these runs):

| measure | before | after |
| --- | ---: | ---: |
| server CPU per single Acquire, open loop 500/s | 1.24-1.28 ms | 0.93-0.94 ms |
| server CPU per single Acquire, open loop 1,000/s | 0.97-1.02 ms | 0.74-0.76 ms |
| server CPU per single Acquire, open loop 2,000/s | 0.98-1.04 ms | 0.65-0.69 ms |
| open loop 1,000/s: completed/s, p50, p99 | 727-957/s, 98-1,318 ms, 218 ms-timed out | 1,000/s, 3.0-3.2 ms, 35-45 ms |
| open loop 2,000/s: completed/s | 896-916 | 1,373-1,483 |
| single Acquires/s, 32 callers | 1,070-1,221 | 1,495-1,523 |
| in-process CPU per Acquire (no gRPC), 1 / 16 callers | 281-411 / 270-374 us | 91-173 / 25-73 us |
"""


def micro_grpc(address: str, pid: int, seconds: float) -> dict[str, dict[str, Any]]:
    out = {
        f"fairway_single_{r:.0f}_per_s": drive(address, pid, rate=r, seconds=seconds, procs=LOAD_PROCESSES)
        for r in SWEEP
    }
    out["fairway_single_max"] = drive(address, pid, rate=0, seconds=seconds, callers=32)
    out["fairway_batch_100"] = drive(address, pid, rate=0, seconds=seconds, count=BATCH, callers=8)
    return out


def micro_null(seconds: float) -> dict[str, dict[str, Any]]:
    with null_server() as (pid, address):
        return {
            f"null_single_{r:.0f}_per_s": drive(address, pid, rate=r, seconds=seconds, procs=LOAD_PROCESSES)
            for r in (OPEN_LOOP_RATE,)
        } | {"null_single_max": drive(address, pid, rate=0, seconds=seconds, callers=32)}


async def micro_redis(redis_url: str, seconds: float) -> dict[str, dict[str, float]]:
    """Raw Redis and throttled-py from this process, for comparison."""
    import redis.asyncio as aioredis
    from throttled.asyncio import RateLimiterType, RedisStore, Throttled, per_min

    raw = aioredis.Redis.from_url(redis_url)
    gcra = Throttled(
        key="bench:throttled",
        using=RateLimiterType.GCRA.value,
        quota=per_min(10**9, burst=10**7),
        store=RedisStore(server=redis_url),
    )
    key = f"bench:incr:{uuid.uuid4().hex[:6]}"

    async def incr_one() -> int:
        await raw.incr(key)
        return 1

    async def incr_batch() -> int:
        async with raw.pipeline(transaction=False) as pipe:
            for _ in range(BATCH):
                pipe.incr(key)
            await pipe.execute()
        return BATCH

    async def gcra_one() -> int:
        return 0 if (await gcra.limit("k", cost=1, timeout=-1)).limited else 1

    async def gcra_batch() -> int:
        return 0 if (await gcra.limit("k", cost=BATCH, timeout=-1)).limited else BATCH

    results = {
        "redis_incr_single_2000_per_s": await open_loop(incr_one, OPEN_LOOP_RATE, seconds),
        "redis_incr_pipeline_100": await closed_loop(incr_batch, 8, seconds),
        "throttled_gcra_single_2000_per_s": await open_loop(gcra_one, OPEN_LOOP_RATE, seconds),
        "throttled_gcra_single_max": await closed_loop(gcra_one, 32, seconds),
        "throttled_gcra_cost_100": await closed_loop(gcra_batch, 8, seconds),
    }
    for r in results.values():
        r.pop("latencies")
    await raw.aclose()  # type: ignore[attr-defined]  # stubs predate redis 5
    return results


async def soak(addresses: list[str], seconds: float, clients_per_replica: int) -> list[int]:
    issued: list[int] = []
    until = time.monotonic() + seconds

    async def driver(client: BudgetClient) -> None:
        while time.monotonic() < until:
            got = await client.acquire("replicate:create", 10)
            issued.extend(GrantId.decode(g.id).issued_us for g in got.grants)
            if len(got.grants) < 10:
                await asyncio.sleep(min(got.retry_after_s, 0.05))

    clients = [BudgetClient(a, token=TOKENS["scheduler"]) for a in addresses]
    await asyncio.gather(*(driver(c) for c in clients for _ in range(clients_per_replica)))
    for c in clients:
        await c.close()
    return issued


def windows(issued: list[int], window_s: float = 60.0) -> dict[str, float]:
    times = sorted(issued)
    w = int(window_s * 1e6)
    most = max(bisect.bisect_left(times, t + w) - i for i, t in enumerate(times))
    ends = [t for t in times if t >= times[0] + w]
    fewest = min((bisect.bisect_right(times, t) - bisect.bisect_right(times, t - w) for t in ends), default=0)
    return {
        "grants": len(times),
        "most_in_window": most,
        "fewest_in_window": fewest,
        "span_s": (times[-1] - times[0]) / 1e6,
    }


def _start(
    stack: ExitStack, n: int, redis_url: str, limits: dict[str, Any] | None, workdir: Path
) -> list[tuple[int, str]]:
    """Start `n` replicas; (pid, address) of each once it serves."""
    env = {
        "REDIS_URL": redis_url,
        "FAIRWAY_RATELIMITER_METRICS_PORT": "0",
        "FAIRWAY_RATELIMITER_KEY_PREFIX": f"bench:{uuid.uuid4().hex[:8]}",
        "FAIRWAY_LOG_LEVEL": "WARNING",
        **service_env("ratelimiter"),
    }
    if limits is not None:
        path = workdir / f"limits-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(limits))
        env["FAIRWAY_LIMITS"] = str(path)
    started = []
    for _ in range(n):
        port = free_port()
        proc = stack.enter_context(
            ServiceProcess("ratelimiter", env={**env, "FAIRWAY_RATELIMITER_PORT": str(port)}, log_dir=workdir)
        )
        started.append((proc, f"127.0.0.1:{port}"))
    for proc, address in started:
        proc.wait_grpc_serving(address)
    return [(proc.proc.pid, address) for proc, address in started if proc.proc is not None]


def run(
    *,
    micro_s: float = 5.0,
    soak_s: float = 75.0,
    clients_per_replica: int = 8,
    redis_url: str | None = None,
    write_docs: bool = True,
) -> dict[str, Any]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result: dict[str, Any] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if redis_url is None:
            redis = EmbeddedRedis(workdir=workdir / "redis")
            redis_url = redis.start()
            stack.callback(redis.stop)
        if micro_s > 0:
            load_before = os.getloadavg()
            with ExitStack() as replica:
                [(pid, address)] = _start(replica, 1, redis_url, UNLIMITED, workdir)
                result["micro"] = micro_grpc(address, pid, micro_s)
            result["micro"] |= micro_null(micro_s)
            result["micro"] |= asyncio.run(micro_redis(redis_url, micro_s))
            result["load_avg"] = [load_before[0], os.getloadavg()[0]]
        if soak_s > 0:
            with ExitStack() as replicas:
                addresses = [a for _, a in _start(replicas, 3, redis_url, None, workdir)]
                issued = asyncio.run(soak(addresses, soak_s, clients_per_replica))
            limits = Limits()
            limit = limits.replicate.create_rpm * limits.utilization
            result["soak"] = {
                **windows(issued),
                "limit_per_minute": limit,
                "seconds": soak_s,
                "replicas": 3,
                "clients": 3 * clients_per_replica,
            }
    if write_docs:
        from bench.report import write_section

        write_section("Ratelimiter", render(result))
    return result


def _ms(value: float) -> str:
    return "failed" if math.isinf(value) else f"{value:.2f} ms"


def render(result: dict[str, Any]) -> str:
    from bench.report import machine

    lines = [f"Machine: {machine()}. One Redis (embedded redis-server), everything on the same machine."]
    m = result.get("micro")
    if m:
        first, last = result["load_avg"]
        lines += [
            f"Load average (1 min) {first:.1f} before the micro benchmarks, {last:.1f} after: latencies "
            "depend on it, the server's CPU per call much less.",
            "",
            f"gRPC rows: load from {LOAD_PROCESSES} separate processes (open loop) or one (closed loop), "
            "latency from each call's scheduled start, a failed call counting as the slowest (p99 'failed': "
            "more than 1% failed); server CPU from /proc of the serving process. gRPC calls fail when they "
            f"time out ({CALL_TIMEOUT_S:.0f} s); the raw Redis and throttled-py open loops fail when a burst "
            "exceeds redis-py's connection pool.",
            "",
            "| path | calls/s | grants/s | p50 ms | p99 ms | failed calls | server CPU ms/call |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        rows = [(f"Fairway Acquire, single, open loop {r:,.0f}/s", f"fairway_single_{r:.0f}_per_s") for r in SWEEP]
        rows += [
            ("Fairway Acquire, single, 32 callers", "fairway_single_max"),
            (f"Fairway Acquire, batches of {BATCH}, 8 callers", "fairway_batch_100"),
            ("do-nothing grpc.aio server, open loop 2,000/s", "null_single_2000_per_s"),
            ("do-nothing grpc.aio server, 32 callers", "null_single_max"),
            ("Redis INCR, single, open loop 2,000/s", "redis_incr_single_2000_per_s"),
            (f"Redis INCR, pipelines of {BATCH}, 8 callers", "redis_incr_pipeline_100"),
            ("throttled-py GCRA, single, open loop 2,000/s", "throttled_gcra_single_2000_per_s"),
            ("throttled-py GCRA, single, 32 callers", "throttled_gcra_single_max"),
            (f"throttled-py GCRA, cost {BATCH}, 8 callers", "throttled_gcra_cost_100"),
        ]
        for label, key in rows:
            r = m[key]
            cpu = f"{r['server_cpu_ms_per_call']:.2f}" if "server_cpu_ms_per_call" in r else "-"
            p50, p99 = (_ms(r[k]).removesuffix(" ms") for k in ("p50_ms", "p99_ms"))
            rate = f"{r['calls_per_s']:,.0f} | {r['grants_per_s']:,.0f}"
            lines.append(f"| {label} | {rate} | {p50} | {p99} | {r['errors']} | {cpu} |")
        batch, single = m["fairway_batch_100"], m["fairway_single_2000_per_s"]
        fast = [r for r in SWEEP if m[f"fairway_single_{r:.0f}_per_s"]["p99_ms"] < 2.0]
        tail_2000 = _ms(single["p99_ms"]).replace("failed", "over 1% of calls failed")
        lines += [
            "",
            "Targets (one replica, 2 cores):",
            f"- batched grants/s >= 20,000: **{batch['grants_per_s']:,.0f}** "
            f"({'met' if batch['grants_per_s'] >= 20_000 else 'NOT met'})",
            f"- single acquires at 2,000/s, p99 < 2 ms: **{tail_2000}** "
            f"({'met' if single['p99_ms'] < 2.0 else 'NOT met'}); highest rate of the sweep with p99 < 2 ms: "
            f"**{f'{max(fast):,.0f}/s' if fast else 'none'}**",
            "",
            NOTES,
        ]
    s = result.get("soak")
    if s:
        limit = s["limit_per_minute"]
        lines += [
            f"Soak: {s['replicas']} replicas on one Redis, {s['clients']} clients asking replicate:create "
            f"for batches of 10 for {s['seconds']:.0f} s (excess demand); limit {limit:.0f}/min "
            f"(published 600 x utilization).",
            "",
            f"- most grants in any rolling 60 s window: **{s['most_in_window']}** "
            f"({'within' if s['most_in_window'] <= limit else 'OVER'} the limit)",
            f"- fewest in a 60 s window under load: **{s['fewest_in_window']}** = "
            f"{100 * s['fewest_in_window'] / limit:.2f}% of the limit (target >= 99%)",
        ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.ratelimiter_bench", description=__doc__)
    parser.add_argument("--micro-s", type=float, default=5.0)
    parser.add_argument("--soak-s", type=float, default=75.0)
    parser.add_argument("--clients-per-replica", type=int, default=8)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    result = run(
        micro_s=args.micro_s,
        soak_s=args.soak_s,
        clients_per_replica=args.clients_per_replica,
        redis_url=args.redis_url,
        write_docs=not args.no_docs,
    )
    for r in result.get("micro", {}).values():
        r.pop("latencies", None)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
