"""What the end-to-end benchmarks share: embedded servers, a whole stack, a sampler, and the
CPU and memory each service used.

    with running_stack(root, limits_yaml, time_scale=5.0) as stack:
        ...
        usage = stack.usage()          # before the stack stops
    print(usage_table(usage))
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from services.common.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.conftest import fresh_database
from tests.e2e.stack import E2EStack


def write_limits(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


@contextmanager
def servers(root: Path) -> Iterator[tuple[str, str]]:
    """An embedded PostgreSQL and Redis under `root`: (database URL, Redis URL)."""
    postgres = EmbeddedPostgres(root / "pg")
    redis = EmbeddedRedis(workdir=root / "redis")
    try:
        yield postgres.start(), redis.start()
    finally:
        redis.stop()
        postgres.stop()


@contextmanager
def running_stack(root: Path, limits: str, *, time_scale: float, **env: dict[str, str]) -> Iterator[E2EStack]:
    """A started stack on its own embedded PostgreSQL and Redis under `root`, planning with and
    enforcing the limits file whose text is `limits`. `env` takes per-service environment,
    e.g. `predictor={"FAIRWAY_PREDICTOR_CONCURRENCY": "256"}`."""
    (root / "stack").mkdir(parents=True, exist_ok=True)
    with servers(root) as (dsn, redis_url):
        stack = E2EStack(root / "stack", asyncio.run(fresh_database(dsn)), redis_url, time_scale=time_scale, **env)
        stack.set_limits(write_limits(root / "limits.yaml", limits))
        with stack:
            yield stack


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    reply = client.post("/v1/jobs", json=body, timeout=120)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


class Sampler:
    """Samples `read()` every `every_s` real seconds in a thread: [(monotonic s, value)]."""

    def __init__(self, read: Callable[[], Any], every_s: float) -> None:
        self.samples: list[tuple[float, Any]] = []
        self._read, self._every = read, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with suppress(httpx.HTTPError):
                self.samples.append((time.monotonic(), self._read()))
            self._stop.wait(self._every)


def usage_table(usage: dict[str, dict[str, float]]) -> str:
    """A markdown table of `E2EStack.usage()`: CPU seconds and peak RSS per service."""
    rows = ["| service | processes | CPU s | peak RSS MiB (each, summed) |", "| --- | ---: | ---: | ---: |"]
    for name in sorted(usage):
        row = usage[name]
        rows.append(f"| {name} | {int(row['processes'])} | {row['cpu_s']:.1f} | {row['peak_rss_mib']:.0f} |")
    return "\n".join(rows)
