"""Load generator for a RateLimiter-style gRPC Acquire: open and closed loops, from separate processes.

    from bench.grpc_load import drive; drive("127.0.0.1:50051", server_pid, rate=1000, seconds=5)
    python -m bench.grpc_load --null-server PORT      # a do-nothing grpc.aio Acquire server

`drive` starts `python -m bench.grpc_load --load ...` processes (gRPC clients cost CPU too, so
the load does not come from the measuring process) and adds the server's CPU per call, read
from /proc. `open_loop` and `closed_loop` drive any async call, gRPC or not; `null_server`
runs the do-nothing server, the floor any Python gRPC service has on the machine.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.report import percentile
from services.common.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
CALL_TIMEOUT_S = 5.0  # a gRPC call not answered by then counts as failed


async def open_loop(call: Callable[[], Awaitable[int]], rate: float, seconds: float) -> dict[str, Any]:
    """Start calls on a fixed schedule regardless of completions; latency from each call's
    scheduled start to its answer, so a stall is charged to every call it delays."""
    latencies: list[float] = []
    grants = errors = 0
    pending: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        nonlocal grants, errors
        try:
            got = await call()  # not `grants += await ...`: that reads `grants` before awaiting
        except Exception:  # an overloaded path fails calls; count them, keep the schedule
            errors += 1
            return
        latencies.append(time.perf_counter() - due)
        grants += got

    start = time.perf_counter()
    sent = 0  # call k is due at start + k / rate
    while (now := time.perf_counter()) - start < seconds:
        for k in range(sent, int((now - start) * rate) + 1):
            task = asyncio.create_task(one(start + k / rate))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        # Sleep until the next call is due: a shorter sleep spins, and a spinning load
        # generator takes the CPU the server needs.
        await asyncio.sleep(start + sent / rate - time.perf_counter())
    await asyncio.gather(*pending)
    return _summary(latencies, grants, errors, time.perf_counter() - start)


async def closed_loop(call: Callable[[], Awaitable[int]], concurrency: int, seconds: float) -> dict[str, Any]:
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
    return _summary(latencies, grants, 0, time.perf_counter() - start)


def _summary(latencies: list[float], grants: int, errors: int, elapsed: float) -> dict[str, Any]:
    # A failed call (timed out) counts as the slowest: leaving it out would flatter the tail.
    worst = latencies + [math.inf] * errors
    return {
        "calls_per_s": len(latencies) / elapsed,
        "grants_per_s": grants / elapsed,
        "p50_ms": percentile(worst, 0.5) * 1e3,
        "p99_ms": percentile(worst, 0.99) * 1e3,
        "errors": errors,
        "latencies": latencies,
    }


async def _load(address: str, budget: str, rate: float, seconds: float, count: int, callers: int) -> dict[str, Any]:
    """One load process: open loop at `rate`, or `callers` back to back when rate is 0."""
    from fairway.ratelimiter.v1 import ratelimiter_pb2, ratelimiter_pb2_grpc

    from tests.support.tokens import channel_as

    channel = channel_as("scheduler", address)
    stub = ratelimiter_pb2_grpc.RateLimiterStub(channel)
    request = ratelimiter_pb2.AcquireRequest(budget=budget, count=count)
    await stub.Acquire(request)  # connect before the clock starts

    async def one() -> int:
        return len((await stub.Acquire(request, timeout=CALL_TIMEOUT_S)).grants)

    result = await (open_loop(one, rate, seconds) if rate > 0 else closed_loop(one, callers, seconds))
    await channel.close()
    return result


def _load_main(args: list[str]) -> int:
    import uvloop

    address, budget, rate, seconds, count, callers, out = args
    result = uvloop.run(_load(address, budget, float(rate), float(seconds), int(count), int(callers)))
    Path(out).write_text(json.dumps(result))
    return 0


def _null_main(port: str) -> int:
    """A grpc.aio server whose Acquire does nothing: what gRPC alone costs per call."""
    import grpc
    import uvloop
    from fairway.ratelimiter.v1 import ratelimiter_pb2, ratelimiter_pb2_grpc

    class Null(ratelimiter_pb2_grpc.RateLimiterServicer):
        async def Acquire(self, request: Any, context: Any) -> Any:
            return ratelimiter_pb2.AcquireResponse(grants=[ratelimiter_pb2.Grant(id="x" * 48)] * request.count)

    async def serve() -> None:
        server = grpc.aio.server()
        ratelimiter_pb2_grpc.add_RateLimiterServicer_to_server(Null(), server)  # type: ignore[abstract]
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    uvloop.run(serve())
    return 0


@contextmanager
def null_server() -> Iterator[tuple[int, str]]:
    """Run the do-nothing server in its own process; (pid, address) once it serves."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.grpc_load", "--null-server", str(port)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=ROOT) as server:
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
            yield server.pid, f"127.0.0.1:{port}"
        finally:
            server.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(
    address: str,
    pid: int,
    *,
    rate: float,
    seconds: float,
    count: int = 1,
    callers: int = 0,
    procs: int = 1,
    budget: str = "replicate:create",
) -> dict[str, Any]:
    """Load `address` from `procs` processes; adds the server's CPU per call and the machine load."""
    argv = [sys.executable, "-m", "bench.grpc_load", "--load", address, budget, str(rate / procs), str(seconds)]
    argv += [str(count), str(callers)]
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"load-{k}.json" for k in range(procs)]
        cpu0 = cpu_seconds(pid)
        children = [subprocess.Popen([*argv, str(out)], cwd=ROOT) for out in outs]
        if any([child.wait() != 0 for child in children]):  # a list: wait for every one
            raise RuntimeError("a load process failed")
        cpu = cpu_seconds(pid) - cpu0
        parts = [json.loads(out.read_text()) for out in outs]
    errors = sum(p["errors"] for p in parts)
    latencies = [x for part in parts for x in part.pop("latencies")]
    calls = len(latencies)
    worst = latencies + [math.inf] * errors
    return {
        "calls_per_s": sum(p["calls_per_s"] for p in parts),
        "grants_per_s": sum(p["grants_per_s"] for p in parts),
        "p50_ms": percentile(worst, 0.5) * 1e3,
        "p99_ms": percentile(worst, 0.99) * 1e3,
        "errors": errors,
        "server_cpu_ms_per_call": 1000.0 * cpu / calls if calls else float("nan"),
        "load_avg": os.getloadavg()[0],
    }


def main(argv: list[str]) -> int:
    """The subprocess entry points: `--load ADDRESS BUDGET RATE SECONDS COUNT CALLERS OUT`
    (as `drive` starts them) and `--null-server PORT`."""
    if argv[:1] == ["--load"] and len(argv) == 8:
        return _load_main(argv[1:])
    if argv[:1] == ["--null-server"] and len(argv) == 2:
        return _null_main(argv[1])
    print(__doc__ + "\n" + (main.__doc__ or ""), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
