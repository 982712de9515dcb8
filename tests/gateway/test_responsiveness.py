"""One tenant's huge body does not hold up the gateway's other requests: a gateway process
of its own (`fairway run gateway`, uvloop and httptools as deployed), in front of the fakes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.common.embedded import free_port
from tests.gateway.conftest import ADMIN_KEY, WEBHOOK_SECRET, tenant
from tests.gateway.fakes import Fakes
from tests.support.processes import ServiceProcess
from tests.support.tokens import service_env

# 700,000 items in 9.1 MB: under the 10 MiB body limit, seven times the item limit.
HUGE_JOB = b'{"provider":"replicate","model":"acme/fast","items":[' + b",".join([b'{"input":{}}'] * 700_000) + b"]}"
# Loose: a poll answered while nothing else runs takes ~1-2 ms; the body took seconds.
POLL_BOUND_S = 0.1


@pytest.fixture
async def gateway(fakes: Fakes, tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    process = ServiceProcess(
        "gateway",
        env={
            "FAIRWAY_GATEWAY_PORT": str(port),
            "FAIRWAY_ADMIN_KEY": ADMIN_KEY,
            "FAIRWAY_SCHEDULER_ADDR": fakes.address,
            "FAIRWAY_RATELIMITER_ADDR": fakes.address,
            "REPLICATE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "FAIRWAY_GATEWAY_MAX_BODY_BYTES": str(10 * 1024 * 1024),
            **service_env("gateway"),
        },
        log_dir=tmp_path,
    ).start()
    try:
        url = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(process.wait_http, f"{url}/healthz")
        yield url
    finally:
        process.stop()


async def test_a_huge_job_does_not_hold_up_health_checks(gateway: str, fakes: Fakes) -> None:
    assert 9_000_000 < len(HUGE_JOB) < 10 * 1024 * 1024
    headers = {**tenant("t1"), "Content-Type": "application/json"}
    with httpx.Client(base_url=gateway, timeout=120) as big:
        # Sent from a thread, so that this loop only polls.
        submit = asyncio.ensure_future(asyncio.to_thread(big.post, "/v1/jobs", content=HUGE_JOB, headers=headers))
        polls: list[float] = []
        async with httpx.AsyncClient(base_url=gateway, timeout=5) as poller:
            # Back to back, from before the body is sent until it is answered: the polls span
            # its reading, parsing and refusal.
            while not submit.done():
                started = time.perf_counter()
                r = await poller.get("/healthz")
                polls.append(time.perf_counter() - started)
                assert r.status_code == 200
        answer = await submit
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("items: at most 100000 items"), error
    assert fakes.scheduler.calls("SubmitJob") == []
    assert len(polls) >= 3, polls
    assert max(polls) < POLL_BOUND_S, f"slowest of {len(polls)} polls: {max(polls) * 1000:.0f} ms"
