"""Ratelimiter benchmark and soak; writes the "## Ratelimiter" section of docs/benchmarks.md.

    python -m bench.ratelimiter_bench                 # micro benchmarks + 75 s soak
    python -m bench.ratelimiter_bench --soak-s 0      # micro benchmarks only

Micro (one replica, one Redis, client on the same machine), side by side:
  - Fairway Acquire, single grants: open loop at 2,000/s (latency) and closed loop (throughput);
  - Fairway Acquire, batches of 100 grants (throughput, latency per call);
  - raw Redis INCR: single at 2,000/s and pipelines of 100;
  - throttled-py's GCRA on the same Redis: single at 2,000/s, closed loop, cost 100.
Soak: three replicas on one Redis, replicate:create at its published limit x utilization,
many concurrent clients for longer than a minute; every rolling 60 s window is counted from
the grant ids' Redis time.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from services.common.embedded import EmbeddedRedis, free_port
from services.common.limits import Limits
from services.ratelimiter.client import BudgetClient
from services.ratelimiter.grants import GrantId
from tests.support.processes import ServiceProcess

OPEN_LOOP_RATE = 2000.0
BATCH = 100
UNLIMITED = {"utilization": 1.0, "replicate": {"create_rpm": 10**9, "read_rpm": 10**9}}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0 if ordered else float("nan")


async def open_loop(call: Callable[[], Awaitable[int]], rate: float, seconds: float) -> dict[str, float]:
    """Start calls at a fixed rate regardless of completions; latency from start to answer."""
    latencies: list[float] = []
    grants = errors = 0
    pending: set[asyncio.Task[None]] = set()

    async def one() -> None:
        nonlocal grants, errors
        t0 = time.perf_counter()
        try:
            got = await call()  # not `grants += await ...`: that reads `grants` before awaiting
        except Exception:  # an overloaded path fails calls; count them, keep the schedule
            errors += 1
            return
        latencies.append(time.perf_counter() - t0)
        grants += got

    start = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - start < seconds:
        due = int((now - start) * rate) - sent
        for _ in range(due):
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
        sent += due
        await asyncio.sleep(0.0005)
    await asyncio.gather(*pending)
    elapsed = time.perf_counter() - start
    return {
        "calls_per_s": len(latencies) / elapsed,
        "grants_per_s": grants / elapsed,
        "p50_ms": _pct(latencies, 0.5),
        "p99_ms": _pct(latencies, 0.99),
        "errors": errors,
    }


async def closed_loop(call: Callable[[], Awaitable[int]], concurrency: int, seconds: float) -> dict[str, float]:
    """`concurrency` callers back to back: the most the path sustains."""
    latencies: list[float] = []
    grants = 0
    until = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal grants
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            got = await call()
            latencies.append(time.perf_counter() - t0)
            grants += got

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "calls_per_s": len(latencies) / elapsed,
        "grants_per_s": grants / elapsed,
        "p50_ms": _pct(latencies, 0.5),
        "p99_ms": _pct(latencies, 0.99),
        "errors": 0,
    }


async def micro(address: str, redis_url: str, seconds: float) -> dict[str, dict[str, float]]:
    import redis.asyncio as aioredis
    from throttled.asyncio import RateLimiterType, RedisStore, Throttled, per_min

    client = BudgetClient(address)
    raw = aioredis.Redis.from_url(redis_url)
    gcra = Throttled(
        key="bench:throttled",
        using=RateLimiterType.GCRA.value,
        quota=per_min(10**9, burst=10**7),
        store=RedisStore(server=redis_url),
    )
    key = f"bench:incr:{uuid.uuid4().hex[:6]}"

    async def acquire_one() -> int:
        return len((await client.acquire("replicate:create", 1)).grants)

    async def acquire_batch() -> int:
        return len((await client.acquire("replicate:create", BATCH)).grants)

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

    await acquire_one()  # warm up the channel and the script cache
    results = {
        "fairway_single_500_per_s": await open_loop(acquire_one, 500, seconds),
        "fairway_single_2000_per_s": await open_loop(acquire_one, OPEN_LOOP_RATE, seconds),
        "fairway_single_max": await closed_loop(acquire_one, 32, seconds),
        "fairway_batch_100": await closed_loop(acquire_batch, 8, seconds),
        "redis_incr_single_2000_per_s": await open_loop(incr_one, OPEN_LOOP_RATE, seconds),
        "redis_incr_pipeline_100": await closed_loop(incr_batch, 8, seconds),
        "throttled_gcra_single_2000_per_s": await open_loop(gcra_one, OPEN_LOOP_RATE, seconds),
        "throttled_gcra_single_max": await closed_loop(gcra_one, 32, seconds),
        "throttled_gcra_cost_100": await closed_loop(gcra_batch, 8, seconds),
    }
    await client.close()
    await raw.aclose()
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

    clients = [BudgetClient(a) for a in addresses]
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


def _start(stack: ExitStack, n: int, redis_url: str, limits: dict[str, Any] | None, workdir: Path) -> list[str]:
    env = {
        "REDIS_URL": redis_url,
        "FAIRWAY_RATELIMITER_METRICS_PORT": "0",
        "FAIRWAY_RATELIMITER_KEY_PREFIX": f"bench:{uuid.uuid4().hex[:8]}",
        "FAIRWAY_LOG_LEVEL": "WARNING",
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
    return [a for _, a in started]


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
            with ExitStack() as replica:
                [address] = _start(replica, 1, redis_url, UNLIMITED, workdir)
                result["micro"] = asyncio.run(micro(address, redis_url, micro_s))
        if soak_s > 0:
            with ExitStack() as replicas:
                addresses = _start(replicas, 3, redis_url, None, workdir)
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


def render(result: dict[str, Any]) -> str:
    from bench.report import machine

    lines = [f"Machine: {machine()}. One Redis ({'embedded redis-server'}), clients on the same machine.", ""]
    m = result.get("micro")
    if m:
        rows = [
            ("Fairway Acquire, single, open loop 500/s", "fairway_single_500_per_s"),
            ("Fairway Acquire, single, open loop 2,000/s", "fairway_single_2000_per_s"),
            ("Fairway Acquire, single, 32 callers", "fairway_single_max"),
            (f"Fairway Acquire, batches of {BATCH}, 8 callers", "fairway_batch_100"),
            ("Redis INCR, single, open loop 2,000/s", "redis_incr_single_2000_per_s"),
            (f"Redis INCR, pipelines of {BATCH}, 8 callers", "redis_incr_pipeline_100"),
            ("throttled-py GCRA, single, open loop 2,000/s", "throttled_gcra_single_2000_per_s"),
            ("throttled-py GCRA, single, 32 callers", "throttled_gcra_single_max"),
            (f"throttled-py GCRA, cost {BATCH}, 8 callers", "throttled_gcra_cost_100"),
        ]
        lines += [
            "| path | calls/s | grants/s | p50 ms | p99 ms | failed calls |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, key in rows:
            r = m[key]
            lines.append(
                f"| {label} | {r['calls_per_s']:,.0f} | {r['grants_per_s']:,.0f} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |"
            )
        batch, single = m["fairway_batch_100"], m["fairway_single_2000_per_s"]
        lines += [
            "",
            "Targets (one replica, 2 cores):",
            f"- batched grants/s >= 20,000: **{batch['grants_per_s']:,.0f}** "
            f"({'met' if batch['grants_per_s'] >= 20_000 else 'NOT met'})",
            f"- single acquires at 2,000/s, p99 < 2 ms: **{single['p99_ms']:.2f} ms** "
            f"({'met' if single['p99_ms'] < 2.0 else 'NOT met'})",
            "",
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
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
