"""Load on the provider emulator: how many requests a second of mixed traffic it serves.

    python -m bench.emulator_load --seconds 10 --connections 64
    from bench.emulator_load import run; result = run(seconds=10)   # {"requests_per_s": ...}

The emulator runs as its own process (`fairway run emulator`, time scale 1000 so predictions
finish); the load comes from separate processes, each a handful of raw HTTP/1.1 keep-alive
connections on asyncio, because a full HTTP client would cost more CPU than the server.
Traffic per ten requests: 2 Replicate creates, 5 Replicate gets, 3 OpenAI chat completions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIX = ("create", "get", "chat", "get", "get", "create", "chat", "get", "chat", "get")
ROOMY_LIMITS = """
replicate: {create_rpm: 100000000, read_rpm: 100000000}
openai:
  default: {rpm: 100000000, tpm: 100000000000}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(kind: str, n: int, prediction: bytes) -> bytes:
    if kind == "create":
        body = b'{"input":{"prompt":"item %d"}}' % n
        head = b"POST /v1/models/google/nano-banana/predictions HTTP/1.1\r\n"
    elif kind == "chat":
        body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"item %d"}],"max_tokens":16}' % n
        head = b"POST /v1/chat/completions HTTP/1.1\r\n"
    else:
        body = b""
        head = b"GET /v1/predictions/" + prediction + b" HTTP/1.1\r\n"
    return (
        head + b"host: emulator\r\nauthorization: Bearer bench\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )


async def _connection(port: int, deadline: float, offset: int, counts: Counter[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    prediction = b""
    n = offset
    while time.monotonic() < deadline:
        kind = MIX[n % len(MIX)]
        if kind == "get" and not prediction:
            kind = "create"
        writer.write(_request(kind, n, prediction))
        head = await reader.readuntil(b"\r\n\r\n")
        status = head[9:12].decode()
        at = head.lower().find(b"content-length: ") + 16
        body = await reader.readexactly(int(head[at : head.find(b"\r\n", at)]))
        if kind == "create" and status == "201":
            prediction = body[7:33]  # {"id":"<26 characters>"
        counts[f"{kind} {status}"] += 1
        n += 1
    writer.close()


def _worker(
    port: int, seconds: float, connections: int, index: int, results: multiprocessing.Queue[dict[str, int]]
) -> None:
    import uvloop

    async def main() -> Counter[str]:
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(_connection(port, deadline, (index * connections + i) * 1000, counts) for i in range(connections))
        )
        return counts

    results.put(dict(uvloop.run(main())))


def run(
    seconds: float = 10.0, connections: int = 64, workers: int = 1, time_scale: float = 1000.0
) -> dict[str, object]:
    """Start an emulator, load it for `seconds`, stop it; the throughput and what was answered."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        limits = Path(tmp) / "limits.yaml"
        limits.write_text(ROOMY_LIMITS)
        env = {
            **os.environ,
            "FAIRWAY_EMULATOR_PORT": str(port),
            "FAIRWAY_EMULATOR_LIMITS": str(limits),
            "FAIRWAY_EMULATOR_TIME_SCALE": str(time_scale),
            "FAIRWAY_EMULATOR_REPLICATE_BURST": "100000000",
        }
        server = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "emulator"], cwd=ROOT, env=env)
        try:
            _wait_ready(f"http://127.0.0.1:{port}/_emulator/health")
            context = multiprocessing.get_context("spawn")
            results: multiprocessing.Queue[dict[str, int]] = context.Queue()
            per_worker = max(1, connections // workers)
            procs = [
                context.Process(target=_worker, args=(port, seconds, per_worker, i, results)) for i in range(workers)
            ]
            cpu_before = _cpu_seconds(server.pid)
            started = time.monotonic()
            for proc in procs:
                proc.start()
            counts: Counter[str] = Counter()
            for _ in procs:
                counts.update(results.get())
            elapsed = time.monotonic() - started
            server_cpu = _cpu_seconds(server.pid) - cpu_before
            for proc in procs:
                proc.join()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_emulator/stats") as response:
                totals = json.load(response)["totals"]
        finally:
            server.terminate()
            server.wait(15)
    total = sum(counts.values())
    return {
        "requests": total,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(total / seconds),
        # CPU the emulator spent per request, and what that makes on one dedicated core:
        # the load-independent figure when other work shares the machine.
        "server_cpu_us_per_request": round(server_cpu / total * 1e6, 1),
        "one_core_capacity_per_s": round(total / server_cpu),
        "connections": per_worker * workers,
        "load_processes": workers,
        "by_kind_and_status": dict(sorted(counts.items())),
        "emulator_totals": totals,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"emulator not ready at {url}")


def section(results: list[dict[str, object]], load: str) -> str:
    rows = "\n".join(
        f"| {r['load_processes']} load process(es), {r['connections']} connections | **{r['requests_per_s']:,}** "
        f"| {r['server_cpu_us_per_request']} µs | ~{r['one_core_capacity_per_s']:,} req/s |"
        for r in results
    )
    return f"""`python -m bench.emulator_load` (`bench/emulator_load.py`, `run(...) -> dict`): one emulator
process (`fairway run emulator`, uvloop + httptools, time scale 1000 so predictions finish, roomy
limits so nothing is throttled) against separate load processes of raw HTTP/1.1 keep-alive
connections. Mixed traffic, per ten requests: 2 Replicate creates (`POST /v1/models/…/predictions`),
5 Replicate gets, 3 OpenAI chat completions. Machine: {machine()}; load average before the run: {load}.

| run | requests/s served | emulator CPU per request | one dedicated core would serve |
| --- | --- | --- | --- |
{rows}

Target: at least 2,000 requests/s of mixed traffic. Every request was answered (no 429, no error;
the emulator's own `/_emulator/stats` totals match the client's count). Server and load generator
share the two cores, so the served rate depends on the contention; the CPU per request (read from
`/proc`) is the load-independent figure. Most of it is uvicorn's HTTP handling and the socket
writes; the emulator's own work (auth, limiter, accounting, answer) is a small part of it.
"""


if __name__ == "__main__":
    from bench.report import machine, write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-report", action="store_true", help="print the result, leave docs/ alone")
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    results = [run(args.seconds, args.connections, args.workers)]
    if args.workers == 1:
        results.append(run(args.seconds, args.connections, 2))
    print(json.dumps(results, indent=2))
    if not args.no_report:
        write_section("Provider emulator", section(results, load))
