"""Ratelimiter fixtures: the decisions in-process on real Redis, and replicas as child processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from services.common.embedded import free_port
from services.ratelimiter.config import RateLimiterConfig
from services.ratelimiter.server import RateLimiterServer, create_server
from tests.support.processes import ServiceProcess
from tests.support.tokens import ACCEPTED

# Small limits so that arithmetic is exact within a test's runtime: at these rates a
# request or a token comes back only after seconds.
# The OpenAI budgets here count usage (settles correct them), except `admitted-model`, which
# counts a request as OpenAI does, when it arrives.
SLOW_LIMITS = {
    "utilization": 1.0,
    "replicate": {"create_rpm": 6, "read_rpm": 600},
    "openai": {
        "default": {"rpm": 6000, "tpm": 60, "tokens_counted": "usage"},
        "models": {
            "slow-model": {"rpm": 6, "tpm": 60, "tokens_counted": "usage"},
            "admitted-model": {"rpm": 6000, "tpm": 60},
        },
    },
}


def write_limits(path: Path, limits: dict[str, object]) -> str:
    path.write_text(yaml.safe_dump(limits))
    return str(path)


def make_config(redis_url: str, limits_path: str, **overrides: object) -> RateLimiterConfig:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "limits_path": limits_path,
        "port": 0,
        "metrics_port": 0,
        "key_prefix": f"test:{uuid.uuid4().hex[:10]}",
        "burst_fraction": 0.5,
        "accepted_tokens": ACCEPTED,
        **overrides,
    }
    return RateLimiterConfig.model_validate(values)


@pytest.fixture
def slow_limits(tmp_path: Path) -> str:
    return write_limits(tmp_path / "limits.yaml", SLOW_LIMITS)


@pytest.fixture
async def parts(redis_url: str, slow_limits: str) -> AsyncIterator[RateLimiterServer]:
    """The ratelimiter's decisions in-process, on the session's Redis, with its own keys."""
    built = RateLimiterServer(make_config(redis_url, slow_limits))
    yield built
    await built.store.aclose()


@pytest.fixture
async def grpc_address(redis_url: str, slow_limits: str) -> AsyncIterator[str]:
    """A ratelimiter gRPC server in-process (both APIs), on the session's Redis."""
    config = make_config(redis_url, slow_limits, host="127.0.0.1")
    built = RateLimiterServer(config)
    server, port, _ = create_server(config, built)
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)
    await built.store.aclose()


Replicas = Callable[..., list[tuple[ServiceProcess, str]]]


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    """Start N ratelimiter processes sharing one Redis and one key space: (process, address)."""
    with ExitStack() as stack:

        def start(n: int, redis_url: str, limits: dict[str, object], **env: str) -> list[tuple[ServiceProcess, str]]:
            limits_path = write_limits(tmp_path / f"limits-{uuid.uuid4().hex[:6]}.yaml", limits)
            prefix = f"test:{uuid.uuid4().hex[:10]}"
            procs = []
            for _ in range(n):
                port = free_port()
                proc = stack.enter_context(
                    ServiceProcess(
                        "ratelimiter",
                        env={
                            "REDIS_URL": redis_url,
                            "FAIRWAY_LIMITS": limits_path,
                            "FAIRWAY_RATELIMITER_PORT": str(port),
                            "FAIRWAY_RATELIMITER_METRICS_PORT": "0",
                            "FAIRWAY_RATELIMITER_KEY_PREFIX": prefix,
                            "FAIRWAY_LOG_LEVEL": "WARNING",
                            "FAIRWAY_ACCEPTED_TOKENS": ACCEPTED,
                            **env,
                        },
                        log_dir=tmp_path,
                    )
                )
                procs.append((proc, f"127.0.0.1:{port}"))
            for proc, address in procs:
                proc.wait_grpc_serving(address)
            return procs

        yield start
