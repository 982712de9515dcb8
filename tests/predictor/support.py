"""Helpers for the predictor's tests on the real stack (tests/e2e/stack.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.stack import E2EStack, all_items, wait_terminal

MODEL = "google/nano-banana"


def submit(client: httpx.Client, n: int, prefix: str, *, model: str = MODEL, **job: Any) -> dict[str, Any]:
    reply = client.post("/v1/jobs", json={
        "provider": "replicate", "model": model,
        "items": [{"ref": f"{prefix}{i}", "input": {"prompt": f"{prefix} {i}"}} for i in range(n)], **job,
    })
    assert reply.status_code == 201, reply.text
    return reply.json()  # type: ignore[no-any-return]


def run_job(client: httpx.Client, n: int, prefix: str, **job: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Submit a job and follow it to its end: (terminal job, its items)."""
    job_id = submit(client, n, prefix, **job)["id"]
    return wait_terminal(client, job_id), all_items(client, job_id)


def replicate_counts(stack: E2EStack) -> dict[str, int]:
    """Accepted creates, gets and cancels of the stack's Replicate key, and predictions by status."""
    stats = stack.emulator_stats()
    endpoints = stats["keys"].get(stack.replicate_token, {})
    counts = {name: int(endpoints.get(f"replicate.{name}", {}).get("accepted", 0))
              - int(endpoints.get(f"replicate.{name}", {}).get("faults", 0)) for name in ("create", "get", "cancel")}
    counts |= {f"predictions_{k}": int(v) for k, v in stats["predictions"].items()}
    return counts


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll an external process's state (no event to await across processes)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def restart_emulator(stack: E2EStack, **env: str) -> None:
    """Restart the emulator with `env` over its environment: a provider restart, which forgets
    every prediction (no state file), with new limits or faults if asked; counts start from 0."""
    stack.set_env("emulator", **env)
    stack._start("emulator").wait_http(f"{stack.emulator_url}/_emulator/health")


def replace_predictor(stack: E2EStack) -> None:
    """A new predictor in place of the running one: no connection or learned run time carries over."""
    stack.start_predictor()
    stack.predictors.pop(0).stop()
