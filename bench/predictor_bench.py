"""Predictor benchmark; writes the "## Predictor" section of docs/benchmarks.md.

(a) 1,000 Replicate items, without webhooks and then with them: creates and reads per item
    as the emulator counted them;
(b) items/s and CPU per item of one predictor process with an instant upstream.

How near a token limit the whole stack runs is bench/e2e_bench.py's.

Each runs the whole stack as processes (tests/e2e/stack.py) on an embedded PostgreSQL and
Redis, with the emulator and ratelimiter time-scaled.

    python -m bench.predictor_bench            # the sizes in the report
    python -m bench.predictor_bench --quick    # smaller sizes (the report says which ran)
    from bench.predictor_bench import run; run(replicate_items=1000)   # -> dict
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.report import machine, write_section
from services.common.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.conftest import fresh_database
from tests.e2e.stack import E2EStack, wait_terminal
from tests.support.processes import ServiceProcess

CHAT_MODEL = "gpt-4o-mini"
ROOMY_LIMITS = """
replicate: {create_rpm: 10000000, read_rpm: 10000000}
openai:
  models:
    gpt-4o-mini: {rpm: 10000000, tpm: 10000000000}
"""


def _submit(client: httpx.Client, body: dict[str, Any]) -> str:
    reply = client.post("/v1/jobs", json=body, timeout=120)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def _replicate_job(n: int, prefix: str) -> dict[str, Any]:
    return {"provider": "replicate", "model": "google/nano-banana",
            "items": [{"ref": f"{prefix}{i}", "input": {"prompt": f"{prefix} {i}"}} for i in range(n)]}


def _chat_job(n: int, prefix: str) -> dict[str, Any]:
    # Completion caps from 20 to 620 tokens.
    return {"provider": "openai", "model": CHAT_MODEL, "operation": "chat", "items": [
        {"ref": f"{prefix}{i}", "input": {"messages": [{"role": "user", "content": f"{prefix} question {i}"}],
                                          "max_tokens": 20 + (i * 37) % 600}} for i in range(n)]}


def _endpoint(stack: E2EStack, key: str, endpoint: str) -> dict[str, Any]:
    return dict(stack.emulator_stats()["keys"].get(key, {}).get(endpoint, {}))


def _count(stack: E2EStack, endpoint: str) -> int:
    entry = _endpoint(stack, stack.replicate_token, endpoint)
    return int(entry.get("accepted", 0)) - int(entry.get("faults", 0))


def _cpu_seconds(process: ServiceProcess) -> float:
    assert process.proc is not None
    fields = Path(f"/proc/{process.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stack(workdir: Path, database_url: str, redis_url: str, limits: Path | None = None, **kw: Any) -> E2EStack:
    stack = E2EStack(workdir, database_url, redis_url, **kw)
    if limits is not None:
        stack.set_limits(limits)
    return stack


def replicate_reads(workdir: Path, database_url: str, redis_url: str, n: int, time_scale: float) -> dict[str, Any]:
    """(a): one stack; a polling predictor first, then one with webhooks to the gateway."""
    result: dict[str, Any] = {"items": n, "time_scale": time_scale}
    with _stack(workdir, database_url, redis_url, time_scale=time_scale,
                predictor={"FAIRWAY_POLL_INITIAL_SECONDS": "0.1", "FAIRWAY_POLL_MAX_SECONDS": "1"}) as stack:
        _, client = stack.create_tenant("bench-replicate")
        for mode in ("polling", "webhooks"):
            if mode == "webhooks":
                stack.set_env("predictor", FAIRWAY_PUBLIC_URL=stack.gateway_url)
                stack.start_predictor()
                stack.predictors.pop(0).stop()
            creates, reads = _count(stack, "replicate.create"), _count(stack, "replicate.get")
            started = time.monotonic()
            job = wait_terminal(client, _submit(client, _replicate_job(n, mode)))
            result[mode] = {
                "done": job["counts"]["DONE"], "seconds": round(time.monotonic() - started, 1),
                "creates_per_item": (_count(stack, "replicate.create") - creates) / n,
                "reads_per_item": (_count(stack, "replicate.get") - reads) / n,
            }
    return result


def instant(workdir: Path, database_url: str, redis_url: str, n: int) -> dict[str, Any]:
    """(b): one predictor, upstream answering at once and never throttling."""
    limits = workdir / "roomy.yaml"
    limits.write_text(ROOMY_LIMITS)
    emulator = {"FAIRWAY_EMULATOR_OPENAI_SECONDS": "0",
                "FAIRWAY_EMULATOR_OPENAI_SECONDS_PER_TOKEN": "0", "FAIRWAY_EMULATOR_PREDICTION_SECONDS": "0",
                "FAIRWAY_EMULATOR_PREDICTION_START_SECONDS": "0", "FAIRWAY_EMULATOR_REPLICATE_BURST": "100000"}
    result: dict[str, Any] = {"items": n}
    with _stack(workdir, database_url, redis_url, limits, emulator=emulator,
                predictor={"FAIRWAY_POLL_INITIAL_SECONDS": "0.001"}) as stack:
        _, client = stack.create_tenant("bench-instant")
        predictor = stack.predictors[0]
        for name, body in (("openai chat", _chat_job(n, "fast")), ("replicate", _replicate_job(n, "fast"))):
            cpu = _cpu_seconds(predictor)
            started = time.monotonic()
            job = wait_terminal(client, _submit(client, body))
            seconds = time.monotonic() - started
            used = _cpu_seconds(predictor) - cpu
            result[name] = {"done": job["counts"]["DONE"], "items_per_s": round(n / seconds, 1),
                            "cpu_ms_per_item": round(1000 * used / n, 3)}
    return result


def run(replicate_items: int = 1000, instant_items: int = 3000,
        time_scale: float = 10.0) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fairway-predictor-bench-"))
    postgres = EmbeddedPostgres(root / "pg")
    redis = EmbeddedRedis(workdir=root / "redis")
    dsn, redis_url = postgres.start(), redis.start()
    try:
        def fresh(name: str) -> tuple[Path, str]:
            (root / name).mkdir()
            return root / name, asyncio.run(fresh_database(dsn))

        return {
            "machine": machine(),
            "replicate": replicate_reads(*fresh("replicate"), redis_url, replicate_items, time_scale),
            "instant": instant(*fresh("instant"), redis_url, instant_items),
        }
    finally:
        redis.stop()
        postgres.stop()


def render(result: dict[str, Any]) -> str:
    rep, fast = result["replicate"], result["instant"]
    lines = [
        "`python -m bench.predictor_bench` (`bench/predictor_bench.py`, `run(...) -> dict`): the whole",
        "stack as processes (embedded PostgreSQL and Redis, the emulator as upstream), one predictor.",
        f"Machine: {result['machine']}.",
        "",
        f"**Replicate, {rep['items']} items** (emulator time scale {rep['time_scale']:g}: 8 s median",
        "predictions, log-normal spread 0.5), counted by the emulator per API key:",
        "",
        "| mode | DONE | creates / item | reads / item | wall s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mode in ("polling", "webhooks"):
        r = rep[mode]
        lines.append(f"| {mode} | {r['done']} | {r['creates_per_item']:.3f} | {r['reads_per_item']:.2f} |"
                     f" {r['seconds']} |")
    lines += [
        "",
        "Targets: exactly one create per item; at most 2 reads per item on average without webhooks,",
        "none with them. The polling run includes the cold start: until the first predictions of the",
        "model finish, reads back off by doubling; after that they are timed from observed run times.",
        "",
        f"**Instant upstream** ({fast['items']} items per run, one predictor process, no latency and no",
        "limits at the emulator): throughput of the whole path and the predictor's own CPU.",
        "",
        "| items | items/s | predictor CPU per item |",
        "| --- | ---: | ---: |",
    ]
    for name in ("openai chat", "replicate"):
        r = fast[name]
        lines.append(f"| {name} | {r['items_per_s']} | {r['cpu_ms_per_item']} ms |")
    lines += [
        "",
        "A Replicate item is two upstream calls (create, then one read), an OpenAI item one. The",
        "items/s figure is bounded by the whole stack sharing the machine (scheduler, PostgreSQL,",
        "ratelimiter, emulator, gateway); the CPU per item is the predictor's own cost.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        result = run(replicate_items=200, instant_items=500)
    else:
        result = run()
    print(result)
    write_section("Predictor", render(result))


if __name__ == "__main__":
    main()
