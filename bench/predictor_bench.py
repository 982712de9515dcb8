"""Predictor benchmark; writes the "## Predictor" section of docs/benchmarks.md.

(a) 1,000 Replicate items, without webhooks and then with them: creates and reads per item
    as the emulator counted them;
(b) OpenAI chat with varied completion lengths against a tokens-per-minute limit: the share
    of the limit used in steady state, and the 429s the emulator served;
(c) items/s and CPU per item of one predictor process with an instant upstream.

Each runs the whole stack as processes (tests/e2e/stack.py) on an embedded PostgreSQL and
Redis, with the emulator and ratelimiter time-scaled.

    python -m bench.predictor_bench            # the sizes in the report
    python -m bench.predictor_bench --quick    # smaller sizes (the report says which ran)
    python -m bench.predictor_bench --only openai-tokens   # (b) alone; prints, writes nothing
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
RAMP_S = 20.0
TOKEN_LIMITS = """
openai:
  models:
    gpt-4o-mini: {rpm: 100000, tpm: 30000}
"""
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
    # Completion caps from 20 to 620 tokens: the reservation (prompt + cap) is far above
    # most real uses, which only the settle with `usage` corrects.
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


def openai_tokens(
    workdir: Path, database_url: str, redis_url: str, seconds: float, time_scale: float,
) -> dict[str, Any]:
    """(b): a backlog larger than the run can serve; token use measured between two samples."""
    limits = workdir / "limits.yaml"
    limits.write_text(TOKEN_LIMITS)
    tpm = 30000
    with _stack(workdir, database_url, redis_url, limits, time_scale=time_scale) as stack:
        _, client = stack.create_tenant("bench-openai")
        # More than the run can serve (items use 50 tokens or more), so the budget is the only limit.
        n = int(tpm * time_scale / 60 / 50 * (seconds + RAMP_S))
        job_id = _submit(client, _chat_job(n, "tok"))
        # Steady state only: the first calls teach the scheduler the lane's real token use.
        time.sleep(RAMP_S)
        first = _endpoint(stack, stack.openai_key, "openai.chat.completions")
        t0 = time.monotonic()
        time.sleep(seconds)
        second = _endpoint(stack, stack.openai_key, "openai.chat.completions")
        elapsed = time.monotonic() - t0
        client.post(f"/v1/jobs/{job_id}/cancel")
    tokens = int(second.get("tokens", 0)) - int(first.get("tokens", 0))
    limit_per_real_second = tpm * time_scale / 60
    return {
        "tpm": tpm, "time_scale": time_scale, "seconds": round(elapsed, 1), "items_queued": n,
        "tokens": tokens, "use_percent": round(100 * tokens / elapsed / limit_per_real_second, 1),
        "served_429": int(second.get("rejected", 0)),
        "requests": int(second.get("accepted", 0)) - int(first.get("accepted", 0)),
    }


def instant(workdir: Path, database_url: str, redis_url: str, n: int) -> dict[str, Any]:
    """(c): one predictor, upstream answering at once and never throttling."""
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


def run(replicate_items: int = 1000, openai_seconds: float = 60.0, instant_items: int = 3000,
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
            # Real time: the ratelimiter's usage ring (which its upstream feedback compares with the
            # provider's window) counts real seconds, the emulator's window scaled ones.
            "openai": openai_tokens(*fresh("openai"), redis_url, openai_seconds, 1.0),
            "instant": instant(*fresh("instant"), redis_url, instant_items),
        }
    finally:
        redis.stop()
        postgres.stop()


def render(result: dict[str, Any]) -> str:
    rep, oai, fast = result["replicate"], result["openai"], result["instant"]
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
        f"**OpenAI tokens** ({CHAT_MODEL}, limit {oai['tpm']:,} TPM at time scale {oai['time_scale']:g},"
        " completion caps 20 to 620 tokens, a backlog larger than the budget):",
        "",
        "| measured s | requests | tokens | use of the TPM limit | 429s served |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {oai['seconds']} | {oai['requests']} | {oai['tokens']:,} | **{oai['use_percent']}%** |"
        f" {oai['served_429']} |",
        "",
        f"Target: at least 95% of the limit with no 429 served: **{oai['use_percent']}%**, {oai['served_429']} 429s"
        f" ({'met' if oai['use_percent'] >= 95 and not oai['served_429'] else 'NOT met'}).",
        "Completions are far shorter than their caps (about 70 tokens against caps averaging 320): the",
        "scheduler reserves the lane's mean real use, learned from completions, and each grant is settled",
        "with the call's `usage`. The ratelimiter counts every refund in the rolling window of the grant",
        "(token window log) and grants the refunded tokens again (GCRA credit), so calls that used less",
        "than the mean no longer lose budget. The ceiling is utilization 0.98 less the GCRA burst",
        "(97.5%); the rest is time the budget was free while no worker asked (the token GCRA carries",
        "one second of it) and the minute's edges. The figure moves by a point or two with the load.",
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


def openai_tokens_only(seconds: float = 60.0) -> dict[str, Any]:
    """(b) alone, on its own PostgreSQL and Redis: for re-measuring the token budget's use."""
    root = Path(tempfile.mkdtemp(prefix="fairway-predictor-bench-"))
    postgres = EmbeddedPostgres(root / "pg")
    redis = EmbeddedRedis(workdir=root / "redis")
    dsn, redis_url = postgres.start(), redis.start()
    try:
        (root / "openai").mkdir()
        return openai_tokens(root / "openai", asyncio.run(fresh_database(dsn)), redis_url, seconds, 1.0)
    finally:
        redis.stop()
        postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["openai-tokens"],
                        help="run one part and print its result; the report is left as it is")
    args = parser.parse_args()
    if args.only == "openai-tokens":
        print(openai_tokens_only(20 if args.quick else 60.0))
        return
    if args.quick:
        result = run(replicate_items=200, openai_seconds=20, instant_items=500)
    else:
        result = run()
    print(result)
    write_section("Predictor", render(result))


if __name__ == "__main__":
    main()
